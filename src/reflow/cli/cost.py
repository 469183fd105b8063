"""``reflow cost PIPELINE``: what its tries cost, by logical date, task, backfill, run or
calendar month, at the prices of ``[reflow.cost]``."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from reflow.cli.options import HomeOption, console, err_console, fmt_date, open_project

if TYPE_CHECKING:
    from reflow.services.cost import CostLine, CostReport

_HEADINGS = {"date": "date", "task": "task", "backfill": "backfill", "run": "run", "month": "month"}


def cost(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    start: Annotated[str | None, typer.Option("--start", help="First logical date.")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Last logical date.")] = None,
    by: Annotated[
        str, typer.Option("--by", help="Group by date, task, backfill, run or month.")
    ] = "date",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (amounts as text).")] = False,
    home: HomeOption = None,
) -> None:
    """What a pipeline's tries cost: every try of every attempt, at [reflow.cost] prices."""
    from reflow.services import cost as service

    report = service.cost(open_project(home), pipeline, start, end, by)
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
        return
    if report.note:
        err_console.print(f"[yellow]{escape(report.note)}[/]")
    if not report.lines:
        console.print(f"No recorded usage of {escape(pipeline)} in these dates.")
        return
    table = Table(
        _HEADINGS[report.by],
        "tries",
        "CPU h",
        "memory GiB·h",
        f"cost ({report.currency})",
        box=None,
    )
    for line in [*report.lines, report.total]:
        bold = line is report.total
        table.add_row(
            f"[bold]{_key(line, report)}[/]" if bold else escape(_key(line, report)),
            str(line.tries),
            _figure(line.cpu_hours),
            _figure(line.memory_gib_hours),
            _money(line.cost.total),
            end_section=line is report.lines[-1],
        )
    console.print(table)


def _key(line: CostLine, report: CostReport) -> str:
    if line is report.total:
        return "total"
    if isinstance(line.key, datetime):
        return fmt_date(line.key)
    if line.key is None:
        return "(none)" if report.by == "backfill" else "-"
    return str(line.key)


def _figure(value: Decimal) -> str:
    return f"{value:,.3f}" if value >= Decimal("0.001") or value == 0 else f"{value:.2e}"


def _money(value: Decimal) -> str:
    if value == 0 or abs(value) >= Decimal("0.01"):
        return f"{value.quantize(Decimal('0.01')):,}"
    return f"{value:.4g}"
