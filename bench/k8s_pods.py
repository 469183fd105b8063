"""The kubernetes launcher's own overhead: 30 daily runs x 3 chained no-op Shell tasks,
each try a pod, max_active_runs=4, against the fake API server of the test suite (its
kubelet runs each pod's command as a local process at once, so what is measured is
reflow's side: manifests, API calls, the watch, log streaming, outcomes).

Prints the wall time and the p50/p99 latency from an upstream try's end to its downstream
try's start, as the benchmark of the local launcher does. Run: `make bench`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from datetime import date, timedelta
from pathlib import Path

from reflow.core.config import KubernetesSettings, Settings
from reflow.scheduler import Scheduler
from reflow.services import runs as run_service
from reflow.services.project import Project
from reflow.store import repo
from reflow.store.db import Database

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.k8s.fakeapi import FakeCluster  # the test suite's fake API server

PIPELINE = """
from reflow import Pipeline, Shell

with Pipeline("noop", schedule="@daily", start_date="2024-01-01", max_active_runs=4):
    Shell("a", "true") >> Shell("b", "true") >> Shell("c", "true")
"""


def run_once(days: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory(prefix="reflow-bench-") as tmp:
        home = Path(tmp)
        (home / "pipelines").mkdir()
        (home / "pipelines" / "noop.py").write_text(textwrap.dedent(PIPELINE))
        with FakeCluster(home / "cluster") as fake:
            kubeconfig = fake.write_kubeconfig(home / "kubeconfig")
            settings = Settings(
                home=home,
                launcher="kubernetes",
                kubernetes=KubernetesSettings(
                    kubeconfig=kubeconfig, context="fake", image="busybox:1.36"
                ),
            )
            db = Database(settings.database)
            db.migrate()
            project = Project(settings, db)
            dates = [(date(2024, 1, 1) + timedelta(days=i)).isoformat() for i in range(days)]

            started = time.perf_counter()
            run_pks = [r.id for r in run_service.trigger(project, "noop", dates)]
            scheduler = Scheduler(
                db,
                settings,
                project.launcher(),
                catalog=project.catalog,
                create_scheduled_runs=False,
            )

            def finished() -> bool:
                return run_service.progress(project, run_pks).done == len(run_pks)

            scheduler.run(threading.Event(), until=finished, idle_wait=0.5)
            wall = time.perf_counter() - started
            with db.read() as conn:
                states = {r.state for r in repo.runs_by_pk(conn, run_pks)}
                assert states == {"success"}, states
                latencies = []
                for run_pk in run_pks:
                    tries = {t.task_id: t for t in repo.tries_of(conn, run_pk=run_pk)}
                    for up, down in (("a", "b"), ("b", "c")):
                        gap = tries[down].started_at - tries[up].ended_at
                        latencies.append(gap.total_seconds() * 1000)
            db.dispose()
        return wall, latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pods = args.days * 3
    walls, lats = [], []
    for i in range(args.repeat):
        wall, latencies = run_once(args.days)
        walls.append(wall)
        lats += latencies
        print(f"round {i + 1}: {wall:.2f} s for {pods} pods")
    median = statistics.median(walls)
    print(
        f"scenario: {args.days} daily runs x 3 chained `true` tasks, one pod per try, "
        "max_active_runs=4, fake API server, SQLite"
    )
    print(f"wall time: median {median:.2f} s, best {min(walls):.2f} s")
    print(f"per pod: {median / pods * 1000:.1f} ms")
    print(
        f"upstream pod end -> downstream pod created: p50 {percentile(lats, 0.5):.1f} ms, "
        f"p99 {percentile(lats, 0.99):.1f} ms"
    )


if __name__ == "__main__":
    main()
