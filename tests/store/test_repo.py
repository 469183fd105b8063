"""The store's invariants, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.exc import IntegrityError

from reflow.core.errors import Conflict, IllegalTransition, LeaseLost
from reflow.core.states import RunOrigin, RunState, TIState, TryState
from reflow.store import history, scheduling, transitions
from reflow.store import pipelines as store_pipelines
from reflow.store import runs as store_runs
from reflow.store import schedulers as store_schedulers
from reflow.store import tries as store_tries
from reflow.store.db import Database
from reflow.store.models import events, runs, task_instances

NOW = datetime(2024, 1, 10, 12, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
def migrated(db: Database) -> Database:
    db.migrate()
    db.write(
        lambda c: store_pipelines.sync_pipelines(
            c,
            {"p": ("v1", "p.py", {"tasks": {}}, None), "q": ("v1", "q.py", {"tasks": {}}, None)},
            {},
            NOW,
        )
    )
    return db


def _run(
    db: Database,
    day: int,
    origin: RunOrigin = RunOrigin.SCHEDULED,
    pipeline: str = "p",
    tasks: tuple[str, ...] = ("a", "b"),
) -> int:
    logical = datetime(2024, 1, day, tzinfo=UTC)
    return db.write(
        lambda c: store_runs.create_run(
            c,
            pipeline=pipeline,
            run_id=f"{origin.value}__{day}__{logical.timestamp()}",
            logical_date=logical,
            interval=(logical, logical + DAY),
            origin=origin,
            conf={"x": day},
            version="v1",
            task_ids=list(tasks),
            now=NOW,
        )
    )


def test_one_scheduled_or_backfill_run_per_logical_date(migrated: Database) -> None:
    _run(migrated, 1)
    with pytest.raises(Conflict, match="already has a run for 2024-01-01"):
        _run(migrated, 1, RunOrigin.BACKFILL)
    _run(migrated, 1, RunOrigin.MANUAL)  # manual runs have their own identity
    _run(migrated, 1, pipeline="q")
    with migrated.read() as conn:
        assert conn.execute(select(func.count()).select_from(runs)).scalar() == 3


def test_a_conflict_leaves_the_rest_of_the_transaction_intact(migrated: Database) -> None:
    _run(migrated, 1)

    def work(conn):  # type: ignore[no-untyped-def]
        logical = datetime(2024, 1, 1, tzinfo=UTC)
        with pytest.raises(Conflict):
            store_runs.create_run(
                conn,
                pipeline="p",
                run_id="other",
                logical_date=logical,
                interval=(logical, logical + DAY),
                origin=RunOrigin.SCHEDULED,
                conf={},
                version="v1",
                task_ids=["a"],
                now=NOW,
            )
        logical2 = datetime(2024, 1, 2, tzinfo=UTC)
        return store_runs.create_run(
            conn,
            pipeline="p",
            run_id="second",
            logical_date=logical2,
            interval=(logical2, logical2 + DAY),
            origin=RunOrigin.SCHEDULED,
            conf={},
            version="v1",
            task_ids=["a"],
            now=NOW,
        )

    assert migrated.write(work) > 0


def test_transition_moves_only_rows_in_the_named_states_and_logs_events(
    migrated: Database,
) -> None:
    run_pk = _run(migrated, 1)
    with migrated.read() as conn:
        ids = [t.id for t in store_runs.run_task_instances(conn, [run_pk])]
    moved = migrated.write(
        lambda c: transitions.transition(c, "ti", ids, TIState.SCHEDULED, [TIState.PENDING], NOW)
    )
    assert sorted(moved) == sorted(ids)
    again = migrated.write(
        lambda c: transitions.transition(c, "ti", ids, TIState.SCHEDULED, [TIState.PENDING], NOW)
    )
    assert again == []  # a lost race moves nothing
    with migrated.read() as conn:
        logged = conn.execute(
            select(events.c.old, events.c.new).where(events.c.entity == "ti")
        ).all()
    assert sorted(logged) == [("pending", "scheduled")] * 2


def test_an_illegal_transition_is_a_bug_that_raises(migrated: Database) -> None:
    run_pk = _run(migrated, 1)
    with pytest.raises(IllegalTransition, match="pending -> running"):
        migrated.write(
            lambda c: transitions.transition(c, "ti", [1], TIState.RUNNING, [TIState.PENDING], NOW)
        )
    with pytest.raises(IllegalTransition, match="success -> running"):
        migrated.write(
            lambda c: transitions.transition(
                c, "run", [run_pk], RunState.RUNNING, [RunState.SUCCESS], NOW
            )
        )


def _queue(db: Database, run_pk: int, task: str = "a") -> int:
    with db.read() as conn:
        ti = next(t for t in store_runs.run_task_instances(conn, [run_pk]) if t.task_id == task)
    db.write(lambda c: store_runs.start_run(c, run_pk, NOW, None))
    db.write(
        lambda c: transitions.transition(
            c, "ti", [ti.id], TIState.SCHEDULED, [TIState.PENDING], NOW
        )
    )
    sched = db.write(lambda c: store_schedulers.register_scheduler(c, "host", 1, NOW))
    got = db.write(
        lambda c: store_tries.queue_try(
            c,
            ti_id=ti.id,
            run_pk=run_pk,
            run_attempt=1,
            launcher="local",
            owner=sched,
            log_path_for=lambda n: f"/tmp/{n}.log",
            timeout=None,
            kill_grace=1.0,
            now=NOW,
        )
    )
    assert got is not None
    return ti.id


def test_at_most_one_live_try_per_task_instance(migrated: Database) -> None:
    run_pk = _run(migrated, 1)
    ti_id = _queue(migrated, run_pk)
    with migrated.read() as conn:
        assert (
            conn.execute(
                select(task_instances.c.state).where(task_instances.c.id == ti_id)
            ).scalar()
            == TIState.QUEUED
        )
    from reflow.store.models import tries

    with pytest.raises(IntegrityError):
        migrated.write(
            lambda c: c.execute(
                tries.insert().values(
                    ti=ti_id,
                    run=run_pk,
                    try_number=2,
                    run_attempt=1,
                    state=TryState.QUEUED.value,
                    launcher="local",
                    log_path="x",
                    queued_at=NOW,
                    kill_grace=1.0,
                )
            )
        )


def test_a_task_instance_is_queued_by_one_claimer_only(migrated: Database) -> None:
    run_pk = _run(migrated, 1)
    with migrated.read() as conn:
        ti = next(t for t in store_runs.run_task_instances(conn, [run_pk]) if t.task_id == "a")
    migrated.write(lambda c: store_runs.start_run(c, run_pk, NOW, None))
    migrated.write(
        lambda c: transitions.transition(
            c, "ti", [ti.id], TIState.SCHEDULED, [TIState.PENDING], NOW
        )
    )
    results: list[object] = []

    def claim() -> None:
        results.append(
            migrated.write(
                lambda c: store_tries.queue_try(
                    c,
                    ti_id=ti.id,
                    run_pk=run_pk,
                    run_attempt=1,
                    launcher="local",
                    owner=None,  # type: ignore[arg-type]
                    log_path_for=lambda n: f"/tmp/{n}.log",
                    timeout=None,
                    kill_grace=1.0,
                    now=NOW,
                )
            )
        )

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1


def test_queued_runs_come_scheduled_first_then_manual_then_backfill(
    migrated: Database,
) -> None:
    backfill = _run(migrated, 1, RunOrigin.BACKFILL)
    manual = _run(migrated, 2, RunOrigin.MANUAL)
    scheduled = _run(migrated, 9)
    older_backfill = _run(migrated, 0 + 3, RunOrigin.BACKFILL)
    from reflow.scheduler.admission import admission_rank

    with migrated.read() as conn:
        queued = scheduling.queued_runs(conn)
    order = [r.id for r in sorted(queued, key=lambda r: admission_rank(r, None))]
    assert order == [scheduled, manual, backfill, older_backfill]


def test_tries_are_claimed_once_and_only_from_schedulers_declared_dead(
    migrated: Database,
) -> None:
    run_pk = _run(migrated, 1)
    _queue(migrated, run_pk)  # owned by scheduler 1, heartbeat at NOW
    with migrated.read() as conn:
        (owner,) = [t.owner for t in store_tries.live_tries(conn)]
    me = migrated.write(lambda c: store_schedulers.register_scheduler(c, "host", 2, NOW))
    assert migrated.write(lambda c: store_schedulers.claim_orphans(c, me)) == []  # its owner lives

    def declare(since: datetime) -> list[int]:
        return migrated.write(
            lambda c: store_schedulers.mark_schedulers_dead(
                c, silent=[owner], silent_since=since, exited=[], now=NOW
            )
        )

    assert declare(NOW - DAY) == []  # it was heard from since: still alive
    assert declare(NOW + DAY) == [owner]
    assert migrated.write(lambda c: store_schedulers.claim_orphans(c, me, ["elsewhere"])) == []
    claimed = migrated.write(lambda c: store_schedulers.claim_orphans(c, me, ["p"]))
    assert len(claimed) == 1 and claimed[0].owner == me
    other = migrated.write(lambda c: store_schedulers.register_scheduler(c, "host", 3, NOW))
    assert migrated.write(lambda c: store_schedulers.claim_orphans(c, other)) == []


def test_a_scheduler_declared_dead_holds_no_lease(migrated: Database) -> None:
    me = migrated.write(lambda c: store_schedulers.register_scheduler(c, "host", 2, NOW))
    migrated.write(lambda c: store_schedulers.hold_lease(c, me))
    migrated.write(lambda c: store_schedulers.heartbeat(c, me, NOW))
    migrated.write(
        lambda c: store_schedulers.mark_schedulers_dead(
            c, silent=[], silent_since=NOW, exited=[me], now=NOW
        )
    )
    with pytest.raises(LeaseLost):
        migrated.write(lambda c: store_schedulers.hold_lease(c, me))
    with pytest.raises(LeaseLost):
        migrated.write(lambda c: store_schedulers.heartbeat(c, me, NOW))


def test_finishing_a_run_closes_its_attempt(migrated: Database) -> None:
    run_pk = _run(migrated, 1)
    migrated.write(lambda c: store_runs.start_run(c, run_pk, NOW, NOW + DAY))
    migrated.write(lambda c: store_runs.finish_run(c, run_pk, RunState.SUCCESS, NOW + DAY))
    with migrated.read() as conn:
        (attempt,) = store_runs.attempts_of(conn, run_pk)
        (run,) = store_runs.runs_by_pk(conn, [run_pk])
    assert attempt.state == RunState.SUCCESS and attempt.ended_at == NOW + DAY
    assert run.started_at == NOW and run.deadline == NOW + DAY
    assert run.conf == {"x": 1}


def test_import_errors_are_replaced_at_each_sync(migrated: Database) -> None:
    migrated.write(
        lambda c: store_pipelines.sync_pipelines(c, {}, {"bad.py": ("bad.py: boom", "")}, NOW)
    )
    with migrated.read() as conn:
        assert [e.message for e in store_pipelines.list_import_errors(conn)] == ["bad.py: boom"]
        rows = {r.name: r.active for r in store_pipelines.pipeline_rows(conn)}
    assert rows == {"p": False, "q": False}
    migrated.write(
        lambda c: store_pipelines.sync_pipelines(c, {"p": ("v2", "p.py", {}, None)}, {}, NOW)
    )
    with migrated.read() as conn:
        assert store_pipelines.list_import_errors(conn) == []
        (p,) = store_pipelines.pipeline_rows(conn, ["p"])
    assert (p.active, p.version) == (True, "v2")


# -- id lists longer than a statement's bound parameters ------------------------------------
# PostgreSQL takes at most 65,535 bound parameters in a statement, SQLite 32,766.
MANY = 70_001


def _bulk_finished_runs(db: Database, n: int, pipeline: str = "p") -> list[int]:
    """``n`` finished runs of ``pipeline``, one task instance each, written in bulk."""
    rows = [
        {
            "pipeline": pipeline,
            "run_id": f"scheduled__{i}",
            "logical_date": datetime(2000, 1, 1, tzinfo=UTC) + timedelta(hours=i),
            "data_interval_start": NOW,
            "data_interval_end": NOW,
            "origin": RunOrigin.SCHEDULED.value,
            "state": RunState.SUCCESS.value,
            "conf": {},
            "attempt": 1,
            "version": "v1",
            "created_at": NOW,
        }
        for i in range(n)
    ]

    def work(conn):  # type: ignore[no-untyped-def]
        conn.execute(insert(runs), rows)
        pks = [r[0] for r in conn.execute(select(runs.c.id).where(runs.c.pipeline == pipeline))]
        conn.execute(
            insert(task_instances),
            [
                {
                    "run": pk,
                    "task_id": "a",
                    "state": TIState.SUCCESS.value,
                    "try_number": 1,
                    "lost_tries": 0,
                    "updated_at": NOW,
                }
                for pk in pks
            ],
        )
        return pks

    return db.write(work)


def test_every_id_list_is_read_and_written_in_chunks(migrated: Database) -> None:
    ids = list(range(1, MANY + 1))  # no such rows: only the statements' size matters
    live = _run(migrated, 1)
    _queue(migrated, live)
    with migrated.read() as conn:
        assert [r.id for r in store_runs.runs_by_pk(conn, [*ids, live])] == [1]
        assert len(store_tries.live_tries_of_runs(conn, [*ids, live])) == 1
        assert scheduling.count_running_by_backfill(conn, ids) == {}
        assert len(store_runs.run_task_instances(conn, ids)) == 2
        assert history.run_states_by_backfill(conn, ids) == {}
    assert migrated.write(lambda c: store_tries.request_cancel(c, ids, "killed")) == [1]
    assert migrated.write(lambda c: history.stop_live_tries(c, ids, "killed")) == [1]
    assert migrated.write(lambda c: history.cancel_runs(c, ids, NOW, "test")) == 1
    with migrated.read() as conn:
        assert [r.state for r in store_runs.runs_by_pk(conn, [live])] == [RunState.CANCELLED]


@pytest.mark.slow
def test_clean_and_purge_handle_more_runs_than_a_statement_has_parameters(
    migrated: Database,
) -> None:
    pks = _bulk_finished_runs(migrated, MANY)
    assert len(pks) == MANY
    cutoff = datetime(2100, 1, 1, tzinfo=UTC)
    counted = migrated.write(lambda c: history.clean_before(c, cutoff, dry_run=True))
    assert (counted["runs"], counted["task_instances"]) == (MANY, MANY)
    with migrated.read() as conn:
        assert len(store_runs.runs_by_pk(conn, pks)) == MANY
    counts = migrated.write(lambda c: history.purge_pipeline(c, "p"))
    assert (counts["runs"], counts["task_instances"]) == (MANY, MANY)
    with migrated.read() as conn:
        assert conn.execute(select(func.count()).select_from(runs)).scalar() == 0


def test_the_latest_runs_of_every_pipeline_come_newest_first_in_one_statement(
    migrated: Database,
) -> None:
    for day in (1, 2, 3, 4, 5):
        _run(migrated, day)
    manual = _run(migrated, 5, RunOrigin.MANUAL)  # the same date again: the newer id first
    _run(migrated, 2, pipeline="q")
    statements: list[str] = []
    event.listen(migrated.engine, "before_cursor_execute", _record(statements))
    with migrated.read() as conn:
        latest = store_runs.latest_runs(conn, 3)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    assert [(r.logical_date.day, r.id) for r in latest["p"]][:1] == [(5, manual)]
    assert [r.logical_date.day for r in latest["p"]] == [5, 5, 4]
    assert [r.logical_date.day for r in latest["q"]] == [2]


def test_active_runs_are_counted_per_pipeline_and_state(migrated: Database) -> None:
    queued = [_run(migrated, day) for day in (1, 2, 3)]
    _run(migrated, 1, pipeline="q")
    migrated.write(
        lambda c: transitions.transition(
            c, "run", queued[:1], RunState.RUNNING, [RunState.QUEUED], NOW
        )
    )
    migrated.write(
        lambda c: transitions.transition(
            c, "run", queued[1:2], RunState.SUCCESS, [RunState.QUEUED], NOW
        )
    )
    with migrated.read() as conn:
        counts = store_runs.count_active_runs(conn)
    assert counts == {("p", "running"): 1, ("p", "queued"): 1, ("q", "queued"): 1}


def _record(statements: list[str]) -> Any:
    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    return before


def _unsettled(db: Database) -> list[int]:
    with db.read() as conn:
        return sorted(r.id for r in scheduling.unsettled_runs(conn))


def _settle(db: Database, run_pk: int) -> None:
    db.write(lambda c: scheduling.settle_runs(c, [run_pk]))


def _move(db: Database, run_pk: int, task: str, to: TIState, from_: TIState) -> None:
    with db.read() as conn:
        (ti,) = [t for t in store_runs.run_task_instances(conn, [run_pk]) if t.task_id == task]
    db.write(lambda c: transitions.transition(c, "ti", [ti.id], to, [from_], NOW))


def test_a_running_run_is_unsettled_until_the_scheduler_acted_on_its_changes(
    migrated: Database,
) -> None:
    """The invariant the incremental tick relies on: every move that can make something
    ready or end the run counts on the run; the scheduler's own steps towards a try don't."""
    quiet, busy = _run(migrated, 1), _run(migrated, 2)
    assert _unsettled(migrated) == []  # queued: not the tick's business yet
    for run_pk in (quiet, busy):
        migrated.write(lambda c, r=run_pk: store_runs.start_run(c, r, NOW, None))
    assert _unsettled(migrated) == [quiet, busy]  # new: looked at once
    _settle(migrated, quiet)
    _settle(migrated, busy)
    assert _unsettled(migrated) == []
    for to, from_ in [
        (TIState.SCHEDULED, TIState.PENDING),
        (TIState.QUEUED, TIState.SCHEDULED),
        (TIState.RUNNING, TIState.QUEUED),
    ]:
        _move(migrated, busy, "a", to, from_)
        assert _unsettled(migrated) == []
    _move(migrated, busy, "a", TIState.SUCCESS, TIState.RUNNING)  # an outcome
    assert _unsettled(migrated) == [busy]
    _settle(migrated, busy)
    _move(migrated, busy, "a", TIState.PENDING, TIState.SUCCESS)  # a clear
    assert _unsettled(migrated) == [busy]
    _settle(migrated, busy)
    migrated.write(lambda c: store_runs.add_task_instances(c, busy, ["c"], NOW))  # an edit
    assert _unsettled(migrated) == [busy]
    migrated.write(lambda c: store_runs.finish_run(c, busy, RunState.SUCCESS, NOW))
    assert _unsettled(migrated) == []  # no longer running


def test_decisions_apply_only_to_runs_unchanged_since_they_were_read(
    migrated: Database,
) -> None:
    read, changed, ended = _run(migrated, 1), _run(migrated, 2), _run(migrated, 3)
    for run_pk in (read, changed, ended):
        migrated.write(lambda c, r=run_pk: store_runs.start_run(c, r, NOW, None))
    with migrated.read() as conn:
        seen = {r.id: r.change_seq for r in scheduling.unsettled_runs(conn)}
    _move(migrated, changed, "a", TIState.SKIPPED, TIState.PENDING)
    migrated.write(lambda c: store_runs.finish_run(c, ended, RunState.FAILED, NOW))
    assert migrated.write(lambda c: scheduling.hold_unchanged_runs(c, seen)) == {read}


def test_retries_fall_due_with_time(migrated: Database) -> None:
    run_pk = _run(migrated, 1)
    migrated.write(lambda c: store_runs.start_run(c, run_pk, NOW, None))
    with migrated.read() as conn:
        (ti, _) = store_runs.run_task_instances(conn, [run_pk])
    for to, from_ in [
        (TIState.SCHEDULED, TIState.PENDING),
        (TIState.QUEUED, TIState.SCHEDULED),
        (TIState.RUNNING, TIState.QUEUED),
    ]:
        migrated.write(
            lambda c, to=to, f=from_: transitions.transition(c, "ti", [ti.id], to, [f], NOW)
        )
    migrated.write(
        lambda c: transitions.transition(
            c,
            "ti",
            [ti.id],
            TIState.UP_FOR_RETRY,
            [TIState.RUNNING],
            NOW,
            next_try_at=NOW + timedelta(minutes=5),
        )
    )
    with migrated.read() as conn:
        assert scheduling.runs_with_due_retries(conn, NOW) == []
        due = scheduling.runs_with_due_retries(conn, NOW + timedelta(minutes=5))
    assert [r.id for r in due] == [run_pk]
