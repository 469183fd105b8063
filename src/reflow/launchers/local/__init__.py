"""The local launcher: each try is a process tree on this machine, watched through pidfds.

A try runs under a tiny ``/bin/sh`` wrapper that first claims the try's id by creating its
pid file exclusively, then records, once the command has ended, its exit status in the
runtime folder. Both files stay until the outcome is recorded (:meth:`release`), so a later
scheduler adopts the try and finds how it ended (design semantics 6); a try never recorded
as started is fenced by claiming its id first, and its wrapper then never runs the command.

Each try runs in a cgroup of its own where the machine allows it, so every descendant is
found whatever it does (setsid, a wiped environment, a double fork); elsewhere, processes
that left the try's tree are found by an environment marker, and the scheduler is their
child subreaper. Cancelling sends SIGTERM to all of them, then SIGKILL after the grace
period; a cancelled try leaves no process behind (semantics 2).
"""

from reflow.launchers.local.launcher import (
    FENCED_DETAIL,
    FENCED_START_DETAIL,
    LOST_DETAIL,
    SCRATCH_VAR,
    LocalLauncher,
)
from reflow.launchers.local.processes import TRY_ID_VAR, TRY_SCOPE_VAR
from reflow.launchers.local.runtime import FENCE

__all__ = [
    "FENCE",
    "FENCED_DETAIL",
    "FENCED_START_DETAIL",
    "LOST_DETAIL",
    "SCRATCH_VAR",
    "TRY_ID_VAR",
    "TRY_SCOPE_VAR",
    "LocalLauncher",
]
