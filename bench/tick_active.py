"""Scheduler tick cost against active work: N running runs x 20 tasks, nothing changing.

Each run's gate task is running (its process is someone else's, so nothing ends) and its
19 other tasks wait for it: the tick has nothing to do. It must cost the same with 10 or
1,000 such runs (target: median <= 20 ms with 1,000 runs, 20,000 active task instances).
Also prints the longest write transaction of those ticks (the write lock on SQLite).

Run: `make bench`, or `python bench/tick_active.py --db postgresql+psycopg://...` for a
PostgreSQL server (a scratch database is created there and dropped afterwards).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _bench import scratch_database, timed_writes
from sqlalchemy import insert

from reflow.core.config import Settings
from reflow.core.states import RunOrigin
from reflow.launchers.local import LocalLauncher
from reflow.scheduler import Scheduler
from reflow.services.project import Project
from reflow.store.db import Database
from reflow.store.models import runs, task_instances

TASKS = 20
PIPELINE = """
from reflow import Pipeline, Shell

with Pipeline("wide", schedule="@daily", start_date="2000-01-01", max_active_runs=100000,
              max_active_tasks=100000):
    gate = Shell("gate", "sleep 600")
    for i in range(1, {tasks}):
        gate >> Shell(f"t{{i:02d}}", "true")
"""


def fill_running(db: Database, version: str, n_runs: int) -> None:
    """Insert running runs whose gate is running and whose other tasks are pending."""
    start = datetime(2000, 1, 1, tzinfo=UTC)
    now = datetime.now(UTC)
    batch = 500
    for first in range(0, n_runs, batch):
        rows: list[dict[str, Any]] = []
        for i in range(first, min(n_runs, first + batch)):
            day = start + timedelta(days=i)
            rows.append(
                {
                    "pipeline": "wide",
                    "run_id": f"{RunOrigin.BACKFILL.value}__{i}",
                    "logical_date": day,
                    "data_interval_start": day,
                    "data_interval_end": day + timedelta(days=1),
                    "origin": "backfill",
                    "state": "running",
                    "conf": {},
                    "attempt": 1,
                    "version": version,
                    "created_at": now,
                    "queued_at": now,
                    "started_at": now,
                }
            )

        def work(conn, rows=rows):  # type: ignore[no-untyped-def]
            ids = [r[0] for r in conn.execute(insert(runs).returning(runs.c.id), rows)]
            conn.execute(
                insert(task_instances),
                [
                    {
                        "run": run_pk,
                        "task_id": "gate" if t == 0 else f"t{t:02d}",
                        "state": "running" if t == 0 else "pending",
                        "try_number": 1 if t == 0 else 0,
                        "lost_tries": 0,
                        "updated_at": now,
                    }
                    for run_pk in ids
                    for t in range(TASKS)
                ],
            )

        db.write(work)


def measure(url: str | None, n_runs: int, ticks: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(prefix="reflow-bench-") as tmp:
        home = Path(tmp)
        (home / "pipelines").mkdir()
        (home / "pipelines" / "wide.py").write_text(textwrap.dedent(PIPELINE.format(tasks=TASKS)))
        settings = Settings(home=home, database_url=url) if url else Settings(home=home)
        db = Database(settings.database)
        db.migrate()
        project = Project(settings, db)
        pipeline = project.pipeline("wide")
        fill_running(db, pipeline.version, n_runs)
        scheduler = Scheduler(
            db,
            settings,
            LocalLauncher(settings.runtime_path),
            catalog=project.catalog,
            create_scheduled_runs=False,
        )
        scheduler.start()
        for _ in range(3):  # the start-up rescan
            scheduler.tick()
        costs = []
        with timed_writes(db) as holds:
            for _ in range(ticks):
                started = time.perf_counter()
                scheduler.tick()
                costs.append((time.perf_counter() - started) * 1000)
        scheduler.stop()
        db.dispose()
        return statistics.median(costs), max(costs), max(holds, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="a PostgreSQL URL (default: SQLite in a temp folder)")
    parser.add_argument("--runs", type=int, nargs="*", default=[10, 100, 1000])
    parser.add_argument("--ticks", type=int, default=100)
    args = parser.parse_args()
    print(f"idle tick against active work ({'PostgreSQL' if args.db else 'SQLite'}):")
    for n in args.runs:
        with scratch_database(args.db) as url:
            median, worst, hold = measure(url, n, args.ticks)
        print(
            f"  {n:>5} running runs, {n * TASKS:>6,} active TIs: median {median:6.2f} ms, "
            f"max {worst:6.2f} ms, longest write {hold:5.2f} ms"
        )
    print("target: median <= 20 ms with 1,000 runs, and about flat")


if __name__ == "__main__":
    main()
