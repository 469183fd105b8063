"""Spark job: daily metrics per event type, from one day of clean events.

    spark-submit jobs/aggregate.py --input data/warehouse/events \
        --output data/warehouse/daily_metrics --ds 2024-01-02

One row per event type: ``events`` (count), ``users`` (distinct users), ``amount_sum``,
and ``amount_p50`` / ``amount_p90`` / ``amount_p99``: *exact* percentiles of the amount
(Spark's ``percentile``, linear interpolation between the closest ranks). A day holds
thousands of events per type, so exactness is cheap; with hundreds of millions switch to
``percentile_approx``. Written to ``output/date=ds`` with dynamic partition overwrite:
re-running a day replaces that day's partition only.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="daily metrics per event type")
    parser.add_argument("--input", required=True, help="the events table")
    parser.add_argument("--output", required=True, help="the daily metrics table")
    parser.add_argument("--ds", required=True, type=date.fromisoformat)
    args = parser.parse_args(argv)
    source, output = _absolute(args.input), _absolute(args.output)
    ds: date = args.ds

    spark = SparkSession.builder.getOrCreate()
    print(f"spark application id: {spark.sparkContext.applicationId}", flush=True)
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    spark.conf.set("spark.sql.session.timeZone", "UTC")

    partition = f"{source}/date={ds}"
    if not _exists(spark, partition):
        # ingest writes no partition for a day without a single valid event.
        print(f"{ds}: no events at {partition}: no metrics for the day", file=sys.stderr)
        _delete(spark, f"{output}/date={ds}")
        return 0
    metrics = (
        spark.read.parquet(partition)  # this partition only: no listing of the others
        .groupBy("event_type")
        .agg(
            F.count(F.lit(1)).alias("events"),
            F.countDistinct("user_id").alias("users"),
            F.sum("amount").alias("amount_sum"),
            F.expr("percentile(amount, array(0.5, 0.9, 0.99))").alias("p"),
        )
        .select(
            "event_type",
            "events",
            "users",
            "amount_sum",
            F.col("p")[0].alias("amount_p50"),
            F.col("p")[1].alias("amount_p90"),
            F.col("p")[2].alias("amount_p99"),
            F.lit(ds).alias("date"),
        )
    )
    rows = metrics.cache().count()
    metrics.repartition("date").write.mode("overwrite").partitionBy("date").parquet(output)
    print(f"{ds}: metrics of {rows} event types into {output}")
    return 0


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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
