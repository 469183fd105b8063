"""Use-cases on pools: list them with what they hold and wait for, set their slots at run
time, and reset them to the configuration (``store.pools`` has the rules)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reflow.core.errors import InvalidInput, NotFound
from reflow.core.naming import NAME_PATTERN, utcnow
from reflow.services.project import Project
from reflow.store import pools

_ID_HELP = "use letters, digits, '_', '-' or '.'"
MAX_SLOTS = 1_000_000


@dataclass
class PoolStatus:
    name: str
    slots: int
    origin: str  # config | set | undefined (named by tasks only: no slots)
    used: int
    waiting: int  # task instances ready to start, waiting for slots or their turn
    tasks: list[str] = field(default_factory=list)  # "pipeline.task" of its members
    updated_at: datetime | None = None
    updated_by: str | None = None


def list_pools(project: Project) -> list[PoolStatus]:
    """Every pool the configuration, the store or a task names."""
    members: dict[tuple[str, str], str] = {}
    for name, pipeline in project.catalog.pipelines.items():
        for task_id, task in pipeline.tasks.items():
            if (pool := task.option("pool")) is not None:
                members[(name, task_id)] = pool
    with project.db.read() as conn:
        stored = {p.name: p for p in pools.all_pools(conn)}
        used = pools.in_use(conn)
        waiting = pools.waiting(conn, members)
    configured = project.settings.pools
    names = sorted({*stored, *configured, *members.values(), *used})
    out = []
    for name in names:
        row = stored.get(name)
        if row is not None:
            slots, origin = row.slots, row.origin
        elif name in configured:
            slots, origin = configured[name], pools.CONFIG
        else:
            slots, origin = 0, "undefined"
        out.append(
            PoolStatus(
                name=name,
                slots=slots,
                origin=origin,
                used=used.get(name, 0),
                waiting=waiting.get(name, 0),
                tasks=sorted(f"{p}.{t}" for (p, t), pool in members.items() if pool == name),
                updated_at=row.updated_at if row is not None else None,
                updated_by=row.updated_by if row is not None else None,
            )
        )
    return out


def set_slots(project: Project, name: str, slots: int, *, actor: str) -> PoolStatus:
    """Give a pool ``slots`` from now on (kept until reset): fewer than it uses now stops
    new starts until enough tries end; none are stopped."""
    _check_name(name)
    if not isinstance(slots, int) or isinstance(slots, bool) or not 0 <= slots <= MAX_SLOTS:
        raise InvalidInput(f"slots must be a whole number from 0 to {MAX_SLOTS}, got {slots!r}")
    now = utcnow()
    project.db.write(lambda conn: pools.set_slots(conn, name, slots, actor=actor, now=now))
    return _status(project, name)


def reset(project: Project, name: str, *, actor: str) -> PoolStatus:
    """Back to the configuration's slots (a pool it does not name has none again)."""
    _check_name(name)
    now = utcnow()

    def work(conn: Any) -> bool:
        return pools.reset(conn, name, project.settings.pools, actor=actor, now=now)

    if not project.db.write(work) and name not in project.settings.pools:
        raise NotFound(f"no pool {name!r} was set (see reflow pools list)")
    return _status(project, name)


def _status(project: Project, name: str) -> PoolStatus:
    """The pool as listed; one no longer named anywhere (reset, unused) has no slots."""
    found = [p for p in list_pools(project) if p.name == name]
    return found[0] if found else PoolStatus(name, 0, "undefined", used=0, waiting=0)


def _check_name(name: str) -> None:
    if not re.match(NAME_PATTERN, name):
        raise InvalidInput(f"bad pool name {name!r}: {_ID_HELP}")
