"""``reflow backfill …``: (re)process a range of logical dates, and manage backfills."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from reflow.cli.app import say_if_paused, wait_and_report
from reflow.cli.options import (
    HomeOption,
    console,
    err_console,
    fmt_date,
    fmt_run_took,
    fmt_time,
    open_project,
    styled,
)
from reflow.core.states import RUN_ACTIVE, RunState

if TYPE_CHECKING:
    from reflow.services import backfill as backfill_service
    from reflow.services.project import Project

# Its help, its place among the commands and its group (`reflow backfill PIPELINE ...`
# creates one): cli/app.py.
backfill_app = typer.Typer()


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

    project = open_project(home)
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
        wait_and_report(project, pipeline, [r.id for r in busy])
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
        say_if_paused(project, pipeline)


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

    rows = backfill_service.list_backfills(open_project(home), pipeline)
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

    status, runs = backfill_service.show(open_project(home), backfill_id)
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

    n = backfill_service.cancel(open_project(home), backfill_id)
    console.print(f"Backfill {backfill_id} cancelled: {n} runs cancelled.")


@backfill_app.command("pause")
def backfill_pause(
    backfill_id: Annotated[int, typer.Argument(help="Backfill id.")],
    home: HomeOption = None,
) -> None:
    """Start no more of its runs (running ones finish)."""
    from reflow.services import backfill as backfill_service

    backfill_service.pause(open_project(home), backfill_id)
    console.print(f"Backfill {backfill_id} paused.")


@backfill_app.command("resume")
def backfill_resume(
    backfill_id: Annotated[int, typer.Argument(help="Backfill id.")],
    home: HomeOption = None,
) -> None:
    """Resume a paused backfill."""
    from reflow.services import backfill as backfill_service

    backfill_service.resume(open_project(home), backfill_id)
    console.print(f"Backfill {backfill_id} resumed.")
