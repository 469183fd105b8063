"""Run, task-instance and try states, and the legal transitions between them, as data.

Only the store assigns states, and only along these edges (see ``store.transitions``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from reflow.core.errors import IllegalTransition


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TIState(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    UP_FOR_RETRY = "up_for_retry"
    UPSTREAM_FAILED = "upstream_failed"
    SKIPPED = "skipped"
    REMOVED = "removed"
    CANCELLED = "cancelled"


class TryState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


class FailureReason(StrEnum):
    ERROR = "error"
    TIMED_OUT = "timed_out"
    RUN_TIMED_OUT = "run_timed_out"
    KILLED = "killed"
    LOST = "lost"
    # Stopped because its task left the pipeline (an edit of the pipeline file).
    TASK_REMOVED = "task_removed"
    # Reported by the kubernetes launcher
    OOM_KILLED = "oom_killed"
    EVICTED = "evicted"
    IMAGE_PULL = "image_pull"
    CONFIG_ERROR = "config_error"
    UNSCHEDULABLE = "unschedulable"


class BackfillState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    SUCCESS = "success"
    FAILED = "failed"


class Reprocess(StrEnum):
    """Which dates of a range a backfill (re)runs."""

    MISSING = "missing"  # dates without a successful run
    FAILED = "failed"  # dates whose latest attempt failed
    ALL = "all"  # every date, successful ones too


class RunOrigin(StrEnum):
    SCHEDULED = "scheduled"
    MANUAL = "manual"
    BACKFILL = "backfill"


# A run's priority unless its backfill sets one (``--priority``): higher runs are admitted
# first and their task instances get free slots first. Scheduled runs (today's data) go
# before manual ones, which go before backfills.
PRIORITY: dict[RunOrigin, int] = {
    RunOrigin.SCHEDULED: 2,
    RunOrigin.MANUAL: 1,
    RunOrigin.BACKFILL: 0,
}


RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    # success/failed from queued: a run marked by hand before it started.
    RunState.QUEUED: frozenset(
        {RunState.RUNNING, RunState.CANCELLED, RunState.SUCCESS, RunState.FAILED}
    ),
    RunState.RUNNING: frozenset({RunState.SUCCESS, RunState.FAILED, RunState.CANCELLED}),
    # A finished run is re-queued when it is cleared or reprocessed (a new attempt).
    RunState.SUCCESS: frozenset({RunState.QUEUED, RunState.FAILED}),
    RunState.FAILED: frozenset({RunState.QUEUED, RunState.SUCCESS}),
    RunState.CANCELLED: frozenset({RunState.QUEUED, RunState.SUCCESS, RunState.FAILED}),
}

_TI = TIState
# Any state may be marked success or failed by hand (`reflow runs mark`).
_MARKS = frozenset({_TI.SUCCESS, _TI.FAILED})
TI_TRANSITIONS: dict[TIState, frozenset[TIState]] = {
    _TI.PENDING: frozenset(
        {_TI.SCHEDULED, _TI.UPSTREAM_FAILED, _TI.SKIPPED, _TI.REMOVED, _TI.CANCELLED} | _MARKS
    ),
    _TI.SCHEDULED: frozenset({_TI.QUEUED, _TI.PENDING, _TI.REMOVED, _TI.CANCELLED} | _MARKS),
    _TI.QUEUED: frozenset({_TI.RUNNING, _TI.UP_FOR_RETRY, _TI.REMOVED, _TI.CANCELLED} | _MARKS),
    _TI.RUNNING: frozenset({_TI.UP_FOR_RETRY, _TI.REMOVED, _TI.CANCELLED} | _MARKS),
    _TI.UP_FOR_RETRY: frozenset({_TI.SCHEDULED, _TI.PENDING, _TI.REMOVED, _TI.CANCELLED} | _MARKS),
    # Finished states leave only by a clear (back to pending) or a mark.
    _TI.SUCCESS: frozenset({_TI.PENDING, _TI.FAILED, _TI.REMOVED}),
    _TI.FAILED: frozenset({_TI.PENDING, _TI.SUCCESS, _TI.REMOVED}),
    _TI.UPSTREAM_FAILED: frozenset({_TI.PENDING, _TI.REMOVED} | _MARKS),
    _TI.SKIPPED: frozenset({_TI.PENDING, _TI.REMOVED} | _MARKS),
    _TI.REMOVED: frozenset({_TI.PENDING} | _MARKS),
    _TI.CANCELLED: frozenset({_TI.PENDING, _TI.REMOVED} | _MARKS),
}

BACKFILL_TRANSITIONS: dict[BackfillState, frozenset[BackfillState]] = {
    BackfillState.RUNNING: frozenset(
        {BackfillState.PAUSED, BackfillState.CANCELLED, BackfillState.SUCCESS, BackfillState.FAILED}
    ),
    BackfillState.PAUSED: frozenset({BackfillState.RUNNING, BackfillState.CANCELLED}),
    BackfillState.CANCELLED: frozenset(),
    BackfillState.SUCCESS: frozenset(),
    BackfillState.FAILED: frozenset(),
}

TRY_TRANSITIONS: dict[TryState, frozenset[TryState]] = {
    TryState.QUEUED: frozenset({TryState.RUNNING, TryState.SUCCESS, TryState.FAILED}),
    TryState.RUNNING: frozenset({TryState.SUCCESS, TryState.FAILED}),
    TryState.SUCCESS: frozenset(),
    TryState.FAILED: frozenset(),
}

RUN_FINISHED = frozenset({RunState.SUCCESS, RunState.FAILED, RunState.CANCELLED})
RUN_ACTIVE = frozenset({RunState.QUEUED, RunState.RUNNING})

TI_FINISHED = frozenset(
    {_TI.SUCCESS, _TI.FAILED, _TI.UPSTREAM_FAILED, _TI.SKIPPED, _TI.REMOVED, _TI.CANCELLED}
)
TI_LIVE = frozenset({_TI.QUEUED, _TI.RUNNING})
# A downstream may start once every upstream is in one of these.
TI_UPSTREAM_OK = frozenset({_TI.SUCCESS, _TI.SKIPPED, _TI.REMOVED})
TI_UPSTREAM_BAD = frozenset({_TI.FAILED, _TI.UPSTREAM_FAILED, _TI.CANCELLED})
TI_FAILED_RESULTS = frozenset({_TI.FAILED, _TI.UPSTREAM_FAILED, _TI.CANCELLED})


S = TypeVar("S", bound=StrEnum)


def check_transition(
    table: dict[S, frozenset[S]], sources: frozenset[S] | set[S], target: S
) -> None:
    """Raise unless ``target`` is reachable from every state in ``sources``."""
    bad = sorted(s for s in sources if target not in table[s])
    if bad:
        raise IllegalTransition(f"illegal transition {', '.join(bad)} -> {target}")
