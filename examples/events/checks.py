"""Data quality gate of the events pipeline: a Python task reading the day's Parquet output.

Checks, for partition ``date=ds``: the events table has at least ``min_rows`` rows, no
nulls in its columns and no duplicate event_id; the daily metrics exist, have no nulls
and count exactly the day's events; the quarantine holds at most 5 % of the day's lines.
Every failed check is listed in one error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

EVENT_COLUMNS = ("event_id", "event_time", "user_id", "event_type", "amount")
METRIC_COLUMNS = (
    "event_type",
    "events",
    "users",
    "amount_sum",
    "amount_p50",
    "amount_p90",
    "amount_p99",
)
MAX_NULL_RATE = 0.0  # every column is required: a null means a bug in ingest
MAX_QUARANTINE_SHARE = 0.05


class QualityCheckFailed(Exception):
    """The day's output failed one or more checks (all named in the message)."""


def read_partition(table: Path, ds: str) -> pa.Table | None:
    """The rows of partition ``date=ds`` of a Parquet table, or None if it has none."""
    folder = Path(table) / f"date={ds}"
    if not folder.is_dir():
        return None
    return pq.read_table(folder)  # files starting with '_' or '.' are skipped


def quality(ds: str, params: Mapping[str, Any]) -> None:
    """Raise QualityCheckFailed naming every check the day's output fails."""
    warehouse = Path(params["output_path"])
    min_rows = int(params["min_rows"])
    events = read_partition(warehouse / "events", ds)
    metrics = read_partition(warehouse / "daily_metrics", ds)
    quarantine = read_partition(warehouse / "quarantine", ds)
    rows = events.num_rows if events is not None else 0
    bad = quarantine.num_rows if quarantine is not None else 0
    failures: list[str] = []

    if rows < min_rows:
        failures.append(f"events: {rows} rows, expected at least {min_rows}")
    if events is not None and rows:
        failures += _null_rates("events", events, EVENT_COLUMNS)
        unique = len(pc.unique(events["event_id"]))
        if unique != rows:
            failures.append(f"events: {rows - unique} duplicate event_id")
    if metrics is None:
        if rows:
            failures.append("daily_metrics: no partition for the day")
    else:
        failures += _null_rates("daily_metrics", metrics, METRIC_COLUMNS)
        counted = pc.sum(metrics["events"]).as_py() or 0
        if counted != rows:
            failures.append(f"daily_metrics: count {counted} events, the events table has {rows}")
    if rows + bad and bad / (rows + bad) > MAX_QUARANTINE_SHARE:
        failures.append(
            f"quarantine: {bad} of {rows + bad} lines ({bad / (rows + bad):.1%}), "
            f"more than {MAX_QUARANTINE_SHARE:.0%}"
        )
    if failures:
        raise QualityCheckFailed(f"{ds}: {len(failures)} check(s) failed: " + "; ".join(failures))
    print(f"{ds}: quality ok: {rows} events, {bad} lines quarantined")


def _null_rates(name: str, table: pa.Table, columns: tuple[str, ...]) -> list[str]:
    out = []
    for column in columns:
        if column not in table.column_names:
            out.append(f"{name}: column {column} is missing")
            continue
        rate = table[column].null_count / table.num_rows if table.num_rows else 0.0
        if rate > MAX_NULL_RATE:
            out.append(f"{name}: {column} is null in {rate:.1%} of rows (max {MAX_NULL_RATE:.0%})")
    return out
