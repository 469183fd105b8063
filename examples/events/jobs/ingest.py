"""Spark job: ingest one day of raw events into Parquet, bad lines into a quarantine.

    spark-submit jobs/ingest.py --landing data/landing --output data/warehouse/events \
        --quarantine data/warehouse/quarantine --ds 2024-01-02

The run for ``ds`` owns exactly the partitions ``date=ds`` of both outputs (see the
pipeline's docstring for the late-data rule):

- ``output/date=ds``: the valid events whose event_time falls on ds (UTC), read from the
  landing folders ds and ds+1 (late arrivals), de-duplicated by event_id;
- ``quarantine/date=ds``: every bad line of landing folder ds, with a ``reason``:
  ``invalid_json``, ``missing_field``, ``invalid_amount``, ``invalid_event_time``, or
  ``outside_window`` (a valid event dated neither on its landing day nor the day before).

Writes use dynamic partition overwrite: re-running a day replaces that day's partitions
and nothing else. Without ``--force-reprocess true``, a day already ingested is skipped.
"""

from __future__ import annotations

import argparse
import operator
import os
import sys
from datetime import date, timedelta
from functools import reduce
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

REQUIRED = ("event_id", "event_time", "user_id", "event_type", "amount")
TIME_PATTERN = "yyyy-MM-dd'T'HH:mm:ss'Z'"
CORRUPT = "_corrupt_record"
# Every field read as text, to tell a missing field from a bad value; the JSON parser puts
# a line that is not a JSON object into CORRUPT.
AS_TEXT = T.StructType(
    [T.StructField(f, T.StringType()) for f in REQUIRED] + [T.StructField(CORRUPT, T.StringType())]
)
# The amount again, as a number: a JSON string ("12,50", "n/a", even "12.5") reads as null.
AS_NUMBER = T.StructType([T.StructField("amount", T.DoubleType())])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="ingest one day of raw events")
    parser.add_argument("--landing", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--quarantine", required=True)
    parser.add_argument("--ds", required=True, type=date.fromisoformat)
    parser.add_argument("--force-reprocess", default="false", type=_flag)
    args = parser.parse_args(argv)
    landing, output, quarantine = map(_absolute, (args.landing, args.output, args.quarantine))
    ds: date = args.ds

    spark = SparkSession.builder.getOrCreate()
    print(f"spark application id: {spark.sparkContext.applicationId}", flush=True)
    # Correctness depends on these two: set here, not left to the submitter.
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    spark.conf.set("spark.sql.session.timeZone", "UTC")

    if not args.force_reprocess and _exists(spark, f"{output}/date={ds}"):
        print(f"{ds}: already ingested into {output}; set force_reprocess to ingest it again")
        return 0
    today = f"{landing}/date={ds}"
    if not _exists(spark, today):
        print(f"{ds}: no landing data at {today}", file=sys.stderr)
        return 1
    # Late events of ds arrive in the next day's folder: read it too when it exists.
    folders = [(ds, today)]
    tomorrow = f"{landing}/date={ds + timedelta(days=1)}"
    if _exists(spark, tomorrow):
        folders.append((ds + timedelta(days=1), tomorrow))
    lines = None
    for landed, folder in folders:
        frame = spark.read.text(folder).select(
            "value",
            F.lit(landed).alias("landed"),
            F.col("_metadata.file_name").alias("file"),
        )
        lines = frame if lines is None else lines.unionByName(frame)
    assert lines is not None

    parsed = lines.select(
        "value",
        "landed",
        "file",
        F.from_json("value", AS_TEXT, {"columnNameOfCorruptRecord": CORRUPT}).alias("j"),
        F.from_json("value", AS_NUMBER).alias("n"),
    ).select(
        "value",
        "landed",
        "file",
        "j.*",
        F.col("n.amount").alias("amount_value"),
        F.expr(f'try_to_timestamp(j.event_time, "{TIME_PATTERN}")').alias("event_ts"),
    )
    checked = parsed.withColumn("reason", _reason()).withColumn("day", F.to_date("event_ts"))
    checked.cache()

    events = (
        checked.where(F.col("reason").isNull() & (F.col("day") == F.lit(ds)))
        .dropDuplicates(["event_id"])  # duplicates are exact re-deliveries of a line
        .select(
            "event_id",
            F.col("event_ts").alias("event_time"),
            "user_id",
            "event_type",
            F.col("amount_value").alias("amount"),
            F.col("day").alias("date"),
        )
    )
    bad = checked.where(F.col("reason").isNotNull() & (F.col("landed") == F.lit(ds))).select(
        "reason", F.col("value").alias("line"), "file", F.col("landed").alias("date")
    )
    # Events last: their partition is what tells a later run that the day is done.
    bad_rows = _write(spark, bad, quarantine, ds)
    event_rows = _write(spark, events, output, ds)
    print(f"{ds}: {event_rows} events into {output}, {bad_rows} lines quarantined")
    return 0


def _reason() -> Column:
    """Why a line is bad (checked in this order), or null for a valid event."""
    missing = reduce(operator.or_, [F.col(field).isNull() for field in REQUIRED])
    landed, day = F.col("landed"), F.to_date("event_ts")
    return (
        F.when(F.col(CORRUPT).isNotNull(), "invalid_json")
        .when(missing, "missing_field")
        .when(F.col("amount_value").isNull(), "invalid_amount")
        .when(F.col("event_ts").isNull(), "invalid_event_time")
        .when((day != landed) & (day != F.date_sub(landed, 1)), "outside_window")
    )


def _write(spark: SparkSession, frame: DataFrame, table: str, ds: date) -> int:
    """Replace partition date=ds of ``table`` with ``frame`` (rows of ds only)."""
    rows = frame.count()
    if rows == 0:
        # Dynamic overwrite leaves a partition alone when no row lands in it.
        _delete(spark, f"{table}/date={ds}")
        return 0
    frame.repartition("date").write.mode("overwrite").partitionBy("date").parquet(table)
    return rows


def _absolute(path: str) -> str:
    """Local paths relative to the working folder (the project's home, under reflow)."""
    return path if "://" in path else os.path.abspath(path)


def _fs_path(spark: SparkSession, path: str) -> tuple[Any, Any]:
    """Hadoop's FileSystem and Path for ``path``: works for file://, s3a://, hdfs://..."""
    context: Any = spark.sparkContext
    hadoop_path = context._jvm.org.apache.hadoop.fs.Path(path)
    return hadoop_path.getFileSystem(context._jsc.hadoopConfiguration()), hadoop_path


def _exists(spark: SparkSession, path: str) -> bool:
    fs, hadoop_path = _fs_path(spark, path)
    return bool(fs.exists(hadoop_path))


def _delete(spark: SparkSession, path: str) -> None:
    fs, hadoop_path = _fs_path(spark, path)
    fs.delete(hadoop_path, True)


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "1", "yes")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
