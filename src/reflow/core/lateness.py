"""Deadlines per date: when each logical date's output must be there.

``deadline="06:00"`` is a wall-clock time in the pipeline's timezone: the first 06:00 at
or after the date's interval has ended (for a daily schedule, 06:00 of the day after the
date). ``deadline="6h"`` (or ``"90m"``, ``"1h30m"``) counts from the interval's end, in
elapsed time. A date whose run (for a task's deadline: whose task instance) has not
succeeded by then is late.

Wall-clock times follow the timezone's clocks: on the day clocks go back, a time that
occurs twice is due at its first occurrence at or after the interval's end; a time the
clocks skip (02:30 when they jump from 02:00 to 03:00) is due at the same time after the
jump (03:30).

Pure functions, no database: when a date is due, and which dates fall due in a window of
time (the scheduler checks the window since its last check).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from reflow.core.errors import PipelineError
from reflow.core.schedule import Schedule

if TYPE_CHECKING:
    from reflow.core.pipeline import Pipeline

_WALL = re.compile(r"^(\d{1,2}):(\d{2})$")
_DURATION = re.compile(r"^(?:\d+[dhms])+$")
_PART = re.compile(r"(\d+)([dhms])")
_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# Dates one deadline yields per window at most (plus those due at the same moment as the
# last): a scheduler back after a long outage catches up over a few checks.
MAX_DATES = 1000
_TICK = timedelta(microseconds=1)
# The whole run's deadline, as a task id (task deadlines carry their task's id).
RUN = ""


@dataclass(frozen=True)
class Deadline:
    """A wall-clock time (``at``) or a time after the interval's end (``after``)."""

    text: str
    at: time | None = None
    after: timedelta | None = None

    @classmethod
    def of(cls, value: Deadline | str | timedelta | None) -> Deadline | None:
        """Parse a user-given deadline; raise PipelineError naming the value."""
        if value is None or isinstance(value, Deadline):
            return value
        if isinstance(value, timedelta):
            return cls._after(value, value)
        text = value.strip().lower().replace(" ", "") if isinstance(value, str) else None
        if text and (m := _WALL.match(text)):
            hour, minute = int(m.group(1)), int(m.group(2))
            if hour < 24 and minute < 60:
                return cls(f"{hour:02d}:{minute:02d}", at=time(hour, minute))
        elif text and _DURATION.match(text):
            seconds = sum(int(n) * _UNIT[u] for n, u in _PART.findall(text))
            return cls._after(timedelta(seconds=seconds), value)
        raise PipelineError(
            f"bad deadline {value!r}: expected a wall-clock time 'HH:MM' in the pipeline's "
            "timezone (e.g. '06:00') or a time after the interval's end (e.g. '6h', '90m', "
            "'1h30m')"
        )

    @classmethod
    def _after(cls, delay: timedelta, given: Any) -> Deadline:
        if delay <= timedelta(0):
            raise PipelineError(
                f"bad deadline {given!r}: it must come after the interval's end (a run only "
                "starts then)"
            )
        return cls(_duration_text(delay), after=delay)

    def __str__(self) -> str:
        return self.text

    def due(self, schedule: Schedule, logical_date: datetime) -> datetime:
        """When the date ``logical_date`` of ``schedule`` is due (UTC)."""
        end = schedule.interval(logical_date)[1]
        if self.after is not None:
            return end + self.after
        assert self.at is not None
        return _first_wall_at_or_after(end, self.at, schedule.tz)

    def dates_due(
        self,
        schedule: Schedule,
        after: datetime,
        until: datetime,
        *,
        first: datetime | None = None,
        last: datetime | None = None,
        limit: int = MAX_DATES,
    ) -> list[tuple[datetime, datetime]]:
        """The logical dates (from ``first`` to ``last``, both included when given) due
        in ``(after, until]``, with their due times, oldest first. At most ``limit`` of
        them, plus those due at the same moment as the last one."""
        if schedule.is_manual or until <= after:
            return []
        # Due times grow with the date, so the first date due after ``after`` is the first
        # whose interval ends after ``lower``: for a wall-clock deadline, the last moment
        # at or before ``after`` at which the clock read it.
        if self.after is not None:
            lower = after - self.after
        else:
            assert self.at is not None
            lower = _last_wall_at_or_before(after, self.at, schedule.tz)
        # One date earlier than the floor: when clocks go back, the floor can be a time the
        # schedule does not fire (see Schedule.next_after); the date before it never is.
        current = schedule.floor(schedule.floor(lower) - _TICK)
        if first is not None:
            current = max(current, schedule.ceil(first))
        out: list[tuple[datetime, datetime]] = []
        while last is None or current <= last:
            due = self.due(schedule, current)
            if due > until or (len(out) >= limit and due != out[-1][1]):
                break
            if due > after:
                out.append((current, due))
            current = schedule.next_after(current)
        return out


@dataclass(frozen=True, order=True)
class Due:
    """A logical date of a pipeline due at ``due_at``, for its run (``task`` is RUN) or
    one of its tasks."""

    due_at: datetime
    logical_date: datetime
    task: str


def deadlines_of(pipeline: Pipeline) -> dict[str, Deadline]:
    """The pipeline's deadlines: the run's (key RUN) and its tasks' (by task id)."""
    found: dict[str, Deadline] = {}
    if pipeline.deadline is not None:
        found[RUN] = pipeline.deadline
    for task_id in sorted(pipeline.tasks):
        deadline = pipeline.tasks[task_id].option("deadline")
        if deadline is not None:
            found[task_id] = deadline
    return found


def due_between(
    pipeline: Pipeline, after: datetime, until: datetime, *, limit: int = MAX_DATES
) -> tuple[list[Due], datetime]:
    """What of ``pipeline`` falls due in ``(after, until]``, soonest first, and the end of
    the window that covers: ``until``, or earlier when one deadline had more than
    ``limit`` dates due (the rest is for the next window)."""
    schedule = pipeline.schedule
    start = pipeline.start_date
    end = schedule.floor(pipeline.end_date) if pipeline.end_date is not None else None
    covered = until
    found: list[Due] = []
    for task, deadline in deadlines_of(pipeline).items():
        dates = deadline.dates_due(schedule, after, until, first=start, last=end, limit=limit)
        if len(dates) >= limit:
            covered = min(covered, dates[-1][1])
        found += [Due(due, logical, task) for logical, due in dates]
    return sorted(d for d in found if d.due_at <= covered), covered


# -- wall-clock arithmetic ---------------------------------------------------------------------
def _wall_instants(day: date, at: time, tz: ZoneInfo) -> list[datetime]:
    """The instants (UTC, in order) at which clocks in ``tz`` read ``at`` on ``day``: two
    when clocks go back over it, one (after the jump) when they skip it."""
    naive = datetime.combine(day, at)
    found = set()
    for fold in (0, 1):
        instant = naive.replace(tzinfo=tz, fold=fold).astimezone(UTC)
        if instant.astimezone(tz).replace(tzinfo=None) == naive:
            found.add(instant)
    if not found:  # skipped: fold 0 reads it with the offset before the jump
        found.add(naive.replace(tzinfo=tz).astimezone(UTC))
    return sorted(found)


def _first_wall_at_or_after(when: datetime, at: time, tz: ZoneInfo) -> datetime:
    day = when.astimezone(tz).date()
    for offset in (0, 1, 2):
        for instant in _wall_instants(day + timedelta(days=offset), at, tz):
            if instant >= when:
                return instant
    raise AssertionError("a wall-clock time occurs every day")  # pragma: no cover


def _last_wall_at_or_before(when: datetime, at: time, tz: ZoneInfo) -> datetime:
    day = when.astimezone(tz).date()
    for offset in (0, 1, 2):
        for instant in reversed(_wall_instants(day - timedelta(days=offset), at, tz)):
            if instant <= when:
                return instant
    raise AssertionError("a wall-clock time occurs every day")  # pragma: no cover


def _duration_text(delay: timedelta) -> str:
    seconds = delay.total_seconds()
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest, parts = int(seconds), []
    for unit, size in _UNIT.items():
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)
