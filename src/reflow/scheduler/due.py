"""Scheduled runs: the runs of the intervals that are due, created once per logical date."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection

from reflow.core.naming import run_id_for
from reflow.core.pipeline import Pipeline
from reflow.core.states import RunOrigin
from reflow.store import pipelines as store_pipelines
from reflow.store import runs as store_runs
from reflow.store import schedulers as store_schedulers
from reflow.store.records import PipelineRecord

# Runs one pipeline gets per tick at most (a catchup over years of missed intervals).
_MAX_RUNS_PER_TICK = 1000


def create_due(
    conn: Connection, chunk: Sequence[Pipeline], now: datetime
) -> tuple[bool, dict[str, datetime]]:
    """Create the due runs of ``chunk``'s pipelines, together; returns whether any was
    created and when each pipeline is next due. A pipeline that another scheduler holds
    (it is creating or admitting its runs right now), or a paused one, is skipped: it
    stays due."""
    locked = store_schedulers.lock_pipelines(conn, [p.name for p in chunk])
    rows = {row.name: row for row in store_pipelines.pipeline_rows(conn, sorted(locked))}
    due: dict[str, tuple[Pipeline, list[datetime], datetime]] = {}
    for pipeline in chunk:
        # Paused since the tick read it: stays due, its runs made once it is unpaused.
        if pipeline.name in rows and not rows[pipeline.name].paused:
            dates, nxt = _due_dates(pipeline, rows[pipeline.name], now)
            due[pipeline.name] = (pipeline, dates, nxt)
    wanted = {(name, d) for name, (_, dates, _) in due.items() for d in dates}
    taken = store_runs.dated_runs_taken(conn, wanted)
    new = [
        store_runs.NewRun(
            pipeline=p.name,
            run_id=run_id_for(RunOrigin.SCHEDULED, d),
            logical_date=d,
            interval=p.schedule.interval(d),
            origin=RunOrigin.SCHEDULED,
            conf=p.params.resolve({}),
            version=p.version,
            task_ids=p.topological(),
        )
        for p, dates, _ in due.values()
        for d in dates
        if (p.name, d) not in taken
    ]
    # None in place of a date that a backfill created a moment ago.
    made = store_runs.create_runs(conn, new, now)
    store_pipelines.set_next_logical_dates(
        conn, {n: nxt for n, (_, dates, nxt) in due.items() if dates}
    )
    next_due = {n: p.schedule.interval(nxt)[1] for n, (p, _, nxt) in due.items()}
    return any(m is not None for m in made), next_due


def _due_dates(
    pipeline: Pipeline, row: PipelineRecord, now: datetime
) -> tuple[list[datetime], datetime]:
    """One pipeline's due logical dates (its row locked), and its next logical date after
    them."""
    schedule = pipeline.schedule
    assert pipeline.start_date is not None
    first = schedule.ceil(pipeline.start_date)
    nxt = max(row.next_logical_date or first, first)
    latest = schedule.latest_complete(now)
    if pipeline.end_date is not None and latest is not None:
        latest = min(latest, schedule.floor(pipeline.end_date))
    dates: list[datetime] = []
    if latest is not None and latest >= nxt:
        if pipeline.catchup:
            for d in schedule.logical_dates(nxt, latest):
                dates.append(d)
                if len(dates) >= _MAX_RUNS_PER_TICK:
                    break
        else:
            dates = [latest]
    if dates:
        nxt = schedule.next_after(dates[-1])
    return dates, nxt
