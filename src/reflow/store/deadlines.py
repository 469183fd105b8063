"""Deadlines per date: how far each pipeline's deadlines are checked, and the misses.

A pipeline with a deadline has a cursor (``pipelines.deadlines_checked_until``): the
deadlines due up to it are checked. A check of the window (cursor, now] moves the cursor
and records the window's misses in one transaction, guarded by the cursor's previous
value (:func:`advance`): of several schedulers checking the same window, one records it
and the others find the cursor moved and record nothing. So each miss is recorded once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Connection,
    and_,
    delete,
    func,
    insert,
    literal,
    select,
    tuple_,
    update,
)

from reflow.core.lateness import RUN, Due
from reflow.core.notify import Event
from reflow.core.states import RunOrigin, RunState, TIState, TryState
from reflow.store import outbox
from reflow.store.models import (
    deadline_misses,
    pipelines,
    run_attempts,
    runs,
    task_instances,
    tries,
)
from reflow.store.records import DeadlineMiss, LateDate

_checked_until = pipelines.c.deadlines_checked_until
# Logical dates per statement (they are bound one by one).
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Miss:
    """A date of ``pipeline`` (its whole run, or one task) not succeeded by ``due_at``."""

    pipeline: str
    logical_date: datetime
    task: str
    due_at: datetime


# -- the cursor ------------------------------------------------------------------------------
def cursors(conn: Connection, names: Iterable[str]) -> dict[str, datetime | None]:
    """How far the deadlines of each pipeline named are checked (None: not started);
    pipelines the store does not have are left out."""
    wanted = sorted(set(names))
    out: dict[str, datetime | None] = {}
    for i in range(0, len(wanted), _CHUNK):
        rows = conn.execute(
            select(pipelines.c.name, _checked_until).where(
                pipelines.c.name.in_(wanted[i : i + _CHUNK])
            )
        ).all()
        out.update({r[0]: r[1] for r in rows})
    return out


def start(conn: Connection, names: Iterable[str], now: datetime) -> None:
    """Start checking the deadlines of ``names`` from ``now`` (those not started yet): the
    dates due before are history, never checked."""
    wanted = sorted(set(names))
    for i in range(0, len(wanted), _CHUNK):
        conn.execute(
            update(pipelines)
            .where(pipelines.c.name.in_(wanted[i : i + _CHUNK]), _checked_until.is_(None))
            .values(deadlines_checked_until=now)
        )


def started(conn: Connection) -> dict[str, bool]:
    """The pipelines whose deadlines are being checked (their cursor is set), each with
    whether it is active (its file is there)."""
    rows = conn.execute(
        select(pipelines.c.name, pipelines.c.active).where(_checked_until.is_not(None))
    ).all()
    return {r[0]: bool(r[1]) for r in rows}


def stop(conn: Connection, names: Iterable[str]) -> None:
    """Forget how far the deadlines of ``names`` were checked (they have none now, or
    their file is gone): a deadline given again later starts from that moment, never from
    the old cursor."""
    wanted = sorted(set(names))
    for i in range(0, len(wanted), _CHUNK):
        conn.execute(
            update(pipelines)
            .where(pipelines.c.name.in_(wanted[i : i + _CHUNK]), _checked_until.is_not(None))
            .values(deadlines_checked_until=None)
        )


def advance(conn: Connection, name: str, old: datetime, new: datetime) -> bool:
    """Move ``name``'s cursor from ``old`` to ``new``; False when it is not at ``old`` any
    more (another scheduler checked this window: leave it). The row stays locked until
    the transaction ends (PostgreSQL; SQLite's write lock holds the whole database)."""
    moved = conn.execute(
        update(pipelines)
        .where(pipelines.c.name == name, _checked_until == old)
        .values(deadlines_checked_until=new)
    ).rowcount
    return bool(moved)


# -- what was met ----------------------------------------------------------------------------
def succeeded_by(conn: Connection, pipeline: str, dues: Sequence[Due]) -> set[tuple[datetime, str]]:
    """The (logical date, task) of ``dues`` that succeeded at or before their due time: a
    run of that date (any origin, any attempt) for the whole run (``task`` RUN); for a
    task, a try of it or its task instance itself (marked, or a join point)."""
    first: dict[tuple[datetime, str], datetime] = {}
    dates = sorted({d.logical_date for d in dues})
    tasks = sorted({d.task for d in dues} - {RUN})
    for i in range(0, len(dates), _CHUNK):
        of_dates = and_(runs.c.pipeline == pipeline, runs.c.logical_date.in_(dates[i : i + _CHUNK]))
        queries = []
        if any(d.task == RUN for d in dues):
            queries.append(
                select(runs.c.logical_date, literal(RUN), func.min(run_attempts.c.ended_at))
                .join(run_attempts, run_attempts.c.run == runs.c.id)
                .where(of_dates, run_attempts.c.state == RunState.SUCCESS.value)
                .group_by(runs.c.logical_date)
            )
        if tasks:
            of_tasks = and_(of_dates, task_instances.c.task_id.in_(tasks))
            by_task = (runs.c.logical_date, task_instances.c.task_id)
            queries.append(
                select(*by_task, func.min(tries.c.ended_at))
                .select_from(tries)
                .join(task_instances, task_instances.c.id == tries.c.ti)
                .join(runs, runs.c.id == task_instances.c.run)
                .where(of_tasks, tries.c.state == TryState.SUCCESS.value)
                .group_by(*by_task)
            )
            queries.append(
                select(*by_task, func.min(task_instances.c.ended_at))
                .join(runs, runs.c.id == task_instances.c.run)
                .where(of_tasks, task_instances.c.state == TIState.SUCCESS.value)
                .group_by(*by_task)
            )
        for query in queries:
            for logical_date, task, ended in conn.execute(query).all():
                key = (logical_date, task)
                if ended is not None and (key not in first or ended < first[key]):
                    first[key] = ended
    return {
        (d.logical_date, d.task)
        for d in dues
        if (at := first.get((d.logical_date, d.task))) is not None and at <= d.due_at
    }


# -- misses ----------------------------------------------------------------------------------
def record_misses(conn: Connection, misses: Sequence[Miss], now: datetime) -> list[Miss]:
    """Record ``misses`` (those already recorded are left as they are) and return the new
    ones. The one place misses are written, in the transaction that moves the cursor past
    them: whatever must happen once per miss (the "deadline missed" notification) happens
    here, in the same transaction."""
    if not misses:
        return []
    known: set[tuple[str, datetime, str]] = set()
    by_pipeline: dict[str, list[Miss]] = {}
    for miss in misses:
        by_pipeline.setdefault(miss.pipeline, []).append(miss)
    for name, theirs in by_pipeline.items():
        dates = sorted({m.logical_date for m in theirs})
        for i in range(0, len(dates), _CHUNK):
            rows = conn.execute(
                select(deadline_misses.c.logical_date, deadline_misses.c.task).where(
                    deadline_misses.c.pipeline == name,
                    deadline_misses.c.logical_date.in_(dates[i : i + _CHUNK]),
                )
            ).all()
            known.update((name, r[0], r[1]) for r in rows)
    unique = {(m.pipeline, m.logical_date, m.task): m for m in misses}
    new = [m for key, m in unique.items() if key not in known]
    if new:
        conn.execute(
            insert(deadline_misses),
            [
                {
                    "pipeline": m.pipeline,
                    "logical_date": m.logical_date,
                    "task": m.task,
                    "due_at": m.due_at,
                    "recorded_at": now,
                }
                for m in new
            ],
        )
        for m in new:
            outbox.enqueue(
                conn,
                Event.DEADLINE_MISSED,
                now,
                "deadline",
                run=_run_of_date(conn, m.pipeline, m.logical_date),
                data={
                    "pipeline": m.pipeline,
                    "logical_date": m.logical_date.isoformat(),
                    "task": m.task or None,
                    "due_at": m.due_at.isoformat(),
                    "due": m.due_at.strftime("%Y-%m-%d %H:%M UTC"),
                },
            )
    return new


def _run_of_date(conn: Connection, pipeline: str, logical_date: datetime) -> int | None:
    """The run a date's miss is about: its scheduled or backfill run, else its newest."""
    return conn.execute(
        select(runs.c.id)
        .where(runs.c.pipeline == pipeline, runs.c.logical_date == logical_date)
        .order_by((runs.c.origin == "manual").asc(), runs.c.id.desc())
        .limit(1)
    ).scalar()


def late_dates(
    conn: Connection,
    pipeline: str,
    first: datetime | None = None,
    last: datetime | None = None,
    *,
    limit: int = 100,
) -> list[LateDate]:
    """The latest ``limit`` misses of ``pipeline`` with logical dates from ``first`` to
    ``last`` (None: open), newest date first, each with the date's run as it is now (the
    latest scheduled or backfill one; None when the date has no run)."""
    run = (
        select(runs.c.id, runs.c.state)
        .where(
            runs.c.pipeline == deadline_misses.c.pipeline,
            runs.c.logical_date == deadline_misses.c.logical_date,
            runs.c.origin != RunOrigin.MANUAL.value,
        )
        .order_by(runs.c.id.desc())
        .limit(1)
    )
    stmt = select(
        *deadline_misses.c,
        run.with_only_columns(runs.c.id).scalar_subquery().label("run"),
        run.with_only_columns(runs.c.state).scalar_subquery().label("run_state"),
    ).where(deadline_misses.c.pipeline == pipeline)
    if first is not None:
        stmt = stmt.where(deadline_misses.c.logical_date >= first)
    if last is not None:
        stmt = stmt.where(deadline_misses.c.logical_date <= last)
    stmt = stmt.order_by(
        deadline_misses.c.logical_date.desc(), deadline_misses.c.task, deadline_misses.c.id
    ).limit(limit)
    return LateDate.from_result(conn.execute(stmt))


def misses_of_dates(
    conn: Connection, dates: Iterable[tuple[str, datetime]]
) -> dict[tuple[str, datetime], list[DeadlineMiss]]:
    """The misses of each (pipeline, logical date) asked for that has any."""
    wanted = sorted(set(dates))
    out: dict[tuple[str, datetime], list[DeadlineMiss]] = {}
    for i in range(0, len(wanted), _CHUNK):
        chunk = wanted[i : i + _CHUNK]
        rows = DeadlineMiss.from_result(
            conn.execute(
                select(deadline_misses)
                .where(
                    tuple_(deadline_misses.c.pipeline, deadline_misses.c.logical_date).in_(chunk)
                )
                .order_by(deadline_misses.c.due_at, deadline_misses.c.task)
            )
        )
        for row in rows:
            out.setdefault((row.pipeline, row.logical_date), []).append(row)
    return out


def forget(conn: Connection, name: str) -> None:
    """Delete the misses of a pipeline that is purged."""
    conn.execute(delete(deadline_misses).where(deadline_misses.c.pipeline == name))
