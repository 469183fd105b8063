"""The web server's /metrics (protected like the API), /healthz and /readyz (open, saying
nothing about the database), over a real project on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_URL

from .conftest import Api, Env, TestClient, make_app, write_daily


def parse(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed by prometheus_client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def test_metrics_need_a_token_like_the_api_and_report_the_runs(api: Api) -> None:
    client = api.client
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert "reflow_runs" not in refused.text
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401

    run_ids = api.env.trigger("daily", ["2024-01-02"])
    api.drive(run_ids)
    response = client.get("/metrics", headers=api.auth)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse(response.text)
    assert m[("reflow_runs", (("pipeline", "daily"), ("state", "success")))] == 1
    assert m[("reflow_runs", (("pipeline", "daily"), ("state", "running")))] == 0
    for state in ("pending", "scheduled", "queued", "running", "up_for_retry"):
        assert m[("reflow_task_instances", (("pipeline", "daily"), ("state", state)))] == 0
    assert m[("reflow_queue_depth", (("pipeline", "daily"),))] == 0
    assert ("process_resident_memory_bytes", ()) in m
    # The scheduler stopped cleanly: no registered scheduler, no heartbeat series.
    assert not [k for k in m if k[0] == "reflow_scheduler_heartbeat_age_seconds"]


def test_without_auth_the_metrics_are_open_as_the_api_is(env: Env) -> None:
    env.write("daily", "from reflow import Pipeline, Shell\nPipeline('daily', schedule=None)\n")
    with TestClient(make_app(env, auth=False)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert "reflow_runs" in response.text


def test_the_probes_need_no_login_and_say_nothing_of_the_database(api: Api) -> None:
    client = api.client
    for path in ("/healthz", "/readyz"):
        response = client.get(path)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ok"
        assert response.headers["cache-control"] == "no-store"
        assert api.env.settings.database not in response.text
    schema = client.get("/api/v1/openapi.json", headers=api.auth).json()
    assert not {"/metrics", "/healthz", "/readyz"} & set(schema["paths"])


def test_readyz_is_503_while_the_database_cannot_be_reached_then_200_again(env: Env) -> None:
    write_daily(env)
    with TestClient(make_app(env, auth=False)) as client:
        assert client.get("/readyz").status_code == 200
        with unreachable(env):
            response = client.get("/readyz")
            assert response.status_code == 503
            assert response.json() == {
                "status": "unavailable",
                "detail": "the database cannot be read",
            }
            assert client.get("/healthz").status_code == 200  # the process itself is fine
            # A scrape answers at once: the process's metrics, not the store's.
            scraped = client.get("/metrics")
            assert scraped.status_code == 200
            assert "process_cpu_seconds_total" in scraped.text
            assert "reflow_runs{" not in scraped.text
        assert client.get("/readyz").status_code == 200
        assert "reflow_runs{" in client.get("/metrics").text


@contextmanager
def unreachable(env: Env) -> Iterator[None]:
    """The project's database cannot be opened (SQLite: a folder where its file was, as
    when a volume is not mounted) or refuses connections (PostgreSQL: the database stops
    accepting connections and its sessions are ended), then comes back."""
    url = make_url(env.settings.database)
    if url.drivername.startswith("sqlite"):
        path = env.home.parent / "reflow.db"
        assert url.database == str(path)
        aside = env.home.parent / "aside"
        aside.mkdir()
        env.db.dispose()  # the last connection closed: SQLite folds its WAL file back in
        files = [p for p in path.parent.glob("reflow.db*") if p.is_file()]
        for file in files:
            file.rename(aside / file.name)
        path.mkdir()
        try:
            yield
        finally:
            path.rmdir()
            for file in files:
                (aside / file.name).rename(file)
            shutil.rmtree(aside)
        return
    name = url.database
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")

    def run(sql: str, **params: Any) -> None:
        with admin.connect() as conn:
            conn.execute(text(sql), params)

    try:
        run(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        run(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name",
            name=name,
        )
        try:
            yield
        finally:
            run(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    finally:
        admin.dispose()
