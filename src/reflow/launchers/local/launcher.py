"""The LocalLauncher: starts, watches, cancels, adopts, fences and sweeps the tries of one
runtime folder, and turns how each one ended into its outcome.
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
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psutil

from reflow.core.cost import Held
from reflow.core.errors import Fenced, InvalidInput, TaskError
from reflow.core.spec import Handle, Outcome, TryRef, TrySpec
from reflow.core.states import FailureReason
from reflow.launchers.base import Launcher
from reflow.launchers.local.cgroups import _open_cgroups
from reflow.launchers.local.processes import (
    _OWN_WRAPPERS,
    _SWEEP_TIMEOUT,
    TRY_ID_VAR,
    TRY_SCOPE_VAR,
    Reaped,
    _alive,
    _become_subreaper,
    _command,
    _descendants,
    _escalate,
    _find_marked,
    _find_wrapper,
    _group_is_ours,
    _has_ended,
    _has_marker,
    _in_group,
    _is_running,
    _kill_unowned_suspects,
    _locate,
    _make_sure_dead,
    _open_pidfd,
    _orphans,
    _orphans_of,
    _process,
    _reap,
    _send,
    _signal_group,
    _stop_leftovers,
    _terminate_late_command,
    _Try,
)
from reflow.launchers.local.runtime import (
    _FENCE_KEEP,
    FENCE,
    _exit_file,
    _fence,
    _listing,
    _pid_file,
    _read_claim,
    _read_int,
    _remove_files,
    _scratch,
    _settled_claim,
)
from reflow.launchers.local.wrapper import _CLAIM_FAILED, _SH, _WRAPPER, _describe

SCRATCH_VAR = "REFLOW_SCRATCH"

LOST_DETAIL = "process vanished without an exit status"
FENCED_DETAIL = "fenced: never started, and no process of it was found; it will never run"
FENCED_START_DETAIL = (
    "fenced: another scheduler declared this try lost before it started; its command never ran"
)

log = logging.getLogger("reflow.launchers.local")

# Without pidfds, wait() checks the watched processes this often.
_FALLBACK_STEP = 0.02


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
    def _ensure_runtime(self) -> None:
        if not self._runtime_ready:
            self.runtime_dir.mkdir(parents=True, exist_ok=True)
            self._runtime_ready = True

    def _clear_leftovers(self, try_id: int) -> None:
        """Remove the files of an earlier try of this id (a deleted and re-created database
        reuses ids), which would mislead an adoption. Raises Fenced when the id is fenced."""
        claim = _read_claim(self.runtime_dir, try_id)
        if claim == "":
            claim = _settled_claim(self.runtime_dir, try_id)
        if claim == FENCE:
            raise Fenced(
                f"try {try_id} was declared lost by another scheduler (and retried): "
                "it must not start"
            )
        if claim:
            proc = _process(int(claim)) if claim.isdigit() else None
            if proc is not None and _alive(proc) and _has_marker(proc, try_id, self._scope):
                raise TaskError(f"try {try_id} is running already (pid {proc.pid})")
        _remove_files(self.runtime_dir, try_id, keep_claim=claim is None)

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
        scratch = _scratch(self.runtime_dir, spec.try_id)
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
            str(_pid_file(self.runtime_dir, spec.try_id)),
            str(_exit_file(self.runtime_dir, spec.try_id)),
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
            pidfd=_open_pidfd(popen.pid),
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
        ended = [t for t in self._tries.values() if _has_ended(t, ready)]
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
        strays = _find_marked(self._scope, sweep) if sweep else {}
        if self._subreaper and (overdue or cleaned):
            for try_id, procs in _orphans_of(
                [*overdue, *cleaned], self._tries.values(), self._suspects
            ).items():
                strays.setdefault(try_id, []).extend(procs)
        for t in overdue:
            _escalate(t, strays.get(t.try_id, []), self._cgroups)
        for t in self._tries.values():
            if not t.command_termed and t.try_id not in ended_ids and not t.killed:
                _terminate_late_command(t)
        reported = [self._finish(t, now, strays.get(t.try_id, [])) for t in ended]
        if swept := sweep - {t.try_id for t in overdue}:
            _make_sure_dead(self._scope, swept)
        if self._suspects and ended:
            _kill_unowned_suspects(self._tries.values(), self._suspects)
        return reported

    def release(self, try_ids: Iterable[int]) -> None:
        """Remove the files, scratch folder and cgroup of these reported tries (their
        outcomes are recorded). Ids this launcher did not report are ignored; a fence stays."""
        for try_id in try_ids:
            keep_claim = self._reported.pop(try_id, None)
            if keep_claim is None:
                continue
            _remove_files(self.runtime_dir, try_id, keep_claim=keep_claim)
            shutil.rmtree(_scratch(self.runtime_dir, try_id), ignore_errors=True)
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
            for proc in _descendants(t):
                t.doomed[proc.pid] = proc
            if self._subreaper:
                for proc in _orphans_of([t], self._tries.values(), self._suspects).get(try_id, []):
                    t.doomed[proc.pid] = proc
        t.command_termed = t.cmdline is None or _command(t) is not None
        # Each process gets one SIGTERM: the group's signal reaches its members, the
        # others (those that left the group) are signalled one by one; a task's TERM
        # handler runs once.
        group = t.pid if _group_is_ours(t) else None
        _signal_group(t, signal.SIGTERM)
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
            proc = _locate(
                ref, pid, create_time, t.cgroup, self.runtime_dir, self._scope, self._cgroups
            )
        if proc is not None:
            t.proc, t.pid = proc, proc.pid
            with contextlib.suppress(psutil.Error):
                t.create_time = proc.create_time()
                t.cmdline = proc.cmdline()
            t.pidfd = _open_pidfd(proc.pid)
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
            claim = _settled_claim(self.runtime_dir, ref.try_id)
            if claim is None:
                # Nothing claimed the id: a process of the try without a pid file (removed
                # by hand) is still adopted; else the fence makes sure none ever runs.
                proc = _find_wrapper(ref.try_id, t.cgroup, self._scope, self._cgroups)
                if proc is not None:
                    return proc
                self._ensure_runtime()
                if not _fence(self.runtime_dir, ref.try_id):
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
                if proc is not None and _alive(proc) and _has_marker(proc, ref.try_id, self._scope):
                    return proc
                return None  # it ended: its exit file tells how, if it left one
            return _find_wrapper(ref.try_id, t.cgroup, self._scope, self._cgroups)

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
            if any(_has_ended(t, set()) for t in unwatchable):
                return

    def watched(self) -> set[int]:
        """Ids of the tries watched: started or adopted, not yet reported by poll()."""
        return set(self._tries)

    def sweep(self, live: Callable[[], set[int]]) -> int:
        """Remove the files, scratch folders and cgroups of tries that are not live, and
        kill what still runs of them. A fence stays for a day: the scheduler it keeps
        from running its try may be paused that long."""
        found = _listing(self.runtime_dir)
        if self._cgroups is not None:
            for try_id, path in self._cgroups.listing():
                found.setdefault(try_id, []).append(path)
        if self._subreaper:
            _orphans()  # reaps the ones that died
        if not found:
            return 0
        alive = live() | set(self._tries)
        gone = sorted(set(found) - alive)
        _stop_leftovers(gone, self.runtime_dir, self._scope, self._cgroups)
        removed = 0
        for try_id in gone:
            claim = _pid_file(self.runtime_dir, try_id)
            if _read_claim(self.runtime_dir, try_id) == FENCE:
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

    # -- ending ------------------------------------------------------------------------
    def _finish(self, t: _Try, now: datetime, strays: list[psutil.Process]) -> Outcome:
        """Build the outcome of an ended try, which is no longer watched; its files stay
        until :meth:`release`."""
        if t.lost_detail is None:
            # Killed before the wrapper is reaped: while it is a zombie, its pid (the process
            # group id) cannot be reused by an unrelated group. Normal ends too: the try is
            # over, and a daemon it left in its group would outlive it unaccounted for.
            _signal_group(t, signal.SIGKILL)
            # A cancelled or adopted try also loses every process it left outside its group,
            # so that a retry never overlaps with the remains of this try; in a cgroup, any
            # try does.
            _send([*t.doomed.values(), *strays], signal.SIGKILL)
            if t.cgroup is not None and self._cgroups is not None:
                self._cgroups.kill(t.cgroup, _SWEEP_TIMEOUT)
        reaped = _reap(t.popen) if t.popen is not None else None
        wrapper_code = reaped.code if reaped is not None else None
        if t.popen is not None:
            _OWN_WRAPPERS.discard(t.popen.pid)
        file_code = _read_int(_exit_file(self.runtime_dir, t.try_id))
        self._close_pidfd(t)
        del self._tries[t.try_id]
        if file_code is None and wrapper_code == _CLAIM_FAILED:
            claim = _read_claim(self.runtime_dir, t.try_id)
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
        held = _held(t, reaped, now)

        def ended(code: int | None, reason: FailureReason | None, detail: str = "") -> Outcome:
            return Outcome(t.try_id, code, reason, now, detail, held=held)

        if code == 0:
            return ended(0, None)
        if code is None:
            if t.killed:
                return ended(
                    None, FailureReason.ERROR, "killed by signal 9 (SIGKILL) after the grace period"
                )
            return ended(None, FailureReason.LOST, LOST_DETAIL)
        return ended(code, FailureReason.ERROR, _describe(code, t.killed))


def _held(t: _Try, reaped: Reaped | None, now: datetime) -> tuple[Held, ...]:
    """What the try's process tree used, when this launcher started it and reaped its
    wrapper (an adopted try's wrapper is another process's child: not measured)."""
    if reaped is None or reaped.cpu_seconds is None or reaped.peak_memory is None:
        return ()
    began = datetime.fromtimestamp(t.create_time, UTC) if t.create_time else None
    return (
        Held(
            "process",
            f"pid {t.pid}",
            began,
            now,
            cpu_seconds=Decimal(str(reaped.cpu_seconds)),
            peak_memory=Decimal(reaped.peak_memory),
        ),
    )


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
