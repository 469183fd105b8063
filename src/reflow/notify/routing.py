"""Which channels hear of an outbox entry, and as which event: a pure decision.

An entry is one state change; it may answer several events (a run that failed by timing
out is both ``run_failed`` and ``run_timed_out``). A channel that wants more than one of
them gets one message, about the most specific: nobody wants two pages for one timeout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reflow.core.config import NotifySettings
from reflow.core.notify import SCHEDULER_EVENTS, Channel, Event, Rule

# Most specific first: the event a channel is told about when it wants several.
_SPECIFIC = (
    Event.RUN_TIMED_OUT,
    Event.RUN_RECOVERED,
    Event.TASK_TIMED_OUT,
    Event.RUN_FAILED,
    Event.RUN_SUCCEEDED,
    Event.TASK_FAILED,
    Event.TRY_RETRYING,
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Tell ``channel`` about ``event``; ``error`` when the channel cannot be used (then
    the delivery is recorded as failed at once, so that the mistake is visible)."""

    event: Event
    channel: str
    error: str | None = None


def events_of(event: str, context: Mapping[str, Any]) -> list[Event]:
    """Every event one outbox entry answers."""
    found = [Event(event)]
    if event == Event.RUN_FAILED and context.get("timed_out"):
        found.append(Event.RUN_TIMED_OUT)
    elif event == Event.RUN_SUCCEEDED and context.get("recovered"):
        found.append(Event.RUN_RECOVERED)
    elif event in (Event.TASK_FAILED, Event.TRY_RETRYING) and context.get("reason") == "timed_out":
        found.append(Event.TASK_TIMED_OUT)
    return found


def route(
    event: str,
    pipeline: str | None,
    context: Mapping[str, Any],
    pipeline_rules: Iterable[Rule],
    settings: NotifySettings,
) -> list[Delivery]:
    """The deliveries of one entry: the pipeline file's rules (``pipeline_rules``) and
    those of ``reflow.toml`` that cover the pipeline (scheduler events: those with no
    ``pipelines``)."""
    answers = events_of(event, context)
    wanted: dict[str, tuple[set[Event], Channel]] = {}

    def want(events: Iterable[Event], channel: Channel) -> None:
        hits = set(events) & set(answers)
        if hits:
            known, first = wanted.get(channel.name, (set(), channel))
            wanted[channel.name] = (known | hits, first if first.kind else channel)

    if Event(event) not in SCHEDULER_EVENTS:
        for rule in pipeline_rules:
            for channel in rule.channels:
                want(rule.events, channel)
    for toml_rule in settings.rules:
        covers = (
            toml_rule.pipelines is None
            if pipeline is None
            else toml_rule.pipelines is None or pipeline in toml_rule.pipelines
        )
        if covers:
            for name in toml_rule.channels:
                want(toml_rule.events, Channel(name))
    out = []
    for name, (hits, channel) in wanted.items():
        chosen = next((e for e in _SPECIFIC if e in hits), None) or next(iter(sorted(hits)))
        out.append(Delivery(chosen, name, _unusable(channel, settings)))
    return sorted(out, key=lambda d: d.channel)


def _unusable(channel: Channel, settings: NotifySettings) -> str | None:
    configured = settings.channels.get(channel.name)
    if configured is None:
        return f"no channel {channel.name!r} in [reflow.notify.channels] of reflow.toml"
    if channel.kind is not None and configured.kind != channel.kind:
        return (
            f"channel {channel.name!r} is a {configured.kind} channel; "
            f"the pipeline asks for {channel.kind}"
        )
    return None
