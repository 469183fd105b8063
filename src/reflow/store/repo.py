"""Named queries: the only place that reads or writes the metadata database.

Every state change goes through :func:`transition`, which names the states it may come
from, checks them against the table in ``core.states``, counts the rows it changed and
writes one event per row, in the caller's transaction.

Invariant the scheduler's tick relies on: every change that can make a task instance of
a run ready, or end the run, adds one to the run's ``change_seq`` in the transaction that
makes it (:func:`transition` and :func:`add_task_instances` do it; nothing else writes a
task instance's state). The scheduler looks again only at running runs whose
``change_seq`` differs from the ``seen_seq`` it recorded (:func:`unsettled_runs`), at
retries that fell due, and at runs of pipelines whose version changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError

from reflow.core.edits import Edit, edit_for
from reflow.core.errors import Conflict, LeaseLost
from reflow.core.states import (
    BACKFILL_TRANSITIONS,
    PRIORITY,
    RUN_ACTIVE,
    RUN_TRANSITIONS,
    TI_TRANSITIONS,
    TRY_TRANSITIONS,
    BackfillState,
    FailureReason,
    RunOrigin,
    RunState,
    TIState,
    TryState,
    check_transition,
)
from reflow.store.models import (
    UNSEEN_CHANGES,
    backfills,
    events,
    import_errors,
    pipeline_versions,
    pipelines,
    run_attempts,
    runs,
    schedulers,
    task_instances,
    tries,
)
from reflow.store.records import (
    CancelRequest,
    ExpiredRun,
    ExpiredTry,
    FinishingTry,
    HistoryEvent,
    ImportErrorRecord,
    LiveTry,
    PipelineRecord,
    QueuedRun,
    ReadyTaskInstance,
    Run,
    RunAttempt,
    RunSummary,
    SchedulerRecord,
    TaskInstance,
    TaskTry,
    Try,
)

_TABLES: dict[str, tuple[Table, dict[Any, frozenset[Any]], type]] = {
    "backfill": (backfills, BACKFILL_TRANSITIONS, BackfillState),
    "run": (runs, RUN_TRANSITIONS, RunState),
    "ti": (task_instances, TI_TRANSITIONS, TIState),
    "try": (tries, TRY_TRANSITIONS, TryState),
}
_CHUNK = 500
# PostgreSQL advisory lock key of sync_pipelines.
_SYNC_LOCK = 0x7265666C6F7701
_K = TypeVar("_K", int, str, datetime)
_LIVE_TRY = tries.c.state.in_([TryState.QUEUED.value, TryState.RUNNING.value])
# Moves of a task instance that make nothing else ready and end nothing: the scheduler's
# own steps towards a try. Every other move counts as a change of its run.
_NOT_A_CHANGE = frozenset({TIState.SCHEDULED, TIState.QUEUED, TIState.RUNNING})


def _chunks(ids: Sequence[_K]) -> Iterable[Sequence[_K]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


# -- the one state writer -------------------------------------------------------------------
def transition(
    conn: Connection,
    entity: str,
    ids: Iterable[int],
    to: Any,
    from_: Iterable[Any],
    now: datetime,
    *,
    detail: str | None = None,
    guard: ColumnElement[bool] | None = None,
    **values: Any,
) -> list[int]:
    """Move rows ``ids`` of ``entity`` from one of ``from_`` to ``to``; return the ids moved.

    Rows in another state, or failing ``guard`` (an extra condition on the row, such as
    the try's owner), are left alone (a lost race, for the caller to judge). Raises
    IllegalTransition when the table forbids ``from_ -> to``: that is a bug.
    """
    table, rules, enum = _TABLES[entity]
    sources = frozenset(enum(s) for s in from_)
    check_transition(rules, sources, enum(to))
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return []
    extra, counts = _side_effects(entity, enum(to), now)
    guards = [guard] if guard is not None else []
    moved: list[tuple[int, str, int | None]] = []
    for chunk in _chunks(wanted):
        if counts:
            # Before the rows move: a run is always locked before its task instances.
            _count_changes(conn, chunk, sources, guards)
        # Events name the run they concern; a backfill's concern several.
        run_col = table.c.id if entity in ("run", "backfill") else table.c.run
        if len(sources) == 1:
            (old,) = sources
            stmt = (
                update(table)
                .where(table.c.id.in_(chunk), table.c.state == old.value, *guards)
                .values(state=enum(to).value, **extra, **values)
                .returning(table.c.id, run_col)
            )
            moved += [(r[0], old.value, r[1]) for r in conn.execute(stmt)]
        else:
            current = conn.execute(
                select(table.c.id, table.c.state, run_col).where(
                    table.c.id.in_(chunk), table.c.state.in_([s.value for s in sources]), *guards
                )
            ).all()
            by_old: dict[str, list[int]] = {}
            for row in current:
                by_old.setdefault(row[1], []).append(row[0])
            run_of = {row[0]: row[2] for row in current}
            for old_state, old_ids in by_old.items():
                stmt = (
                    update(table)
                    .where(table.c.id.in_(old_ids), table.c.state == old_state, *guards)
                    .values(state=enum(to).value, **extra, **values)
                    .returning(table.c.id)
                )
                moved += [(r[0], old_state, run_of[r[0]]) for r in conn.execute(stmt)]
    _record_events(conn, entity, moved, enum(to).value, now, detail)
    return [m[0] for m in moved]


def transition_each(
    conn: Connection,
    entity: str,
    values: Mapping[int, Mapping[str, Any]],
    to: Any,
    from_: Iterable[Any],
    now: datetime,
    *,
    detail: str | Mapping[int, str | None] | None = None,
    at: Mapping[int, datetime] | None = None,
    guard: ColumnElement[bool] | None = None,
) -> list[int]:
    """:func:`transition` for rows that each take values of their own (``values``: id ->
    column values, the same columns for every row; ``detail`` and the events' time ``at``
    per row, else for all): a few statements for any number of rows. The rows that can
    move are read and locked first (FOR UPDATE on PostgreSQL; the write lock on SQLite),
    then updated, one parameter set each."""
    table, rules, enum = _TABLES[entity]
    sources = frozenset(enum(s) for s in from_)
    check_transition(rules, sources, enum(to))
    if not values:
        return []
    columns = sorted(next(iter(values.values())))
    if any(sorted(v) != columns for v in values.values()):
        raise ValueError("transition_each: every row must set the same columns")
    extra, counts = _side_effects(entity, enum(to), now)
    guards = [guard] if guard is not None else []
    run_col = table.c.id if entity in ("run", "backfill") else table.c.run
    # Parameter names must differ from the columns': those are reserved for the SET clause.
    stmt = (
        update(table)
        .where(table.c.id == bindparam("p_id"), table.c.state == bindparam("p_old"))
        .values(state=enum(to).value, **extra, **{c: bindparam(f"p_{c}") for c in columns})
    )
    moved: list[tuple[int, str, int | None]] = []
    for chunk in _chunks(list(values)):
        if counts:
            _count_changes(conn, chunk, sources, guards)
        current = conn.execute(
            select(table.c.id, table.c.state, run_col)
            .where(table.c.id.in_(chunk), table.c.state.in_([s.value for s in sources]), *guards)
            .order_by(table.c.id)
            .with_for_update()
        ).all()
        if not current:
            continue
        conn.execute(
            stmt,
            [
                {"p_id": r[0], "p_old": r[1], **{f"p_{c}": values[r[0]][c] for c in columns}}
                for r in current
            ],
        )
        moved += [(r[0], r[1], r[2]) for r in current]
    _record_events(conn, entity, moved, enum(to).value, at or now, detail)
    return [m[0] for m in moved]


def _side_effects(entity: str, to: Any, now: datetime) -> tuple[dict[str, Any], bool]:
    """What every move of ``entity`` to ``to`` also sets, and whether it counts as a
    change of its run (see the module's invariant; a run's own moves count on it)."""
    extra: dict[str, Any] = {"updated_at": now} if entity in ("ti", "backfill") else {}
    if entity == "run":
        extra["change_seq"] = runs.c.change_seq + 1
    return extra, entity == "ti" and to not in _NOT_A_CHANGE


def _record_events(
    conn: Connection,
    entity: str,
    moved: Sequence[tuple[int, str | None, int | None]],
    new: str,
    now: datetime | Mapping[int, datetime],
    detail: str | Mapping[int, str | None] | None,
) -> None:
    """One event per moved row (id, old state, run), in one statement; ``now`` and
    ``detail`` for all rows, or per row. A move that notifies (a run failing, a backfill
    ending...) also gets its outbox entry here, committed with it."""
    if not moved:
        return
    from reflow.store import outbox  # here: a command that only reads needs no notifications

    outbox.note_moves(conn, entity, moved, new, now)
    conn.execute(
        insert(events),
        [
            {
                "at": now[i] if isinstance(now, Mapping) else now,
                "entity": entity,
                "entity_id": i,
                "run": None if entity == "backfill" else run,
                "old": old,
                "new": new,
                "detail": detail.get(i) if isinstance(detail, Mapping) else detail,
            }
            for i, old, run in moved
        ],
    )


def _count_changes(
    conn: Connection,
    ti_ids: Sequence[int],
    sources: Iterable[Any],
    guards: Sequence[ColumnElement[bool]],
) -> None:
    """Count a change on the runs of the task instances about to move (see the module's
    invariant). A move that then loses its race costs the scheduler one needless look."""
    moving = select(task_instances.c.run).where(
        task_instances.c.id.in_(ti_ids),
        task_instances.c.state.in_([s.value for s in sources]),
        *guards,
    )
    conn.execute(update(runs).where(runs.c.id.in_(moving)).values(change_seq=runs.c.change_seq + 1))


# -- pipelines ------------------------------------------------------------------------------
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


# -- runs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class NewRun:
    """A queued run to create, with its first attempt and a pending TI per task."""

    pipeline: str
    run_id: str
    logical_date: datetime
    interval: tuple[datetime, datetime]
    origin: RunOrigin
    conf: Mapping[str, Any]
    version: str
    task_ids: Sequence[str]
    backfill_id: int | None = None
    priority: int | None = None  # None: its origin's (core.states.PRIORITY)


def create_run(
    conn: Connection,
    *,
    pipeline: str,
    run_id: str,
    logical_date: datetime,
    interval: tuple[datetime, datetime],
    origin: RunOrigin,
    conf: Mapping[str, Any],
    version: str,
    task_ids: Sequence[str],
    now: datetime,
    backfill_id: int | None = None,
    priority: int | None = None,
) -> int:
    """Insert a queued run with its first attempt and a pending TI per task.

    Raises Conflict when a dated run already exists for that logical date (or the run id
    is taken); the caller's transaction is left usable.
    """
    new = NewRun(
        pipeline,
        run_id,
        logical_date,
        interval,
        origin,
        conf,
        version,
        task_ids,
        backfill_id,
        priority,
    )
    try:
        with conn.begin_nested():
            (run_pk,) = _insert_runs(conn, [new], now)
    except IntegrityError:
        raise Conflict(
            f"pipeline {pipeline!r} already has a run for {logical_date.isoformat()} ({run_id})"
        ) from None
    return run_pk


def create_runs(conn: Connection, new: Sequence[NewRun], now: datetime) -> list[int | None]:
    """Insert many queued runs in a few statements; the id of each, or None for one whose
    date already has a run (created a moment ago by a backfill or another scheduler)."""
    if not new:
        return []
    try:
        with conn.begin_nested():
            return list(_insert_runs(conn, new, now))
    except IntegrityError:  # one of them lost a race: each on its own, skipping those
        made: list[int | None] = []
        for n in new:
            try:
                with conn.begin_nested():
                    made += _insert_runs(conn, [n], now)
            except IntegrityError:
                made.append(None)
        return made


def _insert_runs(conn: Connection, new: Sequence[NewRun], now: datetime) -> list[int]:
    ids = [
        r.id
        for r in conn.execute(
            insert(runs).returning(runs.c.id, sort_by_parameter_order=True),
            [
                {
                    "pipeline": n.pipeline,
                    "run_id": n.run_id,
                    "logical_date": n.logical_date,
                    "data_interval_start": n.interval[0],
                    "data_interval_end": n.interval[1],
                    "origin": n.origin.value,
                    "state": RunState.QUEUED.value,
                    "conf": dict(n.conf),
                    "attempt": 1,
                    "version": n.version,
                    "backfill_id": n.backfill_id,
                    "priority": PRIORITY[n.origin] if n.priority is None else n.priority,
                    "created_at": now,
                    "queued_at": now,
                }
                for n in new
            ],
        )
    ]
    conn.execute(
        insert(run_attempts),
        [
            {
                "run": run_pk,
                "attempt": 1,
                "origin": n.origin.value,
                "conf": dict(n.conf),
                "version": n.version,
                "backfill_id": n.backfill_id,
                "created_at": now,
            }
            for run_pk, n in zip(ids, new, strict=True)
        ],
    )
    # A new run is unseen by the scheduler already (change_seq 1, seen_seq 0).
    tis = [_pending(run_pk, t, now) for run_pk, n in zip(ids, new, strict=True) for t in n.task_ids]
    if tis:
        conn.execute(insert(task_instances), tis)
    conn.execute(
        insert(events),
        [
            {
                "at": now,
                "entity": "run",
                "entity_id": run_pk,
                "run": run_pk,
                "old": None,
                "new": RunState.QUEUED.value,
                "detail": f"created ({n.origin.value})",
            }
            for run_pk, n in zip(ids, new, strict=True)
        ],
    )
    return ids


def _pending(run_pk: int, task_id: str, now: datetime) -> dict[str, Any]:
    return {
        "run": run_pk,
        "task_id": task_id,
        "state": TIState.PENDING.value,
        "try_number": 0,
        "lost_tries": 0,
        "lost_streak": 0,
        "updated_at": now,
    }


def add_task_instances(
    conn: Connection, run_pk: int, task_ids: Iterable[str], now: datetime
) -> list[int]:
    rows = [_pending(run_pk, t, now) for t in task_ids]
    if not rows:
        return []
    conn.execute(update(runs).where(runs.c.id == run_pk).values(change_seq=runs.c.change_seq + 1))
    return list(conn.execute(insert(task_instances).returning(task_instances.c.id), rows).scalars())


def pending_again() -> dict[str, Any]:
    """The values of a task instance made pending again (cleared, or its task back in the
    pipeline): no end, no reason, and its full retries (earlier tries do not count)."""
    return {
        "next_try_at": None,
        "failure_reason": None,
        "started_at": None,
        "ended_at": None,
        "lost_tries": task_instances.c.try_number,
        "lost_streak": 0,
    }


def reconcile_task_instances(
    conn: Connection,
    run_pk: int,
    tis: Sequence[TaskInstance],
    task_ids: Sequence[str],
    now: datetime,
    *,
    finished_too: bool,
    version: str | None = None,
) -> Edit:
    """Bring a run's task instances ``tis`` to the pipeline's ``task_ids`` as
    ``core.edits`` states: new tasks get a pending instance, restored ones are pending
    again, live instances of removed tasks have their try stopped (they become ``removed``
    when it has ended), the others of removed tasks become ``removed`` (finished ones
    only when ``finished_too``: the run is being re-run). Every change is an event."""
    edit = edit_for(
        tis,
        task_ids,
        rerun=finished_too,
    )
    if edit.empty:
        return edit
    which = f" (version {version})" if version else ""
    added = add_task_instances(conn, run_pk, edit.add, now)
    if added:
        conn.execute(
            insert(events),
            [
                {
                    "at": now,
                    "entity": "ti",
                    "entity_id": ti_id,
                    "run": run_pk,
                    "old": None,
                    "new": TIState.PENDING.value,
                    "detail": f"task added to the pipeline{which}",
                }
                for ti_id in added
            ],
        )
    transition(
        conn,
        "ti",
        edit.restore,
        TIState.PENDING,
        [TIState.REMOVED],
        now,
        detail=f"task back in the pipeline{which}",
        **pending_again(),
    )
    if edit.stop:
        stopping = [
            t.id
            for chunk in _chunks(list(edit.stop))
            for t in conn.execute(select(tries.c.id).where(tries.c.ti.in_(chunk), _LIVE_TRY)).all()
        ]
        request_cancel(conn, stopping, FailureReason.TASK_REMOVED.value)
    gone = {ti.id: TIState(ti.state) for ti in tis if ti.id in set(edit.remove)}
    # Never started ones get no end time (no duration to show); finished ones keep theirs.
    transition(
        conn,
        "ti",
        list(gone),
        TIState.REMOVED,
        set(gone.values()),
        now,
        detail=f"task removed from the pipeline{which}",
    )
    return edit


def run_history(conn: Connection, run_pk: int) -> list[HistoryEvent]:
    """The notable events of a run, oldest first: those that carry a detail (created, a
    new attempt, a clear, a mark, a pipeline edit, a failure's reason), with the task of
    each task instance's event (None for the run's own)."""
    stmt = (
        select(
            events.c.at,
            events.c.entity,
            events.c.old,
            events.c.new,
            events.c.detail,
            task_instances.c.task_id,
        )
        .select_from(
            events.outerjoin(
                task_instances,
                (events.c.entity == "ti") & (task_instances.c.id == events.c.entity_id),
            )
        )
        .where(events.c.run == run_pk, events.c.detail.is_not(None))
        .order_by(events.c.id)
    )
    return HistoryEvent.from_result(conn.execute(stmt))


def dated_runs_taken(
    conn: Connection, wanted: Iterable[tuple[str, datetime]]
) -> set[tuple[str, datetime]]:
    """Of the (pipeline, logical date) pairs ``wanted``, those that have a dated run."""
    wanted = set(wanted)
    taken: set[tuple[str, datetime]] = set()
    for chunk in _chunks(sorted({name for name, _ in wanted})):
        dates = sorted({d for name, d in wanted if name in chunk})
        for day in _chunks(dates):
            rows = conn.execute(
                select(runs.c.pipeline, runs.c.logical_date).where(
                    runs.c.pipeline.in_(chunk),
                    runs.c.logical_date.in_(day),
                    runs.c.origin != RunOrigin.MANUAL.value,
                )
            ).all()
            taken.update((r.pipeline, r.logical_date) for r in rows)
    return taken & wanted


def set_next_logical_dates(conn: Connection, values: Mapping[str, datetime]) -> None:
    """Set each pipeline's next logical date, one parameter set per pipeline."""
    if values:
        conn.execute(
            update(pipelines)
            .where(pipelines.c.name == bindparam("p_name"))
            .values(next_logical_date=bindparam("p_next")),
            [{"p_name": name, "p_next": value} for name, value in values.items()],
        )


def count_running_runs(conn: Connection) -> dict[str, int]:
    rows = conn.execute(
        select(runs.c.pipeline, func.count())
        .where(runs.c.state == RunState.RUNNING.value)
        .group_by(runs.c.pipeline)
    ).all()
    return {r[0]: int(r[1]) for r in rows}


def count_active_runs(conn: Connection) -> dict[tuple[str, str], int]:
    """How many runs each pipeline has queued and running: (pipeline, state) -> count."""
    rows = conn.execute(
        select(runs.c.pipeline, runs.c.state, func.count())
        .where(runs.c.state.in_([s.value for s in RUN_ACTIVE]))
        .group_by(runs.c.pipeline, runs.c.state)
    ).all()
    return {(r[0], r[1]): int(r[2]) for r in rows}


def latest_runs(conn: Connection, per_pipeline: int) -> dict[str, list[RunSummary]]:
    """The newest runs of every recorded pipeline (by logical date, then id), at most
    ``per_pipeline`` each, newest first: one statement, which for each pipeline walks the
    (pipeline, logical_date) index a few steps, whatever the length of the history."""
    columns = (runs.c.pipeline, runs.c.logical_date, runs.c.id, runs.c.state)
    newest = (
        select(*columns)
        .where(runs.c.pipeline == pipelines.c.name)
        .order_by(runs.c.logical_date.desc(), runs.c.id.desc())
        .limit(per_pipeline)
    )
    if conn.dialect.name == "sqlite":  # no LATERAL: the runs whose id is among the newest
        ids = newest.with_only_columns(runs.c.id).correlate(pipelines)
        statement = select(*columns).select_from(pipelines.join(runs, runs.c.id.in_(ids)))
    else:  # a nested loop over the pipelines, each a short index scan
        latest = newest.lateral("latest")
        statement = select(latest).select_from(pipelines.join(latest, true()))
    out: dict[str, list[RunSummary]] = {}
    for row in RunSummary.from_result(conn.execute(statement)):
        out.setdefault(row.pipeline, []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: (r.logical_date, r.id), reverse=True)
    return out


def queued_runs(conn: Connection, pipeline_names: Iterable[str] | None = None) -> list[QueuedRun]:
    stmt = select(
        runs.c.id,
        runs.c.pipeline,
        runs.c.origin,
        runs.c.priority,
        runs.c.logical_date,
        runs.c.backfill_id,
    ).where(runs.c.state == RunState.QUEUED.value)
    if pipeline_names is not None:
        stmt = stmt.where(runs.c.pipeline.in_(list(pipeline_names)))
    return QueuedRun.from_result(conn.execute(stmt))


def admission_signature(conn: Connection) -> tuple[Any, ...]:
    """What admission depends on, in brief: which runs are queued and running (count, and
    largest and summed id of each), and the open backfills' states and limits. The same
    signature means that the same runs wait under the same limits."""
    counts = conn.execute(
        select(runs.c.state, func.count(), func.max(runs.c.id), func.sum(runs.c.id))
        .where(runs.c.state.in_([RunState.QUEUED.value, RunState.RUNNING.value]))
        .group_by(runs.c.state)
        .order_by(runs.c.state)
    ).all()
    steering = conn.execute(
        select(backfills.c.id, backfills.c.state, backfills.c.max_active_runs)
        .where(backfills.c.state.in_([BackfillState.RUNNING.value, BackfillState.PAUSED.value]))
        .order_by(backfills.c.id)
    ).all()
    return tuple(tuple(r) for r in counts), tuple(tuple(r) for r in steering)


def count_running_by_backfill(conn: Connection, ids: Iterable[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for chunk in _chunks(list(ids)):
        rows = conn.execute(
            select(runs.c.backfill_id, func.count())
            .where(runs.c.state == RunState.RUNNING.value, runs.c.backfill_id.in_(chunk))
            .group_by(runs.c.backfill_id)
        ).all()
        out.update({r[0]: int(r[1]) for r in rows})
    return out


def active_runs(conn: Connection, pipeline_names: Iterable[str] | None = None) -> list[Run]:
    """Queued and running runs, oldest logical date first.

    Sorted here, not in SQL: an ORDER BY on logical_date lets the planner walk the
    (pipeline, logical_date) index through the whole history instead of the state index.
    """
    stmt = select(runs).where(runs.c.state.in_([s.value for s in RUN_ACTIVE]))
    if pipeline_names is not None:
        stmt = stmt.where(runs.c.pipeline.in_(list(pipeline_names)))
    return sorted(Run.from_result(conn.execute(stmt)), key=lambda r: (r.logical_date, r.id))


def run_task_instances(conn: Connection, run_pks: Sequence[int]) -> list[TaskInstance]:
    if not run_pks:
        return []
    out: list[TaskInstance] = []
    for chunk in _chunks(list(run_pks)):
        out += TaskInstance.from_result(
            conn.execute(select(task_instances).where(task_instances.c.run.in_(chunk)))
        )
    return out


# -- the scheduler's view of running runs ---------------------------------------------------
def unsettled_runs(conn: Connection) -> list[Run]:
    """Running runs with changes the scheduler has not acted on yet (a partial index holds
    just those: the cost follows what changed, not how much is running)."""
    return Run.from_result(
        conn.execute(
            select(runs).where(runs.c.state == RunState.RUNNING.value, text(UNSEEN_CHANGES))
        )
    )


def runs_with_due_retries(conn: Connection, now: datetime) -> list[Run]:
    """Running runs with a task instance whose wait before its next try is over."""
    due = select(task_instances.c.run).where(
        task_instances.c.state == TIState.UP_FOR_RETRY.value,
        or_(task_instances.c.next_try_at.is_(None), task_instances.c.next_try_at <= now),
    )
    return Run.from_result(
        conn.execute(select(runs).where(runs.c.id.in_(due), runs.c.state == RunState.RUNNING.value))
    )


def running_runs(conn: Connection, pipeline_names: Iterable[str] | None = None) -> list[Run]:
    """Every running run (of ``pipeline_names``): the scheduler's full look, on start-up
    and after a pipeline's version changed."""
    stmt = select(runs).where(runs.c.state == RunState.RUNNING.value)
    if pipeline_names is not None:
        stmt = stmt.where(runs.c.pipeline.in_(list(pipeline_names)))
    return Run.from_result(conn.execute(stmt))


def hold_unchanged_runs(conn: Connection, seen: Mapping[int, int]) -> set[int]:
    """Of the runs in ``seen`` (id -> the ``change_seq`` the scheduler read), those still
    running and unchanged since, locked until the transaction ends (on PostgreSQL; the
    write lock covers SQLite). Decisions made from that read apply to these only."""
    held: set[int] = set()
    for chunk in _chunks(sorted(seen)):
        rows = conn.execute(
            select(runs.c.id, runs.c.change_seq)
            .where(runs.c.id.in_(chunk), runs.c.state == RunState.RUNNING.value)
            .order_by(runs.c.id)
            .with_for_update()
        ).all()
        held.update(r.id for r in rows if r.change_seq == seen[r.id])
    return held


def settle_runs(conn: Connection, run_pks: Iterable[int]) -> None:
    """Record that the scheduler has acted on every change of these runs so far."""
    for chunk in _chunks(sorted(set(run_pks))):
        conn.execute(update(runs).where(runs.c.id.in_(chunk)).values(seen_seq=runs.c.change_seq))


def scheduled_task_instances(
    conn: Connection,
    *,
    limit: int,
    weights: Mapping[tuple[str, str], int] | None = None,
    skip_pipelines: Iterable[str] = (),
    skip_tasks: Iterable[tuple[str, str]] = (),
    run_pks: Iterable[int] | None = None,
) -> list[ReadyTaskInstance]:
    """Up to ``limit`` task instances ready to launch (``scheduled``) of running runs, best
    first: by their run's priority, their task's priority weight (``weights``: (pipeline,
    task) -> weight, for those not 1), then logical date and run. ``skip_tasks`` are
    (pipeline, task) pairs that cannot start now (their pool is full). Each has its
    run's columns and ``ti_id``/``ti_task_id``."""
    weight = (
        case(
            *[
                (and_(runs.c.pipeline == p, task_instances.c.task_id == t), w)
                for (p, t), w in sorted(weights.items())
            ],
            else_=1,
        )
        if weights
        else None
    )
    stmt = (
        select(
            *runs.c,
            task_instances.c.id.label("ti_id"),
            task_instances.c.task_id.label("ti_task_id"),
        )
        .join(runs, runs.c.id == task_instances.c.run)
        .where(
            task_instances.c.state == TIState.SCHEDULED.value,
            runs.c.state == RunState.RUNNING.value,
        )
        .order_by(
            runs.c.priority.desc(),
            *([weight.desc()] if weight is not None else []),
            runs.c.logical_date,
            runs.c.id,
        )
        .limit(limit)
    )
    skip = sorted(set(skip_pipelines))
    if skip:
        stmt = stmt.where(runs.c.pipeline.not_in(skip))
    pairs = sorted(set(skip_tasks))
    if pairs:
        stmt = stmt.where(tuple_(runs.c.pipeline, task_instances.c.task_id).not_in(pairs))
    if run_pks is not None:
        stmt = stmt.where(runs.c.id.in_(sorted(set(run_pks))))
    return ReadyTaskInstance.from_result(conn.execute(stmt))


def start_runs(
    conn: Connection, deadlines: Mapping[int, datetime | None], now: datetime
) -> list[int]:
    """Start queued runs (id -> its run_timeout deadline, or None); returns those started."""
    by_deadline: dict[datetime | None, list[int]] = {}
    for run_pk, deadline in deadlines.items():
        by_deadline.setdefault(deadline, []).append(run_pk)
    started: list[int] = []
    for deadline, run_pks in by_deadline.items():
        started += transition(
            conn,
            "run",
            run_pks,
            RunState.RUNNING,
            [RunState.QUEUED],
            now,
            started_at=now,
            deadline=deadline,
            ended_at=None,
        )
    _set_current_attempts(conn, started, started_at=now, state=RunState.RUNNING.value)
    return started


def start_run(conn: Connection, run_pk: int, now: datetime, deadline: datetime | None) -> bool:
    return bool(start_runs(conn, {run_pk: deadline}, now))


def finish_runs(
    conn: Connection,
    run_pks: Sequence[int],
    state: RunState,
    now: datetime,
    detail: str | None = None,
) -> list[int]:
    """End runs in ``state`` (from running; cancelled also from queued), with their
    current attempts; returns those ended."""
    sources = (
        [RunState.RUNNING, RunState.QUEUED] if state == RunState.CANCELLED else [RunState.RUNNING]
    )
    moved = transition(conn, "run", run_pks, state, sources, now, detail=detail, ended_at=now)
    _set_current_attempts(conn, moved, ended_at=now, state=state.value)
    return moved


def finish_run(
    conn: Connection, run_pk: int, state: RunState, now: datetime, detail: str | None = None
) -> bool:
    return bool(finish_runs(conn, [run_pk], state, now, detail))


def _set_current_attempts(conn: Connection, run_pks: Sequence[int], **values: Any) -> None:
    """Set ``values`` on the current attempt of each run (its start, or its end)."""
    current = select(runs.c.attempt).where(runs.c.id == run_attempts.c.run).scalar_subquery()
    for chunk in _chunks(list(run_pks)):
        conn.execute(
            update(run_attempts)
            .where(run_attempts.c.run.in_(chunk), run_attempts.c.attempt == current)
            .values(**values)
        )


def set_run_version(conn: Connection, run_pk: int, version: str) -> None:
    conn.execute(update(runs).where(runs.c.id == run_pk).values(version=version))


# -- tries ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """A scheduled task instance that a scheduler takes, with what its new try needs."""

    ti_id: int
    run_pk: int
    run_attempt: int
    launcher: str
    log_path_for: Callable[[int], str]  # try number -> the try's log
    timeout: float | None
    kill_grace: float
    pool: str | None = None
    pool_slots: int = 1


def queue_tries(
    conn: Connection, claims: Sequence[Claim], *, owner: int, now: datetime
) -> dict[int, tuple[int, int]]:
    """Take scheduled task instances: each moves scheduled -> queued with a new try row of
    ``owner``. Returns task instance id -> (try id, try number) for those taken; another
    scheduler took the others first. A few statements for any number of claims."""
    by_ti = {c.ti_id: c for c in claims}
    taken = transition(
        conn,
        "ti",
        list(by_ti),
        TIState.QUEUED,
        [TIState.SCHEDULED],
        now,
        try_number=task_instances.c.try_number + 1,
        next_try_at=None,
        failure_reason=None,
    )
    if not taken:
        return {}
    numbers: dict[int, int] = {}
    for chunk in _chunks(taken):
        found = conn.execute(
            select(task_instances.c.id, task_instances.c.try_number).where(
                task_instances.c.id.in_(chunk)
            )
        ).all()
        numbers.update((r.id, r.try_number) for r in found)
    rows = [
        {
            "ti": ti_id,
            "run": by_ti[ti_id].run_pk,
            "try_number": numbers[ti_id],
            "run_attempt": by_ti[ti_id].run_attempt,
            "state": TryState.QUEUED.value,
            "launcher": by_ti[ti_id].launcher,
            "owner": owner,
            "log_path": by_ti[ti_id].log_path_for(numbers[ti_id]),
            "queued_at": now,
            # The task timeout counts from the start (mark_tries_started moves it there); a
            # try adopted before its start was recorded keeps this earlier one.
            "deadline": (
                now + timedelta(seconds=timeout) if (timeout := by_ti[ti_id].timeout) else None
            ),
            "kill_grace": by_ti[ti_id].kill_grace,
            "pool": by_ti[ti_id].pool,
            "pool_slots": by_ti[ti_id].pool_slots,
        }
        for ti_id in taken
    ]
    made = conn.execute(
        insert(tries).returning(tries.c.id, tries.c.ti, sort_by_parameter_order=True), rows
    ).all()
    _record_events(
        conn,
        "try",
        [(r.id, None, by_ti[r.ti].run_pk) for r in made],
        TryState.QUEUED.value,
        now,
        None,
    )
    return {r.ti: (r.id, numbers[r.ti]) for r in made}


def queue_try(
    conn: Connection,
    *,
    ti_id: int,
    run_pk: int,
    run_attempt: int,
    launcher: str,
    owner: int,
    log_path_for: Callable[[int], str],
    timeout: float | None,
    kill_grace: float,
    now: datetime,
) -> tuple[int, int] | None:
    """:func:`queue_tries` for one task instance: (try id, try number), or None."""
    claim = Claim(ti_id, run_pk, run_attempt, launcher, log_path_for, timeout, kill_grace)
    return queue_tries(conn, [claim], owner=owner, now=now).get(ti_id)


@dataclass(frozen=True)
class Start:
    """Where and when a queued try started running."""

    try_id: int
    ti_id: int
    pid: int | None
    host: str
    external_id: str
    at: datetime
    timeout: float | None = None


def mark_tries_started(conn: Connection, starts: Sequence[Start], *, owner: int) -> list[int]:
    """Record where queued tries of ``owner`` run, each started at its ``at``: its
    ``timeout`` counts from then. Returns the tries recorded; the others are no longer
    queued or no longer ``owner``'s (another scheduler declared them lost meanwhile)."""
    if not starts:
        return []
    now = max(s.at for s in starts)
    moved = transition_each(
        conn,
        "try",
        {
            s.try_id: {
                "pid": s.pid,
                "host": s.host,
                "external_id": s.external_id,
                "started_at": s.at,
                "deadline": s.at + timedelta(seconds=s.timeout) if s.timeout else None,
            }
            for s in starts
        },
        TryState.RUNNING,
        [TryState.QUEUED],
        now,
        guard=tries.c.owner == owner,
    )
    recorded = set(moved)
    transition_each(
        conn,
        "ti",
        {s.ti_id: {"started_at": s.at, "ended_at": None} for s in starts if s.try_id in recorded},
        TIState.RUNNING,
        [TIState.QUEUED],
        now,
    )
    return moved


def ended_try_logs(conn: Connection, locations: Sequence[str]) -> set[str]:
    """The logs (``log_path`` values) among ``locations`` whose try has ended."""
    found: set[str] = set()
    for chunk in _chunks(locations):
        stmt = select(tries.c.log_path).where(
            tries.c.log_path.in_(chunk), tries.c.ended_at.is_not(None)
        )
        found.update(conn.execute(stmt).scalars())
    return found


def try_rows(conn: Connection, try_ids: Sequence[int]) -> dict[int, FinishingTry]:
    """Tries with what deciding their outcome needs: their task, TI counters and run."""
    out: dict[int, FinishingTry] = {}
    for chunk in _chunks(sorted(set(try_ids))):
        found = FinishingTry.from_result(
            conn.execute(
                select(
                    tries,
                    task_instances.c.task_id,
                    task_instances.c.try_number.label("ti_try_number"),
                    task_instances.c.lost_tries,
                    task_instances.c.lost_streak,
                    runs.c.pipeline,
                    runs.c.state.label("run_state"),
                )
                .join(task_instances, task_instances.c.id == tries.c.ti)
                .join(runs, runs.c.id == tries.c.run)
                .where(tries.c.id.in_(chunk))
            )
        )
        out.update((r.id, r) for r in found)
    return out


def live_tries(
    conn: Connection, *, owner: int | None = None, owners: Iterable[int] | None = None
) -> list[Try]:
    stmt = select(tries).where(_LIVE_TRY)
    if owner is not None:
        stmt = stmt.where(tries.c.owner == owner)
    if owners is not None:
        stmt = stmt.where(or_(tries.c.owner.in_(list(owners)), tries.c.owner.is_(None)))
    return Try.from_result(conn.execute(stmt.order_by(tries.c.id)))


def expired_tries(conn: Connection, owner: int, now: datetime) -> list[ExpiredTry]:
    """Live tries of ``owner`` past their own deadline that were not asked to stop yet."""
    return ExpiredTry.from_result(
        conn.execute(
            select(tries.c.id, tries.c.kill_grace, tries.c.started_at, tries.c.deadline).where(
                tries.c.owner == owner,
                _LIVE_TRY,
                tries.c.cancel_reason.is_(None),
                tries.c.deadline.is_not(None),
                tries.c.deadline <= now,
            )
        )
    )


def move_try_start(
    conn: Connection, try_id: int, owner: int, started_at: datetime, deadline: datetime
) -> None:
    """Record a live try's later real start (a pod's container, after its image pull) and
    the deadline its timeout gives from there."""
    conn.execute(
        update(tries)
        .where(tries.c.id == try_id, tries.c.owner == owner, _LIVE_TRY)
        .values(started_at=started_at, deadline=deadline)
    )


def request_cancel(conn: Connection, try_ids: Sequence[int], reason: str) -> list[int]:
    """Record why tries must stop (first reason wins); return those newly asked."""
    asked: list[int] = []
    for chunk in _chunks(list(try_ids)):
        rows = conn.execute(
            update(tries)
            .where(tries.c.id.in_(chunk), _LIVE_TRY, tries.c.cancel_reason.is_(None))
            .values(cancel_reason=reason)
            .returning(tries.c.id)
        ).all()
        asked += [r[0] for r in rows]
    return asked


def expired_runs(
    conn: Connection, now: datetime, pipeline_names: Iterable[str] | None = None
) -> list[ExpiredRun]:
    stmt = select(runs.c.id, runs.c.pipeline).where(
        runs.c.state == RunState.RUNNING.value,
        runs.c.deadline.is_not(None),
        runs.c.deadline <= now,
    )
    if pipeline_names is not None:
        stmt = stmt.where(runs.c.pipeline.in_(list(pipeline_names)))
    return ExpiredRun.from_result(conn.execute(stmt))


def live_tries_of_runs(conn: Connection, run_pks: Sequence[int]) -> list[LiveTry]:
    out: list[LiveTry] = []
    for chunk in _chunks(sorted(set(run_pks))):
        out += LiveTry.from_result(
            conn.execute(
                select(tries.c.id, tries.c.owner, tries.c.kill_grace, tries.c.run).where(
                    tries.c.run.in_(chunk), _LIVE_TRY
                )
            )
        )
    return out


# -- schedulers and heartbeats -------------------------------------------------------------
def register_scheduler(
    conn: Connection, host: str, pid: int, now: datetime, scope: Iterable[str] | None = None
) -> int:
    values = {
        "host": host,
        "pid": pid,
        "started_at": now,
        "heartbeat_at": now,
        "scope": sorted(scope) if scope is not None else None,
    }
    return int(
        conn.execute(insert(schedulers).values(**values).returning(schedulers.c.id)).scalar_one()
    )


def lock_pipelines(conn: Connection, names: Iterable[str]) -> set[str]:
    """Lock the rows of ``names`` for this transaction and return those locked.

    On PostgreSQL, pipelines that another scheduler holds are skipped (``SKIP LOCKED``), so
    two schedulers never count and fill the same limits at once. On SQLite the
    transaction already holds the database's write lock (``BEGIN IMMEDIATE``).
    """
    wanted = sorted(set(names))
    if conn.dialect.name == "sqlite" or not wanted:
        return set(wanted)
    rows = conn.execute(
        select(pipelines.c.name)
        .where(pipelines.c.name.in_(wanted))
        .order_by(pipelines.c.name)
        .with_for_update(skip_locked=True)
    ).all()
    return {r[0] for r in rows}


def hold_lease(conn: Connection, scheduler_id: int) -> None:
    """Raise LeaseLost unless ``scheduler_id`` is still a registered, live scheduler.

    Called first in every transaction of a scheduler that starts, adopts or records
    anything (fencing). On PostgreSQL it also locks the scheduler's row until the
    transaction ends, so no other scheduler can declare it dead in the meantime; on SQLite
    the transaction holds the database's write lock already.
    """
    held = conn.execute(
        update(schedulers)
        .where(schedulers.c.id == scheduler_id, schedulers.c.stopped_at.is_(None))
        .values(heartbeat_at=schedulers.c.heartbeat_at)
        .returning(schedulers.c.id)
    ).first()
    if held is None:
        raise LeaseLost(
            f"scheduler {scheduler_id} was declared dead by another scheduler "
            "(no heartbeat within scheduler_timeout)"
        )


def heartbeat(conn: Connection, scheduler_id: int, now: datetime) -> None:
    """Extend the lease of a live scheduler; raise LeaseLost if it was declared dead. (One
    row, whatever the scheduler watches: its tries are its own through ``tries.owner``.)"""
    held = conn.execute(
        update(schedulers)
        .where(schedulers.c.id == scheduler_id, schedulers.c.stopped_at.is_(None))
        .values(heartbeat_at=now)
        .returning(schedulers.c.id)
    ).first()
    if held is None:
        hold_lease(conn, scheduler_id)  # raises


def stop_scheduler(conn: Connection, scheduler_id: int, now: datetime) -> None:
    conn.execute(
        update(schedulers)
        .where(schedulers.c.id == scheduler_id)
        .values(stopped_at=now, heartbeat_at=now)
    )


def other_schedulers(conn: Connection, scheduler_id: int) -> list[SchedulerRecord]:
    """Every other scheduler not known to have stopped."""
    return SchedulerRecord.from_result(
        conn.execute(
            select(schedulers).where(
                schedulers.c.id != scheduler_id, schedulers.c.stopped_at.is_(None)
            )
        )
    )


def live_schedulers(conn: Connection, now: datetime, timeout: float) -> list[SchedulerRecord]:
    return SchedulerRecord.from_result(
        conn.execute(
            select(schedulers).where(
                schedulers.c.stopped_at.is_(None),
                schedulers.c.heartbeat_at >= now - timedelta(seconds=timeout),
            )
        )
    )


def mark_schedulers_dead(
    conn: Connection,
    *,
    silent: Sequence[int],
    silent_since: datetime,
    exited: Sequence[int],
    now: datetime,
) -> list[int]:
    """Declare schedulers dead: those of ``silent`` whose last heartbeat is still older
    than ``silent_since`` (checked again here, under the row lock: one that came back
    meanwhile stays alive), and those of ``exited`` (their process is known to be gone).
    Returns the ids declared dead; their tries become orphans."""
    dead: list[int] = []
    for ids, extra in ((silent, [schedulers.c.heartbeat_at < silent_since]), (exited, [])):
        for chunk in _chunks(list(ids)):
            dead += conn.execute(
                update(schedulers)
                .where(schedulers.c.id.in_(chunk), schedulers.c.stopped_at.is_(None), *extra)
                .values(stopped_at=now)
                .returning(schedulers.c.id)
            ).scalars()
    return dead


def claim_orphans(
    conn: Connection, me: int, pipeline_names: Iterable[str] | None = None
) -> list[Try]:
    """Take over every live try whose owner is not a live scheduler (it stopped or was
    declared dead; or it is unknown), of ``pipeline_names`` when given; return them."""
    live_owners = select(schedulers.c.id).where(schedulers.c.stopped_at.is_(None))
    stmt = select(tries.c.id, tries.c.owner).where(
        _LIVE_TRY, or_(tries.c.owner.is_(None), tries.c.owner.not_in(live_owners))
    )
    if pipeline_names is not None:
        stmt = stmt.join(runs, runs.c.id == tries.c.run).where(
            runs.c.pipeline.in_(list(pipeline_names))
        )
    candidates = conn.execute(stmt).all()
    claimed: list[int] = []
    for row in candidates:
        cond = tries.c.owner.is_(None) if row.owner is None else tries.c.owner == row.owner
        res = conn.execute(
            update(tries).where(tries.c.id == row.id, cond, _LIVE_TRY).values(owner=me)
        )
        if res.rowcount:
            claimed.append(row.id)
    out: list[Try] = []
    for chunk in _chunks(claimed):
        out += Try.from_result(conn.execute(select(tries).where(tries.c.id.in_(chunk))))
    return out


# -- reads for the CLI and services ----------------------------------------------------------
def list_runs(
    conn: Connection,
    *,
    pipeline: str | None = None,
    state: str | None = None,
    limit: int = 50,
) -> list[Run]:
    stmt = select(runs)
    if pipeline is not None:
        stmt = stmt.where(runs.c.pipeline == pipeline)
    if state is not None:
        stmt = stmt.where(runs.c.state == state)
    return Run.from_result(
        conn.execute(stmt.order_by(runs.c.logical_date.desc(), runs.c.id.desc()).limit(limit))
    )


def runs_by_pk(conn: Connection, run_pks: Iterable[int], *, lock: bool = False) -> list[Run]:
    """Runs by primary key, in id order. With ``lock``, their rows stay locked until the
    transaction ends (``FOR UPDATE`` on PostgreSQL; SQLite's write transaction already
    holds the whole database), so what is read cannot change before it is written."""
    out: list[Run] = []
    for chunk in _chunks(sorted(set(run_pks))):
        stmt = select(runs).where(runs.c.id.in_(chunk)).order_by(runs.c.id)
        if lock and conn.dialect.name != "sqlite":
            stmt = stmt.with_for_update()
        out += Run.from_result(conn.execute(stmt))
    return out


def find_runs(
    conn: Connection,
    pipeline: str,
    *,
    run_id: str | None = None,
    logical_date: datetime | None = None,
) -> list[Run]:
    stmt = select(runs).where(runs.c.pipeline == pipeline)
    if run_id is not None:
        stmt = stmt.where(runs.c.run_id == run_id)
    if logical_date is not None:
        stmt = stmt.where(runs.c.logical_date == logical_date)
    return Run.from_result(conn.execute(stmt.order_by(runs.c.id.desc())))


def attempts_of(conn: Connection, run_pk: int) -> list[RunAttempt]:
    return RunAttempt.from_result(
        conn.execute(
            select(run_attempts)
            .where(run_attempts.c.run == run_pk)
            .order_by(run_attempts.c.attempt)
        )
    )


def tries_of(
    conn: Connection, *, run_pk: int | None = None, ti_id: int | None = None
) -> list[TaskTry]:
    stmt = select(tries, task_instances.c.task_id).join(
        task_instances, task_instances.c.id == tries.c.ti
    )
    if run_pk is not None:
        stmt = stmt.where(tries.c.run == run_pk)
    if ti_id is not None:
        stmt = stmt.where(tries.c.ti == ti_id)
    return TaskTry.from_result(conn.execute(stmt.order_by(tries.c.id)))


def count_live_tis(conn: Connection) -> dict[str, int]:
    """Queued or running TIs per pipeline (for max_active_tasks)."""
    rows = conn.execute(
        select(runs.c.pipeline, func.count())
        .select_from(task_instances.join(runs, runs.c.id == task_instances.c.run))
        .where(
            and_(
                task_instances.c.state.in_([TIState.QUEUED.value, TIState.RUNNING.value]),
                runs.c.state == RunState.RUNNING.value,
            )
        )
        .group_by(runs.c.pipeline)
    ).all()
    return {r[0]: int(r[1]) for r in rows}


def cancel_requested(conn: Connection, owner: int) -> list[CancelRequest]:
    """Live tries of ``owner`` that someone asked to stop."""
    return CancelRequest.from_result(
        conn.execute(
            select(tries.c.id, tries.c.kill_grace, tries.c.cancel_reason).where(
                tries.c.owner == owner, _LIVE_TRY, tries.c.cancel_reason.is_not(None)
            )
        )
    )
