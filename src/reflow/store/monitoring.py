"""What the metrics endpoints and the health probes read: a few GROUP BY counts over indexed
columns and one-row looks, never a walk over task-instance history.

Run on :meth:`Database.probe` connections (one try, no retry): a scrape or a probe during an
outage fails at once instead of waiting for the database.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, func, select
from sqlalchemy.exc import SQLAlchemyError

from reflow.core.errors import StoreUnavailable
from reflow.core.states import TI_FINISHED, TIState
from reflow.store.db import VERSION_TABLE, Database
from reflow.store.models import pipelines, runs, schedulers, task_instances

# Task instances that are not finished: the ones the tick works on. Finished ones are
# history (millions of rows), never counted here.
TI_UNFINISHED = tuple(s.value for s in TIState if s not in TI_FINISHED)


def runs_by_state(conn: Connection) -> dict[tuple[str, str], int]:
    """Runs per (pipeline, state), every state: one pass over the (state, pipeline) index,
    which grows with the runs (one per pipeline and date), not with the task instances."""
    rows = conn.execute(
        select(runs.c.pipeline, runs.c.state, func.count()).group_by(runs.c.state, runs.c.pipeline)
    ).all()
    return {(r[0], r[1]): int(r[2]) for r in rows}


def unfinished_task_instances(conn: Connection) -> dict[tuple[str, str], int]:
    """Unfinished task instances per (pipeline, state): read through the index on state,
    so the cost follows the work in progress, not the history."""
    rows = conn.execute(
        select(runs.c.pipeline, task_instances.c.state, func.count())
        .select_from(task_instances.join(runs, runs.c.id == task_instances.c.run))
        .where(task_instances.c.state.in_(TI_UNFINISHED))
        .group_by(runs.c.pipeline, task_instances.c.state)
    ).all()
    return {(r[0], r[1]): int(r[2]) for r in rows}


def active_pipelines(conn: Connection) -> list[str]:
    """Pipelines whose file is present: their gauges are reported even when zero."""
    return list(
        conn.execute(
            select(pipelines.c.name).where(pipelines.c.active.is_(True)).order_by(pipelines.c.name)
        ).scalars()
    )


def scheduler_heartbeats(conn: Connection) -> list[tuple[int, str, datetime]]:
    """(id, host, last heartbeat) of every scheduler not known to have stopped."""
    rows = conn.execute(
        select(schedulers.c.id, schedulers.c.host, schedulers.c.heartbeat_at)
        .where(schedulers.c.stopped_at.is_(None))
        .order_by(schedulers.c.id)
    ).all()
    return [(int(r[0]), str(r[1]), r[2]) for r in rows]


def schema_present(conn: Connection) -> bool:
    """Whether the database holds a reflow schema (one row of the migrations table)."""
    return conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").first() is not None


def holds_lease(conn: Connection, scheduler_id: int) -> bool:
    """Whether the scheduler is registered and not declared dead (read only: unlike
    ``schedulers.hold_lease``, it locks nothing)."""
    row = conn.execute(
        select(schedulers.c.id).where(
            schedulers.c.id == scheduler_id, schedulers.c.stopped_at.is_(None)
        )
    ).first()
    return row is not None


def schema_answers(db: Database) -> bool:
    """Does the database answer one cheap read on a probe connection (no retry) and hold
    a reflow schema? Raises StoreUnavailable when it cannot be read, with the cause."""
    try:
        with db.probe() as conn:
            return schema_present(conn)
    except SQLAlchemyError as exc:
        raise StoreUnavailable(str(exc)) from exc
