"""`GET /api/v1/pipelines/NAME/cost`: the same figures as `reflow cost`, from the same
service, as exact decimal text; bad questions are a 4xx with one line."""

from __future__ import annotations

import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from reflow.core.cost import CostSettings
from reflow.services import accounts
from reflow.services import cost as cost_service
from tests.integration.conftest import Env
from tests.web.conftest import Api, TestClient, make_app

PRICES = CostSettings.model_validate({"currency": "EUR", "cpu_hour": "36", "memory_gib_hour": "1"})


def test_the_cost_of_a_pipelines_tries_by_date_and_by_task(env: Env, tmp_path: Path) -> None:
    env = replace(env, settings=env.settings.model_copy(update={"cost": PRICES}))
    env.write(
        "costly",
        """
        from reflow import Pipeline, Shell
        with Pipeline("costly", schedule="@daily", start_date="2024-01-01"):
            Shell("a", "true") >> Shell("b", "true")
        """,
    )
    runs = env.trigger("costly", ["2024-01-03", "2024-01-04"])
    env.drive(env.runs_done(runs), timeout=120)
    token = accounts.create_token(env.project, f"tests-{uuid.uuid4().hex[:8]}")
    with TestClient(make_app(env)) as client:
        api = Api(client, token, env)
        by_date = api.get("/pipelines/costly/cost")
        assert (by_date["by"], by_date["currency"], by_date["note"]) == ("date", "EUR", None)
        assert [line["key"][:10] for line in by_date["lines"]] == ["2024-01-03", "2024-01-04"]
        assert [line["tries"] for line in by_date["lines"]] == [2, 2]
        assert by_date["total"]["key"] is None and by_date["total"]["tries"] == 4
        total = sum(Decimal(line["cost"]) for line in by_date["lines"])
        assert Decimal(by_date["total"]["cost"]) == total > 0
        # The CLI's figures, from the same service.
        assert by_date == cost_service.cost(env.project, "costly").as_dict()

        by_task = api.get("/pipelines/costly/cost", params={"by": "task", "start": "2024-01-04"})
        assert [(line["key"], line["tries"]) for line in by_task["lines"]] == [("a", 1), ("b", 1)]

        assert api.get("/pipelines/costly/cost", status=422, params={"by": "week"})
        missing = api.get("/pipelines/nope/cost", status=404)
        assert "unknown pipeline 'nope'" in missing["detail"]
        backwards = api.get(
            "/pipelines/costly/cost",
            status=422,
            params={"start": "2024-02-01", "end": "2024-01-01"},
        )
        assert backwards["detail"] == "end 2024-01-01 is before start 2024-02-01"
