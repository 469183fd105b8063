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

from __future__ import annotations

import contextlib
import ctypes
import hashlib
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

from reflow.core.errors import Fenced, InvalidInput, TaskError
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
# The content of a pid file that fences its try: no wrapper of that try id will run.
FENCE = "fenced"
FENCED_DETAIL = "fenced: never started, and no process of it was found; it will never run"
FENCED_START_DETAIL = (
    "fenced: another scheduler declared this try lost before it started; its command never ran"
)

log = logging.getLogger("reflow.launchers.local")

_SH = "/bin/sh"
# The wrapper's exit code when the try's id was claimed already (fenced, or running).
_CLAIM_FAILED = 223
# $1 pid file, $2 exit file, $3 the try's cgroup.procs (or ""), then the argv. Plain sh
# keeps the per-try overhead to a fork + exec or two: creating the pid file under noclobber
# (O_EXCL), joining the cgroup and writing the exit status are builtins. The exit file is
# read only once the wrapper has ended, so it needs no atomic rename (and no `mv` process
# that a cancel could kill between the command's end and the status it records). The claim
# comes first, so that a fenced try runs nothing; the cgroup is joined before the command
# is forked, so that every descendant is in it. SIGTERM is caught (not ignored: an ignored
# signal would stay ignored in the command) so that the wrapper outlives the command it
# shares a process group with and records its status; a TERM that arrives before the
# command starts skips it (one that arrives while the command is being forked is lost: see
# _Try.command_termed). The command runs under `exec` in a subshell so that an argv naming
# a shell builtin (`exit`, `exec`, `cd`) runs the program of that name, as it would without
# the wrapper. The wrapper's own messages ("Terminated") go to /dev/null: the log holds the
# command's output.
_WRAPPER = f"""\
set -C
echo "$$" 2>/dev/null >"$1" || exit {_CLAIM_FAILED}
set +C
t=
trap 't=1' TERM
exec 3>&2 2>/dev/null
[ -z "$3" ] || echo "$$" >"$3"
e=$2
shift 3
if [ -z "$t" ]; then (exec "$@" 2>&3 3>&-); c=$?; else c=143; fi
echo "$c" >"$e"
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
# How long adopt() or start() waits for a wrapper that created its pid file to write its pid.
_CLAIM_WAIT = 2.0
# A fence is kept this long after its try is over: a paused scheduler may resume late.
_FENCE_KEEP = 24 * 3600.0
# Wrappers started by any launcher of this process and not reaped yet: never taken for
# orphans (a subreaper must not reap another launcher's children).
_OWN_WRAPPERS: set[int] = set()
_PR_SET_CHILD_SUBREAPER = 36
_subreaper: bool | None = None


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


class LocalLauncher(Launcher):
    """Runs each try as a process tree on this machine.

    ``runtime_dir`` holds one ``<try_id>.pid`` and ``<try_id>.exit`` file per try until its
    outcome is recorded; it must be the same folder for every scheduler of a project, so
    that one can adopt (or fence) the tries of another. ``clock`` stamps outcomes and times
    the SIGKILL escalation. ``cgroups=False`` never uses cgroups, even where it could.
    """

    name = "local"

    def __init__(
        self,
        runtime_dir: Path,
        clock: Callable[[], datetime] = _utc_now,
        cgroups: bool = True,
    ) -> None:
        self.runtime_dir = Path(runtime_dir).resolve()
        self._clock = clock
        self._scope = str(self.runtime_dir)
        self._host = socket.gethostname()
        self._tries: dict[int, _Try] = {}
        # Tries reported by poll() and not released yet: True when the pid file is a fence
        # (or another wrapper's claim) that the release must keep.
        self._reported: dict[int, bool] = {}
        self._selector: selectors.BaseSelector | None = selectors.DefaultSelector()
        self._runtime_ready = False
        self._cgroups = _open_cgroups(self._scope) if cgroups else None
        self._subreaper = False
        # Orphans that could be of a try still running: killed once none can own them.
        self._suspects: dict[int, psutil.Process] = {}
        if self._cgroups is not None:
            log.info(
                "local launcher: each try runs in a cgroup of its own (%s) under %s",
                self._cgroups.kind,
                self._cgroups.root,
            )
        else:
            self._subreaper = _become_subreaper()
            log.info(
                "local launcher: no writable cgroup; processes that leave a try are found "
                "by its environment marker%s",
                ", and stay children of this process (child subreaper)" if self._subreaper else "",
            )

    @property
    def isolation(self) -> str:
        """How the processes of a try are found: ``cgroup v2``, ``cgroup v1, pids`` or
        ``marker`` (its environment marker, this process being their subreaper)."""
        return self._cgroups.kind if self._cgroups is not None else "marker"

    def cgroup_of(self, try_id: int) -> Path | None:
        """The folder of the try's cgroup, if it has one now."""
        if self._cgroups is None:
            return None
        path = self._cgroups.of(try_id)
        return path if path.is_dir() else None

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

    def _read_claim(self, try_id: int) -> str | None:
        """The pid file's content (a pid, ``fenced``, or "" while being written), or None."""
        try:
            return self._pid_file(try_id).read_text().strip()
        except OSError:
            return None

    def _settled_claim(self, try_id: int) -> str | None:
        """The pid file's content, once a wrapper that just created it wrote its pid."""
        deadline = time.monotonic() + _CLAIM_WAIT
        claim = self._read_claim(try_id)
        while claim == "" and time.monotonic() < deadline:
            time.sleep(0.01)
            claim = self._read_claim(try_id)
        return claim

    def _fence(self, try_id: int) -> bool:
        """Create the try's pid file as a fence, if it does not exist; True if created.

        A hard link to a complete file is exclusive (like O_EXCL) and never shows an empty
        file to a reader, which would take it for a wrapper about to write its pid.
        """
        self._ensure_runtime()
        pending = self.runtime_dir / f"{try_id}.fence.{os.getpid()}"
        pending.write_text(FENCE + "\n")
        try:
            os.link(pending, self._pid_file(try_id))
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                pending.unlink()

    def _ensure_runtime(self) -> None:
        if not self._runtime_ready:
            self.runtime_dir.mkdir(parents=True, exist_ok=True)
            self._runtime_ready = True

    def _remove_files(self, try_id: int, keep_claim: bool = False) -> None:
        paths = [self._exit_file(try_id)]
        if not keep_claim:
            paths.insert(0, self._pid_file(try_id))
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()

    def _clear_leftovers(self, try_id: int) -> None:
        """Remove the files of an earlier try of this id (a deleted and re-created database
        reuses ids), which would mislead an adoption. Raises Fenced when the id is fenced."""
        claim = self._read_claim(try_id)
        if claim == "":
            claim = self._settled_claim(try_id)
        if claim == FENCE:
            raise Fenced(
                f"try {try_id} was declared lost by another scheduler (and retried): "
                "it must not start"
            )
        if claim:
            proc = _process(int(claim)) if claim.isdigit() else None
            if proc is not None and _alive(proc) and self._has_marker(proc, try_id):
                raise TaskError(f"try {try_id} is running already (pid {proc.pid})")
        self._remove_files(try_id, keep_claim=claim is None)

    # -- the interface -----------------------------------------------------------------
    def start(self, spec: TrySpec) -> Handle:
        """Start ``spec.argv`` in a new session, output appended to ``spec.log_path``.

        Raises ``InvalidInput`` for an empty argv, ``Fenced`` when another scheduler fenced
        the try, ``OSError`` when the log, the cwd or the runtime folder cannot be used;
        nothing is left running then.
        """
        if self._selector is None:
            raise RuntimeError("launcher is closed")
        if spec.try_id in self._tries:
            raise ValueError(f"try {spec.try_id} is already watched")
        if not spec.argv:
            raise InvalidInput(f"try {spec.try_id} has an empty command")
        self._ensure_runtime()
        self._clear_leftovers(spec.try_id)
        self._reported.pop(spec.try_id, None)
        log_path = Path(spec.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **spec.env,
            TRY_ID_VAR: str(spec.try_id),
            TRY_SCOPE_VAR: self._scope,
        }
        scratch = self._scratch(spec.try_id)
        if spec.scratch is not None:
            # The try's scratch space: a temporary folder, removed once the try is released.
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            env[SCRATCH_VAR] = str(scratch)
        cgroup = self._cgroups.create(spec.try_id) if self._cgroups is not None else None
        argv = [
            _SH,
            "-c",
            _WRAPPER,
            "reflow",
            str(self._pid_file(spec.try_id)),
            str(self._exit_file(spec.try_id)),
            str(cgroup / "cgroup.procs") if cgroup is not None else "",
            *spec.argv,
        ]
        try:
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
        except BaseException:
            if cgroup is not None and self._cgroups is not None:
                self._cgroups.remove(cgroup)
            if spec.scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        _OWN_WRAPPERS.add(popen.pid)
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
            cgroup=cgroup,
        )
        self._watch(watch)
        return Handle(
            spec.try_id, popen.pid, self._host, external_id=f"local:{popen.pid}:{create_time}"
        )

    def poll(self) -> list[Outcome]:
        """Report every watched try that ended (once each); escalate overdue cancels.

        What proves an outcome (the pid and exit files, the scratch folder) stays until
        :meth:`release`.
        """
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
        # Processes that left the try's tree are in its cgroup; without one, they are found
        # by their marker, in one pass over the process table for all the tries that need
        # it (it reads every environ).
        cleaned = [
            t for t in ended if (t.kill_at is not None or t.adopted) and t.lost_detail is None
        ]
        sweep = {t.try_id for t in [*overdue, *cleaned] if t.cgroup is None}
        strays = self._find_marked(sweep) if sweep else {}
        if self._subreaper and (overdue or cleaned):
            for try_id, procs in self._orphans_of([*overdue, *cleaned]).items():
                strays.setdefault(try_id, []).extend(procs)
        for t in overdue:
            self._escalate(t, strays.get(t.try_id, []))
        for t in self._tries.values():
            if not t.command_termed and t.try_id not in ended_ids and not t.killed:
                self._terminate_late_command(t)
        reported = [self._finish(t, now, strays.get(t.try_id, [])) for t in ended]
        if swept := sweep - {t.try_id for t in overdue}:
            self._make_sure_dead(swept)
        if self._suspects and ended:
            self._kill_unowned_suspects()
        return reported

    def release(self, try_ids: Iterable[int]) -> None:
        """Remove the files, scratch folder and cgroup of these reported tries (their
        outcomes are recorded). Ids this launcher did not report are ignored; a fence stays."""
        for try_id in try_ids:
            keep_claim = self._reported.pop(try_id, None)
            if keep_claim is None:
                continue
            self._remove_files(try_id, keep_claim=keep_claim)
            shutil.rmtree(self._scratch(try_id), ignore_errors=True)
            if self._cgroups is not None:
                self._cgroups.remove(self._cgroups.of(try_id))

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
        if t.cgroup is None:
            # Collected before signalling: once its parent dies a process is re-parented
            # and can no longer be found as a descendant (a child that called setsid would
            # escape). In a cgroup, every descendant stays in it.
            for proc in self._descendants(t):
                t.doomed[proc.pid] = proc
            if self._subreaper:
                for proc in self._orphans_of([t]).get(try_id, []):
                    t.doomed[proc.pid] = proc
        t.command_termed = t.cmdline is None or self._command(t) is not None
        # Each process gets one SIGTERM: the group's signal reaches its members, the
        # others (those that left the group) are signalled one by one; a task's TERM
        # handler runs once.
        group = t.pid if self._group_is_ours(t) else None
        self._signal_group(t, signal.SIGTERM)
        _send([p for p in t.doomed.values() if not _in_group(p.pid, group)], signal.SIGTERM)
        if t.cgroup is not None and self._cgroups is not None:
            self._cgroups.send_all(t.cgroup, signal.SIGTERM, except_group=group)

    def adopt(self, ref: TryRef) -> bool:
        """Watch a try started by another scheduler; True if its process is still alive.

        The process is ``ref.external_id`` (pid and create time) when given, else
        ``ref.pid`` or the pid file, else a process of the try's cgroup or carrying its
        marker. A try never recorded as started (no external id) whose wrapper never ran is
        fenced: its pid file is created as a fence, so that its wrapper, if it ever starts,
        runs nothing. A try started on another host cannot be watched from here and is
        reported ``lost``.
        """
        if self._selector is None:
            raise RuntimeError("launcher is closed")
        known = self._tries.get(ref.try_id)
        if known is not None:  # already watched (started here or adopted before)
            return not known.gone and known.proc is not None and _alive(known.proc)
        t = _Try(ref.try_id, adopted=True)
        self._reported.pop(ref.try_id, None)
        if ref.host is not None and ref.host != self._host:
            t.gone = True
            t.lost_detail = (
                f"started on host {ref.host}; a scheduler on {self._host} cannot watch it"
            )
            self._tries[ref.try_id] = t
            return False
        t.cgroup = self.cgroup_of(ref.try_id)
        if ref.external_id is None:
            proc = self._claim_or_find(ref, t)
        else:
            pid, create_time = _parse_external_id(ref.external_id)
            t.pid, t.create_time = pid or ref.pid, create_time
            proc = self._locate(ref, pid, create_time, t.cgroup)
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

    def _claim_or_find(self, ref: TryRef, t: _Try) -> psutil.Process | None:
        """The wrapper of a try never recorded as started; None if it ended or never ran,
        in which case the try is fenced (``t.fenced``) unless its wrapper claimed it."""
        while True:
            claim = self._settled_claim(ref.try_id)
            if claim is None:
                # Nothing claimed the id: a process of the try without a pid file (removed
                # by hand) is still adopted; else the fence makes sure none ever runs.
                proc = self._find_wrapper(ref.try_id, t.cgroup)
                if proc is not None:
                    return proc
                if not self._fence(ref.try_id):
                    continue  # its wrapper claimed the id just now
                log.warning("try %s was never started: fenced, so that it never runs", ref.try_id)
                t.fenced, t.lost_detail = True, FENCED_DETAIL
                return None
            if claim == FENCE:
                t.fenced, t.lost_detail = True, FENCED_DETAIL
                return None
            if claim.isdigit():
                t.pid = int(claim)
                proc = _process(t.pid)
                if proc is not None and _alive(proc) and self._has_marker(proc, ref.try_id):
                    return proc
                return None  # it ended: its exit file tells how, if it left one
            return self._find_wrapper(ref.try_id, t.cgroup)

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

    def sweep(self, live: Callable[[], set[int]]) -> int:
        """Remove the files, scratch folders and cgroups of tries that are not live, and
        kill what still runs of them. A fence stays for a day: the scheduler it keeps
        from running its try may be paused that long."""
        found: dict[int, list[Path]] = {}
        with contextlib.suppress(OSError), os.scandir(self.runtime_dir) as entries:
            for entry in entries:
                head, dot, _ = entry.name.partition(".")
                if dot and head.isdigit():
                    found.setdefault(int(head), []).append(Path(entry.path))
        with contextlib.suppress(OSError), os.scandir(self.runtime_dir / "scratch") as entries:
            for entry in entries:
                if entry.name.isdigit():
                    found.setdefault(int(entry.name), []).append(Path(entry.path))
        if self._cgroups is not None:
            for try_id, path in self._cgroups.listing():
                found.setdefault(try_id, []).append(path)
        if self._subreaper:
            self._orphans()  # reaps the ones that died
        if not found:
            return 0
        alive = live() | set(self._tries)
        gone = sorted(set(found) - alive)
        self._stop_leftovers(gone)
        removed = 0
        for try_id in gone:
            claim = self._pid_file(try_id)
            if self._read_claim(try_id) == FENCE:
                with contextlib.suppress(OSError):
                    if time.time() - claim.stat().st_mtime < _FENCE_KEEP:
                        found[try_id].remove(claim)
            for path in found[try_id]:
                if self._cgroups is not None and path.parent == self._cgroups.root:
                    self._cgroups.remove(path)
                elif path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()
            self._reported.pop(try_id, None)
            removed += bool(found[try_id])
        return removed

    def _stop_leftovers(self, try_ids: list[int]) -> None:
        """Kill the processes of tries that are over (not live) but still run."""
        marked: set[int] = set()
        for try_id in try_ids:
            cgroup = self._cgroups.of(try_id) if self._cgroups is not None else None
            if cgroup is not None and self._cgroups is not None and cgroup.is_dir():
                if self._cgroups.members(cgroup):
                    log.warning("killing the processes of try %s: it is not live", try_id)
                    self._cgroups.kill(cgroup, _SWEEP_TIMEOUT)
                continue
            claim = self._read_claim(try_id)
            proc = _process(int(claim)) if claim and claim.isdigit() else None
            if proc is not None and _alive(proc) and self._has_marker(proc, try_id):
                log.warning("killing the processes of try %s: it is not live", try_id)
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                marked.add(try_id)
        if marked:
            for procs in self._find_marked(marked).values():
                _send(procs, signal.SIGKILL)
            self._make_sure_dead(marked)

    def close(self) -> None:
        """Stop watching; the processes keep running for a later scheduler to adopt."""
        for t in self._tries.values():
            self._close_pidfd(t)
        self._tries.clear()
        self._reported.clear()
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self._cgroups is not None:
            with contextlib.suppress(OSError):
                self._cgroups.root.rmdir()  # only when no try has a cgroup in it

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
        """Build the outcome of an ended try, which is no longer watched; its files stay
        until :meth:`release`."""
        if t.lost_detail is None:
            # Killed before the wrapper is reaped: while it is a zombie, its pid (the process
            # group id) cannot be reused by an unrelated group. Normal ends too: the try is
            # over, and a daemon it left in its group would outlive it unaccounted for.
            self._signal_group(t, signal.SIGKILL)
            # A cancelled or adopted try also loses every process it left outside its group,
            # so that a retry never overlaps with the remains of this try; in a cgroup, any
            # try does.
            _send([*t.doomed.values(), *strays], signal.SIGKILL)
            if t.cgroup is not None and self._cgroups is not None:
                self._cgroups.kill(t.cgroup, _SWEEP_TIMEOUT)
        wrapper_code = t.popen.wait() if t.popen is not None else None
        if t.popen is not None:
            _OWN_WRAPPERS.discard(t.popen.pid)
        file_code = self._read_int(self._exit_file(t.try_id))
        self._close_pidfd(t)
        del self._tries[t.try_id]
        if file_code is None and wrapper_code == _CLAIM_FAILED:
            claim = self._read_claim(t.try_id)
            if not claim or claim == str(t.pid):
                self._reported[t.try_id] = False
                detail = f"could not create its pid file in {self.runtime_dir}"
                return Outcome(t.try_id, None, FailureReason.ERROR, now, detail)
            # Fenced (or claimed by another wrapper) after start() looked: the command never
            # ran, and the claim is not this try's to remove.
            t.fenced, t.lost_detail = True, FENCED_START_DETAIL
        self._reported[t.try_id] = t.fenced
        if t.lost_detail is not None:
            return Outcome(t.try_id, None, FailureReason.LOST, now, t.lost_detail)
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
        if t.cgroup is not None and self._cgroups is not None:
            self._cgroups.kill(t.cgroup, 0.0)
        else:
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
        self, ref: TryRef, pid: int | None, create_time: float | None, cgroup: Path | None
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
        return self._find_wrapper(ref.try_id, cgroup)

    def _find_wrapper(self, try_id: int, cgroup: Path | None) -> psutil.Process | None:
        """The live wrapper of a try (else its oldest live process), found by its cgroup or,
        without one, by its marker; None if nothing of the try runs."""
        if cgroup is not None and self._cgroups is not None:
            procs = [p for pid in self._cgroups.members(cgroup) if (p := _process(pid))]
        else:
            procs = self._find_marked({try_id}).get(try_id, [])
        procs = [p for p in procs if _alive(p)]
        if not procs:
            return None
        # The wrapper runs the wrapper script; it is the session leader whose parent is not
        # of the try, and the oldest.
        return min(procs, key=lambda p: self._wrapper_rank(p, try_id))

    def _wrapper_rank(self, proc: psutil.Process, try_id: int) -> tuple[bool, bool, bool, float]:
        try:
            wrapper = proc.cmdline()[:3] == [_SH, "-c", _WRAPPER]
            parent = proc.parent()
            leader = os.getsid(proc.pid) == proc.pid
            started = proc.create_time()
        except (psutil.Error, OSError):
            return (True, True, True, float("inf"))
        parent_marked = parent is not None and self._has_marker(parent, try_id)
        return (not wrapper, parent_marked, not leader, started)

    # -- orphans (no cgroups) ----------------------------------------------------------
    def _orphans(self) -> list[psutil.Process]:
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

    def _kill_unowned_suspects(self) -> None:
        """Kill the orphans set aside by :meth:`_orphans_of` that no watched try can own
        any more (every try started before them has ended)."""
        running = [t.create_time for t in self._tries.values() if t.create_time is not None]
        doomed = []
        for pid, proc in list(self._suspects.items()):
            try:
                created = proc.create_time() + _SAME_PROCESS_TOLERANCE
                if not _alive(proc):
                    del self._suspects[pid]
                elif not any(started <= created for started in running):
                    doomed += [proc, *proc.children(recursive=True)]
                    del self._suspects[pid]
            except psutil.Error:
                del self._suspects[pid]
        _send(doomed, signal.SIGKILL)

    def _orphans_of(self, tries: list[_Try]) -> dict[int, list[psutil.Process]]:
        """The orphans that can only be of one of ``tries`` (being stopped), by try id.

        An orphan that wiped its environment carries no marker: it is of a try started by
        this launcher before it was created, and is taken for the latest such try of
        ``tries`` when no other watched try started before it; else it is set aside, and
        killed when those tries have ended.
        """
        orphans = self._orphans()
        if not orphans:
            return {}
        stopping = {t.try_id for t in tries}
        owners = [t for t in tries if t.popen is not None and t.create_time is not None]
        others = [
            t.create_time
            for t in self._tries.values()
            if t.try_id not in stopping and t.create_time is not None
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
                self._suspects[proc.pid] = proc
                continue
            candidates = [
                t for t in owners if t.create_time is not None and t.create_time <= created
            ]
            if candidates:
                owner = max(candidates, key=lambda t: t.create_time or 0.0)
                # With its descendants, collected now: once it dies they are orphans too.
                with contextlib.suppress(psutil.Error):
                    found.setdefault(owner.try_id, []).extend(
                        [proc, *proc.children(recursive=True)]
                    )
        return found


@dataclass(frozen=True)
class _Cgroups:
    """The cgroup folder of a launcher's scope, with one cgroup per try in it."""

    version: int  # 1 (the pids hierarchy) or 2
    mount: Path
    root: Path

    @property
    def kind(self) -> str:
        return "cgroup v2" if self.version == 2 else "cgroup v1, pids"

    def of(self, try_id: int) -> Path:
        return self.root / str(try_id)

    def listing(self) -> list[tuple[int, Path]]:
        """The try cgroups in the scope; left-over probes are removed."""
        found = []
        with contextlib.suppress(OSError), os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.isdigit():
                    found.append((int(entry.name), Path(entry.path)))
                elif entry.name.startswith("probe-") and entry.is_dir():
                    with contextlib.suppress(OSError):
                        os.rmdir(entry.path)
        return found

    def create(self, try_id: int) -> Path | None:
        """A new, empty cgroup for the try; None if it cannot be made (the try then runs
        without one)."""
        path = self.of(try_id)
        for _ in range(3):
            try:
                path.mkdir()
                return path
            except FileExistsError:  # left by a try of the same id (an earlier database)
                self.remove(path)
            except FileNotFoundError:  # the scope folder went (another launcher's close)
                with contextlib.suppress(OSError):
                    self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("try %s runs without a cgroup: %s", try_id, exc)
                return None
        return None

    def joinable(self) -> bool:
        """Can a process started from here move itself into a cgroup of the scope, as the
        wrapper does? (Rights on the hierarchy's common ancestor decide it.)"""
        probe = self.root / f"probe-{os.getpid()}"
        try:
            probe.mkdir(exist_ok=True)
            done = subprocess.run(
                [_SH, "-c", 'echo "$$" >"$1"', "reflow", str(probe / "cgroup.procs")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            return done.returncode == 0
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                probe.rmdir()

    def members(self, path: Path) -> list[int]:
        """Pids of the live processes in the cgroup (zombies are not listed)."""
        try:
            return [int(word) for word in (path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def send_all(
        self, path: Path, sig: signal.Signals, except_group: int | None = None
    ) -> None:
        """Send ``sig`` to every process in the cgroup (but those of the process group
        ``except_group``, signalled as a group already)."""
        suffix = "/" + str(path.relative_to(self.mount))
        for pid in self.members(path):
            if not _in_group(pid, except_group):
                self._send(pid, suffix, sig)

    def kill(self, path: Path, wait: float) -> bool:
        """SIGKILL everything in the cgroup, forks blocked first (v2: ``cgroup.kill``; v1:
        ``pids.max`` 0), and again until it is empty or ``wait`` seconds passed.
        True once it is empty."""
        pids = self.members(path)
        if not pids:
            return True
        with contextlib.suppress(OSError):
            if self.version == 2:
                (path / "cgroup.kill").write_text("1")
            else:
                (path / "pids.max").write_text("0")
        suffix = "/" + str(path.relative_to(self.mount))
        deadline = time.monotonic() + wait
        while True:
            for pid in pids:
                self._send(pid, suffix, signal.SIGKILL)
            if time.monotonic() >= deadline:
                return False
            time.sleep(_SWEEP_STEP)
            pids = self.members(path)
            if not pids:
                return True

    def remove(self, path: Path) -> None:
        """Remove the try's cgroup, killing what is left in it first."""
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            pass
        if not self.kill(path, _SWEEP_TIMEOUT):
            log.warning("processes of cgroup %s survive SIGKILL", path)
        with contextlib.suppress(OSError):
            path.rmdir()

    def _send(self, pid: int, suffix: str, sig: signal.Signals) -> None:
        """Signal ``pid`` if it is (still) in the cgroup: the pidfd pins the process, so a
        pid reused after the cgroup was read is never hit."""
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError:
            pidfd = None
        try:
            if not self._holds(pid, suffix):
                return
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)
        except OSError:
            pass
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _holds(self, pid: int, suffix: str) -> bool:
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return False
        for line in lines:
            number, controllers, path = [*line.split(":", 2), "", ""][:3]
            ours = number == "0" if self.version == 2 else "pids" in controllers.split(",")
            if ours and path.endswith(suffix):
                return True
        return False


def _cgroup_mounts() -> list[tuple[int, Path]]:
    """Writable cgroup hierarchies, best first: a unified (v2 only) one, a v1 pids one,
    then the v2 part of a hybrid set-up."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    unified: list[tuple[int, Path]] = []
    pids: list[tuple[int, Path]] = []
    hybrid: list[tuple[int, Path]] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or "ro" in fields[3].split(","):
            continue
        where, kind = Path(fields[1]), fields[2]
        if kind == "cgroup2":
            (unified if where == Path("/sys/fs/cgroup") else hybrid).append((2, where))
        elif kind == "cgroup" and "pids" in fields[3].split(","):
            pids.append((1, where))
    return unified + pids + hybrid


def _open_cgroups(scope: str) -> _Cgroups | None:
    """The cgroup folder of a scope (``reflow/<hash of the runtime folder>``, so that two
    projects never touch each other's) in the first hierarchy that works, or None."""
    key = hashlib.sha256(scope.encode()).hexdigest()[:16]
    for version, mount in _cgroup_mounts():
        root = mount / "reflow" / key
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        cgroups = _Cgroups(version, mount, root)
        if cgroups.joinable():
            return cgroups
        with contextlib.suppress(OSError):
            root.rmdir()
    return None


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


def _in_group(pid: int, group: int | None) -> bool:
    """Is process ``pid`` a member of process group ``group``?"""
    if group is None:
        return False
    try:
        return os.getpgid(pid) == group
    except OSError:
        return False


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
