"""SparkSubmit through the real scheduler and real Spark: the example event ETL, timeouts,
a standalone cluster, and a machine without Java.

Expected outputs are computed here in plain Python from the generated raw files, following
the late-data rule of examples/events/pipelines/events.py, never by Spark.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reflow.core.states import FailureReason, RunState, TIState
from reflow.core.trylines import task_output
from reflow.tasks.spark import NO_JAVA, parse_app_id

from .conftest import Env

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "events"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
REQUIRED = ("event_id", "event_time", "user_id", "event_type", "amount")
D1, D2, D3 = date(2024, 1, 1), date(2024, 1, 2), date(2024, 1, 3)

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture(autouse=True)
def quick_jvm_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Driver JVMs that start fast: the test jobs are seconds long (inherited by the tries)."""
    monkeypatch.setenv("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")


def _example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_events_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate_module = _example("generate")
checks_module = _example("checks")
summary_module = _example("summary")


# -- the late-data rule, in plain Python -------------------------------------------------------


def _classify(line: str, landed: date) -> tuple[str | None, dict[str, Any] | None]:
    """(reason, None) for a bad line, (None, record) for a valid event."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return "invalid_json", None
    if not isinstance(record, dict):
        return "invalid_json", None
    if any(record.get(field) is None for field in REQUIRED):
        return "missing_field", None
    amount = record["amount"]
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        return "invalid_amount", None
    try:
        when = datetime.strptime(record["event_time"], TIME_FORMAT)
    except (TypeError, ValueError):
        return "invalid_event_time", None
    if when.date() not in (landed, landed - timedelta(days=1)):
        return "outside_window", None
    return None, {**record, "date": when.date()}


def _lines(landing: Path, day: date) -> list[str]:
    folder = landing / f"date={day}"
    return [x for f in sorted(folder.glob("*.jsonl")) for x in f.read_text().splitlines()]


def expected_events(landing: Path, ds: date) -> dict[str, dict[str, Any]]:
    """The valid events dated ds, from folders ds and ds+1, one per event_id."""
    out: dict[str, dict[str, Any]] = {}
    for landed in (ds, ds + timedelta(days=1)):
        if not (landing / f"date={landed}").is_dir():
            continue
        for line in _lines(landing, landed):
            _, record = _classify(line, landed)
            if record is not None and record["date"] == ds:
                out[record["event_id"]] = {k: record[k] for k in REQUIRED}
    return out


def expected_quarantine(landing: Path, ds: date) -> Counter[str]:
    """Reasons of the bad lines of folder ds."""
    reasons = (_classify(line, ds)[0] for line in _lines(landing, ds))
    return Counter(r for r in reasons if r is not None)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    pos = p * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def expected_metrics(events: dict[str, dict[str, Any]], ds: date) -> list[dict[str, Any]]:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events.values():
        by_type.setdefault(event["event_type"], []).append(event)
    rows = []
    for kind, group in sorted(by_type.items()):
        amounts = [float(e["amount"]) for e in group]
        rows.append(
            {
                "date": ds.isoformat(),
                "event_type": kind,
                "events": len(group),
                "users": len({e["user_id"] for e in group}),
                "amount_sum": pytest.approx(sum(amounts), abs=1e-6),
                "amount_p50": pytest.approx(_percentile(amounts, 0.5), abs=1e-9),
                "amount_p90": pytest.approx(_percentile(amounts, 0.9), abs=1e-9),
                "amount_p99": pytest.approx(_percentile(amounts, 0.99), abs=1e-9),
            }
        )
    return rows


# -- reading the outputs -----------------------------------------------------------------------


def read_events(warehouse: Path, ds: date) -> dict[str, dict[str, Any]]:
    table = pq.read_table(warehouse / "events" / f"date={ds}")
    out = {}
    for row in table.to_pylist():
        row["event_time"] = row["event_time"].strftime(TIME_FORMAT)
        assert row["event_id"] not in out, "duplicate event_id in the output"
        out[row["event_id"]] = row
    return out


def read_quarantine(warehouse: Path, ds: date) -> Counter[str]:
    return Counter(pq.read_table(warehouse / "quarantine" / f"date={ds}")["reason"].to_pylist())


def read_metrics(warehouse: Path, ds: date) -> list[dict[str, Any]]:
    rows = pq.read_table(warehouse / "daily_metrics" / f"date={ds}").to_pylist()
    return sorted(({"date": ds.isoformat(), **r} for r in rows), key=lambda r: r["event_type"])


def snapshot(warehouse: Path, ds: date) -> dict[str, tuple[bytes, int]]:
    """Every file of partition date=ds of every table: its bytes and mtime."""
    files = sorted(warehouse.glob(f"*/date={ds}/*"))
    assert files
    return {str(f): (f.read_bytes(), f.stat().st_mtime_ns) for f in files}


def _try(env: Env, run_pk: int, task_id: str) -> Any:
    (attempt,) = [t for t in env.tries(run_pk) if t.task_id == task_id]
    return attempt


def log_of(env: Env, run_pk: int, task_id: str) -> str:
    return Path(_try(env, run_pk, task_id).log_path).read_text()


def check_day(warehouse: Path, landing: Path, ds: date) -> None:
    events = expected_events(landing, ds)
    assert read_events(warehouse, ds) == events
    assert read_quarantine(warehouse, ds) == expected_quarantine(landing, ds)
    assert read_metrics(warehouse, ds) == expected_metrics(events, ds)


def install_example(home: Path) -> None:
    """The example folder as the project's home (its jobs, pipelines and checks)."""
    ignore = shutil.ignore_patterns("__pycache__", "data", ".reflow")
    for name in ("jobs", "pipelines"):
        shutil.copytree(EXAMPLE / name, home / name, ignore=ignore, dirs_exist_ok=True)
    shutil.copy(EXAMPLE / "checks.py", home / "checks.py")


# -- the example pipeline ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.timeout(600)
@sqlite_only
def test_the_events_pipeline_output_matches_the_raw_data_and_a_rerun_replaces_only_its_day(
    env: Env,
) -> None:
    install_example(env.home)
    landing, warehouse = env.home / "data" / "landing", env.home / "data" / "warehouse"
    generate_module.generate(landing, D1, 3, seed=7)

    run_pks = env.trigger("events", [D1.isoformat(), D2.isoformat()])
    env.drive(env.runs_done(run_pks), timeout=300)

    for run_pk in run_pks:
        tis = env.tis(run_pk)
        assert {t: ti.state for t, ti in tis.items()} == {
            "ingest": TIState.SUCCESS,
            "aggregate": TIState.SUCCESS,
            "quality": TIState.SUCCESS,
        }, [log_of(env, run_pk, t)[-3000:] for t, ti in tis.items() if ti.state != "success"]
        assert env.run(run_pk).state == RunState.SUCCESS
    for ds in (D1, D2):
        check_day(warehouse, landing, ds)
    # The late events of D1 came from D2's folder; D2's own late events went to D1.
    late = {e for e in expected_events(landing, D1) if e not in _ids(landing, D1)}
    assert late and late <= set(read_events(warehouse, D1))
    assert summary_module.summarize(warehouse, D1, D2) == [
        *expected_metrics(expected_events(landing, D1), D1),
        *expected_metrics(expected_events(landing, D2), D2),
    ]
    app_id = parse_app_id(log_of(env, run_pks[0], "ingest"))
    assert app_id is not None and app_id.startswith("local-")
    assert _try(env, run_pks[0], "ingest").app_id == app_id  # recorded by the scheduler

    # New data for D2 (another seed), re-processed: D2's partitions change, D1's do not.
    before_d1, before_d2 = snapshot(warehouse, D1), snapshot(warehouse, D2)
    generate_module.generate(landing, D2, 1, seed=99)
    (rerun,) = env.trigger("events", [D2.isoformat()], {"force_reprocess": True})
    env.drive(env.runs_done([rerun]), timeout=300)

    assert env.run(rerun).state == RunState.SUCCESS
    assert snapshot(warehouse, D1) == before_d1
    after_d2 = snapshot(warehouse, D2)
    assert not set(after_d2) & set(before_d2)  # every file of the partition replaced
    check_day(warehouse, landing, D2)


def _ids(landing: Path, day: date) -> set[str]:
    """Event ids of the valid lines in folder ``day``."""
    out = set()
    for line in _lines(landing, day):
        _, record = _classify(line, day)
        if record is not None:
            out.add(record["event_id"])
    return out


# -- timeouts ----------------------------------------------------------------------------------


def _java_processes(marker: str) -> list[psutil.Process]:
    """Processes carrying ``REFLOW_TEST_MARKER=marker`` (inherited by everything a try
    starts: spark-submit, the driver JVM, the Python driver)."""
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.environ().get("REFLOW_TEST_MARKER") == marker:
                found.append(proc)
        except psutil.Error:
            continue
    return found


TIMEOUT = 3600


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.timeout(300)
@sqlite_only
def test_a_spark_task_timeout_kills_the_driver_jvm_and_leaves_no_process(
    env: Env, tmp_path: Path
) -> None:
    marker = f"spark-timeout-{tmp_path.name}"
    started = tmp_path / "session-started"
    app = tmp_path / "sleepy.py"
    app.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pyspark.sql import SparkSession\n"
        "spark = SparkSession.builder.getOrCreate()\n"
        "spark.range(10).count()\n"
        "Path(sys.argv[1]).touch()\n"
        "time.sleep(300)\n"
    )
    env.write(
        "sleepy",
        f"""
        from reflow import Pipeline, SparkSubmit
        with Pipeline("sleepy", schedule="@daily", start_date="2024-01-01"):
            SparkSubmit("spin", {str(app)!r}, application_args=[{str(started)!r}],
                        conf={{"spark.ui.enabled": False}}, driver_memory="512m",
                        env={{"REFLOW_TEST_MARKER": {marker!r}}},
                        timeout={TIMEOUT}, kill_grace=2, retries=0)
        """,
    )
    (run_pk,) = env.trigger("sleepy", ["2024-01-01"])
    seen: set[str] = set()
    last_look = [0.0]
    # The timeout fires once the Spark session is up, however long a loaded machine takes
    # to start it: the scheduler's clock jumps past the task's deadline at that moment.
    offset = [timedelta(0)]
    jumped_at = [0.0]

    def clock() -> datetime:
        return datetime.now(UTC) + offset[0]

    def done() -> bool:
        if time.monotonic() - last_look[0] > 0.5:
            last_look[0] = time.monotonic()
            for proc in _java_processes(marker):
                try:
                    seen.add(proc.name())
                except psutil.Error:
                    continue
        if not jumped_at[0] and started.exists() and "java" in seen:
            offset[0] = timedelta(seconds=TIMEOUT + 1)
            jumped_at[0] = time.monotonic()
        return env.runs_done([run_pk])()

    env.drive(done, timeout=280, clock=clock)
    stopped_after = time.monotonic() - jumped_at[0]

    assert started.exists(), log_of(env, run_pk, "spin")[-3000:]  # the session was up
    assert "java" in seen
    ti = env.tis(run_pk)["spin"]
    assert (ti.state, ti.failure_reason) == (TIState.FAILED, FailureReason.TIMED_OUT)
    # SIGTERM at the deadline, SIGKILL after the 2 s grace; a loaded machine adds a margin.
    assert stopped_after <= 2 + 10
    assert _java_processes(marker) == []


# -- a standalone cluster ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _master_state(ui_port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=1) as response:
            return dict(json.loads(response.read()))
    except (OSError, ValueError):
        return None


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[str]:
    """A Spark standalone master and one worker (1 core, 512m) from the PySpark install."""
    from pyspark.find_spark_home import _find_spark_home

    spark_class = os.path.join(_find_spark_home(), "bin", "spark-class")
    port, ui, worker_ui = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> None:
        with (tmp_path / f"{name}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [spark_class, *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )

    def wait_for(what: str, check: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            assert all(p.poll() is None for p in procs), f"{what}: a Spark daemon exited"
            time.sleep(0.2)
        pytest.fail(f"Spark standalone: {what} not ready within {timeout}s")

    try:
        start(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui),
        )  # fmt: skip
        wait_for("master", lambda: _master_state(ui) is not None)
        start(
            "worker",
            "org.apache.spark.deploy.worker.Worker",
            f"spark://127.0.0.1:{port}",
            "--host", "127.0.0.1", "--cores", "1", "--memory", "512m",
            "--webui-port", str(worker_ui), "--work-dir", str(tmp_path / "work"),
        )  # fmt: skip
        wait_for(
            "worker",
            lambda: any(
                w["state"] == "ALIVE" for w in (_master_state(ui) or {}).get("workers", [])
            ),
        )
        yield f"spark://127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            # Each daemon leads its own process group: the group holds it and its children
            # (the worker's executors).
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def write_events(warehouse: Path, ds: date, rows: list[dict[str, Any]]) -> None:
    schema = pa.schema(
        [
            ("event_id", pa.string()),
            ("event_time", pa.timestamp("us", tz="UTC")),
            ("user_id", pa.string()),
            ("event_type", pa.string()),
            ("amount", pa.float64()),
        ]
    )
    folder = warehouse / "events" / f"date={ds}"
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, folder / "part-00000.parquet")


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.timeout(300)
@sqlite_only
def test_the_aggregate_job_runs_on_a_standalone_cluster(
    env: Env, standalone: str, tmp_path: Path
) -> None:
    warehouse = tmp_path / "warehouse"
    events = {
        f"e{i}": {
            "event_id": f"e{i}",
            "event_time": datetime(2024, 1, 2, i % 24, tzinfo=UTC),
            "user_id": f"u{i % 7}",
            "event_type": ("view", "purchase", "refund")[i % 3],
            "amount": round(i * 1.25 - 20, 2),
        }
        for i in range(60)
    }
    write_events(warehouse, D2, list(events.values()))
    env.write(
        "cluster",
        f"""
        from reflow import Pipeline, SparkSubmit
        with Pipeline("cluster", schedule="@daily", start_date="2024-01-01"):
            SparkSubmit(
                "aggregate",
                {str(EXAMPLE / "jobs" / "aggregate.py")!r},
                master={standalone!r},
                application_args=["--input", {str(warehouse / "events")!r},
                                  "--output", {str(warehouse / "daily_metrics")!r},
                                  "--ds", "{{{{ ds }}}}"],
                conf={{"spark.ui.enabled": False, "spark.sql.shuffle.partitions": 2}},
                driver_memory="1g", executor_memory="512m", total_executor_cores=1,
                env={{"SPARK_LOCAL_IP": "127.0.0.1"}},
                timeout=120, retries=0,
            )
        """,
    )

    (run_pk,) = env.trigger("cluster", [D2.isoformat()])
    env.drive(env.runs_done([run_pk]), timeout=150)

    log = log_of(env, run_pk, "aggregate")
    assert env.run(run_pk).state == RunState.SUCCESS, log[-3000:]
    app_id = parse_app_id(log)
    assert app_id is not None and app_id.startswith("app-"), log[-3000:]
    assert _try(env, run_pk, "aggregate").app_id == app_id
    assert standalone in task_output(log)  # it ran on the cluster, not locally
    assert read_metrics(warehouse, D2) == expected_metrics(events, D2)


# -- a machine without Java --------------------------------------------------------------------


def test_without_java_the_try_fails_with_the_reason_in_its_log(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_java = tmp_path / "bin"
    no_java.mkdir()
    monkeypatch.setenv("PATH", str(no_java))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    env.write(
        "needs_java",
        """
        from reflow import Pipeline, SparkSubmit
        with Pipeline("needs_java", schedule="@daily", start_date="2024-01-01"):
            SparkSubmit("job", "job.py", retries=0)
        """,
    )

    (run_pk,) = env.trigger("needs_java", ["2024-01-01"])
    env.drive(env.runs_done([run_pk]), timeout=30)

    ti = env.tis(run_pk)["job"]
    assert (ti.state, ti.failure_reason) == (TIState.FAILED, FailureReason.ERROR)
    assert env.run(run_pk).state == RunState.FAILED
    lines = log_of(env, run_pk, "job").splitlines()
    assert all(line.startswith("[reflow] ") for line in lines)  # no command ever ran
    assert lines[-1].endswith(f" ended: could not start the try: {NO_JAVA}")


# -- the example's own pieces, without Spark ---------------------------------------------------


def test_generated_data_is_deterministic_per_seed_and_day(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate_module.generate(a, D1, 3, seed=7, events_per_day=500)
    generate_module.generate(b, D2, 1, seed=7, events_per_day=500)  # one day alone
    assert _lines(a, D2) == _lines(b, D2)

    generate_module.generate(a, D2, 1, seed=8, events_per_day=500)
    assert _lines(a, D2) != _lines(b, D2)
    assert len(list((a / f"date={D2}").glob("*.jsonl"))) == 2  # old files replaced


def test_generated_data_has_late_duplicate_and_malformed_records(tmp_path: Path) -> None:
    generate_module.generate(tmp_path, D1, 2, seed=7, events_per_day=1000)

    lines = _lines(tmp_path, D2)
    reasons = expected_quarantine(tmp_path, D2)
    assert set(reasons) == {"invalid_json", "missing_field", "invalid_amount", "invalid_event_time"}
    valid = [r for r in (_classify(x, D2)[1] for x in lines) if r is not None]
    assert sum(r["date"] == D1 for r in valid) == 30  # 3 % late
    assert len(valid) - len({r["event_id"] for r in valid}) == 10  # 1 % duplicated
    assert len(expected_events(tmp_path, D1)) == 970 + 30


def test_the_quality_check_names_every_failed_check(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse"
    rows = [
        {
            "event_id": "same",
            "event_time": datetime(2024, 1, 2, tzinfo=UTC),
            "user_id": None,
            "event_type": "view",
            "amount": 1.0,
        }
    ] * 4
    write_events(warehouse, D2, rows)
    params = {"output_path": str(warehouse), "min_rows": 10}

    with pytest.raises(checks_module.QualityCheckFailed) as raised:
        checks_module.quality(D2.isoformat(), params)

    assert str(raised.value) == (
        "2024-01-02: 4 check(s) failed: events: 4 rows, expected at least 10; "
        "events: user_id is null in 100.0% of rows (max 0%); events: 3 duplicate event_id; "
        "daily_metrics: no partition for the day"
    )


def test_the_example_pipeline_loads_with_spark_tasks() -> None:
    from reflow.core.discovery import load_file

    (pipeline,) = load_file(EXAMPLE / "pipelines" / "events.py")

    assert pipeline.name == "events" and pipeline.max_active_runs == 2
    assert pipeline.topological() == ["ingest", "aggregate", "quality"]
    assert [pipeline.tasks[t].kind for t in pipeline.topological()] == ["spark", "spark", "python"]
    assert set(pipeline.params.params) == {
        "force_reprocess",
        "input_path",
        "output_path",
        "min_rows",
    }
