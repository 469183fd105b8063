"""Deadlines: tries past their timeout and runs past their ``run_timeout``.

The scheduler asks for the stops here, in its transaction
(``store.tries.request_cancel``), and signals the launcher only after the commit: a
scheduler that dies in between leaves the request recorded, and the next one (or this one,
next tick) sends the signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection

from reflow.core.states import FailureReason, TIState
from reflow.launchers.base import Launcher
from reflow.store import runs as store_runs
from reflow.store import transitions
from reflow.store import tries as store_tries
from reflow.store.records import ExpiredTry

_UNSTARTED = (TIState.PENDING, TIState.SCHEDULED, TIState.UP_FOR_RETRY)


def past_timeout(
    conn: Connection,
    launcher: Launcher,
    owner: int,
    expired: Sequence[ExpiredTry],
    now: datetime,
) -> list[ExpiredTry]:
    """The tries past their timeout counted from their real start: one whose process or
    container began later than recorded (a pod pulling its image) has its start and
    deadline moved there instead (see ``Launcher.running_since``)."""
    due = []
    for row in expired:
        since = launcher.running_since(row.id)
        if since is not None and row.started_at is not None and since > row.started_at:
            deadline = since + (row.deadline - row.started_at)
            store_tries.move_try_start(conn, row.id, owner, since, deadline)
            if deadline > now:
                continue
        due.append(row)
    return due


def time_out_run(conn: Connection, run_pk: int, now: datetime) -> None:
    """Fail a run past its run_timeout: its live tries are asked to stop (reason
    ``run_timed_out``) and its unstarted task instances cancelled."""
    live = store_tries.live_tries_of_runs(conn, [run_pk])
    store_tries.request_cancel(conn, [t.id for t in live], FailureReason.RUN_TIMED_OUT.value)
    unstarted = [
        ti.id for ti in store_runs.run_task_instances(conn, [run_pk]) if ti.state in _UNSTARTED
    ]
    for state in _UNSTARTED:
        transitions.transition(
            conn,
            "ti",
            unstarted,
            TIState.CANCELLED,
            [state],
            now,
            detail="run timed out",
            ended_at=now,
            failure_reason=FailureReason.RUN_TIMED_OUT.value,
        )
