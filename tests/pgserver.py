"""A private PostgreSQL server for tests that stop, restart or break the database server.

``PrivatePostgres(tmp_dir).start()`` creates a fresh cluster (initdb) on first start and
runs it on 127.0.0.1 only, on a free port kept across restarts, with trust auth and a
database ``test``; ``.url`` is its SQLAlchemy URL. ``stop()``, ``restart()`` and ``close()``
(stop and remove the cluster) work at any time; it is also a context manager.

The server refuses to run as root: as root, every server program runs as the ``postgres``
user (``runuser``), in a folder that user owns. The binaries are looked up in
``REFLOW_TEST_PG_BIN``, then ``/usr/lib/postgresql/<newest>/bin``, then ``PATH``.

A test module gets the ``private_postgres`` fixture (one started server per module) with
``from tests.pgserver import private_postgres as private_postgres``.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SERVER_USER = "postgres"
_START_TIMEOUT = 120


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None."""
    candidates: list[Path] = []
    if configured := os.environ.get("REFLOW_TEST_PG_BIN"):
        candidates.append(Path(configured))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    if found := shutil.which("initdb"):
        candidates.append(Path(found).parent)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reachable_by_others(folder: Path) -> bool:
    """Can another user reach (traverse into) this folder?"""
    return all(part.stat().st_mode & stat.S_IXOTH for part in [folder, *folder.parents])


class PrivatePostgres:
    """One throw-away PostgreSQL cluster; see the module docstring."""

    def __init__(self, tmp_dir: Path | str, *, bin_dir: Path | None = None) -> None:
        found = bin_dir or find_bin_dir()
        if found is None:
            raise RuntimeError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL "
                "or set REFLOW_TEST_PG_BIN to the folder holding them"
            )
        self.bin_dir = found
        self.as_root = os.geteuid() == 0
        tmp = Path(tmp_dir).resolve()
        tmp.mkdir(parents=True, exist_ok=True)
        # As root the server runs as another user, who must be able to reach its folder.
        if self.as_root and not _reachable_by_others(tmp):
            self.home = Path(tempfile.mkdtemp(prefix="reflow-pg-"))
            self._own_home = True
        else:
            self.home = tmp / "postgres"
            self.home.mkdir(exist_ok=True)
            self._own_home = False
        self.data = self.home / "data"
        self.logfile = self.home / "server.log"
        self.port = _free_port()
        self.running = False

    # -- the API --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database ``test`` in this server."""
        return self.database_url("test")

    def database_url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def start(self) -> PrivatePostgres:
        """Start the server (creating the cluster and ``test`` on first start); returns
        when it accepts connections."""
        if self.running:
            return self
        first = not (self.data / "PG_VERSION").exists()
        if first:
            self._initdb()
        self._pg_ctl(
            "start",
            "-w",
            "-t",
            str(_START_TIMEOUT),
            "-l",
            str(self.logfile),
            "-o",
            f"-p {self.port}",
        )
        self.running = True
        self._wait_accepting()
        if first:
            self.create_database("test")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``smart``, ``fast`` or ``immediate``); no-op when stopped."""
        if not self.running:
            return
        self._pg_ctl("stop", "-w", "-t", str(_START_TIMEOUT), "-m", mode)
        self.running = False

    def restart(self) -> None:
        """Stop, then start again on the same port: a short outage for clients."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its cluster."""
        try:
            if self.running:
                self.stop(mode="immediate")
        finally:
            if self._own_home:
                shutil.rmtree(self.home, ignore_errors=True)
            else:
                shutil.rmtree(self.data, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """Create a database in this server and return its URL."""
        import psycopg

        conn = psycopg.connect(self._dsn("postgres"), autocommit=True)
        try:
            conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.database_url(name)

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------------------------
    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / program), *args]
        if self.as_root:
            return ["runuser", "-u", SERVER_USER, "--", *command]
        return command

    def _initdb(self) -> None:
        if self.as_root:
            shutil.chown(self.home, SERVER_USER, SERVER_USER)
        self._run(
            self._command(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            )
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "''",
            # A test server: durability is not needed across an OS crash.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "60",
        }
        conf = self.data / "postgresql.conf"
        with conf.open("a") as fh:
            fh.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _pg_ctl(self, *args: str) -> None:
        self._run(self._command("pg_ctl", "-D", str(self.data), *args))

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=_START_TIMEOUT + 30,
            cwd=self.home,
        )
        if result.returncode != 0:
            log = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{log}"
            )

    def _wait_accepting(self) -> None:
        import psycopg

        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                psycopg.connect(self._dsn("postgres"), connect_timeout=5).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@pytest.fixture(scope="module")
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    """A started private server, one per test module (tests may stop and restart it)."""
    if find_bin_dir() is None:
        message = (
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL "
            "or set REFLOW_TEST_PG_BIN"
        )
        if IN_CI:
            pytest.fail(message + " (CI requires them)")
        pytest.skip(message)
    server = PrivatePostgres(tmp_path_factory.mktemp("private-postgres"))
    try:
        server.start()
        yield server
    finally:
        server.close()
