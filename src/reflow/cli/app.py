"""The ``reflow`` command: parse, call services, render with Rich."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from reflow.cli.logformat import LogFormat, say
from reflow.cli.logformat import configure as configure_logging
from reflow.cli.notifications import register as register_notifications
from reflow.cli.options import HomeOption, fmt_date, fmt_time, open_project
from reflow.cli.web import LogFormatOption
from reflow.cli.web import register as register_web
from reflow.core.errors import InvalidInput
from reflow.core.masking import scrub
from reflow.core.states import RUN_ACTIVE, RunState

if TYPE_CHECKING:  # each command imports the services it uses: `reflow -h` stays quick
    from reflow.services import backfill as backfill_service
    from reflow.services import runs as run_service
    from reflow.services.project import Project
    from reflow.services.records import DeadlineMiss, Run, TaskTry

# Piped output gets wide lines rather than truncated table cells.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


class _MainGroup(TyperGroup):
    """Lists the commands in the order a new user meets them."""

    ORDER = (
        "init",
        "pipelines",
        "trigger",
        "backfill",
        "runs",
        "tasks",
        "logs",
        "scheduler",
        "web",
        "up",
        "users",
        "tokens",
        "pools",
        "notifications",
        "k8s",
        "db",
    )

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(self.ORDER)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))


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
pipelines_app = typer.Typer(
    help="List, inspect, validate and pause pipelines.", no_args_is_help=True
)
runs_app = typer.Typer(help="Inspect runs and repair their history.", no_args_is_help=True)
tasks_app = typer.Typer(help="Inspect the task instances of a run.", no_args_is_help=True)
db_app = typer.Typer(help="The metadata database.", no_args_is_help=True)
k8s_app = typer.Typer(help="The kubernetes launcher.", no_args_is_help=True)
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(runs_app, name="runs")
app.add_typer(tasks_app, name="tasks")
app.add_typer(db_app, name="db")
pools_app = typer.Typer(
    help="Pools: slots shared by every pipeline's tasks (pool=... on a task).",
    no_args_is_help=True,
)
app.add_typer(pools_app, name="pools")
app.add_typer(k8s_app, name="k8s")
register_web(app)
register_notifications(app)

STATE_STYLE = {
    "success": "green",
    "failed": "red",
    "upstream_failed": "dark_orange",
    "running": "cyan",
    "queued": "grey62",
    "scheduled": "grey62",
    "pending": "grey50",
    "up_for_retry": "yellow",
    "cancelled": "magenta",
    "skipped": "pink1",
    "removed": "grey42",
}


def _project(home: Path | None) -> Project:
    return open_project(home)


def styled(state: str | None) -> str:
    if state is None:
        return ""
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def fmt_took(seconds: float | None) -> str:
    """A duration; "-" for what never ran."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


def fmt_run_took(run: Run) -> str:
    """How long a run ran (so far, while it is active); "-" when it never ran."""
    from reflow.services import history as history_service

    return fmt_took(history_service.run_span(run).seconds(datetime.now(UTC)))


def fmt_late(misses: list[DeadlineMiss]) -> str:
    """The deadlines a date missed: "late (run)", "late (load)", "late (run, load)"."""
    if not misses:
        return ""
    return f"[red]late[/] ({', '.join(m.task or 'run' for m in misses)})"


# -- init -----------------------------------------------------------------------------------
@app.command()
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


# -- pipelines ------------------------------------------------------------------------------
@pipelines_app.command("list")
def pipelines_list(home: HomeOption = None) -> None:
    """Pipelines with their schedule, next run and latest run states."""
    from reflow.services import pipelines as pipeline_service

    project = _project(home)
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

    data = pipeline_service.show_pipeline(_project(home), name)
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

    done = pipeline_service.set_paused(_project(home), name, True, actor=_actor(), reason=reason)
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

    done = pipeline_service.set_paused(_project(home), name, False, actor=_actor(), reason=reason)
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

    changes = pipeline_service.history(_project(home), name)
    if not changes:
        console.print(f"Pipeline {name} was never paused.")
        return
    table = Table("at", "action", "by", "reason", box=None)
    for c in changes:
        table.add_row(fmt_date(c.at), c.action, escape(c.actor), escape(c.detail or ""))
    console.print(table)


# -- pools ----------------------------------------------------------------------------------
@pools_app.command("list")
def pools_list(home: HomeOption = None) -> None:
    """Each pool: its slots, those in use, the task instances waiting, its tasks."""
    from reflow.services import pools as pool_service

    found = pool_service.list_pools(_project(home))
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

    p = pool_service.set_slots(_project(home), name, slots, actor=_actor())
    note = " (no try is stopped: new ones wait until enough end)" if p.used > p.slots else ""
    console.print(f"Pool {p.name}: {p.slots} slots, {p.used} in use{note}.")


@pools_app.command("reset")
def pools_reset(
    name: Annotated[str, typer.Argument(help="Pool name.")],
    home: HomeOption = None,
) -> None:
    """Give a pool the slots of reflow.toml again (one it does not name has none)."""
    from reflow.services import pools as pool_service

    p = pool_service.reset(_project(home), name, actor=_actor())
    console.print(
        f"Pool {p.name}: {p.slots} slots ({'reflow.toml' if p.origin == 'config' else p.origin})."
    )


def _actor() -> str:
    """Who runs this command, for the history: the OS user."""
    import getpass

    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):
        return "unknown (cli)"


@pipelines_app.command("validate")
def pipelines_validate(
    path: Annotated[Path | None, typer.Argument(help="A pipeline file (default: all).")] = None,
    home: HomeOption = None,
) -> None:
    """Import pipeline files and check them; exit 1 when any is broken."""
    from reflow.services import pipelines as pipeline_service

    found, problems = pipeline_service.validate(_project(home), path)
    for pipeline in found:
        console.print(
            f"[green]ok[/] {pipeline.name} ({len(pipeline.tasks)} tasks, "
            f"version {pipeline.version})"
        )
    for problem in problems:
        err_console.print(f"[red]error[/] {problem}")
    if problems:
        raise typer.Exit(1)


# -- trigger --------------------------------------------------------------------------------
@app.command()
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

    project = _project(home)
    if wait:
        run_service.refuse_wait_if_paused(project, pipeline, "reflow trigger")
    created = run_service.trigger(project, pipeline, date or [], run_service.parse_conf(conf))
    for run in created:
        console.print(
            f"Queued run [bold]{run.id}[/] {run.run_id} (logical date {fmt_date(run.logical_date)})"
        )
    if wait:
        _wait_and_report(project, pipeline, [r.id for r in created])
    else:
        _say_if_paused(project, pipeline)


def _say_if_paused(project: Project, pipeline: str) -> None:
    from reflow.services import runs as run_service

    if run_service.is_paused(project, pipeline):
        console.print(
            f"[yellow]Pipeline {pipeline} is paused[/]: its runs wait until "
            f"[bold]reflow pipelines unpause {pipeline}[/]."
        )


def _wait_and_report(project: Project, pipeline: str, run_pks: list[int]) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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


# -- runs -----------------------------------------------------------------------------------
@runs_app.command("list")
def runs_list(
    pipeline: Annotated[str | None, typer.Argument(help="Only this pipeline.")] = None,
    state: Annotated[str | None, typer.Option(help="Only runs in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many runs.")] = 50,
    home: HomeOption = None,
) -> None:
    """Runs, newest logical date first; `late` when their date missed a deadline."""
    from reflow.services import lateness as lateness_service
    from reflow.services import runs as run_service

    project = _project(home)
    rows = run_service.list_runs(project, pipeline, state, limit)
    late = lateness_service.misses_of_runs(project, rows)
    table = Table(
        "id",
        "pipeline",
        "logical date",
        "origin",
        "state",
        "late",
        "attempt",
        "started",
        "duration",
        "run id",
        box=None,
    )
    for r in rows:
        table.add_row(
            str(r.id),
            r.pipeline,
            fmt_date(r.logical_date),
            r.origin,
            styled(r.state),
            fmt_late(late.get(r.id, [])),
            str(r.attempt),
            fmt_time(r.started_at),
            fmt_run_took(r),
            r.run_id,
        )
    console.print(table if rows else "No runs.")


@runs_app.command("late")
def runs_late(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    start: Annotated[str | None, typer.Option(help="First logical date.")] = None,
    end: Annotated[str | None, typer.Option(help="Last logical date.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many at most.")] = 100,
    home: HomeOption = None,
) -> None:
    """Dates whose deadline passed before they succeeded, with or without a run."""
    from reflow.services import lateness as lateness_service

    rows = lateness_service.late_dates(_project(home), pipeline, start, end, limit=limit)
    if not rows:
        console.print(f"No missed deadline for {pipeline}.")
        return
    table = Table("logical date", "deadline of", "due", "recorded", "run", "state", box=None)
    for m in rows:
        table.add_row(
            fmt_date(m.logical_date),
            m.task or "run",
            fmt_time(m.due_at),
            fmt_time(m.recorded_at),
            "no run" if m.run is None else str(m.run),
            styled(m.run_state),
        )
    console.print(table)


@runs_app.command("show")
def runs_show(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    run: Annotated[str, typer.Argument(help="Run number, run id or logical date.")],
    home: HomeOption = None,
) -> None:
    """A run: its conf, attempts, task instances and tries."""
    from reflow.services import lateness as lateness_service
    from reflow.services import runs as run_service

    project = _project(home)
    run_service.known(project, pipeline)
    detail = run_service.run_detail(project, run_service.find_run(project, run, pipeline))
    r = detail.run
    console.print(f"[bold]{r.pipeline}[/] run {r.id} {r.run_id}: {styled(r.state)}")
    console.print(
        f"  logical date {r.logical_date.isoformat()}, interval "
        f"[{r.data_interval_start.isoformat()}, {r.data_interval_end.isoformat()})"
    )
    console.print(
        f"  origin {r.origin}, version {r.version}, started {fmt_time(r.started_at) or '-'}, "
        f"ended {fmt_time(r.ended_at) or '-'}, duration {fmt_run_took(r)}"
    )
    secrets = run_service.secrets_of(project, pipeline)
    console.print(f"  conf {json.dumps(secrets.conf(r.conf), sort_keys=True)}")
    for m in lateness_service.misses_of_runs(project, [r])[r.id]:
        what = f"task {m.task}" if m.task else "the run"
        console.print(f"  [red]late[/]: {what} had not succeeded by {fmt_time(m.due_at)}")
    if len(detail.attempts) > 1:
        for a in detail.attempts:
            console.print(
                f"  attempt {a.attempt}: {a.origin} {styled(a.state)} "
                f"conf {json.dumps(secrets.conf(a.conf), sort_keys=True)}"
            )
    _print_tis(project, detail)
    if detail.history:
        console.print("  history:")
        for e in detail.history:
            who = f"task {e.task_id}" if e.task_id else "run"
            move = f"{e.old} -> {e.new}" if e.old else e.new
            console.print(f"    {fmt_time(e.at)}  {who}  {move}  {escape(e.detail)}")


def _print_tis(project: Project, detail: run_service.RunDetail) -> None:
    from reflow.services import history as history_service

    tries: dict[str, list[TaskTry]] = {}
    for t in detail.tries:
        tries.setdefault(t.task_id, []).append(t)
    spans = history_service.task_spans(project, detail.task_instances)
    now = datetime.now(UTC)
    with_app = any(t.app_id for t in detail.tries)
    columns = ["task", "state", "tries", "started", "duration", "exit", "reason"]
    table = Table(*columns, *(["application"] if with_app else []), box=None)
    for ti in detail.task_instances:
        last = tries.get(ti.task_id, [None])[-1]
        span = spans[ti.id]
        cells = [
            ti.task_id,
            styled(ti.state),
            str(ti.try_number),
            fmt_time(span.started_at),
            fmt_took(span.seconds(now)),
            "" if last is None or last.exit_code is None else str(last.exit_code),
            ti.failure_reason or "",
        ]
        if with_app:
            cells.append((last.app_id or "") if last is not None else "")
        table.add_row(*cells)
    console.print(table)


@tasks_app.command("list")
def tasks_list(
    run: Annotated[str, typer.Argument(help="Run number (from `runs list`) or run id.")],
    pipeline: Annotated[
        str | None,
        typer.Option("--pipeline", "-p", help="Pipeline, when RUN is a run id or a logical date."),
    ] = None,
    home: HomeOption = None,
) -> None:
    """The task instances of a run, with their tries."""
    from reflow.services import runs as run_service

    project = _project(home)
    if pipeline is not None:
        run_service.known(project, pipeline)
    detail = run_service.run_detail(project, run_service.find_run(project, run, pipeline))
    console.print(
        f"[bold]{detail.run.pipeline}[/] run {detail.run.id} {detail.run.run_id}: "
        f"{styled(detail.run.state)}"
    )
    _print_tis(project, detail)


# -- logs -----------------------------------------------------------------------------------
@app.command()
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

    project = _project(home)
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


# -- scheduler ------------------------------------------------------------------------------
@app.command()
def scheduler(
    home: HomeOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve /metrics (Prometheus), /healthz and /readyz on this TCP port "
            "(0: any free port, printed).",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(
            "--metrics-host",
            help="Address for --metrics-port (default 127.0.0.1; 0.0.0.0 in a container). "
            "Served without authentication.",
            show_default=False,
        ),
    ] = None,
    log_format: LogFormatOption = LogFormat.text,
) -> None:
    """Run the scheduler until SIGTERM or Ctrl-C (its running tries go on, adopted later)."""
    from reflow.scheduler import Scheduler
    from reflow.scheduler.probes import ProbeServer
    from reflow.services.logs import check_logs

    if metrics_host is not None and metrics_port is None:
        raise InvalidInput("--metrics-host needs --metrics-port")

    configure_logging(log_format, verbose=verbose, console=err_console)
    project = _project(home)
    # A daemon rides out database outages however long they last (one log line each).
    project.db.outage_timeout = None
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger("reflow").warning("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Bound first: a port in use is one line before anything starts.
    probes = None
    if metrics_port is not None:
        probes = ProbeServer(metrics_host or "127.0.0.1", metrics_port)
    try:
        check_logs(project, write=True)  # before anything starts: one line if it fails
        sched = Scheduler(
            project.db, project.settings, project.launcher(), relaunch=project.launcher
        )
        logs = project.settings.remote_logs or project.settings.logs_path
        say(
            f"reflow scheduler: {project.settings.pipelines_path} -> "
            f"{project.db.engine.url.render_as_string(hide_password=True)}; logs: {logs}",
            err_console,
        )
        if probes is not None:
            probes.serve(sched)
            say(
                f"reflow scheduler: metrics on {probes.url}/metrics, probes on /healthz and "
                "/readyz",
                err_console,
            )
        sched.run(stop)
    finally:
        if probes is not None:
            probes.close()
    say("reflow scheduler: stopped", err_console)


# -- db -------------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade(home: HomeOption = None) -> None:
    """Apply the schema migrations (also done automatically on first use)."""
    project = _project(home)
    console.print(
        f"Database at revision {project.db.current_revision()}: "
        f"{project.db.engine.url.render_as_string(hide_password=True)}"
    )


# -- backfill -------------------------------------------------------------------------------
class _BackfillGroup(TyperGroup):
    """`reflow backfill PIPELINE ...` creates a backfill; `reflow backfill list|show|...`
    manage them."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


backfill_app = typer.Typer(
    cls=_BackfillGroup,
    no_args_is_help=True,
    help="(Re)process a range of logical dates: `reflow backfill PIPELINE --start D --end D`.",
)
app.add_typer(backfill_app, name="backfill")


@backfill_app.command("create")
def backfill_create(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    start: Annotated[str, typer.Option("--start", "-s", help="First logical date.")],
    end: Annotated[str, typer.Option("--end", "-e", help="Last logical date (included).")],
    conf: Annotated[
        str | None,
        typer.Option(
            "--conf",
            "-c",
            help="JSON object overriding the params; replaces the conf of reprocessed runs.",
        ),
    ] = None,
    reprocess: Annotated[
        str,
        typer.Option(
            help="missing: dates without a successful run; failed: dates whose latest attempt "
            "failed; all: every date."
        ),
    ] = "missing",
    max_active_runs: Annotated[
        int | None,
        typer.Option(
            "--max-active-runs",
            help="Lower the pipeline's max_active_runs for this backfill.",
            show_default=False,
        ),
    ] = None,
    order: Annotated[str, typer.Option(help="oldest or newest date first.")] = "oldest",
    tasks: Annotated[
        str | None,
        typer.Option("--tasks", help="Only these tasks (comma-separated).", show_default=False),
    ] = None,
    from_task: Annotated[
        str | None,
        typer.Option(
            "--from-task", help="This task and everything downstream of it.", show_default=False
        ),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            "--priority",
            help="Its runs' priority, higher first: scheduled runs have 2, manual 1, "
            "backfills 0 by default (3 puts this one before today's scheduled runs).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; write nothing.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            "-w",
            help="Follow it with a progress bar; exit 0 only if every run succeeded.",
        ),
    ] = False,
    home: HomeOption = None,
) -> None:
    """Create a backfill: one run per logical date from start to end, queued for the
    scheduler, under every concurrency limit."""
    from reflow.services import backfill as backfill_service
    from reflow.services import runs as run_service

    project = _project(home)
    plan = backfill_service.plan(
        project,
        pipeline,
        start=start,
        end=end,
        conf=run_service.parse_conf(conf),
        reprocess=reprocess,
        tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks else None,
        from_task=from_task,
        max_active_runs=max_active_runs,
        order=order,
        priority=priority,
    )
    if dry_run:
        _print_plan(plan)
        return
    if wait:
        run_service.refuse_wait_if_paused(project, pipeline, "reflow backfill")
    busy = [d.run for d in plan.dates if d.run is not None and d.existing in RUN_ACTIVE]
    if wait and busy and not plan.count("create") and not plan.count("reset"):
        # The same backfill again, after its `--wait` was stopped: see its runs through.
        owners = sorted({r.backfill_id for r in busy if r.backfill_id is not None})
        where = f" (backfill {', '.join(map(str, owners))})" if owners else ""
        console.print(
            f"Nothing new to backfill: {len(busy)} of {len(plan.dates)} dates are already "
            f"queued or running{where}; waiting for them."
        )
        _wait_and_report(project, pipeline, [r.id for r in busy])
        return
    backfill_id = backfill_service.create(project, plan)
    counts = plan.planned
    console.print(
        f"Backfill [bold]{backfill_id}[/] of {pipeline}: {counts['create']} runs "
        f"created, {counts['reset']} reset, {counts['skip']} skipped "
        f"({fmt_date(plan.start)} .. {fmt_date(plan.end)})."
    )
    if wait:
        _follow_backfill(project, backfill_id)
    else:
        _say_if_paused(project, pipeline)


def _print_plan(plan: backfill_service.Plan) -> None:
    table = Table("logical date", "existing", "action", "why", "conf change", box=None)
    style = {"create": "green", "reset": "yellow", "skip": "grey50"}
    for item in plan.dates:
        diff = ", ".join(
            f"{k}: {json.dumps(a)} -> {json.dumps(b)}"
            for k, (a, b) in sorted(item.conf_diff.items())
        )
        table.add_row(
            fmt_date(item.logical_date),
            styled(item.existing) or "-",
            f"[{style[item.action]}]{item.action}[/]",
            item.reason,
            diff,
        )
    console.print(table)
    counts = plan.planned
    tasks = ", ".join(plan.tasks) if plan.selected else "all tasks"
    console.print(
        f"Plan: {counts['create']} to create, {counts['reset']} to reset, "
        f"{counts['skip']} to skip; {tasks}; conf {json.dumps(plan.resolved)}. "
        "Nothing was written (--dry-run)."
    )


def _follow_backfill(project: Project, backfill_id: int) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from reflow.services import backfill as backfill_service
    from reflow.services import runs as run_service

    columns = (
        TextColumn("[bold]backfill {task.fields[id]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task("", total=None, id=backfill_id, status="")

        def show(p: run_service.Progress) -> None:
            left = backfill_service.eta(project, backfill_id)
            eta = f", ETA {fmt_seconds(left)}" if left is not None and p.done < p.total else ""
            bar.update(
                task,
                total=p.total,
                completed=p.done,
                status=f"running {p.running}, failed {p.failed}{eta}"
                + (f" · {p.note}" if p.note else ""),
            )

        result = backfill_service.wait(project, backfill_id, show)
    _, runs = backfill_service.show(project, backfill_id)
    bad = [r for r in runs if r.state != RunState.SUCCESS]
    console.print(
        f"Backfill {backfill_id}: {result.done - result.failed} of {result.total} runs succeeded."
    )
    if bad:
        for r in bad:
            detail = run_service.run_detail(project, r)
            failed = [
                f"{ti.task_id} ({ti.failure_reason or ti.state})"
                for ti in detail.task_instances
                if ti.state != "success"
            ]
            err_console.print(
                f"  [red]{fmt_date(r.logical_date)}[/] {r.state}: {', '.join(failed)}"
            )
        raise typer.Exit(1)


def fmt_seconds(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}m{sec:02d}s" if minutes else f"{sec}s"


@backfill_app.command("list")
def backfill_list(
    pipeline: Annotated[str | None, typer.Argument(help="Only this pipeline.")] = None,
    home: HomeOption = None,
) -> None:
    """Backfills, newest first, with their progress."""
    from reflow.services import backfill as backfill_service

    rows = backfill_service.list_backfills(_project(home), pipeline)
    table = Table(
        "id", "pipeline", "range", "reprocess", "state", "done", "failed", "created", box=None
    )
    for s in rows:
        r = s.row
        failed = s.runs.get("failed", 0) + s.runs.get("cancelled", 0)
        table.add_row(
            str(r.id),
            r.pipeline,
            f"{fmt_date(r.start)} .. {fmt_date(r.end)}",
            r.reprocess,
            styled(r.state),
            f"{s.done}/{s.total}",
            str(failed),
            fmt_time(r.created_at),
        )
    console.print(table if rows else "No backfills.")


@backfill_app.command("show")
def backfill_show(
    backfill_id: Annotated[int, typer.Argument(help="Backfill id.")],
    home: HomeOption = None,
) -> None:
    """A backfill's settings, progress and the state of each date."""
    from reflow.services import backfill as backfill_service

    status, runs = backfill_service.show(_project(home), backfill_id)
    r = status.row
    console.print(
        f"[bold]backfill {r.id}[/] {r.pipeline} {fmt_date(r.start)} .. "
        f"{fmt_date(r.end)}: {styled(r.state)}, {status.done}/{status.total} done"
    )
    console.print(
        f"  reprocess {r.reprocess}, order {r.run_order}, max_active_runs "
        f"{r.max_active_runs or 'pipeline default'}, tasks "
        f"{', '.join(r.tasks) if r.tasks else 'all'}, conf {json.dumps(r.conf)}"
    )
    console.print(f"  planned: {r.planned}")
    table = Table("logical date", "run", "state", "attempt", "duration", box=None)
    for run in runs:
        table.add_row(
            fmt_date(run.logical_date),
            str(run.id),
            styled(run.state),
            str(run.attempt),
            fmt_run_took(run),
        )
    console.print(table)


@backfill_app.command("cancel")
def backfill_cancel(
    backfill_id: Annotated[int, typer.Argument(help="Backfill id.")],
    home: HomeOption = None,
) -> None:
    """Cancel queued runs and stop running tries of a backfill."""
    from reflow.services import backfill as backfill_service

    n = backfill_service.cancel(_project(home), backfill_id)
    console.print(f"Backfill {backfill_id} cancelled: {n} runs cancelled.")


@backfill_app.command("pause")
def backfill_pause(
    backfill_id: Annotated[int, typer.Argument(help="Backfill id.")],
    home: HomeOption = None,
) -> None:
    """Start no more of its runs (running ones finish)."""
    from reflow.services import backfill as backfill_service

    backfill_service.pause(_project(home), backfill_id)
    console.print(f"Backfill {backfill_id} paused.")


@backfill_app.command("resume")
def backfill_resume(
    backfill_id: Annotated[int, typer.Argument(help="Backfill id.")],
    home: HomeOption = None,
) -> None:
    """Resume a paused backfill."""
    from reflow.services import backfill as backfill_service

    backfill_service.resume(_project(home), backfill_id)
    console.print(f"Backfill {backfill_id} resumed.")


# -- history --------------------------------------------------------------------------------
RunOption = Annotated[
    str | None,
    typer.Option("--run", "-r", help="Run number, run id or logical date.", show_default=False),
]
StartOption = Annotated[
    str | None, typer.Option("--start", help="First logical date.", show_default=False)
]
EndOption = Annotated[
    str | None, typer.Option("--end", help="Last logical date (included).", show_default=False)
]


@runs_app.command("clear")
def runs_clear(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    run: RunOption = None,
    start: StartOption = None,
    end: EndOption = None,
    tasks: Annotated[
        str | None, typer.Option(help="Only these tasks (comma-separated).", show_default=False)
    ] = None,
    only_failed: Annotated[
        bool, typer.Option("--only-failed", help="Only failed task instances.")
    ] = False,
    downstream: Annotated[
        bool, typer.Option("--downstream", help="Their downstream tasks too.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Reset task instances so they run again (new tries) and queue their runs."""
    from reflow.services import history as history_service

    result = history_service.clear(
        _project(home),
        pipeline,
        run=run,
        start=start,
        end=end,
        tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks else None,
        only_failed=only_failed,
        downstream=downstream,
    )
    console.print(f"Cleared {result.task_instances} task instances in {result.runs} runs.")
    for run_id, task in result.left_running:
        err_console.print(f"  {task} of {run_id} is running and was left as it is")


@runs_app.command("mark")
def runs_mark(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    run: Annotated[str, typer.Option("--run", "-r", help="Run number, run id or logical date.")],
    state: Annotated[str, typer.Option("--state", help="success or failed.")],
    home: HomeOption = None,
) -> None:
    """Set a run and its task instances to success or failed (running tries are stopped)."""
    from reflow.services import history as history_service

    row = history_service.mark(_project(home), pipeline, run, state)
    console.print(f"Run {row.id} {row.run_id} is now {styled(row.state)}.")


@runs_app.command("delete")
def runs_delete(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    run: RunOption = None,
    start: StartOption = None,
    end: EndOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Stop and delete active runs too.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Delete runs with their task instances, tries and log files."""
    from reflow.services import history as history_service

    d = history_service.delete(_project(home), pipeline, run=run, start=start, end=end, force=force)
    console.print(
        f"Deleted {d.runs} runs, {d.task_instances} task instances, {d.tries} "
        f"tries and {d.logs} log files."
    )


@pipelines_app.command("delete")
def pipelines_delete(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    purge: Annotated[bool, typer.Option("--purge", help="Delete its whole history too.")] = False,
    home: HomeOption = None,
) -> None:
    """Forget a pipeline whose file was removed (its active runs are cancelled). Without
    --purge its history stays and comes back with the file."""
    from reflow.services import history as history_service

    counts = history_service.delete_pipeline(_project(home), name, purge=purge)
    if purge:
        console.print(
            f"Pipeline {name} purged: {counts['runs']} runs, "
            f"{counts['task_instances']} task instances, {counts['tries']} tries, "
            f"{counts['backfills']} backfills, {counts['logs']} log files, "
            f"{counts['notifications']} notifications."
        )
    else:
        console.print(f"Pipeline {name} deleted; its history is kept.")


@db_app.command("clean")
def db_clean(
    before: Annotated[
        str,
        typer.Option(
            "--before", help="Purge finished runs whose logical date is before this date."
        ),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count only.")] = False,
    home: HomeOption = None,
) -> None:
    """Purge finished history older than a date."""
    from reflow.services import history as history_service

    counts = history_service.clean(_project(home), before, dry_run=dry_run)
    verb = "Would delete" if dry_run else "Deleted"
    console.print(
        f"{verb}: {counts['runs']} runs, {counts['task_instances']} task instances, "
        f"{counts['tries']} tries, {counts['logs']} log files, {counts['backfills']} "
        f"backfills, {counts['schedulers']} schedulers, {counts['notifications']} "
        "notifications (sent or given up)."
    )


# -- kubernetes ---------------------------------------------------------------------------
@k8s_app.command("render")
def k8s_render(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    task: Annotated[str, typer.Argument(help="Task id.")],
    date: Annotated[str, typer.Option("--date", "-d", help="Logical date (YYYY-MM-DD).")],
    conf: Annotated[str | None, typer.Option("--conf", help="Run conf as a JSON object.")] = None,
    home: HomeOption = None,
) -> None:
    """Print the YAML of the pod (and claims) a try of TASK for DATE would create.

    For review, or `kubectl apply --dry-run=server -f -`. The pod's name ends with the
    try's id, given when the try is queued: 0 here. Values of secret params are shown as
    *** (give pods secrets through Kubernetes secrets: Pod(secret_env=...)).
    """
    from reflow.services import kubernetes as k8s_service
    from reflow.services import runs as run_service

    try:
        import yaml
    except ImportError:
        raise InvalidInput(
            "rendering pods needs PyYAML: pip install 'reflow[kubernetes]'"
        ) from None
    project = _project(home)
    rendered = k8s_service.render(project, pipeline, task, date, run_service.parse_conf(conf))
    text = yaml.safe_dump_all(
        rendered.manifests, sort_keys=False, default_flow_style=False, width=100
    )
    sys.stdout.write(scrub(text, rendered.secret_values))
