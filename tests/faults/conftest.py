"""Fault-injection trials: reflow in subprocesses, killed, paused and cut off on purpose.

An :class:`Installation` is a project folder, a fresh metadata database (SQLite or
PostgreSQL) and a launcher (local, or kubernetes against the fake API server running in
the test process), driven only through the ``reflow`` command. Its tasks write the
evidence file that :mod:`tests.faults.invariants` reads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from reflow.core.faults import ARM_VAR, MARK_VAR
from reflow.store.db import Database

from ..acceptance.test_cli import REFLOW
from ..conftest import PostgresServer
from ..k8s.conftest import Cluster, cluster  # noqa: F401 - the cluster fixture

# Short enough that a trial takes seconds; long enough for a tick on two busy cores.
SCHEDULER_TIMEOUT = 3.0
HEARTBEAT_INTERVAL = 0.5
LOST_RETRY_DELAY = 0.5


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(every)


class Installation:
    """reflow as its users run it: commands in subprocesses on one project and database."""

    def __init__(self, root: Path, db_url: str, launcher: str, fake: Cluster | None) -> None:
        self.root = root
        self.home = root / "project"
        self.db_url = db_url
        self.launcher = launcher
        self.cluster = fake
        self.evidence = root / "evidence.txt"
        self.marks = root / "crash-marks.txt"
        self.processes: list[subprocess.Popen[bytes]] = []
        self._logs = root / "logs"
        self._logs.mkdir(parents=True, exist_ok=True)
        (self.home / "pipelines").mkdir(parents=True, exist_ok=True)
        self.write_config()

    # -- set-up ---------------------------------------------------------------------------
    def write_config(self) -> None:
        lines = ["[reflow]", f"database_url = {self.db_url!r}", f"launcher = {self.launcher!r}"]
        lines.append("parse_interval = 1.0")
        if self.launcher == "kubernetes":
            assert self.cluster is not None
            k8s = self.cluster.settings
            lines += [
                "[reflow.kubernetes]",
                f"namespace = {k8s.namespace!r}",
                f"image = {k8s.image!r}",
                f"startup_timeout = {k8s.startup_timeout}",
                f"sweep_interval = {k8s.sweep_interval}",
                # The fake's kubelet runs commands here, with this interpreter.
                f"pipelines_folder = {str(self.home / 'pipelines')!r}",
                f"python = {sys.executable!r}",
            ]
            if k8s.kubeconfig:
                lines.append(f"kubeconfig = {str(k8s.kubeconfig)!r}")
            if k8s.context:
                lines.append(f"context = {k8s.context!r}")
        (self.home / "reflow.toml").write_text("\n".join(lines) + "\n")

    def write_pipeline(self, name: str, source: str) -> None:
        (self.home / "pipelines" / f"{name}.py").write_text(source)

    def env(self, crash_at: str | None = None, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "REFLOW_HOME": str(self.home),
            "REFLOW_SCHEDULER_TIMEOUT": str(SCHEDULER_TIMEOUT),
            "REFLOW_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
            # A lost try is retried after this (doubling each time it is lost again).
            "REFLOW_LOST_RETRY_DELAY": str(LOST_RETRY_DELAY),
            "COLUMNS": "200",
            MARK_VAR: str(self.marks),
        }
        env.pop(ARM_VAR, None)
        if crash_at:
            env[ARM_VAR] = crash_at
        env.update(extra)
        return env

    # -- processes ------------------------------------------------------------------------
    def start(
        self, *args: str, crash_at: str | None = None, **extra: str
    ) -> subprocess.Popen[bytes]:
        """``reflow ARGS`` in the background; its output goes to a log file per process."""
        n = len(self.processes)
        out = (self._logs / f"{n:02d}-{args[0]}.out").open("wb")
        err = (self._logs / f"{n:02d}-{args[0]}.err").open("wb")
        proc = subprocess.Popen(
            [*REFLOW, *args],
            cwd=self.home,
            env=self.env(crash_at, **extra),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        err.close()
        self.processes.append(proc)
        return proc

    def scheduler(self, crash_at: str | None = None) -> subprocess.Popen[bytes]:
        return self.start("scheduler", crash_at=crash_at)

    def run(
        self, *args: str, crash_at: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``reflow ARGS`` to its end."""
        return subprocess.run(
            [*REFLOW, *args],
            cwd=self.home,
            env=self.env(crash_at),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        """What a background process wrote to stderr (and stdout), for failure messages."""
        n = self.processes.index(proc)
        parts = []
        for path in sorted(self._logs.glob(f"{n:02d}-*")):
            body = path.read_text(errors="replace").strip()
            if body:
                parts.append(f"--- {path.name}\n{body[-3000:]}")
        return "\n".join(parts) or "(no output)"

    def died_at(self, point: str, proc: subprocess.Popen[bytes]) -> bool:
        """Did ``proc`` kill itself at the crash point ``point``?"""
        marks = self.marks.read_text().split("\n") if self.marks.exists() else []
        return f"{point} {proc.pid}" in marks

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
        """SIGTERM and wait: a scheduler stops cleanly (exit 0)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"pid {proc.pid} did not stop within {timeout} s of SIGTERM\n{self.output(proc)}"
            ) from None

    def kill_all(self) -> None:
        """Leave nothing behind: our reflow processes, and task processes still running."""
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(OSError, psutil.Error):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait()
        from .invariants import read_evidence

        for ex in read_evidence(self.evidence).executions:
            if ex.end is None:
                with contextlib.suppress(OSError, psutil.Error):
                    task = psutil.Process(ex.pid)
                    if str(self.evidence) in " ".join(task.cmdline()):
                        os.killpg(ex.pid, signal.SIGKILL)

    # -- the database ---------------------------------------------------------------------
    def query(self, sql: str) -> list[tuple[Any, ...]]:
        db = Database(self.db_url)
        try:
            with db.read() as conn:
                return [tuple(r) for r in conn.execute(text(sql)).all()]
        finally:
            db.dispose()

    def scalar(self, sql: str) -> Any:
        return self.query(sql)[0][0]

    def runs_finished(self, expected: int) -> bool:
        """Are there ``expected`` runs, all of them finished?"""
        try:
            ((total, done),) = self.query(
                "SELECT count(*), coalesce(sum(CASE WHEN state IN ('success', 'failed', "
                "'cancelled') THEN 1 ELSE 0 END), 0) FROM runs"
            )
        except Exception:  # the schema may not exist yet
            return False
        return bool(total == expected and done == expected)

    def registered(self, proc: subprocess.Popen[bytes]) -> bool:
        try:
            return bool(self.query(f"SELECT id FROM schedulers WHERE pid = {proc.pid}"))
        except Exception:
            return False


# -- databases ------------------------------------------------------------------------------
class Databases:
    """Fresh databases for one test; dropped at its end."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.request = request
        self.tmp_path = tmp_path
        self.created: list[tuple[PostgresServer, str]] = []

    def new(self, backend: str, *, migrated: bool = True) -> str:
        """A database URL: migrated (from the session's template), or empty."""
        if backend == "sqlite":
            path = self.tmp_path / f"reflow-{uuid.uuid4().hex[:8]}.db"
            if migrated:
                shutil.copy(self.request.getfixturevalue("sqlite_template"), path)
            return f"sqlite:///{path}"
        server: PostgresServer = self.request.getfixturevalue("postgres_server")
        if migrated:
            url = server.create()
        else:
            name = f"reflow_e_{uuid.uuid4().hex[:12]}"
            with server.admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = server.url.set(database=name).render_as_string(hide_password=False)
        self.created.append((server, url))
        return url

    def drop_all(self) -> None:
        for server, url in self.created:
            server.drop(url)


@pytest.fixture
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    found = Databases(request, tmp_path)
    yield found
    found.drop_all()


@pytest.fixture
def make_installation(
    request: pytest.FixtureRequest, tmp_path: Path, databases: Databases
) -> Iterator[Callable[..., Installation]]:
    """``make_installation(backend, launcher)``: a new installation, cleaned up after."""
    made: list[Installation] = []

    def make(backend: str, launcher: str = "local", *, db_url: str | None = None) -> Installation:
        fake: Cluster | None = None
        if launcher == "kubernetes":
            fake = request.getfixturevalue("cluster")
            if fake is not None and fake.real:
                pytest.skip("the tasks' evidence needs the fake cluster's local processes")
        url = db_url or databases.new(backend)
        inst = Installation(tmp_path / f"inst{len(made)}", url, launcher, fake)
        made.append(inst)
        return inst

    yield make
    for inst in made:
        inst.kill_all()


def pg_admin_url(url: str) -> str:
    """The maintenance database of the server holding ``url``."""
    return make_url(url).set(database="postgres").render_as_string(hide_password=False)


def schema_is_complete(db_url: str) -> list[Any]:
    """The differences between the database's schema and the models ([] when complete),
    plus the revision when it is not the head."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from reflow.store.db import HEAD
    from reflow.store.models import metadata

    engine = create_engine(Database(db_url).url)
    try:
        with engine.connect() as conn:
            diff = list(compare_metadata(MigrationContext.configure(conn), metadata))
            revision = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    if revision != HEAD:
        diff.append(f"revision {revision}, head is {HEAD}")
    return diff
