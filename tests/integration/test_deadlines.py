"""Deadlines per date, kept by the scheduler: real database (SQLite and PostgreSQL), real
processes, and an injected clock (the scheduler's and its launcher's), so that a day
passes in a tick."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reflow.core.lateness import RUN
from reflow.core.states import RunState, TIState
from reflow.launchers.local import LocalLauncher
from reflow.scheduler import Scheduler
from reflow.services import lateness as lateness_service
from reflow.services import pipelines as pipeline_service
from reflow.store import deadlines
from reflow.store import runs as store_runs
from reflow.store.db import Database

from .conftest import Env, wait_until


class Clock:
    """The time every part of the scheduler reads; tests move it."""

    def __init__(self, *start: int) -> None:
        self.now = datetime(*start, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def at(self, *when: int) -> datetime:
        self.now = datetime(*when, tzinfo=UTC)
        return self.now


def daemon(env: Env, clock: Clock, db: Database | None = None, **settings: Any) -> Scheduler:
    """A scheduler as `reflow scheduler` runs one (scheduled runs, deadlines), on ``clock``."""
    launcher = LocalLauncher(env.settings.runtime_path, clock=clock)
    config = env.settings.model_copy(update=settings) if settings else env.settings
    return Scheduler(db or env.db, config, launcher, clock=clock)


def write(
    env: Env,
    name: str,
    *,
    deadline: str | None = "06:00",
    load: str = "true",
    task_deadlines: tuple[str | None, str | None] = (None, None),
    start_date: str = "2024-01-01",
) -> None:
    extract, loads = task_deadlines
    env.write(
        name,
        f"""
        from reflow import Pipeline, Shell
        with Pipeline({name!r}, schedule="@daily", start_date={start_date!r},
                      deadline={deadline!r}):
            Shell("extract", "true", deadline={extract!r}) >> Shell(
                "load", {load!r}, deadline={loads!r})
        """,
    )


def gated(path: Path) -> str:
    return f"while [ ! -e {path} ]; do sleep 0.05; done"


def late(env: Env, name: str) -> list[tuple[str, str, datetime, bool]]:
    """The misses of ``name``: (logical date, task or 'run', due, whether the date has a run)."""
    return sorted(
        (
            m.logical_date.date().isoformat(),
            m.task or "run",
            m.due_at,
            m.run is not None,
        )
        for m in lateness_service.late_dates(env.project, name)
    )


def cursor(env: Env, name: str) -> datetime | None:
    with env.db.read() as conn:
        return deadlines.cursors(conn, [name])[name]


def dated_run(env: Env, name: str, day: str) -> Any:
    with env.db.read() as conn:
        rows = [
            r
            for r in store_runs.list_runs(conn, pipeline=name, limit=100)
            if r.logical_date.date().isoformat() == day
        ]
    return rows[0] if rows else None


def ticking(sched: Scheduler, check: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: (sched.tick(), check())[1]


def pause(env: Env, name: str) -> None:
    pipeline_service.set_paused(env.project, name, True, actor="tester", reason=None)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "gate"
    yield path
    path.touch()  # whatever waits on it ends


def utc(*when: int) -> datetime:
    return datetime(*when, tzinfo=UTC)


# -- met and missed -----------------------------------------------------------------------------
def test_a_run_that_succeeded_before_its_deadline_is_not_late(env: Env) -> None:
    write(env, "ontime")
    clock = Clock(2024, 1, 6, 0, 0, 1)
    sched = daemon(env, clock)
    sched.start()
    try:
        wait_until(ticking(sched, lambda: _state(env, "ontime", "2024-01-05") == "success"), 60)
        clock.at(2024, 1, 6, 6, 0, 5)
        sched.tick()
        assert late(env, "ontime") == []
        assert cursor(env, "ontime") == clock.now
    finally:
        sched.stop()


def _state(env: Env, name: str, day: str) -> str | None:
    run = dated_run(env, name, day)
    return None if run is None else run.state


def test_a_run_still_running_at_its_deadline_is_late_once_over_many_ticks(
    env: Env, gate: Path
) -> None:
    write(env, "slow", load=gated(gate))
    clock = Clock(2024, 1, 6, 0, 0, 1)
    sched = daemon(env, clock)
    sched.start()
    try:
        wait_until(ticking(sched, lambda: _load_state(env, "slow") == TIState.RUNNING), 60)
        clock.at(2024, 1, 6, 5, 59, 59)
        sched.tick()
        assert late(env, "slow") == []  # not due yet
        clock.at(2024, 1, 6, 6, 0, 5)  # the next check, a few seconds later
        sched.tick()
        missed = [("2024-01-05", "run", utc(2024, 1, 6, 6), True)]
        assert late(env, "slow") == missed
        for minute in range(1, 11):
            clock.now += timedelta(minutes=minute)
            sched.tick()
        gate.touch()  # it succeeds, late
        wait_until(ticking(sched, lambda: _state(env, "slow", "2024-01-05") == "success"), 60)
        clock.now += timedelta(hours=1)
        sched.tick()
        assert late(env, "slow") == missed
    finally:
        gate.touch()
        sched.stop()


def _load_state(env: Env, name: str) -> str | None:
    run = dated_run(env, name, "2024-01-05")
    return None if run is None else env.tis(run.id)["load"].state


def test_a_date_never_run_because_its_pipeline_is_paused_is_late(env: Env) -> None:
    write(env, "asleep")
    pause(env, "asleep")
    clock = Clock(2024, 1, 5, 12)
    sched = daemon(env, clock)
    sched.start()
    try:
        sched.tick()
        clock.at(2024, 1, 6, 6, 0, 1)
        sched.tick()
        assert dated_run(env, "asleep", "2024-01-05") is None
        assert late(env, "asleep") == [("2024-01-05", "run", utc(2024, 1, 6, 6), False)]
    finally:
        sched.stop()


def test_deadlines_missed_while_no_scheduler_ran_are_found_when_one_starts(env: Env) -> None:
    write(env, "outage")
    clock = Clock(2024, 1, 5, 12)
    first = daemon(env, clock)
    first.start()
    first.tick()  # the pipeline's deadlines are checked from here on
    first.stop()
    clock.at(2024, 1, 7, 9)  # down for two deadlines
    second = daemon(env, clock)
    second.start()
    try:
        second.tick()
        # 2024-01-05 never got a run (no catchup); 2024-01-06's was made this tick.
        assert late(env, "outage") == [
            ("2024-01-05", "run", utc(2024, 1, 6, 6), False),
            ("2024-01-06", "run", utc(2024, 1, 7, 6), True),
        ]
    finally:
        second.stop()


def test_a_task_deadline_concerns_that_task_alone(env: Env, gate: Path) -> None:
    write(env, "tasks", deadline=None, load=gated(gate), task_deadlines=("02:00", "03:00"))
    clock = Clock(2024, 1, 6, 0, 0, 1)
    sched = daemon(env, clock)
    sched.start()
    try:
        wait_until(ticking(sched, lambda: _load_state(env, "tasks") == TIState.RUNNING), 60)
        clock.at(2024, 1, 6, 3, 0, 1)
        sched.tick()
        # extract succeeded at 00:00:01, in time; load still runs at 03:00.
        assert late(env, "tasks") == [("2024-01-05", "load", utc(2024, 1, 6, 3), True)]
    finally:
        gate.touch()
        sched.stop()


def test_history_before_a_pipeline_was_first_seen_with_a_deadline_is_never_checked(
    env: Env,
) -> None:
    write(env, "old", deadline="1h", start_date="2020-01-01")
    pause(env, "old")  # no run at all: every date would be late
    clock = Clock(2024, 1, 6, 0, 30)
    sched = daemon(env, clock)
    sched.start()
    try:
        sched.tick()
        assert cursor(env, "old") == utc(2024, 1, 6, 0, 30)
        clock.at(2024, 1, 8, 12)
        sched.tick()
        assert [d for d, *_ in late(env, "old")] == ["2024-01-05", "2024-01-06", "2024-01-07"]
    finally:
        sched.stop()


def test_a_deadline_removed_and_given_again_starts_from_then(env: Env) -> None:
    write(env, "edited")
    pause(env, "edited")
    clock = Clock(2024, 1, 5, 12)
    sched = daemon(env, clock)
    sched.start()
    try:
        sched.tick()
        assert cursor(env, "edited") == utc(2024, 1, 5, 12)
        write(env, "edited", deadline=None)
        sched.refresh_pipelines(clock(), force=True)
        clock.at(2024, 1, 6, 7)
        sched.tick()
        assert cursor(env, "edited") is None
        write(env, "edited", deadline="06:00")
        sched.refresh_pipelines(clock(), force=True)
        clock.at(2024, 1, 10, 7)
        sched.tick()
        assert cursor(env, "edited") == utc(2024, 1, 10, 7)
        assert late(env, "edited") == []
        clock.at(2024, 1, 11, 6, 0, 1)
        sched.tick()
        assert late(env, "edited") == [("2024-01-10", "run", utc(2024, 1, 11, 6), False)]
    finally:
        sched.stop()


def test_a_pipeline_file_removed_and_put_back_starts_from_then(env: Env) -> None:
    write(env, "moved")
    pause(env, "moved")
    clock = Clock(2024, 1, 5, 12)
    sched = daemon(env, clock)
    sched.start()
    try:
        sched.tick()
        path = env.settings.pipelines_path / "moved.py"
        source = path.read_text()
        path.unlink()
        sched.refresh_pipelines(clock(), force=True)
        clock.at(2024, 1, 6, 7)
        sched.tick()
        assert cursor(env, "moved") is None
        path.write_text(source)
        sched.refresh_pipelines(clock(), force=True)
        clock.at(2024, 1, 9, 7)
        sched.tick()
        assert cursor(env, "moved") == utc(2024, 1, 9, 7)
        assert late(env, "moved") == []
    finally:
        sched.stop()


def test_deadlines_missed_while_the_file_was_broken_are_found_once_it_is_fixed(
    env: Env,
) -> None:
    write(env, "broken")
    pause(env, "broken")
    clock = Clock(2024, 1, 5, 12)
    sched = daemon(env, clock)
    sched.start()
    try:
        sched.tick()
        path = env.settings.pipelines_path / "broken.py"
        source = path.read_text()
        path.write_text(source + "\nthis is not python\n")
        sched.refresh_pipelines(clock(), force=True)
        clock.at(2024, 1, 7, 7)
        sched.tick()
        assert late(env, "broken") == []  # its deadlines are unknown while it does not load
        path.write_text(source)
        sched.refresh_pipelines(clock(), force=True)
        clock.at(2024, 1, 7, 8)
        sched.tick()
        assert [d for d, *_ in late(env, "broken")] == ["2024-01-05", "2024-01-06"]
    finally:
        sched.stop()


def test_deadlines_are_checked_every_few_seconds_not_every_tick(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(env, "often")
    pause(env, "often")
    reads: list[int] = []
    real = deadlines.cursors
    monkeypatch.setattr(deadlines, "cursors", lambda c, n: (reads.append(1), real(c, n))[1])
    clock = Clock(2024, 1, 5, 12)
    sched = daemon(env, clock)
    sched.start()
    try:
        for _ in range(20):
            clock.now += timedelta(milliseconds=200)
            sched.tick()
        assert 1 <= len(reads) <= 2
    finally:
        sched.stop()


# -- several schedulers ----------------------------------------------------------------------------
def test_two_schedulers_record_each_miss_once(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    if env.db.is_sqlite:
        pytest.skip("SQLite runs one scheduler at a time")
    write(env, "shared", deadline="06:00", task_deadlines=("05:00", None))
    pause(env, "shared")  # nothing runs: every date is late, for the run and for extract
    recorded: list[deadlines.Miss] = []
    lock = threading.Lock()
    real = deadlines.record_misses

    def counting(conn: Any, misses: Any, now: datetime) -> list[deadlines.Miss]:
        new = real(conn, misses, now)
        with lock:
            recorded.extend(new)
        return new

    monkeypatch.setattr(deadlines, "record_misses", counting)
    # Both live in this process, registered at the clock's time, long before it started.
    monkeypatch.setattr("reflow.scheduler.loop.exited", lambda row, host: False)
    clock = Clock(2024, 1, 5, 12)
    other_db = Database(env.settings.database_url)
    # Neither declares the other dead while the clock jumps days at a time.
    pair = [
        daemon(env, clock, scheduler_timeout=10**9),
        daemon(env, clock, other_db, scheduler_timeout=10**9),
    ]
    for sched in pair:
        sched.start()
    try:
        for sched in pair:
            sched.tick()
        for day in range(6, 26):
            clock.at(2024, 1, day, 6, 0, 1)
            barrier = threading.Barrier(2)
            errors: list[BaseException] = []

            def tick(
                sched: Scheduler,
                barrier: threading.Barrier = barrier,
                errors: list[BaseException] = errors,
            ) -> None:
                try:
                    barrier.wait(timeout=30)
                    sched.tick()
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=tick, args=(s,)) for s in pair]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert not errors, errors
        clock.now += timedelta(seconds=10)  # a window one of them skipped (row held) is next
        for sched in pair:
            sched.tick()
        dates = [f"2024-01-{d:02d}" for d in range(5, 25)]
        assert sorted((m.logical_date.date().isoformat(), m.task) for m in recorded) == sorted(
            (d, t) for d in dates for t in (RUN, "extract")
        )
        assert len(late(env, "shared")) == 40
    finally:
        for sched in pair:
            sched.stop()
        other_db.dispose()


def test_a_scoped_scheduler_checks_no_deadline(env: Env) -> None:
    """`trigger --wait` and `backfill --wait` run a scheduler for their own runs only."""
    write(env, "scoped")
    pause(env, "scoped")
    clock = Clock(2024, 1, 5, 12)
    sched = env.scheduler(clock=clock)
    sched.start()
    try:
        sched.tick()
        clock.at(2024, 1, 7)
        sched.tick()
        assert cursor(env, "scoped") is None and late(env, "scoped") == []
    finally:
        sched.stop()


def test_the_run_of_a_late_date_knows_it(env: Env, gate: Path) -> None:
    write(env, "known", load=gated(gate))
    clock = Clock(2024, 1, 6, 0, 0, 1)
    sched = daemon(env, clock)
    sched.start()
    try:
        wait_until(ticking(sched, lambda: _load_state(env, "known") == TIState.RUNNING), 60)
        clock.at(2024, 1, 6, 6, 0, 1)
        sched.tick()
        run = dated_run(env, "known", "2024-01-05")
        assert run.state == RunState.RUNNING
        (miss,) = lateness_service.misses_of_runs(env.project, [run])[run.id]
        assert (miss.task, miss.due_at, miss.recorded_at) == (RUN, utc(2024, 1, 6, 6), clock.now)
    finally:
        gate.touch()
        sched.stop()
