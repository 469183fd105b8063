"""Every named crash point, on every backend and launcher: a scheduler killed (SIGKILL) right
there, then a normal one finishes the work, and nothing is lost, repeated or left behind.

A trial fails when the armed process did not die at its point: a trial that killed nothing
proves nothing (and names a point still missing from the code).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reflow.core.faults import CRASH_POINTS
from reflow.store.db import MIGRATIONS

from .conftest import Databases, Installation, schema_is_complete, wait_for
from .invariants import Expect, check_invariants, evidence_step, stubborn_step, summary
from .test_notify_faults import POINTS as NOTIFIER_POINTS

pytestmark = pytest.mark.faults

# Three daily runs of a -> b (two at a time, one retry each), and a run whose only task
# overruns its timeout so that the cancellation points are crossed too.
FAULTY = """\
from reflow import Pipeline, Shell

with Pipeline("faulty", schedule="@daily", start_date="2024-01-01", end_date="2024-01-03",
              catchup=True, max_active_runs=2,
              defaults={{"retries": 1, "retry_delay": 0}}):
    Shell("a", {a!r}) >> Shell("b", {b!r})
"""
STUBBORN = """\
from reflow import Pipeline, Shell

with Pipeline("stubborn", schedule="@daily", start_date="2024-01-01", end_date="2024-01-01",
              catchup=True, max_active_runs=1, defaults={{"retries": 0}}):
    Shell("hang", {hang!r}, timeout=1, kill_grace=2)
"""
WORKLOAD = {
    "faulty": Expect(tasks=("a", "b"), runs=3, max_active_runs=2),
    "stubborn": Expect(tasks=("hang",), runs=1, max_active_runs=1, fails_with="timed_out"),
}
RUNS = sum(e.runs for e in WORKLOAD.values())

# The notifier's points need a channel to deliver to: test_notify_faults crosses them.
SCHEDULER_POINTS = [
    p for p in CRASH_POINTS if p != "migration.step" and not p.startswith("notify.")
]
MIGRATION_STEPS = len(list((MIGRATIONS / "versions").glob("[0-9]*.py")))


def _cases() -> list[Any]:
    cases: list[Any] = []
    for point in SCHEDULER_POINTS:
        for backend in ("sqlite", "postgres"):
            for launcher in ("local", "kubernetes"):
                marks = [pytest.mark.slow]
                if backend == "postgres":
                    marks.append(pytest.mark.postgres)
                if launcher == "kubernetes":
                    marks.append(pytest.mark.k8s)
                cases.append(
                    pytest.param(
                        point, backend, launcher, id=f"{point}-{backend}-{launcher}", marks=marks
                    )
                )
    return cases


def _workload(inst: Installation) -> None:
    inst.write_pipeline(
        "faulty",
        FAULTY.format(a=evidence_step(inst.evidence, 0.2), b=evidence_step(inst.evidence, 0.2)),
    )
    inst.write_pipeline("stubborn", STUBBORN.format(hang=stubborn_step(inst.evidence, 30)))


def _crash(inst: Installation, point: str) -> None:
    """Run a scheduler armed at ``point`` until it kills itself there."""
    proc = inst.scheduler(crash_at=point)
    # Once every run is over, no point can be crossed any more.
    wait_for(
        lambda: proc.poll() is not None or inst.runs_finished(RUNS),
        timeout=90,
        what=f"the scheduler armed at {point} to die or finish",
    )
    if proc.poll() is None:
        inst.stop(proc)
        pytest.fail(
            f"the scheduler finished the whole workload without crossing the crash point "
            f"{point!r}: it is not placed in the code (or not on this path)"
        )
    assert inst.died_at(point, proc), (
        f"the scheduler armed at {point} exited {proc.returncode} without dying there\n"
        + inst.output(proc)
    )
    assert proc.returncode == -9


def _finish(inst: Installation) -> None:
    """A normal scheduler sees every run through, then stops cleanly."""
    proc = inst.scheduler()
    try:
        wait_for(
            lambda: proc.poll() is not None or inst.runs_finished(RUNS),
            timeout=90,
            what="every run to finish after the crash",
        )
    finally:
        code = inst.stop(proc)
    assert code == 0, f"the scheduler exited {code}\n{inst.output(proc)}"
    assert "Traceback" not in inst.output(proc), inst.output(proc)


@pytest.mark.parametrize(("point", "backend", "launcher"), _cases())
def test_a_scheduler_killed_at_the_point_loses_and_repeats_nothing(
    point: str, backend: str, launcher: str, make_installation: Callable[..., Installation]
) -> None:
    inst = make_installation(backend, launcher)
    _workload(inst)
    _crash(inst, point)
    _finish(inst)
    violations = check_invariants(inst.db_url, inst.evidence, WORKLOAD)
    assert not violations, summary(violations)


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
@pytest.mark.parametrize("step", range(1, MIGRATION_STEPS + 1))
def test_a_migration_killed_midway_leaves_a_database_the_next_command_completes(
    step: int,
    backend: str,
    databases: Databases,
    make_installation: Callable[..., Installation],
) -> None:
    inst = make_installation(backend, db_url=databases.new(backend, migrated=False))
    point = f"migration.step:{step}"
    proc = inst.start("db", "upgrade", crash_at=point)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    assert inst.died_at("migration.step", proc), (
        f"`reflow db upgrade` armed at {point} exited {proc.returncode} without dying there "
        f"(the point is not placed in the migrations)\n{inst.output(proc)}"
    )
    again = inst.run("db", "upgrade")
    assert again.returncode == 0, again.stdout + again.stderr
    assert schema_is_complete(inst.db_url) == []
    listed = inst.run("pipelines", "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr


def test_every_crash_point_has_a_trial() -> None:
    covered = {c.values[0] for c in _cases()} | {"migration.step"} | set(NOTIFIER_POINTS)
    assert covered == set(CRASH_POINTS)


def test_the_checker_sees_executions_that_overlap_or_that_the_store_never_recorded(
    tmp_path: Path, sqlite_template: Path
) -> None:
    db = tmp_path / "empty.db"
    shutil.copy(sqlite_template, db)
    evidence = tmp_path / "evidence.txt"
    evidence.write_text(
        "start p manual__1 a 1 101 10.0\n"
        "start p manual__1 a 2 102 10.5\n"
        "end p manual__1 a 1 101 11.0 ok\n"
        "end p manual__1 a 2 102 11.5 ok\n"
        "garbage\n"
    )
    violations = check_invariants(f"sqlite:///{db}", evidence, {"p": Expect(("a",), 1, 1)})
    assert any("ran twice at once" in v for v in violations), violations
    assert any("the store has no record of" in v for v in violations), violations
    assert any("malformed" in v for v in violations), violations
    assert any("has 0 runs, expected 1" in v for v in violations), violations
