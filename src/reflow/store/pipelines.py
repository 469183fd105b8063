"""Pipelines as the store records them: the version each follows (it only moves forward),
the import problems of the pipeline files, and each pipeline's next logical date."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from reflow.store._chunking import _chunks
from reflow.store.models import import_errors, pipeline_versions, pipelines
from reflow.store.records import ImportErrorRecord, PipelineRecord

# PostgreSQL advisory lock key of sync_pipelines.
_SYNC_LOCK = 0x7265666C6F7701


@dataclass(frozen=True)
class Synced:
    """What a process's sync did: ``changed`` pipelines moved to the version it read;
    ``stale`` ones were read from an older file than their current version (recorded by
    another process), so this process must not run them until it reads the file again."""

    changed: list[str]
    stale: dict[str, str]  # name -> the current version


def sync_pipelines(
    conn: Connection,
    found: Mapping[str, tuple[str, str | None, dict[str, Any], int | None]],
    problems: Mapping[str, tuple[str, str]],
    now: datetime,
) -> Synced:
    """Record the pipelines found (name -> version, file, structure, file stamp) and the
    import problems (path -> message, detail). Pipelines no longer found become inactive,
    except those whose file failed to import (their last good version stays active).

    The store owns each pipeline's current version, and it only moves forward: to a
    version read from a file modified later (``stamp``, ns) than the one the current
    version came from (or at the same time). Schedulers, commands and the web process
    parse the files at different moments; one that read an older file (or parsed before
    an edit and synced after another process recorded it) changes nothing and learns it
    is stale.
    """
    if conn.dialect.name == "postgresql":
        # Processes that parse the files at the same moment (schedulers starting together
        # on a new database, a command beside them) sync one after another, not into each
        # other's inserts; SQLite's write lock serializes them already.
        conn.execute(select(func.pg_advisory_xact_lock(_SYNC_LOCK)))
    existing = {r.name: r for r in PipelineRecord.from_result(conn.execute(select(pipelines)))}
    changed: list[str] = []
    stale: dict[str, str] = {}
    for name, (version, fileloc, structure, stamp) in found.items():
        row = existing.get(name)
        if row is None:
            conn.execute(
                insert(pipelines).values(
                    name=name,
                    version=version,
                    fileloc=fileloc,
                    active=True,
                    structure=structure,
                    generation=1,
                    source_stamp=stamp,
                    created_at=now,
                    updated_at=now,
                )
            )
        elif row.version != version:
            # Same stamp, other version: both read the same file (a module it imports
            # changed, or two writes within the clock's resolution): the later sync wins.
            forward = row.source_stamp is None or (stamp is not None and stamp >= row.source_stamp)
            if not forward:
                stale[name] = row.version
                continue
            conn.execute(
                update(pipelines)
                .where(pipelines.c.name == name)
                .values(
                    version=version,
                    fileloc=fileloc,
                    active=True,
                    structure=structure,
                    generation=row.generation + 1,
                    source_stamp=stamp,
                    updated_at=now,
                )
            )
        elif (
            not row.active
            or row.fileloc != fileloc
            or (stamp is not None and stamp > (row.source_stamp or 0))
        ):
            conn.execute(
                update(pipelines)
                .where(pipelines.c.name == name)
                .values(
                    fileloc=fileloc,
                    active=True,
                    source_stamp=max(stamp or 0, row.source_stamp or 0) or None,
                    updated_at=now,
                )
            )
        if row is None or row.version != version:
            changed.append(name)
            known = conn.execute(
                select(pipeline_versions.c.version).where(
                    pipeline_versions.c.pipeline == name, pipeline_versions.c.version == version
                )
            ).first()
            if known is None:
                conn.execute(
                    insert(pipeline_versions).values(
                        pipeline=name, version=version, structure=structure, created_at=now
                    )
                )
    broken_files = set(problems)
    for name, row in existing.items():
        if name not in found and row.active and row.fileloc not in broken_files:
            conn.execute(
                update(pipelines)
                .where(pipelines.c.name == name)
                .values(active=False, updated_at=now)
            )
    conn.execute(delete(import_errors))
    if problems:
        conn.execute(
            insert(import_errors),
            [
                {"path": path, "message": msg, "detail": detail, "created_at": now}
                for path, (msg, detail) in problems.items()
            ],
        )
    return Synced(changed, stale)


def current_versions(conn: Connection, names: Iterable[str]) -> dict[str, str]:
    """The current version of each pipeline named (the one its runs follow)."""
    out: dict[str, str] = {}
    for chunk in _chunks(sorted(set(names))):
        rows = conn.execute(
            select(pipelines.c.name, pipelines.c.version).where(pipelines.c.name.in_(chunk))
        ).all()
        out.update({r[0]: r[1] for r in rows})
    return out


def pipeline_rows(conn: Connection, names: Iterable[str] | None = None) -> list[PipelineRecord]:
    stmt = select(pipelines).order_by(pipelines.c.name)
    if names is not None:
        stmt = stmt.where(pipelines.c.name.in_(list(names)))
    return PipelineRecord.from_result(conn.execute(stmt))


def list_import_errors(conn: Connection) -> list[ImportErrorRecord]:
    return ImportErrorRecord.from_result(
        conn.execute(select(import_errors).order_by(import_errors.c.path))
    )


def set_next_logical_dates(conn: Connection, values: Mapping[str, datetime]) -> None:
    """Set each pipeline's next logical date, one parameter set per pipeline."""
    if values:
        conn.execute(
            update(pipelines)
            .where(pipelines.c.name == bindparam("p_name"))
            .values(next_logical_date=bindparam("p_next")),
            [{"p_name": name, "p_next": value} for name, value in values.items()],
        )
