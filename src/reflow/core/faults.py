"""Named crash points: where a process may die between a decision and its effect.

Each boundary between a write to the metadata database and an action in the world (a
process or pod started, an outcome recorded, a file cleaned up, a migration step) calls
:func:`crash_point` with its name. Normally that does nothing. A fault-injection test arms
one by starting reflow with ``REFLOW_CRASH_AT=<name>`` (``<name>:<n>`` dies at the n-th
hit); the process then kills itself with SIGKILL right there, as a power cut would, after
appending the name to the file ``REFLOW_CRASH_MARK`` (when set) so that the test knows the
crash really happened at that point.
"""

from __future__ import annotations

import os
import signal

ARM_VAR = "REFLOW_CRASH_AT"
MARK_VAR = "REFLOW_CRASH_MARK"

# Every crash point, with what has and has not happened when a process dies there.
CRASH_POINTS: dict[str, str] = {
    "try.queued": "a try is queued in the store; its process or pod was not started",
    "try.launched": "the try's process or pod exists; the store does not know it started",
    "try.running": "the store records the try as running",
    "outcome.seen": "a try ended and its launcher reported it; the outcome is not recorded",
    "outcome.recorded": "the outcome is committed; the launcher has not cleaned up yet",
    "try.cancel_requested": "a stop request is committed; no signal or delete was sent",
    "try.cancel_sent": "the try was signalled (or its pod deleted); its end is not recorded",
    "run.created": "scheduled runs are committed; the next due date is recorded with them",
    "run.admitted": "a run moved to running; none of its task instances was scheduled",
    "notify.routed": "outbox entries became notifications (committed); none was sent",
    "notify.sent": "a notification was delivered; its attempt is not recorded",
    "migration.step": "one schema migration step ran; the schema is not at its head",
}

_armed: tuple[str, int] | None = None
_read = False
_hits = 0


def _arming() -> tuple[str, int] | None:
    """The armed point and on which hit it fires, read from the environment once."""
    global _armed, _read
    if not _read:
        value = os.environ.get(ARM_VAR, "").strip()
        name, _, count = value.partition(":")
        _armed = (name, int(count) if count.isdigit() else 1) if name else None
        _read = True
    return _armed


def crash_point(name: str) -> None:
    """Die here (SIGKILL) when a test armed this point; otherwise do nothing."""
    global _hits
    armed = _arming()
    if armed is None or armed[0] != name:
        return
    _hits += 1
    if _hits < armed[1]:
        return
    if mark := os.environ.get(MARK_VAR):
        with open(mark, "a") as fh:
            fh.write(f"{name} {os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def rearm_for_tests() -> None:
    """Read ``REFLOW_CRASH_AT`` again (in-process tests change it)."""
    global _read, _hits
    _read, _hits = False, 0
