"""Pausing a pipeline: nothing new of it starts, what runs finishes, and unpausing
catches up. Real scheduler, real processes, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reflow.core.errors import Conflict, NotFound
from reflow.core.states import RunState, TIState
from reflow.services import pipelines as pipeline_service
from reflow.services import runs as run_service
from reflow.store import pauses
from reflow.store import runs as store_runs

from .conftest import Env, wait_until


def _pause(env: Env, name: str, paused: bool = True, reason: str | None = None) -> bool:
    done = pipeline_service.set_paused(env.project, name, paused, actor="tester", reason=reason)
    return done.changed


def _daily(env: Env, name: str, *, catchup: bool, command: str = "true") -> None:
    env.write(
        name,
        f"""
        from reflow import Pipeline, Shell
        with Pipeline({name!r}, schedule="@daily", start_date="2024-01-01", catchup={catchup}):
            Shell("a", {command!r}) >> Shell("b", "true")
        """,
    )


def _dates(env: Env, name: str) -> list[str]:
    with env.db.read() as conn:
        rows = store_runs.list_runs(conn, pipeline=name, limit=1000)
    return sorted(r.logical_date.date().isoformat() for r in rows)


def test_a_paused_pipeline_gets_no_scheduled_run_and_catches_up_when_unpaused(env: Env) -> None:
    _daily(env, "caught", catchup=True)
    _daily(env, "other", catchup=True)
    assert _pause(env, "caught")
    sched = env.scheduler(create_scheduled_runs=True)
    sched.start()
    sched.tick(datetime(2024, 1, 4, 12, tzinfo=UTC))
    assert _dates(env, "caught") == []
    assert _dates(env, "other") == ["2024-01-01", "2024-01-02", "2024-01-03"]
    sched.tick(datetime(2024, 1, 6, 12, tzinfo=UTC))
    assert _dates(env, "caught") == []
    assert _pause(env, "caught", paused=False)
    sched.tick(datetime(2024, 1, 6, 12, 0, 1, tzinfo=UTC))
    assert _dates(env, "caught") == [f"2024-01-0{d}" for d in range(1, 6)]
    sched.stop()


def test_without_catchup_unpausing_creates_only_the_latest_interval(env: Env) -> None:
    _daily(env, "latest", catchup=False)
    assert _pause(env, "latest")
    sched = env.scheduler(create_scheduled_runs=True)
    sched.start()
    sched.tick(datetime(2024, 3, 10, 8, tzinfo=UTC))
    assert _dates(env, "latest") == []
    _pause(env, "latest", paused=False)
    sched.tick(datetime(2024, 3, 12, 8, tzinfo=UTC))
    assert _dates(env, "latest") == ["2024-03-11"]
    sched.stop()


def test_pausing_lets_running_tries_finish_and_starts_nothing_new(env: Env, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # ``a`` runs until the test opens the gate; ``b`` follows it.
    _daily(env, "gated", catchup=True, command=f"while [ ! -e {gate} ]; do sleep 0.05; done")
    run_pks = env.trigger("gated", ["2024-01-01", "2024-01-02"])
    sched = env.scheduler()
    sched.start()

    def ticking(check: Callable[[], bool]) -> Callable[[], bool]:
        return lambda: (sched.tick(), check())[1]

    def states(task: str) -> set[str]:
        return {env.tis(pk)[task].state for pk in run_pks}

    try:
        wait_until(ticking(lambda: states("a") == {TIState.RUNNING}), timeout=60)
        assert _pause(env, "gated", reason="the warehouse is down")
        gate.touch()
        # What ran finishes and is recorded; nothing else starts: ``b`` waits, ready.
        wait_until(ticking(lambda: states("a") == {TIState.SUCCESS}), timeout=60)
        for _ in range(5):
            sched.tick()
        assert states("b") <= {TIState.PENDING, TIState.SCHEDULED}
        assert [t.task_id for pk in run_pks for t in env.tries(pk)] == ["a", "a"]
        assert {env.run(pk).state for pk in run_pks} == {RunState.RUNNING}

        _pause(env, "gated", paused=False)
        wait_until(
            ticking(lambda: {env.run(pk).state for pk in run_pks} == {RunState.SUCCESS}),
            timeout=60,
        )
    finally:
        gate.touch()
        sched.stop()


def test_a_pause_committed_after_the_scheduler_chose_its_launches_wins(env: Env) -> None:
    _daily(env, "raced", catchup=True)
    (run_pk,) = env.trigger("raced", ["2024-01-01"])
    sched = env.scheduler()
    sched.start()
    now = datetime.now(UTC)
    sched.admit_runs(now)
    sched._settle(now)
    ready = sched._ready(now)
    assert [c.task_id for c in ready] == ["a"]
    _pause(env, "raced")  # another process, between the read and the launch
    assert sched._launch(ready, now) is False
    assert env.tries(run_pk) == []
    sched.stop()


def test_queued_runs_of_a_paused_pipeline_wait_and_the_others_go_on(env: Env) -> None:
    _daily(env, "held", catchup=True)
    _daily(env, "free", catchup=True)
    held = env.trigger("held", ["2024-01-01"])
    free = env.trigger("free", ["2024-01-01"])
    _pause(env, "held")
    env.drive(env.runs_done(free))
    assert env.run(held[0]).state == RunState.QUEUED
    _pause(env, "held", paused=False)
    env.drive(env.runs_done(held))
    assert env.run(held[0]).state == RunState.SUCCESS


def test_the_history_says_who_paused_when_and_why(env: Env) -> None:
    _daily(env, "audited", catchup=True)
    assert _pause(env, "audited", reason="upstream outage")
    assert not _pause(env, "audited")  # already paused: nothing recorded
    assert _pause(env, "audited", paused=False)
    changes = pipeline_service.history(env.project, "audited")
    assert [(c.action, c.actor, c.detail) for c in changes] == [
        ("paused", "tester", "upstream outage"),
        ("unpaused", "tester", None),
    ]
    assert changes[0].at <= changes[1].at
    with env.db.read() as conn:
        assert pauses.paused_pipelines(conn) == frozenset()


def test_pausing_an_unknown_pipeline_names_the_known_ones(env: Env) -> None:
    _daily(env, "known", catchup=True)
    with pytest.raises(NotFound, match=r"unknown pipeline 'nope'.*known"):
        _pause(env, "nope")
    with pytest.raises(NotFound):
        pipeline_service.history(env.project, "nope")


def test_waiting_on_a_paused_pipeline_is_refused_before_anything_is_written(env: Env) -> None:
    _daily(env, "asleep", catchup=True)
    _pause(env, "asleep")
    with pytest.raises(Conflict, match="paused: unpause it first"):
        run_service.refuse_wait_if_paused(env.project, "asleep", "reflow trigger")
    assert _dates(env, "asleep") == []
