"""What a pipeline's tries cost: what each held (``store.usage``) at the prices of
``[reflow.cost]``, summed by logical date, task, backfill, run or calendar month. Every try
of every attempt counts: a date that ran three times costs all three."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from reflow.core.cost import GIB, HOUR, NO_PRICES, PLACES, Cost, CostSettings, Held, price
from reflow.core.errors import InvalidInput
from reflow.services import runs as run_service
from reflow.services.project import Project
from reflow.services.records import DatedUsage
from reflow.store import usage as store_usage

By = Literal["date", "task", "backfill", "run", "month"]
BY: tuple[By, ...] = ("date", "task", "backfill", "run", "month")


@dataclass(frozen=True)
class CostLine:
    """The cost of one group of tries: ``key`` is its logical date (a datetime), task id,
    backfill number (None: tries of no backfill), run number or month ("2024-01")."""

    key: datetime | str | int | None
    tries: int
    cpu_hours: Decimal  # vCPU-hours requested by pods, CPU-hours used by local processes
    memory_gib_hours: Decimal  # likewise: requested, or peak x duration
    cost: Cost


@dataclass(frozen=True)
class CostReport:
    pipeline: str
    by: By
    currency: str
    lines: list[CostLine]
    total: CostLine
    # Said with the figures: no prices are set (every cost is 0).
    note: str | None

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON for scripts and the API: amounts as decimal text (exact),
        dates in ISO 8601."""
        return {
            "pipeline": self.pipeline,
            "by": self.by,
            "currency": self.currency,
            "note": self.note,
            "lines": [_line_dict(line) for line in self.lines],
            "total": _line_dict(self.total) | {"key": None},
        }


def amount(value: Decimal) -> str:
    """An amount as text: its digits, never an exponent ("0", not "0E-32")."""
    return "0" if value == 0 else format(value.normalize(), "f")


def _line_dict(line: CostLine) -> dict[str, Any]:
    c = line.cost
    return {
        "key": line.key.isoformat() if isinstance(line.key, datetime) else line.key,
        "tries": line.tries,
        "cpu_hours": amount(line.cpu_hours),
        "memory_gib_hours": amount(line.memory_gib_hours),
        "cost": amount(c.total),
        "by_resource": {
            "cpu": amount(c.cpu),
            "memory": amount(c.memory),
            "gpu": amount(c.gpu),
            "ephemeral": amount(c.ephemeral),
            "storage": amount(c.storage),
        },
    }


def _month(row: DatedUsage) -> str:
    """The calendar month a cost falls in, as on a bill: when it began to be held."""
    when = row.began_at or row.ended_at or row.logical_date
    return when.strftime("%Y-%m")


_KEYS: dict[By, Callable[[DatedUsage], datetime | str | int | None]] = {
    "date": lambda row: row.logical_date,
    "task": lambda row: row.task_id,
    "backfill": lambda row: row.backfill_id,
    "run": lambda row: row.run,
    "month": _month,
}


def cost(
    project: Project,
    pipeline: str,
    start: str | None = None,
    end: str | None = None,
    by: str = "date",
    *,
    labels: tuple[str, str] = ("--start", "--end"),
) -> CostReport:
    """The cost of ``pipeline``'s tries whose logical dates are from ``start`` to ``end``
    (None: open), grouped ``by`` one of :data:`BY`."""
    if by not in BY:
        raise InvalidInput(f"cannot group costs by {by!r}: by one of {', '.join(BY)}")
    grouping: By = by
    run_service.known(project, pipeline)
    first, last = run_service.date_range(project, pipeline, start, end, labels=labels)
    with project.db.read() as conn:
        rows = store_usage.of_pipeline(conn, pipeline, first, last)
    prices = project.settings.cost
    key_of = _KEYS[grouping]
    # Each row priced once; its groups and the total add up the same figures.
    priced = [_priced(row, prices) for row in rows]
    groups: dict[datetime | str | int | None, list[_Priced]] = {}
    for item in priced:
        groups.setdefault(key_of(item.row), []).append(item)
    lines = [_line(key, found) for key, found in groups.items()]
    if grouping in ("task", "month"):
        lines.sort(key=lambda line: str(line.key))
    elif grouping == "backfill":
        lines.sort(key=lambda line: (line.key is not None, line.key or 0))
    return CostReport(
        pipeline,
        grouping,
        prices.currency,
        lines,
        _line("total", priced),
        None if prices.configured else NO_PRICES,
    )


@dataclass(frozen=True)
class _Priced:
    row: DatedUsage
    cost: Cost
    cpu_hours: Decimal
    memory_gib_hours: Decimal


def _priced(row: DatedUsage, prices: CostSettings) -> _Priced:
    held = store_usage.held_of(row)
    return _Priced(row, price(held.usage(), prices), _cpu_hours(held), _memory_gib_hours(held))


def _line(key: datetime | str | int | None, items: list[_Priced]) -> CostLine:
    return CostLine(
        key,
        len({item.row.try_id for item in items}),
        sum((item.cpu_hours for item in items), Decimal(0)),
        sum((item.memory_gib_hours for item in items), Decimal(0)),
        sum((item.cost for item in items), Cost()),
    )


def _cpu_hours(held: Held) -> Decimal:
    if held.cpu_seconds is not None:
        return (held.cpu_seconds / HOUR).quantize(PLACES)
    return (held.cpu * held.seconds / HOUR).quantize(PLACES)


def _memory_gib_hours(held: Held) -> Decimal:
    amount = held.peak_memory if held.peak_memory is not None else held.memory
    return (amount / GIB * held.seconds / HOUR).quantize(PLACES)
