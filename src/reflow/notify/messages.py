"""What a notification says: a title and a text per event, Jinja2 templates over the
notification's context, each replaceable in ``reflow.toml`` (``[reflow.notify.templates]``).

The context holds what the outbox entry recorded (pipeline, run_id, logical_date, task,
try_number, reason, detail, failed_tasks, backfill counts, deadline...), plus ``date``
(the logical date, short), ``url`` (the run's page when ``ui_url`` is set) and
``log_tail`` (the last lines of the try's log, secrets masked).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from reflow.core import formats
from reflow.core.config import NotifySettings
from reflow.core.errors import ConfigError
from reflow.core.notify import Event

_TASK = "{{ pipeline }}.{{ task }} {{ date }}"
_FAILED_TASKS = (
    "{% if failed_tasks %} Failed: {% for t in failed_tasks %}{{ t.task }}"
    " ({{ t.reason or t.state }}){{ ', ' if not loop.last }}{% endfor %}.{% endif %}"
)
DEFAULTS: dict[Event, tuple[str, str]] = {
    Event.RUN_FAILED: (
        "{{ pipeline }} {{ date }} failed",
        "Run {{ run_id }} of {{ pipeline }} for {{ date }} failed." + _FAILED_TASKS,
    ),
    Event.RUN_TIMED_OUT: (
        "{{ pipeline }} {{ date }} timed out",
        "Run {{ run_id }} of {{ pipeline }} for {{ date }} passed its run_timeout and failed."
        + _FAILED_TASKS,
    ),
    Event.RUN_SUCCEEDED: (
        "{{ pipeline }} {{ date }} succeeded",
        "Run {{ run_id }} of {{ pipeline }} for {{ date }} succeeded.",
    ),
    Event.RUN_RECOVERED: (
        "{{ pipeline }} {{ date }} recovered",
        "Run {{ run_id }} of {{ pipeline }} for {{ date }} succeeded; "
        "the date's previous attempt had failed.",
    ),
    Event.TRY_RETRYING: (
        _TASK + ": try {{ try_number }} failed, will retry",
        "Try {{ try_number }} of {{ task }} in run {{ run_id }} failed"
        "{% if reason %} ({{ reason }}){% endif %}{% if detail %}: {{ detail }}{% endif %}."
        "{% if next_try_at %} Next try at {{ next_try_at }}.{% endif %}",
    ),
    Event.TASK_FAILED: (
        _TASK + " failed",
        "{{ task }} in run {{ run_id }} failed for good after {{ try_number }} "
        "{{ 'try' if try_number == 1 else 'tries' }}{% if reason %} ({{ reason }}){% endif %}"
        "{% if detail %}: {{ detail }}{% endif %}.",
    ),
    Event.TASK_TIMED_OUT: (
        _TASK + " timed out",
        "Try {{ try_number }} of {{ task }} in run {{ run_id }} passed its timeout"
        "{% if event == 'try_retrying' %} and will be retried{% endif %}.",
    ),
    Event.BACKFILL_FINISHED: (
        "Backfill {{ backfill_id }} of {{ pipeline }} {{ backfill_state }}",
        "Backfill {{ backfill_id }} of {{ pipeline }} ({{ start[:10] }} to {{ end[:10] }}) "
        "ended {{ backfill_state }}: {% for state, n in runs | dictsort %}{{ n }} {{ state }}"
        "{{ ', ' if not loop.last }}{% else %}no runs{% endfor %}.",
    ),
    Event.DEADLINE_MISSED: (
        "{{ pipeline }}{% if task %}.{{ task }}{% endif %} {{ date }} missed its deadline",
        "{{ pipeline }}{% if task %}.{{ task }}{% endif %} for {{ date }} had not succeeded "
        "by its deadline {{ due or due_at }}{% if run_state %} (run {{ run_id }}: {{ run_state }})"
        "{% else %} (no run yet){% endif %}.",
    ),
    Event.SCHEDULER_STARTED: (
        "Scheduler {{ scheduler }} started on {{ host }}",
        "Scheduler {{ scheduler }} (pid {{ pid }}) started on {{ host }}.",
    ),
    Event.SCHEDULER_LOST: (
        "Scheduler {{ scheduler }} on {{ host }} was lost",
        "Scheduler {{ scheduler }} (pid {{ pid }}) on {{ host }} {{ how }}; "
        "its live tries are taken over by the others.",
    ),
}


@dataclass(frozen=True, slots=True)
class Message:
    """A rendered notification."""

    event: str
    title: str
    text: str
    url: str | None
    log_tail: str | None
    context: Mapping[str, Any]


@lru_cache(maxsize=1)
def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(autoescape=False, keep_trailing_newline=False)


def check_templates(settings: NotifySettings) -> None:
    """Compile the templates of ``reflow.toml``: a mistake is one clear line at start."""
    for event, template in settings.templates.items():
        for part in ("title", "text"):
            source = getattr(template, part)
            if source is None:
                continue
            try:
                _environment().from_string(source)
            except TemplateError as exc:
                where = f"[reflow.notify.templates.{event.value}] {part}"
                raise ConfigError(f"{where}: {exc}") from None


def render(
    event: str,
    context: Mapping[str, Any],
    settings: NotifySettings,
    log_tail: str | None = None,
) -> Message:
    """The message of one notification."""
    values = dict(context)
    values["date"] = short_date(values.get("logical_date"))
    values["url"] = url = link(settings.ui_url, values)
    values["log_tail"] = log_tail
    default_title, default_text = DEFAULTS[Event(event)]
    custom = settings.templates.get(Event(event))
    title = _render((custom.title if custom else None) or default_title, values)
    text = _render((custom.text if custom else None) or default_text, values)
    return Message(event, title, text, url, log_tail, values)


def short_date(value: str | None) -> str:
    """``2024-01-03`` for a midnight, else ``2024-01-03 13:00`` (UTC)."""
    return formats.day(datetime.fromisoformat(value)) if value else ""


def link(ui_url: str | None, context: Mapping[str, Any]) -> str | None:
    """The UI page of what the notification is about."""
    if not ui_url:
        return None
    base = ui_url.rstrip("/")
    pipeline = context.get("pipeline")
    if pipeline and context.get("run_id"):
        return f"{base}/pipelines/{quote(pipeline)}/runs/{quote(str(context['run_id']), safe='')}"
    if context.get("backfill_id"):
        return f"{base}/backfills/{context['backfill_id']}"
    if pipeline:
        return f"{base}/pipelines/{quote(pipeline)}"
    return base


def _render(source: str, values: Mapping[str, Any]) -> str:
    try:
        return _environment().from_string(source).render(values).strip()
    except TemplateError as exc:
        return f"(template error: {exc}) {values.get('event')} {values.get('pipeline') or ''}"
