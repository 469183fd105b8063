"""Use-cases on notifications, for the CLI and the web alike: list them with where their
delivery stands, show one with every attempt, deliver a given-up one again, and send a
test message through a channel of ``reflow.toml``.

Channels are shown by name and kind only: their URLs, secrets and passwords live in
environment variables that only the sending process reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reflow.core.errors import InvalidInput, NotFound
from reflow.core.naming import utcnow
from reflow.core.notify import Event
from reflow.services.project import Project
from reflow.services.records import Notification, NotificationAttempt
from reflow.store import outbox

STATES = (outbox.PENDING, outbox.SENT, outbox.FAILED)
MAX_LIMIT = 1000


@dataclass
class NotificationView:
    """A notification as people see it: what it is about, where it goes, how it went."""

    id: int
    event: str
    created_at: datetime
    pipeline: str | None
    run: int | None
    run_id: str | None
    logical_date: str | None
    task: str | None
    channel: str
    kind: str  # webhook | slack | email | "unknown" (not in reflow.toml any more)
    state: str
    attempts: int
    next_at: datetime | None  # pending: when the next attempt is due
    sent_at: datetime | None
    last_error: str | None
    attempt_log: list[NotificationAttempt] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event,
            "created_at": self.created_at.isoformat(),
            "pipeline": self.pipeline,
            "run": self.run,
            "run_id": self.run_id,
            "logical_date": self.logical_date,
            "task": self.task,
            "channel": self.channel,
            "kind": self.kind,
            "state": self.state,
            "attempts": self.attempts,
            "next_at": self.next_at.isoformat() if self.next_at else None,
            "sent_at": self.sent_at.isoformat() if self.sent_at else None,
            "last_error": self.last_error,
            "attempt_log": [
                {
                    "attempt": a.attempt,
                    "at": a.at.isoformat(),
                    "ok": a.ok,
                    "result": a.result,
                    "seconds": round(a.seconds, 3),
                }
                for a in self.attempt_log
            ],
        }


def list_notifications(
    project: Project,
    *,
    pipeline: str | None = None,
    run: int | None = None,
    state: str | None = None,
    event: str | None = None,
    limit: int = 50,
    before: int | None = None,
    with_attempts: bool = False,
) -> list[NotificationView]:
    """Notifications, newest first (``before``: those older than that id, for paging)."""
    if state is not None and state not in STATES:
        raise InvalidInput(f"unknown notification state {state!r} (states: {', '.join(STATES)})")
    if event is not None and event not in {e.value for e in Event}:
        known = ", ".join(e.value for e in Event)
        raise InvalidInput(f"unknown notification event {event!r} (events: {known})")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    with project.db.read() as conn:
        found = outbox.listing(
            conn, pipeline=pipeline, run=run, state=state, event=event, limit=limit, before=before
        )
        tried = outbox.attempts(conn, [n.id for n in found]) if with_attempts else []
    by_id: dict[int, list[NotificationAttempt]] = {}
    for a in tried:
        by_id.setdefault(a.notification, []).append(a)
    return [_view(project, n, by_id.get(n.id, [])) for n in found]


def show(project: Project, notification: int) -> NotificationView:
    """One notification with every delivery attempt."""
    with project.db.read() as conn:
        found = outbox.one(conn, notification)
        tried = outbox.attempts(conn, [notification]) if found else []
    if found is None:
        raise NotFound(f"no notification {notification}")
    return _view(project, found, tried)


def retry(project: Project, notification: int) -> NotificationView:
    """Deliver a given-up notification again (a scheduler sends it)."""
    current = show(project, notification)
    if current.state != outbox.FAILED:
        raise InvalidInput(
            f"notification {notification} is {current.state}: only a failed one is retried"
        )
    project.db.write(lambda conn: outbox.requeue(conn, notification, utcnow()))
    return show(project, notification)


def send_test(project: Project, channel: str) -> str:
    """Send a test message through ``channel`` now, from this process (its environment
    variables must be set here). Returns what the channel answered."""
    from reflow.notify import channels, messages

    settings = project.settings.notify
    configured = settings.channels.get(channel)
    if configured is None:
        names = ", ".join(sorted(settings.channels)) or "none configured"
        raise NotFound(f"no channel {channel!r} in [reflow.notify.channels] ({names})")
    message = messages.Message(
        event="test",
        title="reflow test notification",
        text=f"A test message to channel {channel} ({configured.kind}); it works.",
        url=settings.ui_url,
        log_tail=None,
        context={"channel": channel},
    )
    try:
        return channels.send(configured, message, 0)
    except channels.DeliveryError as exc:
        raise InvalidInput(f"channel {channel} ({configured.kind}): {exc}") from None


def channel_summary(project: Project) -> list[tuple[str, str]]:
    """(name, kind) of each configured channel."""
    return sorted((name, c.kind) for name, c in project.settings.notify.channels.items())


def _view(project: Project, n: Notification, tried: list[NotificationAttempt]) -> NotificationView:
    configured = project.settings.notify.channels.get(n.channel)
    context = n.context
    return NotificationView(
        id=n.id,
        event=n.event,
        created_at=n.created_at,
        pipeline=n.pipeline,
        run=n.run,
        run_id=context.get("run_id"),
        logical_date=context.get("logical_date"),
        task=context.get("task"),
        channel=n.channel,
        kind=configured.kind if configured is not None else "unknown",
        state=n.state,
        attempts=n.attempts,
        next_at=n.next_at if n.state == outbox.PENDING else None,
        sent_at=n.sent_at,
        last_error=n.last_error,
        attempt_log=tried,
    )
