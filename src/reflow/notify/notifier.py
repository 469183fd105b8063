"""The notifier: a scheduler's background thread that routes outbox entries to channels
and delivers them, retrying with backoff. It never runs on the tick's thread, so a slow
or unreachable channel never delays scheduling.

Each pass: (1) route a batch of outbox entries in one short transaction (entries deleted,
notifications written: a crash before the commit leaves the entries for the next pass);
(2) claim due notifications for a lease, send each outside any transaction, and record
each attempt. Crash points: ``notify.routed`` (notifications written, none sent) and
``notify.sent`` (a message delivered, its attempt not recorded: after the lease it is
sent again; receivers tell repeats apart by the delivery number).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from reflow.core.config import NotifySettings
from reflow.core.errors import StoreUnavailable
from reflow.core.faults import crash_point
from reflow.core.masking import Secrets, scrub
from reflow.core.pipeline import Pipeline
from reflow.notify import channels, messages, routing
from reflow.store import outbox
from reflow.store import runs as store_runs
from reflow.store.db import Database
from reflow.store.logs import LocalLog, LogSource
from reflow.store.records import Notification

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class Notifier:
    """Routes and delivers notifications for one scheduler (``sender`` is its id)."""

    def __init__(
        self,
        db: Database,
        settings: NotifySettings,
        pipelines: Callable[[], Mapping[str, Pipeline]],
        sender: Callable[[], int],
        clock: Clock,
        on_attempt: Callable[[str, bool], None] | None = None,
        interval: float = 1.0,
        logs: Callable[[str], LogSource] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.pipelines = pipelines
        self.sender = sender
        self.clock = clock
        self.on_attempt = on_attempt
        self.interval = interval
        # How a try's log is reached (a local file, or a copy shipped to logs_url).
        self.logs = logs or (lambda location: LocalLog(Path(location)))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Long enough for every channel's timeout: a claim outlives its slowest attempt.
        slowest = max((c.timeout for c in settings.channels.values()), default=10.0)
        self.lease = 3 * slowest + 30.0

    # -- the thread -----------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="reflow-notifier", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """Look at the outbox now (the scheduler committed something that may notify)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except (StoreUnavailable, SQLAlchemyError, OSError) as exc:
                log.warning("notifier: %s", exc)
                busy = False
            except Exception:  # the thread must outlive one bad message
                log.exception("notifier: unexpected error")
                busy = False
            if not busy:
                self._wake.wait(self.interval)
                self._wake.clear()

    # -- one pass -------------------------------------------------------------------------
    def run_once(self) -> bool:
        """Route what the outbox holds, then deliver what is due. Returns whether there
        was anything to do."""
        with self.db.read() as conn:
            routable, due = outbox.work_waiting(conn, self.clock())
        routed = self.route(self.clock()) if routable else 0
        delivered = self.deliver(self.clock()) if due or routed else 0
        return routed > 0 or delivered > 0

    def route(self, now: datetime) -> int:
        """Route one batch of outbox entries; returns how many were taken."""
        catalog = self.pipelines()
        # What to route is read and decided outside the write transaction, which only
        # claims the entries (deletes them) and writes the notifications.
        with self.db.read() as conn:
            pending = outbox.take(conn)
        if not pending:
            return 0
        made = []
        for p in pending:
            defined = catalog.get(p.pipeline) if p.pipeline else None
            rules = defined.notify if defined is not None else ()
            for d in routing.route(p.entry.event, p.pipeline, p.context, rules, self.settings):
                made.append((p, d.event.value, d.channel, d.error))

        def work(conn: Connection) -> int:
            outbox.route(conn, [p.entry.id for p in pending], made, now)
            return len(pending)

        taken = self.db.write(work)
        if taken:
            crash_point("notify.routed")
        return taken

    def deliver(self, now: datetime) -> int:
        """Send the due notifications this sender can claim; returns how many."""
        me = self.sender()
        due = self.db.write(lambda c: outbox.claim_due(c, me, now, self.lease))
        for n in due:
            if self._stop.is_set():
                break  # the claims expire; another sender (or the next start) sends them
            self._attempt(n, me)
        return len(due)

    def _attempt(self, n: Notification, me: int) -> None:
        channel = self.settings.channels.get(n.channel)
        began = time.monotonic()
        if channel is None:  # the configuration changed since it was routed
            ok, result = False, f"no channel {n.channel!r} in [reflow.notify.channels]"
        else:
            try:
                message = messages.render(n.event, n.context, self.settings, self._log_tail(n))
                result = channels.send(channel, message, n.id)
                ok = True
            except channels.DeliveryError as exc:
                ok, result = False, str(exc)
        crash_point("notify.sent")
        seconds = time.monotonic() - began
        now = self.clock()
        attempt = n.attempts + 1
        retry_at = None
        if not ok and channel is not None and attempt < self.settings.max_attempts:
            delay = min(
                self.settings.retry_delay * 2 ** (attempt - 1), self.settings.max_retry_delay
            )
            retry_at = now + timedelta(seconds=delay)
        recorded = self.db.write(
            lambda c: outbox.record_attempt(
                c, n.id, me, ok=ok, result=result, seconds=seconds, now=now, retry_at=retry_at
            )
        )
        kind = channel.kind if channel is not None else "unknown"
        if self.on_attempt is not None and recorded:
            self.on_attempt(kind, ok)
        level = logging.INFO if ok else logging.WARNING
        log.log(level, "notification %s (%s) to %s: %s", n.id, n.event, n.channel, result)

    def _log_tail(self, n: Notification) -> str | None:
        """The last lines of the try's log, with its run's secrets masked."""
        lines = self.settings.log_tail_lines
        path = n.context.get("log_path")
        if not lines or not path:
            return None
        try:
            source = self.logs(path)
            size = source.look().size
            text = source.read(max(0, size - 64 * 1024), size).decode("utf-8", "replace")
        except Exception as exc:  # a log out of reach: the message goes without its tail
            log.info("notification %s: no log tail (%s)", n.id, exc)
            return None
        tail = "\n".join(text.splitlines()[-lines:])
        pipeline = self.pipelines().get(n.pipeline or "")
        if pipeline is None:
            return None  # its secrets are not known here: better no tail than a leak
        if n.run is not None:
            secrets = Secrets.of(pipeline.structure(), pipeline.params.secret_names())
            if secrets:
                with self.db.read() as conn:
                    confs = [a.conf for a in store_runs.attempts_of(conn, n.run)]
                tail = scrub(tail, secrets.values(confs))
        return tail or None
