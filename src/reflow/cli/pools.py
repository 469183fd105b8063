"""``reflow pools …``: the slots pools share among every pipeline's tasks."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from reflow.cli.options import HomeOption, actor, console, open_project

pools_app = typer.Typer()  # its help and its place among the commands: cli/app.py


@pools_app.command("list")
def pools_list(home: HomeOption = None) -> None:
    """Each pool: its slots, those in use, the task instances waiting, its tasks."""
    from reflow.services import pools as pool_service

    found = pool_service.list_pools(open_project(home))
    if not found:
        console.print(
            "No pools: give a task pool=NAME and its slots in reflow.toml [reflow.pools]."
        )
        return
    table = Table("pool", "slots", "used", "waiting", "from", "tasks", box=None)
    for p in found:
        origin = {
            "config": "reflow.toml",
            "set": f"set by {escape(p.updated_by or '?')}",
            "undefined": "[red]undefined: its tasks wait[/]",
        }[p.origin]
        table.add_row(p.name, str(p.slots), str(p.used), str(p.waiting), origin, ", ".join(p.tasks))
    console.print(table)


@pools_app.command("set")
def pools_set(
    name: Annotated[str, typer.Argument(help="Pool name.")],
    slots: Annotated[int, typer.Argument(help="Slots from now on (kept until reset).")],
    home: HomeOption = None,
) -> None:
    """Set a pool's slots at run time (over reflow.toml's until `reflow pools reset`)."""
    from reflow.services import pools as pool_service

    p = pool_service.set_slots(open_project(home), name, slots, actor=actor())
    note = " (no try is stopped: new ones wait until enough end)" if p.used > p.slots else ""
    console.print(f"Pool {p.name}: {p.slots} slots, {p.used} in use{note}.")


@pools_app.command("reset")
def pools_reset(
    name: Annotated[str, typer.Argument(help="Pool name.")],
    home: HomeOption = None,
) -> None:
    """Give a pool the slots of reflow.toml again (one it does not name has none)."""
    from reflow.services import pools as pool_service

    p = pool_service.reset(open_project(home), name, actor=actor())
    console.print(
        f"Pool {p.name}: {p.slots} slots ({'reflow.toml' if p.origin == 'config' else p.origin})."
    )
