"""Print the daily metrics of the events pipeline for a date range, read back from Parquet.

python examples/events/summary.py data/warehouse --start 2024-01-01 --end 2024-01-07
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

METRICS = ("events", "users", "amount_sum", "amount_p50", "amount_p90", "amount_p99")


def summarize(output: Path, start: date | str, end: date | str) -> list[dict[str, Any]]:
    """The rows of ``output/daily_metrics`` dated ``start``..``end`` (both included), by
    date then event type; ``date`` is an ISO string."""
    table_path = Path(output) / "daily_metrics"
    if not table_path.is_dir():
        return []
    # The date read as text from the folder names: ISO dates compare like dates.
    partitioning = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
    dataset = ds.dataset(table_path, format="parquet", partitioning=partitioning)
    first, last = str(start), str(end)
    table = dataset.to_table(filter=(ds.field("date") >= first) & (ds.field("date") <= last))
    rows = table.select(["date", "event_type", *METRICS]).to_pylist()
    return sorted(rows, key=lambda r: (r["date"], r["event_type"]))


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the pipeline's output_path (warehouse)")
    parser.add_argument("--start", type=date.fromisoformat, required=True, help="YYYY-MM-DD")
    parser.add_argument("--end", type=date.fromisoformat, help="YYYY-MM-DD (default: start)")
    args = parser.parse_args(argv)
    end = args.end or args.start
    rows = summarize(args.output, args.start, end)
    table = Table(title=f"daily metrics {args.start} .. {end}")
    table.add_column("date", no_wrap=True)
    table.add_column("event type", no_wrap=True)
    for column in ("events", "users", "amount sum", "p50", "p90", "p99"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            r["date"],
            r["event_type"],
            f"{r['events']:,}",
            f"{r['users']:,}",
            *(f"{r[m]:,.2f}" for m in ("amount_sum", "amount_p50", "amount_p90", "amount_p99")),
        )
    console = Console(width=None if sys.stdout.isatty() else 120)  # no cut cells in logs
    if rows:
        console.print(table)
    else:
        console.print(f"no metrics between {args.start} and {end} under {args.output}")


if __name__ == "__main__":
    main()
