"""The web tier: the API and the pages over a real project (SQLite and PostgreSQL), with
the real scheduler driving runs; browser tests in headless Chromium."""

from __future__ import annotations

import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from reflow.services import accounts
from reflow.web.app import create_app
from tests.integration import conftest as integration
from tests.integration.conftest import Env, wait_until

with warnings.catch_warnings():  # Starlette deprecates httpx for its TestClient
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

# The `env` fixture: a project with its database, once per backend (SQLite, PostgreSQL).
env = integration.env

SECRET_KEY = "test-secret-key-" + "x" * 32

DAILY = """
from reflow import Param, Pipeline, Shell
with Pipeline("daily", schedule="@daily", start_date="2024-01-01", max_active_runs=3,
              params={"mode": Param("normal", choices=("normal", "full")),
                      "fail": False,
                      "rows": Param(10, minimum=0, description="rows expected"),
                      "api_key": Param("default-key-0000", secret=True)},
              defaults={"env": {"DB_PASSWORD": "hunter2-literal"}}):
    a = Shell("a", "echo mode {{ params.mode }} key {{ params.api_key }}",
              env={"KEY_COPY": "{{ params.api_key }}", "DAY": "{{ ds }}"})
    b = Shell("b", "[ {{ params.fail }} = false ] && echo rows {{ params.rows }}")
    c = Shell("c", "echo done with $DB_PASSWORD")
    a >> b >> c
"""


def write_daily(env: Env, source: str = DAILY) -> None:
    env.write("daily", source)


@dataclass
class Api:
    """A client for the app under test, authenticated with a Bearer token."""

    client: TestClient
    token: str
    env: Env

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = self.client.get("/api/v1" + path, headers=self.auth, **kwargs)
        assert response.status_code == status, response.text
        return response.json()

    def post(self, path: str, body: Any = None, status: int = 200, **kwargs: Any) -> Any:
        response = self.client.post("/api/v1" + path, json=body, headers=self.auth, **kwargs)
        assert response.status_code == status, response.text
        return response.json()

    def write(self, name: str, source: str) -> None:
        """Add a pipeline file and have the app read it now (not at its next refresh)."""
        self.env.write(name, source)
        self.client.app.state.projects.refresh()  # type: ignore[attr-defined]

    def drive(self, run_ids: list[int], timeout: float = 60) -> None:
        """Run the scheduler until these runs are finished."""
        self.env.drive(self.env.runs_done(run_ids), timeout=timeout)


def make_app(env: Env, auth: bool = True) -> Any:
    return create_app(env.project, auth=auth, secret_key=SECRET_KEY)


@pytest.fixture
def api(env: Env) -> Iterator[Api]:
    write_daily(env)
    token = accounts.create_token(env.project, "tests")
    with TestClient(make_app(env)) as client:
        yield Api(client, token, env)


def csrf_of(html: str) -> str:
    """The page's CSRF token; every form of the page must carry it."""
    found = set(re.findall(r'name="csrf_token" value="([^"]*)"', html))
    assert len(found) == 1 and "" not in found, f"CSRF fields of the page: {found}"
    return found.pop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A real Uvicorn server on 127.0.0.1:<free port> in a thread; stopped at teardown."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the web server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    wait_until(check, timeout=timeout, every=0.1)
