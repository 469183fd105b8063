"""Deadlines per date, as the scheduler keeps them.

Every few seconds, for the pipelines with a deadline (paused ones too): the dates that fell
due since the pipeline's cursor (``store.deadlines``) are looked up (a pure function,
``core.lateness.due_between``), and those that had not succeeded by their due time are
recorded as misses in the transaction that moves the cursor past them. A scheduler that
was down finds the whole window since the cursor on its return; a pipeline's cursor starts
when a scheduler first sees it with a deadline, so history before that is never checked.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from sqlalchemy import Connection

from reflow.core.lateness import RUN, Due, deadlines_of, due_between
from reflow.core.pipeline import Pipeline
from reflow.store import deadlines
from reflow.store import schedulers as store_schedulers
from reflow.store.db import Database

log = logging.getLogger("reflow.scheduler")

T = TypeVar("T")
# How often deadlines are checked: a miss is recorded this long after its due time at most.
EVERY = timedelta(seconds=5)
# Pipelines whose misses one transaction records.
_PER_TRANSACTION = 50
# Misses named in the log line of a check, per pipeline.
_NAMED = 5


class Write(Protocol):
    """Runs ``work`` in one transaction of the scheduler (fenced: see Scheduler._write)."""

    def __call__(self, work: Callable[[Connection], T]) -> T: ...


@dataclass(frozen=True)
class _Window:
    pipeline: str
    after: datetime
    until: datetime
    dues: list[Due]


class Lateness:
    """The deadline checks of one scheduler; ``write`` runs a transaction of it (fenced)."""

    def __init__(self, db: Database, write: Write) -> None:
        self.db = db
        self._write = write
        self._next = datetime.min.replace(tzinfo=UTC)
        # Whether each pipeline (name, version) has a deadline; the pipelines and those of
        # them with a deadline at the last check (cursors are forgotten when they change).
        self._has: dict[tuple[str, str], bool] = {}
        self._seen: tuple[frozenset[str], frozenset[str]] | None = None

    def check(self, pipelines: Mapping[str, Pipeline], skip: Collection[str], now: datetime) -> int:
        """Record the misses due by ``now`` of ``pipelines`` (except ``skip``: stale copies),
        at most every ``EVERY``; returns how many were recorded."""
        if now < self._next:
            return 0
        self._next = now + EVERY
        mine = {n: p for n, p in pipelines.items() if n not in skip}
        has = {(p.name, p.version): self._has.get((p.name, p.version)) for p in mine.values()}
        self._has = {k: bool(deadlines_of(mine[k[0]])) if v is None else v for k, v in has.items()}
        watched = {n: p for n, p in mine.items() if self._has[(n, p.version)]}
        seen = (frozenset(mine), frozenset(watched))
        if seen != self._seen:
            # A deadline given again later, or a pipeline file put back, starts from then.
            with self.db.read() as conn:
                started = deadlines.started(conn)
            done = [
                n for n, active in started.items() if n not in watched and (n in mine or not active)
            ]
            if done:
                self._write(lambda c: deadlines.stop(c, done))
            self._seen = seen
        if not watched:
            return 0
        with self.db.read() as conn:
            checked = deadlines.cursors(conn, watched)
        fresh = [n for n, at in checked.items() if at is None]
        if fresh:
            self._write(lambda c: deadlines.start(c, fresh, now))
        windows = []
        for name, after in sorted(checked.items()):
            if after is not None and after < now:
                dues, until = due_between(watched[name], after, now)
                if dues:
                    windows.append(_Window(name, after, until, dues))
        recorded = 0
        for i in range(0, len(windows), _PER_TRANSACTION):
            chunk = windows[i : i + _PER_TRANSACTION]
            for new in self._write(functools.partial(_record, windows=chunk, now=now)):
                recorded += len(new)
                _say(new)
        return recorded


def _record(conn: Connection, windows: list[_Window], now: datetime) -> list[list[deadlines.Miss]]:
    """Check each window whose cursor is still where it was read (another scheduler may
    have checked it since, or hold the pipeline right now: left for it, or the next
    check) and record its misses; returns the new misses of each."""
    held = store_schedulers.lock_pipelines(conn, [w.pipeline for w in windows])
    out = []
    for window in windows:
        if window.pipeline not in held:
            continue
        if not deadlines.advance(conn, window.pipeline, window.after, window.until):
            continue
        met = deadlines.succeeded_by(conn, window.pipeline, window.dues)
        misses = [
            deadlines.Miss(window.pipeline, d.logical_date, d.task, d.due_at)
            for d in window.dues
            if (d.logical_date, d.task) not in met
        ]
        out.append(deadlines.record_misses(conn, misses, now))
    return out


def _say(misses: list[deadlines.Miss]) -> None:
    if not misses:
        return
    named = ", ".join(
        f"{m.logical_date.isoformat()}" + ("" if m.task == RUN else f" task {m.task}")
        for m in misses[:_NAMED]
    )
    more = f" and {len(misses) - _NAMED} more" if len(misses) > _NAMED else ""
    log.warning("pipeline %r missed its deadline: %s%s", misses[0].pipeline, named, more)
