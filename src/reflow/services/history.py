"""Managing run history without SQL: clear, mark, delete runs; delete pipelines; clean.
Reading it: how long runs and tasks ran, and runs side by side by task."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reflow.core.config import is_url
from reflow.core.errors import Conflict, InvalidInput, NotFound
from reflow.core.naming import utcnow
from reflow.core.states import (
    RUN_ACTIVE,
    TI_FAILED_RESULTS,
    TI_FINISHED,
    FailureReason,
    RunOrigin,
    RunState,
)
from reflow.services import runs as run_service
from reflow.services.project import Project
from reflow.store import history
from reflow.store import pipelines as store_pipelines
from reflow.store import runs as store_runs
from reflow.store import tries as store_tries
from reflow.store.records import Run, TaskInstance

# The pipeline model, backfills' task selection and shipped logs are imported where they
# are used: how long a run ran (``run_span``, for every list of runs) needs none of them.
if TYPE_CHECKING:
    from reflow.core.pipeline import Pipeline


def _runs(
    project: Project, pipeline: str, run: str | None, start: str | None, end: str | None
) -> list[Run]:
    """The runs a history command works on: one run, or every run in a date range."""
    run_service.known(project, pipeline)
    if run is not None and (start or end):
        raise InvalidInput("give --run or --start/--end, not both")
    if run is not None:
        return [run_service.find_run(project, run, pipeline)]
    if not start or not end:
        raise InvalidInput("give --run ID, or --start D and --end D")
    first, last = run_service.date_range(project, pipeline, start, end)
    with project.db.read() as conn:
        return history.runs_in_range(conn, pipeline, first, last)


# -- clear ----------------------------------------------------------------------------------
@dataclass
class Cleared:
    runs: int = 0
    task_instances: int = 0
    left_running: list[tuple[str, str]] = field(default_factory=list)  # (run id, task)


def clear(
    project: Project,
    pipeline: str,
    *,
    run: str | None = None,
    start: str | None = None,
    end: str | None = None,
    tasks: Sequence[str] | None = None,
    only_failed: bool = False,
    downstream: bool = False,
) -> Cleared:
    """Reset task instances to pending (they get new tries) and queue their runs again."""
    defined = project.pipeline(pipeline)
    rows = _runs(project, pipeline, run, start, end)
    chosen = _chosen_tasks(defined, tasks, downstream)
    now = utcnow()

    def work(conn: Any) -> Cleared:
        result = Cleared()
        tis_by_run: dict[int, list[TaskInstance]] = {}
        for ti in store_runs.run_task_instances(conn, [r.id for r in rows]):
            tis_by_run.setdefault(ti.run, []).append(ti)
        for row in store_runs.runs_by_pk(conn, [r.id for r in rows]):
            tis = tis_by_run.get(row.id, [])
            wanted = [
                ti.task_id
                for ti in tis
                if ti.task_id in chosen and (not only_failed or ti.state in TI_FAILED_RESULTS)
            ]
            if only_failed and downstream:
                wanted = _with_downstream(defined, wanted)
            if not wanted and not (row.state in RUN_ACTIVE and defined.version != row.version):
                continue
            done = history.reset_run(
                conn,
                row,
                clear=wanted,
                tasks=defined.topological(),
                conf=row.conf,
                origin=RunOrigin(row.origin),
                version=defined.version,
                now=now,
                backfill_id=row.backfill_id,
            )
            if done is None:
                continue  # cleared by a concurrent command meanwhile: nothing left to do
            if done.cleared or row.state not in RUN_ACTIVE:
                result.runs += 1  # queued again, or some of its task instances cleared
            result.task_instances += done.cleared
            result.left_running += [(row.run_id, t) for t in done.live]
        return result

    return project.db.write(work)


def _chosen_tasks(pipeline: Pipeline, tasks: Sequence[str] | None, downstream: bool) -> set[str]:
    from reflow.services.backfill import select_tasks

    if not tasks:
        return set(pipeline.tasks)
    chosen, _ = select_tasks(pipeline, tasks, None)
    return set(_with_downstream(pipeline, chosen) if downstream else chosen)


def _with_downstream(pipeline: Pipeline, task_ids: Sequence[str]) -> list[str]:
    from reflow.services.backfill import select_tasks

    out: list[str] = []
    for task_id in task_ids:
        for t in select_tasks(pipeline, None, task_id)[0]:
            if t not in out:
                out.append(t)
    return out


# -- mark -----------------------------------------------------------------------------------
def mark(project: Project, pipeline: str, run: str, state: str, wait: float = 30.0) -> Run:
    """Set a run (and its task instances) to success or failed; its running tries are
    stopped first."""
    run_service.known(project, pipeline)
    try:
        target = RunState(state)
    except ValueError:
        raise InvalidInput("--state must be success or failed") from None
    if target not in (RunState.SUCCESS, RunState.FAILED):
        raise InvalidInput("--state must be success or failed")
    row = run_service.find_run(project, run, pipeline)
    now = utcnow()

    def work(conn: Any) -> list[int]:
        current = history.mark_run(conn, row, target, now)
        return [t.id for t in store_tries.live_tries_of_runs(conn, [current.id])]

    live = project.db.write(work)
    run_service.stop_tries(project, pipeline, live, wait)
    return run_service.find_run(project, str(row.id))


# -- delete ---------------------------------------------------------------------------------
@dataclass
class Deleted:
    runs: int = 0
    task_instances: int = 0
    tries: int = 0
    logs: int = 0


def delete(
    project: Project,
    pipeline: str,
    *,
    run: str | None = None,
    start: str | None = None,
    end: str | None = None,
    force: bool = False,
    wait: float = 30.0,
) -> Deleted:
    """Delete runs with their task instances, tries and logs. An active run, or a run
    with a live try, is refused, unless ``force``: then it is cancelled and its tries
    stopped first. Whether a try is live is checked again in the deleting transaction,
    so a run cleared and started meanwhile is refused, never deleted under its process."""
    rows = _runs(project, pipeline, run, start, end)
    pks = [r.id for r in rows]
    if force:
        now = utcnow()

        def stop(conn: Any) -> list[int]:
            live = [t.id for t in store_tries.live_tries_of_runs(conn, pks)]
            history.cancel_runs(conn, pks, now, "deleted")
            history.stop_live_tries(conn, pks, FailureReason.KILLED.value)
            return live

        live = project.db.write(stop)
        if not run_service.stop_tries(project, pipeline, live, wait):
            raise Conflict("the runs' tries did not stop in time; nothing was deleted")
    counts = project.db.write(lambda c: history.delete_finished_runs(c, pks))
    removed = _remove_logs(project, counts["logs"])
    return Deleted(counts["runs"], counts["task_instances"], counts["tries"], removed)


@dataclass
class _LogRemoval:
    files: list[Path]  # log files that exist
    folders: list[Path]  # folders under the logs folder left empty without them, deepest first


def _log_removal(project: Project, paths: Sequence[str]) -> _LogRemoval:
    """What removing the log files ``paths`` removes: the files that exist, and the
    folders under the logs folder (theirs and their parents) that hold nothing else.
    Planned once, used both to remove and to count what a dry run would remove."""
    root = project.settings.logs_path
    every = {Path(p) for p in paths}
    files = sorted(p for p in every if p.is_file() or p.is_symlink())
    gone: set[Path] = set(files)
    parents: set[Path] = set()
    for path in every:
        parent = path.parent
        while parent != root and root in parent.parents:
            parents.add(parent)
            parent = parent.parent
    folders: list[Path] = []
    for folder in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        try:
            left = [entry for entry in folder.iterdir() if entry not in gone]
        except OSError:
            continue
        if not left:
            gone.add(folder)
            folders.append(folder)
    return _LogRemoval(files, folders)


def _count_logs(project: Project, paths: Sequence[str]) -> int:
    """How many log files :func:`_remove_logs` would remove (shipped logs: those that have
    a copy under their URL)."""
    shipped = [p for p in paths if is_url(p)]
    local = [p for p in paths if not is_url(p)]
    count = len(_log_removal(project, local).files)
    if shipped:
        from reflow.store.logs import remote_for

        count += len(remote_for(project.settings, shipped[0]).present(shipped))
    return count


def _remove_logs(project: Project, paths: Sequence[str]) -> int:
    """Remove log files (and folders left empty) under the logs folder, and the copies of
    shipped logs under their URL; returns how many logs it removed."""
    shipped = [p for p in paths if is_url(p)]
    plan = _log_removal(project, [p for p in paths if not is_url(p)])
    removed = 0
    if shipped:
        from reflow.store.logs import remote_for

        removed += remote_for(project.settings, shipped[0]).remove(shipped)
        for location in shipped:  # a spool file a stopped scheduler left on this host
            with contextlib.suppress(OSError):
                project.settings.log_file(location).unlink()
    for path in plan.files:
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    for folder in plan.folders:
        with contextlib.suppress(OSError):
            folder.rmdir()
    return removed


def delete_pipeline(
    project: Project, name: str, *, purge: bool = False, wait: float = 30.0
) -> dict[str, Any]:
    """Forget a pipeline whose file is gone. Its queued and running runs are cancelled.
    Without ``purge`` its history stays, and a file defining it again picks it up; with
    ``purge`` everything recorded about it is deleted, logs included."""
    with project.db.read() as conn:
        rows = store_pipelines.pipeline_rows(conn, [name])
    if not rows:
        raise NotFound(f"unknown pipeline {name!r}")
    if name in project.catalog.pipelines:
        raise Conflict(
            f"pipeline {name!r} is still defined in {project.catalog.pipelines[name].fileloc}; "
            "remove the file first, or the scheduler will load it again"
        )
    now = utcnow()

    def cancel(conn: Any) -> list[int]:
        active = [r.id for r in store_runs.active_runs(conn, [name])]
        live = [t.id for t in store_tries.live_tries_of_runs(conn, active)]
        history.cancel_runs(conn, active, now, "pipeline deleted")
        history.deactivate_pipeline(conn, name, now)
        return live

    live = project.db.write(cancel)
    stopped = run_service.stop_tries(project, name, live, wait)
    if not purge:
        return {"runs": 0}
    if not stopped:
        raise Conflict(
            f"pipeline {name!r} is deleted, but its tries did not stop in time, so its history "
            "was not purged; run the command again once they stopped"
        )
    counts = project.db.write(lambda c: history.purge_pipeline(c, name))
    counts["logs"] = _remove_logs(project, counts["logs"])
    return counts


def clean(project: Project, before: str, *, dry_run: bool = False) -> dict[str, int]:
    """Purge finished history older than ``before`` (by logical date): runs, task
    instances, tries, log files, backfills and schedulers, counted. A dry run deletes
    nothing and counts what the real clean would delete, the same way."""
    from reflow.core.schedule import to_datetime

    when = run_service.parse_date(before)
    cutoff: datetime = to_datetime(when)
    if dry_run:
        with project.db.read() as conn:
            counts = history.clean_before(conn, cutoff, dry_run=True)
        counts["logs"] = _count_logs(project, counts["logs"])
    else:
        counts = project.db.write(lambda c: history.clean_before(c, cutoff, dry_run=False))
        counts["logs"] = _remove_logs(project, counts["logs"])
    return {k: int(v) for k, v in counts.items()}


# -- how long things ran ----------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    """When something actually ran. No start: it never ran (it has no duration)."""

    started_at: datetime | None
    ended_at: datetime | None
    ongoing: bool = False

    def seconds(self, now: datetime) -> float | None:
        """How long it ran (so far, while it is ongoing); None when it never ran or its
        end is unknown."""
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else (now if self.ongoing else None)
        if end is None:
            return None
        return max(0.0, (end - self.started_at).total_seconds())


def run_span(run: Run) -> Span:
    """A run ran from its start to its end; one that ended (marked, cancelled) before it
    started never ran."""
    if run.started_at is None:
        return Span(None, None)
    active = run.state in RUN_ACTIVE
    return Span(run.started_at, None if active else run.ended_at, ongoing=active)


def task_spans(project: Project, task_instances: Sequence[TaskInstance]) -> dict[int, Span]:
    """When each task instance ran (by id): from the start of its first try since it was
    last cleared to its end. One whose try never started (pending, removed,
    upstream_failed, marked before it ran, a no-op task) never ran."""
    with project.db.read() as conn:
        starts = history.first_try_starts(conn, [ti.run for ti in task_instances])
    spans: dict[int, Span] = {}
    for ti in task_instances:
        start = starts.get(ti.id)
        finished = ti.state in TI_FINISHED
        spans[ti.id] = Span(
            start, ti.ended_at if finished and start is not None else None, not finished
        )
    return spans


# -- runs side by side ------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """A pipeline's task instances, a row per task (upstream first) and a column per run
    of a :class:`~reflow.services.runs.Window` (oldest first): the state of each, None
    where a run has no such task."""

    tasks: list[str]
    runs: list[Run]
    states: list[list[str | None]]
    older: bool  # older runs exist


def grid(
    project: Project,
    pipeline: str,
    first: datetime | None = None,
    last: datetime | None = None,
    *,
    offset: int = 0,
    limit: int = 60,
) -> Grid:
    """The task instances of the runs :func:`~reflow.services.runs.window` picks."""
    page = run_service.window(project, pipeline, first, last, offset=offset, limit=limit)
    tasks, tis = _by_task(project, pipeline, page.runs)
    states: list[list[str | None]] = [[None] * len(page.runs) for _ in tasks]
    for ti, row, column in tis:
        states[row][column] = ti.state
    return Grid(tasks, page.runs, states, page.older)


@dataclass(frozen=True)
class Durations:
    """How long each task ran, a row per task (upstream first) and a column per run
    (oldest first); None where a run has no such task, or it never ran or runs still."""

    tasks: list[str]
    runs: list[Run]
    seconds: list[list[float | None]]


def durations(
    project: Project, pipeline: str, upto: datetime | None = None, *, limit: int = 30
) -> Durations:
    """Each task's duration across the latest ``limit`` runs up to logical date ``upto``
    (or the latest runs): how long the finished task instances ran."""
    page = run_service.window(project, pipeline, None, upto, limit=limit)
    tasks, tis = _by_task(project, pipeline, page.runs)
    spans = task_spans(project, [ti for ti, _, _ in tis])
    now = utcnow()
    seconds: list[list[float | None]] = [[None] * len(page.runs) for _ in tasks]
    for ti, row, column in tis:
        if not spans[ti.id].ongoing:  # a running one is not a sample
            seconds[row][column] = spans[ti.id].seconds(now)
    return Durations(tasks, page.runs, seconds)


def _by_task(
    project: Project, pipeline: str, runs: Sequence[Run]
) -> tuple[list[str], list[tuple[TaskInstance, int, int]]]:
    """The task ids of ``runs`` in order, and their task instances, each with its row (by
    task) and column (by run)."""
    with project.db.read() as conn:
        tis = store_runs.run_task_instances(conn, [r.id for r in runs])
    tasks = run_service.task_order(project, pipeline, {t.task_id for t in tis})
    row_of = {t: i for i, t in enumerate(tasks)}
    column_of = {r.id: i for i, r in enumerate(runs)}
    return tasks, [(ti, row_of[ti.task_id], column_of[ti.run]) for ti in tis]
