"""`reflow notifications …` as users run it: a test message to a real receiver, and bad
input answered in one line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..peers import Receiver
from .test_cli import reflow


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    yield receiver
    receiver.stop()


def _project(tmp_path: Path, hook: Receiver) -> Path:
    home = tmp_path / "project"
    (home / "pipelines").mkdir(parents=True)
    port = hook._server.server_address[1]
    (home / "reflow.toml").write_text(
        "[reflow.notify.channels.hook]\n"
        'kind = "webhook"\n'
        f'url = "http://127.0.0.1:{port}/hook"\n'
        'secret_env = "HOOK_SECRET"\n'
        '[reflow.notify.channels."#etl"]\n'
        'kind = "slack"\n'
        'url_env = "ETL_SLACK_URL"\n'
    )
    return home


def test_a_test_message_reaches_the_channel(tmp_path: Path, hook: Receiver) -> None:
    home = _project(tmp_path, hook)
    os.environ["HOOK_SECRET"] = "s"
    try:
        done = reflow(home, "notifications", "test", "hook")
    finally:
        del os.environ["HOOK_SECRET"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Sent to hook: HTTP 200"
    (received,) = hook.received
    assert received.json()["title"] == "reflow test notification"
    assert received.headers["X-Reflow-Signature"].startswith("sha256=")


def test_bad_input_is_one_line(tmp_path: Path, hook: Receiver) -> None:
    home = _project(tmp_path, hook)
    unset = reflow(home, "notifications", "test", "#etl")
    assert unset.returncode != 0
    assert unset.stderr.strip() == (
        "error: channel #etl (slack): environment variable ETL_SLACK_URL is not set"
    )
    for args, says in (
        (("test", "pager"), "no channel 'pager' in [reflow.notify.channels] (#etl, hook)"),
        (("list", "--state", "lost"), "unknown notification state 'lost'"),
        (("list", "--limit", "0"), "limit must be between 1 and 1000"),
        (("show", "12"), "no notification 12"),
        (("retry", "12"), "no notification 12"),
    ):
        done = reflow(home, "notifications", *args)
        assert done.returncode != 0 and says in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    empty = reflow(home, "notifications", "list")
    assert empty.returncode == 0
    assert "No notifications (channels: #etl (slack), hook (webhook))." in empty.stdout
    assert not hook.received
