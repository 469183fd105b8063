"""Shipping try logs to ``logs_url`` (``store.logs``), on a thread of the scheduler's own.

With ``logs_url`` a URL, a try writes its log to a spool file on the scheduler's host;
the scheduler's :class:`LogShipper` copies it to the URL every ``logs_ship_interval``
seconds while it grows, and once more, whole, after the try's outcome (and reflow's last
line) is recorded; the spool file is then removed. The scheduler's tick only tells it what
to watch and what has ended: it never waits for an upload. A failing upload is logged once
and tried again, with growing waits, until it succeeds or the scheduler stops.

A try adopted from a scheduler on another host has no spool file here: what that
scheduler shipped is fetched first and kept in front of what this host adds, so nothing
shipped is lost. A scheduler killed before it shipped a final copy leaves its spool file:
the next scheduler started on the host ships it (the try's row says it has ended).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from reflow.core.config import Settings
from reflow.store import tries as store_tries
from reflow.store.db import Database
from reflow.store.logs import RemoteLogs, one_line, remote_logs

log = logging.getLogger("reflow.scheduler")

# The longest wait between two tries of a failing upload, in ship intervals (a minute by
# default).
_MAX_BACKOFF = 12
# A running try's log bigger than this is copied less often: every interval x size / this.
_BIG = 8 * 1024 * 1024
# How long a stopping scheduler tries to ship what it has (the final copies above all).
STOP_PATIENCE = 10.0
# Spool files asked about at once, when the leftovers of a stopped scheduler are looked for.
_LEFTOVERS_PER_QUERY = 500


@dataclass
class _Log:
    """A try's log this scheduler ships."""

    try_id: int
    location: str
    spool: Path
    # What another host shipped before this one adopted the try (None: not fetched yet).
    base: bytes | None = b""
    final: bool = False
    leftover: bool = False  # left by a stopped scheduler: shipped unless a final copy exists
    shipped: int = -1  # size of the spool file when its last copy was stored
    due: float = 0.0  # time.monotonic() of its next copy
    failures: int = 0


class NoShipping:
    """Logs stay in local files: nothing to ship."""

    def start(self) -> None:
        pass

    def watch(self, try_id: int, location: str, *, adopted: bool = False) -> None:
        pass

    def finish(self, try_ids: Iterable[int]) -> None:
        pass

    def stop(self, patience: float = STOP_PATIENCE) -> None:
        pass


class LogShipper:
    """Copies the spool files of this scheduler's tries to their URLs. The scheduler's
    thread calls :meth:`watch` and :meth:`finish`, which only take note; the copies are
    made on this shipper's own thread."""

    def __init__(self, remote: RemoteLogs, settings: Settings, db: Database) -> None:
        self.remote = remote
        self.settings = settings
        self.db = db
        self._logs: dict[int, _Log] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._patience = STOP_PATIENCE
        self._trouble: str | None = None
        self._ids = itertools.count(-1, -1)  # of leftovers, whose try ids are not read

    # -- the scheduler's side -------------------------------------------------------------
    def start(self) -> None:
        """Check once that logs can be shipped (ConfigError otherwise), then ship on a
        thread of its own; the first thing it does is ship what a stopped scheduler left."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.remote.check(write=True)  # once per process
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="reflow-log-shipper", daemon=True)
        self._thread.start()

    def watch(self, try_id: int, location: str, *, adopted: bool = False) -> None:
        """Ship the log of a try from now on. An ``adopted`` try whose spool file is not on
        this host gets what its first scheduler shipped kept in front of it."""
        spool = self.settings.log_file(location)
        with self._lock:
            if try_id in self._logs:
                return
            fetch = adopted and not spool.exists()
            self._logs[try_id] = _Log(try_id, location, spool, base=None if fetch else b"")
        self._wake.set()

    def finish(self, try_ids: Iterable[int]) -> None:
        """These tries have ended and their outcome is recorded: ship their logs whole,
        now, then forget them."""
        with self._lock:
            for try_id in try_ids:
                found = self._logs.get(try_id)
                if found is not None:
                    found.final, found.due, found.failures = True, 0.0, 0
        self._wake.set()

    def stop(self, patience: float = STOP_PATIENCE) -> None:
        """Ship what there is (final copies first), waiting ``patience`` s at most."""
        thread = self._thread
        if thread is None:
            return
        self._patience = patience
        self._stopping.set()
        self._wake.set()
        thread.join(patience + 1.0)
        self._thread = None

    # -- the shipper's thread -------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._leftovers()
        except Exception as exc:  # never the end of shipping
            log.warning("cannot look for logs left to ship in %s: %s", self._spool, exc)
        while not self._stopping.is_set():
            self._pass(time.monotonic())
            self._wake.wait(self._sleep())
            self._wake.clear()
        self._flush(time.monotonic() + self._patience)

    @property
    def _spool(self) -> Path:
        return self.settings.spool_path

    def _sleep(self) -> float:
        now = time.monotonic()
        with self._lock:
            dues = [entry.due for entry in self._logs.values()]
        interval = self.settings.logs_ship_interval
        return max(0.05, min([interval, *(due - now for due in dues)]))

    def _pass(self, now: float, *, every: bool = False) -> None:
        """Ship each log that is due (``every``: each one not failing, due or not)."""
        with self._lock:
            due = [e for e in self._logs.values() if every or e.due <= now]
        # Final copies first: they are what a reader waits for to see the whole log.
        for entry in sorted(due, key=lambda e: not e.final):
            if self._stopping.is_set() and not every:
                return
            self._ship(entry)

    def _flush(self, deadline: float) -> None:
        """The scheduler stops: ship every log once more; final copies until ``deadline``."""
        self._pass(time.monotonic(), every=True)
        while time.monotonic() < deadline:
            with self._lock:
                finals = [e for e in self._logs.values() if e.final]
            if not finals:
                return
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            for entry in finals:
                self._ship(entry)
        with self._lock:
            left = sum(1 for e in self._logs.values() if e.final)
        if left:
            log.warning(
                "%d logs of ended tries are not shipped to %s yet: they stay in %s and are "
                "shipped when a scheduler starts on this host again",
                left,
                self.remote.url,
                self._spool,
            )

    def _ship(self, entry: _Log) -> None:
        """Store a copy of one log if it grew (its final copy in any case); on failure,
        try again later with a longer wait."""
        now = time.monotonic()
        with self._lock:
            final = entry.final  # finish() may come meanwhile: this copy is what it was
        try:
            if entry.leftover:
                copy = self.remote.look(entry.location)
                if copy is not None and copy[1].final:  # shipped, then written to again
                    self._forget(entry)
                    _remove(entry.spool, self._spool)
                    return
            if entry.base is None:
                entry.base = self.remote.fetch(entry.location)
            try:
                size = entry.spool.stat().st_size
            except FileNotFoundError:
                size = -1
            if size < 0 and not entry.base:
                # Shipped whole and removed by another shipper (of the scheduler that took
                # the try over on this host, or the leftovers'), or never written.
                if final or entry.shipped >= 0:
                    self._forget(entry)
                return
            if size == entry.shipped and not final:
                with self._lock:
                    entry.due = max(entry.due, now + self.settings.logs_ship_interval)
                return
            if entry.base:
                data = entry.base + (entry.spool.read_bytes() if size >= 0 else b"")
                self.remote.put(entry.location, data, final=final)
            else:
                self.remote.put(entry.location, entry.spool, final=final)
        except Exception as exc:
            self._failed(entry, exc)
            return
        self._succeeded()
        if final:
            self._forget(entry)
            _remove(entry.spool, self._spool)
            return
        with self._lock:
            entry.shipped, entry.failures = size, 0
            if not entry.final:  # else finish() came meanwhile: its copy is due now
                entry.due = now + self.settings.logs_ship_interval * max(1.0, size / _BIG)

    def _forget(self, entry: _Log) -> None:
        with self._lock:
            if self._logs.get(entry.try_id) is entry:
                del self._logs[entry.try_id]

    def _failed(self, entry: _Log, exc: Exception) -> None:
        with self._lock:
            entry.failures += 1
            wait = min(_MAX_BACKOFF, 2.0 ** min(entry.failures, 10))
            entry.due = time.monotonic() + self.settings.logs_ship_interval * wait
        message = one_line(exc)
        if message != self._trouble:
            log.warning(
                "cannot ship try logs to %s (tried again until it works; the tries go on): %s",
                self.remote.url,
                message,
            )
        self._trouble = message

    def _succeeded(self) -> None:
        if self._trouble is not None:
            log.info("try logs are shipped to %s again", self.remote.url)
            self._trouble = None

    def _leftovers(self) -> None:
        """Ship the logs a stopped (or killed) scheduler left in the spool folder after
        their tries ended: those the store says have ended, unless a final copy exists."""
        url = self.remote.url
        found: dict[str, Path] = {}
        for folder, _dirs, files in os.walk(self._spool):
            for name in files:
                if name.startswith("try-") and name.endswith(".log"):
                    path = Path(folder) / name
                    found[f"{url}/{path.relative_to(self._spool).as_posix()}"] = path
        if not found:
            return
        with self._lock:
            watched = {e.location for e in self._logs.values()}
        locations = sorted(found.keys() - watched)
        ended: set[str] = set()
        for i in range(0, len(locations), _LEFTOVERS_PER_QUERY):
            chunk = locations[i : i + _LEFTOVERS_PER_QUERY]
            with self.db.read() as conn:
                ended |= store_tries.ended_try_logs(conn, chunk)
        with self._lock:
            for location in sorted(ended):
                entry = _Log(next(self._ids), location, found[location], final=True, leftover=True)
                self._logs[entry.try_id] = entry
        if ended:
            log.info("shipping %d logs left in %s by a stopped scheduler", len(ended), self._spool)


def _remove(spool: Path, root: Path) -> None:
    """Remove a shipped spool file, and the folders it leaves empty under ``root``."""
    with contextlib.suppress(OSError):
        spool.unlink()
    folder = spool.parent
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def shipper_for(settings: Settings, db: Database) -> LogShipper | NoShipping:
    """The shipper of a scheduler with these settings: nothing to do without a URL."""
    remote = remote_logs(settings)
    return NoShipping() if remote is None else LogShipper(remote, settings, db)
