"""Scheduler tick cost against history: empty database vs 1,000,000 finished task instances.

The tick only queries what can change (queued/running runs, live tries), through indexes,
so its cost must not grow with history. Each measurement: 10 active runs x 20 pending
tasks waiting on a gate, then the median of 200 idle ticks. Run: `make bench`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from reflow.core.config import Settings
from reflow.core.states import RunOrigin
from reflow.launchers.local import LocalLauncher
from reflow.scheduler import Scheduler
from reflow.services import runs as run_service
from reflow.services.project import Project
from reflow.store.db import Database
from reflow.store.models import runs, task_instances

TASKS = 20
PIPELINE = """
from reflow import Pipeline, Shell

with Pipeline("wide", schedule="@daily", start_date="2000-01-01", max_active_runs=10,
              max_active_tasks=1):
    gate = Shell("gate", "sleep 600")
    for i in range(1, {tasks}):
        gate >> Shell(f"t{{i:02d}}", "true")
"""


def fill_history(db: Database, version: str, n_runs: int) -> None:
    """Insert finished runs with TASKS finished task instances each, in bulk."""
    start = datetime(2000, 1, 1, tzinfo=UTC)
    now = datetime.now(UTC)
    batch = 2000
    for first in range(0, n_runs, batch):
        rows = []
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
                    "state": "success",
                    "conf": {},
                    "attempt": 1,
                    "version": version,
                    "created_at": now,
                    "queued_at": now,
                    "started_at": now,
                    "ended_at": now,
                }
            )

        def work(conn, rows=rows):  # type: ignore[no-untyped-def]
            ids = [r[0] for r in conn.execute(insert(runs).returning(runs.c.id), rows)]
            conn.execute(
                insert(task_instances),
                [
                    {
                        "run": run_pk,
                        "task_id": f"t{t:02d}",
                        "state": "success",
                        "try_number": 1,
                        "lost_tries": 0,
                        "updated_at": now,
                    }
                    for run_pk in ids
                    for t in range(TASKS)
                ],
            )

        db.write(work)


def measure(history_runs: int) -> float:
    with tempfile.TemporaryDirectory(prefix="reflow-bench-") as tmp:
        home = Path(tmp)
        (home / "pipelines").mkdir()
        (home / "pipelines" / "wide.py").write_text(textwrap.dedent(PIPELINE.format(tasks=TASKS)))
        settings = Settings(home=home)
        db = Database(settings.database)
        db.migrate()
        project = Project(settings, db)
        pipeline = project.pipeline("wide")
        if history_runs:
            fill_history(db, pipeline.version, history_runs)
        dates = [(datetime(2024, 1, 1) + timedelta(days=i)).date().isoformat() for i in range(10)]
        run_service.trigger(project, "wide", dates)
        launcher = LocalLauncher(settings.runtime_path)
        scheduler = Scheduler(
            db, settings, launcher, catalog=project.catalog, create_scheduled_runs=False
        )
        scheduler.start()
        for _ in range(20):  # admit the runs and start the gates
            scheduler.tick()
        costs = []
        for _ in range(200):
            started = time.perf_counter()
            scheduler.tick()
            costs.append((time.perf_counter() - started) * 1000)
        while launcher.watched():  # stop the gates (each one admitted in turn)
            for try_id in launcher.watched():
                launcher.cancel(try_id, 0)
            scheduler.tick()
            launcher.wait(0.05)
        scheduler.stop()
        db.dispose()
        return statistics.median(costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history-tis", type=int, default=1_000_000)
    args = parser.parse_args()
    empty = measure(0)
    print(f"tick with an empty history: median {empty:.2f} ms")
    started = time.perf_counter()
    full = measure(args.history_tis // TASKS)
    print(
        f"tick with {args.history_tis:,} historical task instances: median {full:.2f} ms "
        f"(set-up {time.perf_counter() - started:.0f} s)"
    )
    print(f"ratio: {full / empty:.2f} (target: about 1)")


if __name__ == "__main__":
    main()
