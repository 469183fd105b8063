"""The launcher contract, one suite run against every launcher: the local one (real
processes) and the kubernetes one against the fake API server, whose kubelet runs each
pod's command as a local process, so that both are checked by what their commands did.

A "restart" is a new launcher instance on the same runtime folder or cluster: what a
scheduler that was killed, and the one that replaced it, would each have.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from reflow.core.errors import Fenced
from reflow.core.spec import Handle, Outcome, TryRef, TrySpec
from reflow.core.states import FailureReason
from reflow.launchers.base import Launcher
from reflow.launchers.local import LocalLauncher

from ..k8s.conftest import cluster  # noqa: F401 - the fake cluster, for the kubernetes case

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="real processes and /proc")

TRY_ID_LABEL = "reflow.io/try-id"


@dataclass
class Harness:
    """One launcher kind: how to make an instance of it, and what a try leaves behind."""

    kind: str
    folder: Path
    make_launcher: Callable[[], Launcher]
    # What is left of a try: files, cgroups, pods, secrets (by name).
    left_of: Callable[[int], list[str]]
    made: list[Launcher] = field(default_factory=list)

    def launcher(self) -> Launcher:
        """A new instance, as a (re)started scheduler makes it."""
        launcher = self.make_launcher()
        self.made.append(launcher)
        return launcher

    def spec(self, try_id: int, command: str) -> TrySpec:
        return TrySpec(
            try_id,
            ("/bin/sh", "-c", command),
            self.log(try_id),
            env={"REFLOW_DS": "2024-01-03"},
            kill_grace=1.0,
            labels={"pipeline": "contract", "run_id": "manual__1", "task": "t", "try_number": "1"},
            launcher=self.kind,
        )

    def ref(self, try_id: int, handle: Handle | None = None) -> TryRef:
        """The store's record of a try: with its handle once recorded as started."""
        if handle is None:
            return TryRef(try_id, self.log(try_id), launcher=self.kind)
        return TryRef(
            try_id, self.log(try_id), handle.pid, handle.host, handle.external_id, self.kind
        )

    def log(self, try_id: int) -> str:
        return str(self.folder / "logs" / f"{try_id}.log")

    def file(self, name: str) -> Path:
        """A path the tries' commands can write, to show what they did."""
        return self.folder / "marks" / name


def local_harness(folder: Path) -> Iterator[Harness]:
    runtime = folder / "runtime"
    inspector = LocalLauncher(runtime)

    def left_of(try_id: int) -> list[str]:
        found = [p.name for p in runtime.glob(f"{try_id}.*")]
        found += [f"scratch/{p.name}" for p in runtime.glob(f"scratch/{try_id}")]
        cgroup = inspector.cgroup_of(try_id)
        return [*found, str(cgroup)] if cgroup is not None else found

    harness = Harness("local", folder, lambda: LocalLauncher(runtime), left_of)
    yield harness
    for launcher in harness.made:
        launcher.close()
    inspector.sweep(set)  # kills and removes whatever a failed test left
    inspector.close()


def kubernetes_harness(folder: Path, fake: Any) -> Iterator[Harness]:
    from reflow.launchers.kubernetes.launcher import KubernetesLauncher

    if fake.real:
        pytest.skip("the contract suite looks at the commands' processes: fake API server only")

    def left_of(try_id: int) -> list[str]:
        objects = [("pod", o) for o in fake.pods()] + [("secret", o) for o in fake.secrets()]
        return [
            f"{kind}/{o['metadata']['name']}"
            for kind, o in objects
            if (o["metadata"].get("labels") or {}).get(TRY_ID_LABEL) == str(try_id)
        ]

    harness = Harness("kubernetes", folder, lambda: KubernetesLauncher(fake.settings), left_of)
    yield harness
    for launcher in harness.made:
        launcher.close()


@pytest.fixture(params=["local", pytest.param("kubernetes", marks=[pytest.mark.k8s])])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    (tmp_path / "marks").mkdir()
    if request.param == "local":
        yield from local_harness(tmp_path)
    else:
        pytest.importorskip("kubernetes")
        yield from kubernetes_harness(tmp_path, request.getfixturevalue("cluster"))


def outcomes(launcher: Launcher, count: int = 1, timeout: float = 30.0) -> list[Outcome]:
    """Wait and poll until ``count`` outcomes were reported."""
    found: list[Outcome] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        assert time.monotonic() < deadline, f"only {len(found)} of {count} outcomes"
        launcher.wait(0.2)
        found += launcher.poll()
    return found


def wait_for(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not met within {timeout}s"
        time.sleep(0.05)


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
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] == ["sleep", token] and proc.info["status"] != "zombie":
            found.append(proc)
    return found


def held(go: Path, code: int) -> str:
    """A command that runs until ``go`` exists, then exits with ``code``."""
    return f"while [ ! -e {go} ]; do sleep 0.05; done; exit {code}"


# -- the contract -------------------------------------------------------------------------
def test_poll_reports_success_and_failure_with_their_exit_codes(harness: Harness) -> None:
    launcher = harness.launcher()
    launcher.start(harness.spec(1, "echo fine"))
    launcher.start(harness.spec(2, "exit 3"))
    assert launcher.watched() == {1, 2}
    found = {o.try_id: o for o in outcomes(launcher, count=2)}
    assert (found[1].ok, found[1].exit_code, found[1].reason) == (True, 0, None)
    assert (found[2].ok, found[2].exit_code, found[2].reason) == (False, 3, FailureReason.ERROR)
    assert launcher.watched() == set()
    assert launcher.poll() == []  # each outcome is reported once


def test_cancel_stops_a_try_and_poll_reports_it(harness: Harness) -> None:
    launcher = harness.launcher()
    token = unique_sleep()
    launcher.start(harness.spec(1, f"sleep {token}"))
    wait_for(lambda: bool(sleeping(token)), what="the try runs")
    grace = 1.0
    launcher.cancel(1, grace)
    [outcome] = outcomes(launcher, timeout=grace + 15.0)
    assert (outcome.try_id, outcome.ok) == (1, False)
    wait_for(lambda: not sleeping(token), timeout=grace + 2.0, what="nothing of the try runs")


def test_a_restarted_scheduler_adopts_a_running_try_and_watches_it_to_its_end(
    harness: Harness,
) -> None:
    go = harness.file("go")
    first = harness.launcher()
    handle = first.start(harness.spec(1, held(go, 4)))
    first.close()  # the scheduler dies; its try runs on

    second = harness.launcher()
    assert second.adopt(harness.ref(1, handle)) is True
    assert second.watched() == {1}
    go.touch()
    [outcome] = outcomes(second)
    assert (outcome.try_id, outcome.exit_code, outcome.reason) == (1, 4, FailureReason.ERROR)


@pytest.mark.parametrize("recorded", [True, False], ids=["start-recorded", "start-unrecorded"])
def test_an_outcome_polled_but_not_released_survives_a_restart(
    harness: Harness, recorded: bool
) -> None:
    first = harness.launcher()
    handle = first.start(harness.spec(1, "exit 0"))
    [outcome] = outcomes(first)
    assert outcome.ok
    first.close()  # dies before recording the outcome (and, unrecorded, even the start)

    second = harness.launcher()
    second.adopt(harness.ref(1, handle if recorded else None))
    [again] = outcomes(second)
    assert (again.try_id, again.exit_code, again.reason) == (1, 0, None), again.detail
    second.release([1])
    wait_for(lambda: not harness.left_of(1), what="nothing left of the try")


def test_what_proves_an_outcome_stays_until_release_then_nothing_is_left(
    harness: Harness,
) -> None:
    launcher = harness.launcher()
    launcher.start(harness.spec(1, "true"))
    [outcome] = outcomes(launcher)
    assert outcome.ok
    launcher.poll()
    assert harness.left_of(1), "the outcome's proof went before it was recorded"
    launcher.release([1, 404])  # ids the launcher does not know are ignored
    wait_for(lambda: not harness.left_of(1), what="nothing left of the try")


def test_adopt_of_a_try_never_started_fences_it(harness: Harness) -> None:
    ran = harness.file("ran")
    adopter = harness.launcher()
    assert adopter.adopt(harness.ref(7)) is False
    [outcome] = outcomes(adopter)
    assert (outcome.try_id, outcome.ok, outcome.reason) == (7, False, FailureReason.LOST)
    adopter.release([7])

    paused = harness.launcher()  # the scheduler that queued try 7 resumes and starts it
    try:
        paused.start(harness.spec(7, f"touch {ran}"))
    except Fenced:
        assert paused.watched() == set()
    else:
        [late] = outcomes(paused)
        assert (late.ok, late.reason) == (False, FailureReason.LOST)
        assert "fenced" in late.detail
    assert not ran.exists(), "a fenced try ran its command"


def test_adopt_of_a_try_never_recorded_finds_it_running_by_its_identity(
    harness: Harness,
) -> None:
    go = harness.file("go")
    first = harness.launcher()
    first.start(harness.spec(1, held(go, 5)))
    first.close()  # dies before recording the start

    second = harness.launcher()
    assert second.adopt(harness.ref(1)) is True
    go.touch()
    [outcome] = outcomes(second)
    assert (outcome.try_id, outcome.exit_code, outcome.reason) == (1, 5, FailureReason.ERROR)
