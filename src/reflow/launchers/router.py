"""Several launchers behind one: each try goes to the launcher its task is configured for
(``TrySpec.launcher``), and adoption goes to the launcher that started the try."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

from reflow.core.errors import ConfigError, ReflowError
from reflow.core.spec import Handle, Outcome, TryRef, TrySpec
from reflow.core.states import FailureReason
from reflow.launchers.base import Launcher

log = logging.getLogger("reflow.launchers")
# While tries run on several launchers, each is waited on in turn for this long.
_SLICE = 0.05


class Launchers(Launcher):
    """Routes to named launchers. Those in ``eager`` (the ones the configuration routes
    tasks to) are made at once, so that their leftovers are swept and their configuration
    checked from the start; others on first use (a project that never runs a pod never
    loads the Kubernetes client)."""

    name = "router"

    def __init__(
        self, factories: Mapping[str, Callable[[], Launcher]], eager: Iterable[str] = ()
    ) -> None:
        self._factories = dict(factories)
        self._made: dict[str, Launcher] = {}
        self._unreachable: list[Outcome] = []
        for name in eager:
            self.get(name)

    def get(self, name: str) -> Launcher:
        launcher = self._made.get(name)
        if launcher is None:
            factory = self._factories.get(name)
            if factory is None:
                known = ", ".join(sorted(self._factories))
                raise ConfigError(f"unknown launcher {name!r} (known: {known})")
            launcher = self._made[name] = factory()
        return launcher

    def start(self, spec: TrySpec) -> Handle:
        return self.get(spec.launcher).start(spec)

    def poll(self) -> list[Outcome]:
        out, self._unreachable = self._unreachable, []
        for launcher in list(self._made.values()):
            out.extend(launcher.poll())
        return out

    def release(self, try_ids: Iterable[int]) -> None:
        wanted = list(try_ids)
        for launcher in self._made.values():
            launcher.release(wanted)

    def cancel(self, try_id: int, grace: float) -> None:
        for launcher in self._made.values():
            if try_id in launcher.watched():
                launcher.cancel(try_id, grace)

    def running_since(self, try_id: int) -> datetime | None:
        for launcher in self._made.values():
            if try_id in launcher.watched():
                return launcher.running_since(try_id)
        return None

    def adopt(self, ref: TryRef) -> bool:
        try:
            launcher = self.get(ref.launcher)
        except ReflowError as exc:
            # It cannot be watched from here: reported lost (the try is retried).
            log.warning("cannot adopt try %s: %s", ref.try_id, exc)
            self._unreachable.append(
                Outcome(ref.try_id, None, FailureReason.LOST, datetime.now(UTC), str(exc))
            )
            return False
        return launcher.adopt(ref)

    def wait(self, timeout: float) -> None:
        if self._unreachable:
            return
        busy = [launcher for launcher in self._made.values() if launcher.watched()]
        if len(busy) <= 1:
            target = busy[0] if busy else next(iter(self._made.values()), None)
            if target is None:
                time.sleep(max(0.0, timeout))
            else:
                target.wait(timeout)
            return
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            for launcher in busy:
                step = min(_SLICE, left)
                began = time.monotonic()
                launcher.wait(step)
                if time.monotonic() - began < step * 0.9:  # woken: something happened
                    return

    def watched(self) -> set[int]:
        ids = {o.try_id for o in self._unreachable}
        for launcher in self._made.values():
            ids |= launcher.watched()
        return ids

    def sweep(self, live: Callable[[], set[int]]) -> int:
        return sum(launcher.sweep(live) for launcher in self._made.values())

    def close(self) -> None:
        for launcher in self._made.values():
            launcher.close()
