"""Notifications: how long from a run's failure to its message at a receiver, and what
the outbox costs a busy scheduler.

A scheduler (in this process, local launcher) runs N one-task runs whose task fails;
the pipeline sends each run's failure to a webhook receiver on 127.0.0.1. Printed: the
latency from the run's end (``ended_at``) to the receiver's answer (p50, p99, max), the
deliveries per second, and the run throughput with the notifications against the same
runs without any rule (the outbox entry is written either way; without a channel the
notifier only deletes it).

Run: `python bench/notify_latency.py [--runs 300] [--db postgresql+psycopg://...]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from _bench import percentile, scratch_database

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.peers import Receiver

from reflow.core.config import NotifySettings, Settings, WebhookChannel
from reflow.launchers.local import LocalLauncher
from reflow.scheduler import Scheduler
from reflow.services import backfill as backfill_service
from reflow.services.project import Project
from reflow.store import runs as store_runs
from reflow.store.db import Database

PIPELINE = """\
from reflow import Pipeline, Shell, on_failure
with Pipeline("alerting", schedule="@daily", start_date="2020-01-01", max_active_runs=32,
              notify={notify}):
    Shell("a", "exit 1")
"""


def one(runs: int, url: str | None, notify: bool) -> tuple[float, list[float]]:
    """Seconds for ``runs`` failing runs (and, with ``notify``, their messages), and each
    message's latency in seconds."""
    receiver = Receiver()
    hook = receiver.start()
    with tempfile.TemporaryDirectory() as tmp, scratch_database(url) as db_url:
        home = Path(tmp)
        (home / "pipelines").mkdir()
        rule = '[on_failure("hook")]' if notify else "None"
        (home / "pipelines" / "alerting.py").write_text(
            textwrap.dedent(PIPELINE.format(notify=rule))
        )
        settings = Settings(
            home=home,
            database_url=db_url,
            notify=NotifySettings(channels={"hook": WebhookChannel(kind="webhook", url=hook)}),
        )
        db = Database(settings.database)
        db.migrate()
        project = Project(settings, db)
        first = datetime(2020, 1, 1, tzinfo=UTC).date()
        last = datetime.fromordinal(first.toordinal() + runs - 1).date()
        plan = backfill_service.plan(project, "alerting", start=str(first), end=str(last))
        backfill_service.create(project, plan)
        sched = Scheduler(
            db, settings, LocalLauncher(settings.runtime_path), create_scheduled_runs=False
        )
        stop = threading.Event()

        def done() -> bool:
            with db.read() as conn:
                finished = len(
                    store_runs.list_runs(conn, pipeline="alerting", state="failed", limit=runs)
                )
            return finished == runs and (not notify or len(receiver.received) == runs)

        began = time.monotonic()
        worker = threading.Thread(target=sched.run, args=(stop,), kwargs={"idle_wait": 0.05})
        worker.start()
        while not done():
            time.sleep(0.05)
        seconds = time.monotonic() - began
        stop.set()
        worker.join()
        with db.read() as conn:
            ended = {
                r.run_id: r.ended_at.timestamp()
                for r in store_runs.list_runs(conn, pipeline="alerting", limit=runs)
                if r.ended_at is not None
            }
        db.dispose()
    receiver.stop()
    arrived = {r.json()["context"]["run_id"]: r.at for r in receiver.received}
    return seconds, [arrived[k] - ended[k] for k in arrived if k in ended]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--db", help="a PostgreSQL URL (default: SQLite in a temp folder)")
    args = parser.parse_args()
    backend = "PostgreSQL" if args.db else "SQLite"
    quiet, _ = one(args.runs, args.db, notify=False)
    loud, latencies = one(args.runs, args.db, notify=True)
    ms = sorted(x * 1000 for x in latencies)
    print(f"notifications on {backend}: {args.runs} failing one-task runs")
    print(f"  without a rule: {quiet:.1f} s ({args.runs / quiet:.0f} runs/s)")
    print(
        f"  each failure to a webhook on loopback: {loud:.1f} s ({args.runs / loud:.0f} runs/s, "
        f"{len(ms) / loud:.0f} messages/s)"
    )
    print(
        f"  run end -> message received: p50 {percentile(ms, 0.5):.0f} ms, "
        f"p99 {percentile(ms, 0.99):.0f} ms, max {ms[-1]:.0f} ms"
    )


if __name__ == "__main__":
    main()
