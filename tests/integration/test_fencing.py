"""Leases and fencing: a scheduler declared dead starts, adopts and records nothing; lost
tries back off and stop; one try's error never stops the scheduler; waiting commands
always have something driving their runs."""

from __future__ import annotations

import itertools
import os
import signal
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from reflow.core.errors import Conflict, LeaseLost
from reflow.core.naming import utcnow
from reflow.core.spec import Handle, Outcome, TryRef, TrySpec
from reflow.core.states import FailureReason, RunState, TIState, TryState
from reflow.launchers.base import Launcher
from reflow.launchers.local import LocalLauncher
from reflow.scheduler import Scheduler
from reflow.services import history
from reflow.services import runs as run_service
from reflow.store import schedulers as store_schedulers
from reflow.store.models import events

from .conftest import Env, wait_until

EVIDENCE_TASK = """
from reflow import Pipeline, Shell

with Pipeline("{name}", schedule=None, defaults={{"retries": 0}}):
    Shell("work", "echo start {{{{ try_number }}}} >> {out}; sleep {sleep}; "
                  "echo end {{{{ try_number }}}} >> {out}")
"""


class PausingLauncher(LocalLauncher):
    """The local launcher, frozen at the start of a try as a SIGSTOP there would freeze
    the whole scheduler."""

    def __init__(self, runtime: Path) -> None:
        super().__init__(runtime)
        self.entered = threading.Event()
        self.resume = threading.Event()

    def start(self, spec: TrySpec) -> Handle:
        self.entered.set()
        assert self.resume.wait(120), "never resumed"
        return super().start(spec)


def _later(seconds: float) -> Any:
    return lambda: utcnow() + timedelta(seconds=seconds)


def test_a_paused_scheduler_never_starts_a_try_it_no_longer_owns(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "evidence.txt"
    env.write("once", EVIDENCE_TASK.format(name="once", out=out, sleep=0.5))
    settings = env.settings.model_copy(update={"lost_retry_delay": 0.0})
    (run_pk,) = env.trigger("once")

    paused_launcher = PausingLauncher(settings.runtime_path)
    paused = Scheduler(env.db, settings, paused_launcher, create_scheduled_runs=False)
    ended: list[BaseException] = []

    def run_paused() -> None:
        try:
            paused.run(until=lambda: False, idle_wait=0.05)
        except BaseException as exc:  # reported to the test
            ended.append(exc)

    thread = threading.Thread(target=run_paused, daemon=True)
    thread.start()
    assert paused_launcher.entered.wait(60), "the first scheduler never queued the try"

    # A second scheduler, whose clock is past the first one's lease, takes over.
    other = Scheduler(
        env.db,
        settings,
        LocalLauncher(settings.runtime_path),
        create_scheduled_runs=False,
        clock=_later(settings.scheduler_timeout + 5),
    )
    env.drive(env.runs_done([run_pk]), scheduler=other)
    assert env.run(run_pk).state == RunState.SUCCESS

    paused_launcher.resume.set()
    thread.join(60)
    assert not thread.is_alive()
    assert len(ended) == 1 and isinstance(ended[0], LeaseLost), ended

    lines = out.read_text().split()
    assert lines.count("start") == 1, out.read_text()
    first, second = env.tries(run_pk)
    assert (first.state, first.failure_reason) == (TryState.FAILED, FailureReason.LOST)
    assert second.state == TryState.SUCCESS
    # Nothing of the fenced try ever runs, even later.
    assert out.read_text().split().count("start") == 1


def test_a_scheduler_declared_dead_records_no_outcome_and_registers_again(env: Env) -> None:
    env.write(
        "slow",
        """
        from reflow import Pipeline, Shell

        with Pipeline("slow", schedule=None, defaults={"retries": 0}):
            Shell("work", "sleep 1")
        """,
    )
    (run_pk,) = env.trigger("slow")
    first = env.scheduler(relaunch=lambda: LocalLauncher(env.settings.runtime_path))
    first.start()
    wait_until(lambda: (first.tick() or True) and bool(env.tries(run_pk)), timeout=30)
    old_id = first.id
    # Another scheduler declares the first dead while it is still running.
    other = env.scheduler(clock=_later(env.settings.scheduler_timeout + 5))
    other.start()
    (try_row,) = env.tries(run_pk)
    assert try_row.owner == other.id

    # The first one finds out at its next transaction, records nothing for the try it
    # no longer owns, and registers again: on PostgreSQL beside the other, on SQLite
    # (one scheduler at a time) it stops with one clear error.
    stop = threading.Event()
    threading.Timer(30, stop.set).start()
    if env.db.is_sqlite:
        with pytest.raises(Conflict, match="one scheduler at a time"):
            first.run(stop, until=lambda: first.id != old_id, idle_wait=0.05)
    else:
        first.run(stop, until=lambda: first.id != old_id, idle_wait=0.05)
        assert first.id is not None and first.id != old_id
    assert env.tries(run_pk)[0].owner == other.id
    env.drive(env.runs_done([run_pk]), scheduler=other)
    (try_row,) = env.tries(run_pk)
    assert try_row.state == TryState.SUCCESS and try_row.owner == other.id


class LosingLauncher(Launcher):
    """Every try it starts is lost at once, as if its host died each time."""

    name = "local"

    def __init__(self) -> None:
        self.started: list[int] = []

    def start(self, spec: TrySpec) -> Handle:
        self.started.append(spec.try_id)
        return Handle(spec.try_id, None, "gone", external_id=f"gone:{spec.try_id}")

    def poll(self) -> list[Outcome]:
        lost, self.started = self.started, []
        return [Outcome(i, None, FailureReason.LOST, utcnow(), "host died") for i in lost]

    def cancel(self, try_id: int, grace: float) -> None:
        pass

    def adopt(self, ref: TryRef) -> bool:
        self.started.append(ref.try_id)
        return False

    def watched(self) -> set[int]:
        return set(self.started)


def test_lost_tries_back_off_and_fail_after_the_limit(env: Env) -> None:
    env.write(
        "doomed",
        """
        from reflow import Pipeline, Shell

        with Pipeline("doomed", schedule=None, defaults={"retries": 5}):
            Shell("work", "true")
        """,
    )
    settings = env.settings.model_copy(update={"lost_retry_delay": 0.3, "lost_retry_limit": 2})
    (run_pk,) = env.trigger("doomed")
    sched = Scheduler(env.db, settings, LosingLauncher(), create_scheduled_runs=False)
    env.drive(env.runs_done([run_pk]), scheduler=sched)
    tries = env.tries(run_pk)
    assert [t.failure_reason for t in tries] == [FailureReason.LOST] * 3
    ti = env.tis(run_pk)["work"]
    assert ti.state == TIState.FAILED and ti.failure_reason == FailureReason.LOST
    # Each wait doubles: 0.3 s, then 0.6 s; lost tries use up none of the 5 retries.
    gaps = [(b.queued_at - a.ended_at).total_seconds() for a, b in itertools.pairwise(tries)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6, gaps
    with env.db.read() as conn:
        details = [e.detail for e in conn.execute(events.select()).all() if e.detail]
    assert any("lost 3 times in a row" in d for d in details), details

    # A clear gives the task instance a fresh start: lost again, it is retried again.
    history.clear(env.project, "doomed", run=str(run_pk))
    again = Scheduler(env.db, settings, LosingLauncher(), create_scheduled_runs=False)
    env.drive(env.runs_done([run_pk]), scheduler=again)
    assert [t.failure_reason for t in env.tries(run_pk)] == [FailureReason.LOST] * 6


def test_an_error_while_starting_a_try_fails_that_try_and_not_the_scheduler(
    env: Env, tmp_path: Path
) -> None:
    env.write(
        "mixed",
        """
        from reflow import Pipeline, Shell
        from reflow.core.pipeline import Task

        class Unknown(Task):
            kind = "unknown"

        with Pipeline("mixed", schedule=None, defaults={"retries": 0}):
            Unknown("odd")
            Shell("fine", "true")
        """,
    )
    (run_pk,) = env.trigger("mixed")
    env.drive(env.runs_done([run_pk]))
    tis = env.tis(run_pk)
    assert tis["fine"].state == TIState.SUCCESS
    assert tis["odd"].state == TIState.FAILED
    assert tis["odd"].failure_reason == FailureReason.ERROR

    # A logs folder that cannot be written: the tries fail, the scheduler goes on.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    settings = env.settings.model_copy(update={"logs_folder": blocker / "logs"})
    (run_pk,) = env.trigger("mixed")
    sched = Scheduler(
        env.db, settings, LocalLauncher(settings.runtime_path), create_scheduled_runs=False
    )
    env.drive(env.runs_done([run_pk]), scheduler=sched)
    tries = {t.task_id: t for t in env.tries(run_pk)}
    assert {t.state for t in tries.values()} == {TryState.FAILED}
    assert "Not a directory" in (tries["fine"].detail or ""), tries["fine"].detail
    assert "unsupported task kind 'unknown'" in (tries["odd"].detail or "")


def test_a_plain_task_is_a_join_point_that_succeeds_without_a_try(env: Env) -> None:
    env.write(
        "joined",
        """
        from reflow import Pipeline, Shell, Task

        with Pipeline("joined", schedule=None):
            [Shell("a", "true"), Shell("b", "true")] >> Task("join") >> Shell("c", "true")
        """,
    )
    (run_pk,) = env.trigger("joined")
    env.drive(env.runs_done([run_pk]))
    assert env.run(run_pk).state == RunState.SUCCESS
    assert env.tis(run_pk)["join"].state == TIState.SUCCESS
    assert {t.task_id for t in env.tries(run_pk)} == {"a", "b", "c"}


def test_wait_takes_over_from_a_scheduler_that_stopped_answering(env: Env) -> None:
    env.write("once", EVIDENCE_TASK.format(name="once", out=env.home / "e.txt", sleep=0))
    (run_pk,) = env.trigger("once")
    # A daemon that was killed a moment ago: registered, heartbeat fresh, never coming back.
    env.db.write(lambda c: store_schedulers.register_scheduler(c, "elsewhere", 1, utcnow()))
    notes: list[str] = []
    result = run_service.wait(env.project, "once", [run_pk], lambda p: notes.append(p.note))
    assert result.done == 1 and env.run(run_pk).state == RunState.SUCCESS
    assert any(n.startswith("waiting for scheduler") for n in notes), notes
    assert "running the scheduler in this process" in notes


def test_an_in_process_scheduler_drives_only_its_runs_and_adopts_only_its_pipelines(
    env: Env,
) -> None:
    for name in ("mine", "theirs"):
        env.write(
            name,
            f"""
            from reflow import Pipeline, Shell

            with Pipeline("{name}", schedule=None, max_active_runs=4):
                Shell("work", "sleep 0.3")
            """,
        )
    mine, other_run = env.trigger("mine"), env.trigger("mine")
    sched = env.scheduler(only=["mine"], runs=mine)
    env.drive(env.runs_done(mine), scheduler=sched)
    assert env.run(other_run[0]).state == RunState.QUEUED

    # Orphans of two pipelines: a scoped scheduler adopts only those of its own.
    (theirs,) = env.trigger("theirs")
    first = env.scheduler()
    first.start()
    wait_until(
        lambda: (first.tick() or True) and all(env.tries(r) for r in (theirs, other_run[0])),
        timeout=30,
    )
    first.launcher.close()
    env.db.write(lambda c: store_schedulers.stop_scheduler(c, first.id, utcnow()))  # type: ignore[arg-type]
    scoped = env.scheduler(only=["mine"], runs=[])
    scoped.start()
    assert env.tries(other_run[0])[0].owner == scoped.id
    assert env.tries(theirs)[0].owner == first.id
    scoped.stop()


def test_a_lost_try_is_retried_without_using_a_retry(env: Env) -> None:
    """Losing a try to a dead scheduler is not the task's failure (retries=0 still runs
    it again)."""
    out = env.home / "e.txt"
    env.write("once", EVIDENCE_TASK.format(name="once", out=out, sleep=1))
    settings = env.settings.model_copy(update={"lost_retry_delay": 0.0})
    (run_pk,) = env.trigger("once")
    first = Scheduler(
        env.db, settings, LocalLauncher(settings.runtime_path), create_scheduled_runs=False
    )
    first.start()
    wait_until(lambda: (first.tick() or True) and bool(env.tries(run_pk)), timeout=30)
    # The try's process dies with its scheduler (a host crash), leaving no exit status.
    wait_until(lambda: env.tries(run_pk)[0].pid is not None, timeout=30)
    os.killpg(env.tries(run_pk)[0].pid, signal.SIGKILL)
    first.launcher.close()
    later = Scheduler(
        env.db,
        settings,
        LocalLauncher(settings.runtime_path),
        create_scheduled_runs=False,
        clock=_later(settings.scheduler_timeout + 5),
    )
    env.drive(env.runs_done([run_pk]), scheduler=later)
    assert env.run(run_pk).state == RunState.SUCCESS
    assert [t.failure_reason for t in env.tries(run_pk)] == [FailureReason.LOST, None]
