"""The metadata database rides out outages and turns an unusable database into one line.

SQLite cases use files that cannot be written or opened; PostgreSQL cases use a private
server that the tests stop and restart (tests/pgserver.py).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import DBAPIError

from reflow.core.errors import StoreUnavailable
from reflow.store.db import Database
from tests.pgserver import PrivatePostgres
from tests.pgserver import private_postgres as private_postgres

DB_LOG = "reflow.store.db"


def wait_for(check: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        time.sleep(0.02)


def one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and message.strip() == message and message
    return message


# -- SQLite: a database that cannot be used is one clear line -------------------------------
def test_a_read_only_database_file_refuses_writes_in_one_line(
    tmp_path: Path, sqlite_template: Path
) -> None:
    path = tmp_path / "reflow.db"
    shutil.copy(sqlite_template, path)
    db = Database(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        with db.read() as conn:  # reads still work
            assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 0
        with pytest.raises(StoreUnavailable) as caught:
            db.write(lambda c: c.execute(text("DELETE FROM runs")))
    finally:
        db.dispose()
    message = one_line(caught.value)
    assert message.startswith(f"cannot write to the database file:{path}: ")
    assert "readonly database" in message and "permissions" in message


def test_a_database_path_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "reflow.db"
    path.mkdir()  # a folder where the file should be
    db = Database(f"sqlite:///{path}")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            db.migrate()
    finally:
        db.dispose()
    message = one_line(caught.value)
    assert message.startswith(f"cannot open the database {path}: unable to open database file")


def test_a_file_that_is_not_a_database_is_one_line_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "reflow.db"
    content = b"these are my notes, not a database\n" * 200
    path.write_bytes(content)
    db = Database(f"sqlite:///{path}")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            db.migrate()
    finally:
        db.dispose()
    assert "file is not a database" in one_line(caught.value)
    assert path.read_bytes() == content


def test_a_database_folder_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(StoreUnavailable) as caught:
        Database(f"sqlite:///{tmp_path / 'taken' / 'reflow.db'}")
    assert "cannot create the folder of the database" in one_line(caught.value)


def test_a_bug_in_a_query_is_not_disguised_as_an_unusable_database(db: Database) -> None:
    with pytest.raises(DBAPIError, match="no_such_table"):
        db.write(lambda c: c.execute(text("SELECT * FROM no_such_table")))


# -- PostgreSQL: outages are ridden out ------------------------------------------------------
@pytest.fixture
def server(private_postgres: PrivatePostgres) -> Iterator[PrivatePostgres]:
    private_postgres.start()  # a test that failed midway may have left it stopped
    yield private_postgres
    private_postgres.start()


@pytest.fixture
def pg(server: PrivatePostgres) -> Iterator[Database]:
    """A Database on a new database of the private server, with a table ``t(i)``."""
    url = server.create_database(f"db_{uuid.uuid4().hex[:10]}")
    db = Database(url, outage_timeout=120)
    db.write(lambda c: c.execute(text("CREATE TABLE t (i integer PRIMARY KEY)")))
    yield db
    db.dispose()


def _insert(i: int) -> Callable[[Connection], None]:
    def work(conn: Connection) -> None:
        conn.execute(text("INSERT INTO t (i) VALUES (:i)"), {"i": i})

    return work


def _rows(db: Database) -> list[int]:
    with db.read() as conn:
        return [r.i for r in conn.execute(text("SELECT i FROM t ORDER BY i"))]


def _backend_running(server: PrivatePostgres, query_part: str) -> bool:
    """Is a statement containing ``query_part`` running in the server right now?"""
    with psycopg.connect(server._dsn("postgres"), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT query FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid()"
        ).fetchall()
    return any(query_part in row[0] for row in rows)


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == DB_LOG and r.levelno == level]


@pytest.mark.postgres
def test_writes_survive_a_server_restart_with_no_write_lost(
    server: PrivatePostgres, pg: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=DB_LOG)
    done = 0
    restarted = threading.Event()

    def restart() -> None:
        wait_for(lambda: done >= 30, what="30 writes before the restart")
        server.restart()
        restarted.set()

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        deadline, after_restart = time.monotonic() + 120, 0
        while after_restart < 30:
            pg.write(_insert(done))
            done += 1
            after_restart += restarted.is_set()
            assert time.monotonic() < deadline, "the restart never happened"
    finally:
        thread.join()
    assert _rows(pg) == list(range(done))
    warnings, infos = _messages(caplog, logging.WARNING), _messages(caplog, logging.INFO)
    assert len(warnings) == 1 and warnings[0].startswith("database unreachable (")
    assert warnings[0].endswith("), retrying")
    assert len(infos) == 1 and infos[0].startswith("database back after ")


@pytest.mark.postgres
def test_a_read_cut_by_a_restart_is_run_again(server: PrivatePostgres, pg: Database) -> None:
    pg.write(_insert(7))
    result: list[object] = []

    def read() -> None:
        try:
            with pg.read() as conn:
                result.append(conn.execute(text("SELECT pg_sleep(2), max(i) FROM t")).one()[1])
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    wait_for(lambda: _backend_running(server, "pg_sleep(2)"), what="the read started")
    server.restart()
    thread.join(timeout=120)
    assert result == [7]


@pytest.mark.postgres
def test_a_write_cut_by_a_restart_is_run_again_whole(server: PrivatePostgres, pg: Database) -> None:
    calls = 0

    def work(conn: Connection) -> None:
        nonlocal calls
        calls += 1
        conn.execute(text("INSERT INTO t (i) VALUES (1)"))
        conn.execute(text("SELECT pg_sleep(2)"))

    thread = threading.Thread(target=pg.write, args=(work,))
    thread.start()
    wait_for(lambda: _backend_running(server, "pg_sleep(2)"), what="the write started")
    server.restart()
    thread.join(timeout=120)
    assert calls == 2 and _rows(pg) == [1]


def _cut_during_commit(server: PrivatePostgres, pg: Database, commit_first: bool) -> None:
    """Make the next COMMIT of ``pg`` fail because its server process is killed; with
    ``commit_first``, after its transaction was in fact committed."""

    def before_commit(conn: Connection) -> None:
        raw = conn.connection.driver_connection
        assert raw is not None
        if commit_first:
            raw.execute("COMMIT")
            raw.execute("BEGIN")
        pid = raw.info.backend_pid
        with psycopg.connect(server._dsn("postgres"), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 60000)", [pid])

    event.listen(pg.engine, "commit", before_commit, once=True)


@pytest.mark.postgres
@pytest.mark.parametrize("committed", [False, True], ids=["rolled-back", "committed"])
def test_a_connection_lost_during_commit_is_resolved_without_a_double_write(
    server: PrivatePostgres, pg: Database, committed: bool
) -> None:
    calls = 0

    def work(conn: Connection) -> str:
        nonlocal calls
        calls += 1
        conn.execute(text("INSERT INTO t (i) VALUES (5)"))
        return "done"

    _cut_during_commit(server, pg, commit_first=committed)
    assert pg.write(work) == "done"
    assert _rows(pg) == [5]
    assert calls == (1 if committed else 2)


@pytest.mark.postgres
def test_a_stopped_server_is_one_line_once_the_budget_is_spent(
    server: PrivatePostgres, pg: Database
) -> None:
    short = Database(pg.url, outage_timeout=1.5)
    try:
        short.write(_insert(1))  # a pooled connection that the stop will kill
        server.stop()
        for attempt in (lambda: short.write(_insert(2)), lambda: _rows(short)):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                attempt()
            assert time.monotonic() - started >= 1.5
            message = one_line(caught.value)
            assert message.startswith(f"the database {short.where} was unreachable for 1.5 s (")
            assert "is the server running?" in message
    finally:
        short.dispose()
        server.start()
    assert _rows(pg) == [1]


@pytest.mark.postgres
def test_a_server_that_refuses_the_login_is_one_line_at_once(server: PrivatePostgres) -> None:
    db = Database(server.database_url("no_such_database"), outage_timeout=60)
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable) as caught:
            db.migrate()
    finally:
        db.dispose()
    assert time.monotonic() - started < 30  # not retried as an outage
    assert 'database "no_such_database" does not exist' in one_line(caught.value)
