"""What each try's pods or processes held, and when (``try_usage``): written with the
tries' outcomes, read back by pipeline and logical dates to compute costs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, insert, select

from reflow.core.cost import Held
from reflow.store.models import run_attempts, runs, task_instances, tries, try_usage
from reflow.store.records import DatedUsage


def record(conn: Connection, held: Mapping[int, Iterable[Held]]) -> int:
    """Record what each try (by id) held, in the transaction that records its outcome;
    returns the rows written."""
    rows = [_row(try_id, h) for try_id, found in held.items() for h in found]
    if rows:
        conn.execute(insert(try_usage), rows)
    return len(rows)


def _row(try_id: int, h: Held) -> dict[str, Any]:
    return {
        "try_id": try_id,
        "kind": h.kind,
        "name": h.name[:200],
        "began_at": h.began,
        "ended_at": h.ended,
        "cpu": float(h.cpu),
        "memory": float(h.memory),
        "gpus": {k: float(v) for k, v in h.gpus.items()},
        "ephemeral": float(h.ephemeral),
        "claims": [[float(size), kind] for size, kind in h.claims],
        "node_selector": dict(h.node_selector),
        "cpu_seconds": None if h.cpu_seconds is None else float(h.cpu_seconds),
        "peak_memory": None if h.peak_memory is None else float(h.peak_memory),
    }


def held_of(row: DatedUsage) -> Held:
    """A usage row as what it held (amounts back as decimals)."""
    return Held(
        row.kind,
        row.name,
        row.began_at,
        row.ended_at,
        cpu=_decimal(row.cpu),
        memory=_decimal(row.memory),
        gpus={k: _decimal(v) for k, v in (row.gpus or {}).items()},
        ephemeral=_decimal(row.ephemeral),
        claims=tuple((_decimal(size), str(kind)) for size, kind in row.claims or ()),
        node_selector=dict(row.node_selector or {}),
        cpu_seconds=None if row.cpu_seconds is None else _decimal(row.cpu_seconds),
        peak_memory=None if row.peak_memory is None else _decimal(row.peak_memory),
    )


def _decimal(value: float) -> Decimal:
    # Through its shortest text: 0.25 stays 0.25, not its binary expansion.
    return Decimal(repr(float(value)))


def of_pipeline(
    conn: Connection,
    pipeline: str,
    first: datetime | None = None,
    last: datetime | None = None,
) -> list[DatedUsage]:
    """The usage rows of a pipeline's tries whose runs' logical dates are from ``first``
    to ``last`` (None: open), every attempt and try counted, oldest date first."""
    stmt = (
        select(
            *try_usage.c,
            runs.c.id.label("run"),
            runs.c.logical_date,
            tries.c.run_attempt,
            run_attempts.c.backfill_id,  # the attempt's: a later backfill may own the run
            task_instances.c.task_id,
            tries.c.try_number,
        )
        .join(tries, tries.c.id == try_usage.c.try_id)
        .join(task_instances, task_instances.c.id == tries.c.ti)
        .join(runs, runs.c.id == tries.c.run)
        .join(
            run_attempts,
            and_(run_attempts.c.run == runs.c.id, run_attempts.c.attempt == tries.c.run_attempt),
        )
        .where(runs.c.pipeline == pipeline)
        .order_by(runs.c.logical_date, runs.c.id, tries.c.id, try_usage.c.id)
    )
    if first is not None:
        stmt = stmt.where(runs.c.logical_date >= first)
    if last is not None:
        stmt = stmt.where(runs.c.logical_date <= last)
    return DatedUsage.from_result(conn.execute(stmt))
