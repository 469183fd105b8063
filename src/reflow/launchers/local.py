"""The local launcher: each try is a process tree on this machine, watched through pidfds.

A try runs under a tiny ``/bin/sh`` wrapper that records its pid and, once the command has
ended, its exit status in the runtime folder, so the outcome survives a crash of the
scheduler and a later scheduler can adopt the try (design semantics 6). Cancelling sends
SIGTERM to the try's process group and to every descendant, then SIGKILL after the grace
period; a cancelled try leaves no process behind (semantics 2).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from reflow.core.errors import InvalidInput
from reflow.core.spec import Handle, Outcome, TryRef, TrySpec
from reflow.core.states import FailureReason
from reflow.launchers.base import Launcher

# Every process of a try inherits these two variables: together they find the try's
# processes even when they left its process tree (setsid + double fork) or when the pid was
# never recorded. The scope (the runtime folder) keeps two projects on one machine, whose
# try ids overlap, from ever touching each other's processes.
TRY_ID_VAR = "REFLOW_TRY_ID"
TRY_SCOPE_VAR = "REFLOW_TRY_SCOPE"
SCRATCH_VAR = "REFLOW_SCRATCH"

LOST_DETAIL = "process vanished without an exit status"

log = logging.getLogger("reflow.launchers.local")

_SH = "/bin/sh"
# $1 pid file, $2 exit file, $3 mv, then the argv. Plain sh keeps the per-try overhead to a
# fork + exec or two. SIGTERM is caught (not ignored: an ignored signal would stay ignored
# in the command) so that the wrapper outlives the command it shares a process group with
# and records its status; a TERM that arrives before the command starts skips it (one that
# arrives while the command is being forked is lost: see _Try.command_termed). The
# command runs under `exec` in a subshell so that an argv naming a shell builtin (`exit`,
# `exec`, `cd`) runs the program of that name, as it would without the wrapper. The
# wrapper's own messages ("Terminated") go to /dev/null: the log holds the command's output.
_WRAPPER = """\
t=
trap 't=1' TERM
exec 3>&2 2>/dev/null
echo "$$" >"$1"
e=$2 mv=$3
shift 3
if [ -z "$t" ]; then (exec "$@" 2>&3 3>&-); c=$?; else c=143; fi
echo "$c" >"$e.tmp" && "$mv" -f "$e.tmp" "$e"
exit "$c"
"""

# psutil derives create times from the boot time, which another process may compute a
# little differently; a pid reused within a second of the original's start is not a risk.
_SAME_PROCESS_TOLERANCE = 1.0
# Without pidfds, wait() checks the watched processes this often.
_FALLBACK_STEP = 0.02
# After SIGKILL, a try still alive is killed again this often (it may have forked meanwhile).
_KILL_REPEAT = 1.0
# How long poll() may spend making sure a cancelled or adopted try left no process behind
# (only processes stuck in the kernel take that long), and how often it looks again.
_SWEEP_TIMEOUT = 0.5
_SWEEP_STEP = 0.005


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
    # Known to have ended without a process to watch: reported by the next poll().
    gone: bool = False
    foreign_detail: str | None = None
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


class LocalLauncher(Launcher):
    """Runs each try as a process tree on this machine.

    ``runtime_dir`` holds one ``<try_id>.pid`` and ``<try_id>.exit`` file per live try; it
    must be the same folder for every scheduler of a project, so that one can adopt the
    tries of another. ``clock`` stamps outcomes and times the SIGKILL escalation.
    """

    name = "local"

    def __init__(self, runtime_dir: Path, clock: Callable[[], datetime] = _utc_now) -> None:
        self.runtime_dir = Path(runtime_dir).resolve()
        self._clock = clock
        self._scope = str(self.runtime_dir)
        self._host = socket.gethostname()
        # Resolved once, with the scheduler's PATH: a try's env may set a PATH without it.
        self._mv = shutil.which("mv") or "/bin/mv"
        self._tries: dict[int, _Try] = {}
        self._selector: selectors.BaseSelector | None = selectors.DefaultSelector()
        self._runtime_ready = False

    # -- files -------------------------------------------------------------------------
    def _scratch(self, try_id: int) -> Path:
        return self.runtime_dir / "scratch" / str(try_id)

    def _pid_file(self, try_id: int) -> Path:
        return self.runtime_dir / f"{try_id}.pid"

    def _exit_file(self, try_id: int) -> Path:
        return self.runtime_dir / f"{try_id}.exit"

    def _read_int(self, path: Path) -> int | None:
        """The integer in ``path``, or None if it is missing or not (yet) an integer."""
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _remove_files(self, try_id: int) -> None:
        for path in (
            self._pid_file(try_id),
            self._exit_file(try_id),
            self.runtime_dir / f"{try_id}.exit.tmp",
        ):
            with contextlib.suppress(OSError):
                path.unlink()

    # -- the interface -----------------------------------------------------------------
    def start(self, spec: TrySpec) -> Handle:
        """Start ``spec.argv`` in a new session, output appended to ``spec.log_path``.

        Raises ``InvalidInput`` for an empty argv, ``OSError`` when the log, the cwd or the
        runtime folder cannot be used; nothing is left running then.
        """
        if self._selector is None:
            raise RuntimeError("launcher is closed")
        if spec.try_id in self._tries:
            raise ValueError(f"try {spec.try_id} is already watched")
        if not spec.argv:
            raise InvalidInput(f"try {spec.try_id} has an empty command")
        if not self._runtime_ready:
            self.runtime_dir.mkdir(parents=True, exist_ok=True)
            self._runtime_ready = True
        # Files left by a try of the same id (an earlier, deleted database) would mislead
        # an adoption.
        self._remove_files(spec.try_id)
        log_path = Path(spec.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **spec.env,
            TRY_ID_VAR: str(spec.try_id),
            TRY_SCOPE_VAR: self._scope,
        }
        if spec.scratch is not None:
            # The try's scratch space: a temporary folder, removed once the try ended.
            scratch = self._scratch(spec.try_id)
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            env[SCRATCH_VAR] = str(scratch)
        argv = [
            _SH,
            "-c",
            _WRAPPER,
            "reflow",
            str(self._pid_file(spec.try_id)),
            str(self._exit_file(spec.try_id)),
            self._mv,
            *spec.argv,
        ]
        with log_path.open("ab") as output:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=spec.cwd,
                env=env,
                start_new_session=True,
            )
        # Unreaped, the wrapper cannot vanish before these two calls.
        proc = psutil.Process(popen.pid)
        create_time = proc.create_time()
        watch = _Try(
            spec.try_id,
            pid=popen.pid,
            create_time=create_time,
            popen=popen,
            proc=proc,
            pidfd=self._open_pidfd(popen.pid),
            cmdline=argv,
        )
        self._watch(watch)
        return Handle(
            spec.try_id, popen.pid, self._host, external_id=f"local:{popen.pid}:{create_time}"
        )

    def poll(self) -> list[Outcome]:
        """Report every watched try that ended (once each); escalate overdue cancels."""
        if not self._tries or self._selector is None:
            return []
        now = self._clock()
        ready = {int(key.data) for key, _ in self._selector.select(0)}
        ended = [t for t in self._tries.values() if self._has_ended(t, ready)]
        ended_ids = {t.try_id for t in ended}
        overdue = [
            t
            for t in self._tries.values()
            if t.try_id not in ended_ids
            and t.kill_at is not None
            and now >= t.kill_at
            and time.monotonic() >= t.next_kill
        ]
        # Processes that left the try's tree are found by their marker, in one pass over
        # the process table for all the tries that need it (it reads every environ).
        sweep = {t.try_id for t in overdue}
        sweep |= {
            t.try_id
            for t in ended
            if (t.kill_at is not None or t.adopted) and t.foreign_detail is None
        }
        strays = self._find_marked(sweep) if sweep else {}
        for t in overdue:
            self._escalate(t, strays.get(t.try_id, []))
        for t in self._tries.values():
            if not t.command_termed and t.try_id not in ended_ids and not t.killed:
                self._terminate_late_command(t)
        reported = [self._finish(t, now, strays.get(t.try_id, [])) for t in ended]
        for t in ended:
            shutil.rmtree(self._scratch(t.try_id), ignore_errors=True)
        if swept := sweep - {t.try_id for t in overdue}:
            self._make_sure_dead(swept)
        return reported

    def cancel(self, try_id: int, grace: float) -> None:
        """SIGTERM the try's process group and descendants now; SIGKILL once ``grace`` passed.

        A second cancel only brings the deadline forward. Unknown ids are ignored.
        """
        t = self._tries.get(try_id)
        if t is None:
            return
        deadline = self._clock() + _seconds(grace)
        if t.kill_at is not None:
            t.kill_at = min(t.kill_at, deadline)
            return
        t.kill_at = deadline
        if t.gone:
            return
        # Collected before signalling: once its parent dies a process is re-parented and
        # can no longer be found as a descendant (a child that called setsid would escape).
        for proc in self._descendants(t):
            t.doomed[proc.pid] = proc
        t.command_termed = t.cmdline is None or self._command(t) is not None
        self._signal_group(t, signal.SIGTERM)
        _send(t.doomed.values(), signal.SIGTERM)

    def adopt(self, ref: TryRef) -> bool:
        """Watch a try started by another scheduler; True if its process is still alive.

        The process is ``ref.external_id`` (pid and create time) when given, else
        ``ref.pid`` or the pid file, else a process carrying the try's marker. A try started
        on another host cannot be watched from here and is reported ``lost``.
        """
        if self._selector is None:
            raise RuntimeError("launcher is closed")
        known = self._tries.get(ref.try_id)
        if known is not None:  # already watched (started here or adopted before)
            return not known.gone and known.proc is not None and _alive(known.proc)
        t = _Try(ref.try_id, adopted=True)
        if ref.host is not None and ref.host != self._host:
            t.gone = True
            t.foreign_detail = (
                f"started on host {ref.host}; a scheduler on {self._host} cannot watch it"
            )
            self._tries[ref.try_id] = t
            return False
        pid, create_time = _parse_external_id(ref.external_id)
        t.pid, t.create_time = pid or ref.pid, create_time
        proc = self._locate(ref, pid, create_time)
        if proc is not None:
            t.proc, t.pid = proc, proc.pid
            with contextlib.suppress(psutil.Error):
                t.create_time = proc.create_time()
                t.cmdline = proc.cmdline()
            t.pidfd = self._open_pidfd(proc.pid)
            # The pidfd pins whatever process holds the pid now: if ours ended and the pid
            # was reused in between, psutil's identity check says so.
            if not _is_running(proc):
                self._close_pidfd(t)
                t.proc = None
        if t.proc is None:
            t.gone = True
        self._watch(t)
        return t.proc is not None and _alive(t.proc)

    def wait(self, timeout: float) -> None:
        """Return as soon as a watched try ends, an escalation is due, or after ``timeout``."""
        if timeout <= 0:
            return
        if not self._tries or self._selector is None:
            time.sleep(timeout)
            return
        now = self._clock()
        for t in self._tries.values():
            if t.gone:
                return
            if not t.command_termed:
                timeout = min(timeout, _FALLBACK_STEP)
            if t.kill_at is not None:
                due = (
                    t.next_kill - time.monotonic()
                    if t.killed
                    else (t.kill_at - now).total_seconds()
                )
                timeout = min(timeout, max(0.0, due))
        if timeout <= 0:
            return
        unwatchable = [t for t in self._tries.values() if t.pidfd is None]
        if not unwatchable:
            self._selector.select(timeout)
            return
        end = time.monotonic() + timeout
        while (remaining := end - time.monotonic()) > 0:
            if self._selector.select(min(_FALLBACK_STEP, remaining)):
                return
            if any(self._has_ended(t, set()) for t in unwatchable):
                return

    def watched(self) -> set[int]:
        """Ids of the tries watched: started or adopted, not yet reported by poll()."""
        return set(self._tries)

    def close(self) -> None:
        """Stop watching; the processes keep running for a later scheduler to adopt."""
        for t in self._tries.values():
            self._close_pidfd(t)
        self._tries.clear()
        if self._selector is not None:
            self._selector.close()
            self._selector = None

    # -- watching ----------------------------------------------------------------------
    def _open_pidfd(self, pid: int) -> int | None:
        """A pidfd for ``pid``, or None where pidfds are unavailable (wait() then polls)."""
        try:
            return os.pidfd_open(pid)
        except (OSError, AttributeError):
            return None

    def _watch(self, t: _Try) -> None:
        assert self._selector is not None
        self._tries[t.try_id] = t
        if t.pidfd is not None:
            self._selector.register(t.pidfd, selectors.EVENT_READ, t.try_id)

    def _close_pidfd(self, t: _Try) -> None:
        if t.pidfd is None:
            return
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(t.pidfd)
        os.close(t.pidfd)
        t.pidfd = None

    def _has_ended(self, t: _Try, ready: set[int]) -> bool:
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

    # -- ending ------------------------------------------------------------------------
    def _finish(self, t: _Try, now: datetime, strays: list[psutil.Process]) -> Outcome:
        """Clean up after an ended try and build its outcome; it is no longer watched."""
        if t.foreign_detail is None:
            # Killed before the wrapper is reaped: while it is a zombie, its pid (the process
            # group id) cannot be reused by an unrelated group. Normal ends too: the try is
            # over, and a daemon it left in its group would outlive it unaccounted for.
            self._signal_group(t, signal.SIGKILL)
            # A cancelled or adopted try also loses every process it left outside its group,
            # so that a retry never overlaps with the remains of this try.
            _send([*t.doomed.values(), *strays], signal.SIGKILL)
        wrapper_code = t.popen.wait() if t.popen is not None else None
        file_code = self._read_int(self._exit_file(t.try_id))
        self._close_pidfd(t)
        self._remove_files(t.try_id)
        del self._tries[t.try_id]
        if t.foreign_detail is not None:
            return Outcome(t.try_id, None, FailureReason.LOST, now, t.foreign_detail)
        # The exit file is the command's own status; the wrapper's differs only when the
        # wrapper itself was killed (then there is no exit file).
        code = file_code if file_code is not None else wrapper_code
        if code == 0:
            return Outcome(t.try_id, 0, None, now)
        if code is None:
            if t.killed:
                detail = "killed by signal 9 (SIGKILL) after the grace period"
                return Outcome(t.try_id, None, FailureReason.ERROR, now, detail)
            return Outcome(t.try_id, None, FailureReason.LOST, now, LOST_DETAIL)
        return Outcome(t.try_id, code, FailureReason.ERROR, now, _describe(code, t.killed))

    # -- signalling --------------------------------------------------------------------
    def _group_is_ours(self, t: _Try) -> bool:
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

    def _signal_group(self, t: _Try, sig: signal.Signals) -> None:
        if not self._group_is_ours(t):
            return
        assert t.pid is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(t.pid, sig)

    def _descendants(self, t: _Try) -> list[psutil.Process]:
        if t.proc is None:
            return []
        try:
            return t.proc.children(recursive=True)
        except psutil.Error:
            return []

    def _command(self, t: _Try) -> psutil.Process | None:
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

    def _terminate_late_command(self, t: _Try) -> None:
        """SIGTERM a cancelled try's command that started after the cancel, once."""
        command = self._command(t)
        if command is None:
            if t.proc is None or not _alive(t.proc):
                t.command_termed = True  # the wrapper is ending without running it
            return
        t.doomed[command.pid] = command
        _send([command], signal.SIGTERM)
        t.command_termed = True

    def _escalate(self, t: _Try, strays: list[psutil.Process]) -> None:
        """SIGKILL a cancelled try whose grace period is over, and all it spawned."""
        for proc in [*self._descendants(t), *strays]:
            t.doomed[proc.pid] = proc
        self._signal_group(t, signal.SIGKILL)
        _send(t.doomed.values(), signal.SIGKILL)
        if t.proc is not None:
            _send([t.proc], signal.SIGKILL)
        t.killed = True
        t.next_kill = time.monotonic() + _KILL_REPEAT

    # -- finding processes -------------------------------------------------------------
    def _find_marked(self, try_ids: set[int]) -> dict[int, list[psutil.Process]]:
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
            if try_id is not None and env.get(TRY_SCOPE_VAR) == self._scope:
                found.setdefault(try_id, []).append(proc)
        return found

    def _make_sure_dead(self, try_ids: set[int]) -> None:
        """Kill what is left of these reported tries until a scan finds nothing alive.

        One scan is not enough: a process may fork while it is being killed, and a killed
        process takes a moment to die. Once reported, a try may be retried at once, and the
        retry must not overlap with remains of this one.
        """
        deadline = time.monotonic() + _SWEEP_TIMEOUT
        while left := [p for procs in self._find_marked(try_ids).values() for p in procs]:
            if time.monotonic() >= deadline:
                pids = ", ".join(str(p.pid) for p in left)
                log.warning("processes of tries %s survive SIGKILL: %s", sorted(try_ids), pids)
                return
            _send(left, signal.SIGKILL)
            time.sleep(_SWEEP_STEP)

    def _has_marker(self, proc: psutil.Process, try_id: int) -> bool:
        try:
            env = proc.environ()
        except psutil.Error:
            return False
        return env.get(TRY_ID_VAR) == str(try_id) and env.get(TRY_SCOPE_VAR) == self._scope

    def _locate(
        self, ref: TryRef, pid: int | None, create_time: float | None
    ) -> psutil.Process | None:
        """The live wrapper of ``ref``, or None if it is gone."""
        if pid is not None and create_time is not None:
            # The external id names exactly one process; another one holding its pid, even
            # one of this try, is not the wrapper whose exit status the handle refers to.
            proc = _process(pid)
            if proc is None or not _same_time(proc, create_time) or not _alive(proc):
                return None
            return proc
        for candidate in (ref.pid, self._read_int(self._pid_file(ref.try_id))):
            if candidate is None:
                continue
            proc = _process(candidate)
            if proc is not None and _alive(proc) and self._has_marker(proc, ref.try_id):
                return proc
        marked = [p for p in self._find_marked({ref.try_id}).get(ref.try_id, []) if _alive(p)]
        if not marked:
            return None
        # The wrapper is the session leader whose parent is not of the try, and the oldest.
        return min(marked, key=lambda p: self._wrapper_rank(p, ref.try_id))

    def _wrapper_rank(self, proc: psutil.Process, try_id: int) -> tuple[bool, bool, float]:
        try:
            parent = proc.parent()
            leader = os.getsid(proc.pid) == proc.pid
            started = proc.create_time()
        except (psutil.Error, OSError):
            return (True, True, float("inf"))
        parent_marked = parent is not None and self._has_marker(parent, try_id)
        return (parent_marked, not leader, started)


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=max(0.0, value))


def _parse_external_id(external_id: str | None) -> tuple[int | None, float | None]:
    """``local:<pid>:<create_time>`` as (pid, create_time); (None, None) if malformed."""
    if not external_id:
        return None, None
    parts = external_id.split(":")
    if len(parts) != 3 or parts[0] != "local":
        return None, None
    try:
        return int(parts[1]), float(parts[2])
    except ValueError:
        return None, None


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


def _send(procs: Iterable[psutil.Process], sig: signal.Signals) -> None:
    """Signal each process that is still the one it was (psutil checks pid reuse)."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _describe(code: int, killed: bool) -> str:
    """A failed exit status in words: a negative code is the wrapper's death by signal."""
    if code < 0:
        after = " after the grace period" if killed and -code == signal.SIGKILL else ""
        return f"killed by signal {-code} ({_signal_name(-code)}){after}"
    if 128 < code <= 128 + 64:
        # The shell reports a command killed by signal N as 128 + N.
        return f"exit code {code} (128 + {_signal_name(code - 128)})"
    return f"exit code {code}"
