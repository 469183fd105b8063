"""The pages, through the app (no browser): login, rendering, forms, CSRF, masking.
SQLite only: the API tests cover both backends, the pages use the same read models."""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from httpx import Response

from reflow.services import accounts
from reflow.services import runs as run_service
from reflow.store import pauses

from .conftest import Env, TestClient, csrf_of, make_app, write_daily

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
PASSWORD = "correct horse battery"


@dataclass
class Browser:
    client: TestClient
    env: Env

    def page(self, path: str, status: int = 200) -> str:
        response = self.client.get(path)
        assert response.status_code == status, response.text[:2000]
        return response.text

    def submit(self, path: str, data: dict, page: str | None = None, **kw: Any) -> Response:
        """POST a form with the CSRF token of ``page`` (default: the form's own page)."""
        token = csrf_of(self.page(page or path))
        return self.client.post(path, data={**data, "csrf_token": token}, **kw)


def login(client: TestClient, user: str = "alice", password: str = PASSWORD) -> Response:
    token = csrf_of(client.get("/login").text)
    return client.post(
        "/login",
        data={"username": user, "password": password, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )


@pytest.fixture
def browser(env: Env) -> Iterator[Browser]:
    write_daily(env)
    accounts.create_user(env.project, "alice", PASSWORD)
    with TestClient(make_app(env)) as client:
        response = login(client)
        assert response.status_code == 303
        yield Browser(client, env)


def test_pages_need_a_login_and_a_wrong_password_is_refused(env: Env) -> None:
    write_daily(env)
    accounts.create_user(env.project, "alice", PASSWORD)
    with TestClient(make_app(env)) as client:
        for path in ("/", "/pipelines/daily", "/backfills", "/api"):
            response = client.get(path, follow_redirects=False)
            assert response.status_code == 303
            assert response.headers["location"].startswith("/login?next=")
        bad = login(client, password="wrong password")
        assert bad.status_code == 401 and "Wrong user name or password" in bad.text
        nobody = login(client, user="mallory")
        assert nobody.status_code == 401
        ok = login(client)
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        assert "alice" in client.get("/").text
        # The login form itself is CSRF-protected, and `next` never leaves the site.
        refused = client.post("/login", data={"username": "alice", "password": PASSWORD})
        assert refused.status_code == 403
        token = csrf_of(client.get("/login").text)
        away = client.post(
            "/login",
            data={
                "username": "alice",
                "password": PASSWORD,
                "csrf_token": token,
                "next": "//evil.example/",
            },
            follow_redirects=False,
        )
        assert away.headers["location"] == "/"
        # Logging out ends the session.
        token = csrf_of(client.get("/").text)
        client.post("/logout", data={"csrf_token": token})
        assert client.get("/", follow_redirects=False).status_code == 303


def test_every_page_renders_and_secrets_never_reach_the_html(browser: Browser) -> None:
    secret = "very-secret-api-key"
    created = browser.env.trigger("daily", ["2024-01-01"], {"api_key": secret, "mode": "full"})
    browser.env.drive(browser.env.runs_done(created))
    overview = browser.page("/")
    assert "daily" in overview and "@daily" in overview
    grid = browser.page("/pipelines/daily")
    assert 'data-task="a"' in grid and "s-success" in grid
    run = browser.page(f"/pipelines/daily/runs/{created[0]}")
    for page in (
        grid,
        run,
        browser.page("/pipelines/daily/runs"),
        browser.page("/pipelines/daily/trigger"),
    ):
        assert secret not in page and "default-key-0000" not in page and "hunter2" not in page
    assert "***" in run and "full" in run
    assert "Gantt" in run and "<polyline" in run
    assert browser.page("/pipelines/nope", status=404).count("unknown pipeline") == 1
    assert "/api/v1/pipelines/{name}/backfills/plan" in browser.page("/api")
    assert browser.client.get("/static/app.js").status_code == 200


def test_changes_without_the_csrf_token_are_refused(browser: Browser) -> None:
    created = browser.env.trigger("daily", ["2024-01-01"])
    response = browser.client.post(
        f"/pipelines/daily/runs/{created[0]}/mark", data={"state": "success"}
    )
    assert response.status_code == 403 and "CSRF" in response.text
    response = browser.client.post(
        f"/pipelines/daily/runs/{created[0]}/mark",
        data={"state": "success", "csrf_token": "forged"},
    )
    assert response.status_code == 403
    assert browser.env.run(created[0]).state == "queued"


def test_the_trigger_form_checks_values_and_queues_a_run(browser: Browser) -> None:
    form = browser.page("/pipelines/daily/trigger")
    assert 'name="conf.rows"' in form and 'min="0"' in form and 'type="number"' in form
    assert '<select id="f-mode"' in form and 'type="password"' in form
    bad = browser.submit(
        "/pipelines/daily/trigger", {"date": "2024-01-03", "conf.rows": "-5", "conf.mode": '"full"'}
    )
    assert bad.status_code == 422
    assert "greater than or equal to 0" in bad.text
    assert 'value="-5"' in bad.text  # what was typed is kept
    not_a_number = browser.submit("/pipelines/daily/trigger", {"conf.rows": "many"})
    assert "must be a whole number" in not_a_number.text
    ok = browser.submit(
        "/pipelines/daily/trigger",
        {"date": "2024-01-03", "conf.rows": "7", "conf.fail": ["false", "true"]},
        follow_redirects=False,
    )
    assert ok.status_code == 303
    run_page = browser.page(ok.headers["location"])
    assert "Queued run" in run_page
    (run,) = run_service.list_runs(browser.env.project, "daily")
    assert run.conf["rows"] == 7 and run.conf["fail"] is True


def test_a_backfill_is_planned_then_started_then_paused_from_the_pages(browser: Browser) -> None:
    form = {
        "start": "2024-01-01",
        "end": "2024-01-03",
        "reprocess": "missing",
        "max_active_runs": "2",
        "order": "oldest",
        "conf.rows": "3",
    }
    plan = browser.submit("/pipelines/daily/backfill", form)
    assert plan.status_code == 200
    assert "3 to create" in plan.text and 'id="start"' in plan.text
    assert run_service.list_runs(browser.env.project) == []  # planning writes nothing
    bad = browser.submit("/pipelines/daily/backfill", {**form, "end": "2023-12-01"})
    assert bad.status_code == 422 and "before" in bad.text
    token = csrf_of(plan.text)
    request_json = plan.text.split('name="request" value="', 1)[1].split('"', 1)[0]
    started = browser.client.post(
        "/pipelines/daily/backfill/start",
        data={"csrf_token": token, "request": html.unescape(request_json)},
        follow_redirects=False,
    )
    assert started.status_code == 303 and started.headers["location"] == "/backfills/1"
    detail = browser.page("/backfills/1")
    assert "Backfill 1 started: 3 runs created" in detail and "0/3" in detail
    listing = browser.page("/backfills")
    paused = browser.client.post(
        "/backfills/1/pause",
        data={"csrf_token": csrf_of(listing), "next": "/backfills"},
        follow_redirects=False,
    )
    assert paused.headers["location"] == "/backfills"
    assert "Backfill 1 paused" in browser.page("/backfills")
    cancel = browser.submit("/backfills/1/cancel", {}, page="/backfills/1")
    assert "Backfill 1 cancelled: 3 runs cancelled" in cancel.text


def test_history_actions_from_the_run_page(browser: Browser) -> None:
    (run,) = browser.env.trigger("daily", ["2024-01-01"])
    browser.env.drive(browser.env.runs_done([run]))
    page = f"/pipelines/daily/runs/{run}"
    cleared = browser.submit(f"{page}/clear", {"tasks": "c"}, page=page)
    assert "Cleared 1 task instances" in cleared.text
    assert browser.env.run(run).attempt == 2
    marked = browser.submit(f"{page}/mark", {"state": "failed"}, page=page)
    assert f"Run {run} is now failed" in marked.text
    deleted = browser.submit(f"{page}/delete", {}, page=page)
    assert "Deleted 1 run" in deleted.text
    browser.page(page, status=404)


def test_the_page_of_a_pipeline_whose_file_is_gone_shows_its_history(browser: Browser) -> None:
    (run,) = browser.env.trigger("daily", ["2024-01-01"])
    browser.env.drive(browser.env.runs_done([run]))
    (browser.env.settings.pipelines_path / "daily.py").unlink()
    browser.client.app.state.projects.refresh()  # type: ignore[attr-defined]
    page = browser.page("/pipelines/daily")
    assert "its file is gone" in page and 'data-task="c"' in page and "/trigger" not in page
    assert "(no file)" in browser.page("/")
    assert "Gantt" in browser.page(f"/pipelines/daily/runs/{run}")


def test_the_pipeline_page_pauses_and_unpauses_as_the_signed_in_user(browser: Browser) -> None:
    page = browser.page("/pipelines/daily")
    assert 'action="/pipelines/daily/pause"' in page and "Unpause" not in page
    refused = browser.client.post("/pipelines/daily/pause", data={})
    assert refused.status_code == 403  # no CSRF token: nothing changes
    done = browser.submit("/pipelines/daily/pause", {}, page="/pipelines/daily")
    assert done.status_code == 200 and "Paused daily" in done.text
    assert 'action="/pipelines/daily/unpause"' in done.text
    assert "paused" in browser.page("/")
    browser.submit("/pipelines/daily/unpause", {}, page="/pipelines/daily")
    with browser.env.db.read() as conn:
        changes = pauses.history(conn, "daily")
    assert [(c.action, c.actor) for c in changes] == [
        ("paused", "alice (web)"),
        ("unpaused", "alice (web)"),
    ]
