"""What the scheduler's tick reads of runs: the queued runs and the limits they wait under,
the running runs that changed since it last looked (the invariant in
:mod:`reflow.store.transitions`), the task instances ready to launch, the runs past their
deadline."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, or_, select, text, tuple_, update

from reflow.core.states import BackfillState, RunState, TIState
from reflow.store._chunking import _chunks
from reflow.store.models import UNSEEN_CHANGES, backfills, runs, task_instances
from reflow.store.records import ExpiredRun, QueuedRun, ReadyTaskInstance, Run


def count_running_runs(conn: Connection) -> dict[str, int]:
    rows = conn.execute(
        select(runs.c.pipeline, func.count())
        .where(runs.c.state == RunState.RUNNING.value)
        .group_by(runs.c.pipeline)
    ).all()
    return {r[0]: int(r[1]) for r in rows}


def queued_runs(conn: Connection, pipeline_names: Iterable[str] | None = None) -> list[QueuedRun]:
    stmt = select(
        runs.c.id,
        runs.c.pipeline,
        runs.c.origin,
        runs.c.priority,
        runs.c.logical_date,
        runs.c.backfill_id,
    ).where(runs.c.state == RunState.QUEUED.value)
    if pipeline_names is not None:
        stmt = stmt.where(runs.c.pipeline.in_(list(pipeline_names)))
    return QueuedRun.from_result(conn.execute(stmt))


def admission_signature(conn: Connection) -> tuple[Any, ...]:
    """What admission depends on, in brief: which runs are queued and running (count, and
    largest and summed id of each), and the open backfills' states and limits. The same
    signature means that the same runs wait under the same limits."""
    counts = conn.execute(
        select(runs.c.state, func.count(), func.max(runs.c.id), func.sum(runs.c.id))
        .where(runs.c.state.in_([RunState.QUEUED.value, RunState.RUNNING.value]))
        .group_by(runs.c.state)
        .order_by(runs.c.state)
    ).all()
    steering = conn.execute(
        select(backfills.c.id, backfills.c.state, backfills.c.max_active_runs)
        .where(backfills.c.state.in_([BackfillState.RUNNING.value, BackfillState.PAUSED.value]))
        .order_by(backfills.c.id)
    ).all()
    return tuple(tuple(r) for r in counts), tuple(tuple(r) for r in steering)


def count_running_by_backfill(conn: Connection, ids: Iterable[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for chunk in _chunks(list(ids)):
        rows = conn.execute(
            select(runs.c.backfill_id, func.count())
            .where(runs.c.state == RunState.RUNNING.value, runs.c.backfill_id.in_(chunk))
            .group_by(runs.c.backfill_id)
        ).all()
        out.update({r[0]: int(r[1]) for r in rows})
    return out


def unsettled_runs(conn: Connection) -> list[Run]:
    """Running runs with changes the scheduler has not acted on yet (a partial index holds
    just those: the cost follows what changed, not how much is running)."""
    return Run.from_result(
        conn.execute(
            select(runs).where(runs.c.state == RunState.RUNNING.value, text(UNSEEN_CHANGES))
        )
    )


def runs_with_due_retries(conn: Connection, now: datetime) -> list[Run]:
    """Running runs with a task instance whose wait before its next try is over."""
    due = select(task_instances.c.run).where(
        task_instances.c.state == TIState.UP_FOR_RETRY.value,
        or_(task_instances.c.next_try_at.is_(None), task_instances.c.next_try_at <= now),
    )
    return Run.from_result(
        conn.execute(select(runs).where(runs.c.id.in_(due), runs.c.state == RunState.RUNNING.value))
    )


def running_runs(conn: Connection, pipeline_names: Iterable[str] | None = None) -> list[Run]:
    """Every running run (of ``pipeline_names``): the scheduler's full look, on start-up
    and after a pipeline's version changed."""
    stmt = select(runs).where(runs.c.state == RunState.RUNNING.value)
    if pipeline_names is not None:
        stmt = stmt.where(runs.c.pipeline.in_(list(pipeline_names)))
    return Run.from_result(conn.execute(stmt))


def hold_unchanged_runs(conn: Connection, seen: Mapping[int, int]) -> set[int]:
    """Of the runs in ``seen`` (id -> the ``change_seq`` the scheduler read), those still
    running and unchanged since, locked until the transaction ends (on PostgreSQL; the
    write lock covers SQLite). Decisions made from that read apply to these only."""
    held: set[int] = set()
    for chunk in _chunks(sorted(seen)):
        rows = conn.execute(
            select(runs.c.id, runs.c.change_seq)
            .where(runs.c.id.in_(chunk), runs.c.state == RunState.RUNNING.value)
            .order_by(runs.c.id)
            .with_for_update()
        ).all()
        held.update(r.id for r in rows if r.change_seq == seen[r.id])
    return held


def settle_runs(conn: Connection, run_pks: Iterable[int]) -> None:
    """Record that the scheduler has acted on every change of these runs so far."""
    for chunk in _chunks(sorted(set(run_pks))):
        conn.execute(update(runs).where(runs.c.id.in_(chunk)).values(seen_seq=runs.c.change_seq))


def scheduled_task_instances(
    conn: Connection,
    *,
    limit: int,
    weights: Mapping[tuple[str, str], int] | None = None,
    skip_pipelines: Iterable[str] = (),
    skip_tasks: Iterable[tuple[str, str]] = (),
    run_pks: Iterable[int] | None = None,
) -> list[ReadyTaskInstance]:
    """Up to ``limit`` task instances ready to launch (``scheduled``) of running runs, best
    first: by their run's priority, their task's priority weight (``weights``: (pipeline,
    task) -> weight, for those not 1), then logical date and run. ``skip_tasks`` are
    (pipeline, task) pairs that cannot start now (their pool is full). Each has its
    run's columns and ``ti_id``/``ti_task_id``."""
    weight = (
        case(
            *[
                (and_(runs.c.pipeline == p, task_instances.c.task_id == t), w)
                for (p, t), w in sorted(weights.items())
            ],
            else_=1,
        )
        if weights
        else None
    )
    stmt = (
        select(
            *runs.c,
            task_instances.c.id.label("ti_id"),
            task_instances.c.task_id.label("ti_task_id"),
        )
        .join(runs, runs.c.id == task_instances.c.run)
        .where(
            task_instances.c.state == TIState.SCHEDULED.value,
            runs.c.state == RunState.RUNNING.value,
        )
        .order_by(
            runs.c.priority.desc(),
            *([weight.desc()] if weight is not None else []),
            runs.c.logical_date,
            runs.c.id,
        )
        .limit(limit)
    )
    skip = sorted(set(skip_pipelines))
    if skip:
        stmt = stmt.where(runs.c.pipeline.not_in(skip))
    pairs = sorted(set(skip_tasks))
    if pairs:
        stmt = stmt.where(tuple_(runs.c.pipeline, task_instances.c.task_id).not_in(pairs))
    if run_pks is not None:
        stmt = stmt.where(runs.c.id.in_(sorted(set(run_pks))))
    return ReadyTaskInstance.from_result(conn.execute(stmt))


def expired_runs(
    conn: Connection, now: datetime, pipeline_names: Iterable[str] | None = None
) -> list[ExpiredRun]:
    stmt = select(runs.c.id, runs.c.pipeline).where(
        runs.c.state == RunState.RUNNING.value,
        runs.c.deadline.is_not(None),
        runs.c.deadline <= now,
    )
    if pipeline_names is not None:
        stmt = stmt.where(runs.c.pipeline.in_(list(pipeline_names)))
    return ExpiredRun.from_result(conn.execute(stmt))


def count_live_tis(conn: Connection) -> dict[str, int]:
    """Queued or running TIs per pipeline (for max_active_tasks)."""
    rows = conn.execute(
        select(runs.c.pipeline, func.count())
        .select_from(task_instances.join(runs, runs.c.id == task_instances.c.run))
        .where(
            and_(
                task_instances.c.state.in_([TIState.QUEUED.value, TIState.RUNNING.value]),
                runs.c.state == RunState.RUNNING.value,
            )
        )
        .group_by(runs.c.pipeline)
    ).all()
    return {r[0]: int(r[1]) for r in rows}
