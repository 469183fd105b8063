"""The run context: the names every template and Python task can use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class RunInfo:
    """What a try needs to know about its run (plain data read from the store)."""

    pipeline: str
    run_id: str
    logical_date: datetime
    data_interval_start: datetime
    data_interval_end: datetime
    conf: Mapping[str, Any]
    timezone: str = "UTC"


_DATETIMES = ("logical_date", "data_interval_start", "data_interval_end")


def build_context(run: RunInfo, task_id: str, try_number: int) -> dict[str, Any]:
    """The context of one try. ``ds`` is the logical date in the pipeline's timezone."""
    local = run.logical_date.astimezone(ZoneInfo(run.timezone))
    conf = dict(run.conf)
    return {
        "ds": local.date().isoformat(),
        "ds_nodash": local.strftime("%Y%m%d"),
        "ts": local.isoformat(),
        "ts_nodash": local.strftime("%Y%m%dT%H%M%S"),
        "logical_date": local,
        "data_interval_start": run.data_interval_start.astimezone(local.tzinfo),
        "data_interval_end": run.data_interval_end.astimezone(local.tzinfo),
        "params": conf,
        "conf": conf,
        "run_id": run.run_id,
        "try_number": try_number,
        "pipeline": run.pipeline,
        "task": task_id,
    }


def context_to_json(context: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in context.items()}


def context_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for key in _DATETIMES:
        if isinstance(out.get(key), str):
            out[key] = datetime.fromisoformat(out[key])
    return out
