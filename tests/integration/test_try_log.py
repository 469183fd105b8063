"""reflow's own lines in a try's log: what the try ran, where, and how it ended, next to
the task's output (a killed try has none), without breaking what reads the log."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reflow.core import trylines
from reflow.core.naming import utcnow
from reflow.core.spec import Outcome
from reflow.core.states import FailureReason, RunState, TIState
from reflow.launchers.local import LocalLauncher
from reflow.scheduler import Scheduler, trylog
from reflow.services import history
from reflow.services import logs as log_service
from reflow.services import runs as run_service
from reflow.tasks.spark import parse_app_id

from .conftest import Env, wait_until

OWN = re.compile(r"^\[reflow\] \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (.*)$")


def own(text: str) -> list[str]:
    """reflow's lines of a log, without their prefix and timestamp."""
    return [m.group(1) for line in text.splitlines() if (m := OWN.match(line))]


def task_output(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("[reflow] ")]


def log_of(env: Env, run_pk: int, task_id: str = "t", number: int = 1) -> str:
    (found,) = [t for t in env.tries(run_pk) if t.task_id == task_id and t.try_number == number]
    return Path(found.log_path).read_text()


def test_a_successful_try_log_says_what_ran_where_with_secrets_masked_and_exit_code_0(
    env: Env,
) -> None:
    secret = "s3cr3t-value-4242"
    env.write(
        "etl",
        """
        from reflow import Param, Pipeline, Shell
        with Pipeline("etl", schedule="@daily", start_date="2024-01-01",
                      params={"api_key": Param("", secret=True), "mode": "full"}):
            Shell("t", "echo key {{ params.api_key }} mode {{ params.mode }}; printf no-newline",
                  timeout=60, kill_grace=3)
        """,
    )
    (run_pk,) = env.trigger("etl", ["2024-01-03"], {"api_key": secret})
    env.drive(env.runs_done([run_pk]))
    assert env.run(run_pk).state == RunState.SUCCESS

    text = log_of(env, run_pk)
    lines = own(text)
    run_id = env.run(run_pk).run_id
    assert lines[0] == f"try 1 of task t, run {run_id} (attempt 1) of etl"
    assert lines[1] == f"runs on: launcher local, host {socket.gethostname()}"
    assert lines[2] == "timeout: 60 s (kill grace 3 s)"
    assert lines[3] == 'conf: {"api_key": "***", "mode": "full"}'
    assert lines[4] == ("command: /bin/sh -c 'echo key *** mode full; printf no-newline'")
    assert lines[-1] == "ended: success, exit code 0"
    # The task's output is untouched, and reflow's last line starts a line of its own.
    assert task_output(text) == [f"key {secret} mode full", "no-newline"]
    assert not any(secret in line for line in lines)

    # The log as the CLI and the web serve it: the task's secret masked, reflow's lines in.
    run = run_service.find_run(env.project, str(run_pk))
    served = "".join(log_service.try_log(env.project, run, "t").stream())
    assert secret not in served
    assert task_output(served) == ["key *** mode full", "no-newline"]
    assert own(served) == lines


def test_a_failing_try_log_ends_with_its_exit_code(env: Env) -> None:
    env.write(
        "fails",
        """
        from reflow import Pipeline, Shell
        with Pipeline("fails", schedule="@daily", start_date="2024-01-01",
                      defaults={"retries": 0}):
            Shell("t", "echo about to fail; exit 3")
        """,
    )
    (run_pk,) = env.trigger("fails", ["2024-01-01"])
    env.drive(env.runs_done([run_pk]))

    text = log_of(env, run_pk)
    assert task_output(text) == ["about to fail"]
    assert own(text)[-1] == "ended: failed, exit code 3"


def test_a_try_killed_by_its_timeout_has_no_output_but_its_log_says_it_timed_out(
    env: Env,
) -> None:
    env.write(
        "slow",
        """
        from reflow import Pipeline, Shell
        with Pipeline("slow", schedule="@daily", start_date="2024-01-01",
                      defaults={"retries": 0}):
            Shell("t", "sleep 30", timeout=1, kill_grace=1)
        """,
    )
    (run_pk,) = env.trigger("slow", ["2024-01-01"])
    env.drive(env.runs_done([run_pk]), timeout=30)
    assert env.tis(run_pk)["t"].failure_reason == FailureReason.TIMED_OUT

    text = log_of(env, run_pk)
    assert task_output(text) == []  # all the task said: nothing
    lines = own(text)
    assert "timeout: 1 s (kill grace 1 s)" in lines
    assert lines[-1].startswith("ended: timed out after 1 s (the task's timeout) and was stopped")
    assert "SIGTERM" in lines[-1] or "SIGKILL" in lines[-1], lines[-1]


def test_a_cancelled_try_log_says_it_was_cancelled_and_why(env: Env) -> None:
    started = env.home / "started"
    env.write(
        "long",
        f"""
        from reflow import Pipeline, Shell
        with Pipeline("long", schedule="@daily", start_date="2024-01-01"):
            Shell("t", "touch {started}; sleep 30", kill_grace=1)
        """,
    )
    (run_pk,) = env.trigger("long", ["2024-01-01"])
    driver = threading.Thread(target=lambda: env.drive(env.runs_done([run_pk]), timeout=60))
    driver.start()
    try:
        wait_until(started.exists, timeout=30)
        # A person marks the run failed: its running try is stopped (reason "killed").
        history.mark(env.project, "long", str(run_pk), "failed", wait=30)
    finally:
        driver.join(60)
    assert not driver.is_alive()
    (tried,) = env.tries(run_pk)
    assert tried.failure_reason == FailureReason.KILLED

    last = own(log_of(env, run_pk))[-1]
    assert last.startswith(
        "ended: cancelled on request (reason: killed, its run was marked failed): "
    ), last


def test_a_try_lost_with_its_scheduler_and_host_says_so_and_who_took_over(env: Env) -> None:
    env.write(
        "once",
        """
        from reflow import Pipeline, Shell
        with Pipeline("once", schedule=None, defaults={"retries": 0}):
            Shell("t", "echo started {{ try_number }}; sleep 1")
        """,
    )
    settings = env.settings.model_copy(update={"lost_retry_delay": 0.0})
    (run_pk,) = env.trigger("once")
    first = Scheduler(
        env.db, settings, LocalLauncher(settings.runtime_path), create_scheduled_runs=False
    )
    first.start()
    wait_until(lambda: (first.tick() or True) and bool(env.tries(run_pk)), timeout=30)
    wait_until(lambda: env.tries(run_pk)[0].pid is not None, timeout=30)
    # The try's process dies with its scheduler (a host crash), leaving no exit status.
    os.killpg(env.tries(run_pk)[0].pid, signal.SIGKILL)
    first.launcher.close()
    later = Scheduler(
        env.db,
        settings,
        LocalLauncher(settings.runtime_path),
        create_scheduled_runs=False,
        clock=lambda: utcnow() + timedelta(seconds=settings.scheduler_timeout + 5),
    )
    env.drive(env.runs_done([run_pk]), scheduler=later)
    assert env.run(run_pk).state == RunState.SUCCESS

    lost = own(log_of(env, run_pk, number=1))
    assert lost[-2] == (
        f"taken over by scheduler {later.id} on host {socket.gethostname()}: the scheduler "
        "that watched this try stopped or was declared dead; the try is no longer running"
    )
    assert lost[-1].startswith("ended: lost (process vanished without an exit status)")
    retried = log_of(env, run_pk, number=2)
    assert own(retried)[0].startswith("try 2 of task t")
    assert own(retried)[-1] == "ended: success, exit code 0"
    assert task_output(retried) == ["started 2"]


def test_a_try_that_could_not_start_says_which_try_and_why(env: Env) -> None:
    env.write(
        "badtpl",
        """
        from reflow import Pipeline, Shell
        with Pipeline("badtpl", schedule="@daily", start_date="2024-01-01",
                      defaults={"retries": 0}):
            Shell("t", "echo {{ nope }}")
        """,
    )
    (run_pk,) = env.trigger("badtpl", ["2024-01-01"])
    env.drive(env.runs_done([run_pk]))
    assert env.tis(run_pk)["t"].state == TIState.FAILED

    text = log_of(env, run_pk)
    lines = own(text)
    assert task_output(text) == []
    assert lines[0].startswith("try 1 of task t, run ")
    assert not any(line.startswith("command:") for line in lines)  # it never rendered
    assert lines[-1].startswith("ended: could not start the try: ")
    assert "'nope' is undefined" in lines[-1]


def test_the_spark_application_id_is_still_found_after_reflows_lines(
    env: Env, tmp_path: Path
) -> None:
    spark_home, java_home = tmp_path / "spark", tmp_path / "java"
    for program, body in (
        (
            spark_home / "bin" / "spark-submit",
            "echo 'INFO Submitted application local-1700000000123'",
        ),
        (java_home / "bin" / "java", "exit 0"),
    ):
        program.parent.mkdir(parents=True)
        program.write_text(f"#!/bin/sh\n{body}\n")
        program.chmod(0o755)
    env.write(
        "sparky",
        f"""
        from reflow import Pipeline, SparkSubmit
        with Pipeline("sparky", schedule="@daily", start_date="2024-01-01"):
            SparkSubmit("t", "job.py", spark_home={str(spark_home)!r}, retries=0,
                        env={{"JAVA_HOME": {str(java_home)!r}}})
        """,
    )
    (run_pk,) = env.trigger("sparky", ["2024-01-01"])
    env.drive(env.runs_done([run_pk]))

    text = log_of(env, run_pk)
    assert own(text)[4].startswith(f"command: {spark_home}/bin/spark-submit --master ")
    assert parse_app_id(text) == "local-1700000000123"
    (tried,) = env.tries(run_pk)
    assert tried.app_id == "local-1700000000123"


def test_an_end_recorded_again_is_written_once(tmp_path: Path) -> None:
    # A transaction that failed (the database was down) records the outcome again.
    log = tmp_path / "try-1.log"
    log.write_text("partial output")
    at = datetime(2024, 1, 3, 10, 0, tzinfo=UTC)
    row: Any = type("Row", (), {"cancel_reason": None, "started_at": at})()
    line = trylog.ended(row, Outcome(1, 0, None, at), True, None)
    for later in (0, 5):
        trylines.write(log, trylines.stamped(at + timedelta(seconds=later), [line]))
    assert log.read_text() == (
        "partial output\n[reflow] 2024-01-03T10:00:00.000Z ended: success, exit code 0\n"
    )
