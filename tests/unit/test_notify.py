"""Notification rules, routing and messages: pure, without a database or a network."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from reflow.core.config import (
    MessageTemplate,
    NotifyRule,
    NotifySettings,
    SlackChannel,
    WebhookChannel,
    load_settings,
)
from reflow.core.errors import ConfigError, PipelineError
from reflow.core.notify import (
    Event,
    on,
    on_failure,
    on_retry,
    on_timeout,
    rules_of,
    slack,
    webhook,
)
from reflow.notify import channels, messages
from reflow.notify.routing import events_of, route

SETTINGS = NotifySettings(
    ui_url="https://reflow.example.com/",
    channels={
        "hook": WebhookChannel(kind="webhook", url="http://127.0.0.1:9/x"),
        "#etl": SlackChannel(kind="slack", url_env="SLACK_URL"),
    },
    rules=(
        NotifyRule(events=(Event.SCHEDULER_LOST,), channels=("hook",)),
        NotifyRule(events=(Event.RUN_FAILED,), channels=("#etl",), pipelines=("billing",)),
    ),
)


def test_a_timeout_is_one_message_about_the_most_specific_event() -> None:
    rules = [on_failure("hook"), on_timeout("hook"), on_failure(slack("#etl"))]
    context = {"timed_out": True}
    assert events_of("run_failed", context) == [Event.RUN_FAILED, Event.RUN_TIMED_OUT]
    found = route("run_failed", "etl", context, rules, SETTINGS)
    assert [(d.channel, d.event, d.error) for d in found] == [
        ("#etl", Event.RUN_FAILED, None),
        ("hook", Event.RUN_TIMED_OUT, None),
    ]


def test_rules_of_reflow_toml_cover_their_pipelines_and_the_scheduler() -> None:
    assert [d.channel for d in route("run_failed", "billing", {}, (), SETTINGS)] == ["#etl"]
    assert route("run_failed", "other", {}, (), SETTINGS) == []
    lost = route("scheduler_lost", None, {}, [on_failure("hook")], SETTINGS)
    assert [(d.channel, d.event) for d in lost] == [("hook", Event.SCHEDULER_LOST)]


def test_a_retry_that_timed_out_and_nothing_wanted() -> None:
    timed = {"reason": "timed_out"}
    assert route("try_retrying", "p", timed, [on_timeout("hook")], SETTINGS)[0].event == (
        Event.TASK_TIMED_OUT
    )
    assert route("run_succeeded", "p", {}, [on_retry("hook")], SETTINGS) == []


def test_unusable_channels_are_routed_as_failures_that_say_why() -> None:
    (missing,) = route("run_failed", "p", {}, [on_failure("nowhere")], SETTINGS)
    assert missing.error == "no channel 'nowhere' in [reflow.notify.channels] of reflow.toml"
    (wrong,) = route("run_failed", "p", {}, [on_failure(slack("hook"))], SETTINGS)
    assert wrong.error == "channel 'hook' is a webhook channel; the pipeline asks for slack"


def test_pipeline_rules_are_checked_when_the_file_loads() -> None:
    with pytest.raises(PipelineError, match="unknown notification event 'on_fire'"):
        on(["on_fire"], "hook")
    with pytest.raises(PipelineError, match="names no channel"):
        on_failure()
    with pytest.raises(PipelineError, match="not 'hook'"):
        rules_of(["hook"])  # type: ignore[list-item]
    with pytest.raises(PipelineError, match=r"reflow\.toml"):
        rules_of([on(["scheduler_lost"], webhook("hook"))])
    with pytest.raises(PipelineError, match="non-empty string"):
        slack("  ")


def test_bad_notify_configuration_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "reflow.toml").write_text(
        '[reflow.notify.channels.hook]\nkind = "webhook"\nurl = "http://x"\n'
        '[[reflow.notify.rules]]\nevents = ["run_failed"]\nchannels = ["pager"]\n'
    )
    with pytest.raises(ConfigError, match=r"names no channel of \[reflow\.notify\.channels\]"):
        load_settings(tmp_path)
    (tmp_path / "reflow.toml").write_text('[reflow.notify.channels.hook]\nkind = "pager"\n')
    with pytest.raises(ConfigError, match=r"configuration: notify\.channels\.hook"):
        load_settings(tmp_path)
    (tmp_path / "reflow.toml").write_text(
        '[reflow.notify.channels.hook]\nkind = "webhook"\nurl = "http://x"\nurl_env = "X"\n'
    )
    with pytest.raises(ConfigError, match="exactly one of url and url_env"):
        load_settings(tmp_path)


def test_messages_are_templated_with_the_run_context_and_overridable() -> None:
    context = {
        "event": "task_failed",
        "pipeline": "events",
        "run_id": "scheduled__2024-01-03",
        "logical_date": "2024-01-03T00:00:00+00:00",
        "task": "load",
        "try_number": 2,
        "reason": "error",
        "detail": "exit code 3",
    }
    message = messages.render("task_failed", context, SETTINGS, log_tail="line 1\nline 2")
    assert message.title == "events.load 2024-01-03 failed"
    assert message.text == (
        "load in run scheduled__2024-01-03 failed for good after 2 tries (error): exit code 3."
    )
    assert message.url == ("https://reflow.example.com/pipelines/events/runs/scheduled__2024-01-03")
    custom = NotifySettings(
        ui_url=SETTINGS.ui_url,
        templates={Event.TASK_FAILED: MessageTemplate(title="{{ pipeline | upper }} down")},
    )
    assert messages.render("task_failed", context, custom).title == "EVENTS down"
    broken = NotifySettings(templates={Event.RUN_FAILED: MessageTemplate(text="{% if %}")})
    with pytest.raises(ConfigError, match=r"templates.run_failed\] text"):
        messages.check_templates(broken)


def test_webhook_signature_and_slack_blocks() -> None:
    body = b'{"event": "run_failed"}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert channels.signature("k", "1700000000", body) == "sha256=" + expected
    message = messages.render(
        "run_failed",
        {"pipeline": "p", "run_id": "r", "logical_date": "2024-01-03T06:00:00+00:00"},
        SETTINGS,
        log_tail="<b>",
    )
    blocks = channels.slack_body(message)["blocks"]
    assert [b["type"] for b in blocks] == ["header", "section", "section", "context", "actions"]
    assert "&lt;b&gt;" in blocks[2]["text"]["text"]
    assert "2024-01-03 06:00" in blocks[3]["elements"][0]["text"]
