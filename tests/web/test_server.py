"""`reflow web` and `reflow up` as a user runs them, in a subprocess: refusing to start
without credentials, serving, stopping cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from reflow.services import accounts
from reflow.services.project import Project

from .conftest import free_port

WEB = [sys.executable, "-m", "reflow.cli.web"]
PIPELINE = """
from reflow import Pipeline, Shell
with Pipeline("hello", schedule="@daily", start_date="2024-01-01"):
    Shell("say", "echo hello {{ ds }}")
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "hello.py").write_text(PIPELINE)
    (tmp_path / "reflow.toml").write_text("[reflow]\nparse_interval = 0.5\n")
    return tmp_path


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WEB, *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "no user or API token is configured"),
        (["--host", "0.0.0.0", "--no-auth"], "--no-auth is only allowed on a loopback address"),
        (["--host", "127.0.0.1"], "or pass --no-auth for local development"),
    ],
)
def test_the_server_refuses_to_start_without_a_credential(
    home: Path, args: list[str], message: str
) -> None:
    result = run(home, "web", "--port", str(free_port()), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


class Running:
    def __init__(self, home: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [*WEB, *args, "--port", str(self.port), "--quiet", "--home", str(home)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.url + "/api/v1/openapi.json", timeout=1)
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    out, err = self.proc.communicate()
                    raise AssertionError(f"server did not start: {out}{err}") from None
                time.sleep(0.1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def servers() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_web_requires_a_token_and_stops_on_sigterm(home: Path, servers: list[Running]) -> None:
    """On loopback, as every server a test starts (that other addresses need a credential
    to start at all is checked above, without listening on them)."""
    token = accounts.create_token(Project.open(home), "ci")
    server = Running(home, "web", "--host", "127.0.0.1")
    servers.append(server)
    assert httpx.get(server.url + "/api/v1/pipelines").status_code == 401
    auth = {"Authorization": f"Bearer {token}"}
    listing = httpx.get(server.url + "/api/v1/pipelines", headers=auth).json()
    assert [p["name"] for p in listing["pipelines"]] == ["hello"]
    assert httpx.get(server.url + "/", follow_redirects=False).status_code == 303
    key = home / ".reflow" / "web-secret.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert server.stop() == 0


def test_up_runs_the_scheduler_and_the_web_server_and_stops_both(
    home: Path, servers: list[Running]
) -> None:
    server = Running(home, "up", "--no-auth")
    servers.append(server)
    created = httpx.post(
        server.url + "/api/v1/pipelines/hello/runs", json={"dates": ["2024-01-02"]}
    )
    assert created.status_code == 201, created.text
    run_id = created.json()["runs"][0]["id"]
    deadline = time.monotonic() + 30
    while True:
        state = httpx.get(f"{server.url}/api/v1/pipelines/hello/runs/{run_id}").json()["run"]
        if state["state"] == "success":
            break
        assert time.monotonic() < deadline, f"the run did not finish: {state}"
        time.sleep(0.2)
    log = httpx.get(f"{server.url}/api/v1/pipelines/hello/runs/{run_id}/tasks/say/log").json()
    assert "hello 2024-01-02" in log["data"]
    children = psutil.Process(server.proc.pid).children(recursive=True)
    assert children, "no scheduler process"
    assert server.stop() == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
