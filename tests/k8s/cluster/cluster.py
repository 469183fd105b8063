"""Build and run a real single-node Kubernetes (v1.20) on this machine, for reflow's tests.

    python tests/k8s/cluster/cluster.py up      # build what is missing, start, wait for Ready
    python tests/k8s/cluster/cluster.py down    # stop everything by pid and clean up
    python tests/k8s/cluster/cluster.py build   # only build (programs and images)
    python tests/k8s/cluster/cluster.py status  # which components run
    python tests/k8s/cluster/cluster.py ready   # exit 0 when the node is Ready (quiet)
    python tests/k8s/cluster/cluster.py built   # exit 0 when the programs are built (quiet)
    python tests/k8s/cluster/cluster.py check   # a pod end to end, and the listeners
    python tests/k8s/cluster/cluster.py check --spark   # also Spark executors in pods

Run as root (containerd, the kubelet, a bridge, cgroups). The build is cached under
``~/.cache/reflow-k8s/<version>/``; ``make k8s-cluster`` and ``make k8s-cluster-stop`` call
``up`` and ``down``.
"""

from __future__ import annotations

import argparse
import os
import sys

import binaries
import check
import images
import node
from layout import (
    CACHE,
    CACHE_ROOT,
    CONTEXT,
    KUBECONFIG,
    KUBERNETES_VERSION,
    PYTHON_IMAGE,
    RUN,
    SPARK_IMAGE,
    ClusterError,
    Timings,
    du,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "command", choices=["up", "down", "build", "status", "check", "ready", "built"]
    )
    parser.add_argument(
        "--spark", action="store_true", help="check: also a Spark driver pod with an executor"
    )
    args = parser.parse_args(argv)
    if args.command == "ready":  # for scripts: exit 0 when the node is Ready, quietly
        return 0 if node.ready() else 1
    if args.command == "built":  # the programs are in the cache: `up` starts in minutes
        return 0 if binaries.built() else 1
    if os.geteuid() != 0:
        print("error: run as root (containerd, the kubelet, cgroups, a bridge)", file=sys.stderr)
        return 2
    t = Timings()
    try:
        if args.command in ("up", "build"):
            binaries.build_all(t)
            rebuilt = images.build_all(t)
            print(f"\nBuild cache {CACHE}: {du(CACHE)}", flush=True)
        if args.command == "up":
            if node.ready():
                print("\nThe cluster is already running.", flush=True)
                if rebuilt:
                    node.import_images(t, rebuilt)
            else:
                node.up(t)
            usage()
        elif args.command == "down":
            node.down(t)
        elif args.command == "status":
            status()
            return 0
        elif args.command == "check":
            check.end_to_end(t, spark=args.spark)
    except ClusterError as e:
        t.summary()
        print(f"\nerror: {e}", file=sys.stderr)
        if args.command == "up":
            print("Logs are in", node.LOGS, "; stop with: make k8s-cluster-stop", file=sys.stderr)
        return 1
    t.summary()
    return 0


def usage() -> None:
    print(
        f"""
Kubernetes {KUBERNETES_VERSION} is running: node {node.NODE_NAME} is Ready.
  kubeconfig  {KUBECONFIG}   (context {CONTEXT}, user system:masters)
  API server  {node.API_URL}  (also KUBERNETES_SERVICE_HOST/PORT inside pods)
  images      {PYTHON_IMAGE}, {SPARK_IMAGE}  (never pulled: imagePullPolicy Never
              or IfNotPresent)
  logs        {node.LOGS}
Use it with:
  export KUBECONFIG={KUBECONFIG}
  python -c 'import kubernetes as k; k.config.load_kube_config(context="{CONTEXT}"); \\
print(k.client.CoreV1Api().list_node().items[0].metadata.name)'
Stop it with: make k8s-cluster-stop""",
        flush=True,
    )


def status() -> None:
    for name in node.COMPONENTS:
        rec = node.recorded(name)
        state = "not started"
        if rec is not None:
            state = f"pid {rec[0]} " + ("running" if node.alive(*rec) else "NOT running")
        print(f"  {name:<24} {state}")
    print(f"  build cache {CACHE}: {du(CACHE)}; run state {RUN}: {du(RUN)}")
    print(f"  (all of {CACHE_ROOT}: {du(CACHE_ROOT)})")


if __name__ == "__main__":
    sys.exit(main())
