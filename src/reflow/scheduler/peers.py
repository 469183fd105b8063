"""Other schedulers: do they share work with this one, and are they still there?"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import psutil

from reflow.store.records import SchedulerRecord


def covers(scope: Sequence[str] | None, pipelines: Iterable[str] | None) -> bool:
    """Do a scheduler's scope and a set of pipelines share work? (None means all.)"""
    if scope is None or pipelines is None:
        return True
    return bool(set(scope) & set(pipelines))


def exited(row: SchedulerRecord, host: str) -> bool:
    """Is the scheduler of ``row`` known to be gone: registered on ``host`` (this machine)
    and its process no longer there? (Elsewhere only silence tells.)"""
    return row.host == host and not _alive(row)


def _alive(row: SchedulerRecord) -> bool:
    """Is the scheduler process of ``row`` (on this host) still the one that registered?"""
    try:
        proc = psutil.Process(row.pid)
        started = datetime.fromtimestamp(proc.create_time(), UTC)
    except psutil.Error:
        return False
    return started <= row.started_at + timedelta(seconds=1) and proc.status() != "zombie"
