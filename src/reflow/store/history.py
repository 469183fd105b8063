"""Queries that manage run history: backfills, resets, marks, cancels, deletes, purges.

Each function works inside the caller's transaction, so a command built from several of
them (a backfill of a year, a clear over a range) is all or nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from reflow.core.states import (
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
from reflow.store.repo import Rec, reconcile_task_instances, request_cancel, transition

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


def get_backfill(conn: Connection, backfill_id: int) -> Rec | None:
    return conn.execute(select(backfills).where(backfills.c.id == backfill_id)).first()


def list_backfills(conn: Connection, pipeline: str | None = None, limit: int = 50) -> list[Rec]:
    stmt = select(backfills).order_by(backfills.c.id.desc()).limit(limit)
    if pipeline is not None:
        stmt = stmt.where(backfills.c.pipeline == pipeline)
    return list(conn.execute(stmt).all())


def backfill_runs(conn: Connection, backfill_id: int) -> list[Rec]:
    return list(
        conn.execute(
            select(runs).where(runs.c.backfill_id == backfill_id).order_by(runs.c.logical_date)
        ).all()
    )


def run_states_by_backfill(conn: Connection, ids: Sequence[int]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    if not ids:
        return out
    rows = conn.execute(
        select(runs.c.backfill_id, runs.c.state, func.count())
        .where(runs.c.backfill_id.in_(list(ids)))
        .group_by(runs.c.backfill_id, runs.c.state)
    ).all()
    for backfill_id, state, n in rows:
        out.setdefault(backfill_id, {})[state] = int(n)
    return out


def open_backfills(conn: Connection) -> dict[int, Rec]:
    """Backfills still running or paused, for admission."""
    rows = conn.execute(
        select(backfills).where(
            backfills.c.state.in_([BackfillState.RUNNING.value, BackfillState.PAUSED.value])
        )
    ).all()
    return {r.id: r for r in rows}


def finished_backfills(conn: Connection) -> list[int]:
    """Running backfills with no active run left."""
    active = (
        select(runs.c.id)
        .where(
            runs.c.backfill_id == backfills.c.id, runs.c.state.in_([s.value for s in RUN_ACTIVE])
        )
        .exists()
    )
    return [
        r[0]
        for r in conn.execute(
            select(backfills.c.id).where(backfills.c.state == BackfillState.RUNNING.value, ~active)
        )
    ]


def close_backfills(conn: Connection, ids: Sequence[int], now: datetime) -> list[int]:
    """Finished backfills become success, or failed when any of their runs did not
    succeed."""
    closed = []
    for backfill_id in ids:
        failed = conn.execute(
            select(func.count())
            .select_from(runs)
            .where(runs.c.backfill_id == backfill_id, runs.c.state != RunState.SUCCESS.value)
        ).scalar_one()
        to = BackfillState.FAILED if failed else BackfillState.SUCCESS
        closed += transition(
            conn, "backfill", [backfill_id], to, [BackfillState.RUNNING], now, ended_at=now
        )
    return closed


def dated_runs(
    conn: Connection, pipeline: str, start: datetime, end: datetime
) -> dict[datetime, Rec]:
    """The scheduled/backfill run of each logical date in [start, end]."""
    rows = conn.execute(
        select(runs).where(
            runs.c.pipeline == pipeline,
            runs.c.origin != RunOrigin.MANUAL.value,
            runs.c.logical_date >= start,
            runs.c.logical_date <= end,
        )
    ).all()
    return {r.logical_date: r for r in rows}


# -- resetting, marking and cancelling -------------------------------------------------------
def reset_run(
    conn: Connection,
    run: Rec,
    *,
    clear: Iterable[str],
    tasks: Sequence[str],
    conf: Mapping[str, Any],
    origin: RunOrigin,
    version: str,
    now: datetime,
    backfill_id: int | None = None,
    new_attempt: bool = True,
) -> list[str]:
    """Reset the task instances ``clear`` of ``run`` to pending and queue the run again.

    A finished run starts a new attempt with ``conf`` (the earlier attempts keep theirs);
    its task instances follow the pipeline's current ``tasks`` (new ones added, removed
    ones marked removed). Live task instances are left alone: their names are returned.
    """
    tis = list(conn.execute(select(task_instances).where(task_instances.c.run == run.id)))
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
    transition(
        conn,
        "ti",
        [ti.id for ti in to_reset],
        TIState.PENDING,
        {ti.state for ti in to_reset},
        now,
        detail="cleared",
        next_try_at=None,
        failure_reason=None,
        started_at=None,
        ended_at=None,
        # A cleared task instance gets its full retries again: earlier tries do not count.
        lost_tries=task_instances.c.try_number,
    )
    if run.state in RUN_FINISHED and new_attempt:
        attempt = run.attempt + 1
        transition(
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
            queued_at=now,
            started_at=None,
            ended_at=None,
            deadline=None,
        )
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
    return live


def stop_live_tries(conn: Connection, run_pks: Sequence[int], reason: str) -> list[int]:
    """Ask the live tries of these runs to stop; their scheduler carries it out."""
    if not run_pks:
        return []
    ids = [
        r[0]
        for r in conn.execute(
            select(tries.c.id).where(
                tries.c.run.in_(list(run_pks)),
                tries.c.state.in_(["queued", "running"]),
            )
        )
    ]
    request_cancel(conn, ids, reason)
    return ids


def cancel_runs(conn: Connection, run_pks: Sequence[int], now: datetime, detail: str) -> int:
    """Cancel active runs: unstarted task instances are cancelled, live tries stopped
    (reason ``killed``). Returns how many runs were cancelled."""
    rows = conn.execute(
        select(runs.c.id, runs.c.state).where(
            runs.c.id.in_(list(run_pks)), runs.c.state.in_([s.value for s in RUN_ACTIVE])
        )
    ).all()
    if not rows:
        return 0
    ids = [r.id for r in rows]
    stop_live_tries(conn, ids, FailureReason.KILLED.value)
    unstarted = conn.execute(
        select(task_instances.c.id, task_instances.c.state).where(
            task_instances.c.run.in_(ids),
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
    moved = len(
        transition(
            conn,
            "run",
            ids,
            RunState.CANCELLED,
            {r.state for r in rows},
            now,
            detail=detail,
            ended_at=now,
        )
    )
    conn.execute(
        update(run_attempts)
        .where(run_attempts.c.run.in_(ids), run_attempts.c.ended_at.is_(None))
        .values(ended_at=now, state=RunState.CANCELLED.value)
    )
    return moved


def mark_run(conn: Connection, run: Rec, state: RunState, now: datetime) -> None:
    """Set a run and its task instances to success or failed by hand; live tries are
    asked to stop first (reason ``killed``)."""
    stop_live_tries(conn, [run.id], FailureReason.KILLED.value)
    tis = list(
        conn.execute(
            select(task_instances.c.id, task_instances.c.state).where(
                task_instances.c.run == run.id
            )
        )
    )
    target = TIState(state.value)
    # Marking failed keeps what already finished; removed instances stay removed.
    keep = TI_FINISHED if target == TIState.FAILED else {target, TIState.REMOVED}
    marked = [ti for ti in tis if ti.state not in keep]
    transition(
        conn,
        "ti",
        [ti.id for ti in marked],
        target,
        {ti.state for ti in marked},
        now,
        detail="marked",
        ended_at=now,
        failure_reason=FailureReason.KILLED.value if target == TIState.FAILED else None,
    )
    if run.state != state:
        transition(conn, "run", [run.id], state, [run.state], now, detail="marked", ended_at=now)
        conn.execute(
            update(run_attempts)
            .where(run_attempts.c.run == run.id, run_attempts.c.attempt == run.attempt)
            .values(ended_at=now, state=state.value)
        )


# -- deleting -------------------------------------------------------------------------------
def delete_runs(conn: Connection, run_pks: Sequence[int]) -> dict[str, Any]:
    """Delete runs with their attempts, task instances, tries and events. Returns the
    counts and the log paths of the deleted tries (for the caller to remove)."""
    ids = list(run_pks)
    if not ids:
        return {"runs": 0, "task_instances": 0, "tries": 0, "logs": []}
    logs = [r[0] for r in conn.execute(select(tries.c.log_path).where(tries.c.run.in_(ids)))]
    counts: dict[str, Any] = {"logs": logs}
    conn.execute(delete(events).where(events.c.run.in_(ids)))
    counts["tries"] = conn.execute(delete(tries).where(tries.c.run.in_(ids))).rowcount
    counts["task_instances"] = conn.execute(
        delete(task_instances).where(task_instances.c.run.in_(ids))
    ).rowcount
    conn.execute(delete(run_attempts).where(run_attempts.c.run.in_(ids)))
    counts["runs"] = conn.execute(delete(runs).where(runs.c.id.in_(ids))).rowcount
    return counts


def runs_in_range(
    conn: Connection,
    pipeline: str,
    start: datetime | None,
    end: datetime | None,
    run_pk: int | None = None,
) -> list[Rec]:
    stmt = select(runs).where(runs.c.pipeline == pipeline)
    if run_pk is not None:
        stmt = stmt.where(runs.c.id == run_pk)
    if start is not None:
        stmt = stmt.where(runs.c.logical_date >= start)
    if end is not None:
        stmt = stmt.where(runs.c.logical_date <= end)
    return list(conn.execute(stmt.order_by(runs.c.logical_date, runs.c.id)).all())


def deactivate_pipeline(conn: Connection, name: str, now: datetime) -> None:
    conn.execute(
        update(pipelines).where(pipelines.c.name == name).values(active=False, updated_at=now)
    )


def purge_pipeline(conn: Connection, name: str) -> dict[str, Any]:
    """Delete a pipeline and everything recorded about it."""
    run_pks = [r[0] for r in conn.execute(select(runs.c.id).where(runs.c.pipeline == name))]
    counts = delete_runs(conn, run_pks)
    backfill_ids = [
        r[0] for r in conn.execute(select(backfills.c.id).where(backfills.c.pipeline == name))
    ]
    if backfill_ids:
        conn.execute(
            delete(events).where(
                events.c.entity == "backfill", events.c.entity_id.in_(backfill_ids)
            )
        )
    counts["backfills"] = conn.execute(
        delete(backfills).where(backfills.c.pipeline == name)
    ).rowcount
    conn.execute(delete(pipeline_versions).where(pipeline_versions.c.pipeline == name))
    conn.execute(delete(pipelines).where(pipelines.c.name == name))
    return counts


def finished_runs_before(conn: Connection, before: datetime) -> list[int]:
    return [
        r[0]
        for r in conn.execute(
            select(runs.c.id).where(
                runs.c.logical_date < before, runs.c.state.in_([s.value for s in RUN_FINISHED])
            )
        )
    ]


def clean_before(conn: Connection, before: datetime, *, dry_run: bool) -> dict[str, Any]:
    """Purge finished runs whose logical date is before ``before``, finished backfills left
    without runs, and stopped schedulers last seen before it. Returns the counts."""
    run_pks = finished_runs_before(conn, before)
    if dry_run:
        tis = (
            conn.execute(
                select(func.count())
                .select_from(task_instances)
                .where(task_instances.c.run.in_(run_pks))
            ).scalar_one()
            if run_pks
            else 0
        )
        attempts = (
            conn.execute(
                select(func.count()).select_from(tries).where(tries.c.run.in_(run_pks))
            ).scalar_one()
            if run_pks
            else 0
        )
        return {"runs": len(run_pks), "task_instances": tis, "tries": attempts, "logs": []}
    counts: dict[str, Any] = {"runs": 0, "task_instances": 0, "tries": 0, "logs": []}
    for i in range(0, len(run_pks), 500):
        part = delete_runs(conn, run_pks[i : i + 500])
        for key in ("runs", "task_instances", "tries"):
            counts[key] += part[key]
        counts["logs"] += part["logs"]
    empty = ~select(runs.c.id).where(runs.c.backfill_id == backfills.c.id).exists()
    finished = [
        BackfillState.SUCCESS.value,
        BackfillState.FAILED.value,
        BackfillState.CANCELLED.value,
    ]
    counts["backfills"] = conn.execute(
        delete(backfills).where(
            backfills.c.state.in_(finished), backfills.c.created_at < before, empty
        )
    ).rowcount
    counts["schedulers"] = conn.execute(
        delete(schedulers).where(
            schedulers.c.stopped_at.is_not(None), schedulers.c.heartbeat_at < before
        )
    ).rowcount
    return counts
