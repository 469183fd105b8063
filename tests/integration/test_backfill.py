"""Backfills through the one scheduler, on SQLite and PostgreSQL, with real processes."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from reflow.core.errors import ConfError, Conflict, InvalidInput
from reflow.core.states import BackfillState, RunOrigin, RunState, TIState
from reflow.services import backfill as backfill_service
from reflow.store import history, scheduling, transitions
from reflow.store import runs as store_runs
from reflow.store.models import backfills, runs, task_instances

from .conftest import Env, wait_until
from .test_scheduler import _intervals, _max_overlap

DAILY = """
from reflow import Pipeline, Shell, Param
with Pipeline("daily", schedule="@daily", start_date="2024-01-01", max_active_runs={limit},
              params={{"mode": Param("normal", choices=("normal", "full")), "fail": False}}):
    a = Shell("a", {cmd!r})
    b = Shell("b", "[ {{{{ params.fail }}}} = false ]")
    c = Shell("c", "true")
    a >> b >> c
"""


def _daily(env: Env, limit: int = 4, cmd: str = "true") -> None:
    env.write("daily", DAILY.format(limit=limit, cmd=cmd))


def _backfill(env: Env, start: str, end: str, **kwargs: object) -> int:
    plan = backfill_service.plan(env.project, "daily", start=start, end=end, **kwargs)  # type: ignore[arg-type]
    return backfill_service.create(env.project, plan)


def _run_pks(env: Env, backfill_id: int) -> list[int]:
    with env.db.read() as conn:
        return [r.id for r in history.backfill_runs(conn, backfill_id)]


def _count(env: Env, table) -> int:  # type: ignore[no-untyped-def]
    with env.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _finish(env: Env, backfill_id: int, timeout: float = 60) -> None:
    env.drive(env.runs_done(_run_pks(env, backfill_id)), timeout=timeout)


def test_a_backfill_creates_one_run_per_logical_date_and_runs_them(env: Env) -> None:
    _daily(env)
    backfill_id = _backfill(env, "2024-01-01", "2024-01-05")
    _finish(env, backfill_id)
    with env.db.read() as conn:
        rows = history.backfill_runs(conn, backfill_id)
        (bf,) = [history.get_backfill(conn, backfill_id)]
    assert [r.logical_date.date().isoformat() for r in rows] == [
        f"2024-01-0{d}" for d in range(1, 6)
    ]
    assert {r.state for r in rows} == {RunState.SUCCESS}
    assert {r.origin for r in rows} == {"backfill"}
    assert bf is not None and bf.state == BackfillState.SUCCESS
    assert bf.planned == {"create": 5, "reset": 0, "skip": 0}


def test_an_hourly_pipeline_backfills_hours(env: Env) -> None:
    env.write(
        "hourly",
        """
        from reflow import Pipeline, Shell
        with Pipeline("hourly", schedule="@hourly", start_date="2024-01-01"):
            Shell("t", "true")
    """,
    )
    plan = backfill_service.plan(
        env.project, "hourly", start="2024-01-01T00:00", end="2024-01-01T05:00"
    )
    assert [d.logical_date.hour for d in plan.dates] == [0, 1, 2, 3, 4, 5]


def test_max_active_runs_holds_across_backfill_manual_and_scheduled_runs(
    env: Env, tmp_path: Path
) -> None:
    out = tmp_path / "spans.txt"
    _daily(env, limit=3, cmd=f"s=$(date +%s.%N); sleep 0.3; echo x $s $(date +%s.%N) >> {out}")
    backfill_id = _backfill(env, "2024-01-01", "2024-01-06")
    manual = env.trigger("daily", ["2024-02-01", "2024-02-02"])
    samples: list[int] = []
    wanted = _run_pks(env, backfill_id) + manual

    def done() -> bool:
        with env.db.read() as conn:
            samples.append(scheduling.count_running_runs(conn).get("daily", 0))
        return env.runs_done(wanted)()

    env.drive(done, create_scheduled_runs=True)
    assert max(samples) == 3
    assert _max_overlap([(s, e) for _, s, e in _intervals(out)]) <= 3


def test_a_backfill_can_lower_the_limit_but_not_raise_it(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "spans.txt"
    _daily(env, limit=3, cmd=f"s=$(date +%s.%N); sleep 0.2; echo x $s $(date +%s.%N) >> {out}")
    backfill_id = _backfill(env, "2024-01-01", "2024-01-04", max_active_runs=1)
    _finish(env, backfill_id)
    assert _max_overlap([(s, e) for _, s, e in _intervals(out)]) == 1
    with pytest.raises(InvalidInput, match="can only lower it"):
        _backfill(env, "2024-01-05", "2024-01-06", max_active_runs=5)


def test_scheduled_runs_take_a_free_slot_before_queued_backfill_runs(env: Env) -> None:
    _daily(env, limit=1)
    backfill_id = _backfill(env, "2024-01-01", "2024-01-03")
    sched = env.scheduler(create_scheduled_runs=True)
    sched.start()
    now = datetime.now(UTC)
    sched.create_due_runs(now)  # yesterday's scheduled run joins the queue after them
    sched.admit_runs(now)
    with env.db.read() as conn:
        running = store_runs.list_runs(conn, pipeline="daily", state="running")
    assert [r.origin for r in running] == ["scheduled"]
    assert all(env.run(pk).state == RunState.QUEUED for pk in _run_pks(env, backfill_id))
    sched.stop()


def test_reprocess_policies_choose_dates(env: Env) -> None:
    _daily(env)
    first = _backfill(env, "2024-01-01", "2024-01-02")
    _finish(env, first)
    failing = _backfill(env, "2024-01-03", "2024-01-03", conf={"fail": True})
    _finish(env, failing)

    def actions(policy: str) -> dict[str, str]:
        plan = backfill_service.plan(
            env.project, "daily", start="2024-01-01", end="2024-01-04", reprocess=policy
        )
        return {d.logical_date.date().isoformat()[-2:]: d.action for d in plan.dates}

    assert actions("missing") == {"01": "skip", "02": "skip", "03": "reset", "04": "create"}
    assert actions("failed") == {"01": "skip", "02": "skip", "03": "reset", "04": "skip"}
    assert actions("all") == {"01": "reset", "02": "reset", "03": "reset", "04": "create"}


def test_reprocessing_with_new_conf_runs_a_new_attempt_and_keeps_the_old_one(env: Env) -> None:
    _daily(env)
    first = _backfill(env, "2024-01-01", "2024-01-01", conf={"fail": True})
    _finish(env, first)
    (run_pk,) = _run_pks(env, first)
    assert env.run(run_pk).state == RunState.FAILED
    second = _backfill(env, "2024-01-01", "2024-01-01", conf={"mode": "full"}, reprocess="failed")
    _finish(env, second)
    run = env.run(run_pk)
    assert (run.state, run.attempt, run.backfill_id) == (RunState.SUCCESS, 2, second)
    assert run.conf == {"mode": "full", "fail": False}
    with env.db.read() as conn:
        attempts = store_runs.attempts_of(conn, run_pk)
    assert [(a.attempt, a.conf["fail"], a.state) for a in attempts] == [
        (1, True, "failed"),
        (2, False, "success"),
    ]
    tries = env.tries(run_pk)
    assert [(t.task_id, t.run_attempt, t.state) for t in tries if t.task_id == "b"] == [
        ("b", 1, "failed"),
        ("b", 2, "success"),
    ]


def test_dry_run_and_invalid_input_write_nothing(env: Env) -> None:
    _daily(env)
    before = (_count(env, runs), _count(env, backfills), _count(env, task_instances))
    plan = backfill_service.plan(env.project, "daily", start="2024-01-01", end="2024-01-03")
    assert plan.planned == {"create": 3, "reset": 0, "skip": 0}
    bad = [
        (dict(start="2024-01-05", end="2024-01-01"), InvalidInput, "before --start"),
        (dict(start="2023-12-01", end="2024-01-01"), InvalidInput, "before the pipeline's"),
        (dict(start="2024-01-01", end="2999-01-01"), InvalidInput, "has not ended yet"),
        (dict(start="2024-01-01", end="2024-01-02", tasks=["nope"]), InvalidInput, "no task"),
        (dict(start="2024-01-01", end="2024-01-02", conf={"mode": "x"}), ConfError, "mode"),
        (dict(start="2024-01-01", end="2024-01-02", reprocess="some"), InvalidInput, "--reprocess"),
        (dict(start="2024-13-01", end="2024-01-02"), InvalidInput, "bad date"),
    ]
    for kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            backfill_service.plan(env.project, "daily", **kwargs)  # type: ignore[arg-type]
    assert (_count(env, runs), _count(env, backfills), _count(env, task_instances)) == before


def test_a_backfill_that_plans_nothing_says_why_and_writes_nothing(env: Env) -> None:
    _daily(env)
    _finish(env, _backfill(env, "2024-01-01", "2024-01-02"))
    before = _count(env, backfills)
    with pytest.raises(
        InvalidInput,
        match=r"nothing to backfill: 2 dates, all skipped "
        r"\(already succeeded\)",
    ):
        _backfill(env, "2024-01-01", "2024-01-02")
    assert _count(env, backfills) == before


def test_tasks_and_from_task_select_what_runs(env: Env) -> None:
    _daily(env)
    only_c = _backfill(env, "2024-01-01", "2024-01-01", tasks=["c"])
    _finish(env, only_c)
    (run_pk,) = _run_pks(env, only_c)
    tis = env.tis(run_pk)
    assert {t: tis[t].state for t in "abc"} == {"a": "skipped", "b": "skipped", "c": "success"}
    from_b = _backfill(env, "2024-01-01", "2024-01-01", from_task="b", reprocess="all")
    _finish(env, from_b)
    tries = [t.task_id for t in env.tries(run_pk)]
    assert sorted(tries) == ["b", "c", "c"]


@pytest.mark.slow
def test_cancel_stops_running_tries_and_cancels_queued_runs(env: Env, tmp_path: Path) -> None:
    marker = f"bf-cancel-{tmp_path.name}"
    env.write(
        "daily",
        DAILY.format(limit=1, cmd="sleep 300").replace(
            '"2024-01-01", max_active_runs=1,',
            f'"2024-01-01", max_active_runs=1, defaults={{"kill_grace": 1, '
            f'"env": {{"REFLOW_TEST_MARKER": "{marker}"}}}},',
        ),
    )
    backfill_id = _backfill(env, "2024-01-01", "2024-01-03")
    sched = env.scheduler()
    sched.start()
    while not any(t.state == "running" for pk in _run_pks(env, backfill_id) for t in env.tries(pk)):
        sched.tick()
    sched.stop()  # like a scheduler that went away: cancel must still stop the try
    assert backfill_service.cancel(env.project, backfill_id, wait=15) == 3
    states = [env.run(pk).state for pk in _run_pks(env, backfill_id)]
    assert states == ["cancelled"] * 3
    (started,) = [t for pk in _run_pks(env, backfill_id) for t in env.tries(pk)]
    assert (started.state, started.failure_reason) == ("failed", "killed")
    from .test_scheduler import _survivors

    assert _survivors(marker) == []
    assert backfill_service.get(env.project, backfill_id).state == BackfillState.CANCELLED
    with pytest.raises(Conflict, match="already cancelled"):
        backfill_service.cancel(env.project, backfill_id)


def test_a_paused_backfill_starts_nothing_until_resumed(env: Env) -> None:
    _daily(env)
    backfill_id = _backfill(env, "2024-01-01", "2024-01-02")
    backfill_service.pause(env.project, backfill_id)
    sched = env.scheduler()
    sched.start()
    sched.tick()
    sched.tick()
    assert {env.run(pk).state for pk in _run_pks(env, backfill_id)} == {RunState.QUEUED}
    backfill_service.resume(env.project, backfill_id)
    env.drive(env.runs_done(_run_pks(env, backfill_id)), scheduler=sched)
    assert backfill_service.get(env.project, backfill_id).state == BackfillState.SUCCESS


def test_newest_first_order(env: Env) -> None:
    _daily(env, limit=1)
    backfill_id = _backfill(env, "2024-01-01", "2024-01-03", order="newest")
    _finish(env, backfill_id)
    rows = sorted((env.run(pk) for pk in _run_pks(env, backfill_id)), key=lambda r: r.started_at)
    assert [r.logical_date.day for r in rows] == [3, 2, 1]


def test_states_of_unselected_tasks_are_kept_on_reset(env: Env) -> None:
    _daily(env)
    first = _backfill(env, "2024-01-01", "2024-01-01", conf={"fail": True})
    _finish(env, first)
    (run_pk,) = _run_pks(env, first)
    assert env.tis(run_pk)["c"].state == TIState.UPSTREAM_FAILED
    _finish(env, _backfill(env, "2024-01-01", "2024-01-01", from_task="b"))
    tis = env.tis(run_pk)
    assert {t: tis[t].try_number for t in "abc"} == {"a": 1, "b": 2, "c": 1}


def test_a_backfill_is_written_all_or_nothing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _daily(env)
    plan = backfill_service.plan(env.project, "daily", start="2024-01-01", end="2024-01-05")
    real = store_runs.create_run
    calls = []

    def failing(*args: object, **kwargs: object) -> int:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_runs, "create_run", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        backfill_service.create(env.project, plan)
    assert (_count(env, runs), _count(env, backfills), _count(env, task_instances)) == (0, 0, 0)


# -- races with the scheduler and other commands --------------------------------------------
def test_a_cancel_wins_over_a_resume_of_the_same_moment(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _daily(env)
    backfill_id = _backfill(env, "2024-01-01", "2024-01-02")
    backfill_service.pause(env.project, backfill_id)
    read = backfill_service.get

    def read_then_resume(project: Any, key: int) -> Any:
        row = read(project, key)  # the cancel reads "paused"; a resume commits right after
        monkeypatch.setattr(backfill_service, "get", read)
        backfill_service.resume(project, key)
        return row

    monkeypatch.setattr(backfill_service, "get", read_then_resume)
    assert backfill_service.cancel(env.project, backfill_id) == 2
    sched = env.scheduler()
    sched.start()
    sched.close_backfills(datetime.now(UTC))  # its runs are over: the scheduler closes it
    sched.stop()
    assert backfill_service.get(env.project, backfill_id).state == BackfillState.CANCELLED
    assert {env.run(pk).state for pk in _run_pks(env, backfill_id)} == {RunState.CANCELLED}
    with pytest.raises(Conflict, match="is cancelled; cannot make it running"):
        backfill_service.resume(env.project, backfill_id)


def test_a_closing_scheduler_never_overrides_a_cancel(env: Env) -> None:
    _daily(env)
    backfill_id = _backfill(env, "2024-01-01", "2024-01-02")
    _finish(env, backfill_id)
    with env.db.read() as conn:
        assert history.finished_backfills(conn) == []  # closed by the run's scheduler
    other = _backfill(env, "2024-01-03", "2024-01-03")
    backfill_service.cancel(env.project, other)
    now = datetime.now(UTC)
    # A list read before the cancel committed: closing it changes nothing.
    assert env.db.write(lambda c: history.close_backfills(c, [other], now)) == []
    assert backfill_service.get(env.project, other).state == BackfillState.CANCELLED


def _scheduled_run(env: Env, day: str, state: RunState = RunState.QUEUED) -> int:
    """A run created by the scheduler for ``day`` (the write the scheduler makes)."""
    pipeline = env.project.pipeline("daily")
    logical = datetime.fromisoformat(day).replace(tzinfo=UTC)
    now = datetime.now(UTC)

    def work(conn: Any) -> int:
        pk = store_runs.create_run(
            conn,
            pipeline="daily",
            run_id=f"scheduled__{logical.isoformat()}",
            logical_date=logical,
            interval=pipeline.schedule.interval(logical),
            origin=RunOrigin.SCHEDULED,
            conf=pipeline.params.resolve({}),
            version=pipeline.version,
            task_ids=pipeline.topological(),
            now=now,
        )
        if state != RunState.QUEUED:
            transitions.transition(conn, "run", [pk], state, [RunState.QUEUED], now, ended_at=now)
        return pk

    return int(env.db.write(work))


@pytest.mark.parametrize(
    ("state", "action"), [(RunState.QUEUED, "skip"), (RunState.FAILED, "reset")]
)
def test_a_run_the_scheduler_creates_while_a_backfill_is_planned_is_taken_into_account(
    env: Env, state: RunState, action: str
) -> None:
    _daily(env)
    plan = backfill_service.plan(env.project, "daily", start="2024-01-01", end="2024-01-03")
    assert plan.planned == {"create": 3, "reset": 0, "skip": 0}
    scheduled = _scheduled_run(env, "2024-01-02", state)  # between plan and write
    backfill_id = backfill_service.create(env.project, plan)
    expected = {"create": 2, "reset": 1 if action == "reset" else 0, "skip": int(action == "skip")}
    assert plan.planned == expected  # what was written, as the CLI prints it
    assert backfill_service.get(env.project, backfill_id).planned == expected
    run = env.run(scheduled)
    assert run.state == RunState.QUEUED
    if action == "reset":  # a new attempt, in the backfill
        assert (run.origin, run.attempt, run.backfill_id) == ("backfill", 2, backfill_id)
    else:  # left to the scheduler
        assert (run.origin, run.attempt, run.backfill_id) == ("scheduled", 1, None)
    assert len(_run_pks(env, backfill_id)) == (3 if action == "reset" else 2)


def test_a_scheduled_run_committed_while_a_backfill_writes_is_skipped(env: Env) -> None:
    if env.db.is_sqlite:
        pytest.skip("SQLite lets one writer in at a time: covered by the test above")
    _daily(env)
    plan = backfill_service.plan(env.project, "daily", start="2024-01-01", end="2024-01-02")
    pipeline = env.project.pipeline("daily")
    logical = datetime(2024, 1, 2, tzinfo=UTC)
    inserted, commit = threading.Event(), threading.Event()

    def scheduler_write() -> None:
        def work(conn: Any) -> None:
            store_runs.create_run(
                conn,
                pipeline="daily",
                run_id=f"scheduled__{logical.isoformat()}",
                logical_date=logical,
                interval=pipeline.schedule.interval(logical),
                origin=RunOrigin.SCHEDULED,
                conf={},
                version=pipeline.version,
                task_ids=pipeline.topological(),
                now=datetime.now(UTC),
            )
            inserted.set()
            assert commit.wait(60)

        env.db.write(work)

    writer = threading.Thread(target=scheduler_write)
    writer.start()
    assert inserted.wait(30)
    result: dict[str, Any] = {}

    def backfill() -> None:
        try:
            result["id"] = backfill_service.create(env.project, plan)
        except Exception as exc:
            result["error"] = exc

    creator = threading.Thread(target=backfill)
    creator.start()
    try:
        # The backfill's insert for that date waits on the scheduler's uncommitted one.
        wait_until(lambda: _waiting_on_a_lock(env) > 0, timeout=30)
    finally:
        commit.set()
        writer.join(60)
        creator.join(60)
    assert "error" not in result, result.get("error")
    assert plan.planned == {"create": 1, "reset": 0, "skip": 1}
    (run_pk,) = _run_pks(env, result["id"])
    assert env.run(run_pk).logical_date.day == 1


def _waiting_on_a_lock(env: Env) -> int:
    """Sessions of this test's database waiting for a lock (PostgreSQL)."""
    with env.db.read() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


# -- one date range rule for trigger and backfill -----------------------------------------

RANGED = """
from reflow import Pipeline, Shell
with Pipeline("ranged", schedule="@daily", start_date="2024-01-10", end_date="2024-01-20"):
    Shell("a", "true")
"""


@pytest.mark.parametrize(
    ("date", "message"),
    [
        ("2024-01-09", "2024-01-09 00:00 is before the pipeline's start_date 2024-01-10 00:00"),
        ("2024-01-21", "2024-01-21 00:00 is after the pipeline's end_date 2024-01-20 00:00"),
    ],
)
def test_trigger_and_backfill_refuse_a_date_outside_the_pipeline_range_alike(
    env: Env, date: str, message: str
) -> None:
    env.write("ranged", RANGED)
    span = "(its dates run from 2024-01-10 00:00 to 2024-01-20 00:00)"
    with pytest.raises(InvalidInput, match=rf"^--date {message} \({span[1:-1]}\)$"):
        env.trigger("ranged", [date])
    with pytest.raises(InvalidInput, match=rf"^--(start|end) {message} \({span[1:-1]}\)$"):
        backfill_service.plan(env.project, "ranged", start=date, end=date)
    with env.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(runs)).scalar_one() == 0


def test_trigger_accepts_the_first_and_last_dates_of_the_range(env: Env) -> None:
    env.write("ranged", RANGED)
    assert len(env.trigger("ranged", ["2024-01-10", "2024-01-20"])) == 2


def test_a_pipeline_without_start_date_may_be_triggered_for_any_date(env: Env) -> None:
    env.write(
        "free",
        """
        from reflow import Pipeline, Shell
        with Pipeline("free"):
            Shell("a", "true")
        """,
    )
    assert len(env.trigger("free", ["1999-01-01", "2999-01-01"])) == 2


def test_trigger_and_backfill_refuse_a_conf_value_of_the_wrong_type(env: Env) -> None:
    _daily(env)
    message = r"^param 'fail': Input should be a valid boolean \(expected bool, given 'true'\)$"
    with pytest.raises(ConfError, match=message):
        env.trigger("daily", ["2024-01-02"], {"fail": "true"})
    with pytest.raises(ConfError, match=message):
        backfill_service.plan(
            env.project, "daily", start="2024-01-01", end="2024-01-02", conf={"fail": "true"}
        )
