"""Schedulers: registering them, the lease each holds (its row, extended by heartbeats and
checked first in every transaction that writes), the pipelines a transaction locks, and
taking over the tries of schedulers that stopped or were declared dead."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, insert, or_, select, update

from reflow.core.errors import LeaseLost
from reflow.store._chunking import _chunks
from reflow.store.models import pipelines, runs, schedulers, tries
from reflow.store.records import SchedulerRecord, Try
from reflow.store.tries import _LIVE_TRY


def register_scheduler(
    conn: Connection, host: str, pid: int, now: datetime, scope: Iterable[str] | None = None
) -> int:
    values = {
        "host": host,
        "pid": pid,
        "started_at": now,
        "heartbeat_at": now,
        "scope": sorted(scope) if scope is not None else None,
    }
    return int(
        conn.execute(insert(schedulers).values(**values).returning(schedulers.c.id)).scalar_one()
    )


def lock_pipelines(conn: Connection, names: Iterable[str]) -> set[str]:
    """Lock the rows of ``names`` for this transaction and return those locked.

    On PostgreSQL, pipelines that another scheduler holds are skipped (``SKIP LOCKED``), so
    two schedulers never count and fill the same limits at once. On SQLite the
    transaction already holds the database's write lock (``BEGIN IMMEDIATE``).
    """
    wanted = sorted(set(names))
    if conn.dialect.name == "sqlite" or not wanted:
        return set(wanted)
    rows = conn.execute(
        select(pipelines.c.name)
        .where(pipelines.c.name.in_(wanted))
        .order_by(pipelines.c.name)
        .with_for_update(skip_locked=True)
    ).all()
    return {r[0] for r in rows}


def hold_lease(conn: Connection, scheduler_id: int) -> None:
    """Raise LeaseLost unless ``scheduler_id`` is still a registered, live scheduler.

    Called first in every transaction of a scheduler that starts, adopts or records
    anything (fencing). On PostgreSQL it also locks the scheduler's row until the
    transaction ends, so no other scheduler can declare it dead in the meantime; on SQLite
    the transaction holds the database's write lock already.
    """
    held = conn.execute(
        update(schedulers)
        .where(schedulers.c.id == scheduler_id, schedulers.c.stopped_at.is_(None))
        .values(heartbeat_at=schedulers.c.heartbeat_at)
        .returning(schedulers.c.id)
    ).first()
    if held is None:
        raise LeaseLost(
            f"scheduler {scheduler_id} was declared dead by another scheduler "
            "(no heartbeat within scheduler_timeout)"
        )


def heartbeat(conn: Connection, scheduler_id: int, now: datetime) -> None:
    """Extend the lease of a live scheduler; raise LeaseLost if it was declared dead. (One
    row, whatever the scheduler watches: its tries are its own through ``tries.owner``.)"""
    held = conn.execute(
        update(schedulers)
        .where(schedulers.c.id == scheduler_id, schedulers.c.stopped_at.is_(None))
        .values(heartbeat_at=now)
        .returning(schedulers.c.id)
    ).first()
    if held is None:
        hold_lease(conn, scheduler_id)  # raises


def stop_scheduler(conn: Connection, scheduler_id: int, now: datetime) -> None:
    conn.execute(
        update(schedulers)
        .where(schedulers.c.id == scheduler_id)
        .values(stopped_at=now, heartbeat_at=now)
    )


def other_schedulers(conn: Connection, scheduler_id: int) -> list[SchedulerRecord]:
    """Every other scheduler not known to have stopped."""
    return SchedulerRecord.from_result(
        conn.execute(
            select(schedulers).where(
                schedulers.c.id != scheduler_id, schedulers.c.stopped_at.is_(None)
            )
        )
    )


def live_schedulers(conn: Connection, now: datetime, timeout: float) -> list[SchedulerRecord]:
    return SchedulerRecord.from_result(
        conn.execute(
            select(schedulers).where(
                schedulers.c.stopped_at.is_(None),
                schedulers.c.heartbeat_at >= now - timedelta(seconds=timeout),
            )
        )
    )


def mark_schedulers_dead(
    conn: Connection,
    *,
    silent: Sequence[int],
    silent_since: datetime,
    exited: Sequence[int],
    now: datetime,
) -> list[int]:
    """Declare schedulers dead: those of ``silent`` whose last heartbeat is still older
    than ``silent_since`` (checked again here, under the row lock: one that came back
    meanwhile stays alive), and those of ``exited`` (their process is known to be gone).
    Returns the ids declared dead; their tries become orphans."""
    dead: list[int] = []
    for ids, extra in ((silent, [schedulers.c.heartbeat_at < silent_since]), (exited, [])):
        for chunk in _chunks(list(ids)):
            dead += conn.execute(
                update(schedulers)
                .where(schedulers.c.id.in_(chunk), schedulers.c.stopped_at.is_(None), *extra)
                .values(stopped_at=now)
                .returning(schedulers.c.id)
            ).scalars()
    return dead


def claim_orphans(
    conn: Connection, me: int, pipeline_names: Iterable[str] | None = None
) -> list[Try]:
    """Take over every live try whose owner is not a live scheduler (it stopped or was
    declared dead; or it is unknown), of ``pipeline_names`` when given; return them."""
    live_owners = select(schedulers.c.id).where(schedulers.c.stopped_at.is_(None))
    stmt = select(tries.c.id, tries.c.owner).where(
        _LIVE_TRY, or_(tries.c.owner.is_(None), tries.c.owner.not_in(live_owners))
    )
    if pipeline_names is not None:
        stmt = stmt.join(runs, runs.c.id == tries.c.run).where(
            runs.c.pipeline.in_(list(pipeline_names))
        )
    candidates = conn.execute(stmt).all()
    claimed: list[int] = []
    for row in candidates:
        cond = tries.c.owner.is_(None) if row.owner is None else tries.c.owner == row.owner
        res = conn.execute(
            update(tries).where(tries.c.id == row.id, cond, _LIVE_TRY).values(owner=me)
        )
        if res.rowcount:
            claimed.append(row.id)
    out: list[Try] = []
    for chunk in _chunks(claimed):
        out += Try.from_result(conn.execute(select(tries).where(tries.c.id.in_(chunk))))
    return out
