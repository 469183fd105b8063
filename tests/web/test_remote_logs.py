"""Task logs in S3 (``logs_url``), against a real S3-protocol server on loopback (moto in
server mode): a scheduler whose home is one "host" folder runs the tries and ships their
logs; a web process whose home is another folder, on the same metadata database, serves
them from S3 while they run and once they ended, secrets masked as always."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reflow.core.config import Settings
from reflow.core.naming import utcnow
from reflow.core.states import RunState
from reflow.scheduler import Scheduler, trylog
from reflow.scheduler.shipping import LogShipper
from reflow.services import accounts, history
from reflow.services import logs as log_service
from reflow.services import runs as run_service
from reflow.store.db import Database
from reflow.store.logs import remote_logs
from tests.integration.conftest import Env, wait_until
from tests.s3 import S3Server, s3
from tests.web.conftest import Api, TestClient, make_app

__all__ = ["s3"]  # the fixture

SECRET = "s3cr3t-token-8841"
SLOW = """
from reflow import Param, Pipeline, Shell
with Pipeline("slow", schedule="@daily", start_date="2024-01-01",
              params={"api_key": Param("", secret=True), "gate": ""},
              defaults={"retries": 0}):
    Shell("t", "echo first {{ params.api_key }}; "
               "while [ ! -e {{ params.gate }} ]; do echo waiting; sleep 0.3; done; "
               "echo last {{ params.api_key }}")
    Shell("quick", "echo quick {{ params.api_key }}")
"""


def host(tmp_path: Path, name: str, db_url: str, s3: S3Server) -> Env:
    """A project folder of its own ("a host"), with the shared database and logs in S3."""
    home = tmp_path / name
    home.mkdir()
    settings = Settings(
        home=home,
        database_url=db_url,
        heartbeat_interval=0.5,
        scheduler_timeout=3.0,
        parse_interval=0.2,
        logs_url=f"s3://{s3.bucket}/reflow/",
        logs_storage_options=s3.options,
        logs_ship_interval=0.2,
    )
    env = Env(home, settings, Database(db_url))
    env.write("slow", SLOW)  # each host has the pipeline files, as a deployment would
    return env


@pytest.fixture
def hosts(tmp_path: Path, db_url: str, s3: S3Server) -> Iterator[tuple[Env, Env]]:
    scheduler_host = host(tmp_path, "scheduler-host", db_url, s3)
    web_host = host(tmp_path, "web-host", db_url, s3)
    yield scheduler_host, web_host
    scheduler_host.db.dispose()
    web_host.db.dispose()


@contextmanager
def scheduler_running(env: Env) -> Iterator[Scheduler]:
    """``env``'s scheduler ticking on a thread of its own until the block ends."""
    sched = env.scheduler()
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            sched.run(stop, idle_wait=0.05)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, name="scheduler-host", daemon=True)
    thread.start()
    try:
        wait_until(lambda: sched.id is not None or bool(failures), timeout=60)  # started
        assert not failures, failures
        yield sched
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "the scheduler did not stop"
    assert not failures, failures


@contextmanager
def web_api(env: Env) -> Iterator[Api]:
    token = accounts.create_token(env.project, f"tests-{uuid.uuid4().hex[:8]}")
    with TestClient(make_app(env)) as client:
        yield Api(client, token, env)


def log_path_of(run_id: str, task: str = "t") -> str:
    return f"/pipelines/slow/runs/{run_id}/tasks/{task}/log"


def served(api: Api, path: str) -> str:
    """The log as the API serves it now ("" before its try exists)."""
    response = api.client.get("/api/v1" + path, headers=api.auth)
    if response.status_code == 404:
        return ""
    assert response.status_code == 200, response.text
    return str(response.json()["data"])


def test_a_web_process_on_another_host_serves_a_running_try_log_from_s3_then_the_whole_log(
    hosts: tuple[Env, Env], s3: S3Server, tmp_path: Path
) -> None:
    scheduler_host, web_host = hosts
    gate = tmp_path / "gate"
    with scheduler_running(scheduler_host), web_api(web_host) as api:
        (run_pk,) = web_host.trigger("slow", ["2024-01-03"], {"api_key": SECRET, "gate": str(gate)})
        run_id = web_host.run(run_pk).run_id
        path = log_path_of(run_id)

        # While the try runs: what was shipped so far, never complete, the secret masked.
        wait_until(lambda: "first ***" in served(api, path), timeout=90, every=0.2)
        partial = api.get(path)
        assert partial["state"] == "running" and partial["complete"] is False
        assert SECRET not in partial["data"]
        (attempt,) = [t for t in web_host.tries(run_pk) if t.task_id == "t"]
        key = f"reflow/slow/{run_id}/t/try-1.log"
        assert attempt.log_path == f"s3://{s3.bucket}/{key}"
        keys = s3.objects()
        assert key + ".part" in keys and key not in keys
        # The web host has no copy of its own: it read S3.
        assert not list(web_host.home.rglob("try-*.log"))
        assert (scheduler_host.settings.spool_path / f"slow/{run_id}/t/try-1.log").is_file()

        # A follower (`reflow logs -f`) started now ends once the whole log is in S3.
        run = run_service.find_run(web_host.project, str(run_pk))
        followed: list[str] = []
        follower = threading.Thread(
            target=lambda: followed.extend(
                log_service.try_log(web_host.project, run, "t").stream(follow=True, poll=0.1)
            ),
            daemon=True,
        )
        follower.start()
        gate.touch()
        wait_until(lambda: api.get(path)["complete"], timeout=90, every=0.2)
        follower.join(60)
        assert not follower.is_alive(), "the follower did not end with the try"

        whole = api.get(path)
        # Pages of it, from an offset, as the log page reads them.
        rest = api.get(path, params={"offset": 7})
        wait_until(scheduler_host.runs_done([run_pk]), timeout=90, every=0.1)
    text = whole["data"]
    assert whole["next_offset"] == whole["size"] > len(text.encode())  # secrets masked
    assert text.startswith("[reflow] ") and "first ***\n" in text and "last ***\n" in text
    assert text.rstrip().endswith("ended: success, exit code 0")
    assert SECRET not in text and "".join(followed) == text
    assert rest["offset"] == 7 and rest["data"] == text.encode()[7:].decode()
    assert scheduler_host.run(run_pk).state == RunState.SUCCESS

    # In S3: the final copy only; the scheduler's spool file is gone.
    quick_key = f"reflow/slow/{run_id}/quick/try-1.log"
    assert s3.objects() == sorted([f"reflow/slow/{run_id}/t/try-1.log", quick_key])
    assert SECRET.encode() in (s3.read(f"reflow/slow/{run_id}/t/try-1.log") or b"")
    assert not list(scheduler_host.settings.spool_path.rglob("*.log"))

    # Deleting the run deletes its logs in S3 too.
    deleted = history.delete(web_host.project, "slow", run=str(run_pk))
    assert (deleted.runs, deleted.logs) == (1, 2)
    assert s3.objects() == []


def test_an_s3_outage_never_stops_the_scheduler_and_the_log_arrives_once_s3_is_back(
    hosts: tuple[Env, Env], s3: S3Server, tmp_path: Path
) -> None:
    scheduler_host, web_host = hosts
    gate = tmp_path / "gate"
    with scheduler_running(scheduler_host), web_api(web_host) as api:
        (first,) = web_host.trigger("slow", ["2024-01-03"], {"api_key": SECRET, "gate": str(gate)})
        run_id = web_host.run(first).run_id
        wait_until(lambda: "first ***" in served(api, log_path_of(run_id)), timeout=90)

        s3.stop()
        gate.touch()
        # S3 is down: the try ends, and the scheduler runs another run to its end.
        (second,) = web_host.trigger("slow", ["2024-01-04"], {"gate": "/"})
        wait_until(scheduler_host.runs_done([first, second]), timeout=90, every=0.1)
        assert scheduler_host.run(first).state == RunState.SUCCESS
        assert scheduler_host.run(second).state == RunState.SUCCESS
        # The web process says S3 does not answer (503), in one line.
        down = api.client.get("/api/v1" + log_path_of(run_id), headers=api.auth)
        assert down.status_code == 503 and "\n" not in down.json()["detail"]

        s3.start()
        wait_until(lambda: api.get(log_path_of(run_id))["complete"], timeout=120, every=0.2)
        whole = api.get(log_path_of(run_id))["data"]
        second_id = web_host.run(second).run_id
        wait_until(lambda: api.get(log_path_of(second_id))["complete"], timeout=120, every=0.2)
    assert "first ***" in whole and "last ***" in whole and SECRET not in whole
    assert whole.rstrip().endswith("ended: success, exit code 0")
    assert not list(scheduler_host.settings.spool_path.rglob("*.log"))


def test_logs_left_by_a_scheduler_stopped_during_an_outage_are_shipped_by_the_next_one(
    hosts: tuple[Env, Env], s3: S3Server
) -> None:
    scheduler_host, web_host = hosts
    with scheduler_running(scheduler_host):
        s3.stop()
        (run_pk,) = web_host.trigger("slow", ["2024-01-03"], {"gate": "/"})
        wait_until(scheduler_host.runs_done([run_pk]), timeout=90, every=0.1)
    # Stopped while S3 was down: the logs stay in the spool folder.
    assert len(list(scheduler_host.settings.spool_path.rglob("try-*.log"))) == 2
    s3.start()
    run_id = web_host.run(run_pk).run_id
    with scheduler_running(scheduler_host), web_api(web_host) as api:
        wait_until(lambda: api.get(log_path_of(run_id))["complete"], timeout=90, every=0.2)
        wait_until(lambda: api.get(log_path_of(run_id, "quick"))["complete"], timeout=90)
        text = api.get(log_path_of(run_id))["data"]
    assert "\nfirst \n" in text and "\nlast \n" in text
    assert text.rstrip().endswith("ended: success, exit code 0")
    assert not list(scheduler_host.settings.spool_path.rglob("*.log"))


def test_a_scheduler_restarted_while_its_try_runs_adopts_it_and_ships_the_whole_log(
    hosts: tuple[Env, Env], s3: S3Server, tmp_path: Path
) -> None:
    scheduler_host, web_host = hosts
    gate = tmp_path / "gate"
    with scheduler_running(scheduler_host), web_api(web_host) as api:
        (run_pk,) = web_host.trigger("slow", ["2024-01-03"], {"api_key": SECRET, "gate": str(gate)})
        run_id = web_host.run(run_pk).run_id
        wait_until(lambda: "first ***" in served(api, log_path_of(run_id)), timeout=90)
    # Stopped: the try goes on, and its log so far is in S3.
    with scheduler_running(scheduler_host), web_api(web_host) as api:
        gate.touch()
        wait_until(lambda: api.get(log_path_of(run_id))["complete"], timeout=90, every=0.2)
        text = api.get(log_path_of(run_id))["data"]
    lines = text.splitlines()
    assert lines.index("first ***") < lines.index("last ***")
    assert any("taken over by scheduler" in line and "still runs" in line for line in lines)
    assert text.rstrip().endswith("ended: success, exit code 0") and SECRET not in text


def test_a_try_adopted_from_another_host_keeps_what_that_host_shipped(
    hosts: tuple[Env, Env], s3: S3Server
) -> None:
    """The adopting scheduler has no spool file of the try: what the first host shipped
    stays in front of what this host adds (nothing shipped is overwritten)."""
    _, here = hosts
    settings = here.settings
    remote = remote_logs(settings)
    assert remote is not None
    location = settings.log_location("slow", "manual__x", "t", 1)
    remote.put(location, b"first host: line 1\nfirst host: line 2\n", final=False)

    shipper = LogShipper(remote, settings, here.db)
    shipper.start()
    try:
        shipper.watch(7, location, adopted=True)
        spool = settings.log_file(location)
        trylog.note(spool, ["taken over by scheduler 2 on host here"], utcnow())
        key = location.removeprefix(f"s3://{s3.bucket}/")
        wanted = b"first host: line 1\nfirst host: line 2\n" + spool.read_bytes()
        wait_until(lambda: s3.read(key + ".part") == wanted, timeout=60, every=0.1)
        trylog.note(spool, ["ended: lost"], utcnow())
        wanted = b"first host: line 1\nfirst host: line 2\n" + spool.read_bytes()
        shipper.finish([7])
        wait_until(lambda: s3.read(key) == wanted, timeout=60, every=0.1)
        wait_until(lambda: s3.objects() == [key] and not spool.exists(), timeout=60)
    finally:
        shipper.stop()
