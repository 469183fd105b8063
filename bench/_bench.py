"""What several benchmarks share: a scratch database, timed write transactions, percentiles."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, make_url, text

from reflow.store import schedulers as store_schedulers
from reflow.store.db import Database


@contextmanager
def scratch_database(url: str | None) -> Iterator[str | None]:
    """None for SQLite (the project's own file), or a fresh database on the PostgreSQL
    server of ``url``, dropped afterwards."""
    if url is None:
        yield None
        return
    name = f"reflow_bench_{os.getpid()}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def timed_writes(db: Database) -> Iterator[list[float]]:
    """Record how long each write transaction of ``db`` holds the database (ms, from its
    first statement to the end of its work; the commit is not counted)."""
    holds: list[float] = []
    original: Callable[..., Any] = db.write

    def write(work: Callable[..., Any], **kwargs: Any) -> Any:
        def timed(conn: Any) -> Any:
            started = time.perf_counter()
            try:
                return work(conn)
            finally:
                holds.append((time.perf_counter() - started) * 1000)

        return original(timed, **kwargs)

    db.write = write  # type: ignore[method-assign]
    try:
        yield holds
    finally:
        db.write = original  # type: ignore[method-assign]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait_until_scheduling(db: Database, daemon: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until the `reflow scheduler` process ``daemon`` has registered."""
    deadline = time.monotonic() + timeout
    while True:
        with db.read() as conn:
            if store_schedulers.live_schedulers(conn, datetime.now(UTC), 60):
                return
        if time.monotonic() > deadline or daemon.poll() is not None:
            raise SystemExit("the scheduler did not start")
        time.sleep(0.1)
