"""``reflow scheduler --metrics-port`` as a user runs it: a real scheduler process serving
/metrics, /healthz and /readyz on loopback; bad options are one line."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..integration.conftest import wait_until
from .test_cli import REFLOW, reflow

PIPELINE = """
from reflow import Pipeline, Shell
with Pipeline("one", schedule=None):
    a = Shell("a", "true")
    b = Shell("b", "true")
    a >> b
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "proj"
    (home / "pipelines").mkdir(parents=True)
    (home / "reflow.toml").write_text("[reflow]\n")
    (home / "pipelines" / "one.py").write_text(PIPELINE)
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str] | None:
    """(status, body), or None while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def schedulers(home: Path) -> int:
    with sqlite3.connect(home / ".reflow" / "reflow.db", timeout=30) as conn:
        return int(conn.execute("SELECT count(*) FROM schedulers").fetchone()[0])


@pytest.mark.slow
def test_the_scheduler_serves_metrics_and_probes_on_its_metrics_port(
    home: Path, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    errors = tmp_path / "scheduler.err"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [*REFLOW, "scheduler", "--metrics-port", str(port)],
            cwd=home,
            env={**os.environ, "REFLOW_HOME": str(home), "COLUMNS": "200"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:

        def answers(path: str, status: int) -> bool:
            assert proc.poll() is None, errors.read_text()
            got = get(url + path)
            return got is not None and got[0] == status

        wait_until(
            lambda: answers("/readyz", 200), timeout=120, every=0.1
        )  # the scheduler is ready
        assert answers("/healthz", 200)
        queued = reflow(home, "trigger", "one", "--date", "2024-01-01")
        assert queued.returncode == 0, queued.stderr
        scraped: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}

        def succeeded() -> bool:
            got = get(url + "/metrics")
            assert got is not None and got[0] == 200
            scraped.update(samples(got[1]))
            success = ("reflow_runs", frozenset({("pipeline", "one"), ("state", "success")}))
            return scraped.get(success) == 1

        # The run succeeds, as the metrics say.
        wait_until(succeeded, timeout=120, every=0.1)
        assert scraped[("reflow_launches_total", frozenset({("pipeline", "one")}))] == 2
        assert scraped[("reflow_scheduler_tick_duration_seconds_count", frozenset())] > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, errors.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"metrics on {url}/metrics" in errors.read_text()
    assert get(url + "/healthz") is None  # the server stopped with the scheduler


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_bad_metrics_port_is_one_line(home: Path) -> None:
    line = _one_line_error(reflow(home, "scheduler", "--metrics-port", "-1"))
    assert "--metrics-port" in line
    line = _one_line_error(reflow(home, "scheduler", "--metrics-host", "127.0.0.1"))
    assert line == "error: --metrics-host needs --metrics-port"


def test_a_metrics_port_in_use_is_one_line_and_starts_nothing(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_line_error(reflow(home, "scheduler", "--metrics-port", str(port)))
    assert line.startswith(f"error: cannot serve metrics on 127.0.0.1:{port}: ")
    assert "in use" in line
    assert schedulers(home) == 0
