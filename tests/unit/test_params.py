"""Run params: defaults, inferred types, strict types, constraints and the conf's JSON schema."""

from __future__ import annotations

import warnings
from datetime import date
from typing import Any

import pytest

from reflow.core.errors import ConfError, PipelineError
from reflow.core.params import Param, ParamSet, parse_type
from reflow.core.pipeline import Pipeline


def resolve(params: dict[str, Any], conf: dict[str, Any] | None = None) -> dict[str, Any]:
    return ParamSet(params).resolve(conf)


# -- defaults and types -------------------------------------------------------------------


def test_an_empty_conf_resolves_to_the_defaults() -> None:
    assert resolve({"days": 5, "force": False, "table": "events"}) == {
        "days": 5,
        "force": False,
        "table": "events",
    }


def test_conf_overrides_only_the_params_it_names() -> None:
    assert resolve({"days": 5, "force": False}, {"force": True}) == {"days": 5, "force": True}


def test_a_pipeline_without_params_resolves_an_empty_conf_to_nothing() -> None:
    assert ParamSet().resolve({}) == {}
    assert ParamSet(None).resolve(None) == {}


def test_a_bare_value_is_a_param_with_that_default() -> None:
    assert ParamSet({"days": 5}).params == {"days": Param(default=5)}


@pytest.mark.parametrize(
    ("default", "expected"),
    [(5, int), (1.5, float), (True, bool), ("x", str), ([1], list), ({"a": 1}, dict)],
)
def test_the_type_of_a_param_is_inferred_from_its_default(default: Any, expected: type) -> None:
    assert Param(default).resolved_type is expected


def test_an_explicit_type_wins_over_the_default() -> None:
    assert Param(5, type=float).resolved_type is float
    assert resolve({"ratio": Param(5, type=float)}, {"ratio": 2}) == {"ratio": 2.0}


def test_a_param_with_a_none_default_accepts_any_value_or_none() -> None:
    assert resolve({"limit": None}) == {"limit": None}
    assert resolve({"limit": None}, {"limit": 3}) == {"limit": 3}
    assert resolve({"limit": None}, {"limit": "all"}) == {"limit": "all"}


def test_a_date_param_resolves_to_an_iso_string() -> None:
    assert resolve({"since": date(2024, 1, 1)}) == {"since": "2024-01-01"}
    assert resolve({"since": date(2024, 1, 1)}, {"since": "2024-02-03"}) == {"since": "2024-02-03"}


# -- coercion -----------------------------------------------------------------------------


def test_a_numeric_string_for_an_int_param_is_refused_naming_type_and_value() -> None:
    with pytest.raises(
        ConfError,
        match=r"^param 'days': Input should be a valid integer \(expected int, given '5'\)$",
    ):
        resolve({"days": 1}, {"days": "5"})


def test_an_int_is_accepted_for_a_float_param() -> None:
    assert resolve({"ratio": 0.5}, {"ratio": 2}) == {"ratio": 2.0}


@pytest.mark.parametrize("given", ["true", "false", 1, 0])
def test_only_true_and_false_are_accepted_for_a_bool_param(given: Any) -> None:
    assert resolve({"force": False}, {"force": True}) == {"force": True}
    with pytest.raises(ConfError, match=r"^param 'force': .*\(expected bool, given "):
        resolve({"force": False}, {"force": given})


@pytest.mark.parametrize(
    ("default", "given"),
    [
        (0.5, "2.5"),
        (1, True),
        ("x", 3),
        ("x", ["x"]),
        ([1], {"a": 1}),
        ([1], "[1]"),
        ({"a": 1}, [1]),
        ({"a": 1}, '{"a": 1}'),
    ],
)
def test_a_value_of_another_type_is_refused_not_coerced(default: Any, given: Any) -> None:
    expected = type(default).__name__
    with pytest.raises(ConfError, match=rf"^param 'p': .*\(expected {expected}, given "):
        resolve({"p": default}, {"p": given})


def test_lists_and_dicts_of_the_declared_type_are_accepted() -> None:
    assert resolve({"l": [1], "d": {"a": 1}}, {"l": ["x", 2], "d": {"b": [1]}}) == {
        "l": ["x", 2],
        "d": {"b": [1]},
    }


def test_defaults_of_every_type_still_resolve() -> None:
    params = {
        "i": 1,
        "f": Param(1, type=float),
        "b": False,
        "s": "x",
        "l": [1],
        "d": {"a": 1},
        "day": date(2024, 1, 1),
        "n": None,
        "c": Param("a", choices=("a", "b")),
    }
    ParamSet(params).check_defaults()
    assert resolve(params) == {
        "i": 1,
        "f": 1.0,
        "b": False,
        "s": "x",
        "l": [1],
        "d": {"a": 1},
        "day": "2024-01-01",
        "n": None,
        "c": "a",
    }


def test_a_non_numeric_string_for_an_int_param_is_rejected_naming_the_param() -> None:
    with pytest.raises(ConfError, match=r"^param 'days': Input should be a valid integer"):
        resolve({"days": 1}, {"days": "five"})


def test_a_fractional_number_for_an_int_param_is_rejected() -> None:
    with pytest.raises(ConfError, match=r"^param 'days': Input should be a valid integer"):
        resolve({"days": 1}, {"days": 5.5})


def test_an_unrecognised_word_for_a_bool_param_is_rejected() -> None:
    with pytest.raises(ConfError, match="param 'force': Input should be a valid boolean"):
        resolve({"force": False}, {"force": "maybe"})


# -- constraints --------------------------------------------------------------------------


def test_minimum_and_maximum_are_inclusive() -> None:
    limit = {"limit": Param(10, minimum=1, maximum=100)}

    assert resolve(limit, {"limit": 1}) == {"limit": 1}
    assert resolve(limit, {"limit": 100}) == {"limit": 100}


def test_a_value_below_the_minimum_is_rejected() -> None:
    with pytest.raises(
        ConfError, match=r"^param 'limit': Input should be greater than or equal to 1$"
    ):
        resolve({"limit": Param(10, minimum=1, maximum=100)}, {"limit": 0})


def test_a_value_above_the_maximum_is_rejected() -> None:
    with pytest.raises(
        ConfError, match=r"^param 'limit': Input should be less than or equal to 100$"
    ):
        resolve({"limit": Param(10, minimum=1, maximum=100)}, {"limit": 101})


def test_a_value_among_the_choices_is_accepted() -> None:
    assert resolve({"mode": Param("fast", choices=("fast", "full"))}, {"mode": "full"}) == {
        "mode": "full"
    }


def test_a_value_outside_the_choices_is_rejected_listing_them() -> None:
    with pytest.raises(ConfError, match=r"^param 'mode': Input should be 'fast' or 'full'$"):
        resolve({"mode": Param("fast", choices=("fast", "full"))}, {"mode": "slow"})


def test_a_value_matching_the_pattern_is_accepted() -> None:
    assert resolve({"table": Param("events", pattern=r"^[a-z_]+$")}, {"table": "page_views"}) == {
        "table": "page_views"
    }


def test_a_value_not_matching_the_pattern_is_rejected_showing_it() -> None:
    with pytest.raises(
        ConfError, match=r"^param 'table': String should match pattern '\^\[a-z_\]\+\$'$"
    ):
        resolve({"table": Param("events", pattern=r"^[a-z_]+$")}, {"table": "Bad-Name"})


def test_a_required_param_must_be_given() -> None:
    with pytest.raises(ConfError, match=r"^param 'region': Field required$"):
        resolve({"region": Param(type=str), "days": 5}, {})


def test_a_required_param_given_in_conf_resolves() -> None:
    assert resolve({"region": Param(type=str), "days": 5}, {"region": "eu"}) == {
        "region": "eu",
        "days": 5,
    }


def test_a_param_without_default_is_required() -> None:
    assert Param(type=str).required
    assert not Param(None).required
    assert not Param("").required


# -- unknown keys -------------------------------------------------------------------------


def test_unknown_conf_keys_are_rejected_naming_them_and_the_known_params() -> None:
    with pytest.raises(ConfError) as err:
        resolve({"days": 5, "force": False}, {"dayz": 3, "other": 1})

    assert str(err.value) == "unknown param dayz, other (known params: days, force)"


def test_any_conf_key_is_unknown_for_a_pipeline_without_params() -> None:
    with pytest.raises(ConfError, match=r"^unknown param x \(known params: none\)$"):
        ParamSet().resolve({"x": 1})


def test_a_param_name_must_be_an_identifier() -> None:
    with pytest.raises(ConfError, match="param name 'my-param' is not a valid identifier"):
        ParamSet({"my-param": 1})


# -- defaults checked when the pipeline is defined ----------------------------------------


@pytest.mark.parametrize(
    ("param", "problem"),
    [
        (Param(0, minimum=1), "Input should be greater than or equal to 1"),
        (Param(101, maximum=100), "Input should be less than or equal to 100"),
        (Param("z", choices=("a", "b")), "Input should be 'a' or 'b'"),
        (Param("ABC", pattern="^[a-z]+$"), "String should match pattern '^[a-z]+$'"),
        (Param("five", type=int), "Input should be a valid integer"),
    ],
)
def test_a_bad_default_is_rejected_when_the_pipeline_is_defined(param: Param, problem: str) -> None:
    with pytest.raises(PipelineError) as err:
        Pipeline("nightly", params={"n": param})

    message = str(err.value)
    assert message.startswith("pipeline 'nightly': default of param 'n': ")
    assert problem in message


def test_a_required_param_does_not_make_the_pipeline_invalid() -> None:
    pipeline = Pipeline("nightly", params={"region": Param(type=str)})

    assert pipeline.params.params["region"].required


# -- schema and description ---------------------------------------------------------------


def test_the_json_schema_describes_every_param() -> None:
    params = ParamSet(
        {
            "days": 5,
            "mode": Param("fast", choices=("fast", "full")),
            "limit": Param(10, minimum=1, maximum=100, description="Max rows"),
            "table": Param("events", pattern=r"^[a-z_]+$"),
            "region": Param(type=str, description="Where"),
        }
    )

    schema = params.json_schema()

    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["region"]
    props = schema["properties"]
    assert set(props) == {"days", "mode", "limit", "table", "region"}
    assert props["days"] == {"default": 5, "title": "days", "type": "integer"}
    assert props["mode"]["enum"] == ["fast", "full"]
    assert props["mode"]["default"] == "fast"
    assert props["limit"]["minimum"] == 1
    assert props["limit"]["maximum"] == 100
    assert props["limit"]["description"] == "Max rows"
    assert props["table"]["pattern"] == "^[a-z_]+$"
    assert props["region"] == {"description": "Where", "title": "region", "type": "string"}


def test_describe_lists_params_sorted_with_only_the_fields_that_are_set() -> None:
    params = ParamSet(
        {
            "token": Param("", secret=True),
            "days": 5,
            "mode": Param("fast", choices=("fast", "full")),
            "region": Param(type=str),
        }
    )

    assert params.describe() == {
        "days": {"type": "int", "default": 5},
        "mode": {"type": "str", "default": "fast", "choices": ["fast", "full"]},
        "region": {"type": "str"},
        "token": {"type": "str", "default": "", "secret": True},
    }


def test_secret_names_are_the_params_marked_secret() -> None:
    params = ParamSet({"token": Param("", secret=True), "password": Param(secret=True), "days": 5})

    assert params.secret_names() == {"token", "password"}


def test_no_secret_names_without_secret_params() -> None:
    assert ParamSet({"days": 5}).secret_names() == set()


@pytest.mark.parametrize(
    ("name", "expected"), [("str", str), ("int", int), ("bool", bool), ("date", date)]
)
def test_type_names_map_to_python_types(name: str, expected: type) -> None:
    assert parse_type(name) is expected


def test_an_unknown_type_name_is_rejected_naming_it() -> None:
    with pytest.raises(ConfError, match="unknown param type 'decimal'"):
        parse_type("decimal")


@pytest.mark.parametrize("name", ["model_config", "schema"])
def test_any_identifier_can_name_a_param(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve({name: "a"}, {name: "b"}) == {name: "b"}
