"""Runs: creating them with their first attempt and a task instance per task, bringing their
task instances to the pipeline's tasks, starting and ending them, and reading them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, true, update
from sqlalchemy.exc import IntegrityError

from reflow.core.edits import Edit, edit_for
from reflow.core.errors import Conflict
from reflow.core.states import PRIORITY, RUN_ACTIVE, FailureReason, RunOrigin, RunState, TIState
from reflow.store._chunking import _chunks
from reflow.store.models import events, pipelines, run_attempts, runs, task_instances, tries
from reflow.store.records import HistoryEvent, Run, RunAttempt, RunSummary, TaskInstance
from reflow.store.transitions import transition
from reflow.store.tries import _LIVE_TRY, request_cancel


@dataclass(frozen=True)
class NewRun:
    """A queued run to create, with its first attempt and a pending TI per task."""

    pipeline: str
    run_id: str
    logical_date: datetime
    interval: tuple[datetime, datetime]
    origin: RunOrigin
    conf: Mapping[str, Any]
    version: str
    task_ids: Sequence[str]
    backfill_id: int | None = None
    priority: int | None = None  # None: its origin's (core.states.PRIORITY)


def create_run(
    conn: Connection,
    *,
    pipeline: str,
    run_id: str,
    logical_date: datetime,
    interval: tuple[datetime, datetime],
    origin: RunOrigin,
    conf: Mapping[str, Any],
    version: str,
    task_ids: Sequence[str],
    now: datetime,
    backfill_id: int | None = None,
    priority: int | None = None,
) -> int:
    """Insert a queued run with its first attempt and a pending TI per task.

    Raises Conflict when a dated run already exists for that logical date (or the run id
    is taken); the caller's transaction is left usable.
    """
    new = NewRun(
        pipeline,
        run_id,
        logical_date,
        interval,
        origin,
        conf,
        version,
        task_ids,
        backfill_id,
        priority,
    )
    try:
        with conn.begin_nested():
            (run_pk,) = _insert_runs(conn, [new], now)
    except IntegrityError:
        raise Conflict(
            f"pipeline {pipeline!r} already has a run for {logical_date.isoformat()} ({run_id})"
        ) from None
    return run_pk


def create_runs(conn: Connection, new: Sequence[NewRun], now: datetime) -> list[int | None]:
    """Insert many queued runs in a few statements; the id of each, or None for one whose
    date already has a run (created a moment ago by a backfill or another scheduler)."""
    if not new:
        return []
    try:
        with conn.begin_nested():
            return list(_insert_runs(conn, new, now))
    except IntegrityError:  # one of them lost a race: each on its own, skipping those
        made: list[int | None] = []
        for n in new:
            try:
                with conn.begin_nested():
                    made += _insert_runs(conn, [n], now)
            except IntegrityError:
                made.append(None)
        return made


def _insert_runs(conn: Connection, new: Sequence[NewRun], now: datetime) -> list[int]:
    ids = [
        r.id
        for r in conn.execute(
            insert(runs).returning(runs.c.id, sort_by_parameter_order=True),
            [
                {
                    "pipeline": n.pipeline,
                    "run_id": n.run_id,
                    "logical_date": n.logical_date,
                    "data_interval_start": n.interval[0],
                    "data_interval_end": n.interval[1],
                    "origin": n.origin.value,
                    "state": RunState.QUEUED.value,
                    "conf": dict(n.conf),
                    "attempt": 1,
                    "version": n.version,
                    "backfill_id": n.backfill_id,
                    "priority": PRIORITY[n.origin] if n.priority is None else n.priority,
                    "created_at": now,
                    "queued_at": now,
                }
                for n in new
            ],
        )
    ]
    conn.execute(
        insert(run_attempts),
        [
            {
                "run": run_pk,
                "attempt": 1,
                "origin": n.origin.value,
                "conf": dict(n.conf),
                "version": n.version,
                "backfill_id": n.backfill_id,
                "created_at": now,
            }
            for run_pk, n in zip(ids, new, strict=True)
        ],
    )
    # A new run is unseen by the scheduler already (change_seq 1, seen_seq 0).
    tis = [_pending(run_pk, t, now) for run_pk, n in zip(ids, new, strict=True) for t in n.task_ids]
    if tis:
        conn.execute(insert(task_instances), tis)
    conn.execute(
        insert(events),
        [
            {
                "at": now,
                "entity": "run",
                "entity_id": run_pk,
                "run": run_pk,
                "old": None,
                "new": RunState.QUEUED.value,
                "detail": f"created ({n.origin.value})",
            }
            for run_pk, n in zip(ids, new, strict=True)
        ],
    )
    return ids


def _pending(run_pk: int, task_id: str, now: datetime) -> dict[str, Any]:
    return {
        "run": run_pk,
        "task_id": task_id,
        "state": TIState.PENDING.value,
        "try_number": 0,
        "lost_tries": 0,
        "lost_streak": 0,
        "updated_at": now,
    }


def add_task_instances(
    conn: Connection, run_pk: int, task_ids: Iterable[str], now: datetime
) -> list[int]:
    rows = [_pending(run_pk, t, now) for t in task_ids]
    if not rows:
        return []
    conn.execute(update(runs).where(runs.c.id == run_pk).values(change_seq=runs.c.change_seq + 1))
    return list(conn.execute(insert(task_instances).returning(task_instances.c.id), rows).scalars())


def pending_again() -> dict[str, Any]:
    """The values of a task instance made pending again (cleared, or its task back in the
    pipeline): no end, no reason, and its full retries (earlier tries do not count)."""
    return {
        "next_try_at": None,
        "failure_reason": None,
        "started_at": None,
        "ended_at": None,
        "lost_tries": task_instances.c.try_number,
        "lost_streak": 0,
    }


def reconcile_task_instances(
    conn: Connection,
    run_pk: int,
    tis: Sequence[TaskInstance],
    task_ids: Sequence[str],
    now: datetime,
    *,
    finished_too: bool,
    version: str | None = None,
) -> Edit:
    """Bring a run's task instances ``tis`` to the pipeline's ``task_ids`` as
    ``core.edits`` states: new tasks get a pending instance, restored ones are pending
    again, live instances of removed tasks have their try stopped (they become ``removed``
    when it has ended), the others of removed tasks become ``removed`` (finished ones
    only when ``finished_too``: the run is being re-run). Every change is an event."""
    edit = edit_for(
        tis,
        task_ids,
        rerun=finished_too,
    )
    if edit.empty:
        return edit
    which = f" (version {version})" if version else ""
    added = add_task_instances(conn, run_pk, edit.add, now)
    if added:
        conn.execute(
            insert(events),
            [
                {
                    "at": now,
                    "entity": "ti",
                    "entity_id": ti_id,
                    "run": run_pk,
                    "old": None,
                    "new": TIState.PENDING.value,
                    "detail": f"task added to the pipeline{which}",
                }
                for ti_id in added
            ],
        )
    transition(
        conn,
        "ti",
        edit.restore,
        TIState.PENDING,
        [TIState.REMOVED],
        now,
        detail=f"task back in the pipeline{which}",
        **pending_again(),
    )
    if edit.stop:
        stopping = [
            t.id
            for chunk in _chunks(list(edit.stop))
            for t in conn.execute(select(tries.c.id).where(tries.c.ti.in_(chunk), _LIVE_TRY)).all()
        ]
        request_cancel(conn, stopping, FailureReason.TASK_REMOVED.value)
    gone = {ti.id: TIState(ti.state) for ti in tis if ti.id in set(edit.remove)}
    # Never started ones get no end time (no duration to show); finished ones keep theirs.
    transition(
        conn,
        "ti",
        list(gone),
        TIState.REMOVED,
        set(gone.values()),
        now,
        detail=f"task removed from the pipeline{which}",
    )
    return edit


def run_history(conn: Connection, run_pk: int) -> list[HistoryEvent]:
    """The notable events of a run, oldest first: those that carry a detail (created, a
    new attempt, a clear, a mark, a pipeline edit, a failure's reason), with the task of
    each task instance's event (None for the run's own)."""
    stmt = (
        select(
            events.c.at,
            events.c.entity,
            events.c.old,
            events.c.new,
            events.c.detail,
            task_instances.c.task_id,
        )
        .select_from(
            events.outerjoin(
                task_instances,
                (events.c.entity == "ti") & (task_instances.c.id == events.c.entity_id),
            )
        )
        .where(events.c.run == run_pk, events.c.detail.is_not(None))
        .order_by(events.c.id)
    )
    return HistoryEvent.from_result(conn.execute(stmt))


def dated_runs_taken(
    conn: Connection, wanted: Iterable[tuple[str, datetime]]
) -> set[tuple[str, datetime]]:
    """Of the (pipeline, logical date) pairs ``wanted``, those that have a dated run."""
    wanted = set(wanted)
    taken: set[tuple[str, datetime]] = set()
    for chunk in _chunks(sorted({name for name, _ in wanted})):
        dates = sorted({d for name, d in wanted if name in chunk})
        for day in _chunks(dates):
            rows = conn.execute(
                select(runs.c.pipeline, runs.c.logical_date).where(
                    runs.c.pipeline.in_(chunk),
                    runs.c.logical_date.in_(day),
                    runs.c.origin != RunOrigin.MANUAL.value,
                )
            ).all()
            taken.update((r.pipeline, r.logical_date) for r in rows)
    return taken & wanted


def count_active_runs(conn: Connection) -> dict[tuple[str, str], int]:
    """How many runs each pipeline has queued and running: (pipeline, state) -> count."""
    rows = conn.execute(
        select(runs.c.pipeline, runs.c.state, func.count())
        .where(runs.c.state.in_([s.value for s in RUN_ACTIVE]))
        .group_by(runs.c.pipeline, runs.c.state)
    ).all()
    return {(r[0], r[1]): int(r[2]) for r in rows}


def latest_runs(conn: Connection, per_pipeline: int) -> dict[str, list[RunSummary]]:
    """The newest runs of every recorded pipeline (by logical date, then id), at most
    ``per_pipeline`` each, newest first: one statement, which for each pipeline walks the
    (pipeline, logical_date) index a few steps, whatever the length of the history."""
    columns = (runs.c.pipeline, runs.c.logical_date, runs.c.id, runs.c.state)
    newest = (
        select(*columns)
        .where(runs.c.pipeline == pipelines.c.name)
        .order_by(runs.c.logical_date.desc(), runs.c.id.desc())
        .limit(per_pipeline)
    )
    if conn.dialect.name == "sqlite":  # no LATERAL: the runs whose id is among the newest
        ids = newest.with_only_columns(runs.c.id).correlate(pipelines)
        statement = select(*columns).select_from(pipelines.join(runs, runs.c.id.in_(ids)))
    else:  # a nested loop over the pipelines, each a short index scan
        latest = newest.lateral("latest")
        statement = select(latest).select_from(pipelines.join(latest, true()))
    out: dict[str, list[RunSummary]] = {}
    for row in RunSummary.from_result(conn.execute(statement)):
        out.setdefault(row.pipeline, []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: (r.logical_date, r.id), reverse=True)
    return out


def active_runs(conn: Connection, pipeline_names: Iterable[str] | None = None) -> list[Run]:
    """Queued and running runs, oldest logical date first.

    Sorted here, not in SQL: an ORDER BY on logical_date lets the planner walk the
    (pipeline, logical_date) index through the whole history instead of the state index.
    """
    stmt = select(runs).where(runs.c.state.in_([s.value for s in RUN_ACTIVE]))
    if pipeline_names is not None:
        stmt = stmt.where(runs.c.pipeline.in_(list(pipeline_names)))
    return sorted(Run.from_result(conn.execute(stmt)), key=lambda r: (r.logical_date, r.id))


def run_task_instances(conn: Connection, run_pks: Sequence[int]) -> list[TaskInstance]:
    if not run_pks:
        return []
    out: list[TaskInstance] = []
    for chunk in _chunks(list(run_pks)):
        out += TaskInstance.from_result(
            conn.execute(select(task_instances).where(task_instances.c.run.in_(chunk)))
        )
    return out


def start_runs(
    conn: Connection, deadlines: Mapping[int, datetime | None], now: datetime
) -> list[int]:
    """Start queued runs (id -> its run_timeout deadline, or None); returns those started."""
    by_deadline: dict[datetime | None, list[int]] = {}
    for run_pk, deadline in deadlines.items():
        by_deadline.setdefault(deadline, []).append(run_pk)
    started: list[int] = []
    for deadline, run_pks in by_deadline.items():
        started += transition(
            conn,
            "run",
            run_pks,
            RunState.RUNNING,
            [RunState.QUEUED],
            now,
            started_at=now,
            deadline=deadline,
            ended_at=None,
        )
    _set_current_attempts(conn, started, started_at=now, state=RunState.RUNNING.value)
    return started


def start_run(conn: Connection, run_pk: int, now: datetime, deadline: datetime | None) -> bool:
    return bool(start_runs(conn, {run_pk: deadline}, now))


def finish_runs(
    conn: Connection,
    run_pks: Sequence[int],
    state: RunState,
    now: datetime,
    detail: str | None = None,
) -> list[int]:
    """End runs in ``state`` (from running; cancelled also from queued), with their
    current attempts; returns those ended."""
    sources = (
        [RunState.RUNNING, RunState.QUEUED] if state == RunState.CANCELLED else [RunState.RUNNING]
    )
    moved = transition(conn, "run", run_pks, state, sources, now, detail=detail, ended_at=now)
    _set_current_attempts(conn, moved, ended_at=now, state=state.value)
    return moved


def finish_run(
    conn: Connection, run_pk: int, state: RunState, now: datetime, detail: str | None = None
) -> bool:
    return bool(finish_runs(conn, [run_pk], state, now, detail))


def _set_current_attempts(conn: Connection, run_pks: Sequence[int], **values: Any) -> None:
    """Set ``values`` on the current attempt of each run (its start, or its end)."""
    current = select(runs.c.attempt).where(runs.c.id == run_attempts.c.run).scalar_subquery()
    for chunk in _chunks(list(run_pks)):
        conn.execute(
            update(run_attempts)
            .where(run_attempts.c.run.in_(chunk), run_attempts.c.attempt == current)
            .values(**values)
        )


def set_run_version(conn: Connection, run_pk: int, version: str) -> None:
    conn.execute(update(runs).where(runs.c.id == run_pk).values(version=version))


# -- reads for the CLI and services ----------------------------------------------------------
def list_runs(
    conn: Connection,
    *,
    pipeline: str | None = None,
    state: str | None = None,
    limit: int = 50,
) -> list[Run]:
    stmt = select(runs)
    if pipeline is not None:
        stmt = stmt.where(runs.c.pipeline == pipeline)
    if state is not None:
        stmt = stmt.where(runs.c.state == state)
    return Run.from_result(
        conn.execute(stmt.order_by(runs.c.logical_date.desc(), runs.c.id.desc()).limit(limit))
    )


def runs_by_pk(conn: Connection, run_pks: Iterable[int], *, lock: bool = False) -> list[Run]:
    """Runs by primary key, in id order. With ``lock``, their rows stay locked until the
    transaction ends (``FOR UPDATE`` on PostgreSQL; SQLite's write transaction already
    holds the whole database), so what is read cannot change before it is written."""
    out: list[Run] = []
    for chunk in _chunks(sorted(set(run_pks))):
        stmt = select(runs).where(runs.c.id.in_(chunk)).order_by(runs.c.id)
        if lock and conn.dialect.name != "sqlite":
            stmt = stmt.with_for_update()
        out += Run.from_result(conn.execute(stmt))
    return out


def find_runs(
    conn: Connection,
    pipeline: str,
    *,
    run_id: str | None = None,
    logical_date: datetime | None = None,
) -> list[Run]:
    stmt = select(runs).where(runs.c.pipeline == pipeline)
    if run_id is not None:
        stmt = stmt.where(runs.c.run_id == run_id)
    if logical_date is not None:
        stmt = stmt.where(runs.c.logical_date == logical_date)
    return Run.from_result(conn.execute(stmt.order_by(runs.c.id.desc())))


def attempts_of(conn: Connection, run_pk: int) -> list[RunAttempt]:
    return RunAttempt.from_result(
        conn.execute(
            select(run_attempts)
            .where(run_attempts.c.run == run_pk)
            .order_by(run_attempts.c.attempt)
        )
    )
