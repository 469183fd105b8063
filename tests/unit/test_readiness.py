"""Readiness without a database: what a run's task instances may do next."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from reflow.core.states import RunState, TIState
from reflow.scheduler.readiness import Shape, Step, decide

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def shape(**upstreams: str) -> Shape:
    """``a="", b="a", c="a b"``: tasks with their upstreams, in this order; a name in
    upper case is a plain Task (a no-op join point)."""
    steps = {
        name.lower(): Step(frozenset(ups.split()), no_op=name.isupper())
        for name, ups in upstreams.items()
    }
    return Shape(steps, {name: i for i, name in enumerate(steps)})


def tis(**states: str | tuple[str, datetime]) -> list[SimpleNamespace]:
    out = []
    for i, (task, value) in enumerate(states.items(), start=1):
        state, at = value if isinstance(value, tuple) else (value, None)
        out.append(SimpleNamespace(id=i, task_id=task, state=state, next_try_at=at))
    return out


def test_roots_are_ready_and_downstreams_wait() -> None:
    d = decide(tis(a="pending", b="pending"), shape(a="", b="a"), NOW)
    assert d.scheduled == {TIState.PENDING: [1]}
    assert (d.no_ops, d.upstream_failed, d.outcome, d.held) == ([], [], None, False)


def test_a_task_is_ready_once_every_upstream_succeeded_skipped_or_removed() -> None:
    s = shape(a="", b="", r="", c="a b r")
    assert decide(tis(a="success", b="running", r="removed", c="pending"), s, NOW).scheduled == {}
    d = decide(tis(a="success", b="skipped", r="removed", c="pending"), s, NOW)
    assert d.scheduled == {TIState.PENDING: [4]}


def test_a_failure_fails_every_downstream_in_one_pass() -> None:
    d = decide(tis(a="failed", b="pending", c="pending"), shape(a="", b="a", c="b"), NOW)
    assert d.upstream_failed == [2, 3]
    assert d.outcome == RunState.FAILED


def test_a_cancelled_upstream_counts_as_a_failure() -> None:
    d = decide(tis(a="cancelled", b="pending"), shape(a="", b="a"), NOW)
    assert d.upstream_failed == [2]


def test_a_retry_waits_for_its_time() -> None:
    later = NOW + timedelta(seconds=30)
    s = shape(a="")
    assert decide(tis(a=("up_for_retry", later)), s, NOW).scheduled == {}
    assert decide(tis(a=("up_for_retry", later)), s, later).scheduled == {TIState.UP_FOR_RETRY: [1]}
    assert decide(tis(a="up_for_retry"), s, NOW).scheduled == {TIState.UP_FOR_RETRY: [1]}


def test_a_join_point_succeeds_at_once_and_frees_its_downstreams_in_the_same_pass() -> None:
    d = decide(tis(a="success", j="pending", b="pending"), shape(a="", J="a", b="j"), NOW)
    assert d.no_ops == [2]
    assert d.scheduled == {TIState.PENDING: [3]}


def test_a_run_ends_when_every_instance_has_finished() -> None:
    s = shape(a="", J="a")
    assert decide(tis(a="success", j="pending"), s, NOW).outcome == RunState.SUCCESS
    assert decide(tis(a="success", j="success"), s, NOW).outcome == RunState.SUCCESS
    assert decide(tis(a="running", j="pending"), s, NOW).outcome is None
    assert decide([], s, NOW).outcome is None  # no instance: nothing to end


def test_the_instance_of_a_removed_task_is_left_alone() -> None:
    d = decide(tis(a="success", gone="failed"), shape(a=""), NOW)
    assert d.scheduled == {} and d.outcome == RunState.FAILED


def test_a_live_instance_of_a_removed_task_holds_the_run() -> None:
    d = decide(tis(a="pending", gone="running"), shape(a=""), NOW)
    assert d.held and not d.writes


def test_deciding_again_after_applying_changes_nothing() -> None:
    """One pass is a fixpoint: applied, the same decision has nothing left to do."""
    s = shape(a="", J="a", b="j", c="b", d="")
    before = tis(a="success", j="pending", b="pending", c="pending", d="failed")
    first = decide(before, s, NOW)
    moved = {i: "success" for i in first.no_ops}
    moved |= {i: "scheduled" for ids in first.scheduled.values() for i in ids}
    moved |= {i: "upstream_failed" for i in first.upstream_failed}
    after = [SimpleNamespace(**{**vars(t), "state": moved.get(t.id, t.state)}) for t in before]
    second = decide(after, s, NOW)
    assert not second.writes
