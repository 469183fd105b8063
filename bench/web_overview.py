"""The pipelines overview with many pipelines: 1,000 daily pipelines (one file declares
them all) with 30 finished runs each and some queued and running ones, in SQLite; then
the latency of what the overview page and `GET /api/v1/pipelines` compute
(``web.views.pipelines``: every pipeline's schedule, next date, latest runs and counts),
called in-process, so that the figure is the store's and the service's, not HTTP's.

Prints p50/p95; the target is p50 < 150 ms for 1,000 pipelines.
Run: `.venv/bin/python bench/web_overview.py [--pipelines 1000] [--runs 30] [--requests 20]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reflow.core.config import Settings
from reflow.core.naming import run_id_for
from reflow.core.states import RunOrigin, RunState
from reflow.services.project import Project
from reflow.store import runs as store_runs
from reflow.store import transitions
from reflow.store.db import Database
from reflow.web import views

TARGET_MS = 150.0


def pipelines_source(count: int) -> str:
    return (
        "from reflow import Pipeline, Shell\n"
        f"for i in range({count}):\n"
        '    with Pipeline(f"p{i:04d}", schedule="@daily", start_date="2024-01-01"):\n'
        '        Shell("a", "true") >> Shell("b", "true")\n'
    )


def seed(project: Project, runs_each: int) -> int:
    """``runs_each`` finished runs per pipeline (every 13th failed), and every 10th
    pipeline one running and one queued run. Returns how many runs were written."""
    first = datetime(2024, 1, 1, tzinfo=UTC)
    now = datetime.now(UTC)
    pipelines = [project.catalog.pipelines[name] for name in sorted(project.catalog.pipelines)]

    def work(conn: Any) -> int:
        written = 0
        for n, pipeline in enumerate(pipelines):
            extra = 2 if n % 10 == 0 else 0
            for day in range(runs_each + extra):
                logical = first + timedelta(days=day)
                run_pk = store_runs.create_run(
                    conn,
                    pipeline=pipeline.name,
                    run_id=run_id_for(RunOrigin.SCHEDULED, logical),
                    logical_date=logical,
                    interval=pipeline.schedule.interval(logical),
                    origin=RunOrigin.SCHEDULED,
                    conf={},
                    version=pipeline.version,
                    task_ids=pipeline.topological(),
                    now=now,
                )
                written += 1
                if day == runs_each + 1:
                    continue  # queued
                state = RunState.FAILED if day % 13 == 12 else RunState.SUCCESS
                if day == runs_each:
                    state = RunState.RUNNING
                transitions.transition(conn, "run", [run_pk], state, [RunState.QUEUED], now)
        return written

    return int(project.db.write(work))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reflow-bench-") as tmp:
        home = Path(tmp)
        (home / "pipelines").mkdir()
        (home / "pipelines" / "many.py").write_text(pipelines_source(args.pipelines))
        settings = Settings(home=home)
        db = Database(settings.database)
        db.migrate()
        project = Project(settings, db)
        started = time.perf_counter()
        loaded = len(project.catalog.pipelines)  # parsed, and recorded in the store
        print(f"{loaded} pipelines loaded and recorded in {time.perf_counter() - started:.2f} s")
        written = seed(project, args.runs)
        print(f"{written} runs written")
        times = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            out = views.pipelines(project)
            times.append((time.perf_counter() - t0) * 1000)
        assert len(out.pipelines) == loaded, (len(out.pipelines), loaded)
        p50 = statistics.median(times)
        p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
        print(
            f"pipelines overview ({loaded} pipelines, {written} runs, SQLite, in-process): "
            f"p50 {p50:.1f} ms, p95 {p95:.1f} ms (target p50 < {TARGET_MS:.0f} ms)"
        )
        db.dispose()


if __name__ == "__main__":
    main()
