"""The pod watch: what is known of each watched try's pod, kept up to date by one thread
that lists then watches this instance's pods and wakes the launcher when one changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflow.core.spec import TryRef
from reflow.core.states import FailureReason
from reflow.launchers.kubernetes.api import NamespaceApi
from reflow.launchers.kubernetes.follower import _LogFollower
from reflow.launchers.kubernetes.manifest import TRY_ID
from reflow.launchers.kubernetes.outcomes import container_state

log = logging.getLogger("reflow.kubernetes")

_WATCH_SECONDS = 30


@dataclass
class _Pod:
    """A watched try and what is known of its pod."""

    try_id: int
    name: str
    log_path: Path
    raw: dict[str, Any] | None = None  # the latest pod object seen (API JSON)
    gone: bool = False  # deleted, or never found
    created: float = field(default_factory=time.monotonic)
    terminal_since: float | None = None
    cancelled: bool = False
    delete_grace: float | None = None  # a deletion to (re)send
    stop_by: float | None = None  # a cancelled pod still there then is stuck terminating
    stop_wait: float = 0.0  # the grace period and margin that stop_by allows
    known: bool = True  # False while the pod's name is not known (looked up by labels)
    outside: bool = False  # not under this instance's selector: read, not watched
    ref: TryRef | None = None  # what the store said of an adopted try
    failure: tuple[FailureReason, str] | None = None  # decided by reflow (never started)
    follower: _LogFollower | None = None
    last_lookup: float = 0.0
    fenced: bool = False  # its fence was laid (a try looked up by its labels)


class PodWatch:
    """Keeps the latest object of every pod of this instance, and of each registered try's.

    ``tries`` is the launcher's, updated here under ``lock``; ``wake`` is set when a pod
    changes, and :meth:`run` returns once ``stop`` is set."""

    def __init__(
        self,
        api: NamespaceApi,
        tries: dict[int, _Pod],
        lock: threading.Lock,
        wake: threading.Event,
        stop: threading.Event,
    ) -> None:
        self.api = api
        self.tries = tries
        self.lock = lock
        self.wake = wake
        self.stop = stop
        # The latest object of every pod the watch saw, by try id: (pod, deleted, when).
        self.seen: dict[int, tuple[dict[str, Any], bool, float]] = {}

    def run(self) -> None:
        """Keep the latest object of every watched try's pod, from a list then a watch;
        a 410 (history expired) or a lost connection starts again from a fresh list."""
        from kubernetes import watch as watch_module

        watch: Any = watch_module

        backoff = 0.5
        while not self.stop.is_set():
            try:
                pods, version = self.api.list_pods()
                self._take_list(pods, version)
                stream: Any = watch.Watch()
                for event in stream.stream(
                    self.api.core.list_namespaced_pod,
                    self.api.namespace,
                    label_selector=self.api.selector,
                    resource_version=version,
                    timeout_seconds=_WATCH_SECONDS,
                    allow_watch_bookmarks=True,
                    _request_timeout=(5, _WATCH_SECONDS + 10),
                ):
                    if self.stop.is_set():
                        stream.stop()
                        break
                    backoff = 0.5
                    self._take_event(event["type"], event.get("raw_object") or {})
            except Exception as exc:
                if self.stop.is_set():
                    return
                log.debug("pod watch restarts after: %s", exc)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _take_list(self, pods: list[dict[str, Any]], version: str) -> None:
        by_id = {i: pod for pod in pods if (i := _try_id(pod)) is not None}
        with self.lock:
            self.seen = {i: (pod, False, time.monotonic()) for i, pod in by_id.items()}
            for try_id, t in self.tries.items():
                if not t.known or t.outside:
                    continue
                pod = by_id.get(try_id)
                if pod is not None and pod["metadata"].get("name") == t.name:
                    t.raw = _newer(t.raw, pod)
                elif t.raw is not None and not _newer_than(t.raw, version):
                    t.gone = True  # it was seen, and is gone now
        self.wake.set()

    def _take_event(self, kind: str, pod: dict[str, Any]) -> None:
        try_id = _try_id(pod)
        if try_id is None or kind not in ("ADDED", "MODIFIED", "DELETED"):
            return
        deleted = kind == "DELETED"
        with self.lock:
            # Kept for a try registered just after this event (its pod was created by
            # this scheduler and the watch was quicker than the create's answer).
            self.seen[try_id] = (pod, deleted, time.monotonic())
            t = self.tries.get(try_id)
            if t is None or not t.known or pod.get("metadata", {}).get("name") != t.name:
                return
            t.raw = _newer(t.raw, pod) if not deleted else pod
            t.gone = t.gone or deleted
        if t.follower is not None:
            t.follower.nudge.set()
        self.wake.set()

    def register(self, t: _Pod) -> None:
        """Watch ``t``, with what the watch already saw of its pod."""
        with self.lock:
            seen = self.seen.get(t.try_id)
            if t.known and seen is not None and seen[0]["metadata"].get("name") == t.name:
                t.raw = seen[0] if seen[1] else _newer(t.raw, seen[0])
                t.gone = t.gone or seen[1]
            self.tries[t.try_id] = t

    def forget_deleted(self) -> None:
        """Drop deleted pods the watch saw a while ago (live ones go at the next list)."""
        limit = time.monotonic() - 60
        with self.lock:
            old = [i for i, (_, deleted, at) in self.seen.items() if deleted and at < limit]
            for try_id in old:
                del self.seen[try_id]

    def container_state(self, t: _Pod) -> str:
        """``waiting``, ``running``, ``terminated`` or ``gone``, for the log follower."""
        with self.lock:
            raw, gone = t.raw, t.gone
        return container_state(raw, gone)


def _try_id(pod: Mapping[str, Any] | None) -> int | None:
    value = ((pod or {}).get("metadata") or {}).get("labels", {}).get(TRY_ID)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _newer_than(pod: Mapping[str, Any], version: str) -> bool:
    """Is ``pod`` a later version than a list at ``version`` (the list predates it)?"""
    try:
        return int(pod["metadata"]["resourceVersion"]) > int(version)
    except (KeyError, TypeError, ValueError):
        return False


def _newer(mine: dict[str, Any] | None, other: dict[str, Any]) -> dict[str, Any]:
    """The later of two versions of one pod (resource versions compare as integers on
    every API server in use; when they do not, the one just received wins)."""
    if mine is None:
        return other
    try:
        a = int(mine["metadata"]["resourceVersion"])
        b = int(other["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return other
    return mine if a > b else other
