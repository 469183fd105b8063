"""Schedules: cron and presets, data intervals, due dates, alignment, timezones and DST."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from reflow.core.errors import ScheduleError
from reflow.core.schedule import PRESETS, Schedule, to_datetime

PARIS = ZoneInfo("Europe/Paris")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- expressions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "cron"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
    ],
)
def test_each_preset_stands_for_its_cron_expression(preset: str, cron: str) -> None:
    assert Schedule(preset).cron == cron


def test_every_preset_is_covered_by_the_preset_table() -> None:
    assert sorted(PRESETS) == [
        "@annually",
        "@daily",
        "@hourly",
        "@midnight",
        "@monthly",
        "@weekly",
        "@yearly",
    ]


def test_a_plain_cron_expression_is_used_as_given() -> None:
    assert Schedule("30 6 * * 1-5").cron == "30 6 * * 1-5"


def test_a_schedule_without_expression_is_manual_and_has_no_runs_of_its_own() -> None:
    manual = Schedule(None)

    assert manual.is_manual
    assert list(manual.logical_dates(utc(2024, 1, 1), utc(2025, 1, 1))) == []
    assert manual.latest_complete(utc(2024, 6, 1)) is None
    assert manual.interval(utc(2024, 1, 1, 12)) == (utc(2024, 1, 1, 12), utc(2024, 1, 1, 12))


@pytest.mark.parametrize("expression", ["bogus", "61 * * * *", "* * *", "@fortnightly"])
def test_a_bad_cron_expression_raises_schedule_error_naming_it(expression: str) -> None:
    with pytest.raises(ScheduleError) as err:
        Schedule(expression)

    assert repr(expression) in str(err.value)
    assert "@daily" in str(err.value)  # the message lists the presets that would work


def test_an_unknown_timezone_raises_schedule_error_naming_it() -> None:
    with pytest.raises(ScheduleError, match="unknown timezone 'Mars/Olympus_Mons'"):
        Schedule("@daily", "Mars/Olympus_Mons")


# -- data intervals -----------------------------------------------------------------------


def test_a_daily_interval_covers_the_whole_day() -> None:
    assert Schedule("@daily").interval(utc(2024, 3, 10)) == (utc(2024, 3, 10), utc(2024, 3, 11))


def test_the_daily_interval_of_january_31_ends_on_february_1() -> None:
    assert Schedule("@daily").interval(utc(2024, 1, 31)) == (utc(2024, 1, 31), utc(2024, 2, 1))


def test_the_daily_interval_of_new_years_eve_ends_next_year() -> None:
    assert Schedule("@daily").interval(utc(2023, 12, 31)) == (utc(2023, 12, 31), utc(2024, 1, 1))


def test_an_hourly_interval_covers_one_hour_across_midnight() -> None:
    assert Schedule("@hourly").interval(utc(2024, 1, 1, 23)) == (
        utc(2024, 1, 1, 23),
        utc(2024, 1, 2, 0),
    )


def test_a_monthly_interval_of_january_ends_on_february_1() -> None:
    assert Schedule("@monthly").interval(utc(2024, 1, 1)) == (utc(2024, 1, 1), utc(2024, 2, 1))


def test_a_monthly_interval_of_a_leap_february_has_29_days() -> None:
    start, end = Schedule("@monthly").interval(utc(2024, 2, 1))

    assert (start, end) == (utc(2024, 2, 1), utc(2024, 3, 1))
    assert end - start == timedelta(days=29)


def test_a_weekly_interval_runs_sunday_to_sunday() -> None:
    assert Schedule("@weekly").interval(utc(2024, 1, 7)) == (utc(2024, 1, 7), utc(2024, 1, 14))


def test_a_yearly_interval_covers_the_year() -> None:
    assert Schedule("@yearly").interval(utc(2024, 1, 1)) == (utc(2024, 1, 1), utc(2025, 1, 1))


def test_intervals_are_returned_in_utc_even_for_a_local_logical_date() -> None:
    start, end = Schedule("@daily", "Europe/Paris").interval(datetime(2024, 1, 1, tzinfo=PARIS))

    assert (start, end) == (utc(2023, 12, 31, 23), utc(2024, 1, 1, 23))
    assert start.tzinfo is UTC and end.tzinfo is UTC


# -- when a run is due --------------------------------------------------------------------


def test_daily_run_is_due_once_its_day_has_ended() -> None:
    daily = Schedule("@daily")

    assert daily.latest_complete(utc(2024, 1, 2, 0, 0)) == utc(2024, 1, 1)


def test_daily_run_is_not_due_one_microsecond_before_its_day_ends() -> None:
    daily = Schedule("@daily")

    just_before = utc(2024, 1, 2) - timedelta(microseconds=1)
    assert daily.latest_complete(just_before) == utc(2023, 12, 31)


def test_daily_latest_complete_in_the_middle_of_a_day_is_yesterday() -> None:
    assert Schedule("@daily").latest_complete(utc(2024, 5, 17, 13, 45)) == utc(2024, 5, 16)


def test_hourly_latest_complete_is_the_previous_full_hour() -> None:
    assert Schedule("@hourly").latest_complete(utc(2024, 1, 1, 10, 30)) == utc(2024, 1, 1, 9)


def test_monthly_run_for_february_is_due_on_march_1() -> None:
    monthly = Schedule("@monthly")

    assert monthly.latest_complete(utc(2024, 3, 1)) == utc(2024, 2, 1)
    assert monthly.latest_complete(utc(2024, 2, 29, 23, 59)) == utc(2024, 1, 1)


def test_paris_daily_run_is_due_at_paris_midnight() -> None:
    daily = Schedule("@daily", "Europe/Paris")

    # 2024-01-02 00:00 in Paris is 2024-01-01 23:00 UTC: the run for Jan 1 (Paris) is due.
    assert daily.latest_complete(utc(2024, 1, 1, 23)) == utc(2023, 12, 31, 23)
    assert daily.latest_complete(utc(2024, 1, 1, 22, 59)) == utc(2023, 12, 30, 23)


# -- logical dates of a range -------------------------------------------------------------


def test_logical_dates_include_both_ends_of_an_aligned_range() -> None:
    dates = list(Schedule("@daily").logical_dates(utc(2024, 1, 1), utc(2024, 1, 4)))

    assert dates == [utc(2024, 1, 1), utc(2024, 1, 2), utc(2024, 1, 3), utc(2024, 1, 4)]


def test_logical_dates_round_an_unaligned_first_date_up() -> None:
    dates = list(Schedule("@daily").logical_dates(utc(2024, 1, 1, 6), utc(2024, 1, 3)))

    assert dates == [utc(2024, 1, 2), utc(2024, 1, 3)]


def test_logical_dates_stop_at_the_last_fire_time_before_an_unaligned_last_date() -> None:
    dates = list(Schedule("@daily").logical_dates(utc(2024, 1, 1), utc(2024, 1, 2, 23, 59)))

    assert dates == [utc(2024, 1, 1), utc(2024, 1, 2)]


def test_logical_dates_of_a_single_aligned_day_is_that_day() -> None:
    assert list(Schedule("@daily").logical_dates(utc(2024, 1, 5), utc(2024, 1, 5))) == [
        utc(2024, 1, 5)
    ]


def test_logical_dates_of_a_range_inside_one_interval_is_empty() -> None:
    assert list(Schedule("@daily").logical_dates(utc(2024, 1, 5, 1), utc(2024, 1, 5, 23))) == []


def test_logical_dates_of_a_reversed_range_is_empty() -> None:
    assert list(Schedule("@daily").logical_dates(utc(2024, 1, 5), utc(2024, 1, 1))) == []


def test_hourly_logical_dates_cross_midnight() -> None:
    dates = list(Schedule("@hourly").logical_dates(utc(2024, 1, 1, 22, 15), utc(2024, 1, 2, 1)))

    assert dates == [utc(2024, 1, 1, 23), utc(2024, 1, 2, 0), utc(2024, 1, 2, 1)]


def test_monthly_logical_dates_are_first_of_each_month() -> None:
    dates = list(Schedule("@monthly").logical_dates(utc(2024, 1, 15), utc(2024, 5, 1)))

    assert dates == [utc(2024, 2, 1), utc(2024, 3, 1), utc(2024, 4, 1), utc(2024, 5, 1)]


def test_a_year_of_daily_logical_dates_has_one_per_day() -> None:
    dates = list(Schedule("@daily").logical_dates(utc(2024, 1, 1), utc(2024, 12, 31)))

    assert len(dates) == 366  # 2024 is a leap year
    assert dates[0] == utc(2024, 1, 1) and dates[-1] == utc(2024, 12, 31)


# -- floor, ceil, alignment ---------------------------------------------------------------


def test_floor_of_an_aligned_time_is_itself() -> None:
    assert Schedule("@daily").floor(utc(2024, 1, 1)) == utc(2024, 1, 1)


def test_floor_of_an_unaligned_time_is_the_previous_fire_time() -> None:
    assert Schedule("@daily").floor(utc(2024, 1, 1, 13)) == utc(2024, 1, 1)


def test_floor_treats_seconds_past_a_fire_time_as_unaligned() -> None:
    daily = Schedule("@daily")

    assert daily.floor(utc(2024, 1, 1, 0, 0, 30)) == utc(2024, 1, 1)
    assert daily.ceil(utc(2024, 1, 1, 0, 0, 30)) == utc(2024, 1, 2)
    assert not daily.is_aligned(utc(2024, 1, 1, 0, 0, 0) + timedelta(microseconds=500))


def test_ceil_of_an_aligned_time_is_itself() -> None:
    assert Schedule("@daily").ceil(utc(2024, 1, 1)) == utc(2024, 1, 1)


def test_ceil_of_an_unaligned_time_is_the_next_fire_time() -> None:
    assert Schedule("@daily").ceil(utc(2024, 1, 1, 13)) == utc(2024, 1, 2)


def test_is_aligned_only_on_fire_times() -> None:
    hourly = Schedule("@hourly")

    assert hourly.is_aligned(utc(2024, 1, 1, 7))
    assert not hourly.is_aligned(utc(2024, 1, 1, 7, 1))


def test_alignment_is_judged_in_the_schedules_timezone() -> None:
    daily_utc = Schedule("@daily")
    daily_paris = Schedule("@daily", "Europe/Paris")
    paris_midnight = datetime(2024, 1, 1, tzinfo=PARIS)  # 2023-12-31 23:00 UTC

    assert daily_paris.is_aligned(paris_midnight)
    assert not daily_utc.is_aligned(paris_midnight)
    assert daily_utc.floor(paris_midnight) == utc(2023, 12, 31)
    assert daily_utc.ceil(paris_midnight) == utc(2024, 1, 1)


def test_next_after_is_strictly_after() -> None:
    assert Schedule("@daily").next_after(utc(2024, 1, 1)) == utc(2024, 1, 2)


# -- daylight saving time -----------------------------------------------------------------


def test_paris_2am_schedule_on_spring_forward_day_fires_at_3am_and_that_day_lasts_23_hours() -> (
    None
):
    # On 2024-03-31 Paris clocks jump from 02:00 to 03:00: 02:00 does not exist that day.
    schedule = Schedule("0 2 * * *", "Europe/Paris")

    dates = list(schedule.logical_dates(utc(2024, 3, 29), utc(2024, 4, 1, 12)))

    assert dates == [utc(2024, 3, 29, 1), utc(2024, 3, 30, 1), utc(2024, 3, 31, 1), utc(2024, 4, 1)]
    assert [d.astimezone(PARIS).isoformat() for d in dates] == [
        "2024-03-29T02:00:00+01:00",
        "2024-03-30T02:00:00+01:00",
        "2024-03-31T03:00:00+02:00",
        "2024-04-01T02:00:00+02:00",
    ]
    lengths = [end - start for start, end in map(schedule.interval, dates)]
    assert [length / timedelta(hours=1) for length in lengths] == [24, 24, 23, 24]


def test_paris_2am_run_on_spring_forward_day_is_due_at_its_next_fire_time() -> None:
    schedule = Schedule("0 2 * * *", "Europe/Paris")

    assert schedule.latest_complete(utc(2024, 4, 1, 0, 0)) == utc(2024, 3, 31, 1)
    assert schedule.latest_complete(utc(2024, 3, 31, 23, 59)) == utc(2024, 3, 30, 1)


def test_paris_2am_schedule_on_fall_back_day_fires_once() -> None:
    # On 2024-10-27 Paris clocks go back from 03:00 to 02:00: 02:00 happens twice.
    schedule = Schedule("0 2 * * *", "Europe/Paris")

    dates = list(schedule.logical_dates(utc(2024, 10, 25), utc(2024, 10, 28, 23)))

    assert [d.astimezone(PARIS).date() for d in dates] == [
        date(2024, 10, 25),
        date(2024, 10, 26),
        date(2024, 10, 27),
        date(2024, 10, 28),
    ]


# -- user-given dates ---------------------------------------------------------------------


def test_a_date_string_becomes_midnight_in_the_given_timezone() -> None:
    assert to_datetime("2024-01-01", PARIS) == datetime(2024, 1, 1, tzinfo=PARIS)


def test_a_naive_date_without_timezone_is_utc() -> None:
    assert to_datetime(date(2024, 1, 1)) == utc(2024, 1, 1)


def test_an_aware_datetime_keeps_its_timezone() -> None:
    aware = datetime(2024, 1, 1, 5, tzinfo=PARIS)

    assert to_datetime(aware, ZoneInfo("UTC")) is aware


def test_a_bad_date_string_raises_schedule_error_naming_it() -> None:
    with pytest.raises(ScheduleError, match="bad date '2024-13-45'"):
        to_datetime("2024-13-45")


def test_the_two_local_times_of_the_repeated_hour_each_get_their_own_answer() -> None:
    """On 2024-10-27 Paris goes from 03:00 back to 02:00: 02:30 happens twice, an hour
    apart. Answers are remembered (by instant, not by local time)."""
    hourly = Schedule("@hourly", "Europe/Paris")
    first, second = utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 1, 30)  # both 02:30 local
    for _ in range(2):  # computed, then remembered
        assert hourly.floor(first) == utc(2024, 10, 27, 0, 0)
        assert hourly.floor(second) == utc(2024, 10, 27, 1, 0)
        assert hourly.next_after(first) == utc(2024, 10, 27, 1, 0)
        assert hourly.next_after(second) == utc(2024, 10, 27, 2, 0)


def test_a_time_within_a_minute_has_the_floor_of_that_minute() -> None:
    every_minute = Schedule("* * * * *")
    assert every_minute.floor(utc(2024, 1, 1, 10, 5, 59)) == utc(2024, 1, 1, 10, 5)
    daily = Schedule("@daily")
    assert daily.floor(utc(2024, 1, 1, 0, 0, 30)) == utc(2024, 1, 1)
    assert daily.floor(utc(2024, 1, 1)) == utc(2024, 1, 1)
    assert daily.floor(utc(2024, 1, 1) - timedelta(microseconds=1)) == utc(2023, 12, 31)
