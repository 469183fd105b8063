"""The one state writer: every state change goes through :func:`transition`, which names
the states it may come from, checks them against the table in ``core.states``, counts the
rows it changed and writes one event per row, in the caller's transaction.

Invariant the scheduler's tick relies on: every change that can make a task instance of
a run ready, or end the run, adds one to the run's ``change_seq`` in the transaction that
makes it (:func:`transition` and :func:`reflow.store.runs.add_task_instances` do it;
nothing else writes a task instance's state). The scheduler looks again only at running
runs whose ``change_seq`` differs from the ``seen_seq`` it recorded
(:func:`reflow.store.scheduling.unsettled_runs`), at retries that fell due, and at runs of
pipelines whose version changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, bindparam, insert, select, update

from reflow.core.states import (
    BACKFILL_TRANSITIONS,
    RUN_TRANSITIONS,
    TI_TRANSITIONS,
    TRY_TRANSITIONS,
    BackfillState,
    RunState,
    TIState,
    TryState,
    check_transition,
)
from reflow.store._chunking import _chunks
from reflow.store.models import backfills, events, runs, task_instances, tries

_TABLES: dict[str, tuple[Table, dict[Any, frozenset[Any]], type]] = {
    "backfill": (backfills, BACKFILL_TRANSITIONS, BackfillState),
    "run": (runs, RUN_TRANSITIONS, RunState),
    "ti": (task_instances, TI_TRANSITIONS, TIState),
    "try": (tries, TRY_TRANSITIONS, TryState),
}
# Moves of a task instance that make nothing else ready and end nothing: the scheduler's
# own steps towards a try. Every other move counts as a change of its run.
_NOT_A_CHANGE = frozenset({TIState.SCHEDULED, TIState.QUEUED, TIState.RUNNING})


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
