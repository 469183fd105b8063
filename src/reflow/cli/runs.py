"""``reflow runs …`` and ``reflow tasks …``: runs and their task instances, and repairing
their history."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from reflow.cli.options import (
    HomeOption,
    console,
    err_console,
    fmt_date,
    fmt_late,
    fmt_run_took,
    fmt_time,
    fmt_took,
    open_project,
    styled,
)

if TYPE_CHECKING:
    from reflow.services import runs as run_service
    from reflow.services.project import Project
    from reflow.services.records import TaskTry

# Their help and their place among the commands: cli/app.py.
runs_app = typer.Typer()
tasks_app = typer.Typer()


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

    project = open_project(home)
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

    rows = lateness_service.late_dates(open_project(home), pipeline, start, end, limit=limit)
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

    project = open_project(home)
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

    project = open_project(home)
    if pipeline is not None:
        run_service.known(project, pipeline)
    detail = run_service.run_detail(project, run_service.find_run(project, run, pipeline))
    console.print(
        f"[bold]{detail.run.pipeline}[/] run {detail.run.id} {detail.run.run_id}: "
        f"{styled(detail.run.state)}"
    )
    _print_tis(project, detail)


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
        open_project(home),
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

    row = history_service.mark(open_project(home), pipeline, run, state)
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

    d = history_service.delete(
        open_project(home), pipeline, run=run, start=start, end=end, force=force
    )
    console.print(
        f"Deleted {d.runs} runs, {d.task_instances} task instances, {d.tries} "
        f"tries and {d.logs} log files."
    )
