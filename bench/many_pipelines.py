"""1,000 pipelines loaded: the idle scheduler's memory and CPU, and a `@daily` midnight.

Idle: `reflow scheduler` runs as a user starts it, over 1,000 pipeline files (one daily
pipeline of 3 tasks each) whose first interval has not ended yet; after its start-up, its
resident memory and CPU use are sampled for ``--idle`` seconds. Targets: <= 100 MB RSS,
<= 2 % of a core.

Midnight: a scheduler over the same files, its clock moved to just after the first
interval ends, creates the 1,000 due runs; the time of that step. Target: <= 1 s.

Run: `python bench/many_pipelines.py [--db postgresql+psycopg://...]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from _bench import scratch_database, wait_until_scheduling

from reflow.core.config import Settings
from reflow.launchers.local import LocalLauncher
from reflow.scheduler import Scheduler
from reflow.store import runs as store_runs
from reflow.store.db import Database

PIPELINE = """
from reflow import Pipeline, Shell

with Pipeline("p{i:04d}", schedule="@daily", start_date="{start}", catchup=False):
    Shell("extract", "true") >> Shell("transform", "true") >> Shell("load", "true")
"""


def make_project(home: Path, count: int, start: datetime) -> None:
    folder = home / "pipelines"
    folder.mkdir()
    for i in range(count):
        source = PIPELINE.format(i=i, start=start.date().isoformat())
        (folder / f"p{i:04d}.py").write_text(source)


def idle(home: Path, url: str | None, seconds: float) -> tuple[float, float, float]:
    """Start-up time, RSS (MB, largest sample) and CPU (% of a core) of an idle daemon."""
    env = {**os.environ, "REFLOW_HOME": str(home)}
    if url:
        env["REFLOW_DATABASE_URL"] = url
    reflow = [sys.executable, "-m", "reflow.cli"]
    subprocess.run([*reflow, "db", "upgrade"], env=env, check=True, capture_output=True)
    db = Database(Settings(home=home, database_url=url).database)
    started = time.perf_counter()
    daemon = subprocess.Popen(
        [*reflow, "scheduler"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until_scheduling(db, daemon, 300)
        startup = time.perf_counter() - started
        time.sleep(5)  # past its first ticks
        proc = psutil.Process(daemon.pid)
        before = proc.cpu_times()
        rss = 0.0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rss = max(rss, proc.memory_info().rss / 2**20)
            time.sleep(1)
        after = proc.cpu_times()
        cpu = ((after.user + after.system) - (before.user + before.system)) / seconds * 100
    finally:
        daemon.terminate()
        daemon.wait(60)
        db.dispose()
    return startup, rss, cpu


def midnight(home: Path, url: str | None, start: datetime, count: int) -> float:
    """Seconds the scheduler takes to create the due runs of every pipeline at once."""
    settings = Settings(home=home, database_url=url)
    db = Database(settings.database)
    now = [start + timedelta(hours=12)]
    scheduler = Scheduler(db, settings, LocalLauncher(settings.runtime_path), clock=lambda: now[0])
    scheduler.start()
    assert not scheduler.create_due_runs(now[0])  # nothing due yet
    now[0] = start + timedelta(days=1, seconds=1)
    began = time.perf_counter()
    scheduler.create_due_runs(now[0])
    took = time.perf_counter() - began
    with db.read() as conn:
        made = sum(n for (_, state), n in store_runs.count_active_runs(conn).items())
    assert made == count, made
    scheduler.stop()
    db.dispose()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="a PostgreSQL URL (default: SQLite in a temp folder)")
    parser.add_argument("--pipelines", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds sampled")
    args = parser.parse_args()
    where = "PostgreSQL" if args.db else "SQLite"
    # The first interval ends tomorrow: nothing is due while the daemon idles.
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with tempfile.TemporaryDirectory(prefix="reflow-bench-") as tmp:
        home = Path(tmp)
        make_project(home, args.pipelines, start)
        with scratch_database(args.db) as url:
            startup, rss, cpu = idle(home, url, args.idle)
        with scratch_database(args.db) as url:
            took = midnight(home, url, start, args.pipelines)
    print(f"{args.pipelines:,} pipelines on {where}:")
    print(
        f"  idle scheduler: {rss:.0f} MB RSS, {cpu:.1f} % of a core over {args.idle:.0f} s "
        f"(started in {startup:.1f} s)"
    )
    print(f"  a @daily midnight: {args.pipelines:,} runs created in {took * 1000:.0f} ms")
    print("targets: <= 100 MB RSS, <= 2 % of a core; <= 1 s for the midnight")


if __name__ == "__main__":
    main()
