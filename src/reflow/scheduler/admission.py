"""Which queued runs may start: a pure decision from what the store says (queued runs, the
running count of each pipeline and backfill, the open backfills) and the pipelines'
limits. The scheduler asks it twice: without the write lock, to skip the transaction
when nothing can start (a backfill waiting for slots, tick after tick), then inside the
transaction, on what it read there, for the runs it starts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from reflow.core.states import BackfillState


class Limits(Protocol):
    """What admission reads of a pipeline."""

    max_active_runs: int


def admission_rank(run: Any, backfill: Any | None) -> tuple[Any, ...]:
    """Higher priority first (by default scheduled runs, then manual, then backfill: see
    ``core.states.PRIORITY``); within one, oldest logical date first, unless the run's
    backfill asked for newest first."""
    stamp = run.logical_date.timestamp()
    if backfill is not None and backfill.run_order == "newest":
        stamp = -stamp
    return (-run.priority, stamp, run.id)


def admissible(
    queued: Sequence[Any],
    pipelines: Mapping[str, Limits],
    running: Mapping[str, int],
    backfills: Mapping[int, Any],
    running_by_backfill: Mapping[int, int],
) -> list[Any]:
    """The queued runs to start, in admission order: each within its pipeline's
    ``max_active_runs`` and its backfill's own limit, none of a paused backfill, counting
    the runs admitted before it. ``queued`` holds rows with ``pipeline``, ``priority``,
    ``logical_date``, ``id`` and ``backfill_id``; ``backfills`` the open ones by id."""
    ordered = sorted(queued, key=lambda r: admission_rank(r, backfills.get(r.backfill_id)))
    per_pipeline = dict(running)
    per_backfill = dict(running_by_backfill)
    chosen = []
    for run in ordered:
        if per_pipeline.get(run.pipeline, 0) >= pipelines[run.pipeline].max_active_runs:
            continue
        backfill = backfills.get(run.backfill_id)
        if backfill is not None:
            if backfill.state == BackfillState.PAUSED:
                continue
            limit = backfill.max_active_runs
            if limit is not None and per_backfill.get(backfill.id, 0) >= limit:
                continue
            per_backfill[backfill.id] = per_backfill.get(backfill.id, 0) + 1
        per_pipeline[run.pipeline] = per_pipeline.get(run.pipeline, 0) + 1
        chosen.append(run)
    return chosen
