"""Notifications in the API and on the run page: what was sent where and how each attempt
went, never the channel's URL or secret; a given-up one delivered again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reflow.core.config import NotifySettings, WebhookChannel
from reflow.services import accounts

from ..peers import Receiver
from .conftest import Api, Env, TestClient, make_app

SECRET_URL_TOKEN = "T0KEN-in-the-url"


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = Receiver(fail_first=1)
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def noted(env: Env, hook: Receiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    url = f"http://127.0.0.1:{hook._server.server_address[1]}/hook?key={SECRET_URL_TOKEN}"
    monkeypatch.setenv("HOOK_URL", url)
    notify = NotifySettings(
        channels={
            "hook": WebhookChannel(kind="webhook", url_env="HOOK_URL"),
            "later": WebhookChannel(kind="webhook", url_env="UNSET_URL_VARIABLE"),
        },
        retry_delay=0.2,
        max_retry_delay=0.2,
        max_attempts=2,
    )
    env = Env(env.home, env.settings.model_copy(update={"notify": notify}), env.db)
    env.write(
        "alerting",
        """
        from reflow import Pipeline, Shell, on_failure
        with Pipeline("alerting", notify=[on_failure("hook", "later")]):
            Shell("a", "exit 1")
        """,
    )
    token = accounts.create_token(env.project, "tests")
    with TestClient(make_app(env)) as client:
        yield Api(client, token, env)


def _settled(api: Api) -> bool:
    found = api.get("/notifications")["notifications"]
    return len(found) == 2 and all(n["state"] != "pending" for n in found)


def test_notifications_are_listed_shown_and_retried(noted: Api, hook: Receiver) -> None:
    (run,) = noted.env.trigger("alerting")
    noted.env.drive(lambda: _settled(noted), timeout=90)

    listing = noted.get("/notifications")
    by_channel = {n["channel"]: n for n in listing["notifications"]}
    sent, failed = by_channel["hook"], by_channel["later"]
    assert sent["state"] == "sent" and sent["attempts"] == 2 and sent["event"] == "run_failed"
    assert [a["ok"] for a in sent["attempt_log"]] == [False, True]
    assert "HTTP 500" in sent["attempt_log"][0]["result"]
    assert failed["state"] == "failed" and failed["attempts"] == 2
    assert "UNSET_URL_VARIABLE is not set" in failed["last_error"]
    assert listing["next_before"] is None
    assert noted.get(f"/notifications?run={run}")["notifications"] == listing["notifications"]
    assert noted.get("/notifications?state=failed")["notifications"] == [failed]
    assert noted.get(f"/notifications/{sent['id']}") == sent
    page = noted.get("/notifications?limit=1")
    assert len(page["notifications"]) == 1 and page["next_before"] is not None
    older = noted.get(f"/notifications?limit=1&before={page['next_before']}")
    assert older["notifications"][0]["id"] < page["notifications"][0]["id"]

    # The channel is named, never its URL (nor the token in it).
    assert SECRET_URL_TOKEN not in str(listing)
    run_id = noted.env.run(run).run_id
    with TestClient(make_app(noted.env, auth=False)) as pages:
        html = pages.get(f"/pipelines/alerting/runs/{run_id}").text
    assert "Notifications" in html and "UNSET_URL_VARIABLE is not set" in html
    assert SECRET_URL_TOKEN not in html

    # Bad input: one line, 4xx.
    assert "unknown notification state" in noted.get("/notifications?state=lost", 422)["detail"]
    assert noted.get("/notifications/999999", 404)["detail"] == "no notification 999999"
    refused = noted.post(f"/notifications/{sent['id']}/retry", status=422)
    assert "only a failed one is retried" in refused["detail"]

    # A given-up delivery, once its channel is fixed, goes out when retried.
    noted.client.app.state.projects.current.settings.notify.channels["later"] = WebhookChannel(
        kind="webhook", url_env="HOOK_URL"
    )
    again = noted.post(f"/notifications/{failed['id']}/retry")
    assert again["state"] == "pending"
