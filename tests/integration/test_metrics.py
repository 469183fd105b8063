"""The scheduler's /metrics, /healthz and /readyz, scraped over HTTP from a real scheduler
running real tries (SQLite and PostgreSQL), and parsed as Prometheus reads them."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reflow.core.config import Settings
from reflow.core.errors import ConfigError
from reflow.core.states import RunState
from reflow.launchers.local import LocalLauncher
from reflow.scheduler import Scheduler
from reflow.scheduler.probes import ProbeServer
from reflow.store.db import Database
from tests.pgserver import PrivatePostgres
from tests.pgserver import private_postgres as private_postgres

from .conftest import Env, wait_until


def get(url: str, timeout: float = 30) -> tuple[int, str]:
    """GET ``url``: (status, body), whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}, parsed by prometheus_client's own parser."""
    status, text = get(url + "/metrics")
    assert status == 200, text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist)."""
    wanted = set(labels.items())
    found = [v for key, v in samples.get(name, {}).items() if wanted <= set(key)]
    return float(sum(found))


@pytest.fixture
def probes() -> Iterator[ProbeServer]:
    server = ProbeServer("127.0.0.1", 0)
    yield server
    server.close()


def test_the_metrics_endpoint_reports_what_the_scheduler_did(
    env: Env, tmp_path: Path, probes: ProbeServer
) -> None:
    marker = tmp_path / "failed-once"
    env.write(
        "observed",
        f"""
        from reflow import Pipeline, Shell
        with Pipeline("observed", schedule=None, defaults={{"retries": 1, "retry_delay": 0}}):
            ok = Shell("ok", "true")
            flaky = Shell("flaky", "[ -f {marker} ] || {{ touch {marker}; exit 1; }}")
            ok >> flaky
        """,
    )
    env.write(
        "slow",
        """
        from reflow import Pipeline, Shell
        with Pipeline("slow", schedule=None, defaults={"retries": 0}):
            Shell("sleepy", "sleep 60", timeout=0.5, kill_grace=1)
        """,
    )
    run_pks = env.trigger("observed", ["2024-01-01"]) + env.trigger("slow", ["2024-01-01"])
    sched = env.scheduler()
    probes.serve(sched)
    seen: dict[str, int] = {}

    def done() -> bool:
        # Between two ticks, on the scheduler's thread: the probes answer from theirs.
        if not seen and sched.id is not None:
            seen["healthz"] = get(probes.url + "/healthz")[0]
            seen["readyz"] = get(probes.url + "/readyz")[0]
        return env.runs_done(run_pks)()

    env.drive(done, timeout=90, scheduler=sched)
    assert seen == {"healthz": 200, "readyz": 200}
    assert env.run(run_pks[0]).state == RunState.SUCCESS
    assert env.run(run_pks[1]).state == RunState.FAILED

    m = scrape(probes.url)
    tries = {pk: len(env.tries(pk)) for pk in run_pks}
    assert tries == {run_pks[0]: 3, run_pks[1]: 1}  # ok, flaky twice; sleepy
    # Every try made was started by the launcher, and counted once.
    assert value(m, "reflow_launches_total", pipeline="observed") == 3
    assert value(m, "reflow_launches_total", pipeline="slow") == 1
    assert value(m, "reflow_launch_errors_total") == 0
    assert value(m, "reflow_retries_total", pipeline="observed", task="flaky") == 1
    assert value(m, "reflow_retries_total", pipeline="slow") == 0
    assert value(m, "reflow_timeouts_total", pipeline="slow", kind="task") == 1
    assert value(m, "reflow_lost_tries_total") == 0
    # One duration per try that ran, per task.
    for task, count in (("ok", 1), ("flaky", 2)):
        key = "reflow_try_duration_seconds_count"
        assert value(m, key, pipeline="observed", task=task) == count
    assert value(m, "reflow_try_duration_seconds_count", pipeline="slow", task="sleepy") == 1
    assert value(m, "reflow_try_duration_seconds_sum", pipeline="slow", task="sleepy") >= 0.5
    # Runs by state, read from the store at the scrape; zeros for the unfinished states.
    assert value(m, "reflow_runs", pipeline="observed", state="success") == 1
    assert value(m, "reflow_runs", pipeline="slow", state="failed") == 1
    assert ("reflow_runs", (("pipeline", "slow"), ("state", "running"))) in [
        (name, key) for name, series in m.items() for key in series
    ]
    assert value(m, "reflow_runs", state="running") == 0
    assert value(m, "reflow_task_instances", state="running") == 0
    assert value(m, "reflow_queue_depth", pipeline="observed") == 0
    # The tick and the scheduler's transactions were timed.
    assert value(m, "reflow_scheduler_tick_duration_seconds_count") > 0
    assert value(m, "reflow_db_write_duration_seconds_count") > 0
    # Stopped cleanly: no heartbeat of it is reported any more; the process metrics are.
    assert value(m, "reflow_scheduler_heartbeat_age_seconds", scheduler=str(sched.id)) == 0
    assert value(m, "process_cpu_seconds_total") > 0
    assert get(probes.url + "/nothing")[0] == 404


def test_the_store_gauges_follow_work_in_progress(
    env: Env, tmp_path: Path, probes: ProbeServer
) -> None:
    """While a try runs and another waits for a slot: running, queued, queue depth and the
    scheduler's heartbeat, each read at the scrape."""
    release = tmp_path / "release"
    env.settings = env.settings.model_copy(update={"pools": {"slow": 1}})
    env.write(
        "busy",
        f"""
        from reflow import Pipeline, Shell
        with Pipeline("busy", schedule=None, max_active_tasks=1):
            Shell("a", "while [ ! -f {release} ]; do sleep 0.05; done")
            Shell("b", "while [ ! -f {release} ]; do sleep 0.05; done", pool="slow")
        """,
    )
    (run_pk,) = env.trigger("busy", ["2024-01-01"])
    sched = env.scheduler()
    probes.serve(sched)
    looked: list[dict[str, Any]] = []

    def done() -> bool:
        if not looked:
            m = scrape(probes.url)
            if value(m, "reflow_task_instances", pipeline="busy", state="running") == 1:
                looked.append(m)
                release.touch()
        return env.runs_done([run_pk])()

    env.drive(done, timeout=90, scheduler=sched)
    (m,) = looked
    assert value(m, "reflow_runs", pipeline="busy", state="running") == 1
    assert value(m, "reflow_queue_depth", pipeline="busy") == 1  # b waits for a's slot
    assert value(m, "reflow_task_instances", pipeline="busy", state="scheduled") == 1
    assert value(m, "reflow_pool_queue_depth", pool="slow") == 1
    assert value(m, "reflow_pool_slots", pool="slow") == 1
    assert value(m, "reflow_notifications", state="unrouted") == 0
    ages = m["reflow_scheduler_heartbeat_age_seconds"]
    ((labels, age),) = [(k, v) for k, v in ages.items() if ("scheduler", str(sched.id)) in k]
    assert dict(labels)["host"] == sched.host
    assert 0 <= age < 60


def test_a_port_in_use_is_one_clear_error() -> None:
    with ProbeServer("127.0.0.1", 0) as first, pytest.raises(ConfigError) as caught:
        ProbeServer("127.0.0.1", first.port)
    message = str(caught.value)
    assert message.startswith(f"cannot serve metrics on 127.0.0.1:{first.port}: ")
    assert "\n" not in message


# -- a database outage: live, not ready, and every answer at once ------------------------------
@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("before_first_tick", [False, True], ids=["while-ticking", "first-tick"])
def test_during_a_database_outage_the_scheduler_is_live_but_not_ready(
    private_postgres: PrivatePostgres, tmp_path: Path, before_first_tick: bool
) -> None:
    """Also when the outage begins before the loop's first tick has ended: that tick waits
    for the database, and liveness judges it from the loop's start (it once said
    "starting" for ever, so a loop stuck in its first tick was never restarted)."""
    server = private_postgres
    url = server.create_database(f"db_{uuid.uuid4().hex[:10]}")
    db = Database(url, outage_timeout=None)  # as the daemon: rides out any outage
    home = tmp_path / "project"
    (home / "pipelines").mkdir(parents=True)
    settings = Settings(home=home, database_url=url, heartbeat_interval=0.5, scheduler_timeout=2.0)
    sched = Scheduler(db, settings, LocalLauncher(settings.runtime_path))
    stop = threading.Event()
    answers: list[tuple[str, int, float]] = []
    details: list[str] = []
    failure: list[BaseException] = []

    def probe(path: str) -> int:
        began = time.monotonic()
        status, body = get(probes.url + path)
        answers.append((path, status, time.monotonic() - began))
        assert str(server.port) not in body  # nothing about the database
        details.append(json.loads(body)["detail"])
        return status

    def outage() -> None:
        try:
            if not before_first_tick:
                wait_until(lambda: probe("/readyz") == 200, timeout=60, every=0.1)
                server.stop()
            wait_until(lambda: probe("/readyz") == 503, timeout=30, every=0.1)

            # The loop waits for the database past scheduler_timeout: still live.
            def stuck() -> bool:
                at = sched.metrics.loop_at
                return db.outage_since is not None and at is not None and time.monotonic() - at > 3

            wait_until(stuck, timeout=30, every=0.1)
            assert probe("/healthz") == 200
            assert details[-1] == "waiting for the database to answer again"
            server.start()
            wait_until(lambda: probe("/readyz") == 200, timeout=60, every=0.2)
        except BaseException as exc:
            failure.append(exc)
        finally:
            # The database back before the loop stops: a daemon's stop waits for it.
            server.start()
            stop.set()

    probes = ProbeServer("127.0.0.1", 0)
    try:
        probes.serve(sched)
        if before_first_tick:
            sched.start()  # registered: ready
            assert probe("/readyz") == 200
            server.stop()  # and the loop's first tick meets the outage
        helper = threading.Thread(target=outage)
        helper.start()
        sched.run(stop, idle_wait=0.05)
        helper.join()
    finally:
        probes.close()
        server.start()
        db.dispose()
    if failure:
        raise failure[0]
    # Every probe answered well within a kubelet's timeout, outage or not.
    assert max(seconds for _, _, seconds in answers) < 12
    statuses = [(path, status) for path, status, _ in answers]
    assert ("/readyz", 503) in statuses and ("/healthz", 503) not in statuses
