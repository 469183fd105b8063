"""Notifications as a pipeline file declares them: which events go to which channels.

A pipeline says ``notify=[on_failure(slack("#etl")), on_deadline_missed("oncall")]``;
``reflow.toml`` names the channels (``[reflow.notify.channels."#etl"]``, with their URLs
and credentials read from environment variables) and may add rules of its own for every
pipeline. Nothing here sends anything: see ``reflow.notify``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from reflow.core.errors import PipelineError


class Event(StrEnum):
    """What a notification is about."""

    RUN_FAILED = "run_failed"
    RUN_SUCCEEDED = "run_succeeded"
    # A run of a date succeeded and the date's previous finished attempt had failed.
    RUN_RECOVERED = "run_recovered"
    RUN_TIMED_OUT = "run_timed_out"
    TRY_RETRYING = "try_retrying"
    TASK_FAILED = "task_failed"
    TASK_TIMED_OUT = "task_timed_out"
    BACKFILL_FINISHED = "backfill_finished"
    DEADLINE_MISSED = "deadline_missed"
    SCHEDULER_STARTED = "scheduler_started"
    SCHEDULER_LOST = "scheduler_lost"


# Events about no pipeline: only reflow.toml's rules can route them.
SCHEDULER_EVENTS = frozenset({Event.SCHEDULER_STARTED, Event.SCHEDULER_LOST})
CHANNEL_KINDS = ("webhook", "slack", "email")


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel named in ``reflow.toml``; ``kind`` when the pipeline file said which kind
    it expects (``slack("#etl")``), checked when the notification is routed."""

    name: str
    kind: str | None = None

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Rule:
    """Send ``events`` to ``channels``."""

    events: frozenset[Event]
    channels: tuple[Channel, ...]


def webhook(name: str) -> Channel:
    """A generic webhook channel of ``reflow.toml`` (JSON body, HMAC-SHA256 signature)."""
    return Channel(_name(name), "webhook")


def slack(name: str) -> Channel:
    """A Slack incoming-webhook channel of ``reflow.toml``."""
    return Channel(_name(name), "slack")


def email(name: str) -> Channel:
    """An e-mail channel of ``reflow.toml`` (its recipients and SMTP server)."""
    return Channel(_name(name), "email")


def on(events: Iterable[Event | str], *channels: Channel | str) -> Rule:
    """Send each of ``events`` (names of :class:`Event`) to ``channels``."""
    wanted = []
    for e in [events] if isinstance(events, str) else events:
        try:
            wanted.append(Event(e))
        except ValueError:
            known = ", ".join(x.value for x in Event)
            raise PipelineError(f"unknown notification event {e!r} (events: {known})") from None
    if not wanted:
        raise PipelineError("a notification rule needs at least one event")
    if not channels:
        raise PipelineError(f"notification rule for {', '.join(wanted)} names no channel")
    return Rule(
        frozenset(wanted),
        tuple(c if isinstance(c, Channel) else Channel(_name(c)) for c in channels),
    )


def on_failure(*channels: Channel | str) -> Rule:
    """A run failed (its tasks failed for good, or it timed out)."""
    return on([Event.RUN_FAILED], *channels)


def on_success(*channels: Channel | str) -> Rule:
    """A run succeeded."""
    return on([Event.RUN_SUCCEEDED], *channels)


def on_recovery(*channels: Channel | str) -> Rule:
    """A date failed, then a later attempt of it succeeded."""
    return on([Event.RUN_RECOVERED], *channels)


def on_retry(*channels: Channel | str) -> Rule:
    """A try failed and its task instance will try again."""
    return on([Event.TRY_RETRYING], *channels)


def on_task_failure(*channels: Channel | str) -> Rule:
    """A task instance failed for good."""
    return on([Event.TASK_FAILED], *channels)


def on_timeout(*channels: Channel | str) -> Rule:
    """A try passed its task's timeout, or a run its run_timeout."""
    return on([Event.TASK_TIMED_OUT, Event.RUN_TIMED_OUT], *channels)


def on_deadline_missed(*channels: Channel | str) -> Rule:
    """A date (or a task of it) had not succeeded by its deadline."""
    return on([Event.DEADLINE_MISSED], *channels)


def on_backfill_finished(*channels: Channel | str) -> Rule:
    """A backfill of the pipeline ended (succeeded, failed or cancelled), with its counts."""
    return on([Event.BACKFILL_FINISHED], *channels)


def rules_of(value: Iterable[Rule] | Rule | None) -> tuple[Rule, ...]:
    """A pipeline's ``notify=`` argument, checked."""
    if value is None:
        return ()
    found = (value,) if isinstance(value, Rule) else tuple(value)
    for rule in found:
        if not isinstance(rule, Rule):
            raise PipelineError(
                f"notify takes rules such as on_failure(slack('#etl')), not {rule!r}"
            )
        if SCHEDULER_EVENTS & rule.events:
            raise PipelineError(
                "scheduler events are not about one pipeline: route them in reflow.toml "
                "([[reflow.notify.rules]])"
            )
    return found


def _name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise PipelineError(f"a notification channel is named by a non-empty string, not {name!r}")
    return name.strip()
