"""Templating: the run context, nested rendering, shell quoting and the sandbox."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reflow.core.context import RunInfo, build_context, context_from_json, context_to_json
from reflow.core.errors import TemplateError
from reflow.core.templating import (
    ShellSafe,
    check,
    ds_add,
    ds_format,
    render,
    render_value,
    shell_args,
)


def context(
    conf: dict[str, Any] | None = None,
    *,
    logical_date: datetime = datetime(2024, 1, 1, tzinfo=UTC),
    end: datetime = datetime(2024, 1, 2, tzinfo=UTC),
    timezone: str = "UTC",
    task: str = "load",
    try_number: int = 2,
) -> dict[str, Any]:
    run = RunInfo(
        pipeline="events",
        run_id="scheduled__2024-01-01T00:00:00+00:00",
        logical_date=logical_date,
        data_interval_start=logical_date,
        data_interval_end=end,
        conf=conf if conf is not None else {"region": "eu", "days": 3},
        timezone=timezone,
    )
    return build_context(run, task, try_number)


def run_shell(command: str, cwd: Path) -> str:
    """Run a rendered command exactly as the Shell task does, return its stdout."""
    done = subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, text=True, cwd=cwd, check=True
    )
    return done.stdout


# -- the run context ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ ds }}", "2024-01-01"),
        ("{{ ds_nodash }}", "20240101"),
        ("{{ ts }}", "2024-01-01T00:00:00+00:00"),
        ("{{ ts_nodash }}", "20240101T000000"),
        ("{{ logical_date }}", "2024-01-01 00:00:00+00:00"),
        ("{{ data_interval_start }}", "2024-01-01 00:00:00+00:00"),
        ("{{ data_interval_end }}", "2024-01-02 00:00:00+00:00"),
        ("{{ params.region }}", "eu"),
        ("{{ params['days'] }}", "3"),
        ("{{ conf.region }}", "eu"),
        ("{{ run_id }}", "scheduled__2024-01-01T00:00:00+00:00"),
        ("{{ try_number }}", "2"),
        ("{{ pipeline }}", "events"),
        ("{{ task }}", "load"),
    ],
)
def test_every_context_name_renders(template: str, expected: str) -> None:
    assert render(template, context()) == expected


def test_the_context_has_exactly_the_documented_names() -> None:
    assert sorted(context()) == [
        "conf",
        "data_interval_end",
        "data_interval_start",
        "ds",
        "ds_nodash",
        "logical_date",
        "params",
        "pipeline",
        "run_id",
        "task",
        "try_number",
        "ts",
        "ts_nodash",
    ]


def test_datetime_methods_can_be_called_in_a_template() -> None:
    rendered = render(
        "{{ logical_date.strftime('%Y/%m') }} {{ data_interval_end.isoformat() }}", context()
    )

    assert rendered == "2024/01 2024-01-02T00:00:00+00:00"


def test_ds_is_the_logical_date_in_the_pipelines_timezone() -> None:
    # 2023-12-31 23:00 UTC is 2024-01-01 00:00 in Paris.
    ctx = context(
        logical_date=datetime(2023, 12, 31, 23, tzinfo=UTC),
        end=datetime(2024, 1, 1, 23, tzinfo=UTC),
        timezone="Europe/Paris",
    )

    assert render("{{ ds }} {{ ds_nodash }} {{ ts }}", ctx) == (
        "2024-01-01 20240101 2024-01-01T00:00:00+01:00"
    )
    assert render("{{ data_interval_end }}", ctx) == "2024-01-02 00:00:00+01:00"


def test_params_and_conf_are_the_same_values() -> None:
    ctx = context({"a": 1})

    assert ctx["params"] == ctx["conf"] == {"a": 1}


def test_the_context_survives_a_json_round_trip() -> None:
    ctx = context()

    again = context_from_json(context_to_json(ctx))

    assert again == ctx
    assert context_to_json(ctx)["logical_date"] == "2024-01-01T00:00:00+00:00"


# -- render_value -------------------------------------------------------------------------


def test_render_value_renders_nested_dict_keys_and_values() -> None:
    value = {"{{ task }}-dir": {"day": "{{ ds }}", "{{ params.region }}": "x"}}

    assert render_value(value, context()) == {"load-dir": {"day": "2024-01-01", "eu": "x"}}


def test_render_value_renders_lists_and_keeps_tuples_as_tuples() -> None:
    rendered = render_value(["{{ ds }}", ("{{ try_number }}", "{{ pipeline }}")], context())

    assert rendered == ["2024-01-01", ("2", "events")]
    assert isinstance(rendered[1], tuple)


def test_render_value_leaves_non_strings_untouched() -> None:
    assert render_value({"n": 5, "x": None, "f": 1.5, "ok": True}, context()) == {
        "n": 5,
        "x": None,
        "f": 1.5,
        "ok": True,
    }


def test_a_plain_string_is_returned_as_is() -> None:
    assert render("spark-submit job.py", context()) == "spark-submit job.py"


def test_a_conf_value_that_looks_like_a_template_is_not_rendered_again() -> None:
    assert render("{{ params.x }}", context({"x": "{{ 7 * 7 }}"})) == "{{ 7 * 7 }}"


# -- shell quoting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "x; rm -rf /tmp/y",
        "$(touch pwned)",
        "`touch pwned`",
        "a && touch pwned",
        "it's \"quoted\" 'twice'",
        "line one\nline two; touch pwned",
        "* ?",
        "",
    ],
)
def test_a_conf_value_interpolated_in_a_shell_command_stays_one_argument(
    value: str, tmp_path: Path
) -> None:
    command = render("printf '%s|\\n' {{ params.x }}", context({"x": value}), shell=True)

    out = run_shell(command, tmp_path)

    assert out == value + "|\n"
    assert list(tmp_path.iterdir()) == []  # nothing was executed, nothing was globbed


def test_a_command_substitution_in_conf_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    value = f"$(touch {marker})"

    out = run_shell(
        render("printf '%s\\n' {{ params.x }}", context({"x": value}), shell=True), tmp_path
    )

    assert out == value + "\n"
    assert not marker.exists()


def test_shell_mode_quotes_only_the_interpolated_values() -> None:
    rendered = render(
        "spark-submit --day {{ ds }} --region {{ params.region }} job.py",
        context({"region": "us east"}),
        shell=True,
    )

    assert rendered == "spark-submit --day 2024-01-01 --region 'us east' job.py"


def test_literal_template_text_is_not_quoted(tmp_path: Path) -> None:
    template = "printf '%s\\n' {% if params.force %}--force{% endif %} done | tr a-z A-Z"

    rendered = render(template, context({"force": True}), shell=True)

    assert rendered == "printf '%s\\n' --force done | tr a-z A-Z"
    assert run_shell(rendered, tmp_path) == "--FORCE\nDONE\n"


def test_shell_mode_renders_booleans_as_lowercase_words_and_none_as_empty_argument() -> None:
    rendered = render(
        "run {{ params.a }} {{ params.b }} {{ params.c }}",
        context({"a": True, "b": False, "c": None}),
        shell=True,
    )

    assert rendered == "run true false ''"


def test_without_shell_mode_values_are_not_quoted() -> None:
    assert render("--region {{ params.region }}", context({"region": "us east"})) == (
        "--region us east"
    )


def test_shell_args_filter_quotes_each_item_as_its_own_argument(tmp_path: Path) -> None:
    files = ["a b", "c;d", "$(touch pwned)", "it's"]

    rendered = render(
        "printf '%s|\\n' {{ params.files | shell_args }}", context({"files": files}), shell=True
    )

    assert rendered == "printf '%s|\\n' 'a b' 'c;d' '$(touch pwned)' 'it'\"'\"'s'"
    assert run_shell(rendered, tmp_path) == "a b|\nc;d|\n$(touch pwned)|\nit's|\n"
    assert list(tmp_path.iterdir()) == []


def test_shell_args_of_a_string_is_one_argument() -> None:
    assert shell_args("a b") == "'a b'"
    assert isinstance(shell_args("a b"), ShellSafe)


def test_shell_args_of_an_empty_list_is_nothing() -> None:
    assert render("run {{ params.flags | shell_args }}", context({"flags": []}), shell=True) == (
        "run "
    )


def test_text_derived_from_shell_args_is_quoted_again() -> None:
    rendered = render(
        "echo {{ (params.f | shell_args) ~ ';x' }}", context({"f": ["a b"]}), shell=True
    )

    assert rendered == "echo ''\"'\"'a b'\"'\"';x'"


def test_a_value_interpolated_inside_double_quotes_cannot_run_a_command(tmp_path: Path) -> None:
    """Inside quotes no quoting is right for every use, so reflow refuses the template."""
    marker = tmp_path / "pwned"

    with pytest.raises(TemplateError, match="outside quotes"):
        render('printf "%s\\n" "{{ params.x }}"', context({"x": f"$(touch {marker})"}), shell=True)
    with pytest.raises(TemplateError, match="outside quotes"):
        check('sh -c "echo {{ params.x }}"', shell=True)


def test_a_value_interpolated_inside_single_quotes_cannot_run_a_command(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    with pytest.raises(TemplateError, match="outside quotes"):
        render("printf '%s\\n' '{{ params.x }}'", context({"x": f"$(touch {marker})"}), shell=True)


def test_a_value_inside_command_substitution_stays_one_inert_word(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    rendered = render(
        'printf "%s\\n" "$(printf %s {{ params.x }})"',
        context({"x": f"$(touch {marker}) a  b"}),
        shell=True,
    )
    assert run_shell(rendered, tmp_path) == f"$(touch {marker}) a  b\n"
    assert not marker.exists()


def test_a_value_in_a_heredoc_is_refused() -> None:
    with pytest.raises(TemplateError, match="heredoc"):
        render("cat <<EOF\n{{ params.x }}\nEOF", context({"x": "$(id)"}), shell=True)


# -- errors and the sandbox ---------------------------------------------------------------


def test_an_undefined_name_is_an_error_naming_it() -> None:
    with pytest.raises(TemplateError) as err:
        render("--day {{ dss }}", context())

    assert str(err.value) == "'dss' is undefined in template '--day {{ dss }}'"


def test_an_undefined_param_is_an_error_naming_it() -> None:
    with pytest.raises(TemplateError, match=r"'nope'.*'\{\{ params\.nope \}\}'$"):
        render("{{ params.nope }}", context())


def test_an_undefined_name_is_an_error_in_shell_mode_too() -> None:
    with pytest.raises(TemplateError, match="'dss' is undefined"):
        render("echo {{ dss }}", context(), shell=True)


def test_a_syntax_error_is_a_template_error_naming_the_template() -> None:
    with pytest.raises(TemplateError, match=r"^template syntax error in '\{\{ ds'"):
        render("{{ ds", context())


def test_check_rejects_bad_syntax_and_accepts_good_syntax() -> None:
    check("echo {{ ds }} {% if params.x %}x{% endif %}")
    with pytest.raises(TemplateError, match="template syntax error"):
        check("echo {% if %}")


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__ }}",
        "{{ ds.__class__.__mro__[1].__subclasses__() }}",
        "{{ params.__class__ }}",
    ],
)
def test_the_sandbox_blocks_dunder_attributes(template: str) -> None:
    with pytest.raises(TemplateError, match=r"^unsafe template .*attribute '__class__'"):
        render(template, context())


def test_an_error_raised_while_rendering_is_a_template_error() -> None:
    with pytest.raises(TemplateError) as err:
        render("{{ params.days // 0 }}", context())

    assert str(err.value) == (
        "cannot render '{{ params.days // 0 }}': integer division or modulo by zero"
    )


# -- helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ds", "days", "expected"),
    [
        ("2024-01-01", 1, "2024-01-02"),
        ("2024-01-01", -1, "2023-12-31"),
        ("2024-02-28", 1, "2024-02-29"),
        ("2024-03-01", -1, "2024-02-29"),
        ("2024-01-31", 0, "2024-01-31"),
    ],
)
def test_ds_add_moves_a_date_by_days(ds: str, days: int, expected: str) -> None:
    assert ds_add(ds, days) == expected


def test_ds_add_is_available_in_templates() -> None:
    assert render("{{ ds_add(ds, -7) }}", context()) == "2023-12-25"


def test_ds_format_reformats_a_date() -> None:
    assert ds_format("2024-01-31", "%Y-%m-%d", "%d/%m/%Y") == "31/01/2024"
    assert render("{{ ds_format(ds, '%Y-%m-%d', '%Y/%m') }}", context()) == "2024/01"
