"""Deadline misses and the deadline cursor in the store, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, func, insert, select, update

from reflow.core.lateness import RUN, Due
from reflow.core.states import RunOrigin, RunState
from reflow.store import deadlines, history
from reflow.store import pipelines as store_pipelines
from reflow.store import runs as store_runs
from reflow.store.db import Database
from reflow.store.models import deadline_misses, pipelines, task_instances, tries
from reflow.store.records import DeadlineMiss

NOW = datetime(2024, 1, 10, 12, tzinfo=UTC)
DAY = timedelta(days=1)


def day(n: int, hour: int = 0) -> datetime:
    return datetime(2024, 1, n, hour, tzinfo=UTC)


@pytest.fixture
def migrated(db: Database) -> Database:
    db.migrate()
    found = {name: ("v1", f"{name}.py", {"tasks": {}}, None) for name in ("p", "q")}
    db.write(lambda c: store_pipelines.sync_pipelines(c, found, {}, NOW))
    return db


def _run(db: Database, n: int, origin: RunOrigin = RunOrigin.SCHEDULED) -> int:
    logical = day(n)
    return db.write(
        lambda c: store_runs.create_run(
            c,
            pipeline="p",
            run_id=f"{origin.value}__{n}",
            logical_date=logical,
            interval=(logical, logical + DAY),
            origin=origin,
            conf={},
            version="v1",
            task_ids=["a", "b"],
            now=logical + DAY,
        )
    )


def _finish(db: Database, run_pk: int, at: datetime, state: RunState = RunState.SUCCESS) -> None:
    def work(conn: Connection) -> None:
        store_runs.start_runs(conn, {run_pk: None}, at - timedelta(minutes=5))
        assert store_runs.finish_runs(conn, [run_pk], state, at)

    db.write(work)


def _ti(conn: Connection, run_pk: int, task: str) -> int:
    return int(
        conn.execute(
            select(task_instances.c.id).where(
                task_instances.c.run == run_pk, task_instances.c.task_id == task
            )
        ).scalar_one()
    )


def _try(db: Database, run_pk: int, task: str, state: str, ended: datetime | None) -> None:
    def work(conn: Connection) -> None:
        conn.execute(
            insert(tries).values(
                ti=_ti(conn, run_pk, task),
                run=run_pk,
                try_number=1,
                run_attempt=1,
                state=state,
                launcher="local",
                log_path="/dev/null",
                queued_at=day(1),
                ended_at=ended,
            )
        )

    db.write(work)


def _dues(*items: tuple[int, str, datetime]) -> list[Due]:
    return [Due(due, day(n), task) for n, task, due in items]


def _met(db: Database, dues: list[Due]) -> set[tuple[datetime, str]]:
    with db.read() as conn:
        return deadlines.succeeded_by(conn, "p", dues)


def test_a_miss_record_has_the_columns_of_its_table_in_their_order() -> None:
    assert [f.name for f in dataclasses.fields(DeadlineMiss)] == [c.name for c in deadline_misses.c]


# -- the cursor ------------------------------------------------------------------------------
def test_a_cursor_starts_once_and_moves_only_from_where_it_was_read(migrated: Database) -> None:
    with migrated.read() as conn:
        assert deadlines.cursors(conn, ["p", "q", "gone"]) == {"p": None, "q": None}
    migrated.write(lambda c: deadlines.start(c, ["p"], day(5)))
    migrated.write(lambda c: deadlines.start(c, ["p", "q"], day(6)))  # p has started
    with migrated.read() as conn:
        assert deadlines.cursors(conn, ["p", "q"]) == {"p": day(5), "q": day(6)}
    assert migrated.write(lambda c: deadlines.advance(c, "p", day(5), day(7)))
    # Another scheduler that read day 5 too finds the cursor moved: it records nothing.
    assert not migrated.write(lambda c: deadlines.advance(c, "p", day(5), day(8)))
    with migrated.read() as conn:
        assert deadlines.cursors(conn, ["p"]) == {"p": day(7)}


def test_stopping_forgets_the_cursors_named(migrated: Database) -> None:
    migrated.write(lambda c: deadlines.start(c, ["p", "q"], day(5)))
    migrated.write(
        lambda c: c.execute(update(pipelines).where(pipelines.c.name == "q").values(active=False))
    )
    with migrated.read() as conn:
        assert deadlines.started(conn) == {"p": True, "q": False}
    migrated.write(lambda c: deadlines.stop(c, ["q"]))
    with migrated.read() as conn:
        assert deadlines.cursors(conn, ["p", "q"]) == {"p": day(5), "q": None}
        assert deadlines.started(conn) == {"p": True}


# -- what was met ----------------------------------------------------------------------------
def test_a_run_that_succeeded_by_its_due_time_meets_the_deadline(migrated: Database) -> None:
    _finish(migrated, _run(migrated, 1), day(2, 5))  # before 06:00
    _finish(migrated, _run(migrated, 2), day(3, 7))  # after
    _finish(migrated, _run(migrated, 3), day(4, 5), RunState.FAILED)
    _run(migrated, 4)  # still queued
    dues = _dues(*((n, RUN, day(n + 1, 6)) for n in range(1, 6)))
    assert _met(migrated, dues) == {(day(1), RUN)}


def test_success_exactly_at_the_due_time_is_in_time(migrated: Database) -> None:
    _finish(migrated, _run(migrated, 1), day(2, 6))
    assert _met(migrated, _dues((1, RUN, day(2, 6)))) == {(day(1), RUN)}


def test_an_earlier_attempt_that_succeeded_in_time_meets_it_while_a_reprocess_runs(
    migrated: Database,
) -> None:
    run_pk = _run(migrated, 1)
    _finish(migrated, run_pk, day(2, 5))
    with migrated.read() as conn:
        (run,) = store_runs.runs_by_pk(conn, [run_pk])
    reset = migrated.write(
        lambda c: history.reset_run(
            c,
            run,
            clear=["a", "b"],
            tasks=["a", "b"],
            conf={},
            origin=RunOrigin.BACKFILL,
            version="v1",
            now=day(2, 5) + timedelta(minutes=30),
        )
    )
    assert reset is not None
    assert env_state(migrated, run_pk) == RunState.QUEUED
    assert _met(migrated, _dues((1, RUN, day(2, 6)))) == {(day(1), RUN)}


def env_state(db: Database, run_pk: int) -> str:
    with db.read() as conn:
        return store_runs.runs_by_pk(conn, [run_pk])[0].state


def test_a_manual_run_of_the_date_counts(migrated: Database) -> None:
    _finish(migrated, _run(migrated, 1, RunOrigin.MANUAL), day(2, 1))
    assert _met(migrated, _dues((1, RUN, day(2, 6)))) == {(day(1), RUN)}


def test_a_task_deadline_is_met_by_a_successful_try_or_the_task_marked_success(
    migrated: Database,
) -> None:
    first, second, third = _run(migrated, 1), _run(migrated, 2), _run(migrated, 3)
    _try(migrated, first, "a", "success", day(2, 3))
    _try(migrated, second, "a", "failed", day(3, 3))
    _try(migrated, third, "a", "success", day(4, 8))  # too late
    # b of the second run was marked success (no try), before its due time.
    migrated.write(
        lambda c: c.execute(
            update(task_instances)
            .where(task_instances.c.id == _ti(c, second, "b"))
            .values(state="success", ended_at=day(3, 4))
        )
    )
    dues = _dues(
        (1, "a", day(2, 6)),
        (2, "a", day(3, 6)),
        (3, "a", day(4, 6)),
        (1, "b", day(2, 6)),
        (2, "b", day(3, 6)),
        (9, "a", day(10, 6)),  # no run at all
    )
    assert _met(migrated, dues) == {(day(1), "a"), (day(2), "b")}


# -- misses ----------------------------------------------------------------------------------
def _misses(*items: tuple[int, str]) -> list[deadlines.Miss]:
    return [deadlines.Miss("p", day(n), task, day(n + 1, 6)) for n, task in items]


def test_a_miss_is_recorded_once(migrated: Database) -> None:
    first = migrated.write(lambda c: deadlines.record_misses(c, _misses((1, RUN), (1, "a")), NOW))
    assert len(first) == 2
    again = migrated.write(
        lambda c: deadlines.record_misses(c, _misses((1, RUN), (2, RUN), (2, RUN)), NOW)
    )
    assert again == _misses((2, RUN))
    with migrated.read() as conn:
        assert conn.execute(select(func.count()).select_from(deadline_misses)).scalar_one() == 3


def test_late_dates_come_with_their_run_or_none(migrated: Database) -> None:
    run_pk = _run(migrated, 2)
    _run(migrated, 3, RunOrigin.MANUAL)  # not the date's run
    migrated.write(
        lambda c: deadlines.record_misses(c, _misses((1, RUN), (2, RUN), (2, "a"), (3, RUN)), NOW)
    )
    with migrated.read() as conn:
        rows = deadlines.late_dates(conn, "p")
        ranged = deadlines.late_dates(conn, "p", day(2), day(2))
        limited = deadlines.late_dates(conn, "p", limit=1)
        other = deadlines.late_dates(conn, "q")
    assert [(r.logical_date.day, r.task, r.run, r.run_state) for r in rows] == [
        (3, RUN, None, None),
        (2, RUN, run_pk, "queued"),
        (2, "a", run_pk, "queued"),
        (1, RUN, None, None),
    ]
    assert [(r.logical_date.day, r.task) for r in ranged] == [(2, RUN), (2, "a")]
    assert len(limited) == 1 and other == []
    assert rows[0].due_at == day(4, 6) and rows[0].recorded_at == NOW


def test_the_misses_of_dates_are_found_together(migrated: Database) -> None:
    migrated.write(lambda c: deadlines.record_misses(c, _misses((1, "a"), (1, RUN), (2, RUN)), NOW))
    with migrated.read() as conn:
        found = deadlines.misses_of_dates(conn, [("p", day(1)), ("p", day(3)), ("q", day(1))])
    assert list(found) == [("p", day(1))]
    assert {m.task for m in found[("p", day(1))]} == {RUN, "a"}


def test_purging_a_pipeline_deletes_its_misses(migrated: Database) -> None:
    migrated.write(lambda c: deadlines.record_misses(c, _misses((1, RUN)), NOW))
    migrated.write(lambda c: history.purge_pipeline(c, "p"))
    with migrated.read() as conn:
        assert deadlines.late_dates(conn, "p") == []
