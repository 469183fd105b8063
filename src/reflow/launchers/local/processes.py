"""What is known of a watched try's processes (:class:`_Try`), how they are found (cgroup,
marker, orphans of this subreaper), and signalling them without hitting a reused pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from reflow.core.spec import TryRef
from reflow.launchers.local.runtime import _pid_file, _read_claim, _read_int
from reflow.launchers.local.wrapper import _SH, _WRAPPER

if TYPE_CHECKING:
    from reflow.launchers.local.cgroups import _Cgroups

# Every process of a try inherits these two variables: together they find the try's
# processes even when they left its process tree (setsid + double fork) or when the pid was
# never recorded. The scope (the runtime folder) keeps two projects on one machine, whose
# try ids overlap, from ever touching each other's processes.
TRY_ID_VAR = "REFLOW_TRY_ID"
TRY_SCOPE_VAR = "REFLOW_TRY_SCOPE"

log = logging.getLogger("reflow.launchers.local")

# psutil derives create times from the boot time, which another process may compute a
# little differently; a pid reused within a second of the original's start is not a risk.
_SAME_PROCESS_TOLERANCE = 1.0
# How long poll() may spend making sure a cancelled or adopted try left no process behind
# (only processes stuck in the kernel take that long), and how often it looks again.
_SWEEP_TIMEOUT = 0.5
_SWEEP_STEP = 0.005
# After SIGKILL, a try still alive is killed again this often (it may have forked meanwhile).
_KILL_REPEAT = 1.0
# Wrappers started by any launcher of this process and not reaped yet: never taken for
# orphans (a subreaper must not reap another launcher's children).
_OWN_WRAPPERS: set[int] = set()
_PR_SET_CHILD_SUBREAPER = 36
_subreaper: bool | None = None


@dataclass(eq=False)
class _Try:
    """One watched try. ``proc`` is the wrapper, when known (psutil checks its identity)."""

    try_id: int
    pid: int | None = None
    create_time: float | None = None
    popen: subprocess.Popen[bytes] | None = None
    proc: psutil.Process | None = None
    pidfd: int | None = None
    adopted: bool = False
    # The try's own cgroup, when it has one: every process of the try is in it.
    cgroup: Path | None = None
    # Known to have ended without a process to watch: reported by the next poll().
    gone: bool = False
    # Reported lost with this detail, without signalling anything (another host, fenced).
    lost_detail: str | None = None
    # Its pid file is a fence (or another wrapper's claim): kept at release.
    fenced: bool = False
    # The wrapper's command line: its forked subshell has it too until the command is exec'd.
    cmdline: list[str] | None = None
    kill_at: datetime | None = None
    # False while a cancelled try's command had not started when SIGTERM was sent: the
    # wrapper may have been forking it, and the shell drops a signal caught in that window,
    # so poll() sends the command its SIGTERM once it appears.
    command_termed: bool = True
    killed: bool = False
    next_kill: float = 0.0
    # Processes signalled by cancel(): killed with the try even if they left its group.
    doomed: dict[int, psutil.Process] = field(default_factory=dict)


# -- the wrapper and its process group -------------------------------------------------
def _open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``, or None where pidfds are unavailable (wait() then polls)."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def _has_ended(t: _Try, ready: set[int]) -> bool:
    """Has the wrapper of ``t`` exited? Own children are not reaped here (see _finish)."""
    if t.gone:
        return True
    if t.pidfd is not None:
        return t.try_id in ready
    if t.popen is not None:
        if t.popen.returncode is not None:
            return True
        try:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            return os.waitid(os.P_PID, t.popen.pid, flags) is not None
        except ChildProcessError:
            return True
    return t.proc is None or not _alive(t.proc)


@dataclass(frozen=True)
class Reaped:
    """An own wrapper, reaped: its exit code (negative: the signal that killed it, as
    Popen says) and what it used, if known (it is not when something else reaped it)."""

    code: int
    cpu_seconds: float | None = None
    peak_memory: int | None = None


def _reap(popen: subprocess.Popen[bytes]) -> Reaped:
    """Wait for an own wrapper to be reaped, with its resource usage: the wrapper's own and
    that of every descendant that was waited for by its parent (the whole try, but for a
    process that left its tree: it is counted where it was reaped). The peak memory is the
    largest single process's peak resident set, the kernel's figure for a tree."""
    if popen.returncode is not None:
        return Reaped(popen.returncode)
    try:
        _, status, usage = os.wait4(popen.pid, 0)
    except ChildProcessError:  # reaped elsewhere: its code as Popen knows it
        return Reaped(popen.wait())
    popen.returncode = os.waitstatus_to_exitcode(status)
    return Reaped(
        popen.returncode,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_memory=usage.ru_maxrss * 1024,  # Linux counts it in KiB
    )


def _group_is_ours(t: _Try) -> bool:
    """May the process group ``t.pid`` be signalled without hitting a stranger?"""
    if t.pid is None:
        return False
    if t.popen is not None and t.popen.returncode is None:
        return True  # an unreaped child keeps its pid, hence the group id, ours
    try:
        holder = psutil.Process(t.pid)
    except psutil.NoSuchProcess:
        # Nobody holds the pid: a group of that id can only be the try's leftovers
        # (a group id is never handed out while the group has members).
        return True
    except psutil.Error:
        return False
    return t.create_time is not None and _same_time(holder, t.create_time)


def _signal_group(t: _Try, sig: signal.Signals) -> None:
    if not _group_is_ours(t):
        return
    assert t.pid is not None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(t.pid, sig)


def _descendants(t: _Try) -> list[psutil.Process]:
    if t.proc is None:
        return []
    try:
        return t.proc.children(recursive=True)
    except psutil.Error:
        return []


def _command(t: _Try) -> psutil.Process | None:
    """The try's command, once the wrapper has forked and exec'd it."""
    if t.proc is None or t.cmdline is None:
        return None
    try:
        children = t.proc.children()
    except psutil.Error:
        return None
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.cmdline() != t.cmdline:
                return child
    return None


def _terminate_late_command(t: _Try) -> None:
    """SIGTERM a cancelled try's command that started after the cancel, once."""
    command = _command(t)
    if command is None:
        if t.proc is None or not _alive(t.proc):
            t.command_termed = True  # the wrapper is ending without running it
        return
    t.doomed[command.pid] = command
    _send([command], signal.SIGTERM)
    t.command_termed = True


def _escalate(t: _Try, strays: list[psutil.Process], cgroups: _Cgroups | None) -> None:
    """SIGKILL a cancelled try whose grace period is over, and all it spawned."""
    if t.cgroup is not None and cgroups is not None:
        cgroups.kill(t.cgroup, 0.0)
    else:
        for proc in [*_descendants(t), *strays]:
            t.doomed[proc.pid] = proc
    _signal_group(t, signal.SIGKILL)
    _send(t.doomed.values(), signal.SIGKILL)
    if t.proc is not None:
        _send([t.proc], signal.SIGKILL)
    t.killed = True
    t.next_kill = time.monotonic() + _KILL_REPEAT


# -- finding them: in the try's cgroup, else by its marker -----------------------------
def _find_marked(scope: str, try_ids: set[int]) -> dict[int, list[psutil.Process]]:
    """Live processes carrying the marker of one of ``try_ids`` in this scope."""
    wanted = {str(i): i for i in try_ids}
    found: dict[int, list[psutil.Process]] = {}
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            env = proc.environ()
        except psutil.Error:
            continue  # gone, a zombie, or another user's (cannot be a try of ours)
        try_id = wanted.get(env.get(TRY_ID_VAR, ""))
        if try_id is not None and env.get(TRY_SCOPE_VAR) == scope:
            found.setdefault(try_id, []).append(proc)
    return found


def _has_marker(proc: psutil.Process, try_id: int, scope: str) -> bool:
    try:
        env = proc.environ()
    except psutil.Error:
        return False
    return env.get(TRY_ID_VAR) == str(try_id) and env.get(TRY_SCOPE_VAR) == scope


def _locate(
    ref: TryRef,
    pid: int | None,
    create_time: float | None,
    cgroup: Path | None,
    runtime_dir: Path,
    scope: str,
    cgroups: _Cgroups | None,
) -> psutil.Process | None:
    """The live wrapper of ``ref``, or None if it is gone."""
    if pid is not None and create_time is not None:
        # The external id names exactly one process; another one holding its pid, even
        # one of this try, is not the wrapper whose exit status the handle refers to.
        proc = _process(pid)
        if proc is None or not _same_time(proc, create_time) or not _alive(proc):
            return None
        return proc
    for candidate in (ref.pid, _read_int(_pid_file(runtime_dir, ref.try_id))):
        if candidate is None:
            continue
        proc = _process(candidate)
        if proc is not None and _alive(proc) and _has_marker(proc, ref.try_id, scope):
            return proc
    return _find_wrapper(ref.try_id, cgroup, scope, cgroups)


def _find_wrapper(
    try_id: int, cgroup: Path | None, scope: str, cgroups: _Cgroups | None
) -> psutil.Process | None:
    """The live wrapper of a try (else its oldest live process), found by its cgroup or,
    without one, by its marker; None if nothing of the try runs."""
    if cgroup is not None and cgroups is not None:
        procs = [p for pid in cgroups.members(cgroup) if (p := _process(pid))]
    else:
        procs = _find_marked(scope, {try_id}).get(try_id, [])
    procs = [p for p in procs if _alive(p)]
    if not procs:
        return None
    # The wrapper runs the wrapper script; it is the session leader whose parent is not
    # of the try, and the oldest.
    return min(procs, key=lambda p: _wrapper_rank(p, try_id, scope))


def _wrapper_rank(proc: psutil.Process, try_id: int, scope: str) -> tuple[bool, bool, bool, float]:
    try:
        wrapper = proc.cmdline()[:3] == [_SH, "-c", _WRAPPER]
        parent = proc.parent()
        leader = os.getsid(proc.pid) == proc.pid
        started = proc.create_time()
    except (psutil.Error, OSError):
        return (True, True, True, float("inf"))
    parent_marked = parent is not None and _has_marker(parent, try_id, scope)
    return (not wrapper, parent_marked, not leader, started)


# -- killing what is left of tries that are over ---------------------------------------
def _make_sure_dead(scope: str, try_ids: set[int]) -> None:
    """Kill what is left of these reported tries until a scan finds nothing alive.

    One scan is not enough: a process may fork while it is being killed, and a killed
    process takes a moment to die. Once reported, a try may be retried at once, and the
    retry must not overlap with remains of this one.
    """
    deadline = time.monotonic() + _SWEEP_TIMEOUT
    while left := [p for procs in _find_marked(scope, try_ids).values() for p in procs]:
        if time.monotonic() >= deadline:
            pids = ", ".join(str(p.pid) for p in left)
            log.warning("processes of tries %s survive SIGKILL: %s", sorted(try_ids), pids)
            return
        _send(left, signal.SIGKILL)
        time.sleep(_SWEEP_STEP)


def _stop_leftovers(
    try_ids: list[int], runtime_dir: Path, scope: str, cgroups: _Cgroups | None
) -> None:
    """Kill the processes of tries that are over (not live) but still run."""
    marked: set[int] = set()
    for try_id in try_ids:
        cgroup = cgroups.of(try_id) if cgroups is not None else None
        if cgroup is not None and cgroups is not None and cgroup.is_dir():
            if cgroups.members(cgroup):
                log.warning("killing the processes of try %s: it is not live", try_id)
                cgroups.kill(cgroup, _SWEEP_TIMEOUT)
            continue
        claim = _read_claim(runtime_dir, try_id)
        proc = _process(int(claim)) if claim and claim.isdigit() else None
        if proc is not None and _alive(proc) and _has_marker(proc, try_id, scope):
            log.warning("killing the processes of try %s: it is not live", try_id)
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            marked.add(try_id)
    if marked:
        for procs in _find_marked(scope, marked).values():
            _send(procs, signal.SIGKILL)
        _make_sure_dead(scope, marked)


# -- orphans ---------------------------------------------------------------------------
def _become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants (once per process), so that
    an orphan of a try stays its child instead of going to init. False where impossible."""
    global _subreaper
    if _subreaper is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        except (OSError, AttributeError):
            _subreaper = False
    return _subreaper


def _orphans() -> list[psutil.Process]:
    """Live processes re-parented to this one (a child subreaper) after their parent
    died; the dead ones are reaped. Children in this process's own session (started by
    it, not by a try) and wrappers are never orphans."""
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return []
    session = os.getsid(0)
    found = []
    for child in children:
        if child.pid in _OWN_WRAPPERS:
            continue
        try:
            if os.getsid(child.pid) == session:
                continue
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
                continue
        except (psutil.Error, OSError):
            continue
        found.append(child)
    return found


def _orphans_of(
    tries: list[_Try], watched: Iterable[_Try], suspects: dict[int, psutil.Process]
) -> dict[int, list[psutil.Process]]:
    """The orphans that can only be of one of ``tries`` (being stopped), by try id.

    An orphan that wiped its environment carries no marker: it is of a try started by
    this launcher before it was created, and is taken for the latest such try of
    ``tries`` when no other watched try started before it; else it is set aside, and
    killed when those tries have ended.
    """
    orphans = _orphans()
    if not orphans:
        return {}
    stopping = {t.try_id for t in tries}
    owners = [t for t in tries if t.popen is not None and t.create_time is not None]
    others = [
        t.create_time for t in watched if t.try_id not in stopping and t.create_time is not None
    ]
    found: dict[int, list[psutil.Process]] = {}
    for proc in orphans:
        try:
            if TRY_SCOPE_VAR in proc.environ():
                continue  # a marked process is found by its marker
            created = proc.create_time() + _SAME_PROCESS_TOLERANCE
        except psutil.Error:
            continue
        if any(started <= created for started in others):
            suspects[proc.pid] = proc
            continue
        candidates = [t for t in owners if t.create_time is not None and t.create_time <= created]
        if candidates:
            owner = max(candidates, key=lambda t: t.create_time or 0.0)
            # With its descendants, collected now: once it dies they are orphans too.
            with contextlib.suppress(psutil.Error):
                found.setdefault(owner.try_id, []).extend([proc, *proc.children(recursive=True)])
    return found


def _kill_unowned_suspects(watched: Iterable[_Try], suspects: dict[int, psutil.Process]) -> None:
    """Kill the orphans set aside by :func:`_orphans_of` that no watched try can own
    any more (every try started before them has ended)."""
    running = [t.create_time for t in watched if t.create_time is not None]
    doomed = []
    for pid, proc in list(suspects.items()):
        try:
            created = proc.create_time() + _SAME_PROCESS_TOLERANCE
            if not _alive(proc):
                del suspects[pid]
            elif not any(started <= created for started in running):
                doomed += [proc, *proc.children(recursive=True)]
                del suspects[pid]
        except psutil.Error:
            del suspects[pid]
    _send(doomed, signal.SIGKILL)


# -- one process -----------------------------------------------------------------------
def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _same_time(proc: psutil.Process, create_time: float) -> bool:
    try:
        return abs(proc.create_time() - create_time) <= _SAME_PROCESS_TOLERANCE
    except psutil.Error:
        return False


def _is_running(proc: psutil.Process) -> bool:
    """Is this very process (not a reuse of its pid) still there, possibly as a zombie?"""
    try:
        return proc.is_running()
    except psutil.Error:
        return False


def _alive(proc: psutil.Process) -> bool:
    """Is this very process still running (a zombie has ended)?"""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _in_group(pid: int, group: int | None) -> bool:
    """Is process ``pid`` a member of process group ``group``?"""
    if group is None:
        return False
    try:
        return os.getpgid(pid) == group
    except OSError:
        return False


def _send(procs: Iterable[psutil.Process], sig: signal.Signals) -> None:
    """Signal each process that is still the one it was (psutil checks pid reuse)."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)
