"""The API fuzzed from its own OpenAPI schema: whatever the input, never a server error,
and every response matches the schema (status code, content type, body)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from reflow.services import accounts

from .conftest import DAILY, Env, make_app

# The pipeline is called like the schema's examples, so that the fuzzer reaches real rows.
EVENTS = DAILY.replace('"daily"', '"events"').replace('Shell("a"', 'Shell("extract"')


@pytest.fixture
def fuzz_env(env: Env) -> tuple[Env, str]:
    """The project of the `env` fixture (SQLite, PostgreSQL) with a pipeline and a run."""
    env.write("events", EVENTS)
    token = accounts.create_token(env.project, "fuzz")
    env.trigger("events", ["2024-01-01"], {"rows": 3})
    return env, token


REAL = {"name": "events", "run": "1", "task": "extract", "backfill_id": 1}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_the_api_never_fails_whatever_the_input(fuzz_env: tuple[Env, str]) -> None:
    env, token = fuzz_env
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", make_app(env))
    headers = {"Authorization": f"Bearer {token}"}
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        real = {k: v for k, v in REAL.items() if k in names}
        strategies = [operation.as_strategy(mode) for mode in GenerationMode]
        if real:  # also with names that exist, to get past the 404s
            strategies += [
                operation.as_strategy(mode, path_parameters=real) for mode in GenerationMode
            ]

        @given(case=st.one_of(strategies))
        @settings(
            max_examples=int(os.environ.get("REFLOW_FUZZ_EXAMPLES", "30")),
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=os.environ.get("REFLOW_FUZZ_RANDOM") is None,
            database=None,
        )
        def check(case: Any) -> None:
            response = case.call(headers=headers)
            case.validate_response(response, checks=CHECKS, headers=headers)

        check()
