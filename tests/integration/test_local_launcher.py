"""The local launcher with real processes: outcomes, logs, cancel, wake-ups, adoption,
clean-up after the outcome is recorded, fencing, and cgroups."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psutil
import pytest

from reflow.core.errors import Fenced, InvalidInput, TaskError
from reflow.core.spec import Outcome, TryRef, TrySpec
from reflow.core.states import FailureReason
from reflow.launchers.local import TRY_ID_VAR, TRY_SCOPE_VAR, LocalLauncher, cgroups

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="pidfds and /proc are Linux")


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Path]:
    """The runtime folder; any process or cgroup a test leaves behind is removed afterwards."""
    path = tmp_path / "runtime"
    yield path
    cleaner = LocalLauncher(path)
    cleaner.sweep(set)
    cleaner.close()
    for proc in marked(path):
        proc.kill()


@pytest.fixture
def launcher(runtime: Path) -> Iterator[LocalLauncher]:
    launcher = LocalLauncher(runtime)
    yield launcher
    launcher.close()


def spec(
    tmp_path: Path,
    try_id: int,
    *argv: str,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> TrySpec:
    log = str(tmp_path / "logs" / f"{try_id}.log")
    return TrySpec(try_id, argv, log, env=env or {}, cwd=cwd)


def sh(
    tmp_path: Path,
    try_id: int,
    command: str,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> TrySpec:
    return spec(tmp_path, try_id, "/bin/sh", "-c", command, env=env, cwd=cwd)


def outcomes(launcher: LocalLauncher, count: int = 1, timeout: float = 10.0) -> list[Outcome]:
    """Wait and poll until ``count`` outcomes were reported."""
    found: list[Outcome] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        assert time.monotonic() < deadline, f"only {len(found)} of {count} outcomes"
        launcher.wait(0.5)
        found += launcher.poll()
    return found


def marked(runtime: Path, try_id: int | None = None) -> list[psutil.Process]:
    """Live (non-zombie) processes carrying the marker of a try launched in ``runtime``."""
    scope = str(runtime.resolve())
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if env.get(TRY_SCOPE_VAR) != scope:
                continue
            if try_id is not None and env.get(TRY_ID_VAR) != str(try_id):
                continue
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- running --------------------------------------------------------------------------
def test_success_appends_stdout_and_stderr_to_the_log(
    tmp_path: Path, runtime: Path, launcher: LocalLauncher
) -> None:
    log = tmp_path / "logs" / "1.log"
    log.parent.mkdir(parents=True)
    log.write_text("earlier\n")

    handle = launcher.start(sh(tmp_path, 1, "echo out; echo err >&2"))

    assert handle.try_id == 1
    assert handle.host == socket.gethostname()
    assert handle.pid is not None
    assert handle.external_id == f"local:{handle.pid}:{psutil.Process(handle.pid).create_time()}"
    assert launcher.watched() == {1}
    [outcome] = outcomes(launcher)
    assert (outcome.try_id, outcome.exit_code, outcome.reason, outcome.ok) == (1, 0, None, True)
    assert log.read_text() == "earlier\nout\nerr\n"
    assert launcher.watched() == set()
    assert launcher.poll() == []  # reported exactly once
    # What proves the outcome stays until it is recorded, then goes.
    assert sorted(p.name for p in runtime.iterdir()) == ["1.exit", "1.pid"]
    launcher.release([1])
    assert list(runtime.iterdir()) == []


def test_outcome_is_stamped_with_the_injected_clock(tmp_path: Path, runtime: Path) -> None:
    stamp = datetime(2030, 1, 2, tzinfo=UTC)
    launcher = LocalLauncher(runtime, clock=lambda: stamp)
    launcher.start(spec(tmp_path, 1, "true"))
    [outcome] = outcomes(launcher)
    assert outcome.ended_at == stamp
    launcher.close()


def test_env_and_cwd_are_applied(tmp_path: Path, launcher: LocalLauncher) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    command = 'echo "$GREETING"; echo "$REFLOW_TRY_ID"; pwd; echo "${HOME:+home is set}"'
    launcher.start(sh(tmp_path, 7, command, env={"GREETING": "hello"}, cwd=str(workdir)))
    [outcome] = outcomes(launcher)
    assert outcome.ok
    lines = (tmp_path / "logs" / "7.log").read_text().splitlines()
    assert lines == ["hello", "7", str(workdir), "home is set"]


def test_a_try_cannot_override_its_marker(tmp_path: Path, launcher: LocalLauncher) -> None:
    launcher.start(sh(tmp_path, 3, 'echo "$REFLOW_TRY_ID"', env={TRY_ID_VAR: "99"}))
    outcomes(launcher)
    assert (tmp_path / "logs" / "3.log").read_text() == "3\n"


def test_nonzero_exit_is_an_error_with_its_code(tmp_path: Path, launcher: LocalLauncher) -> None:
    launcher.start(sh(tmp_path, 1, "exit 3"))
    [outcome] = outcomes(launcher)
    assert (outcome.exit_code, outcome.reason, outcome.detail) == (
        3,
        FailureReason.ERROR,
        "exit code 3",
    )


def test_a_command_killed_by_a_signal_says_so(tmp_path: Path, launcher: LocalLauncher) -> None:
    launcher.start(sh(tmp_path, 1, "kill -9 $$"))
    [outcome] = outcomes(launcher)
    assert outcome.reason == FailureReason.ERROR
    assert outcome.exit_code == 137
    assert "SIGKILL" in outcome.detail
    assert (tmp_path / "logs" / "1.log").read_text() == ""  # no shell chatter in the log


def test_a_missing_program_fails_with_127_and_says_why_in_the_log(
    tmp_path: Path, launcher: LocalLauncher
) -> None:
    launcher.start(spec(tmp_path, 1, "no-such-program-reflow"))
    [outcome] = outcomes(launcher)
    assert outcome.exit_code == 127
    assert "no-such-program-reflow: not found" in (tmp_path / "logs" / "1.log").read_text()


def test_start_refuses_an_empty_command_and_a_missing_cwd(
    tmp_path: Path, launcher: LocalLauncher
) -> None:
    with pytest.raises(InvalidInput):
        launcher.start(spec(tmp_path, 1))
    with pytest.raises(OSError):
        launcher.start(spec(tmp_path, 2, "true", cwd=str(tmp_path / "missing")))
    assert launcher.watched() == set()


def test_fifty_sequential_true_tries_complete(tmp_path: Path, launcher: LocalLauncher) -> None:
    for try_id in range(1, 51):
        launcher.start(spec(tmp_path, try_id, "true"))
        [outcome] = outcomes(launcher)
        assert (outcome.try_id, outcome.ok) == (try_id, True)
    assert launcher.watched() == set()


def test_normal_exit_kills_what_the_try_left_in_its_process_group(
    tmp_path: Path, runtime: Path, launcher: LocalLauncher
) -> None:
    launcher.start(sh(tmp_path, 1, "sleep 100 & exit 0"))
    [outcome] = outcomes(launcher)
    assert outcome.ok
    wait_for(lambda: not marked(runtime, 1), timeout=2.0)


# -- waiting --------------------------------------------------------------------------
def test_wait_returns_promptly_when_a_try_ends(tmp_path: Path, launcher: LocalLauncher) -> None:
    launcher.start(spec(tmp_path, 1, "sleep", "0.3"))
    started = time.monotonic()
    launcher.wait(10.0)
    assert time.monotonic() - started < 0.3 + 0.2
    assert [o.try_id for o in launcher.poll()] == [1]


def test_wait_without_pidfds_falls_back_to_short_sleeps(
    tmp_path: Path, launcher: LocalLauncher, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(pid: int, flags: int = 0) -> int:
        raise OSError("pidfd_open not supported")

    monkeypatch.setattr(os, "pidfd_open", unavailable)
    launcher.start(spec(tmp_path, 1, "sleep", "0.2"))
    started = time.monotonic()
    launcher.wait(10.0)
    assert time.monotonic() - started < 2.0
    [outcome] = outcomes(launcher)
    assert outcome.ok


def test_idle_wait_sleeps_the_timeout(launcher: LocalLauncher) -> None:
    started = time.monotonic()
    launcher.wait(0.1)
    assert time.monotonic() - started >= 0.09


# -- cancelling -----------------------------------------------------------------------
def test_cancel_kills_the_whole_process_group(
    tmp_path: Path, runtime: Path, launcher: LocalLauncher
) -> None:
    launcher.start(sh(tmp_path, 1, "sleep 100 & sleep 100"))
    wait_for(lambda: len(marked(runtime, 1)) >= 3)  # wrapper, sh, two sleeps
    started = time.monotonic()
    launcher.cancel(1, grace=5.0)
    [outcome] = outcomes(launcher, timeout=5.0 + 2.0)
    assert time.monotonic() - started < 5.0 + 2.0
    assert outcome.reason == FailureReason.ERROR
    assert marked(runtime, 1) == []


def test_cancel_sends_each_process_of_the_try_one_sigterm(
    tmp_path: Path, runtime: Path, launcher: LocalLauncher
) -> None:
    """A task's cleanup handler runs once: the group's signal is not repeated per process."""
    traps = tmp_path / "traps.txt"
    handler = f"trap 'echo term >> {traps}; sleep 0.3; exit 3' TERM; sleep 100 & wait; wait"
    launcher.start(sh(tmp_path, 1, handler))
    wait_for(lambda: any(p.name() == "sleep" for p in marked(runtime, 1)))
    launcher.cancel(1, grace=10.0)
    [outcome] = outcomes(launcher, timeout=10.0)
    assert outcome.exit_code == 3
    assert traps.read_text().split() == ["term"]


@pytest.mark.slow
def test_cancel_escalates_to_sigkill_for_a_child_ignoring_sigterm(
    tmp_path: Path, runtime: Path, launcher: LocalLauncher
) -> None:
    launcher.start(sh(tmp_path, 1, "trap '' TERM; sleep 100; true"))
    wait_for(lambda: any(p.name() == "sleep" for p in marked(runtime, 1)))
    started = time.monotonic()
    launcher.cancel(1, grace=1.0)
    [outcome] = outcomes(launcher, timeout=1.0 + 2.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 1.0 + 2.0
    assert outcome.exit_code == -9
    assert "after the grace period" in outcome.detail
    assert marked(runtime, 1) == []


def test_sigkill_escalation_follows_the_injected_clock(tmp_path: Path, runtime: Path) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    launcher = LocalLauncher(runtime, clock=lambda: now[0])
    launcher.start(sh(tmp_path, 1, "trap '' TERM; sleep 100; true"))
    wait_for(lambda: any(p.name() == "sleep" for p in marked(runtime, 1)))
    launcher.cancel(1, grace=3600.0)
    time.sleep(0.2)
    assert launcher.poll() == []  # SIGTERM is ignored and the grace period is not over
    now[0] += timedelta(hours=1)
    [outcome] = outcomes(launcher, timeout=2.0)
    assert outcome.exit_code == -9
    assert marked(runtime, 1) == []
    launcher.close()


def test_cancel_kills_a_grandchild_that_called_setsid(
    tmp_path: Path, runtime: Path, launcher: LocalLauncher
) -> None:
    # Both escapees ignore SIGTERM and live in their own session; the second one's parent
    # exits at once, so it is not even a descendant when the try is cancelled.
    command = (
        "setsid sh -c \"trap '' TERM; sleep 100; true\" & "
        "(setsid sh -c \"trap '' TERM; sleep 101; true\" &) ; "
        "sleep 100"
    )
    launcher.start(sh(tmp_path, 1, command))
    wait_for(lambda: sum(p.name() == "sleep" for p in marked(runtime, 1)) == 3)
    launcher.cancel(1, grace=5.0)
    outcomes(launcher, timeout=5.0 + 2.0)
    assert marked(runtime, 1) == []


def test_cancel_of_unknown_ids_and_twice_is_harmless(
    tmp_path: Path, runtime: Path, launcher: LocalLauncher
) -> None:
    launcher.cancel(404, grace=1.0)
    launcher.start(sh(tmp_path, 1, "sleep 100"))
    launcher.cancel(1, grace=5.0)
    launcher.cancel(1, grace=5.0)
    [outcome] = outcomes(launcher)
    assert outcome.try_id == 1
    launcher.cancel(1, grace=1.0)  # already reported: unknown again
    assert launcher.poll() == []
    assert marked(runtime, 1) == []


def test_cancel_right_after_start_terminates_without_waiting_for_the_grace_period(
    tmp_path: Path, runtime: Path, launcher: LocalLauncher
) -> None:
    # The SIGTERM may reach the wrapper before or while it forks the command; the command
    # must still get it, not run until the SIGKILL of a grace period far away.
    for try_id in range(1, 21):
        launcher.start(sh(tmp_path, try_id, "sleep 100"))
        launcher.cancel(try_id, grace=60.0)
        [outcome] = outcomes(launcher, timeout=10.0)
        assert outcome.exit_code in (143, -15)
        assert marked(runtime, try_id) == []


# -- adopting ---------------------------------------------------------------------------
def crashed_scheduler_started(tmp_path: Path, runtime: Path, *argv: str) -> TryRef:
    """Start a try with a launcher that is then dropped without reaping anything."""
    first = LocalLauncher(runtime)
    handle = first.start(spec(tmp_path, 1, *argv))
    first.close()
    return TryRef(1, str(tmp_path / "logs" / "1.log"), handle.pid, handle.host, handle.external_id)


def test_adopt_a_running_try_then_report_its_real_exit_code(tmp_path: Path, runtime: Path) -> None:
    ref = crashed_scheduler_started(tmp_path, runtime, "/bin/sh", "-c", "sleep 0.5; exit 3")
    second = LocalLauncher(runtime)
    assert second.adopt(ref) is True
    assert second.watched() == {1}
    assert second.poll() == []
    [outcome] = outcomes(second)
    assert (outcome.exit_code, outcome.reason) == (3, FailureReason.ERROR)
    second.release([1])
    assert list(runtime.iterdir()) == []
    second.close()


def test_adopt_a_try_that_ended_while_nobody_watched(tmp_path: Path, runtime: Path) -> None:
    ref = crashed_scheduler_started(tmp_path, runtime, "/bin/sh", "-c", "exit 5")
    pid = ref.pid
    assert pid is not None
    wait_for(lambda: gone(pid))
    second = LocalLauncher(runtime)
    assert second.adopt(ref) is False
    assert second.watched() == {1}
    second.wait(10.0)  # returns at once: there is something to report
    [outcome] = second.poll()
    assert (outcome.exit_code, outcome.reason) == (5, FailureReason.ERROR)
    second.close()


def test_adopt_a_try_with_no_process_and_no_exit_file_is_lost(runtime: Path) -> None:
    launcher = LocalLauncher(runtime)
    dead = subprocess.Popen(["true"])
    dead.wait()
    external = f"local:{dead.pid}:{time.time() - 60}"
    ref = TryRef(9, "unused.log", pid=dead.pid, host=socket.gethostname(), external_id=external)
    assert launcher.adopt(ref) is False
    [outcome] = launcher.poll()
    assert (outcome.try_id, outcome.exit_code, outcome.reason) == (9, None, FailureReason.LOST)
    assert outcome.detail == "process vanished without an exit status"
    launcher.close()


def test_adopt_guards_against_pid_reuse(tmp_path: Path, runtime: Path) -> None:
    ref = crashed_scheduler_started(tmp_path, runtime, "sleep", "100")
    assert ref.external_id is not None
    _, pid, created = ref.external_id.split(":")
    other = TryRef(1, ref.log_path, ref.pid, ref.host, f"local:{pid}:{float(created) - 1000}")
    launcher = LocalLauncher(runtime)
    assert launcher.adopt(other) is False
    [outcome] = launcher.poll()
    assert outcome.reason == FailureReason.LOST
    # The try is reported lost, so whatever still carries its marker is killed: a retry
    # must never overlap with it.
    wait_for(lambda: marked(runtime, 1) == [], timeout=2.0)
    launcher.close()


def test_adopt_finds_the_process_by_pid_file_or_marker_without_a_handle(
    tmp_path: Path, runtime: Path
) -> None:
    ref = crashed_scheduler_started(tmp_path, runtime, "sleep", "100")
    bare = TryRef(1, ref.log_path, pid=None, host=None, external_id=None)
    by_pid_file = LocalLauncher(runtime)
    assert by_pid_file.adopt(bare) is True
    by_pid_file.close()
    wait_for(lambda: (runtime / "1.pid").exists())
    (runtime / "1.pid").unlink()
    by_marker = LocalLauncher(runtime)
    assert by_marker.adopt(bare) is True
    by_marker.cancel(1, grace=5.0)
    [outcome] = outcomes(by_marker)
    assert outcome.try_id == 1
    assert marked(runtime, 1) == []
    by_marker.close()


def test_adopted_try_can_be_cancelled(tmp_path: Path, runtime: Path) -> None:
    ref = crashed_scheduler_started(tmp_path, runtime, "/bin/sh", "-c", "sleep 100 & sleep 100")
    wait_for(lambda: len(marked(runtime, 1)) >= 3)
    launcher = LocalLauncher(runtime)
    assert launcher.adopt(ref) is True
    launcher.cancel(1, grace=5.0)
    [outcome] = outcomes(launcher, timeout=5.0 + 2.0)
    assert outcome.reason == FailureReason.ERROR
    assert marked(runtime, 1) == []
    launcher.close()


def test_adopt_of_a_try_on_another_host_reports_it_lost(runtime: Path) -> None:
    launcher = LocalLauncher(runtime)
    ref = TryRef(4, "unused.log", pid=1, host="elsewhere.invalid", external_id="local:1:0.0")
    assert launcher.adopt(ref) is False
    [outcome] = launcher.poll()
    assert outcome.reason == FailureReason.LOST
    assert "elsewhere.invalid" in outcome.detail
    launcher.close()


def test_close_leaves_tries_running(tmp_path: Path, runtime: Path) -> None:
    ref = crashed_scheduler_started(tmp_path, runtime, "sleep", "100")
    assert ref.pid is not None
    assert psutil.Process(ref.pid).status() != psutil.STATUS_ZOMBIE
    assert marked(runtime, 1)


def test_start_refuses_a_try_whose_process_still_runs(tmp_path: Path, runtime: Path) -> None:
    crashed_scheduler_started(tmp_path, runtime, "sleep", "100")
    again = LocalLauncher(runtime)
    with pytest.raises(TaskError, match="running already"):
        again.start(spec(tmp_path, 1, "true"))
    assert again.watched() == set()
    again.close()


def test_start_replaces_the_files_of_an_earlier_try_with_the_same_id(
    tmp_path: Path, runtime: Path, launcher: LocalLauncher
) -> None:
    # A deleted and re-created database hands out the same try ids again.
    runtime.mkdir(parents=True)
    (runtime / "5.pid").write_text(f"{dead_pid()}\n")
    (runtime / "5.exit").write_text("0\n")
    launcher.start(sh(tmp_path, 5, "exit 4"))
    [outcome] = outcomes(launcher)
    assert outcome.exit_code == 4


# -- after the outcome: release and sweep ----------------------------------------------
def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("recorded", [True, False], ids=["start-recorded", "start-unrecorded"])
def test_an_outcome_reported_but_not_recorded_is_found_again_after_a_crash(
    tmp_path: Path, runtime: Path, recorded: bool
) -> None:
    first = LocalLauncher(runtime)
    handle = first.start(sh(tmp_path, 1, "exit 3"))
    [outcome] = outcomes(first)
    assert outcome.exit_code == 3
    first.close()  # the scheduler dies before it records the outcome (or even the start)
    log = str(tmp_path / "logs" / "1.log")
    ref = (
        TryRef(1, log, handle.pid, handle.host, handle.external_id) if recorded else TryRef(1, log)
    )

    second = LocalLauncher(runtime)
    assert second.adopt(ref) is False
    [again] = outcomes(second)
    assert (again.exit_code, again.reason, again.detail) == (3, FailureReason.ERROR, "exit code 3")
    second.release([1])
    assert list(runtime.iterdir()) == []
    second.close()


def test_release_cleans_only_the_tries_this_launcher_reported(
    tmp_path: Path, runtime: Path, launcher: LocalLauncher
) -> None:
    launcher.start(spec(tmp_path, 1, "true"))
    launcher.start(spec(tmp_path, 2, "true"))
    outcomes(launcher, count=2)
    launcher.release([2, 404])
    assert sorted(p.name for p in runtime.iterdir()) == ["1.exit", "1.pid"]
    assert launcher.cgroup_of(2) is None


def test_the_scratch_folder_stays_until_release(
    tmp_path: Path, runtime: Path, launcher: LocalLauncher
) -> None:
    log = str(tmp_path / "logs" / "1.log")
    command = ("/bin/sh", "-c", 'echo data > "$REFLOW_SCRATCH/part-0"')
    launcher.start(TrySpec(1, command, log, scratch={"size": "1Gi"}))
    [outcome] = outcomes(launcher)
    assert outcome.ok
    assert (runtime / "scratch" / "1" / "part-0").read_text() == "data\n"
    launcher.release([1])
    assert not (runtime / "scratch" / "1").exists()


def test_sweep_removes_what_tries_that_are_not_live_left_and_keeps_fences_a_day(
    tmp_path: Path, runtime: Path
) -> None:
    first = LocalLauncher(runtime)
    log = str(tmp_path / "logs" / "x.log")
    first.start(spec(tmp_path, 1, "true"))
    first.start(TrySpec(2, ("true",), log, scratch={"size": "1Gi"}))
    outcomes(first, count=2)
    for try_id in (3, 4):  # never started: fenced
        first.adopt(TryRef(try_id, log))
    outcomes(first, count=2)
    first.close()
    day_old = time.time() - 25 * 3600
    os.utime(runtime / "4.pid", (day_old, day_old))

    second = LocalLauncher(runtime)
    assert second.sweep(lambda: {1}) == 2  # try 2 and the old fence of try 4
    assert sorted(p.name for p in runtime.iterdir()) == ["1.exit", "1.pid", "3.pid", "scratch"]
    assert list((runtime / "scratch").iterdir()) == []
    assert (runtime / "3.pid").read_text().strip() == "fenced"
    assert second.cgroup_of(2) is None
    if second.isolation != "marker":
        assert second.cgroup_of(1) is not None
    assert second.sweep(set) == 1
    assert sorted(p.name for p in runtime.iterdir()) == ["3.pid", "scratch"]
    assert second.cgroup_of(1) is None
    second.close()


def test_sweep_kills_a_try_that_is_not_live(tmp_path: Path, runtime: Path) -> None:
    token = unique_sleep()
    crashed_scheduler_started(tmp_path, runtime, "/bin/sh", "-c", f"sleep {token} & sleep {token}")
    wait_for(lambda: len(sleeping(token)) == 2)
    launcher = LocalLauncher(runtime)
    assert launcher.sweep(set) == 1
    wait_for(lambda: not sleeping(token), timeout=2.0)
    launcher.close()


# -- fencing ----------------------------------------------------------------------------
def test_adopt_of_a_try_never_started_fences_it_and_a_late_start_does_not_run_it(
    tmp_path: Path, runtime: Path
) -> None:
    ran = tmp_path / "ran"
    log = str(tmp_path / "logs" / "7.log")
    adopter = LocalLauncher(runtime)
    assert adopter.adopt(TryRef(7, log)) is False
    [outcome] = adopter.poll()
    assert (outcome.try_id, outcome.exit_code, outcome.reason) == (7, None, FailureReason.LOST)
    assert outcome.detail.startswith("fenced") and "never started" in outcome.detail
    adopter.release([7])  # the fence outlives the record of the try
    adopter.close()

    paused = LocalLauncher(runtime)  # the scheduler that queued try 7 resumes
    with pytest.raises(Fenced):
        paused.start(sh(tmp_path, 7, f"touch {ran}"))
    assert paused.watched() == set()
    assert (runtime / "7.pid").read_text().strip() == "fenced"
    assert not ran.exists()
    paused.close()


def test_a_fence_laid_after_start_looked_stops_the_wrapper_before_the_command(
    tmp_path: Path, runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = tmp_path / "ran"
    paused = LocalLauncher(runtime)
    adopter = LocalLauncher(runtime)
    real_popen = subprocess.Popen

    def fenced_meanwhile(*args: object, **kwargs: object) -> object:
        adopter.adopt(TryRef(7, str(tmp_path / "logs" / "7.log")))
        return real_popen(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "Popen", fenced_meanwhile)
    paused.start(sh(tmp_path, 7, f"touch {ran}"))
    monkeypatch.undo()
    [fenced] = adopter.poll()
    assert fenced.detail.startswith("fenced")

    [outcome] = outcomes(paused)
    assert (outcome.exit_code, outcome.reason) == (None, FailureReason.LOST)
    assert outcome.detail.startswith("fenced") and "never ran" in outcome.detail
    assert not ran.exists()
    paused.release([7])
    assert (runtime / "7.pid").read_text().strip() == "fenced"
    paused.close()
    adopter.close()


def test_adopt_of_a_try_never_recorded_waits_for_its_wrapper_to_write_its_pid(
    tmp_path: Path, runtime: Path
) -> None:
    ref = crashed_scheduler_started(tmp_path, runtime, "sleep", "100")
    pid_file = runtime / "1.pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    pid = pid_file.read_text()
    pid_file.write_text("")  # created by the wrapper, its pid not written yet
    writer = threading.Timer(0.3, lambda: pid_file.write_text(pid))
    writer.start()
    adopter = LocalLauncher(runtime)
    assert adopter.adopt(TryRef(1, ref.log_path)) is True
    writer.join()
    assert pid_file.read_text() == pid  # not fenced
    adopter.cancel(1, grace=5.0)
    [outcome] = outcomes(adopter)
    assert (outcome.exit_code, outcome.reason) == (143, FailureReason.ERROR)
    adopter.close()


# -- every process of a try -------------------------------------------------------------
_TOKENS: list[str] = []


def unique_sleep() -> str:
    """A sleep duration no other process uses: its processes are found by their argv."""
    token = f"{1000 + random.randrange(10**6) / 10**7:.7f}"
    _TOKENS.append(token)
    return token


@pytest.fixture(autouse=True)
def no_sleep_survives() -> Iterator[None]:
    """Whatever runs `sleep <token>` after a (failed) test is killed: a process that wiped
    its environment carries no marker that the clean-up of the runtime folder would find."""
    yield
    while _TOKENS:
        for proc in sleeping(_TOKENS.pop()):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def sleeping(token: str) -> list[psutil.Process]:
    """Live processes running ``sleep <token>``, whatever their environment or session."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        argv = proc.info["cmdline"] or []
        ours = len(argv) == 2 and Path(argv[0]).name == "sleep" and argv[1] == token
        if ours and proc.info["status"] != "zombie":
            found.append(proc)
    return found


@pytest.fixture(params=["cgroup", "cgroup-v2", "marker"])
def any_isolation(
    request: pytest.FixtureRequest, runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalLauncher]:
    """A launcher in each way of finding a try's processes that this machine allows: its
    best cgroup hierarchy, a cgroup v2 one (on a hybrid set-up, not the best), none."""
    if request.param == "cgroup-v2":
        v2_only = [m for m in cgroups._cgroup_mounts() if m[0] == 2]
        monkeypatch.setattr(cgroups, "_cgroup_mounts", lambda: v2_only)
    launcher = LocalLauncher(runtime, cgroups=request.param != "marker")
    if request.param != "marker" and launcher.isolation == "marker":
        launcher.close()
        pytest.skip(f"no writable {request.param} hierarchy on this machine")
    if request.param == "cgroup-v2":
        assert launcher.isolation == "cgroup v2"
    yield launcher
    launcher.close()


def test_a_timed_out_try_leaves_nothing_even_a_grandchild_that_wiped_its_environment(
    tmp_path: Path, any_isolation: LocalLauncher
) -> None:
    launcher, grace = any_isolation, 1.0
    token = unique_sleep()
    # The grandchild also ignores SIGTERM: only a SIGKILL that finds it stops it.
    escapee = f"env -i setsid -f /bin/sh -c \"trap '' TERM; /bin/sleep {token}\""
    launcher.start(sh(tmp_path, 1, f"{escapee}; sleep {token}"))
    wait_for(lambda: len(sleeping(token)) == 2)
    deadline = time.monotonic() + grace + 2.0
    launcher.cancel(1, grace=grace)  # the task's timeout
    [outcome] = outcomes(launcher, timeout=grace + 5.0)
    assert not outcome.ok
    wait_for(lambda: not sleeping(token), timeout=max(0.0, deadline - time.monotonic()))


def test_without_cgroups_an_orphan_another_try_could_own_is_killed_when_that_try_ends(
    tmp_path: Path, runtime: Path
) -> None:
    launcher = LocalLauncher(runtime, cgroups=False)
    go = tmp_path / "go"
    launcher.start(sh(tmp_path, 2, f"while [ ! -e {go} ]; do sleep 0.05; done"))
    token = unique_sleep()
    launcher.start(sh(tmp_path, 1, f"env -i setsid -f sleep {token}; sleep {token}"))
    wait_for(lambda: len(sleeping(token)) == 2)
    launcher.cancel(1, grace=1.0)
    [first] = outcomes(launcher)
    assert first.try_id == 1
    assert len(sleeping(token)) == 1  # the orphan may be try 2's: left alone meanwhile
    go.touch()  # try 2 ends: nothing running can own the orphan any more
    [second] = outcomes(launcher)
    assert (second.try_id, second.ok) == (2, True)
    wait_for(lambda: not sleeping(token), timeout=2.0)
    launcher.close()


def test_in_a_cgroup_a_try_that_ended_leaves_nothing_behind(
    tmp_path: Path, runtime: Path, launcher: LocalLauncher
) -> None:
    if launcher.isolation == "marker":
        pytest.skip("no writable cgroup hierarchy on this machine")
    token = unique_sleep()
    launcher.start(sh(tmp_path, 1, f"env -i setsid -f sleep {token}; exit 0"))
    [outcome] = outcomes(launcher)
    assert outcome.ok
    wait_for(lambda: not sleeping(token), timeout=2.0)


def test_two_projects_never_touch_each_others_tries(tmp_path: Path) -> None:
    mine, theirs = LocalLauncher(tmp_path / "mine"), LocalLauncher(tmp_path / "theirs")
    my_token, their_token = unique_sleep(), unique_sleep()
    mine.start(spec(tmp_path / "a", 1, "sleep", my_token))
    theirs.start(spec(tmp_path / "b", 1, "sleep", their_token))
    wait_for(lambda: bool(sleeping(my_token) and sleeping(their_token)))
    mine.cancel(1, grace=1.0)
    outcomes(mine)
    mine.sweep(set)
    assert not sleeping(my_token)
    assert len(sleeping(their_token)) == 1
    theirs.cancel(1, grace=1.0)
    outcomes(theirs)
    for launcher in (mine, theirs):
        launcher.release([1])
        launcher.close()


def test_the_launcher_says_in_one_line_how_it_finds_the_processes_of_a_try(
    runtime: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="reflow.launchers.local"):
        launcher = LocalLauncher(runtime)
    [line] = [r.getMessage() for r in caplog.records if r.name == "reflow.launchers.local"]
    if launcher.isolation == "marker":
        assert "no writable cgroup" in line
    else:
        assert launcher.isolation in line
    launcher.close()


# -- what a try used --------------------------------------------------------------------------
BURN = (
    "import time\n"
    "end = time.process_time() + {seconds}\n"
    "while time.process_time() < end:\n"
    "    pass\n"
)


def test_a_try_reports_the_cpu_seconds_and_peak_memory_of_its_whole_process_tree(
    tmp_path: Path, launcher: LocalLauncher
) -> None:
    # Two grandchildren burn 0.4 CPU-seconds each (CPU time: a loaded machine only makes
    # them take longer); one of them also holds 200 MB for a moment.
    burn = (tmp_path / "burn.py").resolve()
    burn.write_text(BURN.format(seconds=0.4))
    hold = (tmp_path / "hold.py").resolve()
    hold.write_text("block = bytearray(200 * 1024 * 1024)\n" + BURN.format(seconds=0.4))
    python = sys.executable
    launcher.start(sh(tmp_path, 1, f"{python} {burn} & {python} {hold} & wait"))
    [outcome] = outcomes(launcher, timeout=120)
    assert outcome.ok
    [held] = outcome.held
    assert held.kind == "process" and held.cpu_seconds is not None and held.peak_memory
    # Both burns, plus the interpreters' start-up and the shells: more than 0.8, and not
    # wildly more.
    assert 0.8 <= held.cpu_seconds < 3.0, held.cpu_seconds
    # The largest process of the tree held the 200 MB block.
    assert 200 * 1024 * 1024 <= held.peak_memory < 1024 * 1024 * 1024, held.peak_memory
    # From the wrapper's start to the outcome: priced by what was measured.
    assert held.began is not None and held.began <= outcome.ended_at == held.ended
    assert held.usage().measured and held.seconds >= Decimal("0.4")


def test_an_adopted_try_is_not_measured(tmp_path: Path, runtime: Path) -> None:
    # Its wrapper is another process's child: what it used cannot be read here.
    ref = crashed_scheduler_started(tmp_path, runtime, "/bin/sh", "-c", "sleep 0.5")
    second = LocalLauncher(runtime)
    assert second.adopt(ref) is True
    [outcome] = outcomes(second)
    assert outcome.ok and outcome.held == ()
    second.release([1])
    second.close()
