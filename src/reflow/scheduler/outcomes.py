"""What a try's end means for its task instance: success, a retry after a wait, a failure
for good, or (for a task that left the pipeline) removed. One function, called in the
scheduler's transaction that records the outcome."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row

from reflow.core.config import Settings
from reflow.core.naming import Clock
from reflow.core.pipeline import Pipeline
from reflow.core.spec import Outcome
from reflow.core.states import FailureReason, RunState, TIState
from reflow.scheduler import trylog
from reflow.store import repo

# Failures that a retry cannot fix: the run is over or a person stopped the try.
_NO_RETRY = {
    FailureReason.RUN_TIMED_OUT.value,
    FailureReason.KILLED.value,
    FailureReason.TASK_REMOVED.value,
}
# Longest wait between two lost tries of one task instance.
_MAX_LOST_DELAY = 600.0


def record(
    conn: Connection,
    outcome: Outcome,
    now: datetime,
    *,
    owner: int,
    pipelines: Mapping[str, Pipeline],
    settings: Settings,
    clock: Clock,
) -> bool:
    """Record one outcome. Returns whether its evidence may be cleaned up: False when
    the try belongs to another scheduler (it adopted it and needs the evidence)."""
    row = repo.try_row(conn, outcome.try_id)
    if row is None:
        return True  # deleted with its run
    if row.owner != owner:
        return False
    pipeline = pipelines.get(row.pipeline)
    task = pipeline.tasks.get(row.task_id) if pipeline else None
    ok = outcome.ok or (row.cancel_reason is not None and outcome.exit_code == 0)
    reason = None if ok else (row.cancel_reason or (outcome.reason or "error"))
    app_id = task.app_id_from_log(row.log_path) if task is not None else None
    # A container that began after the last move of the try's start (it finished
    # within the deadline given then): the recorded start is the container's.
    later = outcome.started_at
    started_at = later if later and row.started_at and later > row.started_at else None
    if not repo.end_try(
        conn,
        row.id,
        ok=ok,
        exit_code=outcome.exit_code,
        reason=reason,
        detail=outcome.detail or None,
        now=now,
        owner=owner,
        app_id=app_id,
        started_at=min(started_at, now) if started_at else None,
    ):
        return True  # recorded before
    # Before the commit: whoever follows the log until the try has ended sees it too.
    trylog.note(Path(row.log_path), [trylog.ended(row, outcome, ok, reason)], clock())
    live = [TIState.QUEUED, TIState.RUNNING]
    # The try of a task that left the pipeline: its instance is removed however the try
    # ended (the try keeps its own outcome), or retried if the task came back meanwhile.
    stopped_for_edit = row.cancel_reason == FailureReason.TASK_REMOVED
    gone = pipeline is not None and task is None
    if (stopped_for_edit or gone) and (task is None or not ok):
        _end_for_edit(conn, row, task, now)
        return True
    if ok:
        repo.transition(
            conn,
            "ti",
            [row.ti],
            TIState.SUCCESS,
            live,
            now,
            ended_at=now,
            failure_reason=None,
            lost_streak=0,
        )
        return True
    lost = reason == FailureReason.LOST.value
    retries = int(task.option("retries")) if task else 0
    used = row.ti_try_number - row.lost_tries - (1 if lost else 0)
    # A try lost with its scheduler does not use up a retry, but losing it again and
    # again (a try that kills its host) ends in failure, with growing waits between.
    lost_again = lost and row.lost_streak >= settings.lost_retry_limit
    can_retry = (
        task is not None
        and row.run_state == RunState.RUNNING
        and reason not in _NO_RETRY
        and not lost_again
        and (lost or used <= retries)
    )
    if can_retry:
        if lost:
            base = settings.lost_retry_delay
            delay = min(_MAX_LOST_DELAY, base * 2.0**row.lost_streak)
        else:
            delay = task.retry_delay_for(used)  # type: ignore[union-attr]
        repo.transition(
            conn,
            "ti",
            [row.ti],
            TIState.UP_FOR_RETRY,
            live,
            now,
            detail=reason,
            failure_reason=reason,
            next_try_at=now + timedelta(seconds=delay),
            lost_tries=row.lost_tries + (1 if lost else 0),
            lost_streak=row.lost_streak + 1 if lost else 0,
        )
    else:
        detail = reason
        if lost_again:
            detail = (
                f"lost {row.lost_streak + 1} times in a row (its scheduler or host died "
                f"while it ran); not retried again (lost_retry_limit = "
                f"{settings.lost_retry_limit})"
            )
        repo.transition(
            conn,
            "ti",
            [row.ti],
            TIState.FAILED,
            live,
            now,
            detail=detail,
            failure_reason=reason,
            ended_at=now,
            lost_streak=0,
        )
    return True


def _end_for_edit(conn: Connection, row: Row[Any], task: Any, now: datetime) -> None:
    """A try of a task that left the pipeline has ended (stopped, or done before the
    stop reached it; core.edits): its instance is ``removed``, or tried again when the
    task came back meanwhile (the stop does not use up a retry)."""
    live = [TIState.QUEUED, TIState.RUNNING]
    if task is None:
        repo.transition(
            conn,
            "ti",
            [row.ti],
            TIState.REMOVED,
            live,
            now,
            detail="task removed from the pipeline; its try has ended",
            failure_reason=FailureReason.TASK_REMOVED.value,
            ended_at=now,
        )
        return
    repo.transition(
        conn,
        "ti",
        [row.ti],
        TIState.UP_FOR_RETRY,
        live,
        now,
        detail="task back in the pipeline; its stopped try is tried again",
        failure_reason=FailureReason.TASK_REMOVED.value,
        next_try_at=now,
        lost_tries=row.lost_tries + 1,
    )
