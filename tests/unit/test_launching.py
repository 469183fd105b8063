"""Which scheduled task instances start first, and which fit: pure, without a database."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace as Row

from reflow import Pipeline, Shell
from reflow.scheduler import launching
from reflow.scheduler.readiness import Shape


def _pipelines() -> dict[str, Pipeline]:
    with Pipeline("etl", schedule="@daily", start_date="2024-01-01", max_active_tasks=10) as etl:
        Shell("small", "true", pool="spark")
        Shell("big", "true", pool="spark", pool_slots=3)
        Shell("urgent", "true", priority_weight=5)
        Shell("plain", "true")
    return {"etl": etl}


def _row(run: int, task: str, day: int = 1, priority: int = 0) -> Row:
    return Row(
        id=run,
        pipeline="etl",
        version=_pipelines()["etl"].version,
        priority=priority,
        logical_date=datetime(2024, 1, day, tzinfo=UTC),
        ti_id=run * 100 + len(task),
        ti_task_id=task,
    )


def test_higher_run_priority_then_task_weight_then_older_dates_go_first() -> None:
    pipelines = _pipelines()
    rows = [
        _row(1, "plain", day=1),
        _row(2, "urgent", day=2),
        _row(3, "plain", day=3, priority=2),  # a scheduled run: before every backfill
    ]
    ranked = launching.rank(rows, pipelines, Shape.of, skip=lambda r: False)
    assert [(c.run.id, c.task_id) for c in ranked] == [(3, "plain"), (2, "urgent"), (1, "plain")]


def test_tasks_of_a_pool_start_only_while_it_has_their_slots() -> None:
    pipelines = _pipelines()
    order = [_row(1, "big"), _row(2, "big"), _row(3, "small"), _row(4, "plain")]
    cands = launching.rank(order, pipelines, Shape.of, skip=lambda r: False)
    free = {"spark": 4}
    chosen = launching.choose(cands, pipelines, mine={"etl"}, live={}, free=10, pool_free=free)
    # The first big one takes 3 of 4 slots; the second does not fit, the small one does.
    assert [(c.run.id, c.task_id) for c in chosen] == [(1, "big"), (3, "small"), (4, "plain")]
    assert free == {"spark": 0}


def test_a_pool_without_slots_starts_nothing_of_it() -> None:
    pipelines = _pipelines()
    cands = launching.rank(
        [_row(1, "small"), _row(2, "plain")], pipelines, Shape.of, lambda r: False
    )
    chosen = launching.choose(cands, pipelines, mine={"etl"}, live={}, free=10, pool_free={})
    assert [c.task_id for c in chosen] == ["plain"]
