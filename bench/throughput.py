"""Throughput: a three-year backfill of a 20-task pipeline, and 10,000 one-task runs.

``years``: 1,095 daily runs x 20 `true` tasks (21,900 task instances; an extract, 18
transforms, a load), max_active_runs 32, the default parallelism (32), local launcher.
While it runs, another process's write (``runs clear`` of a run the scheduler does not
drive) is made every 50 ms: its latency is what a CLI or web write waits behind the
scheduler. Targets: <= 64 s; the scheduler's write transactions <= 25 ms p99; the
concurrent write <= 50 ms p99.

``runs``: 10,000 runs of a one-task pipeline. Target: >= 200 runs/s.

Run: `python bench/throughput.py [--db postgresql+psycopg://...] [--scenario years|runs]`.
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import threading
import time
from datetime import date, timedelta
from pathlib import Path

from _bench import percentile, scratch_database, timed_writes

from reflow.core.config import Settings
from reflow.launchers.local import LocalLauncher
from reflow.scheduler import Scheduler
from reflow.services import backfill as backfill_service
from reflow.services import history as history_service
from reflow.services import runs as run_service
from reflow.services.project import Project
from reflow.store import runs as store_runs
from reflow.store.db import Database

PIPELINES = {
    "years": """
        from reflow import Pipeline, Shell

        with Pipeline("years", schedule="@daily", start_date="2020-01-01", max_active_runs=32,
                      max_active_tasks=64):
            extract, load = Shell("extract", "true"), Shell("load", "true")
            for i in range(18):
                extract >> Shell(f"t{i:02d}", "true") >> load
        """,
    "runs": """
        from reflow import Pipeline, Shell

        with Pipeline("runs", schedule="@daily", start_date="1990-01-01",
                      max_active_runs=10000, max_active_tasks=64):
            Shell("only", "true")
        """,
    "side": """
        from reflow import Pipeline, Shell

        with Pipeline("side", schedule="@daily", start_date="2024-01-01"):
            Shell("a", "true")
        """,
}


def _writer(settings: Settings, stop: threading.Event, latencies: list[float]) -> None:
    """Another process's writes: clear the side pipeline's run every 50 ms."""
    db = Database(settings.database)
    project = Project(settings, db)
    try:
        while not stop.wait(0.05):
            started = time.perf_counter()
            history_service.clear(project, "side", run="2024-01-01")
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        db.dispose()


def measure(url: str | None, scenario: str, days: int) -> None:
    with tempfile.TemporaryDirectory(prefix="reflow-bench-") as tmp:
        home = Path(tmp)
        (home / "pipelines").mkdir()
        for name, source in PIPELINES.items():
            (home / "pipelines" / f"{name}.py").write_text(textwrap.dedent(source))
        settings = Settings(home=home, database_url=url)
        db = Database(settings.database)
        db.migrate()
        project = Project(settings, db)
        run_service.trigger(project, "side", ["2024-01-01"])
        first = date(2021, 1, 1) if scenario == "years" else date(1990, 1, 1)
        last = first + timedelta(days=days - 1)
        started = time.perf_counter()
        plan = backfill_service.plan(
            project, scenario, start=first.isoformat(), end=last.isoformat()
        )
        backfill_id = backfill_service.create(project, plan)
        created = time.perf_counter() - started
        scheduler = Scheduler(
            db,
            settings,
            LocalLauncher(settings.runtime_path),
            catalog=project.catalog,
            only=[scenario],
            create_scheduled_runs=False,
        )

        checked = [0.0]

        def finished() -> bool:
            # Twice a second, in one count: the bench must not be what the tick waits on.
            if time.perf_counter() - checked[0] < 0.5:
                return False
            checked[0] = time.perf_counter()
            with db.read() as conn:
                active = store_runs.count_active_runs(conn)
            return not any(p == scenario for p, _ in active)

        stop, waits = threading.Event(), []
        writer = threading.Thread(target=_writer, args=(settings, stop, waits))
        writer.start()
        try:
            with timed_writes(db) as holds:
                scheduler.run(threading.Event(), until=finished, idle_wait=0.2)
        finally:
            stop.set()
            writer.join()
        wall = time.perf_counter() - started
        with db.read() as conn:
            states = {r.state for r in store_runs.list_runs(conn, pipeline=scenario, limit=days)}
        assert states == {"success"}, states
        tis = days * (20 if scenario == "years" else 1)
        print(
            f"  {days:,} runs, {tis:,} task instances in {wall:.1f} s "
            f"(backfill planned and created in {created:.1f} s, backfill {backfill_id})"
        )
        print(
            f"  {tis / wall:.0f} task instances/s, {days / wall:.0f} runs/s, "
            f"{wall / tis * 1000:.2f} ms per task instance"
        )
        print(
            f"  scheduler write transactions: {len(holds):,}, p50 "
            f"{percentile(holds, 0.5):.1f} ms, p99 {percentile(holds, 0.99):.1f} ms, "
            f"max {max(holds):.1f} ms"
        )
        print(
            f"  concurrent `runs clear` ({len(waits)}): p50 {percentile(waits, 0.5):.1f} ms, "
            f"p99 {percentile(waits, 0.99):.1f} ms, max {max(waits, default=0):.1f} ms"
        )
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="a PostgreSQL URL (default: SQLite in a temp folder)")
    parser.add_argument("--scenario", choices=["years", "runs", "both"], default="both")
    parser.add_argument("--days", type=int, help="runs to make (default 1,095 or 10,000)")
    args = parser.parse_args()
    where = "PostgreSQL" if args.db else "SQLite"
    for scenario in ("years", "runs") if args.scenario == "both" else (args.scenario,):
        days = args.days or (1095 if scenario == "years" else 10_000)
        print(f"{scenario} on {where}:")
        with scratch_database(args.db) as url:
            measure(url, scenario, days)
    print(
        "targets: years <= 64 s, write transactions p99 <= 25 ms, a concurrent write "
        "p99 <= 50 ms; runs >= 200 runs/s"
    )


if __name__ == "__main__":
    main()
