"""The scheduler's metrics count what committed, once; liveness says stuck only when the
loop is (no database, no HTTP: the decisions alone)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from reflow.core.spec import Outcome
from reflow.core.states import FailureReason, TIState
from reflow.scheduler.metrics import SchedulerMetrics
from reflow.scheduler.outcomes import Verdict
from reflow.scheduler.probes import liveness

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def run_times(times: int) -> Callable[[Callable[[Any], Any]], Any]:
    """A stand-in for Database.write that runs the work ``times`` times (as after lock
    contention: the earlier attempts were rolled back)."""

    def write(work: Callable[[Any], Any]) -> Any:
        result = None
        for _ in range(times):
            result = work(None)
        return result

    return write


def failing(work: Callable[[Any], Any]) -> Any:
    work(None)
    raise RuntimeError("the commit failed")


def timeouts(metrics: SchedulerMetrics, kind: str = "run") -> float | None:
    return metrics.registry.get_sample_value(
        "reflow_timeouts_total", {"pipeline": "p", "kind": kind}
    )


def test_what_a_transaction_counts_is_counted_once_when_it_commits() -> None:
    metrics = SchedulerMetrics()

    def work(_conn: Any) -> str:
        metrics.run_timed_out("p")
        assert timeouts(metrics) in (None, 0)  # not before the commit
        return "done"

    assert metrics.write(run_times(3), work) == "done"
    assert timeouts(metrics) == 1
    samples = metrics.registry.get_sample_value("reflow_db_write_duration_seconds_count")
    assert samples == 1


def test_a_transaction_that_fails_counts_nothing() -> None:
    metrics = SchedulerMetrics()
    with pytest.raises(RuntimeError):
        metrics.write(failing, lambda _conn: metrics.run_timed_out("p"))
    assert timeouts(metrics) is None
    # Outside a transaction, a count is immediate.
    metrics.run_timed_out("p")
    assert timeouts(metrics) == 1


def test_a_try_that_ended_is_timed_and_its_retry_loss_or_timeout_counted() -> None:
    metrics = SchedulerMetrics()
    row = SimpleNamespace(pipeline="p", task_id="t")

    def ended(reason: str | None, state: TIState, started: datetime | None) -> None:
        verdict = Verdict(reason is None, reason, {"started_at": started}, state)
        outcome = Outcome(1, None if reason else 0, reason, T0 + timedelta(seconds=90))
        metrics.try_ended(row, outcome, verdict)

    ended(FailureReason.LOST, TIState.UP_FOR_RETRY, None)  # never started: no duration
    ended(FailureReason.TIMED_OUT, TIState.FAILED, T0)
    ended(None, TIState.SUCCESS, T0 + timedelta(seconds=60))
    value = metrics.registry.get_sample_value
    labels = {"pipeline": "p", "task": "t"}
    assert value("reflow_try_duration_seconds_count", labels) == 2
    assert value("reflow_try_duration_seconds_sum", labels) == 90 + 30
    assert value("reflow_try_duration_seconds_bucket", {**labels, "le": "30.0"}) == 1
    assert value("reflow_retries_total", labels) == 1
    assert value("reflow_lost_tries_total", {"pipeline": "p"}) == 1
    assert timeouts(metrics, "task") == 1


def test_a_tick_is_timed_only_when_it_completes_but_the_loop_came_round_either_way() -> None:
    metrics = SchedulerMetrics()
    assert metrics.loop_at is None
    assert metrics.timed(lambda: True) is True

    def broken() -> bool:
        raise RuntimeError("database trouble")

    with pytest.raises(RuntimeError):
        metrics.timed(broken)
    assert metrics.registry.get_sample_value("reflow_scheduler_tick_duration_seconds_count") == 1
    assert metrics.loop_at is not None


@pytest.mark.parametrize(
    ("loop_at", "outage", "ok"),
    [
        (None, False, True),  # starting: registering, reading its pipeline files
        (95.0, False, True),  # came round 5 s ago, within 30 s
        (60.0, False, False),  # 40 s without coming round: stuck
        (60.0, True, True),  # waiting out a database outage: a restart would not help
    ],
)
def test_liveness_fails_only_for_a_loop_that_stopped_coming_round(
    loop_at: float | None, outage: bool, ok: bool
) -> None:
    health = liveness(loop_at, now=100.0, limit=30.0, outage=outage)
    assert health.ok is ok
    assert health.detail and "\n" not in health.detail


def test_a_loop_stuck_in_its_first_tick_is_judged_from_its_start() -> None:
    metrics = SchedulerMetrics()
    metrics.loop_began()
    assert metrics.loop_at is not None
    assert liveness(metrics.loop_at, metrics.loop_at + 29.0, limit=30.0, outage=False).ok
    stuck = liveness(metrics.loop_at, metrics.loop_at + 31.0, limit=30.0, outage=False)
    assert not stuck.ok and "has not come round for 31 s" in stuck.detail
    waiting = liveness(metrics.loop_at, metrics.loop_at + 31.0, limit=30.0, outage=True)
    assert waiting.ok and waiting.detail == "waiting for the database to answer again"
