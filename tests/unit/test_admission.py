"""Admission of queued runs: a pure decision, tested without a database."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace as Row

from reflow.core.states import PRIORITY, BackfillState, RunOrigin
from reflow.scheduler.admission import admissible


def run(  # type: ignore[no-untyped-def]
    id: int,
    pipeline: str = "p",
    day: int = 1,
    origin: str = "scheduled",
    backfill=None,
    priority: int | None = None,
):
    return Row(
        id=id,
        pipeline=pipeline,
        origin=origin,
        logical_date=datetime(2024, 1, day, tzinfo=UTC),
        backfill_id=backfill,
        priority=PRIORITY[RunOrigin(origin)] if priority is None else priority,
    )


def limits(**max_active: int) -> dict[str, Row]:
    return {name: Row(max_active_runs=n) for name, n in max_active.items()}


def backfill(
    id: int, limit: int | None = None, state: str = "running", order: str = "oldest"
) -> Row:
    return Row(id=id, max_active_runs=limit, state=BackfillState(state), run_order=order)


def ids(runs: list[Row]) -> list[int]:
    return [r.id for r in runs]


def test_runs_start_up_to_max_active_runs_oldest_date_first() -> None:
    queued = [run(1, day=3), run(2, day=1), run(3, day=2)]
    assert ids(admissible(queued, limits(p=2), {}, {}, {})) == [2, 3]
    assert ids(admissible(queued, limits(p=2), {"p": 1}, {}, {})) == [2]
    assert admissible(queued, limits(p=2), {"p": 2}, {}, {}) == []  # all wait for a slot


def test_scheduled_runs_come_before_manual_and_backfill_runs() -> None:
    queued = [
        run(1, day=1, origin="backfill", backfill=7),
        run(2, day=5, origin="manual"),
        run(3, day=9),
    ]
    chosen = admissible(queued, limits(p=2), {}, {7: backfill(7)}, {})
    assert ids(chosen) == [3, 2]


def test_pipelines_have_their_own_limits() -> None:
    queued = [run(1, "a"), run(2, "a", day=2), run(3, "b")]
    assert ids(admissible(queued, limits(a=1, b=1), {}, {}, {})) == [1, 3]


def test_a_backfill_keeps_to_its_own_limit_and_a_paused_one_starts_nothing() -> None:
    queued = [run(i, day=i, origin="backfill", backfill=7) for i in (1, 2, 3)]
    assert ids(admissible(queued, limits(p=10), {}, {7: backfill(7, limit=2)}, {})) == [1, 2]
    assert ids(admissible(queued, limits(p=10), {}, {7: backfill(7, limit=2)}, {7: 1})) == [1]
    paused = backfill(7, state="paused")
    assert admissible(queued, limits(p=10), {}, {7: paused}, {}) == []


def test_a_backfill_may_ask_for_the_newest_dates_first() -> None:
    queued = [run(i, day=i, origin="backfill", backfill=7) for i in (1, 2, 3)]
    newest = backfill(7, limit=1, order="newest")
    assert ids(admissible(queued, limits(p=10), {}, {7: newest}, {})) == [3]


def test_a_backfill_given_a_higher_priority_goes_before_scheduled_runs() -> None:
    queued = [
        run(1, day=1, origin="scheduled"),
        run(2, day=2, origin="backfill", backfill=7, priority=3),
        run(3, day=3, origin="manual"),
        run(4, day=4, origin="backfill", backfill=8),
    ]
    chosen = admissible(queued, limits(p=3), {}, {7: backfill(7), 8: backfill(8)}, {})
    assert [r.id for r in chosen] == [2, 1, 3]
