"""Pausing pipelines, and the history of who paused them and when.

A paused pipeline gets no new scheduled run and starts no new task instance; what runs
finishes. The flag lives on the pipeline's row (``pipelines.paused``), so every scheduler
reads the same answer, and each change adds a row to ``pipeline_history`` in the same
transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select, update

from reflow.store.models import pipeline_history, pipelines

PAUSED = "paused"
UNPAUSED = "unpaused"


@dataclass(frozen=True, slots=True)
class PipelineChange:
    """One line of a pipeline's history."""

    at: datetime
    action: str  # PAUSED or UNPAUSED
    actor: str
    detail: str | None


def set_paused(
    conn: Connection, name: str, paused: bool, *, actor: str, now: datetime, detail: str | None
) -> bool | None:
    """Pause or unpause ``name``; returns whether it changed (False: it already was), None
    when the store has no such pipeline. A change is recorded in its history."""
    row = conn.execute(
        select(pipelines.c.paused).where(pipelines.c.name == name).with_for_update()
    ).first()
    if row is None:
        return None
    if bool(row.paused) == paused:
        return False
    conn.execute(
        update(pipelines).where(pipelines.c.name == name).values(paused=paused, updated_at=now)
    )
    conn.execute(
        insert(pipeline_history).values(
            pipeline=name,
            at=now,
            action=PAUSED if paused else UNPAUSED,
            actor=actor,
            detail=detail,
        )
    )
    return True


def paused_pipelines(conn: Connection) -> frozenset[str]:
    """The names of the paused pipelines (a few rows through a tiny table scan)."""
    return frozenset(r[0] for r in conn.execute(select(pipelines.c.name).where(pipelines.c.paused)))


def history(conn: Connection, name: str, limit: int = 100) -> list[PipelineChange]:
    """The latest ``limit`` changes of ``name``, oldest first."""
    rows = conn.execute(
        select(
            pipeline_history.c.at,
            pipeline_history.c.action,
            pipeline_history.c.actor,
            pipeline_history.c.detail,
        )
        .where(pipeline_history.c.pipeline == name)
        .order_by(pipeline_history.c.at.desc(), pipeline_history.c.id.desc())
        .limit(limit)
    ).all()
    return [PipelineChange(r.at, r.action, r.actor, r.detail) for r in reversed(rows)]


def forget(conn: Connection, name: str) -> None:
    """Delete the history of a pipeline that is purged."""
    conn.execute(pipeline_history.delete().where(pipeline_history.c.pipeline == name))
