"""Engine set-up, schema migration and transactions that absorb SQLite lock contention and
ride out database outages."""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from reflow.core.errors import ConfigError, StoreUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)

# The newest migration; tests check that it is Alembic's head.
HEAD = "0014"
MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"
# How long a command waits for an unreachable database server before giving up.
DEFAULT_OUTAGE_TIMEOUT = 60.0
_BUSY_TIMEOUT_MS = 30_000
_CONNECT_TIMEOUT_S = 10
_FIRST_WAIT, _LONGEST_WAIT = 0.05, 2.0
# pg_advisory_xact_lock key that serializes migrations of one PostgreSQL database.
_MIGRATION_LOCK = int.from_bytes(b"reflowdb", "big")


class _Failure(Enum):
    CONTENTION = "contention"  # a lock held by another transaction: retry the whole work
    OUTAGE = "outage"  # the server is unreachable or the connection died: retry, within budget
    UNUSABLE = "unusable"  # the database cannot be used as it is (read-only, full, ...)


# SQLite primary result codes that say "the file cannot be used", with what to check.
_SQLITE_UNUSABLE = {
    3: "check the permissions of the file and of its folder",  # SQLITE_PERM
    7: "the machine is out of memory",  # SQLITE_NOMEM
    8: "check the permissions of the file and of its folder",  # SQLITE_READONLY
    10: "check the disk and the permissions of the folder",  # SQLITE_IOERR
    11: "the file is damaged: restore it from a backup",  # SQLITE_CORRUPT
    13: "free some disk space",  # SQLITE_FULL
    14: "check that its folder exists and that reflow may create files in it",  # CANTOPEN
    15: "check the permissions of the file and of its folder",  # SQLITE_PROTOCOL
    23: "check the permissions of the file and of its folder",  # SQLITE_AUTH
    26: "is the database setting pointing at a reflow database?",  # SQLITE_NOTADB
}
_SQLITE_CONTENTION = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
# PostgreSQL SQLSTATEs: the server went away or is starting or stopping (class 08 too) ...
_PG_OUTAGE = {"57P01", "57P02", "57P03", "53300"}
_PG_OUTAGE_FATALS = ("the database system is", "too many clients", "connection slots")
# ... a lost race between transactions ...
_PG_CONTENTION = {"40001", "40P01"}
# ... and a server that cannot take writes or has run out of something.
_PG_UNUSABLE_CLASSES = ("53", "58")
_PG_UNUSABLE = {"25006", "57014"}


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` URLs and use the psycopg (v3) driver for them."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(f"bad database URL {url!r}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


class _CommitUnknown(Exception):
    """The connection died while COMMIT was in flight: the outcome must be looked up."""

    def __init__(self, error: BaseException, xid: str, result: Any) -> None:
        super().__init__(str(error))
        self.error, self.xid, self.result = error, xid, result


class Database:
    """One metadata database. Every write goes through :meth:`write` (one transaction).

    Lock contention is retried; a lost connection to a PostgreSQL server is retried with
    backoff for up to ``outage_timeout`` seconds (None: forever), logging one line when the
    outage starts and one when it ends; any other operational failure (a read-only file, a
    full disk) is one clear :class:`StoreUnavailable` line.
    """

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        outage_timeout: float | None = DEFAULT_OUTAGE_TIMEOUT,
        idle_transaction_timeout: float | None = None,
    ) -> None:
        """``idle_transaction_timeout`` (PostgreSQL): the server ends a session that sits
        that long inside a transaction, so a process frozen mid-transaction (SIGSTOP, a VM
        pause) releases its row locks instead of stalling every other scheduler."""
        self.url = normalize_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self.outage_timeout = outage_timeout
        self._watcher: Any = None  # see commits_elsewhere
        self._outage_lock = threading.Lock()
        self._down_since: float | None = None
        parsed = make_url(self.url)
        if self.is_sqlite:
            path = parsed.database
            self.where = path or ":memory:"
            if path and path != ":memory:" and not path.startswith("file:"):
                try:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreUnavailable(
                        f"cannot create the folder of the database {path}: {exc.strerror}"
                    ) from None
            self.engine = create_engine(
                self.url,
                echo=echo,
                poolclass=NullPool if path == ":memory:" else None,
                connect_args={"timeout": _BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            )
            _sqlite_pragmas(self.engine)
        else:
            self.where = parsed.render_as_string(hide_password=True)
            connect_args: dict[str, Any] = {"connect_timeout": _CONNECT_TIMEOUT_S}
            if "connect_timeout" in parsed.query:
                connect_args = {}
            if idle_transaction_timeout is not None and "options" not in parsed.query:
                ms = max(1000, round(idle_transaction_timeout * 1000))
                connect_args["options"] = f"-c idle_in_transaction_session_timeout={ms}"
            try:
                self.engine = create_engine(
                    self.url, echo=echo, pool_pre_ping=True, connect_args=connect_args
                )
            except Exception as exc:
                raise ConfigError(f"cannot use database {self.url!r}: {exc}") from None
            event.listen(self.engine, "do_execute", self._execute_read)
            event.listen(self.engine, "do_execute_no_params", self._execute_read_no_params)
        from reflow.store.models import use_dialect

        use_dialect(self.engine.dialect.name)  # the partial indexes' conditions in it

    # -- schema ---------------------------------------------------------------------------
    def current_revision(self) -> str | None:
        """The schema revision recorded in the database (None: no schema yet)."""
        try:
            with self.read() as conn:
                return _revision(conn)
        except DBAPIError as exc:
            if _missing_table(exc):
                return None
            raise

    def migrate(self) -> None:
        """Bring the schema to the newest migration (a single cheap read when it is there).

        The whole upgrade is one transaction holding the migration lock, so it is all or
        nothing and a second process waits, then finds the schema at head. A database left
        half-created by an interrupted older reflow is re-created when it holds no data, and
        refused with one clear line otherwise.
        """
        if self.current_revision() == HEAD:
            return
        self._retrying(self._upgrade, doing="migrate")

    @contextmanager
    def migration_transaction(self) -> Iterator[Connection]:
        """A connection in a transaction that holds the migration lock; commits on success.

        On SQLite it is ``BEGIN IMMEDIATE`` (one writer at a time) with foreign keys off, so
        that a table rebuilt by a migration does not cascade deletes; they are checked
        before the commit instead.
        """
        with self.engine.connect() as conn:
            if self.is_sqlite:
                raw = conn.connection.driver_connection
                assert raw is not None
                raw.execute("PRAGMA foreign_keys = OFF")  # only outside a transaction
            try:
                with conn.begin():
                    if not self.is_sqlite:
                        conn.execute(
                            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                        )
                    yield conn
                    if self.is_sqlite:
                        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if broken:
                            raise RuntimeError(f"a migration broke foreign keys: {broken[:5]}")
            finally:
                if self.is_sqlite:
                    # Never hand a connection with foreign keys off back to the pool.
                    conn.invalidate()

    def _upgrade(self) -> None:
        with self.migration_transaction() as conn:
            revision = _revision_or_none(conn)  # again: another process may have migrated
            if revision == HEAD:
                return
            known = _known_revisions()
            if revision is not None and revision not in known:
                raise StoreUnavailable(
                    f"the database {self.where} has schema revision {revision}, which this "
                    f"version of reflow does not know (its newest is {HEAD}): "
                    "upgrade reflow to use it"
                )
            self._check_half_created(conn, revision)
            from alembic import command

            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def _check_half_created(self, conn: Connection, revision: str | None) -> None:
        """Re-create a half-created but empty schema; refuse one that holds data."""
        present = set(inspect(conn).get_table_names())
        ours = {t for t in present if _is_reflow_table(t)}
        tables = ours - {VERSION_TABLE}
        expected = _tables_at(revision) if revision is not None else frozenset()
        if tables == expected:
            return
        if revision is None:
            problem = f"it has reflow tables ({_names(tables)}) but no schema revision"
        else:
            missing, extra = expected - tables, tables - expected
            problem = f"its schema revision is {revision} but its tables do not match it"
            problem += f" (missing: {_names(missing)})" if missing else ""
            problem += f" (unexpected: {_names(extra)})" if extra else ""
        holding = [t for t in sorted(tables) if _has_rows(conn, t)]
        if holding:
            raise StoreUnavailable(
                f"the database {self.where} is half-created: {problem}, and it holds data "
                f"(in {_names(set(holding))}); reflow leaves it alone: restore it from a "
                "backup, or move it aside to start a new database"
            )
        log.warning(
            "the database %s was half-created (%s) and holds no data: creating it again",
            self.where,
            problem,
        )
        # Foreign keys are off on SQLite here; CASCADE takes them along on PostgreSQL.
        cascade = "" if self.is_sqlite else " CASCADE"
        for name in sorted(ours):
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}"{cascade}')

    # -- transactions -----------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads: on SQLite its transaction takes no write lock.

        On PostgreSQL a statement that loses its connection is run again on a new one
        (each statement of a read-committed transaction sees its own snapshot anyway).
        """
        conn = self._retrying(
            lambda: self.engine.connect().execution_options(reflow_read_only=True), doing="read"
        )
        try:
            with conn:
                yield conn
        except DBAPIError as exc:
            error = self._unavailable(exc, "read")
            if error is None:
                raise
            raise error from None

    @contextmanager
    def probe(self) -> Iterator[Connection]:
        """A read connection for health probes and metrics scrapes: one try, no retry and
        no waiting out an outage, since a probe must answer at once. StoreUnavailable
        when the database cannot be read."""
        # Without reflow_read_only on PostgreSQL: its reads would be retried statement by
        # statement through an outage (_retry_read). On SQLite it makes BEGIN take no lock.
        options = {"reflow_read_only": True} if self.is_sqlite else {}
        try:
            with self.engine.connect().execution_options(**options) as conn:
                yield conn
        except DBAPIError as exc:
            raise StoreUnavailable(
                f"cannot read the database {self.where}: {_reason(exc)}"
            ) from None

    @property
    def outage_since(self) -> float | None:
        """When (``time.monotonic()``) the current outage began; None when the database
        answers (or did at the last attempt)."""
        return self._down_since

    def write(self, work: Callable[[Connection], T], *, attempts: int = 8) -> T:
        """Run ``work`` in one transaction, and run it again whole after lock contention or
        after losing the connection before COMMIT was sent.

        When the connection is lost during COMMIT itself (PostgreSQL), the transaction's
        fate is looked up once the server answers again: committed, the result is
        returned; rolled back, the work runs again; unknowable, :class:`StoreUnavailable`
        says that the write may or may not have been applied, and the caller re-reads.
        """

        def once() -> T:
            with self.engine.connect() as conn:
                transaction = conn.begin()
                result = work(conn)
                xid = None
                if not self.is_sqlite:  # None when the work wrote nothing
                    xid = conn.exec_driver_sql(self._xid_queries()[0]).scalar()
                try:
                    transaction.commit()
                except DBAPIError as exc:
                    if xid is not None and self._failure(exc) is _Failure.OUTAGE:
                        raise _CommitUnknown(exc, str(xid), result) from exc
                    raise  # nothing written, or not an outage: as any other failure
                return result

        while True:
            try:
                return self._retrying(once, doing="write", attempts=attempts)
            except _CommitUnknown as unknown:
                self._outage_began(unknown.error)
                lookup = functools.partial(self._transaction_status, unknown.xid)
                try:
                    status = self._retrying(lookup, doing="write")
                except StoreUnavailable:
                    status = None
                if status == "committed":
                    return cast(T, unknown.result)
                if status != "aborted":
                    raise StoreUnavailable(
                        f"lost the connection to the database {self.where} while committing "
                        f"({_reason(unknown.error)}): the last write may or may not have been "
                        "applied"
                    ) from None

    def _xid_queries(self) -> tuple[str, str]:
        """SQL for this transaction's id (if it wrote), and for a transaction's status."""
        if (self.engine.dialect.server_version_info or (0,)) >= (13,):
            return (
                "SELECT pg_current_xact_id_if_assigned()::text",
                "SELECT pg_xact_status(CAST(:xid AS xid8))",
            )
        return (
            "SELECT txid_current_if_assigned()::text",
            "SELECT txid_status(CAST(:xid AS bigint))",
        )

    def _transaction_status(self, xid: str) -> str | None:
        """``committed``, ``aborted`` or None (unknown) for a PostgreSQL transaction id."""
        deadline = time.monotonic() + _CONNECT_TIMEOUT_S
        while True:
            with self.engine.connect() as conn:
                status = conn.execute(text(self._xid_queries()[1]), {"xid": xid}).scalar()
            # A terminated backend may still be rolling back for a moment.
            if status != "in progress":
                return None if status is None else str(status)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def commits_elsewhere(self) -> int | None:
        """A number that changes when another connection writes to the database, for an
        idle process to notice new work at once, read on a connection kept for it. SQLite:
        ``data_version`` (commits of other connections). PostgreSQL: the server's next
        transaction id, which moves when any transaction writes (on this database or
        another of the server: at worst a needless look). None when it cannot be read."""
        if self.where == ":memory:":
            return None
        try:
            if self._watcher is None:
                watcher = self.engine.raw_connection()
                if not self.is_sqlite:
                    # Never idle inside a transaction: each look is a statement of its own.
                    watcher.driver_connection.autocommit = True  # type: ignore[union-attr]
                self._watcher = watcher
            query = "PRAGMA data_version" if self.is_sqlite else self._xmax_query()
            cursor = self._watcher.cursor()
            try:
                cursor.execute(query)
                return int(cursor.fetchone()[0])
            finally:
                cursor.close()
        except Exception:  # a signal only: a failure here means "look now"
            self._drop_watcher()
            return None

    def _xmax_query(self) -> str:
        if (self.engine.dialect.server_version_info or (0,)) >= (13,):
            return "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        return "SELECT txid_snapshot_xmax(txid_current_snapshot())"

    def _drop_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with suppress(Exception):
                watcher.close()

    def dispose(self) -> None:
        self._drop_watcher()
        self.engine.dispose()

    # -- failures ---------------------------------------------------------------------------
    def _retrying(self, action: Callable[[], T], *, doing: str, attempts: int = 8) -> T:
        """Run ``action``; run it again after lock contention (up to ``attempts`` times) and
        while the server is unreachable (within the outage budget)."""
        contention = 0
        outage_started: float | None = None
        waits = 0
        while True:
            try:
                result = action()
            except DBAPIError as exc:
                failure = self._failure(exc)
                if failure is _Failure.CONTENTION and contention < attempts - 1:
                    time.sleep(min(1.0, 0.01 * 2**contention) * (0.5 + random.random()))
                    contention += 1
                    continue
                if failure is _Failure.OUTAGE:
                    now = time.monotonic()
                    if outage_started is None:
                        outage_started = now
                        self._outage_began(exc)
                    if self._outage_wait(now - outage_started, waits):
                        waits += 1
                        continue
                error = self._unavailable(exc, doing)
                if error is None:
                    raise
                raise error from None
            if self._down_since is not None:
                self._outage_ended()
            return result

    def _outage_wait(self, elapsed: float, waits: int) -> bool:
        """Sleep before the next attempt; False when the outage budget is spent."""
        wait = min(_LONGEST_WAIT, _FIRST_WAIT * 2**waits) * (0.5 + random.random() / 2)
        if self.outage_timeout is not None:
            left = self.outage_timeout - elapsed
            if left <= 0:
                return False
            wait = min(wait, left)
        time.sleep(wait)
        return True

    def _outage_began(self, exc: BaseException) -> None:
        with self._outage_lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("database unreachable (%s), retrying", _reason(exc))

    def _outage_ended(self) -> None:
        with self._outage_lock:
            if self._down_since is not None:
                log.info("database back after %.1f s", time.monotonic() - self._down_since)
                self._down_since = None

    def _failure(self, exc: BaseException) -> _Failure | None:
        """What kind of failure a DBAPI error is (None: a bug or a constraint: not ours)."""
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        if self.is_sqlite:
            code = getattr(orig, "sqlite_errorcode", None)
            if code is None:
                return None
            if code & 0xFF in _SQLITE_CONTENTION:
                return _Failure.CONTENTION
            if code & 0xFF in _SQLITE_UNUSABLE:
                return _Failure.UNUSABLE
            return None
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return _Failure.OUTAGE
        state = getattr(orig, "sqlstate", None)
        if state is None:
            # psycopg reports a failed connect and a dropped connection without a SQLSTATE;
            # a connect that the server itself refused says why after "FATAL:".
            if not isinstance(orig, self.engine.dialect.loaded_dbapi.OperationalError):
                return None
            message = str(orig)
            if "FATAL:" in message and not any(m in message for m in _PG_OUTAGE_FATALS):
                return _Failure.UNUSABLE
            return _Failure.OUTAGE
        if state.startswith("08") or state in _PG_OUTAGE:
            return _Failure.OUTAGE
        if state in _PG_CONTENTION:
            return _Failure.CONTENTION
        if state.startswith(_PG_UNUSABLE_CLASSES) or state in _PG_UNUSABLE:
            return _Failure.UNUSABLE
        return None

    def _unavailable(self, exc: DBAPIError, doing: str) -> StoreUnavailable | None:
        """The one-line error for a failure that was not ridden out (None when the error
        is not an operational failure: a bug or a constraint, for the caller to see)."""
        failure = self._failure(exc)
        reason = _reason(exc)
        if failure is None:
            return None
        if failure is _Failure.OUTAGE:
            budget = f"{self.outage_timeout:g} s" if self.outage_timeout is not None else "long"
            return StoreUnavailable(
                f"the database {self.where} was unreachable for {budget} ({reason}): "
                "is the server running?"
            )
        if failure is _Failure.CONTENTION:
            return StoreUnavailable(
                f"the database {self.where} stayed locked by another process ({reason}); "
                "try again when it is less busy"
            )
        verb = {"write": "write to", "migrate": "update the schema of"}.get(doing, doing)
        if self.is_sqlite:
            code = getattr(exc.orig, "sqlite_errorcode", 0) & 0xFF
            # Whatever the command, SQLite says what it needed: to open or to write the file.
            verb = {14: "open", 8: "write to"}.get(code, verb)
            return StoreUnavailable(
                f"cannot {verb} the database {self.where}: {reason} ({_SQLITE_UNUSABLE[code]})"
            )
        return StoreUnavailable(f"cannot {verb} the database {self.where}: {reason}")

    # -- statement retry for reads (PostgreSQL) -------------------------------------------
    def _execute_read(
        self, cursor: Any, statement: str, parameters: Any, context: Any
    ) -> bool | None:
        return self._retry_read(cursor, statement, parameters, context)

    def _execute_read_no_params(self, cursor: Any, statement: str, context: Any) -> bool | None:
        return self._retry_read(cursor, statement, None, context)

    def _retry_read(
        self, cursor: Any, statement: str, parameters: Any, context: Any
    ) -> bool | None:
        """Run a read statement, again on a new connection if its connection died."""
        if not context.execution_options.get("reflow_read_only"):
            return None  # writes are retried whole by write(), never statement by statement
        conn: Connection = context.root_connection
        started: float | None = None
        waits = 0
        while True:
            try:
                if cursor is not None:
                    if parameters is None:
                        context.dialect.do_execute_no_params(cursor, statement, context)
                    else:
                        context.dialect.do_execute(cursor, statement, parameters, context)
                    break
                cursor = conn.connection.cursor()  # reconnects an invalidated connection
                context.cursor = cursor
            except Exception as exc:
                if self._failure(exc) is not _Failure.OUTAGE:
                    raise
                now = time.monotonic()
                if started is None:
                    started = now
                    self._outage_began(exc)
                if not self._outage_wait(now - started, waits):
                    raise
                waits += 1
                if not conn.invalidated:
                    conn.invalidate()
                if conn.in_transaction():
                    conn.rollback()
                cursor = None
        if self._down_since is not None:
            self._outage_ended()
        return True


def _revision(conn: Connection) -> str | None:
    value = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return None if value is None else str(value)


def _revision_or_none(conn: Connection) -> str | None:
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return _revision(conn)


def _missing_table(exc: DBAPIError) -> bool:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) == "42P01" or str(orig).startswith("no such table")


def _reason(exc: BaseException) -> str:
    """The first line of the driver's message."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def _names(tables: set[str] | frozenset[str]) -> str:
    ordered = sorted(tables)
    shown = ", ".join(ordered[:4])
    return shown + (f" and {len(ordered) - 4} more" if len(ordered) > 4 else "")


def _is_reflow_table(name: str) -> bool:
    from reflow.store.models import metadata

    base = name.removeprefix("_alembic_tmp_")
    return name == VERSION_TABLE or base in metadata.tables


def _has_rows(conn: Connection, table: str) -> bool:
    return conn.exec_driver_sql(f'SELECT 1 FROM "{table}" LIMIT 1').first() is not None


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@functools.lru_cache(maxsize=1)
def _known_revisions() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    return frozenset(rev.revision for rev in script.walk_revisions())


@functools.cache
def _tables_at(revision: str) -> frozenset[str]:
    """The reflow tables that exist at a schema revision (migrated in a scratch database)."""
    from alembic import command

    engine = create_engine("sqlite://", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            cfg.attributes["scratch"] = True
            command.upgrade(cfg, revision)
            return frozenset(inspect(conn).get_table_names()) - {VERSION_TABLE}
    finally:
        engine.dispose()


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE itself: writers queue up on
        # the busy timeout instead of failing mid-transaction on a lock upgrade.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("reflow_read_only"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
