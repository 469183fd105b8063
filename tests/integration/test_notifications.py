"""Notifications through a real scheduler: outbox, routing, delivery with retries, to real
peers on loopback (HTTP receivers and an SMTP server with STARTTLS and login), on SQLite
and PostgreSQL."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reflow.core.config import (
    EmailChannel,
    NotifyRule,
    NotifySettings,
    SlackChannel,
    WebhookChannel,
)
from reflow.core.notify import Event
from reflow.core.states import RunState
from reflow.notify.channels import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from reflow.store import outbox

from ..peers import Mailbox, Receiver
from .conftest import Env, wait_until

SECRET = "hook-secret-123"
PARAM_SECRET = "tok-9f8e7d"


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = Receiver(fail_first=2)
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def chat() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    yield receiver
    receiver.stop()


def _notifying(env: Env, **notify: Any) -> Env:
    settings = env.settings.model_copy(update={"notify": NotifySettings(**notify)})
    return Env(env.home, settings, env.db)


def _url(receiver: Receiver) -> str:
    return f"http://127.0.0.1:{receiver._server.server_address[1]}/hook"


def _notifications(env: Env, **filters: Any) -> list[Any]:
    with env.db.read() as conn:
        return outbox.listing(conn, limit=500, **filters)


def _drive_until_delivered(env: Env, run_pks: list[int], settled: int) -> None:
    """Run a scheduler until the runs ended and ``settled`` notifications are sent or
    given up."""

    def done() -> bool:
        finished = env.runs_done(run_pks)()
        states = [n.state for n in _notifications(env)]
        return finished and len(states) >= settled and "pending" not in states

    env.drive(done, timeout=120)


def test_failure_retry_and_timeout_reach_their_channels(
    env: Env, hook: Receiver, chat: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    monkeypatch.setenv("CHAT_URL", _url(chat))
    env = _notifying(
        env,
        ui_url="http://127.0.0.1:8080",
        channels={
            "hook": WebhookChannel(kind="webhook", url=_url(hook), secret_env="HOOK_SECRET"),
            "#etl": SlackChannel(kind="slack", url_env="CHAT_URL"),
        },
        retry_delay=0.2,
        max_retry_delay=0.5,
    )
    env.write(
        "alerts",
        f"""
        from reflow import Param, Pipeline, Shell, on_failure, on_retry, on_task_failure, slack
        with Pipeline("alerts", params={{"token": Param({PARAM_SECRET!r}, secret=True)}},
                      notify=[on_failure("hook"), on_retry("hook"),
                              on_task_failure(slack("#etl"))]):
            Shell("load", "echo using {{{{ params.token }}}}; echo boom; exit 3",
                  retries=1, retry_delay=0)
        """,
    )
    (run,) = env.trigger("alerts")
    _drive_until_delivered(env, [run], settled=3)
    assert env.run(run).state == RunState.FAILED

    # The webhook: one retry notice and one run failure, each signed, after two refusals.
    events = [r.json()["event"] for r in hook.received]
    assert sorted(events) == ["run_failed", "try_retrying"]
    for r in hook.received:
        expected = signature(SECRET, r.headers[TIMESTAMP_HEADER], r.body)
        assert hmac.compare_digest(r.headers[SIGNATURE_HEADER], expected)
    failed = next(r.json() for r in hook.received if r.json()["event"] == "run_failed")
    assert failed["title"].startswith("alerts ")
    assert "load (error)" in failed["text"]
    assert failed["url"].startswith("http://127.0.0.1:8080/pipelines/alerts/runs/")
    assert hook.refused == 2

    # Slack: the task's failure for good, as Block Kit, with the log tail masked.
    (slack_message,) = [r.json() for r in chat.received]
    assert slack_message["text"].endswith("failed")
    kinds = [b["type"] for b in slack_message["blocks"]]
    assert kinds[0] == "header" and "actions" in kinds
    raw = chat.received[0].body.decode()
    assert "boom" in raw and PARAM_SECRET not in raw

    # Every attempt is recorded: the first two deliveries to the hook were refused.
    notes = _notifications(env, pipeline="alerts")
    assert {n.state for n in notes} == {"sent"}
    assert sum(n.attempts for n in notes if n.channel == "hook") == 4
    with env.db.read() as conn:
        tried = outbox.attempts(conn, [n.id for n in notes])
    refusals = [a for a in tried if not a.ok]
    assert len(refusals) == 2 and all("HTTP 500" in (a.result or "") for a in refusals)
    with env.db.read() as conn:
        assert outbox.backlog(conn) == 0


def test_recovery_success_and_unconfigured_channels(env: Env, hook: Receiver) -> None:
    hook.fail_first = 0
    env = _notifying(env, channels={"hook": WebhookChannel(kind="webhook", url=_url(hook))})
    flag = env.home / "fixed"
    env.write(
        "flaky",
        f"""
        from reflow import Pipeline, Shell, on_failure, on_recovery, slack
        with Pipeline("flaky", notify=[on_failure("hook"), on_recovery("hook"),
                                       on_failure(slack("nowhere"))]):
            Shell("a", "test -e {flag}")
        """,
    )
    (run,) = env.trigger("flaky", ["2024-01-03"])
    _drive_until_delivered(env, [run], settled=2)
    assert [r.json()["event"] for r in hook.received] == ["run_failed"]
    (unusable,) = _notifications(env, state="failed")
    assert unusable.channel == "nowhere" and "no channel 'nowhere'" in (unusable.last_error or "")

    # The same date again after the fix: a recovery, not a plain success.
    flag.touch()
    from reflow.services import history as history_service

    history_service.clear(env.project, "flaky", run=env.run(run).run_id)
    _drive_until_delivered(env, [run], settled=3)
    assert [r.json()["event"] for r in hook.received] == ["run_failed", "run_recovered"]


def test_email_over_starttls_with_login(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = Mailbox(tmp_path)
    try:
        monkeypatch.setenv("SMTP_USER", "reflow")
        monkeypatch.setenv("SMTP_PASSWORD", "s3cret")
        env = _notifying(
            env,
            channels={
                "oncall": EmailChannel(
                    kind="email",
                    to=("oncall@example.com",),
                    sender="reflow@example.com",
                    host="127.0.0.1",
                    port=mailbox.port,
                    username_env="SMTP_USER",
                    password_env="SMTP_PASSWORD",
                    ca_file=mailbox.ca_file,
                )
            },
        )
        env.write(
            "mailed",
            """
            from reflow import Pipeline, Shell, email, on_task_failure
            with Pipeline("mailed", notify=[on_task_failure(email("oncall"))]):
                Shell("a", "echo the input is missing; exit 1")
            """,
        )
        (run,) = env.trigger("mailed")
        _drive_until_delivered(env, [run], settled=1)
        wait_until(lambda: len(mailbox.messages) == 1, timeout=30)
        (mail,) = mailbox.messages
        assert mail["Subject"].startswith("[reflow] mailed.a ")
        assert mail["To"] == "oncall@example.com"
        assert "the input is missing" in mail.get_payload()
        assert mailbox.logins == ["reflow"]
    finally:
        mailbox.stop()


def test_scheduler_events_go_through_the_rules_of_reflow_toml(env: Env, hook: Receiver) -> None:
    hook.fail_first = 0
    env = _notifying(
        env,
        channels={"hook": WebhookChannel(kind="webhook", url=_url(hook))},
        rules=(NotifyRule(events=(Event.SCHEDULER_STARTED,), channels=("hook",)),),
    )
    sched = env.scheduler()
    stop = threading.Event()
    worker = threading.Thread(target=sched.run, args=(stop,), kwargs={"idle_wait": 0.05})
    worker.start()
    try:
        wait_until(lambda: len(hook.received) == 1, timeout=30)
    finally:
        stop.set()
        worker.join(30)
    body = hook.received[0].json()
    assert body["event"] == "scheduler_started"
    assert body["context"]["scheduler"] == sched.id


def test_a_backfill_ends_with_its_summary_and_a_timeout_says_so(env: Env, hook: Receiver) -> None:
    hook.fail_first = 0
    env = _notifying(env, channels={"hook": WebhookChannel(kind="webhook", url=_url(hook))})
    env.write(
        "nightly",
        """
        from reflow import Pipeline, Shell, on_backfill_finished, on_timeout
        with Pipeline("nightly", schedule="@daily", start_date="2024-01-01",
                      notify=[on_backfill_finished("hook"), on_timeout("hook")]):
            Shell("a", "if [ {{ ds }} = 2024-01-02 ]; then sleep 30; fi", timeout=1,
                  kill_grace=1)
        """,
    )
    from reflow.services import backfill as backfill_service

    plan = backfill_service.plan(env.project, "nightly", start="2024-01-01", end="2024-01-03")
    backfill_id = backfill_service.create(env.project, plan)

    def received() -> set[str]:
        return {r.json()["event"] for r in hook.received}

    env.drive(lambda: received() >= {"backfill_finished", "task_timed_out"}, timeout=120)
    by_event = {r.json()["event"]: r.json() for r in hook.received}
    summary = by_event["backfill_finished"]
    assert summary["context"]["backfill_id"] == backfill_id
    assert summary["context"]["runs"] == {"success": 2, "failed": 1}
    assert summary["text"] == (
        f"Backfill {backfill_id} of nightly (2024-01-01 to 2024-01-03) ended failed: "
        "1 failed, 2 success."
    )
    timed_out = by_event["task_timed_out"]
    assert timed_out["title"] == "nightly.a 2024-01-02 timed out"
    assert len(hook.received) == 2


def test_a_scheduler_found_dead_is_reported(env: Env, hook: Receiver) -> None:
    from datetime import timedelta

    from reflow.core.naming import utcnow
    from reflow.store import schedulers as store_schedulers

    hook.fail_first = 0
    env = _notifying(
        env,
        channels={"hook": WebhookChannel(kind="webhook", url=_url(hook))},
        rules=(NotifyRule(events=(Event.SCHEDULER_LOST,), channels=("hook",)),),
    )
    long_ago = utcnow() - timedelta(hours=1)
    silent = env.db.write(
        lambda c: store_schedulers.register_scheduler(c, "elsewhere", 4242, long_ago)
    )
    env.drive(lambda: len(hook.received) == 1, timeout=60)
    body = hook.received[0].json()
    assert body["event"] == "scheduler_lost"
    assert body["title"] == f"Scheduler {silent} on elsewhere was lost"
    assert "went silent" in body["text"]


def test_a_missed_deadline_is_notified_once(env: Env, hook: Receiver) -> None:
    from .test_deadlines import Clock, daemon, pause, write

    hook.fail_first = 0
    env = _notifying(env, channels={"hook": WebhookChannel(kind="webhook", url=_url(hook))})
    write(env, "asleep")
    source = env.settings.pipelines_path / "asleep.py"
    source.write_text(
        source.read_text()
        .replace("from reflow import Pipeline, Shell", "from reflow import *")
        .replace("deadline='06:00'", "deadline='06:00', notify=[on_deadline_missed('hook')]")
    )
    pause(env, "asleep")
    clock = Clock(2024, 1, 5, 12)
    sched = daemon(env, clock)
    sched.start()
    try:
        sched.tick()
        clock.at(2024, 1, 6, 6, 0, 1)
        for _ in range(5):
            sched.tick()
        assert sched.notifier is not None
        assert sched.notifier.run_once()  # routed and sent
        clock.at(2024, 1, 6, 7)
        sched.tick()
        assert not sched.notifier.run_once()  # nothing more
    finally:
        sched.stop()
    (body,) = [r.json() for r in hook.received]
    assert body["event"] == "deadline_missed"
    assert body["title"] == "asleep 2024-01-05 missed its deadline"
    assert body["text"] == (
        "asleep for 2024-01-05 had not succeeded by its deadline 2024-01-06 06:00 UTC (no run yet)."
    )
