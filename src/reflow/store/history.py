"""Queries that manage run history: backfills, resets, marks, cancels, deletes, purges.

Each function works inside the caller's transaction, so a command built from several of
them (a backfill of a year, a clear over a range) is all or nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select, update

from reflow.core.errors import Conflict
from reflow.core.states import (
    PRIORITY,
    RUN_ACTIVE,
    RUN_FINISHED,
    TI_FINISHED,
    TI_LIVE,
    BackfillState,
    FailureReason,
    RunOrigin,
    RunState,
    TIState,
)
from reflow.store import deadlines, outbox, pauses
from reflow.store._chunking import _chunks
from reflow.store.models import (
    backfills,
    events,
    pipeline_versions,
    pipelines,
    run_attempts,
    runs,
    schedulers,
    task_instances,
    tries,
)
from reflow.store.records import Backfill, Run, TaskInstance
from reflow.store.runs import pending_again, reconcile_task_instances, runs_by_pk
from reflow.store.transitions import transition
from reflow.store.tries import live_tries_of_runs, request_cancel

_UNSTARTED = (TIState.PENDING, TIState.SCHEDULED, TIState.UP_FOR_RETRY)


# -- backfills ------------------------------------------------------------------------------
def create_backfill(
    conn: Connection,
    *,
    pipeline: str,
    start: datetime,
    end: datetime,
    conf: Mapping[str, Any],
    reprocess: str,
    max_active_runs: int | None,
    run_order: str,
    tasks: Sequence[str] | None,
    planned: Mapping[str, int],
    now: datetime,
    priority: int | None = None,
) -> int:
    values = {
        "pipeline": pipeline,
        "start": start,
        "end": end,
        "conf": dict(conf),
        "reprocess": reprocess,
        "max_active_runs": max_active_runs,
        "run_order": run_order,
        "tasks": list(tasks) if tasks is not None else None,
        "state": BackfillState.RUNNING.value,
        "planned": dict(planned),
        "priority": priority,
        "created_at": now,
        "updated_at": now,
    }
    backfill_id = int(
        conn.execute(insert(backfills).values(**values).returning(backfills.c.id)).scalar_one()
    )
    conn.execute(
        insert(events).values(
            at=now,
            entity="backfill",
            entity_id=backfill_id,
            run=None,
            old=None,
            new=BackfillState.RUNNING.value,
            detail="created",
        )
    )
    return backfill_id


def set_backfill_planned(conn: Connection, backfill_id: int, planned: Mapping[str, int]) -> None:
    """Record what a backfill's plan turned out to be when it was written."""
    conn.execute(
        update(backfills).where(backfills.c.id == backfill_id).values(planned=dict(planned))
    )


def get_backfill(conn: Connection, backfill_id: int) -> Backfill | None:
    return Backfill.first_of(conn.execute(select(backfills).where(backfills.c.id == backfill_id)))


def list_backfills(
    conn: Connection, pipeline: str | None = None, limit: int = 50
) -> list[Backfill]:
    stmt = select(backfills).order_by(backfills.c.id.desc()).limit(limit)
    if pipeline is not None:
        stmt = stmt.where(backfills.c.pipeline == pipeline)
    return Backfill.from_result(conn.execute(stmt))


def backfill_runs(conn: Connection, backfill_id: int) -> list[Run]:
    return Run.from_result(
        conn.execute(
            select(runs).where(runs.c.backfill_id == backfill_id).order_by(runs.c.logical_date)
        )
    )


def run_states_by_backfill(conn: Connection, ids: Sequence[int]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for chunk in _chunks(list(ids)):
        rows = conn.execute(
            select(runs.c.backfill_id, runs.c.state, func.count())
            .where(runs.c.backfill_id.in_(chunk))
            .group_by(runs.c.backfill_id, runs.c.state)
        ).all()
        for backfill_id, state, n in rows:
            out.setdefault(backfill_id, {})[state] = int(n)
    return out


def open_backfills(conn: Connection) -> dict[int, Backfill]:
    """Backfills still running or paused, for admission."""
    rows = Backfill.from_result(
        conn.execute(
            select(backfills).where(
                backfills.c.state.in_([BackfillState.RUNNING.value, BackfillState.PAUSED.value])
            )
        )
    )
    return {r.id: r for r in rows}


def _no_active_run() -> Any:
    """A backfill (correlated) none of whose runs is queued or running."""
    return ~(
        select(runs.c.id)
        .where(
            runs.c.backfill_id == backfills.c.id, runs.c.state.in_([s.value for s in RUN_ACTIVE])
        )
        .exists()
    )


def finished_backfills(conn: Connection) -> list[int]:
    """Running backfills with no active run left."""
    return [
        r[0]
        for r in conn.execute(
            select(backfills.c.id).where(
                backfills.c.state == BackfillState.RUNNING.value, _no_active_run()
            )
        )
    ]


def close_backfills(conn: Connection, ids: Sequence[int], now: datetime) -> list[int]:
    """Close the backfills ``ids`` that are still running with no active run: success, or
    failed when any of their runs did not succeed.

    ``ids`` may have been read before a cancel, a pause or a clear committed, so each is
    checked again with its row locked; one that changed meanwhile is left alone (a
    cancelled backfill stays cancelled)."""
    closed: list[int] = []
    for chunk in _chunks(sorted(set(ids))):
        stmt = select(backfills.c.id).where(
            backfills.c.id.in_(chunk),
            backfills.c.state == BackfillState.RUNNING.value,
            _no_active_run(),
        )
        if conn.dialect.name != "sqlite":
            stmt = stmt.order_by(backfills.c.id).with_for_update(of=backfills)
        done = [r[0] for r in conn.execute(stmt)]
        if not done:
            continue
        unsuccessful = {
            r[0]
            for r in conn.execute(
                select(runs.c.backfill_id)
                .where(runs.c.backfill_id.in_(done), runs.c.state != RunState.SUCCESS.value)
                .distinct()
            )
        }
        for to, group in (
            (BackfillState.FAILED, [i for i in done if i in unsuccessful]),
            (BackfillState.SUCCESS, [i for i in done if i not in unsuccessful]),
        ):
            closed += transition(
                conn, "backfill", group, to, [BackfillState.RUNNING], now, ended_at=now
            )
    return closed


def cancel_backfill(conn: Connection, backfill_id: int, now: datetime) -> tuple[int, list[int]]:
    """Cancel a running or paused backfill: the backfill first, its row locked (so that a
    resume or a scheduler closing it at the same moment waits, then finds it cancelled),
    then its active runs, whose live tries are asked to stop. Returns (runs cancelled,
    tries asked to stop).

    Raises Conflict, writing nothing, when the backfill has already ended."""
    stmt = select(backfills.c.state).where(backfills.c.id == backfill_id)
    if conn.dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    if row is None:
        raise Conflict(f"backfill {backfill_id} was deleted")
    state = BackfillState(row.state)
    if state not in (BackfillState.RUNNING, BackfillState.PAUSED):
        raise Conflict(f"backfill {backfill_id} is already {state.value}")
    moved = transition(
        conn, "backfill", [backfill_id], BackfillState.CANCELLED, [state], now, ended_at=now
    )
    if not moved:  # cannot happen with the row locked; never cancel its runs without it
        raise Conflict(f"backfill {backfill_id} changed while it was cancelled; try again")
    run_pks = [r.id for r in backfill_runs(conn, backfill_id)]
    live = [t.id for t in live_tries_of_runs(conn, run_pks)]
    cancelled = cancel_runs(conn, run_pks, now, f"backfill {backfill_id} cancelled")
    return cancelled, live


def dated_runs(
    conn: Connection, pipeline: str, start: datetime, end: datetime, *, lock: bool = False
) -> dict[datetime, Run]:
    """The scheduled/backfill run of each logical date in [start, end]. With ``lock``,
    their rows stay locked until the transaction ends (PostgreSQL)."""
    stmt = select(runs).where(
        runs.c.pipeline == pipeline,
        runs.c.origin != RunOrigin.MANUAL.value,
        runs.c.logical_date >= start,
        runs.c.logical_date <= end,
    )
    if lock and conn.dialect.name != "sqlite":
        stmt = stmt.order_by(runs.c.id).with_for_update()
    return {r.logical_date: r for r in Run.from_result(conn.execute(stmt))}


def dated_run(conn: Connection, pipeline: str, logical_date: datetime) -> Run | None:
    """The scheduled/backfill run of one logical date, its row locked (PostgreSQL)."""
    return dated_runs(conn, pipeline, logical_date, logical_date, lock=True).get(logical_date)


# -- how long task instances ran -------------------------------------------------------------
def first_try_starts(conn: Connection, run_pks: Sequence[int]) -> dict[int, datetime]:
    """When each task instance of these runs started its first try since it was last
    cleared (task instance id -> start). Task instances with no started try are left out.

    Which try came after the clear is told by the order of their events (the clear's and
    the try's "queued"), not by clocks: the command and the scheduler may run on
    different machines."""
    out: dict[int, datetime] = {}
    for chunk in _chunks(sorted(set(run_pks))):
        cleared: dict[int, int] = {
            ti: event_id
            for ti, event_id in conn.execute(
                select(events.c.entity_id, func.max(events.c.id))
                .where(
                    events.c.run.in_(chunk),
                    events.c.entity == "ti",
                    events.c.new == TIState.PENDING.value,
                )
                .group_by(events.c.entity_id)
            )
        }
        started = conn.execute(
            select(tries.c.ti, tries.c.started_at, events.c.id)
            .join(
                events,
                and_(
                    events.c.entity == "try",
                    events.c.entity_id == tries.c.id,
                    events.c.old.is_(None),
                ),
            )
            .where(tries.c.run.in_(chunk), events.c.run.in_(chunk), tries.c.started_at.is_not(None))
        )
        for ti, start, queued in started:
            if queued > cleared.get(ti, 0) and (ti not in out or start < out[ti]):
                out[ti] = start
    return out


# -- resetting, marking and cancelling -------------------------------------------------------
@dataclass
class Reset:
    """What a reset did: task instances moved back to pending, and the wanted ones left
    alone because a try of theirs is live."""

    cleared: int = 0
    live: list[str] = field(default_factory=list)


def reset_run(
    conn: Connection,
    run: Run,
    *,
    clear: Iterable[str],
    tasks: Sequence[str],
    conf: Mapping[str, Any],
    origin: RunOrigin,
    version: str,
    now: datetime,
    backfill_id: int | None = None,
    new_attempt: bool = True,
    priority: int | None = None,
) -> Reset | None:
    """Reset the task instances ``clear`` of ``run`` to pending and queue the run again.

    A finished run starts a new attempt with ``conf`` (the earlier attempts keep theirs);
    its task instances follow the pipeline's current ``tasks`` (new ones added, removed
    ones marked removed). Live task instances are left alone.

    ``run`` is what the caller read. Its row is locked and read again first: when another
    command changed it meanwhile (a concurrent clear started attempt N+1 already), nothing
    is written and None is returned, for the caller to skip or refuse.
    """
    current = next(iter(runs_by_pk(conn, [run.id], lock=True)), None)
    if current is None or (current.state, current.attempt) != (run.state, run.attempt):
        return None
    if run.state in RUN_FINISHED and new_attempt:
        attempt = run.attempt + 1
        moved = transition(
            conn,
            "run",
            [run.id],
            RunState.QUEUED,
            [run.state],
            now,
            detail=f"attempt {attempt} ({origin.value})",
            attempt=attempt,
            conf=dict(conf),
            origin=origin.value,
            version=version,
            backfill_id=backfill_id if backfill_id is not None else run.backfill_id,
            # A new attempt takes its origin's priority, or the one its backfill gives.
            priority=PRIORITY[origin] if priority is None else priority,
            queued_at=now,
            started_at=None,
            ended_at=None,
            deadline=None,
        )
        if not moved:
            return None
        conn.execute(
            insert(run_attempts).values(
                run=run.id,
                attempt=attempt,
                origin=origin.value,
                conf=dict(conf),
                version=version,
                backfill_id=backfill_id,
                created_at=now,
            )
        )
    tis = TaskInstance.from_result(
        conn.execute(select(task_instances).where(task_instances.c.run == run.id))
    )
    # A re-run follows the current structure; finished instances of removed tasks go too.
    reconcile_task_instances(conn, run.id, tis, tasks, now, finished_too=True)
    wanted = set(clear)
    live = sorted(ti.task_id for ti in tis if ti.task_id in wanted and ti.state in TI_LIVE)
    to_reset = [
        ti
        for ti in tis
        if ti.task_id in wanted
        and ti.task_id in tasks
        and ti.state not in TI_LIVE
        and ti.state != TIState.PENDING
    ]
    cleared = transition(
        conn,
        "ti",
        [ti.id for ti in to_reset],
        TIState.PENDING,
        {ti.state for ti in to_reset},
        now,
        detail="cleared",
        **pending_again(),
    )
    return Reset(len(cleared), live)


def stop_live_tries(conn: Connection, run_pks: Sequence[int], reason: str) -> list[int]:
    """Ask the live tries of these runs to stop; their scheduler carries it out."""
    ids = [t.id for t in live_tries_of_runs(conn, run_pks)]
    request_cancel(conn, ids, reason)
    return ids


def cancel_runs(conn: Connection, run_pks: Sequence[int], now: datetime, detail: str) -> int:
    """Cancel active runs: unstarted task instances are cancelled, live tries stopped
    (reason ``killed``). Only the runs this cancels get their task instances and attempt
    touched (one that finished meanwhile keeps its outcome). Returns how many it cancelled."""
    active: dict[int, str] = {}  # id -> state
    for chunk in _chunks(sorted(set(run_pks))):
        active.update(
            (r.id, r.state)
            for r in conn.execute(
                select(runs.c.id, runs.c.state).where(
                    runs.c.id.in_(chunk), runs.c.state.in_([s.value for s in RUN_ACTIVE])
                )
            )
        )
    if not active:
        return 0
    ids = transition(
        conn,
        "run",
        list(active),
        RunState.CANCELLED,
        set(active.values()),
        now,
        detail=detail,
        ended_at=now,
    )
    stop_live_tries(conn, ids, FailureReason.KILLED.value)
    for chunk in _chunks(ids):
        unstarted = conn.execute(
            select(task_instances.c.id, task_instances.c.state).where(
                task_instances.c.run.in_(chunk),
                task_instances.c.state.in_([s.value for s in _UNSTARTED]),
            )
        ).all()
        transition(
            conn,
            "ti",
            [r.id for r in unstarted],
            TIState.CANCELLED,
            {r.state for r in unstarted},
            now,
            detail=detail,
            ended_at=now,
        )
        conn.execute(
            update(run_attempts)
            .where(run_attempts.c.run.in_(chunk), run_attempts.c.ended_at.is_(None))
            .values(ended_at=now, state=RunState.CANCELLED.value)
        )
    return len(ids)


def mark_run(conn: Connection, run: Run, state: RunState, now: datetime) -> Run:
    """Set a run and its task instances to success or failed by hand; live tries are
    asked to stop first (reason ``killed``). Works on the run as it is now (its row is
    locked and read again), so a concurrent command is followed, never overwritten
    blindly; returns that row."""
    current = next(iter(runs_by_pk(conn, [run.id], lock=True)), None)
    if current is None:
        raise Conflict(f"run {run.run_id} was deleted meanwhile")
    if current.state != state:
        # What already ended keeps when it ended: a mark changes the outcome, not the time.
        if not transition(
            conn,
            "run",
            [current.id],
            state,
            [current.state],
            now,
            detail="marked",
            ended_at=func.coalesce(runs.c.ended_at, now),
        ):
            raise Conflict(f"run {run.run_id} changed while it was marked; try again")
        conn.execute(
            update(run_attempts)
            .where(run_attempts.c.run == current.id, run_attempts.c.attempt == current.attempt)
            .values(ended_at=func.coalesce(run_attempts.c.ended_at, now), state=state.value)
        )
    stop_live_tries(conn, [current.id], FailureReason.KILLED.value)
    tis = list(
        conn.execute(
            select(task_instances.c.id, task_instances.c.state).where(
                task_instances.c.run == current.id
            )
        )
    )
    target = TIState(state.value)
    # Marking failed keeps what already finished; removed instances stay removed.
    keep = TI_FINISHED if target == TIState.FAILED else {target, TIState.REMOVED}
    marked = [ti for ti in tis if ti.state not in keep]
    # Only what was running was killed; what never started has no failure reason.
    for group in (
        [t for t in marked if t.state in TI_LIVE],
        [t for t in marked if t.state not in TI_LIVE],
    ):
        killed = bool(group) and group[0].state in TI_LIVE and target == TIState.FAILED
        transition(
            conn,
            "ti",
            [ti.id for ti in group],
            target,
            {ti.state for ti in group},
            now,
            detail="marked",
            ended_at=func.coalesce(task_instances.c.ended_at, now),
            failure_reason=FailureReason.KILLED.value if killed else None,
        )
    return current


# -- deleting -------------------------------------------------------------------------------
def _log_paths(conn: Connection, chunk: Sequence[int]) -> list[str]:
    return [r[0] for r in conn.execute(select(tries.c.log_path).where(tries.c.run.in_(chunk)))]


def count_runs(conn: Connection, run_pks: Sequence[int]) -> dict[str, Any]:
    """What :func:`delete_runs` would delete, counted the same way: the runs, their task
    instances and tries, and the log paths of those tries."""
    counts: dict[str, Any] = {"runs": 0, "task_instances": 0, "tries": 0, "logs": []}
    for chunk in _chunks(sorted(set(run_pks))):
        counts["logs"] += _log_paths(conn, chunk)
        for key, table, column in (
            ("runs", runs, runs.c.id),
            ("task_instances", task_instances, task_instances.c.run),
            ("tries", tries, tries.c.run),
        ):
            counts[key] += conn.execute(
                select(func.count()).select_from(table).where(column.in_(chunk))
            ).scalar_one()
    return counts


def delete_runs(conn: Connection, run_pks: Sequence[int]) -> dict[str, Any]:
    """Delete runs with their attempts, task instances, tries and events. Returns the
    counts and the log paths of the deleted tries (for the caller to remove).

    Deletes what it is given: callers check first that no try of these runs is live
    (:func:`delete_finished_runs`)."""
    counts: dict[str, Any] = {"runs": 0, "task_instances": 0, "tries": 0, "logs": []}
    for chunk in _chunks(sorted(set(run_pks))):
        counts["logs"] += _log_paths(conn, chunk)
        conn.execute(delete(events).where(events.c.run.in_(chunk)))
        counts["tries"] += conn.execute(delete(tries).where(tries.c.run.in_(chunk))).rowcount
        counts["task_instances"] += conn.execute(
            delete(task_instances).where(task_instances.c.run.in_(chunk))
        ).rowcount
        conn.execute(delete(run_attempts).where(run_attempts.c.run.in_(chunk)))
        counts["runs"] += conn.execute(delete(runs).where(runs.c.id.in_(chunk))).rowcount
    return counts


def delete_finished_runs(
    conn: Connection, run_pks: Sequence[int], hint: str = "use --force to stop and delete them"
) -> dict[str, Any]:
    """Delete runs, checking in the same transaction, with their rows locked, that none is
    queued or running and that no try of theirs is live (a try stopping after a mark).

    Raises Conflict, deleting nothing, otherwise: a live try's process would be left
    behind and its log deleted under it."""
    rows = runs_by_pk(conn, run_pks, lock=True)
    active = [r for r in rows if r.state in RUN_ACTIVE]
    if active:
        names = ", ".join(r.run_id for r in active[:3])
        raise Conflict(
            f"{len(active)} of these runs are {active[0].state} ({names}); nothing was "
            f"deleted ({hint})"
        )
    live = live_tries_of_runs(conn, [r.id for r in rows])
    if live:
        names = ", ".join(sorted({r.run_id for r in rows if r.id in {t.run for t in live}})[:3])
        raise Conflict(
            f"{len(live)} tries of these runs are still running ({names}); nothing was "
            f"deleted ({hint})"
        )
    return delete_runs(conn, [r.id for r in rows])


def runs_in_range(
    conn: Connection,
    pipeline: str,
    start: datetime | None,
    end: datetime | None,
    run_pk: int | None = None,
) -> list[Run]:
    stmt = select(runs).where(runs.c.pipeline == pipeline)
    if run_pk is not None:
        stmt = stmt.where(runs.c.id == run_pk)
    if start is not None:
        stmt = stmt.where(runs.c.logical_date >= start)
    if end is not None:
        stmt = stmt.where(runs.c.logical_date <= end)
    return Run.from_result(conn.execute(stmt.order_by(runs.c.logical_date, runs.c.id)))


def deactivate_pipeline(conn: Connection, name: str, now: datetime) -> None:
    conn.execute(
        update(pipelines).where(pipelines.c.name == name).values(active=False, updated_at=now)
    )


def purge_pipeline(conn: Connection, name: str) -> dict[str, Any]:
    """Delete a pipeline and everything recorded about it. Raises Conflict, deleting
    nothing, while a run of it is active or a try of it is live."""
    run_pks = [r[0] for r in conn.execute(select(runs.c.id).where(runs.c.pipeline == name))]
    counts = delete_finished_runs(conn, run_pks, "run the command again once they stopped")
    backfill_ids = [
        r[0] for r in conn.execute(select(backfills.c.id).where(backfills.c.pipeline == name))
    ]
    for chunk in _chunks(backfill_ids):
        conn.execute(
            delete(events).where(events.c.entity == "backfill", events.c.entity_id.in_(chunk))
        )
    counts["backfills"] = conn.execute(
        delete(backfills).where(backfills.c.pipeline == name)
    ).rowcount
    conn.execute(delete(pipeline_versions).where(pipeline_versions.c.pipeline == name))
    pauses.forget(conn, name)
    deadlines.forget(conn, name)
    counts["notifications"] = outbox.forget_pipeline(conn, name)
    conn.execute(delete(pipelines).where(pipelines.c.name == name))
    return counts


def finished_runs_before(conn: Connection, before: datetime, *, lock: bool = False) -> list[int]:
    """Finished runs whose logical date is before ``before`` and none of whose tries is
    live. With ``lock``, their rows stay locked until the transaction ends (PostgreSQL)."""
    live = select(tries.c.id).where(
        tries.c.run == runs.c.id, tries.c.state.in_(["queued", "running"])
    )
    stmt = select(runs.c.id).where(
        runs.c.logical_date < before,
        runs.c.state.in_([s.value for s in RUN_FINISHED]),
        ~live.exists(),
    )
    if lock and conn.dialect.name != "sqlite":
        stmt = stmt.order_by(runs.c.id).with_for_update(of=runs)
    return [r[0] for r in conn.execute(stmt)]


def _cleanable_backfills(before: datetime) -> Any:
    return and_(
        backfills.c.state.in_(
            [BackfillState.SUCCESS.value, BackfillState.FAILED.value, BackfillState.CANCELLED.value]
        ),
        backfills.c.created_at < before,
    )


def _backfills_left_empty(conn: Connection, before: datetime, run_pks: Sequence[int]) -> list[int]:
    """Finished backfills created before ``before`` that have no run left once ``run_pks``
    are deleted."""
    candidates = [
        r[0] for r in conn.execute(select(backfills.c.id).where(_cleanable_backfills(before)))
    ]
    going = set(run_pks)
    kept: set[int] = set()
    for chunk in _chunks(candidates):
        for run_pk, backfill_id in conn.execute(
            select(runs.c.id, runs.c.backfill_id).where(runs.c.backfill_id.in_(chunk))
        ):
            if run_pk not in going:
                kept.add(backfill_id)
    return [i for i in candidates if i not in kept]


def _stopped_schedulers(before: datetime) -> Any:
    return and_(schedulers.c.stopped_at.is_not(None), schedulers.c.heartbeat_at < before)


def clean_before(conn: Connection, before: datetime, *, dry_run: bool) -> dict[str, Any]:
    """Purge finished runs whose logical date is before ``before``, finished backfills left
    without runs, and stopped schedulers last seen before it. Returns the counts and the
    log paths of the deleted tries; with ``dry_run`` deletes nothing and returns what it
    would delete, chosen and counted the same way."""
    run_pks = finished_runs_before(conn, before, lock=not dry_run)
    backfill_ids = _backfills_left_empty(conn, before, run_pks)
    if dry_run:
        counts = count_runs(conn, run_pks)
        counts["backfills"] = len(backfill_ids)
        counts["schedulers"] = conn.execute(
            select(func.count()).select_from(schedulers).where(_stopped_schedulers(before))
        ).scalar_one()
        counts["notifications"] = outbox.count_finished_before(conn, before)
        return counts
    counts = delete_runs(conn, run_pks)
    empty = ~select(runs.c.id).where(runs.c.backfill_id == backfills.c.id).exists()
    counts["backfills"] = 0
    for chunk in _chunks(backfill_ids):
        gone = list(
            conn.execute(
                delete(backfills)
                .where(backfills.c.id.in_(chunk), _cleanable_backfills(before), empty)
                .returning(backfills.c.id)
            ).scalars()
        )
        if gone:
            conn.execute(
                delete(events).where(events.c.entity == "backfill", events.c.entity_id.in_(gone))
            )
        counts["backfills"] += len(gone)
    counts["schedulers"] = conn.execute(
        delete(schedulers).where(_stopped_schedulers(before))
    ).rowcount
    counts["notifications"] = outbox.delete_finished_before(conn, before)
    return counts
