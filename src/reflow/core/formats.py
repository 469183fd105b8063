"""How moments, logical dates and durations read, the same in the CLI, the pages and the
messages: always in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is None else value.astimezone(UTC)


def moment(value: datetime | None) -> str:
    """A moment, to the second."""
    return _utc(value).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def day(value: datetime | None) -> str:
    """A logical date: the day alone at midnight, else to the minute."""
    if value is None:
        return ""
    value = _utc(value)
    if value.hour == value.minute == value.second == 0:
        return value.strftime("%Y-%m-%d")
    return value.strftime("%Y-%m-%d %H:%M")


def duration(seconds: float | None, *, millis: bool = False) -> str:
    """A duration; "-" for what never ran. With ``millis``, under a second in ms."""
    if seconds is None:
        return "-"
    if millis and seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"
