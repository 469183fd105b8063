"""Tries: queuing one for each scheduled task instance taken, recording where and when it
started, its deadline and the requests to stop it, and reading them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, insert, or_, select, update

from reflow.core.states import TIState, TryState
from reflow.store._chunking import _chunks
from reflow.store.models import runs, task_instances, tries
from reflow.store.records import CancelRequest, ExpiredTry, FinishingTry, LiveTry, TaskTry, Try
from reflow.store.transitions import _record_events, transition, transition_each

_LIVE_TRY = tries.c.state.in_([TryState.QUEUED.value, TryState.RUNNING.value])


@dataclass(frozen=True)
class Claim:
    """A scheduled task instance that a scheduler takes, with what its new try needs."""

    ti_id: int
    run_pk: int
    run_attempt: int
    launcher: str
    log_path_for: Callable[[int], str]  # try number -> the try's log
    timeout: float | None
    kill_grace: float
    pool: str | None = None
    pool_slots: int = 1


def queue_tries(
    conn: Connection, claims: Sequence[Claim], *, owner: int, now: datetime
) -> dict[int, tuple[int, int]]:
    """Take scheduled task instances: each moves scheduled -> queued with a new try row of
    ``owner``. Returns task instance id -> (try id, try number) for those taken; another
    scheduler took the others first. A few statements for any number of claims."""
    by_ti = {c.ti_id: c for c in claims}
    taken = transition(
        conn,
        "ti",
        list(by_ti),
        TIState.QUEUED,
        [TIState.SCHEDULED],
        now,
        try_number=task_instances.c.try_number + 1,
        next_try_at=None,
        failure_reason=None,
    )
    if not taken:
        return {}
    numbers: dict[int, int] = {}
    for chunk in _chunks(taken):
        found = conn.execute(
            select(task_instances.c.id, task_instances.c.try_number).where(
                task_instances.c.id.in_(chunk)
            )
        ).all()
        numbers.update((r.id, r.try_number) for r in found)
    rows = [
        {
            "ti": ti_id,
            "run": by_ti[ti_id].run_pk,
            "try_number": numbers[ti_id],
            "run_attempt": by_ti[ti_id].run_attempt,
            "state": TryState.QUEUED.value,
            "launcher": by_ti[ti_id].launcher,
            "owner": owner,
            "log_path": by_ti[ti_id].log_path_for(numbers[ti_id]),
            "queued_at": now,
            # The task timeout counts from the start (mark_tries_started moves it there); a
            # try adopted before its start was recorded keeps this earlier one.
            "deadline": (
                now + timedelta(seconds=timeout) if (timeout := by_ti[ti_id].timeout) else None
            ),
            "kill_grace": by_ti[ti_id].kill_grace,
            "pool": by_ti[ti_id].pool,
            "pool_slots": by_ti[ti_id].pool_slots,
        }
        for ti_id in taken
    ]
    made = conn.execute(
        insert(tries).returning(tries.c.id, tries.c.ti, sort_by_parameter_order=True), rows
    ).all()
    _record_events(
        conn,
        "try",
        [(r.id, None, by_ti[r.ti].run_pk) for r in made],
        TryState.QUEUED.value,
        now,
        None,
    )
    return {r.ti: (r.id, numbers[r.ti]) for r in made}


def queue_try(
    conn: Connection,
    *,
    ti_id: int,
    run_pk: int,
    run_attempt: int,
    launcher: str,
    owner: int,
    log_path_for: Callable[[int], str],
    timeout: float | None,
    kill_grace: float,
    now: datetime,
) -> tuple[int, int] | None:
    """:func:`queue_tries` for one task instance: (try id, try number), or None."""
    claim = Claim(ti_id, run_pk, run_attempt, launcher, log_path_for, timeout, kill_grace)
    return queue_tries(conn, [claim], owner=owner, now=now).get(ti_id)


@dataclass(frozen=True)
class Start:
    """Where and when a queued try started running."""

    try_id: int
    ti_id: int
    pid: int | None
    host: str
    external_id: str
    at: datetime
    timeout: float | None = None


def mark_tries_started(conn: Connection, starts: Sequence[Start], *, owner: int) -> list[int]:
    """Record where queued tries of ``owner`` run, each started at its ``at``: its
    ``timeout`` counts from then. Returns the tries recorded; the others are no longer
    queued or no longer ``owner``'s (another scheduler declared them lost meanwhile)."""
    if not starts:
        return []
    now = max(s.at for s in starts)
    moved = transition_each(
        conn,
        "try",
        {
            s.try_id: {
                "pid": s.pid,
                "host": s.host,
                "external_id": s.external_id,
                "started_at": s.at,
                "deadline": s.at + timedelta(seconds=s.timeout) if s.timeout else None,
            }
            for s in starts
        },
        TryState.RUNNING,
        [TryState.QUEUED],
        now,
        guard=tries.c.owner == owner,
    )
    recorded = set(moved)
    transition_each(
        conn,
        "ti",
        {s.ti_id: {"started_at": s.at, "ended_at": None} for s in starts if s.try_id in recorded},
        TIState.RUNNING,
        [TIState.QUEUED],
        now,
    )
    return moved


def ended_try_logs(conn: Connection, locations: Sequence[str]) -> set[str]:
    """The logs (``log_path`` values) among ``locations`` whose try has ended."""
    found: set[str] = set()
    for chunk in _chunks(locations):
        stmt = select(tries.c.log_path).where(
            tries.c.log_path.in_(chunk), tries.c.ended_at.is_not(None)
        )
        found.update(conn.execute(stmt).scalars())
    return found


def try_rows(conn: Connection, try_ids: Sequence[int]) -> dict[int, FinishingTry]:
    """Tries with what deciding their outcome needs: their task, TI counters and run."""
    out: dict[int, FinishingTry] = {}
    for chunk in _chunks(sorted(set(try_ids))):
        found = FinishingTry.from_result(
            conn.execute(
                select(
                    tries,
                    task_instances.c.task_id,
                    task_instances.c.try_number.label("ti_try_number"),
                    task_instances.c.lost_tries,
                    task_instances.c.lost_streak,
                    runs.c.pipeline,
                    runs.c.state.label("run_state"),
                )
                .join(task_instances, task_instances.c.id == tries.c.ti)
                .join(runs, runs.c.id == tries.c.run)
                .where(tries.c.id.in_(chunk))
            )
        )
        out.update((r.id, r) for r in found)
    return out


def live_tries(
    conn: Connection, *, owner: int | None = None, owners: Iterable[int] | None = None
) -> list[Try]:
    stmt = select(tries).where(_LIVE_TRY)
    if owner is not None:
        stmt = stmt.where(tries.c.owner == owner)
    if owners is not None:
        stmt = stmt.where(or_(tries.c.owner.in_(list(owners)), tries.c.owner.is_(None)))
    return Try.from_result(conn.execute(stmt.order_by(tries.c.id)))


def expired_tries(conn: Connection, owner: int, now: datetime) -> list[ExpiredTry]:
    """Live tries of ``owner`` past their own deadline that were not asked to stop yet."""
    return ExpiredTry.from_result(
        conn.execute(
            select(tries.c.id, tries.c.kill_grace, tries.c.started_at, tries.c.deadline).where(
                tries.c.owner == owner,
                _LIVE_TRY,
                tries.c.cancel_reason.is_(None),
                tries.c.deadline.is_not(None),
                tries.c.deadline <= now,
            )
        )
    )


def move_try_start(
    conn: Connection, try_id: int, owner: int, started_at: datetime, deadline: datetime
) -> None:
    """Record a live try's later real start (a pod's container, after its image pull) and
    the deadline its timeout gives from there."""
    conn.execute(
        update(tries)
        .where(tries.c.id == try_id, tries.c.owner == owner, _LIVE_TRY)
        .values(started_at=started_at, deadline=deadline)
    )


def request_cancel(conn: Connection, try_ids: Sequence[int], reason: str) -> list[int]:
    """Record why tries must stop (first reason wins); return those newly asked."""
    asked: list[int] = []
    for chunk in _chunks(list(try_ids)):
        rows = conn.execute(
            update(tries)
            .where(tries.c.id.in_(chunk), _LIVE_TRY, tries.c.cancel_reason.is_(None))
            .values(cancel_reason=reason)
            .returning(tries.c.id)
        ).all()
        asked += [r[0] for r in rows]
    return asked


def live_tries_of_runs(conn: Connection, run_pks: Sequence[int]) -> list[LiveTry]:
    out: list[LiveTry] = []
    for chunk in _chunks(sorted(set(run_pks))):
        out += LiveTry.from_result(
            conn.execute(
                select(tries.c.id, tries.c.owner, tries.c.kill_grace, tries.c.run).where(
                    tries.c.run.in_(chunk), _LIVE_TRY
                )
            )
        )
    return out


# -- reads for the CLI and services ----------------------------------------------------------
def tries_of(
    conn: Connection, *, run_pk: int | None = None, ti_id: int | None = None
) -> list[TaskTry]:
    stmt = select(tries, task_instances.c.task_id).join(
        task_instances, task_instances.c.id == tries.c.ti
    )
    if run_pk is not None:
        stmt = stmt.where(tries.c.run == run_pk)
    if ti_id is not None:
        stmt = stmt.where(tries.c.ti == ti_id)
    return TaskTry.from_result(conn.execute(stmt.order_by(tries.c.id)))


def cancel_requested(conn: Connection, owner: int) -> list[CancelRequest]:
    """Live tries of ``owner`` that someone asked to stop."""
    return CancelRequest.from_result(
        conn.execute(
            select(tries.c.id, tries.c.kill_grace, tries.c.cancel_reason).where(
                tries.c.owner == owner, _LIVE_TRY, tries.c.cancel_reason.is_not(None)
            )
        )
    )
