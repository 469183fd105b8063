"""How reflow names things it makes: the clock it reads, run ids, try log paths."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from reflow.core.states import RunOrigin

# Names of pipelines, tasks and pools: letters, digits, '_', '-', '.'; a letter or digit first.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$"

# Every "now" in reflow comes from a clock like this one (injected, so tests move time).
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def run_id_for(origin: RunOrigin, logical_date: datetime) -> str:
    """The run id of a dated run: its origin and its logical date in UTC."""
    return f"{origin.value}__{logical_date.astimezone(UTC).isoformat()}"


def log_name(pipeline: str, run_id: str, task_id: str, try_number: int) -> str:
    """A try's log under the logs folder or ``logs_url``: ``pipeline/run_id/task/try-N.log``."""
    return f"{pipeline}/{run_id}/{task_id}/try-{try_number}.log"


def log_path(logs: Path, pipeline: str, run_id: str, task_id: str, try_number: int) -> Path:
    """Where a try's log lives under the logs folder."""
    return logs / log_name(pipeline, run_id, task_id, try_number)
