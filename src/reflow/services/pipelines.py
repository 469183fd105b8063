"""Use-cases on pipelines: list, show (also one whose file is gone), validate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from reflow.core.discovery import ImportProblem, load_file
from reflow.core.errors import NotFound, PipelineError
from reflow.core.naming import utcnow
from reflow.core.pipeline import Pipeline
from reflow.core.states import RunState
from reflow.services.project import Project
from reflow.store import pauses
from reflow.store import pipelines as store_pipelines
from reflow.store import runs as store_runs
from reflow.store.pauses import PipelineChange

LATEST_RUNS = 5  # shown per pipeline in the lists


@dataclass
class PipelineSummary:
    name: str
    schedule: str | None
    tasks: int
    active: bool
    next_logical_date: datetime | None
    latest: list[tuple[datetime, str]]  # (logical date, state) of the latest runs
    running: int
    queued: int
    paused: bool = False


def list_pipelines(project: Project) -> tuple[list[PipelineSummary], list[ImportProblem]]:
    catalog = project.catalog
    now = utcnow()
    out = []
    # A few statements whatever the number of pipelines: the overview must stay quick
    # with a thousand of them.
    with project.db.read() as conn:
        rows = store_pipelines.pipeline_rows(conn)
        active = store_runs.count_active_runs(conn)
        latest = store_runs.latest_runs(conn, LATEST_RUNS)
    for row in rows:
        pipeline = catalog.pipelines.get(row.name)
        out.append(
            PipelineSummary(
                name=row.name,
                schedule=row.structure.get("schedule"),
                tasks=len(row.structure.get("tasks", {})),
                active=bool(row.active),
                next_logical_date=_next(pipeline, row.next_logical_date, now),
                latest=[(r.logical_date, r.state) for r in latest.get(row.name, [])],
                running=active.get((row.name, RunState.RUNNING.value), 0),
                queued=active.get((row.name, RunState.QUEUED.value), 0),
                paused=bool(row.paused),
            )
        )
    return out, catalog.problems


def _next(pipeline: Pipeline | None, stored: datetime | None, now: datetime) -> datetime | None:
    if pipeline is None or pipeline.schedule.is_manual or pipeline.start_date is None:
        return None
    first = pipeline.schedule.ceil(pipeline.start_date)
    nxt = max(stored or first, first)
    if not pipeline.catchup:
        latest = pipeline.schedule.latest_complete(now)
        if latest is not None and latest > nxt:
            nxt = latest
    if pipeline.end_date is not None and nxt > pipeline.end_date:
        return None
    return nxt


def show_pipeline(project: Project, name: str) -> dict[str, Any]:
    pipeline = project.pipeline(name)
    data = pipeline.structure()
    data["file"] = pipeline.fileloc
    data["version"] = pipeline.version
    data["order"] = pipeline.topological()
    with project.db.read() as conn:
        data["paused"] = name in pauses.paused_pipelines(conn)
    return data


@dataclass(frozen=True)
class RecordedPipeline:
    """A pipeline as the store last recorded it: what is left to show of one whose file
    is gone."""

    name: str
    version: str
    file: str | None
    active: bool
    structure: dict[str, Any]
    order: list[str]  # task ids, upstream first
    paused: bool = False


def recorded(project: Project, name: str) -> RecordedPipeline | None:
    """The pipeline as last recorded, None when the store never saw it."""
    with project.db.read() as conn:
        rows = store_pipelines.pipeline_rows(conn, [name])
    if not rows:
        return None
    row = rows[0]
    structure = dict(row.structure)
    return RecordedPipeline(
        name=row.name,
        version=row.version,
        file=row.fileloc,
        active=bool(row.active),
        structure=structure,
        order=_order(structure.get("tasks") or {}),
        paused=bool(row.paused),
    )


def _order(tasks: Mapping[str, Any]) -> list[str]:
    """Task ids, upstream first, from a recorded structure."""
    done: list[str] = []
    remaining = dict(sorted(tasks.items()))
    while remaining:
        ready = [t for t, spec in remaining.items() if set(spec.get("upstream", ())) <= set(done)]
        for t in ready or list(remaining):
            done.append(t)
            del remaining[t]
    return done


def validate(project: Project, path: Path | None = None) -> tuple[list[Pipeline], list[str]]:
    """Load one file (or the whole folder); return the valid pipelines and the problems."""
    if path is None:
        catalog = project.catalog
        return list(catalog.pipelines.values()), [p.message for p in catalog.problems]
    if not path.exists():
        raise NotFound(f"no such file: {path}")
    try:
        return load_file(path), []
    except PipelineError as exc:
        return [], [str(exc)]


@dataclass(frozen=True)
class PauseResult:
    """What a pause or unpause did: ``changed`` is False when the pipeline already was in
    that state; ``running`` and ``queued`` count its active runs."""

    name: str
    paused: bool
    changed: bool
    running: int
    queued: int


def set_paused(
    project: Project, name: str, paused: bool, *, actor: str, reason: str | None = None
) -> PauseResult:
    """Pause a pipeline (no new scheduled run, no new task instance; what runs finishes)
    or unpause it (the scheduler then creates the runs it missed, under ``catchup``).
    The change is recorded in the pipeline's history with ``actor`` and ``reason``."""
    _ = project.catalog  # a pipeline whose file loads is recorded in the store from here on
    now = utcnow()

    def work(conn: Any) -> bool | None:
        return pauses.set_paused(conn, name, paused, actor=actor, now=now, detail=reason)

    changed = project.db.write(work)
    if changed is None:
        project.pipeline(name)  # names the problem: unknown, or a file that does not load
        raise NotFound(f"unknown pipeline {name!r}")
    with project.db.read() as conn:
        active = store_runs.count_active_runs(conn)
    return PauseResult(
        name=name,
        paused=paused,
        changed=changed,
        running=active.get((name, RunState.RUNNING.value), 0),
        queued=active.get((name, RunState.QUEUED.value), 0),
    )


def history(project: Project, name: str) -> list[PipelineChange]:
    """Who paused and unpaused the pipeline, and when (oldest first)."""
    with project.db.read() as conn:
        known = store_pipelines.pipeline_rows(conn, [name])
        changes = pauses.history(conn, name)
    if not known:
        project.pipeline(name)
        raise NotFound(f"unknown pipeline {name!r}")
    return changes
