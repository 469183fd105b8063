"""Deadlines per date, without a database: parsing, when a date is due (DST included), and
which dates fall due in a window of time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from reflow import Pipeline, PipelineError, Shell
from reflow.core.discovery import load_file
from reflow.core.lateness import RUN, Deadline, Due, due_between
from reflow.core.schedule import Schedule, to_datetime

PARIS = ZoneInfo("Europe/Paris")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def paris(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=PARIS, fold=fold).astimezone(UTC)


def deadline(text: str) -> Deadline:
    found = Deadline.of(text)
    assert found is not None
    return found


# -- what a deadline says ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "text"),
    [
        ("06:00", "06:00"),
        ("6:00", "06:00"),
        (" 23:59 ", "23:59"),
        ("00:00", "00:00"),
        ("6h", "6h"),
        ("90m", "1h30m"),
        ("1h30m", "1h30m"),
        ("1h 30m", "1h30m"),
        ("2d", "2d"),
        ("45s", "45s"),
        (timedelta(hours=2, minutes=15), "2h15m"),
    ],
)
def test_a_deadline_is_a_wall_clock_time_or_a_time_after_the_interval(
    given: Any, text: str
) -> None:
    assert str(Deadline.of(given)) == text


def test_durations_written_differently_are_the_same_deadline() -> None:
    assert Deadline.of("90m") == Deadline.of("1h30m") == Deadline.of(timedelta(minutes=90))


@pytest.mark.parametrize("bad", ["24:00", "06:60", "6", "6 hours", "1.5h", "-1h", "abc", "", 6])
def test_a_malformed_deadline_is_refused_naming_the_value(bad: Any) -> None:
    with pytest.raises(PipelineError, match=rf"bad deadline {bad!r}: expected.*'06:00'.*'6h'"):
        Deadline.of(bad)


@pytest.mark.parametrize("zero", ["0m", "0h0m", timedelta(0)])
def test_a_deadline_at_the_interval_end_is_refused(zero: Any) -> None:
    with pytest.raises(PipelineError, match="must come after the interval's end"):
        Deadline.of(zero)


# -- when one date is due ----------------------------------------------------------------------
def test_a_daily_wall_clock_deadline_is_that_time_on_the_day_after_the_date() -> None:
    assert deadline("06:00").due(Schedule("@daily"), utc(2024, 1, 5)) == utc(2024, 1, 6, 6)


def test_a_daily_duration_deadline_counts_from_the_interval_end() -> None:
    assert deadline("6h").due(Schedule("@daily"), utc(2024, 1, 5)) == utc(2024, 1, 6, 6)
    assert deadline("1h30m").due(Schedule("@daily"), utc(2024, 1, 5)) == utc(2024, 1, 6, 1, 30)


def test_midnight_is_due_at_the_interval_end_itself() -> None:
    assert deadline("00:00").due(Schedule("@daily"), utc(2024, 1, 5)) == utc(2024, 1, 6)


def test_a_wall_clock_deadline_is_read_in_the_pipelines_timezone() -> None:
    daily = Schedule("@daily", "Europe/Paris")
    date = to_datetime("2024-01-05", PARIS)
    assert deadline("06:00").due(daily, date) == paris(2024, 1, 6, 6) == utc(2024, 1, 6, 5)


def test_a_wall_clock_deadline_keeps_its_local_time_across_spring_forward() -> None:
    daily = Schedule("@daily", "Europe/Paris")
    # The night of 2024-03-31 loses an hour: 06:00 stays 06:00 on the clocks.
    assert deadline("06:00").due(daily, to_datetime("2024-03-30", PARIS)) == utc(2024, 3, 31, 4)
    assert deadline("06:00").due(daily, to_datetime("2024-03-31", PARIS)) == utc(2024, 4, 1, 4)


def test_a_wall_clock_deadline_keeps_its_local_time_across_fall_back() -> None:
    daily = Schedule("@daily", "Europe/Paris")
    assert deadline("06:00").due(daily, to_datetime("2024-10-26", PARIS)) == utc(2024, 10, 27, 5)
    assert deadline("06:00").due(daily, to_datetime("2024-10-27", PARIS)) == utc(2024, 10, 28, 5)


def test_a_duration_deadline_is_elapsed_time_across_spring_forward() -> None:
    daily = Schedule("@daily", "Europe/Paris")
    # The interval of 2024-03-30 ends at 23:00 UTC; six hours later the clocks read 07:00.
    due = deadline("6h").due(daily, to_datetime("2024-03-30", PARIS))
    assert due == utc(2024, 3, 31, 5) == paris(2024, 3, 31, 7)


def test_a_time_the_clocks_skip_is_due_at_the_same_time_after_the_jump() -> None:
    daily = Schedule("@daily", "Europe/Paris")
    # 02:30 does not exist on 2024-03-31 (02:00 -> 03:00): due at 03:30 CEST.
    due = deadline("02:30").due(daily, to_datetime("2024-03-30", PARIS))
    assert due == utc(2024, 3, 31, 1, 30) == paris(2024, 3, 31, 3, 30)


def test_a_time_that_occurs_twice_is_due_at_its_first_occurrence_after_the_interval() -> None:
    # 2024-10-27: 02:00-03:00 happens twice in Paris (CEST, then CET).
    late = deadline("02:30")
    ends_at_two = Schedule("0 2 * * *", "Europe/Paris")
    assert late.due(ends_at_two, paris(2024, 10, 26, 2)) == paris(2024, 10, 27, 2, 30)
    assert late.due(ends_at_two, paris(2024, 10, 26, 2)) == utc(2024, 10, 27, 0, 30)
    # The interval ends at 02:45 CEST, after the first 02:30: due at the second one.
    ends_after = Schedule("45 2 * * *", "Europe/Paris")
    assert late.due(ends_after, paris(2024, 10, 26, 2, 45)) == paris(2024, 10, 27, 2, 30, fold=1)
    assert late.due(ends_after, paris(2024, 10, 26, 2, 45)) == utc(2024, 10, 27, 1, 30)


def test_an_hourly_schedule_with_a_wall_clock_deadline_has_one_due_time_per_day() -> None:
    hourly = Schedule("@hourly")
    late = deadline("06:00")
    assert late.due(hourly, utc(2024, 1, 5, 4)) == utc(2024, 1, 5, 6)  # ends 05:00
    assert late.due(hourly, utc(2024, 1, 5, 5)) == utc(2024, 1, 5, 6)  # ends 06:00: at it
    assert late.due(hourly, utc(2024, 1, 5, 6)) == utc(2024, 1, 6, 6)  # ends 07:00
    assert late.due(hourly, utc(2024, 1, 6, 5)) == utc(2024, 1, 6, 6)


def test_an_hourly_schedule_with_a_duration_deadline_is_due_each_hour() -> None:
    assert deadline("90m").due(Schedule("@hourly"), utc(2024, 1, 5, 4)) == utc(2024, 1, 5, 6, 30)


# -- which dates fall due in a window ------------------------------------------------------------
def test_the_window_excludes_its_start_and_includes_its_end() -> None:
    daily = Schedule("@daily")
    late = deadline("06:00")
    assert late.dates_due(daily, utc(2024, 1, 6, 6), utc(2024, 1, 7, 6)) == [
        (utc(2024, 1, 6), utc(2024, 1, 7, 6))
    ]
    assert late.dates_due(daily, utc(2024, 1, 6, 6), utc(2024, 1, 7, 5, 59)) == []


def test_a_long_window_has_one_date_per_day() -> None:
    found = deadline("6h").dates_due(Schedule("@daily"), utc(2024, 1, 1), utc(2024, 1, 11))
    assert [d for d, _ in found] == [utc(2023, 12, 31) + timedelta(days=i) for i in range(10)]
    assert all(due == d + timedelta(days=1, hours=6) for d, due in found)


def test_an_empty_or_reversed_window_has_no_date() -> None:
    daily = Schedule("@daily")
    assert deadline("06:00").dates_due(daily, utc(2024, 1, 7), utc(2024, 1, 7)) == []
    assert deadline("06:00").dates_due(daily, utc(2024, 1, 8), utc(2024, 1, 7)) == []


def test_a_manual_schedule_has_no_date_due() -> None:
    assert deadline("06:00").dates_due(Schedule(None), utc(2024, 1, 1), utc(2025, 1, 1)) == []


def test_the_window_keeps_to_the_first_and_last_dates() -> None:
    found = deadline("06:00").dates_due(
        Schedule("@daily"),
        utc(2024, 1, 1),
        utc(2024, 2, 1),
        first=utc(2024, 1, 10, 12),  # unaligned: the first date is the 11th
        last=utc(2024, 1, 13),
    )
    assert [d.day for d, _ in found] == [11, 12, 13]


def test_an_hourly_wall_clock_deadline_brings_a_whole_day_of_dates_at_once() -> None:
    found = deadline("06:00").dates_due(Schedule("@hourly"), utc(2024, 1, 5, 7), utc(2024, 1, 6, 6))
    assert len(found) == 24
    assert {due for _, due in found} == {utc(2024, 1, 6, 6)}
    assert found[0][0] == utc(2024, 1, 5, 6) and found[-1][0] == utc(2024, 1, 6, 5)


def test_the_limit_never_splits_dates_due_at_the_same_moment() -> None:
    hourly = deadline("06:00").dates_due(
        Schedule("@hourly"), utc(2024, 1, 5, 7), utc(2024, 1, 9), limit=5
    )
    assert len(hourly) == 24
    daily = deadline("06:00").dates_due(
        Schedule("@daily"), utc(2024, 1, 1), utc(2024, 2, 1), limit=3
    )
    assert [d.day for d, _ in daily] == [31, 1, 2]


@pytest.mark.parametrize("schedule", ["@daily", "@hourly", "30 1,2,3 * * *", "0 0 * * 0"])
@pytest.mark.parametrize("text", ["06:00", "02:30", "00:00", "90m", "6h", "1d"])
def test_windows_split_anywhere_find_each_date_once_as_brute_force_does(
    schedule: str, text: str
) -> None:
    """Over March to November in Paris (both DST changes), consecutive windows find every
    date's due time exactly once, and the same as computing it for every date."""
    sched = Schedule(schedule, "Europe/Paris")
    late = deadline(text)
    begin, end = paris(2024, 3, 28), paris(2024, 4, 3)
    if schedule != "@hourly":
        end = paris(2024, 11, 3)
    cuts = [begin]
    step = timedelta(hours=7, minutes=13)
    while cuts[-1] < end:
        cuts.append(min(end, cuts[-1] + step))
    found = [item for a, b in pairwise(cuts) for item in late.dates_due(sched, a, b)]
    expected = [
        (d, late.due(sched, d))
        for d in sched.logical_dates(begin - timedelta(days=10), end)
        if begin < late.due(sched, d) <= end
    ]
    assert found == expected
    assert len({d for d, _ in found}) == len(found)


# -- a pipeline's deadlines --------------------------------------------------------------------
def test_a_pipeline_brings_its_runs_and_its_tasks_due_dates_together() -> None:
    with Pipeline(
        "p",
        schedule="@daily",
        start_date="2024-01-01",
        deadline="06:00",
        defaults={"deadline": "2h"},
    ) as p:
        Shell("extract", "true") >> Shell("load", "true", deadline="04:00")
    p.validate()
    found, covered = due_between(p, utc(2024, 1, 2), utc(2024, 1, 3, 6))
    assert covered == utc(2024, 1, 3, 6)
    assert found == [
        Due(utc(2024, 1, 2, 2), utc(2024, 1, 1), "extract"),
        Due(utc(2024, 1, 2, 4), utc(2024, 1, 1), "load"),
        Due(utc(2024, 1, 2, 6), utc(2024, 1, 1), RUN),
        Due(utc(2024, 1, 3, 2), utc(2024, 1, 2), "extract"),
        Due(utc(2024, 1, 3, 4), utc(2024, 1, 2), "load"),
        Due(utc(2024, 1, 3, 6), utc(2024, 1, 2), RUN),
    ]


def test_a_pipeline_window_keeps_to_start_and_end_dates() -> None:
    with Pipeline(
        "p", schedule="@daily", start_date="2024-01-03", end_date="2024-01-04", deadline="1h"
    ) as p:
        Shell("a", "true")
    p.validate()
    found, _ = due_between(p, utc(2024, 1, 1), utc(2024, 2, 1))
    assert [d.logical_date.day for d in found] == [3, 4]


def test_a_pipeline_window_past_its_limit_covers_less_and_the_next_one_goes_on() -> None:
    with Pipeline("p", schedule="@daily", start_date="2024-01-01", deadline="06:00") as p:
        Shell("a", "true", deadline="05:00")
    p.validate()
    first, covered = due_between(p, utc(2024, 1, 1), utc(2024, 1, 11), limit=3)
    assert covered == utc(2024, 1, 4, 5)  # the task's third date; the run's waits
    assert [(d.logical_date.day, d.task) for d in first] == [
        (1, "a"),
        (1, RUN),
        (2, "a"),
        (2, RUN),
        (3, "a"),
    ]
    rest, end = due_between(p, covered, utc(2024, 1, 11), limit=100)
    assert end == utc(2024, 1, 11)
    assert {(d.logical_date.day, d.task) for d in first + rest} == {
        (day, task) for day in range(1, 10) for task in ("a", RUN)
    }
    assert len(first + rest) == 18


def test_a_pipeline_without_deadlines_has_nothing_due() -> None:
    with Pipeline("p", schedule="@daily", start_date="2024-01-01") as p:
        Shell("a", "true")
    p.validate()
    assert due_between(p, utc(2024, 1, 1), utc(2025, 1, 1)) == ([], utc(2025, 1, 1))


# -- refused when the file loads -----------------------------------------------------------------
def test_a_bad_pipeline_deadline_names_the_pipeline_and_the_value() -> None:
    with pytest.raises(PipelineError, match=r"pipeline .events.: bad deadline \"6 o.clock\""):
        Pipeline("events", schedule="@daily", start_date="2024-01-01", deadline="6 o'clock")


def test_a_bad_task_deadline_names_the_pipeline_the_task_and_the_value() -> None:
    with (
        Pipeline("events", schedule="@daily", start_date="2024-01-01"),
        pytest.raises(PipelineError, match=r"pipeline 'events': task 'load': bad deadline '7am'"),
    ):
        Shell("load", "true", deadline="7am")


def test_a_bad_default_deadline_names_the_pipeline() -> None:
    with pytest.raises(PipelineError, match=r"pipeline 'events': task defaults: bad deadline"):
        Pipeline("events", schedule="@daily", start_date="2024-01-01", defaults={"deadline": "x"})


def test_a_deadline_on_a_pipeline_without_schedule_is_refused() -> None:
    with pytest.raises(PipelineError, match=r"pipeline 'adhoc': deadline '06:00' needs a schedule"):
        Pipeline("adhoc", deadline="06:00")


def test_a_task_deadline_on_a_pipeline_without_schedule_is_refused() -> None:
    with Pipeline("adhoc") as p:
        Shell("a", "true", deadline="2h")
    with pytest.raises(PipelineError, match=r"pipeline 'adhoc': task 'a' has deadline '2h'"):
        p.validate()


def test_a_file_with_a_bad_deadline_is_refused_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "events.py"
    path.write_text(
        "from reflow import Pipeline, Shell\n"
        "with Pipeline('events', schedule='@daily', start_date='2024-01-01', deadline='25:00'):\n"
        "    Shell('a', 'true')\n"
    )
    with pytest.raises(PipelineError) as caught:
        load_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: pipeline 'events': bad deadline '25:00': expected")
    assert "\n" not in message


# -- the version ---------------------------------------------------------------------------------
def _version(**options: Any) -> str:
    task_deadline = options.pop("task_deadline", None)
    with Pipeline("p", schedule="@daily", start_date="2024-01-01", **options) as p:
        Shell("a", "true", deadline=task_deadline)
    return p.validate().version


def test_deadlines_change_the_version_only_when_set() -> None:
    plain = _version()
    assert plain == _version(deadline=None, task_deadline=None)
    assert len({plain, _version(deadline="06:00"), _version(task_deadline="06:00")}) == 3
    assert _version(deadline="90m") == _version(deadline="1h30m")
    assert _version(defaults={"deadline": "2h"}) == _version(task_deadline="2h")


def test_the_structure_shows_the_deadlines_as_written_out() -> None:
    with Pipeline("p", schedule="@daily", start_date="2024-01-01", deadline="6:00") as p:
        Shell("a", "true", deadline="90m")
        Shell("b", "true")
    structure = p.validate().structure()
    assert structure["deadline"] == "06:00"
    assert structure["tasks"]["a"]["deadline"] == "1h30m"
    assert "deadline" not in structure["tasks"]["b"]
