"""What a try's end means for its task instance: success, a retry after a wait, a failure
for good, or (for a task that left the pipeline) removed.

:func:`verdict` decides it for one try from its row and outcome (pure); :func:`record`
applies the verdicts of every outcome a tick collected, in the scheduler's transaction, in
a few statements however many tries ended.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection

from reflow.core.config import Settings
from reflow.core.naming import Clock
from reflow.core.pipeline import Pipeline
from reflow.core.spec import Outcome
from reflow.core.states import FailureReason, RunState, TIState, TryState
from reflow.scheduler import trylog
from reflow.scheduler.metrics import SchedulerMetrics
from reflow.store import transitions
from reflow.store import tries as store_tries
from reflow.store import usage as store_usage
from reflow.store.models import tries
from reflow.store.records import FinishingTry

# Failures that a retry cannot fix: the run is over or a person stopped the try.
_NO_RETRY = {
    FailureReason.RUN_TIMED_OUT.value,
    FailureReason.KILLED.value,
    FailureReason.TASK_REMOVED.value,
}
# Longest wait between two lost tries of one task instance.
_MAX_LOST_DELAY = 600.0
_LIVE_TI = (TIState.QUEUED, TIState.RUNNING)
_LIVE_TRY = (TryState.QUEUED, TryState.RUNNING)


@dataclass(frozen=True)
class Verdict:
    """How one try ended (``ok``, ``reason``) and what its task instance becomes: state
    ``ti_state`` with ``ti_values``, ``ti_detail`` for its event."""

    ok: bool
    reason: str | None
    try_values: dict[str, Any]
    ti_state: TIState
    ti_values: dict[str, Any] = field(default_factory=dict)
    ti_detail: str | None = None


def verdict(
    row: FinishingTry, outcome: Outcome, pipelines: Mapping[str, Pipeline], settings: Settings
) -> Verdict:
    """Decide one try's end from its row (``store.tries.try_rows``) and its outcome."""
    now = outcome.ended_at
    pipeline = pipelines.get(row.pipeline)
    task = pipeline.tasks.get(row.task_id) if pipeline else None
    ok = outcome.ok or (row.cancel_reason is not None and outcome.exit_code == 0)
    reason = None if ok else (row.cancel_reason or (outcome.reason or "error"))
    # A container that began after the last move of the try's start (it finished within
    # the deadline given then): the recorded start is the container's.
    later = outcome.started_at
    moved_start = later is not None and row.started_at is not None and later > row.started_at
    try_values = {
        "ended_at": now,
        "exit_code": outcome.exit_code,
        "failure_reason": reason,
        "app_id": (
            task.app_id_from_log(str(settings.log_file(row.log_path))) if task is not None else None
        ),
        "started_at": min(later, now) if moved_start and later else row.started_at,
        "detail": outcome.detail or row.detail,
    }

    def ends(state: TIState, detail: str | None = None, **values: Any) -> Verdict:
        return Verdict(ok, reason, try_values, state, values, detail)

    # The try of a task that left the pipeline: its instance is removed however the try
    # ended (the try keeps its own outcome), or tried again if the task came back meanwhile
    # (the stop does not use up a retry).
    stopped_for_edit = row.cancel_reason == FailureReason.TASK_REMOVED
    gone = pipeline is not None and task is None
    if (stopped_for_edit or gone) and (task is None or not ok):
        if task is None:
            return ends(
                TIState.REMOVED,
                "task removed from the pipeline; its try has ended",
                failure_reason=FailureReason.TASK_REMOVED.value,
                ended_at=now,
            )
        return ends(
            TIState.UP_FOR_RETRY,
            "task back in the pipeline; its stopped try is tried again",
            failure_reason=FailureReason.TASK_REMOVED.value,
            next_try_at=now,
            lost_tries=row.lost_tries + 1,
            lost_streak=row.lost_streak,
        )
    if ok:
        return ends(TIState.SUCCESS, ended_at=now, failure_reason=None, lost_streak=0)
    lost = reason == FailureReason.LOST.value
    retries = int(task.option("retries")) if task else 0
    used = row.ti_try_number - row.lost_tries - (1 if lost else 0)
    # A try lost with its scheduler does not use up a retry, but losing it again and again
    # (a try that kills its host) ends in failure, with growing waits between.
    lost_again = lost and row.lost_streak >= settings.lost_retry_limit
    can_retry = (
        task is not None
        and row.run_state == RunState.RUNNING
        and reason not in _NO_RETRY
        and not lost_again
        and (lost or used <= retries)
    )
    if can_retry:
        assert task is not None
        if lost:
            delay = min(_MAX_LOST_DELAY, settings.lost_retry_delay * 2.0**row.lost_streak)
        else:
            delay = task.retry_delay_for(used)
        return ends(
            TIState.UP_FOR_RETRY,
            reason,
            failure_reason=reason,
            next_try_at=now + timedelta(seconds=delay),
            lost_tries=row.lost_tries + (1 if lost else 0),
            lost_streak=row.lost_streak + 1 if lost else 0,
        )
    detail = reason
    if lost_again:
        detail = (
            f"lost {row.lost_streak + 1} times in a row (its scheduler or host died while it "
            f"ran); not retried again (lost_retry_limit = {settings.lost_retry_limit})"
        )
    return ends(TIState.FAILED, detail, failure_reason=reason, ended_at=now, lost_streak=0)


def record(
    conn: Connection,
    outcomes: Sequence[Outcome],
    *,
    owner: int,
    pipelines: Mapping[str, Pipeline],
    settings: Settings,
    clock: Clock,
    metrics: SchedulerMetrics | None = None,
) -> list[int]:
    """Record how tries ended, each at its outcome's time. Returns the tries whose evidence
    may be cleaned up: all but those of another scheduler (it adopted them and needs it)."""
    rows = store_tries.try_rows(conn, [o.try_id for o in outcomes])
    settled: list[int] = []
    verdicts: dict[int, tuple[FinishingTry, Outcome, Verdict]] = {}
    for outcome in outcomes:
        row = rows.get(outcome.try_id)
        if row is None:
            settled.append(outcome.try_id)  # deleted with its run
        elif row.owner == owner and outcome.try_id not in verdicts:
            settled.append(outcome.try_id)
            verdicts[row.id] = (row, outcome, verdict(row, outcome, pipelines, settings))
    if not verdicts:
        return settled
    ended: set[int] = set()
    for state in (TryState.SUCCESS, TryState.FAILED):
        mine = {i: v for i, v in verdicts.items() if v[2].ok == (state == TryState.SUCCESS)}
        ended.update(
            transitions.transition_each(
                conn,
                "try",
                {i: v.try_values for i, (_, _, v) in mine.items()},
                state,
                _LIVE_TRY,
                clock(),
                detail={i: o.detail or None for i, (_, o, _) in mine.items()},
                at={i: o.ended_at for i, (_, o, _) in mine.items()},
                guard=tries.c.owner == owner,
            )
        )
    # Tries not ended here were recorded before (an outcome seen again).
    for try_id in sorted(ended):
        row, outcome, v = verdicts[try_id]
        # Before the commit: whoever follows the log until the try has ended sees it too.
        ended_line = trylog.ended(row, outcome, v.ok, v.reason)
        trylog.note(settings.log_file(row.log_path), [ended_line], clock())
        if metrics is not None:
            metrics.try_ended(row, outcome, v)
    moves: dict[tuple[TIState, tuple[str, ...]], list[tuple[FinishingTry, Outcome, Verdict]]] = {}
    for try_id in ended:
        row, outcome, v = verdicts[try_id]
        moves.setdefault((v.ti_state, tuple(sorted(v.ti_values))), []).append((row, outcome, v))
    for (ti_state, _), group in moves.items():
        transitions.transition_each(
            conn,
            "ti",
            {row.ti: v.ti_values for row, _, v in group},
            ti_state,
            _LIVE_TI,
            clock(),
            detail={row.ti: v.ti_detail for row, _, v in group},
            at={row.ti: o.ended_at for row, o, _ in group},
        )
    # What the ended tries held, in the transaction that ends them: recorded once each.
    store_usage.record(conn, {i: verdicts[i][1].held for i in sorted(ended)})
    return settled
