"""``reflow scheduler --metrics-port``: ``/metrics``, ``/healthz`` and ``/readyz`` of a
scheduler, served by a small HTTP server on a thread of its own. A scrape or a probe never
waits for the tick, nor the tick for them (they read the store on connections of their
own, with no retry).

- ``/healthz`` (liveness): the loop came round within ``scheduler_timeout`` (the silence
  after which other schedulers declare this one dead), or it is still starting, or it is
  waiting out a database outage (restarting it would not help).
- ``/readyz`` (readiness): the scheduler is registered, the database answers, and it still
  holds its lease (no other scheduler declared it dead).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError

from reflow.core.errors import ConfigError, StoreUnavailable
from reflow.scheduler.metrics import StoreGauges
from reflow.store import monitoring

if TYPE_CHECKING:
    from reflow.scheduler.loop import Scheduler

log = logging.getLogger("reflow.scheduler")
# What the server answers for a path and an Accept header: (status, content type, body),
# or None for "not found".
Answer = Callable[[str, str | None], tuple[int, str, bytes] | None]


@dataclass(frozen=True)
class Health:
    """A probe's answer: ``ok`` (HTTP 200, else 503) and one line saying why; ``cause``,
    the error behind a failure, is logged but never served (probes need no login)."""

    ok: bool
    detail: str
    cause: str | None = None

    def body(self) -> bytes:
        status = "ok" if self.ok else "unavailable"
        return json.dumps({"status": status, "detail": self.detail}).encode() + b"\n"


def liveness(loop_at: float | None, now: float, limit: float, outage: bool) -> Health:
    """Is the loop stuck? ``loop_at``: when it last came round, or began (None: it has
    not begun, the scheduler starts up), ``now`` on the same clock, ``outage``: the
    database is unreachable and being waited for."""
    if loop_at is None:
        return Health(True, "starting")
    age = now - loop_at
    if age <= limit:
        return Health(True, f"the loop came round {age:.1f} s ago")
    if outage:
        return Health(True, "waiting for the database to answer again")
    return Health(False, f"the loop has not come round for {age:.0f} s (limit {limit:g} s)")


def readiness(scheduler: Scheduler) -> Health:
    """Registered, the database answers, and the lease is still held."""
    scheduler_id = scheduler.id
    if scheduler_id is None:
        return Health(False, "not registered yet")
    try:
        with scheduler.db.probe() as conn:
            held = monitoring.holds_lease(conn, scheduler_id)
    except (StoreUnavailable, SQLAlchemyError) as exc:
        return Health(False, "the database cannot be read", first_line(exc))
    if not held:
        return Health(
            False, "its lease is lost (it stopped, or another scheduler declared it dead)"
        )
    return Health(True, "registered, and the database answers")


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class Changes:
    """Logs a probe's answer when it changes (not ready, ready again), not at every probe."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._ok: bool | None = None
        self._lock = threading.Lock()

    def note(self, health: Health) -> Health:
        with self._lock:
            before, self._ok = self._ok, health.ok
        if health.ok == before:
            return health
        if not health.ok:
            cause = f" ({health.cause})" if health.cause else ""
            self._log.warning("not ready: %s%s", health.detail, cause)
        elif before is not None:
            self._log.info("ready again")
        return health


def process_collectors(registry: CollectorRegistry) -> None:
    """The process's CPU, memory, file descriptors, Python and GC metrics, in
    ``registry`` (each of reflow's registries is its own, not the global one)."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class ProbeServer:
    """The HTTP server, bound at construction (a bad address or a port in use is one
    :class:`ConfigError` line); :meth:`serve` starts answering for a scheduler."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        server = _Server6 if ":" in host else _Server
        try:
            self._server = server((host.strip("[]"), port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None
        self._changes = Changes(log)

    @property
    def url(self) -> str:
        shown = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    def serve(self, scheduler: Scheduler) -> None:
        """Answer for ``scheduler`` from now on, on a daemon thread."""
        registry = scheduler.metrics.registry
        registry.register(StoreGauges(scheduler.db, pipelines=lambda: scheduler.pipelines))
        process_collectors(registry)
        self._server.answer = lambda path, accept: self._answer(scheduler, path, accept)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="reflow-metrics",
            daemon=True,
        )
        self._thread.start()

    def __enter__(self) -> ProbeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def _answer(
        self, scheduler: Scheduler, path: str, accept: str | None
    ) -> tuple[int, str, bytes] | None:
        if path == "/metrics":
            encoder, content_type = choose_encoder(accept or "")
            return 200, content_type, encoder(scheduler.metrics.registry)
        if path == "/healthz":
            limit = scheduler.settings.scheduler_timeout
            outage = scheduler.db.outage_since is not None
            health = liveness(scheduler.metrics.loop_at, time.monotonic(), limit, outage)
        elif path == "/readyz":
            health = self._changes.note(readiness(scheduler))
        else:
            return None
        return (200 if health.ok else 503), "application/json", health.body()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    answer: Answer | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer: nothing for stderr.
        log.debug("metrics server: a request from %s failed", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def version_string(self) -> str:
        return "reflow"

    def do_GET(self) -> None:
        answer = self.server.answer
        path = self.path.split("?", 1)[0]
        found = answer(path, self.headers.get("Accept")) if answer is not None else None
        if found is None:
            status, content_type, body = 404, "text/plain; charset=utf-8", b"not found\n"
        else:
            status, content_type, body = found
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics server: " + format, *args)
