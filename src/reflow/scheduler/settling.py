"""Settling: applying the readiness decisions of running runs in the store.

``readiness.decide`` says what each run's task instances and the run itself do next,
without the database; :func:`apply` writes the decisions of several runs in one
transaction, each move guarded by the state it leaves, so a decision made on a read that
went stale writes nothing wrong (the caller also holds only runs that did not change:
``store.scheduling.hold_unchanged_runs``). :func:`reconcile` brings a live run to its
pipeline's current version first (``core.edits``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from reflow.core.pipeline import Pipeline
from reflow.core.states import RunState, TIState
from reflow.scheduler.readiness import Decision
from reflow.store import runs as store_runs
from reflow.store import transitions
from reflow.store.records import Run, TaskInstance


def apply(decisions: dict[int, Decision], conn: Connection, now: datetime) -> bool:
    """Apply the decisions of several runs together. Returns whether anything was to be
    written."""
    scheduled: dict[TIState, list[int]] = {}
    no_ops: list[int] = []
    upstream_failed: list[int] = []
    ending: dict[RunState, list[int]] = {}
    for run_pk, decision in decisions.items():
        for source, ids in decision.scheduled.items():
            scheduled.setdefault(source, []).extend(ids)
        no_ops += decision.no_ops
        upstream_failed += decision.upstream_failed
        if decision.outcome is not None:
            ending.setdefault(decision.outcome, []).append(run_pk)
    for source, ids in scheduled.items():
        transitions.transition(conn, "ti", ids, TIState.SCHEDULED, [source], now)
    transitions.transition(
        conn,
        "ti",
        no_ops,
        TIState.SUCCESS,
        [TIState.PENDING, TIState.UP_FOR_RETRY],
        now,
        detail="no-op task",
        started_at=now,
        ended_at=now,
    )
    transitions.transition(
        conn, "ti", upstream_failed, TIState.UPSTREAM_FAILED, [TIState.PENDING], now, ended_at=now
    )
    for state, run_pks in ending.items():
        store_runs.finish_runs(conn, run_pks, state, now)
    return any(d.writes for d in decisions.values())


def reconcile(conn: Connection, run: Run, pipeline: Pipeline, now: datetime) -> list[TaskInstance]:
    """Bring a live run to the pipeline's current version, as ``core.edits`` states;
    returns its task instances after."""
    tis = store_runs.run_task_instances(conn, [run.id])
    store_runs.reconcile_task_instances(
        conn,
        run.id,
        tis,
        pipeline.topological(),
        now,
        finished_too=False,
        version=pipeline.version,
    )
    store_runs.set_run_version(conn, run.id, pipeline.version)
    return store_runs.run_task_instances(conn, [run.id])
