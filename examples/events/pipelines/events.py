"""Daily event ETL: raw JSON lines in; clean events, quarantined lines and metrics out.

    landing/date=D/*.jsonl ─ ingest ─┬─▶ warehouse/events/date=D       clean, de-duplicated
      (+ landing/date=D+1)           └─▶ warehouse/quarantine/date=D   bad lines + reason
    warehouse/events/date=D ─ aggregate ─▶ warehouse/daily_metrics/date=D
    quality: row count, null rates, duplicates, metrics = events, quarantine share

Late data. A line lands in the folder of the day it was *received*; some events arrive a
day late (an event of D lands in folder D+1). The rule: **the run for D owns exactly the
partitions date=D** of every output, and nothing else:

- ``events/date=D`` holds the valid events whose event_time (UTC) falls on D, taken from
  folder D and from folder D+1 (late arrivals) when that folder exists; duplicates
  (same event_id, exact re-deliveries) are kept once. Events of D-1 found in folder D
  belong to the run for D-1, which reads folder D for them.
- ``quarantine/date=D`` holds the bad lines of folder D (by landing day: a bad line has no
  trustworthy event date), with a reason. A valid event dated neither on its landing day
  nor the day before is quarantined as ``outside_window``.
- ``daily_metrics/date=D`` is computed from ``events/date=D`` only.

So two days never write the same partition (runs of neighbouring days may run at the same
time, up to ``max_active_runs``), and re-running D replaces exactly D's partitions
(dynamic partition overwrite), whatever else was written meanwhile. The scheduled run for
D starts when D ends, so it sees the late events received by then; to take in the rest,
re-process D once folder D+1 is complete:

    reflow trigger events --date 2024-01-02 --conf '{"force_reprocess": true}' --wait

Without ``force_reprocess``, ingest skips a day whose events partition exists (a re-run
then only recomputes the metrics and the checks).

Paths are relative to the project folder (the tries run there). Spark settings suit a
small machine; on a cluster set ``REFLOW_SPARK_MASTER`` (e.g. ``spark://host:7077``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from reflow import Param, Pipeline, Python, SparkSubmit

HOME = Path(__file__).resolve().parent.parent


def _project_module(name: str) -> ModuleType:
    # Loaded by path: the project folder is not on the scheduler's sys.path, and a plain
    # `import checks` could pick up another project's module of that name.
    spec = importlib.util.spec_from_file_location(f"events_{name}", HOME / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


quality = _project_module("checks").quality

SPARK_CONF = {
    "spark.ui.enabled": False,
    "spark.sql.shuffle.partitions": 2,
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
}
WAREHOUSE = "{{ params.output_path }}"
# fmt: off
INGEST_ARGS = [
    "--landing", "{{ params.input_path }}",
    "--output", f"{WAREHOUSE}/events",
    "--quarantine", f"{WAREHOUSE}/quarantine",
    "--ds", "{{ ds }}",
    "--force-reprocess", "{{ params.force_reprocess }}",
]
AGGREGATE_ARGS = [
    "--input", f"{WAREHOUSE}/events",
    "--output", f"{WAREHOUSE}/daily_metrics",
    "--ds", "{{ ds }}",
]
# fmt: on

with Pipeline(
    "events",
    schedule="@daily",
    start_date="2024-01-01",
    max_active_runs=2,
    description="Raw events to clean events, quarantine and daily metrics, with a quality gate.",
    params={
        "force_reprocess": Param(
            False, description="ingest the day again even if its partition exists"
        ),
        "input_path": Param("data/landing", description="the landing zone (raw JSON lines)"),
        "output_path": Param("data/warehouse", description="where the Parquet tables go"),
        "min_rows": Param(100, minimum=0, description="fail the day with fewer events"),
    },
    defaults={"retries": 1, "retry_delay": "2m"},
):
    ingest = SparkSubmit(
        "ingest",
        "jobs/ingest.py",
        application_args=INGEST_ARGS,
        name="events-ingest-{{ ds }}",
        conf=SPARK_CONF,
        driver_memory="1g",
        timeout="30m",
    )
    aggregate = SparkSubmit(
        "aggregate",
        "jobs/aggregate.py",
        application_args=AGGREGATE_ARGS,
        name="events-aggregate-{{ ds }}",
        conf=SPARK_CONF,
        driver_memory="1g",
        timeout="20m",
    )
    check = Python("quality", quality, timeout="5m")
    ingest >> aggregate >> check
