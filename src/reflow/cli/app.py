"""The ``reflow`` command: parse, call services, render with Rich.

This module is the command's root: its top-level commands, and where every command group
is defined (a module each: ``cli/runs.py``, ``cli/pipelines.py``, ...). A command line
imports the module of the command it runs and makes that one command into a Click command:
``reflow runs list`` pays for neither the forty other commands nor their modules.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import typer
from rich.table import Table
from typer.core import TyperGroup
from typer.main import get_command_from_info, get_command_name
from typer.models import CommandInfo

from reflow.cli.options import (
    HomeOption,
    console,
    err_console,
    fmt_date,
    fmt_run_took,
    open_project,
    styled,
)
from reflow.core.errors import InvalidInput

if TYPE_CHECKING:  # each command imports the services it uses: `reflow -h` stays quick
    from typer._click import Command, Context  # Typer's own copy of Click

    from reflow.services.project import Project


class Group(NamedTuple):
    """A command group of ``reflow``: the Typer app in ``source`` ("module:attribute") holds
    its commands; ``help`` says what it is for (here, so that listing the group imports
    nothing)."""

    source: str
    help: str


# Every command of `reflow`, in the order a new user meets them: where a command's function
# is ("module:attribute"), or the group it is.
COMMANDS: dict[str, str | Group] = {
    "init": "reflow.cli.app:init",
    "pipelines": Group(
        "reflow.cli.pipelines:pipelines_app", "List, inspect, validate and pause pipelines."
    ),
    "trigger": "reflow.cli.app:trigger",
    "backfill": Group(
        "reflow.cli.backfill:backfill_app",
        "(Re)process a range of logical dates: `reflow backfill PIPELINE --start D --end D`.",
    ),
    "runs": Group("reflow.cli.runs:runs_app", "Inspect runs and repair their history."),
    "tasks": Group("reflow.cli.runs:tasks_app", "Inspect the task instances of a run."),
    "logs": "reflow.cli.app:logs",
    "scheduler": "reflow.cli.scheduler:scheduler",
    "web": "reflow.cli.web:web",
    "up": "reflow.cli.web:up",
    "users": Group("reflow.cli.web:users_app", "Users who may log in to the web UI."),
    "tokens": Group(
        "reflow.cli.web:tokens_app",
        "API tokens for the REST API (`Authorization: Bearer TOKEN`).",
    ),
    "pools": Group(
        "reflow.cli.pools:pools_app",
        "Pools: slots shared by every pipeline's tasks (pool=... on a task).",
    ),
    "cost": "reflow.cli.cost:cost",
    "notifications": Group(
        "reflow.cli.notifications:notifications_app",
        "Notifications: what was sent where, and how each delivery went.",
    ),
    "k8s": Group("reflow.cli.k8s:k8s_app", "The kubernetes launcher."),
    "db": Group("reflow.cli.db:db_app", "The metadata database."),
}


def _load(source: str) -> Any:
    # `python -X importtime` lists what such a module imports, not the module itself.
    module, _, name = source.partition(":")
    return getattr(import_module(module), name)


class _LazyGroup(TyperGroup):
    """A group that makes a command into a Click command when it is looked up (the one a
    command line runs, those a help lists), from its :meth:`info`."""

    def info(self, name: str) -> CommandInfo:
        """The definition of the command ``name`` (one :meth:`list_commands` gives)."""
        raise NotImplementedError

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name not in self.commands:
            names = self.list_commands(ctx)
            # An unknown name makes them all: Typer suggests a close one among those made.
            for name in [cmd_name] if cmd_name in names else names:
                if name not in self.commands:
                    self.commands[name] = get_command_from_info(
                        self.info(name),
                        pretty_exceptions_short=app.pretty_exceptions_short,
                        rich_markup_mode=self.rich_markup_mode,
                    )
        return self.commands.get(cmd_name)


class _MainGroup(_LazyGroup):
    """``reflow``: its groups are made by Typer (empty: see :class:`_SubGroup`), its
    commands on demand; all listed in the order of ``COMMANDS``."""

    def list_commands(self, ctx: Context) -> list[str]:
        return list(COMMANDS)

    def info(self, name: str) -> CommandInfo:
        source = COMMANDS[name]
        assert isinstance(source, str)  # a group is made by Typer with the app
        return CommandInfo(name, callback=_load(source))


class _SubGroup(_LazyGroup):
    """A command group: its module is imported when the command line uses the group."""

    def _infos(self) -> dict[str, CommandInfo]:
        group = COMMANDS[self.name or ""]
        assert isinstance(group, Group)
        commands: typer.Typer = _load(group.source)
        return {
            info.name or get_command_name(info.callback.__name__): info  # type: ignore[union-attr]
            for info in commands.registered_commands
        }

    def list_commands(self, ctx: Context) -> list[str]:
        return list(self._infos())

    def info(self, name: str) -> CommandInfo:
        return self._infos()[name]


class _BackfillGroup(_SubGroup):
    """`reflow backfill PIPELINE ...` creates a backfill; `reflow backfill list|show|...`
    manage them."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.list_commands(ctx) and not args[0].startswith("-"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_MainGroup,
    add_completion=False,
    name="reflow",
    help="Partitioned data pipelines: daily runs and backfills from the same code.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
for _name, _group in COMMANDS.items():
    if isinstance(_group, Group):
        app.add_typer(
            typer.Typer(cls=_BackfillGroup if _name == "backfill" else _SubGroup),
            name=_name,
            help=_group.help,
            no_args_is_help=True,
        )


# -- init -----------------------------------------------------------------------------------
def init(
    folder: Annotated[Path, typer.Argument(help="Where to create the project.")] = Path("."),
) -> None:
    """Create a project: reflow.toml and a pipelines folder with an example pipeline."""
    skeleton = Path(__file__).parent / "skeleton"
    target = folder.resolve()
    config = target / "reflow.toml"
    example = target / "pipelines" / "example.py"
    if config.exists():
        raise InvalidInput(f"{config} already exists: this folder is a reflow project")
    example.parent.mkdir(parents=True, exist_ok=True)
    config.write_text((skeleton / "reflow.toml").read_text())
    if not example.exists():
        example.write_text((skeleton / "example.py").read_text())
    console.print(f"Created a reflow project in [bold]{target}[/]:")
    console.print(f"  {config}\n  {example}")
    console.print(
        "Next: [bold]reflow pipelines list[/], then [bold]reflow trigger example --wait[/]."
    )


# -- trigger --------------------------------------------------------------------------------
def trigger(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    date: Annotated[
        list[str] | None,
        typer.Option(
            "--date",
            "-d",
            help="Logical date (YYYY-MM-DD or ISO date-time); repeat for several "
            "runs. Default: the latest complete interval.",
        ),
    ] = None,
    conf: Annotated[
        str | None,
        typer.Option("--conf", "-c", help="JSON object overriding the pipeline's params."),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            "-w",
            help="Wait for the runs to finish (runs a scheduler in-process when none is running).",
        ),
    ] = False,
    home: HomeOption = None,
) -> None:
    """Create manual runs of a pipeline; with --wait, see them through."""
    from reflow.services import runs as run_service

    project = open_project(home)
    if wait:
        run_service.refuse_wait_if_paused(project, pipeline, "reflow trigger")
    created = run_service.trigger(project, pipeline, date or [], run_service.parse_conf(conf))
    for run in created:
        console.print(
            f"Queued run [bold]{run.id}[/] {run.run_id} (logical date {fmt_date(run.logical_date)})"
        )
    if wait:
        wait_and_report(project, pipeline, [r.id for r in created])
    else:
        say_if_paused(project, pipeline)


def say_if_paused(project: Project, pipeline: str) -> None:
    from reflow.services import runs as run_service

    if run_service.is_paused(project, pipeline):
        console.print(
            f"[yellow]Pipeline {pipeline} is paused[/]: its runs wait until "
            f"[bold]reflow pipelines unpause {pipeline}[/]."
        )


def wait_and_report(project: Project, pipeline: str, run_pks: list[int]) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from reflow.core.states import RunState
    from reflow.services import runs as run_service

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(f"{pipeline}", total=len(run_pks), status="")

        def show(p: run_service.Progress) -> None:
            note = f" · {p.note}" if p.note else ""
            bar.update(
                task, completed=p.done, status=f"running {p.running}, failed {p.failed}{note}"
            )

        result = run_service.wait(project, pipeline, run_pks, show)
    table = Table("run", "logical date", "state", "duration", "tasks", box=None)
    failed = []
    for run_pk in run_pks:
        detail = run_service.run_detail(project, run_service.find_run(project, str(run_pk)))
        run = detail.run
        states = " ".join(f"{ti.task_id}:{styled(ti.state)}" for ti in detail.task_instances)
        table.add_row(
            str(run.id),
            fmt_date(run.logical_date),
            styled(run.state),
            fmt_run_took(run),
            states,
        )
        if run.state != RunState.SUCCESS:
            failed.append(run)
    console.print(table)
    if result.failed or failed:
        err_console.print(
            f"[red]{len(failed)} of {result.total} runs did not succeed[/]; "
            "see `reflow tasks list RUN` and `reflow logs`."
        )
        raise typer.Exit(1)


# -- logs -----------------------------------------------------------------------------------
def logs(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    run: Annotated[str, typer.Argument(help="Run number, run id or logical date.")],
    task: Annotated[str, typer.Argument(help="Task id.")],
    try_number: Annotated[
        int | None, typer.Option("--try", "-t", min=1, help="Which try (default: the latest).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing while the try runs.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Print the log of a task's try, every secret its run ever had masked."""
    from reflow.services import logs as log_service
    from reflow.services import runs as run_service

    project = open_project(home)
    run_service.known(project, pipeline)
    row = run_service.find_run(project, run, pipeline)
    log = log_service.try_log(project, row, task, try_number)
    attempt = log.attempt
    err_console.print(
        f"[grey50]# {log.path} (try {attempt.try_number}, {attempt.state}"
        f"{', ' + attempt.failure_reason if attempt.failure_reason else ''}"
        f"{', application ' + attempt.app_id if attempt.app_id else ''})[/]"
    )
    for text in log.stream(follow=follow):
        console.out(text, end="", highlight=False)
