"""``reflow cost PIPELINE``: what its tries cost, by logical date, task, backfill, run or
calendar month, at the prices of ``[reflow.cost]``."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

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
        sys.stdout.write(json.dumps(_as_dict(report), indent=2) + "\n")
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


def _text(value: Decimal) -> str:
    """An amount for JSON: its digits, never an exponent ("0", not "0E-32")."""
    return "0" if value == 0 else format(value.normalize(), "f")


def _as_dict(report: CostReport) -> dict[str, Any]:
    def line(line: CostLine) -> dict[str, Any]:
        key = line.key.isoformat() if isinstance(line.key, datetime) else line.key
        c = line.cost
        return {
            report.by: key,
            "tries": line.tries,
            "cpu_hours": _text(line.cpu_hours),
            "memory_gib_hours": _text(line.memory_gib_hours),
            "cost": _text(c.total),
            "by_resource": {
                "cpu": _text(c.cpu),
                "memory": _text(c.memory),
                "gpu": _text(c.gpu),
                "ephemeral": _text(c.ephemeral),
                "storage": _text(c.storage),
            },
        }

    total = line(report.total)
    total.pop(report.by)
    return {
        "pipeline": report.pipeline,
        "by": report.by,
        "currency": report.currency,
        "note": report.note,
        "lines": [line(x) for x in report.lines],
        "total": total,
    }
