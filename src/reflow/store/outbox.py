"""The notification outbox and deliveries.

A notable state change (a run failing or succeeding, a task instance failing or waiting
to retry, a backfill ending, a scheduler starting or found dead, a deadline missed) puts
one row in ``notify_outbox`` in the transaction that makes the change: committed
together, or not at all. The notifier then reads a batch of entries with the context of
each (:func:`take`, no lock), routes them to channels, and in one short transaction
deletes the entries and writes one ``notifications`` row per channel of those it deleted
(:func:`route`: the delete is the claim, so two notifiers never route one entry). Deliveries
are claimed for a lease (:func:`claim_due`), sent outside any transaction, and their
attempts recorded (:func:`record_attempt`): a notifier that dies between sending and
recording leaves the lease to expire and the message to be sent again (at least once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from reflow.core.notify import Event
from reflow.store.models import (
    backfills,
    events,
    notification_attempts,
    notifications,
    notify_outbox,
    runs,
    schedulers,
    task_instances,
    tries,
)
from reflow.store.records import Notification, NotificationAttempt, OutboxEntry

# State moves that notify: (entity, new state) -> event.
NOTABLE: dict[tuple[str, str], Event] = {
    ("run", "failed"): Event.RUN_FAILED,
    ("run", "success"): Event.RUN_SUCCEEDED,
    ("ti", "failed"): Event.TASK_FAILED,
    ("ti", "up_for_retry"): Event.TRY_RETRYING,
    ("backfill", "success"): Event.BACKFILL_FINISHED,
    ("backfill", "failed"): Event.BACKFILL_FINISHED,
    ("backfill", "cancelled"): Event.BACKFILL_FINISHED,
}

PENDING, SENT, FAILED = "pending", "sent", "failed"


# -- writing the outbox (in the caller's transaction) -----------------------------------------
def note_moves(
    conn: Connection,
    entity: str,
    moved: Sequence[tuple[int, str | None, int | None]],
    new: str,
    now: datetime | Mapping[int, datetime],
) -> None:
    """One outbox entry per moved row whose move notifies (``transitions.transition``
    calls this with the events it records, in the same transaction)."""
    event = NOTABLE.get((entity, new))
    if event is None or not moved:
        return
    conn.execute(
        insert(notify_outbox),
        [
            {
                "event": event.value,
                "at": now[i] if isinstance(now, Mapping) else now,
                "entity": entity,
                "entity_id": i,
                "run": None if entity == "backfill" else run,
                "data": None,
            }
            for i, _old, run in moved
        ],
    )


def enqueue(
    conn: Connection,
    event: Event,
    now: datetime,
    entity: str,
    entity_id: int | None = None,
    run: int | None = None,
    data: Mapping[str, Any] | None = None,
) -> None:
    """An outbox entry for a change that is not a state move (a scheduler started or
    lost, a deadline missed), in the caller's transaction."""
    conn.execute(
        insert(notify_outbox).values(
            event=event.value,
            at=now,
            entity=entity,
            entity_id=entity_id,
            run=run,
            data=dict(data) if data is not None else None,
        )
    )


# -- routing --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Pending:
    """An outbox entry with what a message about it says: ``context`` (JSON-ready)."""

    entry: OutboxEntry
    pipeline: str | None
    context: dict[str, Any]


def take(conn: Connection, limit: int = 200) -> list[Pending]:
    """The oldest outbox entries with their context: read without a lock (a read
    transaction); :func:`route` then claims them by deleting them."""
    stmt = select(notify_outbox).order_by(notify_outbox.c.id).limit(limit)
    entries = OutboxEntry.from_result(conn.execute(stmt))
    if not entries:
        return []
    run_pks = {e.run for e in entries if e.run is not None}
    run_rows = _runs(conn, run_pks)
    ti_rows = _task_instances(conn, [e.entity_id for e in entries if e.entity == "ti"])
    backfill_rows = _backfills(conn, [e.entity_id for e in entries if e.entity == "backfill"])
    out = []
    for e in entries:
        context: dict[str, Any] = {"event": e.event, "at": e.at.isoformat(), **(e.data or {})}
        pipeline = context.get("pipeline")
        run = run_rows.get(e.run) if e.run is not None else None
        if run is not None:
            pipeline = run["pipeline"]
            context.update(run)
        if e.entity == "ti" and e.entity_id in ti_rows:
            context.update(ti_rows[e.entity_id])
        elif e.entity == "run" and run is not None:
            context.update(_run_outcome(conn, e, run))
        elif e.entity == "backfill" and e.entity_id in backfill_rows:
            context.update(backfill_rows[e.entity_id])
            pipeline = context["pipeline"]
        out.append(Pending(e, pipeline, context))
    return out


def route(
    conn: Connection,
    done: Iterable[int],
    messages: Sequence[tuple[Pending, str, str, str | None]],
    now: datetime,
) -> int:
    """Turn outbox entries ``done`` into notifications: one per (entry, event, channel,
    error) of ``messages``; with an ``error`` (a channel that is not configured) it is
    failed at once. The entries are deleted first: only those this call deleted get
    their notifications (another notifier that routed the same entries meanwhile made
    theirs), so each entry is routed once. Returns the notifications made."""
    ids = sorted(set(done))
    mine: set[int] = set()
    for i in range(0, len(ids), 500):
        mine.update(
            conn.execute(
                delete(notify_outbox)
                .where(notify_outbox.c.id.in_(ids[i : i + 500]))
                .returning(notify_outbox.c.id)
            ).scalars()
        )
    rows = [
        {
            "event": event,
            "created_at": now,
            "pipeline": p.pipeline,
            "run": p.entry.run,
            "channel": channel,
            "state": PENDING if error is None else FAILED,
            "attempts": 0,
            "next_at": now,
            "last_error": error,
            "context": p.context,
        }
        for p, event, channel, error in messages
        if p.entry.id in mine
    ]
    if rows:
        conn.execute(insert(notifications), rows)
    return len(rows)


def work_waiting(conn: Connection, now: datetime) -> tuple[bool, bool]:
    """(outbox entries to route, notifications due): two reads of an index each, so that
    an idle notifier takes no write lock."""
    routable = conn.execute(select(notify_outbox.c.id).limit(1)).first() is not None
    due = (
        conn.execute(
            select(notifications.c.id)
            .where(notifications.c.state == PENDING, notifications.c.next_at <= now)
            .limit(1)
        ).first()
        is not None
    )
    return routable, due


def backlog(conn: Connection) -> int:
    """Outbox entries not routed yet."""
    return conn.execute(select(func.count()).select_from(notify_outbox)).scalar_one()


# -- delivering -----------------------------------------------------------------------------
def claim_due(
    conn: Connection, me: int, now: datetime, lease: float, limit: int = 20
) -> list[Notification]:
    """Take pending notifications whose time has come and that nobody holds: never
    claimed, the claim's lease expired, or its sender is a scheduler known to be dead.
    They are this sender's for ``lease`` seconds."""
    dead = select(schedulers.c.id).where(schedulers.c.stopped_at.is_not(None))
    stmt = (
        select(notifications.c.id)
        .where(
            notifications.c.state == PENDING,
            notifications.c.next_at <= now,
            or_(
                notifications.c.claimed_until.is_(None),
                notifications.c.claimed_until < now,
                notifications.c.claimed_by.in_(dead),
            ),
        )
        .order_by(notifications.c.next_at, notifications.c.id)
        .limit(limit)
    )
    if conn.dialect.name != "sqlite":
        stmt = stmt.with_for_update(skip_locked=True)
    ids = list(conn.execute(stmt).scalars())
    if not ids:
        return []
    conn.execute(
        update(notifications)
        .where(notifications.c.id.in_(ids))
        .values(claimed_by=me, claimed_until=now + timedelta(seconds=lease))
    )
    return Notification.from_result(
        conn.execute(
            select(notifications).where(notifications.c.id.in_(ids)).order_by(notifications.c.id)
        )
    )


def record_attempt(
    conn: Connection,
    notification: int,
    me: int,
    *,
    ok: bool,
    result: str | None,
    seconds: float,
    now: datetime,
    retry_at: datetime | None,
) -> bool:
    """Record one attempt and where the delivery stands: sent; pending again at
    ``retry_at``; or failed for good (``retry_at`` None). Only while this sender still
    holds the claim (a sender whose lease expired and was taken over writes nothing: the
    other one's attempt counts). Returns whether it was recorded."""
    row = conn.execute(
        select(notifications.c.attempts).where(
            notifications.c.id == notification,
            notifications.c.state == PENDING,
            notifications.c.claimed_by == me,
        )
    ).first()
    if row is None:
        return False
    attempt = row[0] + 1
    conn.execute(
        insert(notification_attempts).values(
            notification=notification,
            attempt=attempt,
            at=now,
            ok=ok,
            result=result,
            seconds=seconds,
            sender=me,
        )
    )
    values: dict[str, Any] = {"attempts": attempt, "claimed_by": None, "claimed_until": None}
    if ok:
        values.update(state=SENT, sent_at=now, last_error=None)
    elif retry_at is None:
        values.update(state=FAILED, last_error=result)
    else:
        values.update(next_at=retry_at, last_error=result)
    conn.execute(update(notifications).where(notifications.c.id == notification).values(values))
    return True


# -- reading ---------------------------------------------------------------------------------
def listing(
    conn: Connection,
    *,
    pipeline: str | None = None,
    run: int | None = None,
    state: str | None = None,
    event: str | None = None,
    limit: int = 50,
    before: int | None = None,
) -> list[Notification]:
    """Notifications, newest first."""
    stmt = select(notifications).order_by(notifications.c.id.desc()).limit(limit)
    for column, value in (
        (notifications.c.pipeline, pipeline),
        (notifications.c.run, run),
        (notifications.c.state, state),
        (notifications.c.event, event),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if before is not None:
        stmt = stmt.where(notifications.c.id < before)
    return Notification.from_result(conn.execute(stmt))


def one(conn: Connection, notification: int) -> Notification | None:
    return Notification.first_of(
        conn.execute(select(notifications).where(notifications.c.id == notification))
    )


def attempts(conn: Connection, ids: Sequence[int]) -> list[NotificationAttempt]:
    """The attempts of notifications ``ids``, in order."""
    if not ids:
        return []
    return NotificationAttempt.from_result(
        conn.execute(
            select(notification_attempts)
            .where(notification_attempts.c.notification.in_(list(ids)))
            .order_by(notification_attempts.c.notification, notification_attempts.c.attempt)
        )
    )


def counts(conn: Connection) -> dict[str, int]:
    """Notifications by state."""
    return {
        state: n
        for state, n in conn.execute(
            select(notifications.c.state, func.count()).group_by(notifications.c.state)
        )
    }


# -- context ---------------------------------------------------------------------------------
def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _runs(conn: Connection, pks: Iterable[int]) -> dict[int, dict[str, Any]]:
    wanted = sorted(pks)
    if not wanted:
        return {}
    found = {}
    for row in conn.execute(
        select(
            runs.c.id,
            runs.c.pipeline,
            runs.c.run_id,
            runs.c.logical_date,
            runs.c.origin,
            runs.c.state,
            runs.c.attempt,
            runs.c.backfill_id,
            runs.c.started_at,
            runs.c.ended_at,
        ).where(runs.c.id.in_(wanted))
    ):
        found[row.id] = {
            "pipeline": row.pipeline,
            "run": row.id,
            "run_id": row.run_id,
            "logical_date": _iso(row.logical_date),
            "origin": row.origin,
            "run_state": row.state,
            "run_attempt": row.attempt,
            "backfill_id": row.backfill_id,
            "run_started_at": _iso(row.started_at),
            "run_ended_at": _iso(row.ended_at),
        }
    return found


def _task_instances(conn: Connection, ids: Sequence[int | None]) -> dict[int, dict[str, Any]]:
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    latest = (
        select(tries.c.ti, func.max(tries.c.try_number).label("n"))
        .where(tries.c.ti.in_(wanted))
        .group_by(tries.c.ti)
        .subquery()
    )
    found: dict[int, dict[str, Any]] = {}
    for row in conn.execute(
        select(
            task_instances.c.id,
            task_instances.c.task_id,
            task_instances.c.try_number,
            task_instances.c.failure_reason,
            task_instances.c.next_try_at,
            tries.c.failure_reason.label("try_reason"),
            tries.c.exit_code,
            tries.c.detail,
            tries.c.log_path,
        )
        .select_from(task_instances)
        .outerjoin(latest, latest.c.ti == task_instances.c.id)
        .outerjoin(tries, and_(tries.c.ti == task_instances.c.id, tries.c.try_number == latest.c.n))
        .where(task_instances.c.id.in_(wanted))
    ):
        found[row.id] = {
            "task": row.task_id,
            "try_number": row.try_number,
            "reason": row.try_reason or row.failure_reason,
            "exit_code": row.exit_code,
            "detail": row.detail,
            "log_path": row.log_path,
            "next_try_at": _iso(row.next_try_at),
        }
    return found


def _run_outcome(conn: Connection, entry: OutboxEntry, run: Mapping[str, Any]) -> dict[str, Any]:
    """For a run that ended: the tasks that failed and why; whether it timed out; for a
    success, whether the date's previous finished attempt had failed (a recovery)."""
    if entry.event == Event.RUN_FAILED.value:
        failed = conn.execute(
            select(
                task_instances.c.task_id, task_instances.c.state, task_instances.c.failure_reason
            )
            .where(
                task_instances.c.run == entry.run,
                task_instances.c.state.in_(["failed", "upstream_failed", "cancelled"]),
            )
            .order_by(task_instances.c.task_id)
        ).all()
        reasons = {r.failure_reason for r in failed}
        return {
            "failed_tasks": [
                {"task": r.task_id, "state": r.state, "reason": r.failure_reason}
                for r in failed[:20]
            ],
            "timed_out": "run_timed_out" in reasons,
            "reason": "run_timed_out" if "run_timed_out" in reasons else None,
        }
    # Success: the latest two ends of this date's runs (this one first).
    same_date = select(runs.c.id).where(
        runs.c.pipeline == run["pipeline"],
        runs.c.logical_date == datetime.fromisoformat(run["logical_date"]),
    )
    ends = conn.execute(
        select(events.c.new)
        .where(
            events.c.entity == "run",
            events.c.entity_id.in_(same_date),
            events.c.new.in_(["success", "failed"]),
            events.c.at <= entry.at,
        )
        .order_by(events.c.id.desc())
        .limit(2)
    ).all()
    recovered = len(ends) == 2 and ends[0][0] == "success" and ends[1][0] == "failed"
    return {"recovered": recovered}


def _backfills(conn: Connection, ids: Sequence[int | None]) -> dict[int, dict[str, Any]]:
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    found: dict[int, dict[str, Any]] = {}
    for row in conn.execute(select(backfills).where(backfills.c.id.in_(wanted))):
        found[row.id] = {
            "pipeline": row.pipeline,
            "backfill_id": row.id,
            "backfill_state": row.state,
            "start": _iso(row.start),
            "end": _iso(row.end),
            "created_at": _iso(row.created_at),
            "ended_at": _iso(row.ended_at),
            "runs": {},
        }
    for backfill_id, state, n in conn.execute(
        select(runs.c.backfill_id, runs.c.state, func.count())
        .where(runs.c.backfill_id.in_(wanted))
        .group_by(runs.c.backfill_id, runs.c.state)
    ):
        found[backfill_id]["runs"][state] = n
    return found


def requeue(conn: Connection, notification: int, now: datetime) -> bool:
    """Deliver a notification that was given up (failed) again, from now: its attempts
    so far stay recorded. Returns whether it was failed."""
    moved = conn.execute(
        update(notifications)
        .where(notifications.c.id == notification, notifications.c.state == FAILED)
        .values(state=PENDING, next_at=now, claimed_by=None, claimed_until=None)
    )
    return bool(moved.rowcount)


# -- forgetting ------------------------------------------------------------------------------
def _finished_before(before: datetime) -> Any:
    return and_(notifications.c.state.in_([SENT, FAILED]), notifications.c.created_at < before)


def count_finished_before(conn: Connection, before: datetime) -> int:
    """Notifications sent or given up that were made before ``before``."""
    return conn.execute(
        select(func.count()).select_from(notifications).where(_finished_before(before))
    ).scalar_one()


def delete_finished_before(conn: Connection, before: datetime) -> int:
    """Delete them (``db clean``) with their attempts; pending ones stay to be sent."""
    return _delete(conn, _finished_before(before))


def forget_pipeline(conn: Connection, name: str) -> int:
    """Delete every notification about pipeline ``name`` (its purge)."""
    return _delete(conn, notifications.c.pipeline == name)


def _delete(conn: Connection, where: Any) -> int:
    ids = list(conn.execute(select(notifications.c.id).where(where)).scalars())
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        conn.execute(
            delete(notification_attempts).where(notification_attempts.c.notification.in_(chunk))
        )
        conn.execute(delete(notifications).where(notifications.c.id.in_(chunk)))
    return len(ids)
