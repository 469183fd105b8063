"""The user's path: with `reflow scheduler` running, `reflow backfill` of 30 dates x 3
chained `true` tasks (max_active_runs 4), from the command's start to the last success.

Everything as a user runs it: the daemon and the command are separate processes of the
installed CLI. Also prints the daemon's CPU time per task instance (its own work, not the
tasks' processes). Targets: <= 0.5 s end to end; <= 5 ms of scheduler CPU per task
instance. Run: `python bench/user_path.py [--db postgresql+psycopg://...]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
from _bench import scratch_database, wait_until_scheduling

from reflow.core.config import Settings
from reflow.store import runs as store_runs
from reflow.store.db import Database

PIPELINE = """
from reflow import Pipeline, Shell

with Pipeline("noop", schedule="@daily", start_date="2024-01-01", max_active_runs=4):
    Shell("a", "true") >> Shell("b", "true") >> Shell("c", "true")
"""
REFLOW = [sys.executable, "-m", "reflow.cli"]


def once(url: str | None) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="reflow-bench-") as tmp:
        home = Path(tmp)
        (home / "pipelines").mkdir()
        (home / "pipelines" / "noop.py").write_text(textwrap.dedent(PIPELINE))
        env = {**os.environ, "REFLOW_HOME": str(home)}
        if url:
            env["REFLOW_DATABASE_URL"] = url
        settings = Settings(home=home, database_url=url)
        subprocess.run([*REFLOW, "db", "upgrade"], env=env, check=True, capture_output=True)
        daemon = subprocess.Popen(
            [*REFLOW, "scheduler"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        db = Database(settings.database)
        try:
            wait_until_scheduling(db, daemon, 60)
            time.sleep(1.0)  # past its start-up work
            cpu = psutil.Process(daemon.pid).cpu_times()
            started = datetime.now(UTC)
            subprocess.run(
                [*REFLOW, "backfill", "noop", "--start", "2024-01-01", "--end", "2024-01-30"],
                env=env,
                check=True,
                capture_output=True,
            )
            deadline = time.monotonic() + 120
            while True:
                with db.read() as conn:
                    # The backfill's runs (the daemon also makes the latest scheduled one).
                    runs = [
                        r
                        for r in store_runs.list_runs(conn, pipeline="noop", limit=100)
                        if r.origin == "backfill"
                    ]
                    if len(runs) == 30 and all(r.state == "success" for r in runs):
                        ended = max(r.ended_at for r in runs)
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("the backfill did not finish")
                time.sleep(0.05)
            after = psutil.Process(daemon.pid).cpu_times()
            # The daemon's own CPU: its children (the tasks) are not counted in these.
            used = (after.user + after.system) - (cpu.user + cpu.system)
        finally:
            daemon.terminate()
            daemon.wait(30)
            db.dispose()
        return (ended - started).total_seconds(), used / 90 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="a PostgreSQL URL (default: SQLite in a temp folder)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    walls, cpus = [], []
    for _ in range(args.repeat):
        with scratch_database(args.db) as url:
            wall, cpu = once(url)
        walls.append(wall)
        cpus.append(cpu)
    where = "PostgreSQL" if args.db else "SQLite"
    print(f"user's path on {where}: `reflow backfill` of 30 dates x 3 tasks, daemon running")
    print(
        f"  command start -> last success: median {statistics.median(walls):.2f} s, "
        f"best {min(walls):.2f} s, worst {max(walls):.2f} s ({args.repeat} rounds)"
    )
    print(f"  scheduler CPU per task instance: median {statistics.median(cpus):.2f} ms")
    print("targets: <= 0.5 s; <= 5 ms of scheduler CPU per task instance")


if __name__ == "__main__":
    main()
