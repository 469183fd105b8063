"""Logs in S3 and JSON logs as a user runs them: ``reflow scheduler`` and ``reflow web`` as
real processes, each in a project folder of its own ("two hosts") on one database, with
their logs in moto's S3 on loopback (the endpoint from ``AWS_ENDPOINT_URL``) and every line
of their stderr JSON. Bad settings are one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.s3 import S3Server, free_port, s3

from ..integration.conftest import wait_until
from .test_cli import REFLOW
from .test_metrics_cli import get, schedulers

__all__ = ["s3"]  # the fixture

SECRET = "tok-5566-secret"
PIPELINE = """
from reflow import Param, Pipeline, Shell
with Pipeline("slow", schedule=None, params={"api_key": Param("", secret=True)}):
    Shell("t", "for i in 1 2 3 4; do echo line $i {{ params.api_key }}; sleep 0.3; done")
"""


def project(folder: Path) -> Path:
    (folder / "pipelines").mkdir(parents=True)
    (folder / "reflow.toml").write_text("[reflow]\nlogs_ship_interval = 0.2\n")
    (folder / "pipelines" / "slow.py").write_text(PIPELINE)
    return folder


def run(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*REFLOW, *args],
        cwd=home,
        env={**env, "REFLOW_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def start(home: Path, env: dict[str, str], err: Path, *args: str) -> subprocess.Popen[bytes]:
    with err.open("w") as stderr:
        return subprocess.Popen(
            [*REFLOW, *args],
            cwd=home,
            env={**env, "REFLOW_HOME": str(home)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def stop(proc: subprocess.Popen[bytes], err: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=60) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def json_lines(err: Path) -> list[dict[str, Any]]:
    """Every line of a process's stderr, each parsed as a JSON object."""
    lines = err.read_text().splitlines()
    assert lines, "nothing logged"
    records = []
    for line in lines:
        record = json.loads(line)  # each line, or the test fails here
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        assert record["time"].endswith("Z"), line
        datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
        records.append(record)
    return records


@pytest.mark.slow
def test_a_scheduler_and_a_web_server_on_two_hosts_share_logs_in_s3_and_log_json(
    tmp_path: Path, s3: S3Server
) -> None:
    scheduler_home = project(tmp_path / "scheduler-host")
    web_home = project(tmp_path / "web-host")
    env = {
        **os.environ,
        "COLUMNS": "200",
        "AWS_ENDPOINT_URL": s3.endpoint,
        "REFLOW_LOGS_URL": f"s3://{s3.bucket}/logs",
        "REFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}",
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v1/pipelines/slow/runs/1/tasks/t/log"
    scheduler_err, web_err = tmp_path / "scheduler.err", tmp_path / "web.err"
    scheduler = start(scheduler_home, env, scheduler_err, "scheduler", "--log-format", "json", "-v")
    web = start(
        web_home,
        {**env, "REFLOW_LOG_FORMAT": "json"},
        web_err,
        "web",
        "--no-auth",
        "--port",
        str(port),
    )
    try:
        queued = run(web_home, env, "trigger", "slow", "--conf", json.dumps({"api_key": SECRET}))
        assert queued.returncode == 0, queued.stderr

        def served() -> dict[str, Any] | None:
            assert scheduler.poll() is None, scheduler_err.read_text()
            assert web.poll() is None, web_err.read_text()
            got = get(url)
            return json.loads(got[1]) if got is not None and got[0] == 200 else None

        wait_until(lambda: (served() or {}).get("complete") is True, timeout=120, every=0.2)
        log = served()
        assert log is not None
        shown = run(web_home, env, "logs", "slow", "1", "t")
    finally:
        stop(scheduler, scheduler_err)
        stop(web, web_err)

    text = log["data"]
    assert [line for line in text.splitlines() if line.startswith("line ")] == [
        f"line {i} ***" for i in (1, 2, 3, 4)
    ]
    assert SECRET not in text and text.rstrip().endswith("ended: success, exit code 0")
    assert shown.returncode == 0 and shown.stdout == text
    assert f"s3://{s3.bucket}/logs/slow/" in shown.stderr
    assert s3.read(next(k for k in s3.objects() if k.endswith("/t/try-1.log"))) is not None
    assert not list(web_home.rglob("try-*.log"))
    assert not list(scheduler_home.rglob("try-*.log"))  # shipped, the spool emptied

    records = json_lines(scheduler_err)
    messages = [r["message"] for r in records]
    assert any(m.startswith("scheduler ") and " started with 1 pipelines" in m for m in messages)
    assert any(m == "reflow scheduler: stopped" for m in messages)
    assert any("logs: s3://" in m for m in messages)
    served_lines = json_lines(web_err)
    access = [r for r in served_lines if r["logger"] == "uvicorn.access"]
    assert access and access[-1]["method"] == "GET" and access[-1]["status"] == 200
    assert access[-1]["path"].startswith("/api/v1/pipelines/slow/runs/1/tasks/t/log")
    assert any(r["logger"] == "uvicorn.error" for r in served_lines)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.slow
def test_bad_log_settings_are_one_line_and_start_nothing(tmp_path: Path, s3: S3Server) -> None:
    home = project(tmp_path / "proj")
    env = {**os.environ, "COLUMNS": "200", "AWS_ENDPOINT_URL": s3.endpoint}

    unknown = {**env, "REFLOW_LOGS_URL": "nosuch://bucket/logs"}
    for command in (["scheduler"], ["web", "--no-auth"]):
        line = one_line(run(home, unknown, *command))
        assert line == (
            "error: logs at nosuch://bucket/logs: unknown protocol 'nosuch' "
            "(fsspec knows none such)"
        )

    missing = {**env, "REFLOW_LOGS_URL": f"s3://no-such-bucket-{s3.bucket}/logs"}
    for command, doing in ((["scheduler"], "write to"), (["web", "--no-auth"], "read")):
        line = one_line(run(home, missing, *command))
        assert line == (
            f"error: logs_url s3://no-such-bucket-{s3.bucket}/logs: cannot {doing} it: "
            f"no bucket (or folder) no-such-bucket-{s3.bucket}"
        )

    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = {**env, "AWS_ENDPOINT_URL": nobody, "REFLOW_LOGS_URL": f"s3://{s3.bucket}/x"}
    line = one_line(run(home, unreachable, "scheduler"))
    assert line.startswith(f"error: logs_url s3://{s3.bucket}/x: cannot write to it: ")
    line = one_line(run(home, unreachable, "web", "--no-auth"))
    assert line.startswith(f"error: logs_url s3://{s3.bucket}/x: cannot read it: ")

    # In JSON mode the one line is JSON too.
    record = json.loads(one_line(run(home, unreachable, "scheduler", "--log-format", "json")))
    assert record["level"] == "ERROR" and record["message"].startswith("logs_url s3://")

    line = one_line(run(home, env, "scheduler", "--log-format", "xml"))
    assert "--log-format" in line and "'xml' is not one of 'text', 'json'" in line
    line = one_line(run(home, {**env, "REFLOW_LOG_FORMAT": "yaml"}, "web"))
    assert "REFLOW_LOG_FORMAT" in line
    options = {**env, "REFLOW_LOGS_URL": "s3://b/x", "REFLOW_LOGS_STORAGE_OPTIONS": "{bad"}
    assert one_line(run(home, options, "scheduler")).startswith(
        "error: REFLOW_LOGS_STORAGE_OPTIONS: not JSON: "
    )
    # Nothing started: no scheduler registered, no log written.
    assert schedulers(home) == 0 and not list(home.rglob("try-*.log"))
