"""Scheduled runs: the runs of the intervals that are due, created once per logical date."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row

from reflow.core.errors import Conflict
from reflow.core.naming import run_id_for
from reflow.core.pipeline import Pipeline
from reflow.core.states import RunOrigin
from reflow.store import repo

# Runs one pipeline gets per tick at most (a catchup over years of missed intervals).
_MAX_RUNS_PER_TICK = 1000


def create_due(
    conn: Connection, chunk: Sequence[Pipeline], now: datetime
) -> tuple[bool, dict[str, datetime]]:
    """Create the due runs of ``chunk``'s pipelines; returns whether any was created
    and when each pipeline is next due. A pipeline that another scheduler holds (it is
    creating or admitting its runs right now) is skipped: it stays due."""
    locked = repo.lock_pipelines(conn, [p.name for p in chunk])
    rows = {row.name: row for row in repo.pipeline_rows(conn, sorted(locked))}
    created, next_due = False, {}
    for pipeline in chunk:
        if pipeline.name in rows:
            made, nxt = _create_due_of(conn, pipeline, rows[pipeline.name], now)
            created |= made
            next_due[pipeline.name] = pipeline.schedule.interval(nxt)[1]
    return created, next_due


def _create_due_of(
    conn: Connection, pipeline: Pipeline, row: Row[Any], now: datetime
) -> tuple[bool, datetime]:
    """One pipeline's due runs (its row locked); returns whether any was created and
    its next logical date."""
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
    created = False
    if dates:
        conf = pipeline.params.resolve({})
        for logical_date in dates:
            if repo.dated_run_exists(conn, pipeline.name, logical_date):
                continue
            try:
                repo.create_run(
                    conn,
                    pipeline=pipeline.name,
                    run_id=run_id_for(RunOrigin.SCHEDULED, logical_date),
                    logical_date=logical_date,
                    interval=schedule.interval(logical_date),
                    origin=RunOrigin.SCHEDULED,
                    conf=conf,
                    version=pipeline.version,
                    task_ids=pipeline.topological(),
                    now=now,
                )
            except Conflict:
                continue  # a backfill created that date's run a moment ago
            created = True
        nxt = schedule.next_after(dates[-1])
        repo.set_next_logical_date(conn, pipeline.name, nxt)
    return created, nxt
