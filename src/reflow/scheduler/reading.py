"""Reading the pipelines folder on a thread of its own, so that a slow or huge pipeline
file never delays a tick: the tick only takes up what was read, when it is ready."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from reflow.core.discovery import Catalog

log = logging.getLogger("reflow.scheduler")


class FolderReader:
    """Re-reads the folder of ``catalog`` (a private copy of it) every ``interval()`` s, or
    at once when asked, and hands each changed result over as a snapshot: the caller's
    catalog is never changed under it."""

    def __init__(self, catalog: Catalog, interval: Callable[[], float]) -> None:
        self._catalog = catalog.snapshot()
        self.interval = interval
        self._reading = threading.Lock()  # one read of the folder at a time
        self._handover = threading.Lock()  # guards _ready, never held while reading
        self._ready: Catalog | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> Catalog | None:
        """Read the folder now, on the caller's thread: a snapshot when anything changed
        since the last snapshot handed over (read by either thread), else None."""
        with self._reading:
            changed = self._catalog.refresh()
            with self._handover:
                if changed:
                    self._ready = self._catalog.snapshot()
                fresh, self._ready = self._ready, None
            return fresh

    def take(self) -> Catalog | None:
        """What the thread read since the last take, if anything changed."""
        with self._handover:
            fresh, self._ready = self._ready, None
            return fresh

    def ask(self) -> None:
        """Read again soon (a file is known to have changed)."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._loop, name="reflow-pipelines-reader", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            # Briefly: a thread stuck in a pipeline file's import must not hold up a stop.
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval())
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                with self._reading:
                    if self._catalog.refresh():
                        fresh = self._catalog.snapshot()
                        with self._handover:
                            self._ready = fresh
            except Exception:  # reading must go on; problems in files are not raised
                log.exception("reading the pipelines folder failed")
