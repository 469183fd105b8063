"""From a task and its run context to the exact try a launcher runs (tasks/build.build_try)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from reflow.core.context import RunInfo, build_context, context_to_json
from reflow.core.errors import TemplateError
from reflow.core.pipeline import Pipeline, Task
from reflow.core.spec import TrySpec
from reflow.tasks import Python, Shell
from reflow.tasks.build import build_try

RUN_ID = "scheduled__2024-01-01T00:00:00+00:00"


def context(task: str, try_number: int = 1, conf: dict[str, Any] | None = None) -> dict[str, Any]:
    run = RunInfo(
        pipeline="etl",
        run_id=RUN_ID,
        logical_date=datetime(2024, 1, 1, tzinfo=UTC),
        data_interval_start=datetime(2024, 1, 1, tzinfo=UTC),
        data_interval_end=datetime(2024, 1, 2, tzinfo=UTC),
        conf=conf if conf is not None else {"region": "us east"},
    )
    return build_context(run, task, try_number)


def build(task: Task, ctx: dict[str, Any], **kwargs: Any) -> TrySpec:
    kwargs.setdefault("try_id", 7)
    kwargs.setdefault("log_path", "/logs/7.log")
    kwargs.setdefault("pipelines_folder", "/srv/pipelines")
    return build_try(task, ctx, **kwargs)


IDENTITY = {
    "REFLOW_PIPELINE": "etl",
    "REFLOW_RUN_ID": RUN_ID,
    "REFLOW_DS": "2024-01-01",
}


# -- Shell --------------------------------------------------------------------------------


def test_a_shell_try_runs_the_rendered_command_with_sh_c() -> None:
    with Pipeline("etl", params={"region": "eu"}):
        task = Shell("load", "spark-submit job.py --day {{ ds }} --region {{ params.region }}")

    spec = build(task, context("load"))

    assert spec.argv == (
        "/bin/sh",
        "-c",
        "spark-submit job.py --day 2024-01-01 --region 'us east'",
    )


def test_a_shell_try_carries_its_id_log_path_and_labels() -> None:
    task = Shell("load", "echo hi")

    spec = build(task, context("load", try_number=3), try_id=42, log_path="/logs/42.log")

    assert spec.try_id == 42
    assert spec.log_path == "/logs/42.log"
    assert spec.labels == {"pipeline": "etl", "run_id": RUN_ID, "task": "load", "try_number": "3"}


def test_shell_env_is_rendered_and_merged_over_the_pipeline_default_env() -> None:
    defaults = {"env": {"REGION": "{{ params.region }}", "DAY": "default", "STAGE": "prod"}}
    with Pipeline("etl", defaults=defaults, params={"region": "eu"}):
        task = Shell("load", "run", env={"DAY": "{{ ds_nodash }}", "TRY": "{{ try_number }}"})

    spec = build(task, context("load", try_number=2))

    assert spec.env == {
        "REGION": "us east",  # rendered, not quoted: env values never go through a shell
        "DAY": "20240101",
        "STAGE": "prod",
        "TRY": "2",
        **IDENTITY,
        "REFLOW_TASK": "load",
        "REFLOW_TRY_NUMBER": "2",
    }


def test_the_identity_env_vars_win_over_a_task_env_of_the_same_name() -> None:
    task = Shell("load", "run", env={"REFLOW_DS": "spoofed", "REFLOW_TASK": "other"})

    spec = build(task, context("load"))

    assert spec.env["REFLOW_DS"] == "2024-01-01"
    assert spec.env["REFLOW_TASK"] == "load"


def test_a_shell_try_without_env_gets_only_the_identity_env() -> None:
    spec = build(Shell("load", "run"), context("load", try_number=5))

    assert spec.env == {**IDENTITY, "REFLOW_TASK": "load", "REFLOW_TRY_NUMBER": "5"}


def test_kill_grace_comes_from_the_pipeline_defaults() -> None:
    with Pipeline("etl", defaults={"kill_grace": "30s"}):
        inherits = Shell("load", "run")
        overrides = Shell("check", "run", kill_grace=5)

    assert build(inherits, context("load")).kill_grace == 30.0
    assert build(overrides, context("check")).kill_grace == 5.0


def test_kill_grace_defaults_to_ten_seconds() -> None:
    assert build(Shell("load", "run"), context("load")).kill_grace == 10.0


def test_a_templated_cwd_is_rendered_and_wins_over_the_launchers_cwd() -> None:
    task = Shell("load", "run", cwd="/data/{{ ds_nodash }}")

    spec = build(task, context("load"), cwd="/runtime/7")

    assert spec.cwd == "/data/20240101"


def test_without_a_task_cwd_the_launchers_cwd_is_used() -> None:
    assert build(Shell("load", "run"), context("load"), cwd="/runtime/7").cwd == "/runtime/7"
    assert build(Shell("load", "run"), context("load")).cwd is None


def test_a_template_error_in_the_command_raises_template_error() -> None:
    with pytest.raises(
        TemplateError, match=r"^'dss' is undefined in template 'echo \{\{ dss \}\}'"
    ):
        build(Shell("load", "echo {{ dss }}"), context("load"))


def test_a_template_error_in_the_env_raises_template_error() -> None:
    task = Shell("load", "run", env={"TABLE": "{{ params.table }}"})

    with pytest.raises(TemplateError, match="'table'"):
        build(task, context("load"))


def test_a_conf_value_cannot_escape_its_argument_in_the_built_command() -> None:
    spec = build(
        Shell("load", "load --table {{ params.table }}"),
        context("load", conf={"table": "t; rm -rf /"}),
    )

    assert spec.argv[2] == "load --table 't; rm -rf /'"


# -- Python -------------------------------------------------------------------------------


def takes_ds_and_params(ds: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ds, params


def takes_everything(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def takes_args_and_context(table: str, limit: int = 10, *, context: Any) -> tuple[Any, ...]:
    return table, limit, context["task"], context["try_number"]


def python_task(fn: Any = takes_ds_and_params, **kwargs: Any) -> Python:
    with Pipeline("etl", defaults={"env": {"STAGE": "{{ ds }}"}}) as p:
        task = Python("py", fn, **kwargs)
    p.fileloc = "/srv/pipelines/etl.py"
    return task


def test_a_python_try_runs_pyrun_with_this_interpreter() -> None:
    spec = build(python_task(), context("py"))

    assert spec.argv == (sys.executable, "-m", "reflow.tasks.pyrun")


def test_a_python_try_tells_the_child_how_to_find_the_task_and_its_context() -> None:
    ctx = context("py", try_number=3)

    spec = build(python_task(), ctx, pipelines_folder="/srv/pipelines")

    assert spec.env == {
        "STAGE": "2024-01-01",
        "REFLOW_TASK_FILE": "/srv/pipelines/etl.py",
        "REFLOW_TASK_PIPELINE": "etl",
        "REFLOW_TASK_ID": "py",
        "REFLOW_TASK_CONTEXT": spec.env["REFLOW_TASK_CONTEXT"],
        "REFLOW_PIPELINES_FOLDER": "/srv/pipelines",
        **IDENTITY,
        "REFLOW_TASK": "py",
        "REFLOW_TRY_NUMBER": "3",
    }
    assert json.loads(spec.env["REFLOW_TASK_CONTEXT"]) == context_to_json(ctx)


def test_a_python_try_has_no_cwd_of_its_own() -> None:
    assert build(python_task(), context("py"), cwd="/runtime/7").cwd == "/runtime/7"


def test_a_function_taking_ds_and_params_receives_them() -> None:
    assert python_task(takes_ds_and_params).call(context("py")) == (
        "2024-01-01",
        {"region": "us east"},
    )


def test_a_function_taking_kwargs_receives_every_context_name() -> None:
    ctx = context("py", try_number=2)

    received = python_task(takes_everything).call(ctx)

    assert received == ctx
    assert received["ds"] == "2024-01-01"
    assert received["try_number"] == 2


def test_rendered_kwargs_are_passed_and_win_over_context_names() -> None:
    task = python_task(
        takes_everything, kwargs={"ds": "day {{ ds }}", "table": "t_{{ ds_nodash }}"}
    )

    received = task.call(context("py"))

    assert received["ds"] == "day 2024-01-01"
    assert received["table"] == "t_20240101"
    assert received["pipeline"] == "etl"


def test_rendered_args_and_the_whole_context_are_passed() -> None:
    task = python_task(takes_args_and_context, args=["events_{{ ds_nodash }}"])

    assert task.call(context("py", try_number=4)) == ("events_20240101", 10, "py", 4)


def test_a_function_without_context_parameters_gets_only_its_args() -> None:
    task = python_task(lambda a, b: a + b, args=["{{ ds }}", "!"])

    assert task.call(context("py")) == "2024-01-01!"


def test_a_template_error_in_python_kwargs_raises_template_error() -> None:
    task = python_task(takes_everything, kwargs={"x": "{{ nope }}"})

    with pytest.raises(TemplateError, match="'nope' is undefined"):
        build(task, context("py"))


def ds_only(ds: str) -> str:
    return ds


def test_a_context_name_already_given_positionally_is_not_passed_again() -> None:
    task = python_task(ds_only, args=["{{ ds_add(ds, -1) }}"])

    assert task.call(context("py")) == "2023-12-31"


def test_an_unsupported_task_kind_is_rejected() -> None:
    class Custom(Task):
        kind = "custom"

    with pytest.raises(TypeError, match="unsupported task kind 'custom'"):
        build(Custom("odd"), context("odd"))
