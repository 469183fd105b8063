"""The kubernetes launcher's own overhead: 30 daily runs x 3 chained no-op Shell tasks,
each try a pod, max_active_runs=4, against the fake API server of the test suite (its
kubelet runs each pod's command as a local process at once, so what is measured is
reflow's side: manifests, API calls, the watch, log streaming, outcomes).

With ``--context`` (a kubeconfig context, e.g. the local cluster of tests/k8s/cluster)
the same scenario runs on a real cluster instead, in a namespace of its own that is
deleted after: then the figures include the node's pod start-up.

Prints the wall time and the p50/p99 latency from an upstream try's end to its downstream
try's start (its container's), as the benchmark of the local launcher does, and the time
of a pod try from its launch to its recorded outcome. Run: `make bench`; on the local
cluster: `python bench/k8s_pods.py --context reflow-local --image reflow-k8s-python:dev`.
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
from typing import Any

from backfill_noop import measure, percentile, write_pipeline  # the same scenario

from reflow.core.config import KubernetesSettings, Settings
from reflow.services.project import Project
from reflow.store import tries as store_tries
from reflow.store.db import Database

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.k8s.fakeapi import FakeCluster  # the test suite's fake API server


def run_once(days: int, context: str | None, image: str) -> tuple[float, list[float], list[float]]:
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


def _measure(
    home: Path, k8s: KubernetesSettings, days: int
) -> tuple[float, list[float], list[float]]:
    """Wall time, upstream end -> downstream start gaps (ms), each try's time from its
    launch to its recorded end (s)."""
    settings = Settings(home=home, launcher="kubernetes", kubernetes=k8s)
    db = Database(settings.database)
    db.migrate()
    try:
        project = Project(settings, db)
        wall, gaps = measure(project, project.launcher(), days)
        with db.read() as conn:
            tries = store_tries.tries_of(conn)
        return wall, gaps, [(t.ended_at - t.queued_at).total_seconds() for t in tries]
    finally:
        db.dispose()


def _has_token(core: Any, namespace: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        return bool(core.read_namespaced_service_account("default", namespace).secrets)
    except ApiException as exc:
        if exc.status == 404:  # not made yet
            return False
        raise


@contextlib.contextmanager
def _namespace(context: str) -> Iterator[str]:
    """A namespace of the benchmark's own on a real cluster, deleted after."""
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(context=context))
    name = f"reflow-bench-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        deadline = time.monotonic() + 60  # pods wait for the service account's token
        while not _has_token(core, name):
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
    walls, lats, spans = [], [], []
    for i in range(args.repeat):
        wall, latencies, pod_tries = run_once(args.days, args.context, args.image)
        walls.append(wall)
        lats += latencies
        spans += pod_tries
        print(f"round {i + 1}: {wall:.2f} s for {pods} pods")
    median = statistics.median(walls)
    where = f"cluster {args.context}" if args.context else "fake API server"
    print(
        f"scenario: {args.days} daily runs x 3 chained `true` tasks, one pod per try, "
        f"max_active_runs=4, {where}, SQLite"
    )
    print(f"wall time: median {median:.2f} s, best {min(walls):.2f} s")
    print(f"per pod: {median / pods * 1000:.1f} ms")
    print(
        f"a pod try, launched -> outcome recorded: p50 {statistics.median(spans):.2f} s, "
        f"max {max(spans):.2f} s"
    )
    if args.context is None:
        # A real cluster gives a container's start in whole seconds: no latency from it.
        print(
            f"upstream pod end -> downstream container started: p50 "
            f"{percentile(lats, 0.5):.1f} ms, p99 {percentile(lats, 0.99):.1f} ms"
        )


if __name__ == "__main__":
    main()
