"""The benchmark scripts of `make bench` still run (at a tiny size; no figure is judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("backfill_noop.py", ["--days", "2", "--repeat", "1"]),
        ("tick_history.py", ["--history-tis", "200"]),
        ("web_grid.py", ["--days", "5", "--tasks", "3", "--requests", "3"]),
        ("web_overview.py", ["--pipelines", "5", "--runs", "3", "--requests", "2"]),
        ("k8s_pods.py", ["--days", "2", "--repeat", "1"]),
        ("tick_active.py", ["--runs", "3", "--ticks", "5"]),
        ("throughput.py", ["--days", "3"]),
        ("user_path.py", ["--repeat", "1"]),
        ("many_pipelines.py", ["--pipelines", "3", "--idle", "1"]),
    ],
)
def test_a_benchmark_runs_and_prints_its_figures(script: str, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=BENCH.parent,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert " ms" in result.stdout, result.stdout
