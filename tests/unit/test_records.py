"""Records: what the store hands out has every column of its table, typed as declared."""

from __future__ import annotations

import dataclasses
import shutil
import types
import typing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, select

from reflow.core.states import RunOrigin, RunState, TIState, TryState
from reflow.store import auth, history, scheduling, transitions
from reflow.store import pipelines as store_pipelines
from reflow.store import records as r
from reflow.store import runs as store_runs
from reflow.store import schedulers as store_schedulers
from reflow.store import tries as store_tries
from reflow.store.db import Database
from reflow.store.models import (
    api_tokens,
    backfills,
    import_errors,
    pipelines,
    run_attempts,
    runs,
    schedulers,
    task_instances,
    tries,
    try_usage,
    users,
)

NOW = datetime(2024, 1, 10, 12, tzinfo=UTC)
DAY = timedelta(days=1)
TABLE_RECORDS: list[tuple[type[r.Record], Table]] = [
    (r.PipelineRecord, pipelines),
    (r.ImportErrorRecord, import_errors),
    (r.SchedulerRecord, schedulers),
    (r.Backfill, backfills),
    (r.Run, runs),
    (r.RunAttempt, run_attempts),
    (r.TaskInstance, task_instances),
    (r.Try, tries),
    (r.TryUsage, try_usage),
    (r.User, users),
    (r.Token, api_tokens),
]


@pytest.fixture
def db(tmp_path: Path, sqlite_template: Path) -> Iterator[Database]:
    path = tmp_path / "reflow.db"
    shutil.copy(sqlite_template, path)
    database = Database(f"sqlite:///{path}")
    yield database
    database.dispose()


def names(record: type[Any]) -> list[str]:
    return [f.name for f in dataclasses.fields(record)]


def assert_typed(record: Any) -> None:
    """Every field of ``record`` holds a value of its declared type (datetimes in UTC)."""
    hints = typing.get_type_hints(type(record))
    for name in names(type(record)):
        value, hint = getattr(record, name), hints[name]
        kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        allowed = tuple(type(None) if k is None else typing.get_origin(k) or k for k in kinds)
        assert isinstance(value, allowed), f"{type(record).__name__}.{name} = {value!r}: {hint}"
        if isinstance(value, datetime):
            assert value.tzinfo == UTC, f"{type(record).__name__}.{name} is not in UTC"


@pytest.mark.parametrize(("record", "table"), TABLE_RECORDS, ids=lambda x: getattr(x, "name", ""))
def test_a_table_record_has_the_columns_of_its_table_in_their_order(
    record: type[Any], table: Table
) -> None:
    assert names(record) == [c.name for c in table.c]


def test_a_run_its_task_instances_and_tries_come_back_whole_and_typed(db: Database) -> None:
    db.write(
        lambda c: store_pipelines.sync_pipelines(
            c, {"p": ("v1", "p.py", {"tasks": {}}, 7)}, {}, NOW
        )
    )

    def work(c: Any) -> int:
        backfill_id = history.create_backfill(
            c,
            pipeline="p",
            start=NOW - DAY,
            end=NOW,
            conf={"x": 1},
            reprocess="missing",
            max_active_runs=2,
            run_order="oldest",
            tasks=["a"],
            planned={"create": 1, "reset": 0, "skip": 0},
            now=NOW,
        )
        run_pk = store_runs.create_run(
            c,
            pipeline="p",
            run_id="backfill__1",
            logical_date=NOW - DAY,
            interval=(NOW - DAY, NOW),
            origin=RunOrigin.BACKFILL,
            conf={"x": 1, "nested": {"y": [1, 2]}},
            version="v1",
            task_ids=["a", "b"],
            now=NOW,
            backfill_id=backfill_id,
        )
        store_runs.start_runs(c, {run_pk: NOW + DAY}, NOW)
        (a,) = [t.id for t in store_runs.run_task_instances(c, [run_pk]) if t.task_id == "a"]
        transitions.transition(c, "ti", [a], TIState.SCHEDULED, [TIState.PENDING], NOW)
        scheduler = store_schedulers.register_scheduler(c, "host", 42, NOW, ["p"])
        taken = store_tries.queue_try(
            c,
            ti_id=a,
            run_pk=run_pk,
            run_attempt=1,
            launcher="local",
            owner=scheduler,
            log_path_for=lambda n: f"/logs/a/{n}.log",
            timeout=60.0,
            kill_grace=5.0,
            now=NOW,
        )
        assert taken is not None
        try_id = taken[0]
        start = store_tries.Start(try_id, a, 1234, "host", "local-1234", NOW, 60.0)
        assert store_tries.mark_tries_started(c, [start], owner=scheduler) == [try_id]
        store_tries.request_cancel(c, [try_id], "killed")
        ended = {
            "ended_at": NOW + timedelta(seconds=3),
            "exit_code": 1,
            "failure_reason": "killed",
            "detail": "exit code 1",
            "app_id": "app-1",
        }
        transitions.transition_each(
            c, "try", {try_id: ended}, TryState.FAILED, [TryState.RUNNING], NOW
        )
        transitions.transition(
            c,
            "ti",
            [a],
            TIState.UP_FOR_RETRY,
            [TIState.RUNNING],
            NOW,
            failure_reason="killed",
            next_try_at=NOW + DAY,
            ended_at=NOW,
        )
        return run_pk

    run_pk = db.write(work)
    with db.read() as conn:
        (run,) = store_runs.runs_by_pk(conn, [run_pk])
        attempts = store_runs.attempts_of(conn, run_pk)
        tis = store_runs.run_task_instances(conn, [run_pk])
        task_tries = store_tries.tries_of(conn, run_pk=run_pk)
        finishing = store_tries.try_rows(conn, [t.id for t in task_tries])
        (backfill,) = history.list_backfills(conn)
        (pipeline,) = store_pipelines.pipeline_rows(conn)
        scheduler = store_schedulers.live_schedulers(conn, NOW, 60.0)

    assert type(run) is r.Run and run.conf == {"x": 1, "nested": {"y": [1, 2]}}
    assert (run.state, run.started_at, run.deadline) == (RunState.RUNNING, NOW, NOW + DAY)
    assert [type(a) for a in attempts] == [r.RunAttempt]
    assert sorted((t.task_id, t.state) for t in tis) == [("a", "up_for_retry"), ("b", "pending")]
    (t,) = task_tries
    assert type(t) is r.TaskTry and t.task_id == "a"
    assert (t.pid, t.host, t.kill_grace, t.cancel_reason, t.exit_code) == (
        1234,
        "host",
        5.0,
        "killed",
        1,
    )
    assert type(finishing[t.id]) is r.FinishingTry
    assert finishing[t.id].run_state == RunState.RUNNING and finishing[t.id].ti_try_number == 1
    assert backfill.tasks == ["a"] and backfill.planned == {"create": 1, "reset": 0, "skip": 0}
    assert pipeline.active is True and pipeline.source_stamp == 7
    assert [s.scope for s in scheduler] == [["p"]]
    for record in (run, *attempts, *tis, t, finishing[t.id], backfill, pipeline, *scheduler):
        assert_typed(record)


def test_the_partial_reads_of_the_scheduler_come_back_typed(db: Database) -> None:
    db.write(
        lambda c: store_pipelines.sync_pipelines(
            c, {"p": ("v1", "p.py", {"tasks": {}}, None)}, {}, NOW
        )
    )

    def create(c: Any) -> int:
        return store_runs.create_run(
            c,
            pipeline="p",
            run_id="scheduled__1",
            logical_date=NOW - DAY,
            interval=(NOW - DAY, NOW),
            origin=RunOrigin.SCHEDULED,
            conf={},
            version="v1",
            task_ids=["a"],
            now=NOW,
        )

    run_pk = db.write(create)
    with db.read() as conn:
        queued = scheduling.queued_runs(conn)
        latest = store_runs.latest_runs(conn, 3)["p"]
        events = store_runs.run_history(conn, run_pk)

    def launch(c: Any) -> int:
        store_runs.start_runs(c, {run_pk: NOW + timedelta(seconds=1)}, NOW)
        (ti,) = store_runs.run_task_instances(c, [run_pk])
        transitions.transition(c, "ti", [ti.id], TIState.SCHEDULED, [TIState.PENDING], NOW)
        return store_schedulers.register_scheduler(c, "host", 42, NOW)

    scheduler = db.write(launch)
    with db.read() as conn:
        ready = scheduling.scheduled_task_instances(conn, limit=10)

    def queue(c: Any) -> None:
        claim = store_tries.Claim(
            ready[0].ti_id, run_pk, 1, "local", lambda n: f"{n}.log", 1.0, 5.0
        )
        store_tries.queue_tries(c, [claim], owner=scheduler, now=NOW)

    db.write(queue)
    later = NOW + timedelta(seconds=2)
    with db.read() as conn:
        expired_runs = scheduling.expired_runs(conn, later)
        expired_tries = store_tries.expired_tries(conn, scheduler, later)
        live = store_tries.live_tries_of_runs(conn, [run_pk])
    db.write(lambda c: store_tries.request_cancel(c, [t.id for t in live], "timed_out"))
    with db.read() as conn:
        requested = store_tries.cancel_requested(conn, scheduler)

    assert [type(q) for q in queued] == [r.QueuedRun]
    assert [type(x) for x in latest] == [r.RunSummary]
    assert [(type(e), e.detail) for e in events] == [(r.HistoryEvent, "created (scheduled)")]
    assert [(type(x), x.ti_task_id) for x in ready] == [(r.ReadyTaskInstance, "a")]
    assert isinstance(ready[0], r.Run)  # it serves as its run
    assert [type(x) for x in expired_runs] == [r.ExpiredRun]
    assert [type(x) for x in expired_tries] == [r.ExpiredTry]
    assert [type(x) for x in live] == [r.LiveTry]
    assert [(type(x), x.cancel_reason) for x in requested] == [(r.CancelRequest, "timed_out")]
    partial = (*queued, *latest, *events, *ready, *expired_runs, *expired_tries, *live, *requested)
    for record in partial:
        assert_typed(record)


def test_users_and_tokens_come_back_typed(db: Database) -> None:
    def work(c: Any) -> None:
        user = auth.create_user(c, "ada", "scrypt$hash", NOW)
        auth.create_token(
            c,
            name="ci",
            token_hash="h" * 64,
            prefix="rfl_abcd",
            user_id=user,
            now=NOW,
            expires_at=NOW + DAY,
        )

    db.write(work)
    with db.read() as conn:
        user = auth.get_user(conn, "ada")
        token = auth.token_by_hash(conn, "h" * 64, NOW)
    assert user is not None and token is not None
    assert type(token) is r.TokenWithUser and token.user_name == "ada"
    assert_typed(user)
    assert_typed(token)


def test_a_record_is_immutable() -> None:
    run = r.ExpiredRun(1, "p")
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.id = 2  # type: ignore[misc]


def test_a_query_whose_columns_are_not_the_records_fields_is_refused(db: Database) -> None:
    with db.read() as conn, pytest.raises(TypeError, match="Run has fields id, pipeline"):
        r.Run.from_result(conn.execute(select(runs.c.pipeline, runs.c.id)))
