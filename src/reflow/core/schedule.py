"""Schedules and data intervals.

A scheduled run processes ``[data_interval_start, data_interval_end)``; its logical date is
the interval's start, and it becomes due once the interval has ended (the Airflow
convention). Cron arithmetic is croniter's, in the pipeline's timezone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from reflow.core.errors import ScheduleError

PRESETS: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def parse_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"unknown timezone {name!r}") from exc


def to_datetime(value: datetime | date | str, tz: ZoneInfo | None = None) -> datetime:
    """Coerce a user-given date or datetime to an aware datetime (naive means ``tz``/UTC)."""
    zone = tz or ZoneInfo("UTC")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ScheduleError(
                f"bad date {value!r}: expected YYYY-MM-DD or an ISO 8601 date-time"
            ) from None
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value


@dataclass(frozen=True)
class Schedule:
    """A cron schedule (or None: manual runs only) in a timezone."""

    expression: str | None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        parse_timezone(self.timezone)
        if self.expression is not None and not croniter.is_valid(self.cron):
            raise ScheduleError(
                f"bad schedule {self.expression!r}: expected a cron expression "
                f"(5 fields) or one of {', '.join(sorted(PRESETS))}"
            )

    @property
    def cron(self) -> str:
        assert self.expression is not None
        return PRESETS.get(self.expression, self.expression)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def is_manual(self) -> bool:
        return self.expression is None

    def _local(self, when: datetime) -> datetime:
        return when.astimezone(self.tz)

    def next_after(self, when: datetime) -> datetime:
        """The first fire time strictly after ``when``.

        When clocks go back, a wall-clock time repeats; it fires once (the first time), so
        a daily schedule never gives two runs for one local day.
        """
        return _next_after(self.cron, self.timezone, when.astimezone(UTC))

    def floor(self, when: datetime) -> datetime:
        """The latest fire time at or before ``when``."""
        # Fire times are whole minutes: the latest at or before ``when`` is the latest at or
        # before the start of its (local) minute, which the cache then shares.
        minute = self._local(when).replace(second=0, microsecond=0)
        return _floor(self.cron, self.timezone, minute.astimezone(UTC))

    def ceil(self, when: datetime) -> datetime:
        """The earliest fire time at or after ``when``."""
        floor = self.floor(when)
        return floor if floor == when.astimezone(UTC) else self.next_after(when)

    def is_aligned(self, when: datetime) -> bool:
        return self.floor(when) == when.astimezone(UTC)

    def interval(self, logical_date: datetime) -> tuple[datetime, datetime]:
        """The data interval of the run whose logical date is ``logical_date``."""
        start = logical_date.astimezone(UTC)
        if self.is_manual:
            return start, start
        return start, self.next_after(start)

    def logical_dates(self, first: datetime, last: datetime) -> Iterator[datetime]:
        """Every fire time in ``[first, last]``, oldest first."""
        if self.is_manual:
            return
        current = self.ceil(first)
        last_utc = last.astimezone(UTC)
        while current <= last_utc:
            yield current
            current = self.next_after(current)

    def latest_complete(self, now: datetime) -> datetime | None:
        """Logical date of the latest interval that has fully ended at ``now``."""
        if self.is_manual:
            return None
        end = self.floor(now)
        return self.floor(end - timedelta(microseconds=1))


# Cron arithmetic is pure (expression, timezone, instant) -> instant, and croniter parses
# its expression on every call: the scheduler, the pipeline list and the grid ask the same
# questions over and over (a pipeline's first date, the latest complete interval), so the
# answers are kept. They are keyed by UTC instants: two local times of the hour that
# repeats when clocks go back compare (and hash) equal, but are different instants.
@lru_cache(maxsize=1 << 16)
def _next_after(cron: str, timezone: str, when: datetime) -> datetime:
    local = when.astimezone(ZoneInfo(timezone))
    it = croniter(cron, local)
    nxt: datetime = it.get_next(datetime)
    while nxt.replace(tzinfo=None) == local.replace(tzinfo=None):
        nxt = it.get_next(datetime)
    return nxt.astimezone(UTC)


@lru_cache(maxsize=1 << 16)
def _floor(cron: str, timezone: str, minute: datetime) -> datetime:
    local = minute.astimezone(ZoneInfo(timezone))
    if croniter.match(cron, local):
        return minute
    prev: datetime = croniter(cron, local).get_prev(datetime)
    return prev.astimezone(UTC)
