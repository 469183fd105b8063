"""The pipeline model: linking tasks, validation, options, defaults, retries and versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reflow.core.errors import PipelineError
from reflow.core.params import Param
from reflow.core.pipeline import Pipeline, TaskDefaults, to_seconds
from reflow.tasks import Python, Shell


def upstreams(pipeline: Pipeline) -> dict[str, list[str]]:
    return {t: sorted(task.upstream_ids) for t, task in sorted(pipeline.tasks.items())}


def noop() -> None:
    return None


def other_noop() -> None:
    return None


# -- linking tasks ------------------------------------------------------------------------


def test_rshift_makes_the_right_task_downstream() -> None:
    with Pipeline("p") as p:
        extract = Shell("extract", "x")
        load = Shell("load", "x")
        extract >> load

    assert upstreams(p) == {"extract": [], "load": ["extract"]}


def test_lshift_makes_the_right_task_upstream() -> None:
    with Pipeline("p") as p:
        extract = Shell("extract", "x")
        load = Shell("load", "x")
        load << extract

    assert upstreams(p) == {"extract": [], "load": ["extract"]}


def test_a_chain_links_each_task_to_the_next() -> None:
    with Pipeline("p") as p:
        a, b, c = Shell("a", "x"), Shell("b", "x"), Shell("c", "x")
        a >> b >> c

    assert upstreams(p) == {"a": [], "b": ["a"], "c": ["b"]}


def test_a_reversed_chain_links_each_task_to_the_previous() -> None:
    with Pipeline("p") as p:
        a, b, c = Shell("a", "x"), Shell("b", "x"), Shell("c", "x")
        c << b << a

    assert upstreams(p) == {"a": [], "b": ["a"], "c": ["b"]}


def test_fan_out_and_fan_in_with_lists() -> None:
    with Pipeline("p") as p:
        a, b, c, d = (Shell(t, "x") for t in "abcd")
        a >> [b, c] >> d

    assert upstreams(p) == {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def test_a_list_on_the_left_of_rshift_makes_all_of_them_upstream() -> None:
    with Pipeline("p") as p:
        a, b, c = Shell("a", "x"), Shell("b", "x"), Shell("c", "x")
        [a, b] >> c

    assert upstreams(p) == {"a": [], "b": [], "c": ["a", "b"]}


def test_a_list_on_the_left_of_lshift_makes_all_of_them_downstream() -> None:
    with Pipeline("p") as p:
        a, b, c = Shell("a", "x"), Shell("b", "x"), Shell("c", "x")
        [b, c] << a

    assert upstreams(p) == {"a": [], "b": ["a"], "c": ["a"]}


def test_linking_to_a_task_created_outside_the_pipeline_adds_it() -> None:
    with Pipeline("p") as p:
        a = Shell("a", "x")
    b = Shell("b", "x")

    a >> b

    assert b.pipeline is p
    assert upstreams(p) == {"a": [], "b": ["a"]}


def test_a_task_can_be_given_its_pipeline_explicitly() -> None:
    p = Pipeline("p")

    task = Shell("a", "x", pipeline=p)

    assert p.tasks == {"a": task}
    assert task.pipeline is p


def test_linking_to_something_that_is_not_a_task_is_an_error() -> None:
    with Pipeline("p"):
        a = Shell("a", "x")
        with pytest.raises(PipelineError, match="cannot link a task to 'b': not a task"):
            a >> ["b"]  # type: ignore[list-item]


def test_a_task_of_another_pipeline_cannot_be_added() -> None:
    with Pipeline("first"):
        a = Shell("a", "x")
    second = Pipeline("second")

    with pytest.raises(
        PipelineError, match="pipeline 'second': task 'a' belongs to pipeline 'first'"
    ):
        second.add(a)


def test_downstream_ids_are_the_direct_dependents() -> None:
    with Pipeline("p") as p:
        a, b, c, d = (Shell(t, "x") for t in "abcd")
        a >> [b, c] >> d

    assert p.downstream_ids("a") == {"b", "c"}
    assert p.downstream_ids("d") == set()


# -- validation ---------------------------------------------------------------------------


def test_a_valid_pipeline_validates_to_itself() -> None:
    with Pipeline("p") as p:
        Shell("a", "x") >> Shell("b", "x")

    assert p.validate() is p


def test_duplicate_task_id_is_rejected() -> None:
    with (
        Pipeline("events"),
        pytest.raises(PipelineError, match=r"^pipeline 'events': duplicate task id 'load'$"),
    ):
        Shell("load", "x")
        Shell("load", "y")


def test_an_unknown_upstream_is_rejected_naming_both_tasks() -> None:
    with Pipeline("events") as p:
        load = Shell("load", "x")
    load.upstream_ids.add("extract")

    with pytest.raises(PipelineError) as err:
        p.validate()

    assert str(err.value) == "pipeline 'events': task 'load' depends on unknown task 'extract'"


def test_a_cycle_is_rejected_showing_its_path() -> None:
    with Pipeline("events") as p:
        a, b, c = Shell("a", "x"), Shell("b", "x"), Shell("c", "x")
        a >> b >> c >> a

    with pytest.raises(PipelineError) as err:
        p.validate()

    assert str(err.value) == "pipeline 'events': cycle a -> b -> c -> a"


def test_a_cycle_path_leaves_out_tasks_leading_into_it() -> None:
    with Pipeline("events") as p:
        start, x, y = Shell("start", "s"), Shell("x", "s"), Shell("y", "s")
        start >> x >> y >> x

    with pytest.raises(PipelineError) as err:
        p.validate()

    assert str(err.value) == "pipeline 'events': cycle x -> y -> x"


def test_a_task_depending_on_itself_is_a_cycle() -> None:
    with Pipeline("events") as p:
        a = Shell("a", "x")
        a >> a

    with pytest.raises(PipelineError, match=r"^pipeline 'events': cycle a -> a$"):
        p.validate()


def test_a_pipeline_without_tasks_is_invalid() -> None:
    with pytest.raises(PipelineError, match=r"^pipeline 'empty': has no tasks$"):
        Pipeline("empty").validate()


def test_an_invalid_task_is_reported_with_pipeline_and_task() -> None:
    with Pipeline("events") as p:
        Shell("load", "echo {{ ds")

    with pytest.raises(PipelineError) as err:
        p.validate()

    assert str(err.value).startswith(
        "pipeline 'events': task 'load': template syntax error in 'echo {{ ds'"
    )


def test_an_empty_shell_command_is_invalid() -> None:
    with Pipeline("events") as p:
        Shell("load", "   ")

    with pytest.raises(
        PipelineError, match=r"^pipeline 'events': task 'load': command must be a non-empty"
    ):
        p.validate()


def test_a_python_task_needs_a_callable() -> None:
    with Pipeline("events") as p:
        Python("load", "not callable")  # type: ignore[arg-type]

    with pytest.raises(PipelineError, match="task 'load': fn must be callable, got 'not callable'"):
        p.validate()


@pytest.mark.parametrize("task_id", ["bad id", "_private", "-dash", "", "a/b", "x" * 201, "é"])
def test_a_bad_task_id_is_rejected(task_id: str) -> None:
    with pytest.raises(PipelineError, match=r"^bad task id "):
        Shell(task_id, "x")


@pytest.mark.parametrize("task_id", ["a", "load_events", "spark-job.v2", "7days", "x" * 200])
def test_a_good_task_id_is_accepted(task_id: str) -> None:
    assert Shell(task_id, "x").task_id == task_id


@pytest.mark.parametrize("name", ["bad name", "_private", ""])
def test_a_bad_pipeline_name_is_rejected(name: str) -> None:
    with pytest.raises(PipelineError, match=r"^bad pipeline name "):
        Pipeline(name)


# -- pipeline options ---------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "4"])
def test_max_active_runs_must_be_a_positive_integer(limit: Any) -> None:
    with pytest.raises(PipelineError) as err:
        Pipeline("events", max_active_runs=limit)

    assert str(err.value) == (
        f"pipeline 'events': max_active_runs must be a positive integer, got {limit!r}"
    )


def test_max_active_tasks_must_be_a_positive_integer() -> None:
    with pytest.raises(PipelineError, match="max_active_tasks must be a positive integer, got 0"):
        Pipeline("events", max_active_tasks=0)


def test_a_scheduled_pipeline_needs_a_start_date() -> None:
    with pytest.raises(
        PipelineError, match=r"^pipeline 'events': a scheduled pipeline needs a start_date$"
    ):
        Pipeline("events", schedule="@daily")


def test_a_manual_pipeline_needs_no_start_date() -> None:
    p = Pipeline("events")

    assert p.schedule.is_manual
    assert p.start_date is None


def test_end_date_before_start_date_is_rejected() -> None:
    with pytest.raises(PipelineError, match=r"^pipeline 'events': end_date is before start_date$"):
        Pipeline("events", schedule="@daily", start_date="2024-02-01", end_date="2024-01-01")


def test_a_bad_schedule_is_rejected_naming_the_pipeline_and_expression() -> None:
    with pytest.raises(PipelineError, match=r"^pipeline 'events': bad schedule 'every day'"):
        Pipeline("events", schedule="every day", start_date="2024-01-01")


def test_start_date_is_read_in_the_pipelines_timezone() -> None:
    p = Pipeline("events", schedule="@daily", start_date="2024-01-01", timezone="Europe/Paris")

    assert p.start_date == datetime(2023, 12, 31, 23, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("45m", 2700.0),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("90s", 90.0),
        ("90", 90.0),
        (30, 30.0),
        (2.5, 2.5),
        (timedelta(minutes=3), 180.0),
        (None, None),
    ],
)
def test_durations_accept_seconds_timedeltas_and_unit_strings(value: Any, seconds: Any) -> None:
    assert to_seconds(value, "timeout") == seconds


@pytest.mark.parametrize("value", ["bad", "45 minutes", "1w", True, [1]])
def test_a_bad_duration_is_rejected_naming_the_field(value: Any) -> None:
    with pytest.raises(PipelineError) as err:
        to_seconds(value, "timeout")

    assert str(err.value) == f"timeout: expected seconds, a timedelta or e.g. '45m', got {value!r}"


def test_a_negative_duration_is_rejected() -> None:
    with pytest.raises(PipelineError, match=r"^retry_delay must not be negative$"):
        to_seconds(-1, "retry_delay")


def test_a_bad_task_duration_names_the_task() -> None:
    with pytest.raises(PipelineError, match=r"^task 'load' timeout: expected seconds"):
        Shell("load", "x", timeout="bad")


def test_a_bad_run_timeout_names_the_pipeline() -> None:
    with pytest.raises(PipelineError, match=r"^pipeline 'events': run_timeout: expected seconds"):
        Pipeline("events", run_timeout="bad")


def test_run_timeout_is_stored_in_seconds() -> None:
    assert Pipeline("events", run_timeout="45m").run_timeout == 2700.0


@pytest.mark.parametrize("retries", [-1, 1.5, True])
def test_task_retries_must_be_a_non_negative_integer(retries: Any) -> None:
    with pytest.raises(PipelineError, match="task 'load': retries must be a non-negative integer"):
        Shell("load", "x", retries=retries)


def test_an_unknown_task_default_is_rejected() -> None:
    with pytest.raises(PipelineError, match=r"^pipeline 'events': unknown task default retry$"):
        Pipeline("events", defaults={"retry": 3})


def test_a_negative_default_retries_is_rejected() -> None:
    with pytest.raises(PipelineError, match="default retries must be a non-negative integer"):
        Pipeline("events", defaults={"retries": -1})


# -- task defaults ------------------------------------------------------------------------


def test_tasks_inherit_the_pipeline_defaults() -> None:
    defaults = {"retries": 3, "retry_delay": "2m", "timeout": "45m", "kill_grace": 5}
    with Pipeline("events", defaults=defaults):
        task = Shell("load", "x")

    assert task.option("retries") == 3
    assert task.option("retry_delay") == 120.0
    assert task.option("timeout") == 2700.0
    assert task.option("kill_grace") == 5.0


def test_a_task_option_overrides_the_pipeline_default() -> None:
    defaults = {"retries": 3, "timeout": "45m", "retry_exponential_backoff": True}
    with Pipeline("events", defaults=defaults):
        task = Shell("load", "x", retries=0, timeout=10, retry_exponential_backoff=False)

    assert task.option("retries") == 0
    assert task.option("timeout") == 10.0
    assert task.option("retry_exponential_backoff") is False


def test_without_defaults_tasks_get_reflows_defaults() -> None:
    task = Shell("load", "x")

    assert [task.option(n) for n in ("retries", "retry_delay", "timeout", "kill_grace")] == [
        0,
        60.0,
        None,
        10.0,
    ]


def test_task_defaults_accept_a_task_defaults_object() -> None:
    defaults = TaskDefaults(retries=2, timeout="1h")
    with Pipeline("events", defaults=defaults) as p:
        task = Shell("load", "x")

    assert p.defaults is defaults
    assert task.option("timeout") == 3600.0


def test_task_env_is_merged_over_the_default_env() -> None:
    with Pipeline("events", defaults={"env": {"REGION": "eu", "DAY": "{{ ds }}"}}):
        task = Shell("load", "x", env={"DAY": "today", "EXTRA": "1"})

    assert task.merged_env() == {"REGION": "eu", "DAY": "today", "EXTRA": "1"}


# -- retry delays -------------------------------------------------------------------------


def test_retry_delay_is_constant_without_backoff() -> None:
    task = Shell("load", "x", retry_delay="1m")

    assert [task.retry_delay_for(n) for n in (1, 2, 3)] == [60.0, 60.0, 60.0]


def test_exponential_backoff_doubles_the_delay_after_each_failed_try() -> None:
    task = Shell("load", "x", retry_delay=10, retry_exponential_backoff=True)

    assert [task.retry_delay_for(n) for n in (1, 2, 3, 4)] == [10.0, 20.0, 40.0, 80.0]


def test_max_retry_delay_caps_the_backoff() -> None:
    task = Shell(
        "load", "x", retry_delay="1m", retry_exponential_backoff=True, max_retry_delay="5m"
    )

    assert [task.retry_delay_for(n) for n in range(1, 7)] == [60, 120, 240, 300, 300, 300]


def test_retry_options_are_inherited_from_defaults() -> None:
    defaults = {"retry_delay": 30, "retry_exponential_backoff": True, "max_retry_delay": 100}
    with Pipeline("events", defaults=defaults):
        task = Shell("load", "x")

    assert [task.retry_delay_for(n) for n in (1, 2, 3, 4)] == [30.0, 60.0, 100.0, 100.0]


# -- topological order --------------------------------------------------------------------


def test_topological_order_puts_every_task_after_its_upstreams_ties_by_name() -> None:
    with Pipeline("events") as p:
        extract = Shell("extract", "x")
        clean_b, clean_a = Shell("transform_b", "x"), Shell("transform_a", "x")
        load = Shell("load", "x")
        Shell("audit", "x")
        extract >> [clean_b, clean_a] >> load

    assert p.topological() == ["audit", "extract", "transform_a", "transform_b", "load"]


def test_topological_order_of_a_long_chain_follows_the_chain() -> None:
    with Pipeline("events") as p:
        z, y, x = Shell("z", "s"), Shell("y", "s"), Shell("x", "s")
        z >> y >> x

    assert p.topological() == ["z", "y", "x"]


def test_topological_order_of_a_cycle_is_an_error() -> None:
    with Pipeline("events") as p:
        a, b = Shell("a", "x"), Shell("b", "x")
        a >> b >> a

    with pytest.raises(PipelineError, match=r"^pipeline 'events': has a cycle$"):
        p.topological()


# -- version ------------------------------------------------------------------------------


def build(
    *,
    command: str = "load --day {{ ds }}",
    edge: bool = True,
    default: int = 7,
    extra_task: bool = False,
    fn: Any = noop,
    defaults: dict[str, Any] | None = None,
) -> Pipeline:
    with Pipeline(
        "events",
        schedule="@daily",
        start_date="2024-01-01",
        params={"days": Param(default, minimum=1)},
        defaults=defaults,
    ) as p:
        extract = Shell("extract", "extract --day {{ ds }}")
        load = Shell("load", command)
        Python("notify", fn)
        if edge:
            extract >> load
        if extra_task:
            Shell("audit", "audit")
    return p


def test_version_is_a_short_hex_hash() -> None:
    version = build().version

    assert len(version) == 16
    assert int(version, 16) >= 0


def test_version_is_the_same_for_identical_definitions() -> None:
    assert build().version == build().version


def test_version_does_not_depend_on_task_declaration_order() -> None:
    with Pipeline("events") as first:
        a, b = Shell("a", "x"), Shell("b", "y")
        a >> b
    with Pipeline("events") as second:
        b, a = Shell("b", "y"), Shell("a", "x")
        b << a

    assert first.version == second.version


@pytest.mark.parametrize(
    "change",
    [
        {"extra_task": True},
        {"edge": False},
        {"default": 8},
        {"command": "load --day {{ ds }} --force"},
        {"fn": other_noop},
    ],
    ids=["task added", "edge removed", "param default", "command", "python function"],
)
def test_version_changes_when_the_structure_changes(change: dict[str, Any]) -> None:
    assert build(**change).version != build().version


def test_version_changes_when_a_task_option_changes() -> None:
    with Pipeline("events") as plain:
        Shell("a", "x")
    with Pipeline("events") as with_timeout:
        Shell("a", "x", timeout="1h")

    assert plain.version != with_timeout.version


@pytest.mark.parametrize(
    "defaults",
    [{"timeout": "2h"}, {"retries": 3}, {"env": {"REGION": "us"}}],
    ids=["timeout", "retries", "env"],
)
def test_version_changes_when_a_task_default_changes(defaults: dict[str, Any]) -> None:
    assert build(defaults=defaults).version != build().version
