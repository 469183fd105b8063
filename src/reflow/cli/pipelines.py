"""``reflow pipelines …``: list, inspect, validate, pause and delete pipelines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from reflow.cli.options import (
    HomeOption,
    actor,
    console,
    err_console,
    fmt_date,
    open_project,
    styled,
)

pipelines_app = typer.Typer()  # its help and its place among the commands: cli/app.py


@pipelines_app.command("list")
def pipelines_list(home: HomeOption = None) -> None:
    """Pipelines with their schedule, next run and latest run states."""
    from reflow.services import pipelines as pipeline_service

    project = open_project(home)
    summaries, problems = pipeline_service.list_pipelines(project)
    table = Table(
        "pipeline",
        "schedule",
        "tasks",
        "next logical date",
        "latest runs",
        "running",
        "queued",
        box=None,
    )
    for s in summaries:
        name = s.name if s.active else f"[grey50]{s.name} (no file)[/]"
        if s.paused:
            name += " [yellow](paused)[/]"
        latest = " ".join(styled(state) for _, state in s.latest[:5])
        table.add_row(
            name,
            s.schedule or "manual",
            str(s.tasks),
            fmt_date(s.next_logical_date),
            latest,
            str(s.running),
            str(s.queued),
        )
    if summaries:
        console.print(table)
    else:
        console.print(f"No pipelines in {project.settings.pipelines_path}.")
    for problem in problems:
        err_console.print(f"[red]import error[/]: {problem.message}")


@pipelines_app.command("show")
def pipelines_show(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the structure as JSON.")] = False,
    home: HomeOption = None,
) -> None:
    """A pipeline's schedule, limits, params and tasks."""
    from reflow.services import pipelines as pipeline_service

    data = pipeline_service.show_pipeline(open_project(home), name)
    if as_json:
        console.print_json(json.dumps(data, default=str))
        return
    console.print(f"[bold]{data['name']}[/]  version {data['version']}  ({data['file']})")
    for key in (
        "schedule",
        "timezone",
        "start_date",
        "end_date",
        "catchup",
        "max_active_runs",
        "max_active_tasks",
        "run_timeout",
    ):
        console.print(f"  {key}: {data[key] if data[key] is not None else '-'}")
    if data["params"]:
        console.print("  params:")
        for pname, spec in data["params"].items():
            default = spec.get("default", "(required)")
            console.print(
                f"    {pname}: {spec['type']} = {default!r}  {spec.get('description', '')}"
            )
    table = Table("task", "kind", "upstream", "retries", "timeout", box=None)
    for task_id in data["order"]:
        task = data["tasks"][task_id]
        table.add_row(
            task_id,
            task["kind"],
            ", ".join(task["upstream"]),
            str(task["retries"]),
            "-" if task["timeout"] is None else f"{task['timeout']:g}s",
        )
    console.print(table)


@pipelines_app.command("pause")
def pipelines_pause(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    reason: Annotated[
        str | None, typer.Option("--reason", "-r", help="Why, for the pipeline's history.")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Stop a pipeline's new work: no scheduled run is created and no task instance
    starts (manual runs and backfills wait too); tries that run finish."""
    from reflow.services import pipelines as pipeline_service

    done = pipeline_service.set_paused(open_project(home), name, True, actor=actor(), reason=reason)
    if not done.changed:
        console.print(f"Pipeline {name} was paused already.")
        return
    busy = f" Its {done.running} running runs finish the tries they started" if done.running else ""
    console.print(
        f"Paused {name}: nothing new of it starts until [bold]reflow pipelines unpause "
        f"{name}[/].{busy}{'.' if busy else ''}"
    )


@pipelines_app.command("unpause")
def pipelines_unpause(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    reason: Annotated[
        str | None, typer.Option("--reason", "-r", help="Why, for the pipeline's history.")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Let a paused pipeline run again: its waiting runs go on, and the scheduler creates
    the scheduled runs missed meanwhile (all of them with catchup, else the latest)."""
    from reflow.services import pipelines as pipeline_service

    done = pipeline_service.set_paused(
        open_project(home), name, False, actor=actor(), reason=reason
    )
    if not done.changed:
        console.print(f"Pipeline {name} was not paused.")
        return
    waiting = f" {done.queued} queued runs may start now." if done.queued else ""
    console.print(f"Unpaused {name}.{waiting}")


@pipelines_app.command("history")
def pipelines_history(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    home: HomeOption = None,
) -> None:
    """Who paused and unpaused a pipeline, and when."""
    from reflow.services import pipelines as pipeline_service

    changes = pipeline_service.history(open_project(home), name)
    if not changes:
        console.print(f"Pipeline {name} was never paused.")
        return
    table = Table("at", "action", "by", "reason", box=None)
    for c in changes:
        table.add_row(fmt_date(c.at), c.action, escape(c.actor), escape(c.detail or ""))
    console.print(table)


@pipelines_app.command("validate")
def pipelines_validate(
    path: Annotated[Path | None, typer.Argument(help="A pipeline file (default: all).")] = None,
    home: HomeOption = None,
) -> None:
    """Import pipeline files and check them; exit 1 when any is broken."""
    from reflow.services import pipelines as pipeline_service

    found, problems = pipeline_service.validate(open_project(home), path)
    for pipeline in found:
        console.print(
            f"[green]ok[/] {pipeline.name} ({len(pipeline.tasks)} tasks, "
            f"version {pipeline.version})"
        )
    for problem in problems:
        err_console.print(f"[red]error[/] {problem}")
    if problems:
        raise typer.Exit(1)


@pipelines_app.command("delete")
def pipelines_delete(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    purge: Annotated[bool, typer.Option("--purge", help="Delete its whole history too.")] = False,
    home: HomeOption = None,
) -> None:
    """Forget a pipeline whose file was removed (its active runs are cancelled). Without
    --purge its history stays and comes back with the file."""
    from reflow.services import history as history_service

    counts = history_service.delete_pipeline(open_project(home), name, purge=purge)
    if purge:
        console.print(
            f"Pipeline {name} purged: {counts['runs']} runs, "
            f"{counts['task_instances']} task instances, {counts['tries']} tries, "
            f"{counts['backfills']} backfills, {counts['logs']} log files, "
            f"{counts['notifications']} notifications."
        )
    else:
        console.print(f"Pipeline {name} deleted; its history is kept.")
