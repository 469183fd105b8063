"""`reflow cost` as users run it: a table by date with its total, JSON for scripts, the
note when no price is set, and bad input answered in one line."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

from .test_cli import reflow

PIPELINE = """
from reflow import Pipeline, Shell
with Pipeline("burn", schedule="@daily", start_date="2024-01-01"):
    Shell("cpu", "{python} -c 'sum(range(3000000))'") >> Shell("idle", "true")
"""


def _project(tmp_path: Path, prices: str) -> Path:
    home = tmp_path / "project"
    (home / "pipelines").mkdir(parents=True)
    (home / "pipelines" / "burn.py").write_text(
        textwrap.dedent(PIPELINE).format(python=sys.executable)
    )
    (home / "reflow.toml").write_text(prices)
    return home


def test_cost_by_date_with_its_total_and_as_json(tmp_path: Path) -> None:
    home = _project(tmp_path, '[reflow.cost]\ncurrency = "EUR"\ncpu_hour = 36\n')
    done = reflow(
        home, "backfill", "burn", "--start", "2024-01-01", "--end", "2024-01-02", "--wait"
    )
    assert done.returncode == 0, done.stderr

    shown = reflow(home, "cost", "burn")
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr == ""  # prices are set: no note
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["date", "tries", "CPU", "h", "memory", "GiB·h", "cost", "(EUR)"]
    dates = [line.split()[0] for line in lines[1:] if line.strip()]
    assert dates == ["2024-01-01", "2024-01-02", "total"]

    data = json.loads(reflow(home, "cost", "burn", "--by", "task", "--json").stdout)
    assert (data["pipeline"], data["by"], data["currency"], data["note"]) == (
        "burn",
        "task",
        "EUR",
        None,
    )
    assert [line["key"] for line in data["lines"]] == ["cpu", "idle"]
    assert [line["tries"] for line in data["lines"]] == [2, 2]
    cpu = data["lines"][0]
    # 36 EUR per CPU-hour: a cent per CPU-second; the task burnt some.
    assert float(cpu["cost"]) > 0 and cpu["by_resource"]["cpu"] == cpu["cost"]
    assert data["total"]["tries"] == 4


def test_without_prices_it_says_so_and_bad_input_is_one_line(tmp_path: Path) -> None:
    home = _project(tmp_path, "[reflow]\n")
    done = reflow(home, "trigger", "burn", "--date", "2024-01-01", "--wait")
    assert done.returncode == 0, done.stderr
    shown = reflow(home, "cost", "burn")
    assert shown.returncode == 0
    assert "no prices configured" in shown.stderr and "total" in shown.stdout

    for args, message in [
        (("nope",), "error: unknown pipeline 'nope'"),
        (("burn", "--by", "week"), "error: cannot group costs by 'week'"),
        (("burn", "--start", "2024-02-01", "--end", "2024-01-01"), "error: --end 2024-01-01"),
        (("burn", "--start", "yesterday-ish"), "error:"),
    ]:
        bad = reflow(home, "cost", *args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert bad.stderr.startswith(message) and bad.stderr.count("\n") == 1, bad.stderr

    (home / "reflow.toml").write_text("[reflow.cost]\ncpu_hour = -1\n")
    bad = reflow(home, "cost", "burn")
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith(
        "cost.cpu_hour: Input should be greater than or equal to 0"
    ), bad.stderr
