"""The kubernetes launcher's own overhead: 30 daily runs x 3 chained no-op Shell tasks,
each try a pod, max_active_runs=4, against the fake API server of the test suite (its
kubelet runs each pod's command as a local process at once, so what is measured is
reflow's side: manifests, API calls, the watch, log streaming, outcomes).

With ``--context`` (a kubeconfig context, e.g. the local cluster of tests/k8s/cluster)
the same scenario runs on a real cluster instead, in a namespace of its own that is
deleted after: then the figures include the node's pod start-up.

Prints the wall time and the p50/p99 latency from an upstream try's end to its downstream
try's pod being created (and, on a real cluster, its container started), as the benchmark
of the local launcher does. Run: `make bench`; on the local cluster:
`python bench/k8s_pods.py --context reflow-local --image reflow-k8s-python:dev --days 10`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from backfill_noop import measure, percentile, write_pipeline  # the same scenario

from reflow.core.config import KubernetesSettings, Settings
from reflow.services.project import Project
from reflow.store import repo
from reflow.store.db import Database

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.k8s.fakeapi import FakeCluster  # the test suite's fake API server


def run_once(days: int, context: str | None, image: str) -> Latencies:
    with tempfile.TemporaryDirectory(prefix="reflow-bench-") as tmp:
        home = Path(tmp)
        write_pipeline(home)
        if context is None:
            with FakeCluster(home / "cluster") as fake:
                kubeconfig = fake.write_kubeconfig(home / "kubeconfig")
                k8s = KubernetesSettings(kubeconfig=kubeconfig, context="fake", image=image)
                return _measure(home, k8s, days)
        with _namespace(context) as namespace:
            k8s = KubernetesSettings(
                context=context, namespace=namespace, image=image, instance=namespace
            )
            return _measure(home, k8s, days)


Latencies = tuple[float, list[float], list[float]]


def _measure(home: Path, k8s: KubernetesSettings, days: int) -> Latencies:
    """Wall time, end -> next pod created, end -> next container started."""
    settings = Settings(home=home, launcher="kubernetes", kubernetes=k8s)
    db = Database(settings.database)
    db.migrate()
    try:
        project = Project(settings, db)
        wall, created = measure(project, project.launcher(), days, start="queued_at")
        with db.read() as conn:
            started = []
            for run in repo.runs_by_pk(conn, range(1, days + 1)):
                tries = {t.task_id: t for t in repo.tries_of(conn, run_pk=run.id)}
                for up, down in (("a", "b"), ("b", "c")):
                    gap = tries[down].started_at - tries[up].ended_at
                    started.append(gap.total_seconds() * 1000)
        return wall, created, started
    finally:
        db.dispose()


@contextlib.contextmanager
def _namespace(context: str) -> Iterator[str]:
    """A namespace of the benchmark's own on a real cluster, deleted after."""
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(context=context))
    name = f"reflow-bench-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        deadline = time.monotonic() + 60  # pods wait for the service account's token
        while not (core.read_namespaced_service_account("default", name).secrets or []):
            if time.monotonic() > deadline:
                raise SystemExit(f"namespace {name}: no service account token within 60 s")
            time.sleep(0.2)
        yield name
    finally:
        core.delete_namespace(name, grace_period_seconds=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--context", help="a real cluster's kubeconfig context (default: fake)")
    parser.add_argument("--image", default="busybox:1.36", help="the pods' image (needs sh)")
    args = parser.parse_args()
    pods = args.days * 3
    walls, created, started = [], [], []
    for i in range(args.repeat):
        wall, to_created, to_started = run_once(args.days, args.context, args.image)
        walls.append(wall)
        created += to_created
        started += to_started
        print(f"round {i + 1}: {wall:.2f} s for {pods} pods")
    median = statistics.median(walls)
    where = f"cluster {args.context}" if args.context else "fake API server"
    print(
        f"scenario: {args.days} daily runs x 3 chained `true` tasks, one pod per try, "
        f"max_active_runs=4, {where}, SQLite"
    )
    print(f"wall time: median {median:.2f} s, best {min(walls):.2f} s")
    print(f"per pod: {median / pods * 1000:.1f} ms")
    for what, gaps in (("created", created), ("container started", started)):
        print(
            f"upstream pod end -> downstream pod {what}: p50 {percentile(gaps, 0.5):.1f} ms, "
            f"p99 {percentile(gaps, 0.99):.1f} ms"
        )


if __name__ == "__main__":
    main()
