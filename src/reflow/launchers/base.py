"""The launcher interface: where a try runs. A new launcher is one file implementing this."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from datetime import datetime

from reflow.core.spec import Handle, Outcome, TryRef, TrySpec


class Launcher(ABC):
    """Starts, watches, stops and adopts tries. Never touches the metadata store.

    All methods are called from the scheduler's single thread.
    """

    name: str

    @abstractmethod
    def start(self, spec: TrySpec) -> Handle:
        """Start the try and return at once; it is watched until :meth:`poll` reports it.

        Raises ``Fenced`` when another scheduler fenced this try (see :meth:`adopt`): it
        must never start then. Other errors fail the try, never the scheduler.
        """

    @abstractmethod
    def poll(self) -> list[Outcome]:
        """Return the outcome of every watched try that ended since the last call.

        Also carries out pending escalations (SIGKILL after the grace period). Whatever
        proves the outcome (an exit-status file, a finished pod) is kept until
        :meth:`release`: a scheduler that dies before recording the outcome leaves it for
        the next one to find on adoption, so a finished try is never run again.
        """

    def release(self, try_ids: Iterable[int]) -> None:  # noqa: B027 - optional hook
        """The outcomes of these reported tries are recorded: clean up what proved them
        (exit-status files, finished pods under the cleanup policy)."""

    @abstractmethod
    def cancel(self, try_id: int, grace: float) -> None:
        """Ask a watched try to stop: terminate now, kill after ``grace`` seconds.

        Returns at once; the outcome arrives through :meth:`poll`. Unknown ids are ignored.
        """

    @abstractmethod
    def adopt(self, ref: TryRef) -> bool:
        """Watch a try started by another (dead) scheduler.

        Returns True if it is still alive. Either way it is watched from now on, so a try
        that already ended is reported by the next :meth:`poll` (with its exit status if it
        left one, else with reason ``lost``).

        A try never recorded as started (``ref.external_id`` is None: its scheduler died or
        was paused between queueing it and recording the start) is looked up by its
        identity (the try id). If nothing is found, the launcher *fences* it before
        reporting it lost: a later :meth:`start` of that try, by a scheduler that resumes
        from a pause, raises ``Fenced`` instead of running it next to its retry.
        """

    def running_since(self, try_id: int) -> datetime | None:
        """When a watched try's process or container began to run, if that is later than
        the moment :meth:`start` returned (a pod's container starts after its scheduling
        and image pull); a try not running yet gives now (it starts no earlier). None: no
        later start known, the recorded one stands. A task's timeout counts from this."""
        return None

    def wait(self, timeout: float) -> None:
        """Block until a watched try may have ended, or ``timeout`` seconds passed."""
        import time

        time.sleep(max(0.0, timeout))

    @abstractmethod
    def watched(self) -> set[int]:
        """Ids of the tries this launcher is watching."""

    def sweep(self, live: Callable[[], set[int]]) -> int:
        """Remove what this launcher left behind for tries that are no longer live (ids
        from ``live()``, read after the launcher looked). Returns how many it removed."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release resources; watched tries keep running (a later scheduler adopts them)."""
