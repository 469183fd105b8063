"""Orchestration overhead: 30 daily runs x 3 chained no-op Shell tasks, max_active_runs=4.

Default local launcher and SQLite. Prints the wall time from queueing the runs to the last
run's end, the per-TI overhead, and the p50/p99 latency from an upstream try's end to its
downstream try's start (both as recorded by the scheduler). Run: `make bench`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import textwrap
import threading
import time
from datetime import date, timedelta
from pathlib import Path

from reflow.core.config import Settings
from reflow.launchers.base import Launcher
from reflow.launchers.local import LocalLauncher
from reflow.scheduler import Scheduler
from reflow.services import runs as run_service
from reflow.services.project import Project
from reflow.store import runs as store_runs
from reflow.store import tries as store_tries
from reflow.store.db import Database

PIPELINE = """
from reflow import Pipeline, Shell

with Pipeline("noop", schedule="@daily", start_date="2024-01-01", max_active_runs=4):
    Shell("a", "true") >> Shell("b", "true") >> Shell("c", "true")
"""


def write_pipeline(home: Path) -> None:
    (home / "pipelines").mkdir()
    (home / "pipelines" / "noop.py").write_text(textwrap.dedent(PIPELINE))


def measure(
    project: Project, launcher: Launcher, days: int, start: str = "started_at"
) -> tuple[float, list[float]]:
    """Queue ``days`` runs of the noop pipeline and run the scheduler until they are done.
    Returns the wall time (s) and every upstream end -> downstream start gap (ms); the
    start is the try's ``start`` column (``queued_at``: when it was launched)."""
    db, settings = project.db, project.settings
    dates = [(date(2024, 1, 1) + timedelta(days=i)).isoformat() for i in range(days)]
    started = time.perf_counter()
    run_pks = [r.id for r in run_service.trigger(project, "noop", dates)]
    scheduler = Scheduler(
        db, settings, launcher, catalog=project.catalog, create_scheduled_runs=False
    )

    def finished() -> bool:
        return run_service.progress(project, run_pks).done == len(run_pks)

    scheduler.run(threading.Event(), until=finished)
    wall = time.perf_counter() - started

    with db.read() as conn:
        states = {r.state for r in store_runs.runs_by_pk(conn, run_pks)}
        assert states == {"success"}, states
        latencies = []
        for run_pk in run_pks:
            tries = {t.task_id: t for t in store_tries.tries_of(conn, run_pk=run_pk)}
            for up, down in (("a", "b"), ("b", "c")):
                gap = getattr(tries[down], start) - tries[up].ended_at
                latencies.append(gap.total_seconds() * 1000)
    return wall, latencies


def run_once(days: int, database_url: str | None) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory(prefix="reflow-bench-") as tmp:
        home = Path(tmp)
        write_pipeline(home)
        settings = Settings(home=home, database_url=database_url)
        db = Database(settings.database)
        db.migrate()
        try:
            project = Project(settings, db)
            return measure(project, LocalLauncher(settings.runtime_path), days)
        finally:
            db.dispose()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = parser.parse_args()
    tis = args.days * 3
    walls, lats = [], []
    for i in range(args.repeat):
        wall, latencies = run_once(args.days, args.database_url)
        walls.append(wall)
        lats += latencies
        print(f"round {i + 1}: {wall:.2f} s for {tis} task instances")
    best, median = min(walls), statistics.median(walls)
    print(
        f"scenario: {args.days} daily runs x 3 chained `true` tasks, max_active_runs=4, "
        f"local launcher, {'SQLite' if not args.database_url else args.database_url}"
    )
    print(f"wall time: median {median:.2f} s, best {best:.2f} s (target <= 2 s)")
    print(f"per-TI overhead: {median / tis * 1000:.1f} ms (Airflow 3.3 reference: 470 ms)")
    print(f"speed-up vs Airflow 3.3 (43 s): {43 / median:.0f}x (target >= 20x)")
    print(
        f"upstream end -> downstream start: p50 {percentile(lats, 0.5):.1f} ms, "
        f"p99 {percentile(lats, 0.99):.1f} ms (target p50 < 50 ms)"
    )


if __name__ == "__main__":
    main()
