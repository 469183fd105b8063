"""Use-cases on runs: trigger, wait, list, show (a try's log: ``services.logs``)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reflow.core.errors import Conflict, InvalidInput, NotFound
from reflow.core.naming import utcnow
from reflow.core.states import RUN_FINISHED, RunOrigin, RunState
from reflow.services.project import Project
from reflow.store import pipelines as store_pipelines
from reflow.store import runs as store_runs
from reflow.store import schedulers as store_schedulers
from reflow.store import tries as store_tries
from reflow.store.records import (
    HistoryEvent,
    Run,
    RunAttempt,
    SchedulerRecord,
    TaskInstance,
    TaskTry,
)

# The pipeline model, the schedules, the scheduler and the rarer queries are imported where
# they are used: listing or showing runs reads none of them.
if TYPE_CHECKING:
    from reflow.core.masking import Secrets
    from reflow.core.pipeline import Pipeline
    from reflow.scheduler import Scheduler


def parse_conf(text: str | None) -> dict[str, Any]:
    """Parse ``--conf``: a JSON object, or nothing."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--conf is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(value, dict):
        raise InvalidInput('--conf must be a JSON object, like \'{"key": "value"}\'')
    return value


def parse_date(text: str) -> datetime:
    """A user-given date or date-time; naive means "in the pipeline's timezone"."""
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"bad date {text!r}: expected YYYY-MM-DD or an ISO 8601 date-time"
        ) from None


def logical_date_for(pipeline: Pipeline, when: datetime | None, now: datetime) -> datetime:
    """The logical date a manual trigger uses: the schedule's interval on ``when``'s date,
    or, without a date, the latest complete interval (what a scheduled run would do)."""
    schedule = pipeline.schedule
    if when is None:
        latest = schedule.latest_complete(now)
        return latest if latest is not None else now.replace(microsecond=0)
    from reflow.core.schedule import to_datetime

    local = to_datetime(when, schedule.tz)
    if schedule.is_manual:
        return local.astimezone(UTC)
    ceil = schedule.ceil(local)
    if ceil.astimezone(schedule.tz).date() == local.date():
        return ceil
    return schedule.floor(local)


def check_in_range(
    pipeline: Pipeline,
    first: datetime,
    last: datetime | None = None,
    *,
    labels: tuple[str, str] = ("--date", "--date"),
) -> None:
    """Refuse logical dates before the pipeline's first one (its start_date) or after its
    end_date: the one rule for manual triggers and backfills. ``labels`` name the options
    ``first`` and ``last`` came from; without a start_date any date is accepted."""
    last = first if last is None else last
    fmt = "%Y-%m-%d %H:%M"
    start, end = pipeline.start_date, pipeline.end_date
    span = (
        f"its dates run from {start.strftime(fmt) if start else 'any date'} "
        f"to {end.strftime(fmt) if end else 'no end'}"
    )
    if start:
        first_date = start if pipeline.schedule.is_manual else pipeline.schedule.ceil(start)
        if first < first_date:
            raise InvalidInput(
                f"{labels[0]} {first.strftime(fmt)} is before the pipeline's start_date "
                f"{start.strftime(fmt)} ({span})"
            )
    if end and last > end:
        raise InvalidInput(
            f"{labels[1]} {last.strftime(fmt)} is after the pipeline's end_date "
            f"{end.strftime(fmt)} ({span})"
        )


def trigger(
    project: Project,
    name: str,
    dates: Sequence[str] = (),
    conf: Mapping[str, Any] | None = None,
) -> list[Run]:
    """Create one manual run per date (or for the latest interval), all or nothing."""
    pipeline = project.pipeline(name)
    resolved = pipeline.params.resolve(conf)
    now = utcnow()
    logical = [logical_date_for(pipeline, parse_date(d), now) for d in dates] or [
        logical_date_for(pipeline, None, now)
    ]
    for logical_date in logical:
        check_in_range(pipeline, logical_date)

    def work(conn: Any) -> list[int]:
        pks = []
        for logical_date in logical:
            run_id = f"manual__{logical_date.isoformat()}__{uuid.uuid4().hex[:6]}"
            pks.append(
                store_runs.create_run(
                    conn,
                    pipeline=name,
                    run_id=run_id,
                    logical_date=logical_date,
                    interval=pipeline.schedule.interval(logical_date),
                    origin=RunOrigin.MANUAL,
                    conf=resolved,
                    version=pipeline.version,
                    task_ids=pipeline.topological(),
                    now=now,
                )
            )
        return pks

    pks = project.db.write(work)
    with project.db.read() as conn:
        return store_runs.runs_by_pk(conn, pks)


@dataclass
class Progress:
    total: int
    done: int
    failed: int
    running: int
    # Who drives the runs: a scheduler watched, or the one running in this process.
    note: str = ""


def progress(project: Project, run_pks: Sequence[int]) -> Progress:
    with project.db.read() as conn:
        rows = store_runs.runs_by_pk(conn, run_pks)
    return Progress(
        total=len(rows),
        done=sum(1 for r in rows if r.state in RUN_FINISHED),
        failed=sum(1 for r in rows if r.state in (RunState.FAILED, RunState.CANCELLED)),
        running=sum(1 for r in rows if r.state == RunState.RUNNING),
    )


def is_paused(project: Project, pipeline: str) -> bool:
    from reflow.store import pauses

    with project.db.read() as conn:
        return pipeline in pauses.paused_pipelines(conn)


def _empty_pools(project: Project, pipeline: str) -> list[str]:
    """The pools the pipeline's tasks use that have no slots at all."""
    defined = project.catalog.pipelines.get(pipeline)
    wanted = {t.option("pool") for t in defined.tasks.values()} - {None} if defined else set()
    if not wanted:
        return []
    from reflow.store import pools

    with project.db.read() as conn:
        slots = pools.slots(conn, wanted)
    return sorted(p for p in wanted if not slots.get(p))


def refuse_wait_if_paused(project: Project, pipeline: str, command: str) -> None:
    """``--wait`` on a paused pipeline would wait until someone unpauses it: refused,
    before anything is written."""
    if is_paused(project, pipeline):
        raise Conflict(
            f"pipeline {pipeline!r} is paused: unpause it first (reflow pipelines unpause "
            f"{pipeline}), or run `{command}` without --wait (its runs then wait for the unpause)"
        )


def scheduler_is_running(project: Project, pipeline: str | None = None) -> bool:
    """Is a live scheduler working on ``pipeline`` (or on every pipeline)?"""
    return _driver(project, pipeline, any_scope=True) is not None


def _driver(project: Project, pipeline: str | None, *, any_scope: bool) -> SchedulerRecord | None:
    """A live scheduler that drives ``pipeline``'s runs: a daemon (which drives every
    run), or with ``any_scope`` any scheduler covering the pipeline."""
    from reflow.scheduler.peers import covers, exited

    with project.db.read() as conn:
        live = store_schedulers.live_schedulers(conn, utcnow(), project.settings.scheduler_timeout)
    wanted = None if pipeline is None else [pipeline]
    host = socket.gethostname()
    for row in live:
        if exited(row, host):
            continue  # killed on this machine: no need to wait for its silence
        if row.scope is None or (any_scope and covers(row.scope, wanted)):
            return row
    return None


def _describe(row: SchedulerRecord, now: datetime, heartbeat_interval: float) -> str:
    silent = (now - row.heartbeat_at).total_seconds()
    quiet = f", silent for {silent:.0f}s" if silent >= 2 * heartbeat_interval else ""
    return f"waiting for scheduler {row.id} (pid {row.pid} on {row.host}{quiet})"


def _in_process(project: Project, pipeline: str, run_pks: Sequence[int]) -> Scheduler:
    """A scheduler for a command: it drives ``run_pks`` of ``pipeline`` (and adopts the
    pipeline's orphaned tries), creating no scheduled runs."""
    # Imported here: only commands that wait drive runs themselves (the scheduler and its
    # launchers are most of a command's start-up otherwise).
    from reflow.scheduler import Scheduler

    return Scheduler(
        project.db,
        project.settings,
        project.launcher(),
        catalog=project.catalog,
        only=[pipeline],
        runs=run_pks,
        create_scheduled_runs=False,
        relaunch=project.launcher,
    )


def wait(
    project: Project,
    pipeline: str,
    run_pks: Sequence[int],
    on_progress: Callable[[Progress], None] = lambda p: None,
) -> Progress:
    """Wait until the runs finish, making sure that something drives them.

    Who drives them is looked at again all along: while a scheduler daemon runs (or, on
    SQLite, which allows one scheduler at a time, any scheduler of this pipeline), its
    progress is watched; when there is none, or the one watched stops or falls silent
    for ``scheduler_timeout``, a scheduler runs in this process for these runs (every
    limit holds as usual) until they are done. Progress says which is the case.
    """
    last: list[Progress] = []
    note = [""]

    def finished() -> bool:
        p = progress(project, run_pks)
        p.note = note[0]
        if is_paused(project, pipeline):
            p.note = f"pipeline {pipeline} is paused: its runs wait until it is unpaused"
        elif empty := _empty_pools(project, pipeline):
            p.note = f"pool {empty[0]} has no slots: its tasks wait (reflow pools set {empty[0]} N)"
        if not last or p != last[-1]:
            on_progress(p)
        last[:] = [p]
        return p.done == p.total

    # Waiting rides out database outages like a daemon does (Ctrl-C still stops it).
    project.db.outage_timeout = None
    sqlite = project.db.is_sqlite
    while not finished():
        driver = _driver(project, pipeline, any_scope=sqlite)
        if driver is not None:
            note[0] = _describe(driver, utcnow(), project.settings.heartbeat_interval)
            time.sleep(0.2)
            continue
        note[0] = "running the scheduler in this process"
        scheduler = _in_process(project, pipeline, run_pks)
        try:
            scheduler.run(until=finished, idle_wait=0.2)
        except Conflict:
            # Another scheduler registered at the same moment (SQLite allows one): watch it.
            continue
    return last[-1]


def date_range(
    project: Project,
    pipeline: str,
    start: str | None,
    end: str | None,
    *,
    labels: tuple[str, str] = ("--start", "--end"),
) -> tuple[datetime | None, datetime | None]:
    """User-given dates ``start`` and ``end`` (None: open) as logical dates of the
    pipeline's schedule, as a manual trigger picks them; a pipeline whose file is gone
    has no schedule, so its dates are taken as given (UTC when naive). An end before the
    start is refused, naming the two by ``labels``."""
    given = [None if text is None else parse_date(text) for text in (start, end)]
    defined = project.catalog.pipelines.get(pipeline)
    if defined is not None:
        now = utcnow()
        first, last = (None if d is None else logical_date_for(defined, d, now) for d in given)
    else:
        from reflow.core.schedule import to_datetime

        first, last = (None if d is None else to_datetime(d) for d in given)
    if first is not None and last is not None and last < first:
        raise InvalidInput(f"{labels[1]} {end} is before {labels[0]} {start}")
    return first, last


def check_run_filter(project: Project, pipeline: str | None, state: str | None) -> None:
    """Refuse an unknown pipeline or run state (NotFound, InvalidInput)."""
    if pipeline is not None:
        known(project, pipeline)
    if state is not None and state not in {s.value for s in RunState}:
        raise InvalidInput(
            f"unknown run state {state!r} (one of: {', '.join(s.value for s in RunState)})"
        )


def list_runs(
    project: Project,
    pipeline: str | None = None,
    state: str | None = None,
    limit: int = 50,
    *,
    start: str | None = None,
    end: str | None = None,
    labels: tuple[str, str] = ("--start", "--end"),
) -> list[Run]:
    """Runs, newest logical date first. With ``start`` or ``end``, only those whose
    logical dates lie in that range of their pipeline's schedule (see :func:`date_range`)."""
    check_run_filter(project, pipeline, state)
    with project.db.read() as conn:
        if start is None and end is None:
            return store_runs.list_runs(conn, pipeline=pipeline, state=state, limit=limit)
        names = (
            [pipeline]
            if pipeline is not None
            else [p.name for p in store_pipelines.pipeline_rows(conn)]
        )
    ranges = {name: date_range(project, name, start, end, labels=labels) for name in names}
    from reflow.store import history

    rows: list[Run] = []
    with project.db.read() as conn:
        for name, (first, last) in ranges.items():
            rows += history.runs_in_range(conn, name, first, last)
    if state is not None:
        rows = [r for r in rows if r.state == state]
    rows.sort(key=lambda r: (r.logical_date, r.id), reverse=True)
    return rows[:limit]


@dataclass(frozen=True)
class Window:
    """A page of a pipeline's runs, oldest first, and whether older ones exist."""

    runs: list[Run]
    older: bool


def window(
    project: Project,
    pipeline: str,
    first: datetime | None = None,
    last: datetime | None = None,
    *,
    offset: int = 0,
    limit: int = 60,
) -> Window:
    """The ``limit`` newest runs after skipping the ``offset`` newest, of the logical
    dates from ``first`` to ``last`` (None: open; see :func:`date_range`)."""
    from reflow.store import history

    with project.db.read() as conn:
        if first is None and last is None:
            rows = store_runs.list_runs(conn, pipeline=pipeline, limit=offset + limit + 1)
            page = rows[offset : offset + limit]
            return Window(page[::-1], len(rows) > offset + limit)
        rows = history.runs_in_range(conn, pipeline, first, last)
    upto = max(0, len(rows) - offset)
    return Window(rows[max(0, upto - limit) : upto], upto > limit)


def known(project: Project, pipeline: str) -> None:
    """Raise NotFound unless the pipeline exists in the folder or in the history."""
    with project.db.read() as conn:
        if store_pipelines.pipeline_rows(conn, [pipeline]):
            return
    project.pipeline(pipeline)


def find_run(project: Project, key: str, pipeline: str | None = None) -> Run:
    """A run by its numeric id, its run id, or (with a pipeline) its logical date."""
    by_date = False
    with project.db.read() as conn:
        if key.isdigit():
            rows = store_runs.runs_by_pk(conn, [int(key)])
        elif pipeline is not None:
            rows = store_runs.find_runs(conn, pipeline, run_id=key)
            if not rows:
                try:
                    when = parse_date(key)
                except InvalidInput:
                    when = None
                pl = project.catalog.pipelines.get(pipeline)
                if when is not None and pl is not None:
                    logical = logical_date_for(pl, when, utcnow())
                    rows = store_runs.find_runs(conn, pipeline, logical_date=logical)
                    by_date = True
        else:
            rows = [
                r
                for p in store_pipelines.pipeline_rows(conn)
                for r in store_runs.find_runs(conn, p.name, run_id=key)
            ]
    if pipeline is not None:
        rows = [r for r in rows if r.pipeline == pipeline]
    if not rows:
        where = f" of pipeline {pipeline!r}" if pipeline else ""
        raise NotFound(f"no run {key!r}{where} (see `reflow runs list`)")
    if len(rows) > 1 and by_date:
        return rows[0]  # the latest run for that date
    if len(rows) > 1 and not key.isdigit():
        ids = ", ".join(str(r.id) for r in rows)
        raise InvalidInput(f"{key!r} matches several runs ({ids}); give the run's number")
    return rows[0]


@dataclass
class RunDetail:
    run: Run
    attempts: list[RunAttempt]
    task_instances: list[TaskInstance]
    tries: list[TaskTry]
    # What happened to it, oldest first: attempts, clears, marks, pipeline edits, failures.
    history: list[HistoryEvent]


def run_detail(project: Project, run: Run) -> RunDetail:
    with project.db.read() as conn:
        tis = store_runs.run_task_instances(conn, [run.id])
        order = task_order(project, run.pipeline, {t.task_id for t in tis})
        rank = {task_id: i for i, task_id in enumerate(order)}
        tis.sort(key=lambda t: rank[t.task_id])
        return RunDetail(
            run,
            store_runs.attempts_of(conn, run.id),
            tis,
            store_tries.tries_of(conn, run_pk=run.id),
            store_runs.run_history(conn, run.id),
        )


def task_order(project: Project, pipeline: str, found: Iterable[str] = ()) -> list[str]:
    """The pipeline's task ids, upstream first, then those of ``found`` it no longer
    has (recorded in older runs), by name."""
    pl = project.catalog.pipelines.get(pipeline)
    order = pl.topological() if pl is not None else []
    return order + sorted(set(found) - set(order))


def secrets_of(project: Project, pipeline: str) -> Secrets:
    """What must be masked when showing this pipeline's runs, conf and logs."""
    from reflow.core.masking import Secrets

    defined = project.catalog.pipelines.get(pipeline)
    if defined is not None:
        return Secrets.of(defined.structure(), defined.params.secret_names())
    with project.db.read() as conn:
        rows = store_pipelines.pipeline_rows(conn, [pipeline])
    return Secrets.of(rows[0].structure if rows else None)


def stop_tries(project: Project, pipeline: str, try_ids: Sequence[int], timeout: float) -> bool:
    """Wait until these tries (already asked to stop in the store) have ended.

    A running scheduler carries the stop out; without one, an in-process scheduler adopts
    the tries, stops them through their launcher and records how they ended. Returns True
    when all ended within ``timeout`` seconds."""
    if not try_ids:
        return True
    wanted = set(try_ids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with project.db.read() as conn:
            if not {t.id for t in store_tries.live_tries(conn)} & wanted:
                return True
        if _driver(project, pipeline, any_scope=True) is not None:
            time.sleep(0.2)
            continue
        scheduler = _in_process(project, pipeline, ())
        try:
            return scheduler.stop_tries(wanted, max(0.0, deadline - time.monotonic()))
        except Conflict:
            continue
    return False
