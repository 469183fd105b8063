"""The ``reflow`` command as a user runs it, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REFLOW = [sys.executable, "-m", "reflow.cli.__main__"]


def reflow(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REFLOW_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [*REFLOW, *args],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    home = tmp_path / "proj"
    result = reflow(tmp_path, "init", str(home))
    assert result.returncode == 0, result.stderr
    return home


def _run_count(home: Path) -> int:
    import sqlite3

    with sqlite3.connect(home / ".reflow" / "reflow.db") as conn:
        return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])


def test_init_creates_a_project_whose_example_runs(project: Path) -> None:
    result = reflow(
        project, "trigger", "example", "--date", "2024-01-02", "--date", "2024-01-03", "--wait"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("success") >= 2
    assert (project / "data" / "2024-01-02" / "clean.txt").exists()
    listing = reflow(project, "runs", "list", "example")
    assert listing.returncode == 0
    assert "2024-01-03" in listing.stdout and "success" in listing.stdout
    tasks = reflow(project, "tasks", "list", "1")
    assert "extract" in tasks.stdout and "report" in tasks.stdout
    log = reflow(project, "logs", "example", "2024-01-02", "report")
    assert log.returncode == 0, log.stderr
    assert "2024-01-02: 5 events" in log.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trigger", "nope"], "unknown pipeline 'nope'"),
        (["trigger", "example", "--date", "2024-02-30"], "bad date '2024-02-30'"),
        (["trigger", "example", "--conf", "{not json"], "--conf is not valid JSON"),
        (["trigger", "example", "--conf", "[1, 2]"], "--conf must be a JSON object"),
        (["trigger", "example", "--conf", '{"min_events": -1}'], "param 'min_events'"),
        (["trigger", "example", "--conf", '{"min_event": 1}'], "unknown param min_event"),
        (["runs", "list", "nope"], "unknown pipeline 'nope'"),
        (["runs", "show", "example", "999"], "no run '999'"),
        (["logs", "example", "2024-01-01", "extract"], "no run '2024-01-01'"),
        (["pipelines", "show", "nope"], "unknown pipeline 'nope'"),
        (
            ["backfill", "nope", "--start", "2024-01-01", "--end", "2024-01-02"],
            "unknown pipeline 'nope'",
        ),
        (
            ["backfill", "example", "--start", "2024-01-05", "--end", "2024-01-01"],
            "--end 2024-01-01 is before --start 2024-01-05",
        ),
        (
            ["backfill", "example", "--start", "2023-01-01", "--end", "2024-01-01"],
            "before the pipeline's start_date",
        ),
        (
            [
                "backfill",
                "example",
                "--start",
                "2024-01-01",
                "--end",
                "2024-01-02",
                "--tasks",
                "nope",
            ],
            "has no task 'nope'",
        ),
        (
            ["backfill", "example", "--start", "2024-01-01", "--end", "2024-01-02", "--conf", "{"],
            "--conf is not valid JSON",
        ),
        (
            [
                "backfill",
                "example",
                "--start",
                "2024-01-01",
                "--end",
                "2024-01-02",
                "--conf",
                '{"min_events": "many"}',
            ],
            "param 'min_events'",
        ),
        (["backfill", "show", "99"], "no backfill 99"),
        (["runs", "clear", "example"], "give --run ID, or --start D and --end D"),
        (["runs", "mark", "example", "--run", "1", "--state", "done"], "success or failed"),
        (["runs", "mark", "example", "--run", "7", "--state", "failed"], "no run '7'"),
        (["runs", "delete", "example", "--start", "x", "--end", "y"], "bad date 'x'"),
        (["db", "clean", "--before", "yesterday"], "bad date 'yesterday'"),
        (["pipelines", "delete", "example"], "remove the file first"),
        (["pipelines", "pause", "nope"], "unknown pipeline 'nope'"),
        (["pipelines", "history", "nope"], "unknown pipeline 'nope'"),
        # Usage errors too: one line that says where the help is.
        (["nosuch"], "No such command 'nosuch'. (see 'reflow -h')"),
        (["trigge"], "No such command 'trigge'. Did you mean 'trigger'? (see 'reflow -h')"),
        (["runs", "lst"], "No such command 'lst'. Did you mean 'list'? (see 'reflow runs -h')"),
        (["trigger"], "Missing argument 'pipeline'. (see 'reflow trigger -h')"),
        (["runs", "list", "--limit", "many"], "Invalid value for '--limit'"),
        (["backfill", "example", "--start", "2024-01-01", "--bogus"], "No such option: --bogus"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(
    project: Path, args: list[str], message: str
) -> None:
    reflow(project, "pipelines", "list")  # creates the database
    before = _run_count(project)
    result = reflow(project, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert _run_count(project) == before


def test_a_failed_run_makes_trigger_wait_exit_non_zero(project: Path) -> None:
    result = reflow(
        project,
        "trigger",
        "example",
        "--date",
        "2024-01-02",
        "--conf",
        '{"min_events": 100}',
        "--wait",
    )
    assert result.returncode == 1
    assert "did not succeed" in result.stderr
    log = reflow(project, "logs", "example", "2024-01-02", "report", "--try", "1")
    assert "only 5 events, expected at least 100" in log.stdout


def test_pausing_from_the_command_line(project: Path) -> None:
    paused = reflow(project, "pipelines", "pause", "example", "--reason", "source late")
    assert paused.returncode == 0, paused.stderr
    assert "Paused example" in paused.stdout
    assert "example (paused)" in reflow(project, "pipelines", "list").stdout
    again = reflow(project, "pipelines", "pause", "example")
    assert "was paused already" in again.stdout
    # --wait would wait for someone to unpause: refused, nothing written.
    waited = reflow(project, "trigger", "example", "--date", "2024-01-02", "--wait")
    assert waited.returncode == 2
    assert "is paused: unpause it first" in waited.stderr
    assert len(waited.stderr.strip().splitlines()) == 1
    assert _run_count(project) == 0
    queued = reflow(project, "trigger", "example", "--date", "2024-01-02")
    assert queued.returncode == 0
    assert "is paused: its runs wait until" in queued.stdout
    unpaused = reflow(project, "pipelines", "unpause", "example")
    assert "Unpaused example. 1 queued runs may start now." in unpaused.stdout
    history = reflow(project, "pipelines", "history", "example")
    lines = history.stdout.splitlines()
    assert "paused" in lines[1] and "(cli)" in lines[1] and "source late" in lines[1]
    assert "unpaused" in lines[2]


def test_pipelines_validate_reports_broken_files(project: Path) -> None:
    (project / "pipelines" / "broken.py").write_text(
        "from reflow import Pipeline, Shell\n"
        "with Pipeline('broken', schedule='not a cron', start_date='2024-01-01'):\n"
        "    Shell('t', 'true')\n"
    )
    result = reflow(project, "pipelines", "validate")
    assert result.returncode == 1
    assert "ok example" in result.stdout
    assert "broken.py: pipeline 'broken': bad schedule 'not a cron'" in result.stderr
    listing = reflow(project, "pipelines", "list")
    assert listing.returncode == 0
    assert "example" in listing.stdout and "import error" in listing.stderr


def test_backfill_end_to_end_from_the_command_line(project: Path) -> None:
    dry = reflow(
        project, "backfill", "example", "--start", "2024-01-01", "--end", "2024-01-03", "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count(" create ") == 3 and "Nothing was written" in dry.stdout
    assert _run_count(project) == 0
    done = reflow(
        project, "backfill", "example", "--start", "2024-01-01", "--end", "2024-01-03", "--wait"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 of 3 runs succeeded" in done.stdout
    again = reflow(
        project,
        "backfill",
        "example",
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-03",
        "--conf",
        '{"min_events": 10}',
        "--reprocess",
        "all",
        "--wait",
    )
    assert again.returncode == 1
    assert "2024-01-01 failed: report (error)" in again.stderr
    listing = reflow(project, "backfill", "list")
    assert "1 " in listing.stdout and "success" in listing.stdout and "failed" in listing.stdout
    shown = reflow(project, "runs", "show", "example", "2024-01-02")
    assert "attempt 1" in shown.stdout and "attempt 2" in shown.stdout
    assert '"min_events": 10' in shown.stdout
    cleared = reflow(
        project,
        "runs",
        "clear",
        "example",
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-03",
        "--only-failed",
    )
    assert cleared.returncode == 0 and "Cleared 3 task instances in 3 runs" in cleared.stdout
    deleted = reflow(project, "runs", "delete", "example", "--run", "2024-01-01", "--force")
    assert deleted.returncode == 0 and "Deleted 1 runs" in deleted.stdout


def test_help_reads_well() -> None:
    result = subprocess.run([*REFLOW, "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in (
        "init",
        "pipelines",
        "trigger",
        "backfill",
        "runs",
        "tasks",
        "logs",
        "scheduler",
        "db",
    ):
        assert command in result.stdout


def test_secret_params_are_masked_in_run_details_and_logs(project: Path) -> None:
    (project / "pipelines" / "secretive.py").write_text(
        "from reflow import Param, Pipeline, Shell\n"
        "with Pipeline('secretive', schedule='@daily', start_date='2024-01-01',\n"
        "              params={'api_key': Param('', secret=True)}):\n"
        "    Shell('t', 'echo using {{ params.api_key }}')\n"
    )
    done = reflow(
        project,
        "trigger",
        "secretive",
        "--date",
        "2024-01-02",
        "--conf",
        '{"api_key": "s3cr3t-value"}',
        "--wait",
    )
    assert done.returncode == 0, done.stderr
    shown = reflow(project, "runs", "show", "secretive", "2024-01-02")
    assert '"api_key": "***"' in shown.stdout and "s3cr3t" not in shown.stdout
    log = reflow(project, "logs", "secretive", "2024-01-02", "t")
    assert _task_output(log.stdout) == ["using ***"] and "s3cr3t" not in log.stdout
    assert ' conf: {"api_key": "***"}' in log.stdout  # in reflow's lines of the log


def test_logs_of_an_earlier_try_mask_the_secret_its_attempt_ran_with(project: Path) -> None:
    (project / "pipelines" / "secretive.py").write_text(
        "from reflow import Param, Pipeline, Shell\n"
        "with Pipeline('secretive', schedule='@daily', start_date='2024-01-01',\n"
        "              params={'api_key': Param('', secret=True)}):\n"
        "    Shell('t', 'echo using {{ params.api_key }}')\n"
    )
    for key in ("first-secret-1111", "second-secret-2222"):  # attempt 1, then attempt 2
        done = reflow(
            project,
            "backfill",
            "secretive",
            "--start",
            "2024-01-02",
            "--end",
            "2024-01-02",
            "--reprocess",
            "all",
            "--conf",
            f'{{"api_key": "{key}"}}',
            "--wait",
        )
        assert done.returncode == 0, done.stdout + done.stderr
    for number in ("1", "2"):
        log = reflow(project, "logs", "secretive", "2024-01-02", "t", "--try", number)
        assert log.returncode == 0, log.stderr
        assert _task_output(log.stdout) == ["using ***"] and "-secret-" not in log.stdout


def test_logs_follow_masks_a_secret_written_in_two_parts(project: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    (project / "pipelines" / "split.py").write_text(
        "from reflow import Param, Pipeline, Shell\n"
        "with Pipeline('split', schedule='@daily', start_date='2024-01-01',\n"
        "              params={'api_key': Param('', secret=True)}):\n"
        f"    Shell('t', \"printf 'using s3cr'; while [ ! -e {gate} ]; do sleep 0.05; done; "
        "printf 'et-value\\\\n'\")\n"
    )
    env = {**os.environ, "REFLOW_HOME": str(project), "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    run = [*REFLOW, "trigger", "split", "--date", "2024-01-02", "--wait"]
    conf = ["--conf", '{"api_key": "s3cret-value"}']
    runner = subprocess.Popen(
        [*run, *conf], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    follower: subprocess.Popen[str] | None = None
    try:
        # The try has written the first part of the secret, and waits.
        deadline = time.monotonic() + 60
        while not any(p.read_bytes().endswith(b"using s3cr") for p in project.rglob("try-1.log")):
            assert time.monotonic() < deadline, "the try did not start"
            time.sleep(0.05)
        (log_file,) = project.rglob("try-1.log")
        before = log_file.read_text()[: -len("s3cr")]  # reflow's opening lines, "using "
        follower = subprocess.Popen(
            [*REFLOW, "logs", "split", "2024-01-02", "t", "--follow"],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert follower.stdout is not None
        # It has read the log once: what cannot be part of a secret is shown already.
        seen = follower.stdout.read(len(before))
        assert seen == before and seen.endswith("\nusing ")
        gate.touch()
        rest = follower.stdout.read()  # until it ends, with the try
        assert follower.wait(timeout=60) == 0, follower.stderr and follower.stderr.read()
        assert _task_output(seen + rest) == ["using ***"] and "s3cret" not in seen + rest
        assert (seen + rest).splitlines()[-1].endswith(" ended: success, exit code 0")
        assert runner.wait(timeout=60) == 0
    finally:
        gate.touch()
        for proc in (runner, follower):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def _task_output(log: str) -> list[str]:
    """The lines of a try's log that are the task's, not reflow's own."""
    return [line for line in log.splitlines() if not line.startswith("[reflow] ")]


def test_a_second_file_declaring_a_pipeline_breaks_both_and_runs_neither(project: Path) -> None:
    folder = project / "pipelines"
    assert reflow(project, "pipelines", "list").returncode == 0  # 'example' is recorded
    original, intruder = folder / "example.py", folder / "a_copy.py"
    intruder.write_text(original.read_text())

    listing = reflow(project, "pipelines", "list")
    assert listing.returncode == 0
    # the listing wraps long lines: compare with the whitespace collapsed
    errors = " ".join(listing.stderr.split()).split("import error: ")[1:]
    assert len(errors) == 2
    for line in errors:
        assert str(original.resolve()) in line and str(intruder.resolve()) in line
        assert "pipeline 'example' is also declared in" in line

    before = _run_count(project)
    result = reflow(project, "trigger", "example", "--date", "2024-01-02")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "pipeline 'example' is also declared in" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert _run_count(project) == before

    intruder.unlink()
    assert reflow(project, "pipelines", "list").stderr == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["trigger", "example", "--date", "2023-06-01"],
            "--date 2023-06-01 00:00 is before the pipeline's start_date 2024-01-01 00:00",
        ),
        (
            ["trigger", "example", "--date", "2024-01-02", "--conf", '{"min_events": "5"}'],
            "param 'min_events': Input should be a valid integer (expected int, given '5')",
        ),
    ],
)
def test_trigger_refuses_a_date_before_start_date_and_a_mistyped_conf(
    project: Path, args: list[str], message: str
) -> None:
    reflow(project, "pipelines", "list")  # creates the database
    result = reflow(project, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _run_count(project) == 0
