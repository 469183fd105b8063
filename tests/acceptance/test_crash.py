"""Kill -9 trials: the scheduler dies at random moments and a new one finishes the work."""

from __future__ import annotations

import itertools
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from .test_cli import REFLOW, reflow

PIPELINE = """
from reflow import Pipeline, Shell

STEP = "echo start {{{{ run_id }}}}-{{{{ task }}}} $$ $(date +%s.%N) >> {out}; sleep {sleep}; \\
echo end {{{{ run_id }}}}-{{{{ task }}}} $$ $(date +%s.%N) >> {out}"

with Pipeline("crashy", schedule=None, max_active_runs=3,
              defaults={{"retries": 0}}):
    a = Shell("a", STEP)
    b = Shell("b", STEP)
    c = Shell("c", STEP)
    a >> b >> c
"""


def _scheduler(home: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REFLOW_HOME": str(home),
        "REFLOW_SCHEDULER_TIMEOUT": "3",
        "REFLOW_HEARTBEAT_INTERVAL": "0.5",
    }
    return subprocess.Popen(
        [*REFLOW, "scheduler"],
        cwd=home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )


def _query(home: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(home / ".reflow" / "reflow.db", timeout=30) as conn:
        return conn.execute(sql).fetchall()


def _registered(home: Path, pid: int) -> bool:
    """Has the scheduler with this pid started (and installed its signal handlers)?"""
    return bool(_query(home, f"SELECT id FROM schedulers WHERE pid = {pid}"))


def _wait(check, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not reached within {timeout}s")


@pytest.mark.slow
def test_scheduler_killed_at_random_moments_finishes_everything_once(tmp_path: Path) -> None:
    home = tmp_path / "proj"
    (home / "pipelines").mkdir(parents=True)
    (home / "reflow.toml").write_text("[reflow]\n")
    out = tmp_path / "steps.txt"
    (home / "pipelines" / "crashy.py").write_text(PIPELINE.format(out=out, sleep=0.7))
    dates = [f"2024-01-{d:02d}" for d in range(1, 7)]
    args = [x for d in dates for x in ("--date", d)]
    assert reflow(home, "trigger", "crashy", *args).returncode == 0

    rng = random.Random(7)
    for _ in range(4):
        proc = _scheduler(home)
        time.sleep(rng.uniform(0.8, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    final = _scheduler(home)
    _wait(lambda: _registered(home, final.pid), timeout=30)
    try:
        _wait(
            lambda: (
                _query(home, "SELECT count(*) FROM runs WHERE state IN ('queued','running')")[0][0]
                == 0
            ),
            timeout=90,
        )
    finally:
        final.send_signal(signal.SIGTERM)
        assert final.wait(timeout=20) == 0  # clean shutdown on SIGTERM

    states = _query(home, "SELECT state, count(*) FROM runs GROUP BY state")
    assert states == [("success", 6)]
    # No task instance ever had two tries alive at once, according to the tasks themselves...
    spans: dict[str, list[tuple[float, float]]] = {}
    starts: dict[tuple[str, str], float] = {}
    for line in out.read_text().splitlines():
        kind, key, pid, at = line.split()
        if kind == "start":
            starts[(key, pid)] = float(at)
        else:
            spans.setdefault(key, []).append((starts.pop((key, pid)), float(at)))
    assert len(spans) == 18
    for key, intervals in spans.items():
        intervals.sort()
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert start >= end, f"{key} ran twice at once"
    # ...and every try that really started was adopted and finished, never run again.
    started = _query(home, "SELECT state, failure_reason FROM tries WHERE pid IS NOT NULL")
    assert {s for s, _ in started} == {"success"}
    lost = _query(home, "SELECT count(*) FROM tries WHERE failure_reason = 'lost'")[0][0]
    total = _query(home, "SELECT count(*) FROM tries")[0][0]
    assert total == 18 + lost


@pytest.mark.slow
def test_scheduler_stops_cleanly_on_sigterm_and_the_next_one_adopts(tmp_path: Path) -> None:
    home = tmp_path / "proj"
    (home / "pipelines").mkdir(parents=True)
    (home / "reflow.toml").write_text("[reflow]\n")
    out = tmp_path / "steps.txt"
    (home / "pipelines" / "crashy.py").write_text(PIPELINE.format(out=out, sleep=2))
    assert reflow(home, "trigger", "crashy", "--date", "2024-01-01").returncode == 0
    proc = _scheduler(home)
    _wait(lambda: out.exists() and "start" in out.read_text(), timeout=30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert _query(home, "SELECT count(*) FROM schedulers WHERE stopped_at IS NULL")[0][0] == 0
    (alive,) = _query(home, "SELECT pid FROM tries WHERE state = 'running'")
    assert alive[0] is not None  # the try outlived the scheduler
    again = _scheduler(home)
    _wait(lambda: _registered(home, again.pid), timeout=30)
    try:
        _wait(lambda: _query(home, "SELECT state FROM runs")[0][0] == "success", timeout=60)
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=20)
    assert _query(home, "SELECT count(*) FROM tries")[0][0] == 3


@pytest.mark.slow
def test_concurrent_commands_never_see_a_locked_database(tmp_path: Path) -> None:
    """Triggers and backfills from several processes while the scheduler writes: every
    command succeeds, and every run it reports is there."""
    home = tmp_path / "proj"
    (home / "pipelines").mkdir(parents=True)
    (home / "reflow.toml").write_text("[reflow]\n")
    (home / "pipelines" / "busy.py").write_text(
        "from reflow import Pipeline, Shell\n"
        "with Pipeline('busy', schedule='@daily', start_date='2024-01-01',"
        " max_active_runs=8):\n"
        "    Shell('a', 'true') >> Shell('b', 'true')\n"
    )
    assert reflow(home, "pipelines", "list").returncode == 0
    scheduler = _scheduler(home)
    _wait(lambda: _registered(home, scheduler.pid), timeout=30)
    env = {**os.environ, "REFLOW_HOME": str(home)}
    commands = [[*REFLOW, "trigger", "busy", "--date", f"2024-02-{d:02d}"] for d in range(1, 9)]
    commands += [
        [*REFLOW, "backfill", "busy", "--start", f"2024-0{m}-01", "--end", f"2024-0{m}-10"]
        for m in (3, 4, 5, 6)
    ]
    try:
        procs = [
            subprocess.Popen(
                c, cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for c in commands
        ]
        results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
        assert [code for code, _ in results] == [0] * len(commands), results
        assert not any("locked" in err for _, err in results)
        _wait(
            lambda: (
                _query(home, "SELECT count(*) FROM runs WHERE state IN ('queued','running')")[0][0]
                == 0
            ),
            timeout=120,
        )
    finally:
        scheduler.send_signal(signal.SIGTERM)
        scheduler.wait(timeout=20)
    # (the scheduler also creates yesterday's scheduled run: not counted here)
    assert _query(
        home, "SELECT state, count(*) FROM runs WHERE origin != 'scheduled' GROUP BY state"
    ) == [("success", 8 + 40)]
