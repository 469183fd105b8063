"""Slots that tasks compete for: pools and priority weights, as the scheduler sees them.

:func:`rules` reads them from the pipelines (once per catalog); :func:`crowded` says which
tasks cannot start now because their pool is full, so that the launch candidates read
past them; :func:`free` counts each pool's free slots in the transaction that takes
tries, with the pools' rows locked first (``store.pools``), so that several schedulers
never fill the same slots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from sqlalchemy import Connection

from reflow.core.pipeline import Pipeline
from reflow.scheduler.launching import pool_of
from reflow.store import pools

Key = tuple[str, str]  # (pipeline, task)


def rules(pipelines: Mapping[str, Pipeline]) -> tuple[dict[Key, int], dict[Key, tuple[str, int]]]:
    """(pipeline, task) -> priority weight for the tasks whose weight is not 1, and ->
    (pool, slots) for the tasks in a pool."""
    weights: dict[Key, int] = {}
    pooled: dict[Key, tuple[str, int]] = {}
    for name, pipeline in pipelines.items():
        for task_id, task in pipeline.tasks.items():
            if (weight := task.option("priority_weight")) != 1:
                weights[(name, task_id)] = weight
            pool, taken = pool_of(pipeline, task_id)
            if pool is not None:
                pooled[(name, task_id)] = (pool, taken)
    return weights, pooled


def crowded(
    conn: Connection,
    pooled: Mapping[Key, tuple[str, int]],
    on_undefined: Callable[[str], None] = lambda pool: None,
) -> set[Key]:
    """The tasks whose pool has fewer slots free than they take; ``on_undefined`` is told
    of each pool that has no slots at all because nothing names it."""
    if not pooled:
        return set()
    names = {pool for pool, _ in pooled.values()}
    limits = pools.slots(conn, names)
    used = pools.in_use(conn)
    for pool in sorted(names - limits.keys()):
        on_undefined(pool)
    return {
        key
        for key, (pool, taken) in pooled.items()
        if limits.get(pool, 0) - used.get(pool, 0) < taken
    }


def free(conn: Connection, names: Iterable[str], *, lock: bool) -> dict[str, int]:
    """Free slots of each pool ``names``; with ``lock`` the pools' rows stay locked until
    the transaction ends (PostgreSQL), so the count holds until the tries are written."""
    wanted = set(names)
    if not wanted:
        return {}
    limits = pools.slots(conn, wanted, lock=lock)
    used = pools.in_use(conn)
    return {p: limits.get(p, 0) - used.get(p, 0) for p in wanted}
