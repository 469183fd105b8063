"""Pools: named numbers of slots shared by every pipeline.

A task in a pool (``Shell(..., pool="spark", pool_slots=2)``) starts only when its pool has
that many slots free. The slots in use are those of the live tries (``tries.pool``,
``tries.pool_slots``, written when the try is queued), so they are counted in the same
transaction that takes a new one; on PostgreSQL the pools' rows are locked first, so two
schedulers never fill the same free slots.

A pool's slots come from ``reflow.toml`` (``[reflow.pools]``, origin ``config``), or are set
at run time (origin ``set``) and stay so until reset to the configuration's value. A pool
that no configuration names and nobody set has no slots: its tasks wait.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, func, insert, select, tuple_, update

from reflow.core.states import RunState, TIState, TryState
from reflow.store.models import pools, runs, task_instances, tries

CONFIG = "config"
SET = "set"
_LIVE = [TryState.QUEUED.value, TryState.RUNNING.value]


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    slots: int
    origin: str  # CONFIG or SET
    updated_at: datetime
    updated_by: str | None


def sync_config(conn: Connection, configured: Mapping[str, int], now: datetime) -> None:
    """Record the pools of the configuration: new ones are added, those that follow the
    configuration take its slots; slots set at run time stay until reset."""
    existing = {
        r.name: r for r in conn.execute(select(pools.c.name, pools.c.slots, pools.c.origin))
    }
    for name, slots in sorted(configured.items()):
        row = existing.get(name)
        if row is None:
            conn.execute(
                insert(pools).values(name=name, slots=slots, origin=CONFIG, updated_at=now)
            )
        elif row.origin == CONFIG and row.slots != slots:
            conn.execute(
                update(pools).where(pools.c.name == name).values(slots=slots, updated_at=now)
            )


def set_slots(conn: Connection, name: str, slots: int, *, actor: str, now: datetime) -> None:
    """Give ``name`` ``slots`` until reset (a pool the configuration does not name too)."""
    values = {"slots": slots, "origin": SET, "updated_at": now, "updated_by": actor}
    changed = conn.execute(update(pools).where(pools.c.name == name).values(**values)).rowcount
    if not changed:
        conn.execute(insert(pools).values(name=name, **values))


def reset(
    conn: Connection, name: str, configured: Mapping[str, int], *, actor: str, now: datetime
) -> bool:
    """Back to the configuration's slots (a pool it does not name is forgotten). Returns
    False when the store has no such pool."""
    if name in configured:
        values = {
            "slots": configured[name],
            "origin": CONFIG,
            "updated_at": now,
            "updated_by": actor,
        }
        return bool(
            conn.execute(update(pools).where(pools.c.name == name).values(**values)).rowcount
        )
    return bool(conn.execute(delete(pools).where(pools.c.name == name)).rowcount)


def slots(conn: Connection, names: Iterable[str], *, lock: bool = False) -> dict[str, int]:
    """The slots of the pools ``names`` (those unknown have none). With ``lock`` their rows
    stay locked until the transaction ends (PostgreSQL; SQLite's write lock is enough)."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    stmt = select(pools.c.name, pools.c.slots).where(pools.c.name.in_(wanted))
    if lock and conn.dialect.name != "sqlite":
        stmt = stmt.order_by(pools.c.name).with_for_update()
    return {r.name: int(r.slots) for r in conn.execute(stmt)}


def in_use(conn: Connection) -> dict[str, int]:
    """Slots held by live tries, per pool."""
    rows = conn.execute(
        select(tries.c.pool, func.sum(tries.c.pool_slots))
        .where(tries.c.state.in_(_LIVE), tries.c.pool.is_not(None))
        .group_by(tries.c.pool)
    ).all()
    return {r[0]: int(r[1]) for r in rows}


def all_pools(conn: Connection) -> list[Pool]:
    rows = conn.execute(select(pools).order_by(pools.c.name)).all()
    return [Pool(r.name, r.slots, r.origin, r.updated_at, r.updated_by) for r in rows]


def waiting(conn: Connection, members: Mapping[tuple[str, str], str]) -> dict[str, int]:
    """Task instances ready to start (``scheduled``, their run running) per pool, for
    ``members``: (pipeline, task) -> pool."""
    if not members:
        return {}
    rows = conn.execute(
        select(runs.c.pipeline, task_instances.c.task_id, func.count())
        .join(runs, runs.c.id == task_instances.c.run)
        .where(
            task_instances.c.state == TIState.SCHEDULED.value,
            runs.c.state == RunState.RUNNING.value,
            tuple_(runs.c.pipeline, task_instances.c.task_id).in_(sorted(members)),
        )
        .group_by(runs.c.pipeline, task_instances.c.task_id)
    ).all()
    out: dict[str, int] = {}
    for pipeline, task_id, count in rows:
        pool = members[(pipeline, task_id)]
        out[pool] = out.get(pool, 0) + int(count)
    return out
