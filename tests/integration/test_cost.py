"""What a pipeline's tries cost, end to end with the local launcher: each try's measured
CPU-seconds and peak memory recorded with its outcome, priced at [reflow.cost], summed by
date, task, backfill, run and month; every try of every attempt counted."""

from __future__ import annotations

import sys
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from reflow.core.cost import CostSettings
from reflow.core.errors import InvalidInput, NotFound
from reflow.core.naming import utcnow
from reflow.services import cost as cost_service
from reflow.services import history

from .conftest import Env

PRICES = CostSettings.model_validate(
    {"currency": "EUR", "cpu_hour": "0.036", "memory_gib_hour": "0.004"}
)
BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end:\n    pass\n"


def priced(env: Env, tmp_path: Path) -> Env:
    burn = tmp_path / "burn.py"
    burn.write_text(BURN)
    env.write(
        "burn",
        f"""
        from reflow import Pipeline, Shell
        with Pipeline("burn", schedule="@daily", start_date="2024-01-01"):
            Shell("cpu", "{sys.executable} {burn}") >> Shell("idle", "true")
        """,
    )
    return replace(env, settings=env.settings.model_copy(update={"cost": PRICES}))


def close(a: Decimal, b: Decimal) -> bool:
    """Equal but for the rounding to 12 places of each try's figures (a few tries here)."""
    return abs(a - b) <= Decimal("1e-11")


def test_each_date_costs_every_try_of_every_attempt(env: Env, tmp_path: Path) -> None:
    env = priced(env, tmp_path)
    runs = env.trigger("burn", ["2024-01-03", "2024-01-04"])
    env.drive(env.runs_done(runs), timeout=120)

    report = cost_service.cost(env.project, "burn")
    assert (report.currency, report.note, report.by) == ("EUR", None, "date")
    assert [line.tries for line in report.lines] == [2, 2]
    for line in report.lines:
        # Measured, not requested: 0.3 CPU-seconds burnt (and an interpreter's start-up).
        assert Decimal("0.3") / 3600 <= line.cpu_hours < Decimal(5) / 3600
        assert line.memory_gib_hours > 0
        # Priced at the table's rates.
        assert close(line.cost.cpu, line.cpu_hours * Decimal("0.036"))
        assert close(line.cost.memory, line.memory_gib_hours * Decimal("0.004"))
        assert line.cost.total > 0
    assert report.total.cost.total == sum(line.cost.total for line in report.lines)
    first = report.lines[0]

    # Reprocessing a date adds its new tries; the old ones still count.
    history.clear(env.project, "burn", run=str(runs[0]))
    env.drive(env.runs_done(runs), timeout=120)
    again = cost_service.cost(env.project, "burn", start="2024-01-03", end="2024-01-03")
    [line] = again.lines
    assert line.tries == 4
    assert line.cost.total > first.cost.total

    by_task = cost_service.cost(env.project, "burn", by="task")
    assert [line.key for line in by_task.lines] == ["cpu", "idle"]
    assert [line.tries for line in by_task.lines] == [3, 3]
    assert by_task.lines[0].cpu_hours > by_task.lines[1].cpu_hours
    assert by_task.total.cost == cost_service.cost(env.project, "burn").total.cost
    by_month = cost_service.cost(env.project, "burn", by="month")
    assert [line.key for line in by_month.lines] == [utcnow().strftime("%Y-%m")]
    by_backfill = cost_service.cost(env.project, "burn", by="backfill")
    assert [line.key for line in by_backfill.lines] == [None]  # manual runs


def test_without_prices_costs_are_zero_and_say_so(env: Env, tmp_path: Path) -> None:
    env = priced(env, tmp_path)
    env = replace(env, settings=env.settings.model_copy(update={"cost": CostSettings()}))
    runs = env.trigger("burn", ["2024-01-03"])
    env.drive(env.runs_done(runs), timeout=120)
    report = cost_service.cost(env.project, "burn")
    assert report.note is not None and "no prices configured" in report.note
    [line] = report.lines
    assert line.cost.total == 0 and line.cpu_hours > 0  # the usage is there all the same


def test_bad_questions_are_one_line(env: Env, tmp_path: Path) -> None:
    env = priced(env, tmp_path)
    with pytest.raises(NotFound, match="unknown pipeline 'nope'"):
        cost_service.cost(env.project, "nope")
    with pytest.raises(InvalidInput, match="cannot group costs by 'week'"):
        cost_service.cost(env.project, "burn", by="week")
    with pytest.raises(InvalidInput, match="is before"):
        cost_service.cost(env.project, "burn", start="2024-02-01", end="2024-01-01")
