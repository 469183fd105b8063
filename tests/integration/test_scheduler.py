"""The scheduler over a real database (SQLite and PostgreSQL) and real processes."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from reflow.core.config import Settings
from reflow.core.spec import Handle, TrySpec
from reflow.core.states import FailureReason, RunState, TIState
from reflow.launchers.local import LocalLauncher
from reflow.scheduler import Scheduler
from reflow.store import pipelines as store_pipelines
from reflow.store import runs as store_runs
from reflow.store import scheduling
from reflow.store.db import Database

from .conftest import Env


def _intervals(path: Path) -> list[tuple[str, float, float]]:
    """Lines "<key> <start> <end>" written by the test tasks."""
    out = []
    for line in path.read_text().splitlines():
        key, start, end = line.split()
        out.append((key, float(start), float(end)))
    return out


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def test_tasks_run_in_dependency_order_and_the_run_succeeds(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "order.txt"
    env.write(
        "chain",
        f"""
        from reflow import Pipeline, Shell, Python

        def last(ds, params, run_id):
            with open({str(out)!r}, "a") as fh:
                fh.write(f"c {{ds}} {{params['who']}} {{run_id}}\\n")

        with Pipeline("chain", schedule="@daily", start_date="2024-01-01",
                      params={{"who": "world"}}):
            a = Shell("a", "echo a {{{{ ds }}}} >> {out}")
            b = Shell("b", "echo b {{{{ params.who }}}} >> {out}")
            c = Python("c", last)
            a >> b >> c
    """,
    )
    (run_pk,) = env.trigger("chain", ["2024-01-03"], {"who": "reflow"})
    env.drive(env.runs_done([run_pk]))
    run = env.run(run_pk)
    assert run.state == RunState.SUCCESS
    lines = out.read_text().splitlines()
    assert lines[:2] == ["a 2024-01-03", "b reflow"]
    assert lines[2].startswith("c 2024-01-03 reflow manual__2024-01-03")
    assert {t.state for t in env.tis(run_pk).values()} == {TIState.SUCCESS}


def test_max_active_runs_is_never_exceeded(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "spans.txt"
    env.write(
        "limited",
        f"""
        from reflow import Pipeline, Shell
        with Pipeline("limited", schedule="@daily", start_date="2024-01-01", max_active_runs=2):
            Shell("work", "s=$(date +%s.%N); sleep 0.3; "
                          "echo {{{{ ds }}}} $s $(date +%s.%N) >> {out}")
    """,
    )
    run_pks = env.trigger("limited", [f"2024-01-{d:02d}" for d in range(1, 8)])
    samples: list[int] = []

    def done() -> bool:
        with env.db.read() as conn:
            samples.append(scheduling.count_running_runs(conn).get("limited", 0))
        return env.runs_done(run_pks)()

    env.drive(done)
    assert max(samples) <= 2
    assert max(samples) == 2  # the limit is used, not just respected
    spans = _intervals(out)
    assert len(spans) == 7
    assert _max_overlap([(s, e) for _, s, e in spans]) <= 2


def test_max_active_tasks_limits_task_instances_across_runs(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "spans.txt"
    env.write(
        "wide",
        f"""
        from reflow import Pipeline, Shell
        with Pipeline("wide", schedule="@daily", start_date="2024-01-01", max_active_runs=3,
                      max_active_tasks=2):
            for i in range(3):
                Shell(f"t{{i}}", "s=$(date +%s.%N); sleep 0.2; echo x $s $(date +%s.%N) >> {out}")
    """,
    )
    run_pks = env.trigger("wide", ["2024-01-01", "2024-01-02"])
    env.drive(env.runs_done(run_pks))
    spans = _intervals(out)
    assert len(spans) == 6
    assert _max_overlap([(s, e) for _, s, e in spans]) <= 2


def test_failure_marks_downstream_upstream_failed_and_fails_the_run(env: Env) -> None:
    env.write(
        "fails",
        """
        from reflow import Pipeline, Shell
        with Pipeline("fails", schedule="@daily", start_date="2024-01-01"):
            bad = Shell("bad", "exit 3")
            after = Shell("after", "true")
            last = Shell("last", "true")
            alone = Shell("alone", "true")
            bad >> after >> last
    """,
    )
    (run_pk,) = env.trigger("fails", ["2024-01-01"])
    env.drive(env.runs_done([run_pk]))
    tis = env.tis(run_pk)
    assert tis["bad"].state == TIState.FAILED
    assert tis["bad"].failure_reason == FailureReason.ERROR
    assert tis["after"].state == TIState.UPSTREAM_FAILED
    assert tis["last"].state == TIState.UPSTREAM_FAILED
    assert tis["alone"].state == TIState.SUCCESS
    assert env.run(run_pk).state == RunState.FAILED
    (attempt,) = [t for t in env.tries(run_pk) if t.task_id == "bad"]
    assert attempt.exit_code == 3


def test_retries_with_exponential_backoff(env: Env, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    env.write(
        "flaky",
        f"""
        from reflow import Pipeline, Shell
        with Pipeline("flaky", schedule="@daily", start_date="2024-01-01",
                      defaults={{"retries": 3, "retry_delay": 0.3,
                                "retry_exponential_backoff": True}}):
            Shell("flaky", "echo try >> {counter}; [ $(wc -l < {counter}) -ge 3 ]")
    """,
    )
    (run_pk,) = env.trigger("flaky", ["2024-01-01"])
    env.drive(env.runs_done([run_pk]))
    assert env.run(run_pk).state == RunState.SUCCESS
    tries = env.tries(run_pk)
    assert [t.try_number for t in tries] == [1, 2, 3]
    assert [t.state for t in tries] == ["failed", "failed", "success"]
    gaps = [(tries[i + 1].started_at - tries[i].ended_at).total_seconds() for i in range(2)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6  # 0.3 s, then doubled
    assert all(Path(t.log_path).exists() for t in tries)  # one log per try
    assert len({t.log_path for t in tries}) == 3


def test_retries_exhausted_fail_the_task(env: Env) -> None:
    env.write(
        "hopeless",
        """
        from reflow import Pipeline, Shell
        with Pipeline("hopeless", schedule="@daily", start_date="2024-01-01",
                      defaults={"retries": 1, "retry_delay": 0}):
            Shell("t", "exit 1")
    """,
    )
    (run_pk,) = env.trigger("hopeless", ["2024-01-01"])
    env.drive(env.runs_done([run_pk]))
    ti = env.tis(run_pk)["t"]
    assert (ti.state, ti.try_number) == (TIState.FAILED, 2)


def _survivors(marker: str) -> list[psutil.Process]:
    """Processes carrying ``REFLOW_TEST_MARKER=marker`` in their environment (inherited by
    every descendant of a try, including those that start their own session)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("REFLOW_TEST_MARKER") == marker:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_task_timeout_kills_the_whole_process_tree(env: Env, tmp_path: Path) -> None:
    marker = f"timeout-{tmp_path.name}"
    started_file = tmp_path / "started"
    env.write(
        "slow",
        f"""
        from reflow import Pipeline, Shell
        with Pipeline("slow", schedule="@daily", start_date="2024-01-01",
                      defaults={{"retries": 0, "env": {{"REFLOW_TEST_MARKER": {marker!r}}}}}):
            Shell("sleepy",
                  "sh -c 'trap \\"\\" TERM; sleep 300' & setsid sleep 301 & "
                  "touch {started_file}; sleep 302",
                  timeout=1, kill_grace=1)
    """,
    )
    (run_pk,) = env.trigger("slow", ["2024-01-01"])
    started = time.monotonic()
    env.drive(env.runs_done([run_pk]), timeout=30)
    elapsed = time.monotonic() - started
    assert started_file.exists()
    ti = env.tis(run_pk)["sleepy"]
    assert ti.state == TIState.FAILED
    assert ti.failure_reason == FailureReason.TIMED_OUT
    assert elapsed <= 1 + 1 + 2 + 1  # timeout + grace + 2 s (+1 s of scheduler start-up)
    (attempt,) = env.tries(run_pk)
    assert attempt.failure_reason == FailureReason.TIMED_OUT
    assert _survivors(marker) == []


@pytest.mark.slow
def test_run_timeout_fails_running_tries_and_cancels_the_rest(env: Env, tmp_path: Path) -> None:
    marker = f"runtimeout-{tmp_path.name}"
    env.write(
        "late",
        f"""
        from reflow import Pipeline, Shell
        with Pipeline("late", schedule="@daily", start_date="2024-01-01", run_timeout=1.5,
                      defaults={{"retries": 2, "kill_grace": 1,
                                "env": {{"REFLOW_TEST_MARKER": {marker!r}}}}}):
            first = Shell("first", "sleep 300")
            second = Shell("second", "true")
            first >> second
    """,
    )
    (run_pk,) = env.trigger("late", ["2024-01-01"])
    started = time.monotonic()
    env.drive(env.runs_done([run_pk]), timeout=30)
    assert time.monotonic() - started <= 1.5 + 1 + 2 + 1
    tis = env.tis(run_pk)
    assert (tis["first"].state, tis["first"].failure_reason) == (
        TIState.FAILED,
        FailureReason.RUN_TIMED_OUT,
    )
    assert tis["first"].try_number == 1  # a run timeout is not retried
    assert tis["second"].state in (TIState.CANCELLED, TIState.UPSTREAM_FAILED)
    assert env.run(run_pk).state == RunState.FAILED
    assert _survivors(marker) == []


def test_a_broken_pipeline_file_does_not_stop_the_others(env: Env) -> None:
    env.write(
        "good",
        """
        from reflow import Pipeline, Shell
        with Pipeline("good", schedule="@daily", start_date="2024-01-01"):
            Shell("t", "true")
    """,
    )
    env.write("broken", "from reflow import Pipeline\nraise RuntimeError('boom')\n")
    env.write(
        "cyclic",
        """
        from reflow import Pipeline, Shell
        with Pipeline("cyclic", schedule="@daily", start_date="2024-01-01"):
            a = Shell("a", "true"); b = Shell("b", "true")
            a >> b >> a
    """,
    )
    (run_pk,) = env.trigger("good", ["2024-01-01"])
    env.drive(env.runs_done([run_pk]))
    assert env.run(run_pk).state == RunState.SUCCESS
    with env.db.read() as conn:
        errors = {Path(e.path).name: e.message for e in store_pipelines.list_import_errors(conn)}
    assert "RuntimeError: boom" in errors["broken.py"]
    assert "pipeline 'cyclic': cycle" in errors["cyclic.py"]


def _daily(env: Env, name: str, catchup: bool) -> None:
    env.write(
        name,
        f"""
        from reflow import Pipeline, Shell
        with Pipeline({name!r}, schedule="@daily", start_date="2024-01-01", catchup={catchup},
                      max_active_runs=1):
            Shell("t", "true")
    """,
    )


def _dates(env: Env, name: str) -> list[str]:
    with env.db.read() as conn:
        rows = store_runs.list_runs(conn, pipeline=name, limit=1000)
    return sorted(r.logical_date.date().isoformat() for r in rows)


def test_catchup_creates_a_run_per_missed_interval(env: Env) -> None:
    _daily(env, "caught", catchup=True)
    sched = env.scheduler()
    sched.start()
    sched.create_due_runs(datetime(2024, 1, 4, 12, tzinfo=UTC))
    assert _dates(env, "caught") == ["2024-01-01", "2024-01-02", "2024-01-03"]
    sched.create_due_runs(datetime(2024, 1, 4, 23, tzinfo=UTC))  # nothing new is due
    assert len(_dates(env, "caught")) == 3
    sched.create_due_runs(datetime(2024, 1, 5, 0, 0, 1, tzinfo=UTC))
    assert _dates(env, "caught")[-1] == "2024-01-04"
    sched.stop()


def test_without_catchup_only_the_latest_interval_runs(env: Env) -> None:
    _daily(env, "latest", catchup=False)
    sched = env.scheduler()
    sched.start()
    sched.create_due_runs(datetime(2024, 3, 10, 8, tzinfo=UTC))
    assert _dates(env, "latest") == ["2024-03-09"]
    sched.create_due_runs(datetime(2024, 3, 12, 8, tzinfo=UTC))
    assert _dates(env, "latest") == ["2024-03-09", "2024-03-11"]
    sched.stop()


def _count_writes(sched: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The scheduler's write transactions from now on, one item each."""
    writes: list[int] = []
    write = sched._write

    def counted(work: Any) -> Any:
        writes.append(1)
        return write(work)

    monkeypatch.setattr(sched, "_write", counted)
    return writes


def test_a_midnight_of_many_pipelines_creates_their_runs_in_a_few_transactions(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.write(
        "many",
        """
        from reflow import Pipeline, Shell
        for i in range(250):
            with Pipeline(f"p{i:03d}", schedule="@daily", start_date="2024-01-01",
                          catchup=False):
                Shell("t", "true")
        """,
    )
    sched = env.scheduler()
    sched.start()
    writes = _count_writes(sched, monkeypatch)
    assert sched.create_due_runs(datetime(2024, 3, 10, 8, tzinfo=UTC))
    assert len(writes) == 3  # 100 pipelines per transaction
    with env.db.read() as conn:
        made = store_runs.list_runs(conn, limit=1000)
    assert sorted({r.pipeline for r in made}) == [f"p{i:03d}" for i in range(250)]
    assert {r.logical_date.date().isoformat() for r in made} == {"2024-03-09"}
    # Each pipeline is next due when its next interval ends: nothing more that day.
    writes.clear()
    assert not sched.create_due_runs(datetime(2024, 3, 10, 23, tzinfo=UTC))
    assert writes == []
    sched.stop()


def test_queued_runs_that_all_wait_for_a_slot_cost_no_write(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _daily(env, "full", catchup=False)  # max_active_runs=1
    sched = env.scheduler(create_scheduled_runs=False)
    sched.start()
    env.trigger("full", ["2024-01-01", "2024-01-02", "2024-01-03"])
    now = datetime.now(UTC)
    assert sched.admit_runs(now)  # the first takes the one slot
    writes = _count_writes(sched, monkeypatch)
    assert not sched.admit_runs(now)
    assert writes == []  # two queued runs, no free slot: not even a transaction
    with env.db.read() as conn:
        states = sorted(r.state for r in store_runs.list_runs(conn, pipeline="full"))
    assert states == ["queued", "queued", "running"]
    sched.stop()


def test_scheduled_runs_get_a_free_slot_before_manual_ones(env: Env) -> None:
    _daily(env, "prio", catchup=False)
    sched = env.scheduler(create_scheduled_runs=False)
    sched.start()
    manual = env.trigger("prio", ["2024-01-01"])
    sched.create_scheduled_runs = True
    now = datetime.now(UTC)
    sched.create_due_runs(now)
    sched.admit_runs(now)
    with env.db.read() as conn:
        running = store_runs.list_runs(conn, pipeline="prio", state="running")
    assert [r.origin for r in running] == ["scheduled"]
    assert env.run(manual[0]).state == RunState.QUEUED
    sched.stop()


def test_removing_a_task_marks_its_unfinished_instances_removed(env: Env) -> None:
    source = """
        from reflow import Pipeline, Shell
        with Pipeline("evolving", schedule="@daily", start_date="2024-01-01"):
            a = Shell("a", "true")
            {extra}
    """
    env.write("evolving", source.format(extra='b = Shell("b", "sleep 30"); a >> b'))
    sched = env.scheduler()
    sched.start()
    (run_pk,) = env.trigger("evolving", ["2024-01-01"])
    # edit the pipeline before the run starts: drop b, add c
    path = env.write("evolving", source.format(extra='c = Shell("c", "true"); a >> c'))
    stat = path.stat()
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    env.drive(env.runs_done([run_pk]), scheduler=sched)
    tis = env.tis(run_pk)
    assert tis["b"].state == TIState.REMOVED
    assert tis["c"].state == TIState.SUCCESS
    run = env.run(run_pk)
    assert run.state == RunState.SUCCESS
    assert run.version == sched.catalog.pipelines["evolving"].version


def test_each_attempt_records_its_conf(env: Env) -> None:
    env.write(
        "confd",
        """
        from reflow import Pipeline, Shell, Param
        with Pipeline("confd", schedule="@daily", start_date="2024-01-01",
                      params={"force": False, "path": Param("in/", description="input")}):
            Shell("t", "true")
    """,
    )
    (run_pk,) = env.trigger("confd", ["2024-01-01"], {"force": True})
    env.drive(env.runs_done([run_pk]))
    with env.db.read() as conn:
        attempts = store_runs.attempts_of(conn, run_pk)
    assert [json.dumps(a.conf, sort_keys=True) for a in attempts] == [
        '{"force": true, "path": "in/"}'
    ]
    assert attempts[0].state == RunState.SUCCESS


def test_template_error_fails_the_try_with_a_clear_log(env: Env) -> None:
    env.write(
        "badtpl",
        """
        from reflow import Pipeline, Shell
        with Pipeline("badtpl", schedule="@daily", start_date="2024-01-01",
                      defaults={"retries": 2, "retry_delay": 0}):
            Shell("t", "echo {{ nope }}")
    """,
    )
    (run_pk,) = env.trigger("badtpl", ["2024-01-01"])
    env.drive(env.runs_done([run_pk]))
    (first, *_rest) = env.tries(run_pk)
    assert "'nope' is undefined" in Path(first.log_path).read_text()
    assert env.tis(run_pk)["t"].state == TIState.FAILED


def test_deadline_is_computed_from_the_task_timeout(env: Env) -> None:
    env.write(
        "dl",
        """
        from reflow import Pipeline, Shell
        with Pipeline("dl", schedule="@daily", start_date="2024-01-01",
                      defaults={"timeout": "45m"}):
            Shell("t", "true")
    """,
    )
    (run_pk,) = env.trigger("dl", ["2024-01-01"])
    env.drive(env.runs_done([run_pk]))
    (attempt,) = env.tries(run_pk)
    assert attempt.deadline - attempt.started_at == timedelta(minutes=45)


def test_scratch_space_is_a_folder_of_the_try_removed_after_it(env: Env, tmp_path: Path) -> None:
    seen = tmp_path / "seen.txt"
    env.write(
        "scratchy",
        f"""
        from reflow import Pipeline, Shell
        from reflow.core.pod import scratch

        with Pipeline("scratchy", schedule="@daily", start_date="2024-01-01"):
            Shell(
                "work",
                'echo "$REFLOW_SCRATCH" > {seen} && echo data > "$REFLOW_SCRATCH/part-0"'
                ' && test -s "$REFLOW_SCRATCH/part-0"',
                scratch=scratch("1Gi"),
            )
        """,
    )
    (run_pk,) = env.trigger("scratchy", ["2024-01-03"])
    env.drive(env.runs_done([run_pk]))

    assert env.run(run_pk).state == RunState.SUCCESS
    folder = Path(seen.read_text().strip())
    assert folder.is_relative_to(env.settings.runtime_path)
    assert not folder.exists()


class _SlowStart(LocalLauncher):
    """Takes 1.5 s to start each try, as an image pull or a loaded machine would."""

    def start(self, spec: TrySpec) -> Handle:
        time.sleep(1.5)
        return super().start(spec)


def test_a_task_timeout_counts_from_the_start_of_its_process(env: Env, tmp_path: Path) -> None:
    began = tmp_path / "began"
    env.write(
        "slowstart",
        f"""
        from reflow import Pipeline, Shell

        with Pipeline("slowstart", schedule=None, defaults={{"retries": 0}}):
            Shell("work", "date +%s.%N > {began}; sleep 30", timeout=2, kill_grace=1)
        """,
    )
    (run_pk,) = env.trigger("slowstart")
    sched = Scheduler(
        env.db, env.settings, _SlowStart(env.settings.runtime_path), create_scheduled_runs=False
    )
    env.drive(env.runs_done([run_pk]), scheduler=sched)
    (attempt,) = env.tries(run_pk)
    assert attempt.failure_reason == FailureReason.TIMED_OUT
    ran_for = attempt.ended_at.timestamp() - float(began.read_text())
    # Never stopped before its 2 s, however long the start took (it may run longer).
    assert ran_for >= 2.0 - 0.1, ran_for


def test_a_pipeline_file_that_takes_long_to_read_never_holds_up_the_ticks(
    env: Env, tmp_path: Path
) -> None:
    """Files are re-read on a thread of their own: while one blocks in its import, the
    runs of the others go on."""
    gate, reading = tmp_path / "gate", tmp_path / "reading"
    env.write(
        "quick",
        """
        from reflow import Pipeline, Shell
        with Pipeline("quick", schedule="@daily", start_date="2024-01-01"):
            Shell("a", "true") >> Shell("b", "true")
        """,
    )
    slow = f"""
        import pathlib, time
        from reflow import Pipeline, Shell
        if pathlib.Path({str(gate)!r} + ".armed").exists():
            pathlib.Path({str(reading)!r}).touch()
            deadline = time.monotonic() + 120
            while not pathlib.Path({str(gate)!r}).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        with Pipeline("slow", schedule="@daily", start_date="2024-01-01"):
            Shell("t", "true")
        """
    env.write("slow", slow)
    sched = env.scheduler()
    sched.start()
    (run_pk,) = env.trigger("quick", ["2024-01-01"])  # (a command reads every file too)
    try:
        Path(f"{gate}.armed").touch()
        path = env.write("slow", slow + "        # edited\n")
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        deadline = time.monotonic() + 60
        while not reading.exists():  # the reader is inside the slow file now
            assert time.monotonic() < deadline, "the edited file was not read again"
            time.sleep(0.05)
        env.drive(env.runs_done([run_pk]), timeout=60, scheduler=sched)
        assert env.run(run_pk).state == RunState.SUCCESS
        assert not gate.exists()  # ...and it still is
    finally:
        gate.touch()
        sched.stop()


def test_a_stop_during_a_database_outage_ends_within_seconds(tmp_path: Path) -> None:
    """A daemon rides out any outage, but one asked to stop must end: its stop waits a
    few seconds for the database, then leaves its tries to the others."""
    url = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"  # nothing listens there
    db = Database(url, outage_timeout=None)
    settings = Settings(home=tmp_path, database_url=url)
    sched = Scheduler(db, settings, LocalLauncher(settings.runtime_path))
    sched.id = 1  # registered before the database went away
    began = time.monotonic()
    sched.stop()
    assert time.monotonic() - began < 30
    assert db.outage_timeout is None  # the daemon's patience is back
    db.dispose()
