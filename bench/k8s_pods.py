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
from pathlib import Path

from backfill_noop import measure, percentile, write_pipeline  # the same scenario

from reflow.core.config import KubernetesSettings, Settings
from reflow.services.project import Project
from reflow.store.db import Database

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.k8s.fakeapi import FakeCluster  # the test suite's fake API server


def run_once(days: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory(prefix="reflow-bench-") as tmp:
        home = Path(tmp)
        write_pipeline(home)
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
            try:
                project = Project(settings, db)
                return measure(project, project.launcher(), days)
            finally:
                db.dispose()


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
