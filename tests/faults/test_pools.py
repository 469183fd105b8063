"""A pool's slots hold across several schedulers sharing a PostgreSQL database: sampled in
the store while they work, and checked against what the tasks themselves recorded."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from .conftest import Installation, wait_for
from .invariants import Expect, check_invariants, evidence_step, read_evidence, summary

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300)]

SLOTS = 3
# Two pipelines share the pool; ``wide`` takes two slots per try.
PIPELINES = """\
from reflow import Pipeline, Shell

with Pipeline("left", schedule="@daily", start_date="2024-01-01", end_date="2024-01-06",
              catchup=True, max_active_runs=6):
    Shell("narrow", {step!r}, pool="spark") >> Shell("wide", {step!r}, pool="spark", pool_slots=2)

with Pipeline("right", schedule="@daily", start_date="2024-01-01", end_date="2024-01-06",
              catchup=True, max_active_runs=6):
    Shell("one", {step!r}, pool="spark", priority_weight=10) >> Shell("free", {step!r})
"""
EXPECT = {
    "left": Expect(tasks=("narrow", "wide"), runs=6, max_active_runs=6),
    "right": Expect(tasks=("one", "free"), runs=6, max_active_runs=6),
}
SLOTS_OF = {"narrow": 1, "wide": 2, "one": 1, "free": 0}
_IN_USE = (
    "SELECT coalesce(sum(pool_slots), 0) FROM tries "
    "WHERE pool = 'spark' AND state IN ('queued', 'running')"
)


@pytest.mark.postgres
def test_three_schedulers_never_use_more_slots_than_the_pool_has(
    make_installation: Callable[..., Installation],
) -> None:
    inst = make_installation("postgres")
    with (inst.home / "reflow.toml").open("a") as fh:
        fh.write(f"[reflow.pools]\nspark = {SLOTS}\n")
    inst.write_pipeline("shared", PIPELINES.format(step=evidence_step(inst.evidence, 0.4)))
    procs = [inst.scheduler() for _ in range(3)]
    wait_for(lambda: all(inst.registered(p) for p in procs), 60, "the schedulers registering")

    samples, most = 0, 0
    deadline = time.monotonic() + 240
    while not inst.runs_finished(12):
        assert time.monotonic() < deadline, "the runs did not finish within 240 s"
        most = max(most, int(inst.scalar(_IN_USE)))
        samples += 1
        time.sleep(0.01)
    assert most <= SLOTS, f"{most} slots in use at once (pool of {SLOTS})"
    assert most >= 2, f"the pool was hardly used ({most} at most in {samples} samples)"

    # What the tasks recorded: at no instant did they hold more than the pool's slots.
    evidence = read_evidence(inst.evidence)
    assert not evidence.problems, summary(evidence.problems)
    changes = sorted(
        [(e.start, SLOTS_OF[e.task]) for e in evidence.executions]
        + [(e.end, -SLOTS_OF[e.task]) for e in evidence.executions if e.end is not None],
        key=lambda c: (c[0], c[1]),  # an end before a start at the same instant
    )
    held = peak = 0
    for _, delta in changes:
        held += delta
        peak = max(peak, held)
    assert peak <= SLOTS, f"the tasks held {peak} slots at once (pool of {SLOTS})"
    for proc in procs:
        assert inst.stop(proc) == 0, inst.output(proc)
    failures = check_invariants(inst.db_url, inst.evidence, EXPECT)
    assert not failures, summary(failures)
