"""Late dates as users see them: `reflow runs list` and `reflow runs late`, the API's runs,
late dates and grid, and the pipeline's page, after a real scheduler (on an injected
clock) recorded the misses. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from reflow.cli.app import app
from reflow.core.states import TIState
from reflow.services import pipelines as pipeline_service
from tests.integration.test_deadlines import Clock, daemon, dated_run, gated, write

from .conftest import Env, TestClient, make_app, wait_until


@dataclass
class Late:
    env: Env
    client: TestClient
    run_id: int

    def cli(self, *args: str) -> str:
        result = CliRunner().invoke(app, [*args, "--home", str(self.env.home)])
        assert result.exit_code == 0, result.output
        return result.output

    def get(self, path: str) -> Any:
        response = self.client.get("/api/v1" + path)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def late(env: Env, tmp_path: Path) -> Iterator[Late]:
    """Pipeline ``late``: its 2024-01-05 run still runs ``load`` past load's deadline (03:00)
    and the run's (06:00); paused, 2024-01-06 gets no run and misses both too."""
    (env.home / "reflow.toml").write_text(f'database_url = "{env.settings.database}"\n')
    gate = tmp_path / "gate"
    write(env, "late", load=gated(gate), task_deadlines=(None, "03:00"))
    clock = Clock(2024, 1, 6, 0, 0, 1)
    sched = daemon(env, clock)
    sched.start()
    try:

        def load_runs() -> bool:
            sched.tick()
            run = dated_run(env, "late", "2024-01-05")
            return run is not None and env.tis(run.id)["load"].state == TIState.RUNNING

        wait_until(load_runs, timeout=60)
        run = dated_run(env, "late", "2024-01-05")
        with TestClient(make_app(env, auth=False)) as client:
            tools = Late(env, client, run.id)
            assert tools.get(f"/pipelines/late/runs/{run.id}")["run"]["late"] is False
            for when in ((2024, 1, 6, 3, 0, 5), (2024, 1, 6, 6, 0, 5)):
                clock.at(*when)
                sched.tick()
            pipeline_service.set_paused(env.project, "late", True, actor="tester", reason=None)
            clock.at(2024, 1, 7, 6, 0, 5)
            sched.tick()
            yield tools
    finally:
        gate.touch()
        sched.stop()


def test_runs_list_marks_the_late_run_with_the_deadlines_it_missed(late: Late) -> None:
    listing = late.cli("runs", "list", "late")
    (line,) = [x for x in listing.splitlines() if x.split()[:1] == [str(late.run_id)]]
    assert "late (load, run)" in line
    header = listing.splitlines()[0]
    assert header.split()[:7] == ["id", "pipeline", "logical", "date", "origin", "state", "late"]


def test_runs_show_says_which_deadlines_the_run_missed(late: Late) -> None:
    shown = late.cli("runs", "show", "late", str(late.run_id))
    assert "late: task load had not succeeded by 2024-01-06 03:00:00" in shown
    assert "late: the run had not succeeded by 2024-01-06 06:00:00" in shown


def test_runs_late_lists_the_late_dates_with_or_without_a_run(late: Late) -> None:
    rows = [x.split() for x in late.cli("runs", "late", "late").splitlines()[1:] if x.strip()]
    assert [(r[0], r[1], r[-2:]) for r in rows] == [
        ("2024-01-06", "run", ["no", "run"]),
        ("2024-01-06", "load", ["no", "run"]),
        ("2024-01-05", "run", [str(late.run_id), "running"]),
        ("2024-01-05", "load", [str(late.run_id), "running"]),
    ]
    assert "No missed deadline for late." in late.cli("runs", "late", "late", "--end", "2024-01-04")


def test_the_api_run_objects_say_they_are_late_and_which_deadlines_they_missed(
    late: Late,
) -> None:
    (listed,) = late.get("/runs?pipeline=late")["runs"]
    shown = late.get(f"/pipelines/late/runs/{late.run_id}")["run"]
    for run in (listed, shown):
        assert run["late"] is True
        assert [(m["task"], m["due_at"][:19]) for m in run["missed"]] == [
            ("load", "2024-01-06T03:00:00"),
            (None, "2024-01-06T06:00:00"),
        ]


def test_the_api_lists_a_pipelines_late_dates_even_those_without_a_run(late: Late) -> None:
    body = late.get("/pipelines/late/late")
    assert body["pipeline"] == "late"
    assert [(d["label"], d["task"], d["run"], d["run_state"]) for d in body["late"]] == [
        ("2024-01-06", None, None, None),
        ("2024-01-06", "load", None, None),
        ("2024-01-05", None, late.run_id, "running"),
        ("2024-01-05", "load", late.run_id, "running"),
    ]
    assert [d["label"] for d in late.get("/pipelines/late/late?start=2024-01-06")["late"]] == [
        "2024-01-06",
        "2024-01-06",
    ]
    assert late.client.get("/api/v1/pipelines/nope/late").status_code == 404
    assert late.client.get("/api/v1/pipelines/late/late?start=junk").status_code == 422


def test_the_pipeline_and_its_grid_show_the_deadlines_and_the_late_dates(late: Late) -> None:
    shown = late.get("/pipelines/late")
    assert shown["deadline"] == "06:00"
    assert shown["tasks"]["load"]["deadline"] == "03:00"
    assert "deadline" not in shown["tasks"]["extract"]
    (column,) = late.get("/pipelines/late/grid")["runs"]
    assert (column["id"], column["late"], column["late_tasks"]) == (late.run_id, True, ["load"])


def test_the_grid_page_marks_late_dates_and_cells_with_text(late: Late) -> None:
    response = late.client.get("/pipelines/late")
    assert response.status_code == 200
    page = response.text
    assert 'class="date late"' in page and '<span class="late-mark">late</span>' in page
    assert "cell run s-running late" in page and "(late)" in page  # the run's cell
    assert "cell s-running late" in page and "deadline missed" in page  # load's cell
    assert "Missed deadlines" in page and "no run" in page
    assert "deadline 06:00" in page
