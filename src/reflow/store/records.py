"""What the store hands out: typed, immutable records instead of result rows.

One frozen dataclass per table, its fields the table's columns in their order (so
``select(table)`` fills one), and a few for queries that join or pick columns. Records
are made from a query's result by :meth:`Record.from_result`, which checks once per
query that the columns are the record's fields. Importing this module imports no
SQLAlchemy: the CLI and the web layer may name these types freely.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Protocol, Self


class Result(Protocol):
    """The part of a query's result a record is made from (an SQLAlchemy ``Result``)."""

    def keys(self) -> Iterable[str]: ...
    def __iter__(self) -> Iterator[Sequence[Any]]: ...


# Per record class: its field names, and the setter of each field's slot.
_LAYOUTS: dict[type, tuple[tuple[str, ...], tuple[Callable[[Any, Any], None], ...]]] = {}


def _layout(cls: type) -> tuple[tuple[str, ...], tuple[Callable[[Any, Any], None], ...]]:
    layout = _LAYOUTS.get(cls)
    if layout is None:
        names = tuple(f.name for f in fields(cls))
        layout = _LAYOUTS[cls] = (names, tuple(getattr(cls, n).__set__ for n in names))
    return layout


class Record:
    """Base of the records: how one is made from a query's result."""

    __slots__ = ()

    @classmethod
    def from_result(cls, result: Result) -> list[Self]:
        """One record per row of ``result``, whose columns must be the record's fields, in
        order (TypeError otherwise: a query and its record disagree).

        The slots are set directly, as the frozen dataclass's ``__init__`` does through
        ``object.__setattr__``, in three quarters of its time: a grid reads thousands."""
        names, setters = _layout(cls)
        columns = tuple(result.keys())
        if columns != names:
            raise TypeError(
                f"{cls.__name__} has fields {', '.join(names)}; "
                f"the query gives {', '.join(columns)}"
            )
        new = object.__new__
        out: list[Self] = []
        for row in result:
            record = new(cls)
            for put, value in zip(setters, row, strict=False):
                put(record, value)
            out.append(record)
        return out

    @classmethod
    def first_of(cls, result: Result) -> Self | None:
        """The record of the first row of ``result`` (a query for one row), or None."""
        found = cls.from_result(result)
        return found[0] if found else None


# -- one per table ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PipelineRecord(Record):
    """A pipeline as the store records it (its current version)."""

    name: str
    version: str
    fileloc: str | None
    active: bool
    structure: dict[str, Any]
    generation: int
    source_stamp: int | None
    next_logical_date: datetime | None
    created_at: datetime
    updated_at: datetime
    paused: bool
    deadlines_checked_until: datetime | None


@dataclass(frozen=True, slots=True)
class ImportErrorRecord(Record):
    """A pipeline file that failed to import, as the last sync found it."""

    path: str
    message: str
    detail: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SchedulerRecord(Record):
    """A registered scheduler; ``scope`` None means every pipeline (a daemon)."""

    id: int
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    scope: list[str] | None


@dataclass(frozen=True, slots=True)
class Backfill(Record):
    """A request to (re)process the logical dates from ``start`` to ``end``, both included."""

    id: int
    pipeline: str
    start: datetime
    end: datetime
    conf: dict[str, Any]
    reprocess: str
    max_active_runs: int | None
    run_order: str
    tasks: list[str] | None
    state: str
    planned: dict[str, int]
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    priority: int | None


@dataclass(frozen=True, slots=True)
class Run(Record):
    """One execution of a pipeline for one logical date."""

    id: int
    pipeline: str
    run_id: str
    logical_date: datetime
    data_interval_start: datetime
    data_interval_end: datetime
    origin: str
    state: str
    conf: dict[str, Any]
    attempt: int
    version: str
    backfill_id: int | None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    deadline: datetime | None
    change_seq: int
    seen_seq: int
    priority: int


@dataclass(frozen=True, slots=True)
class RunAttempt(Record):
    """One attempt of a run, with the conf and version it ran with."""

    id: int
    run: int
    attempt: int
    origin: str
    conf: dict[str, Any]
    version: str
    backfill_id: int | None
    state: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class TaskInstance(Record):
    """One task within one run."""

    id: int
    run: int
    task_id: str
    state: str
    try_number: int
    lost_tries: int
    lost_streak: int
    next_try_at: datetime | None
    failure_reason: str | None
    started_at: datetime | None
    ended_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Try(Record):
    """One execution of a task instance."""

    id: int
    ti: int
    run: int
    try_number: int
    run_attempt: int
    state: str
    launcher: str
    owner: int | None
    host: str | None
    pid: int | None
    external_id: str | None
    log_path: str
    queued_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    heartbeat_at: datetime | None
    deadline: datetime | None
    kill_grace: float
    cancel_reason: str | None
    exit_code: int | None
    failure_reason: str | None
    detail: str | None
    app_id: str | None
    pool: str | None
    pool_slots: int


@dataclass(frozen=True, slots=True)
class User(Record):
    """Who may log in to the web server (only the password's hash is kept)."""

    id: int
    name: str
    password_hash: str
    created_at: datetime
    last_login_at: datetime | None


@dataclass(frozen=True, slots=True)
class Token(Record):
    """An API token (only its sha256 and a prefix are kept)."""

    id: int
    name: str
    token_hash: str
    prefix: str
    user_id: int | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeadlineMiss(Record):
    """A logical date that had not succeeded by its deadline: the whole run's (``task``
    is ``''``) or one task's."""

    id: int
    pipeline: str
    logical_date: datetime
    task: str
    due_at: datetime
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class TryUsage(Record):
    """What one pod or process of a try held, and when (see ``core.cost.Held``)."""

    id: int
    try_id: int
    kind: str
    name: str
    began_at: datetime | None
    ended_at: datetime | None
    cpu: float
    memory: float
    gpus: dict[str, float]
    ephemeral: float
    claims: list[list[Any]]
    node_selector: dict[str, str]
    cpu_seconds: float | None
    peak_memory: float | None


# -- joins and partial reads ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LateDate(DeadlineMiss):
    """A miss with the date's run as it is now (its number and state; None: no run)."""

    run: int | None
    run_state: str | None


@dataclass(frozen=True, slots=True)
class TaskTry(Try):
    """A try with the task it belongs to."""

    task_id: str


@dataclass(frozen=True, slots=True)
class FinishingTry(Try):
    """A try whose end is being recorded, with what deciding it needs: its task, its task
    instance's counters and its run's pipeline and state."""

    task_id: str
    ti_try_number: int
    lost_tries: int
    lost_streak: int
    pipeline: str
    run_state: str


@dataclass(frozen=True, slots=True)
class ReadyTaskInstance(Run):
    """A task instance ready to launch (``scheduled``), read with its run: every column of
    the run, so that it serves as the run, and the task instance's id and task."""

    ti_id: int
    ti_task_id: str


@dataclass(frozen=True, slots=True)
class TokenWithUser(Token):
    """A token with the name of the user it belongs to (None for a token of its own)."""

    user_name: str | None


@dataclass(frozen=True, slots=True)
class QueuedRun(Record):
    """What admission reads of a queued run."""

    id: int
    pipeline: str
    origin: str
    priority: int
    logical_date: datetime
    backfill_id: int | None


@dataclass(frozen=True, slots=True)
class RunSummary(Record):
    """A run as a list of pipelines shows it."""

    pipeline: str
    logical_date: datetime
    id: int
    state: str


@dataclass(frozen=True, slots=True)
class ExpiredRun(Record):
    """A running run past its run_timeout deadline."""

    id: int
    pipeline: str


@dataclass(frozen=True, slots=True)
class LiveTry(Record):
    """A try that is queued or running: who owns it, how long it may take to stop."""

    id: int
    owner: int | None
    kill_grace: float
    run: int


@dataclass(frozen=True, slots=True)
class ExpiredTry(Record):
    """A live try past its own deadline."""

    id: int
    kill_grace: float
    started_at: datetime | None
    deadline: datetime


@dataclass(frozen=True, slots=True)
class CancelRequest(Record):
    """A live try someone asked to stop, and why."""

    id: int
    kill_grace: float
    cancel_reason: str


@dataclass(frozen=True, slots=True)
class HistoryEvent(Record):
    """A notable event of a run: a state move with a detail, and the task it concerns
    (None for the run's own)."""

    at: datetime
    entity: str
    old: str | None
    new: str
    detail: str
    task_id: str | None


@dataclass(frozen=True, slots=True)
class OutboxEntry(Record):
    """A notable state change not yet routed to channels."""

    id: int
    event: str
    at: datetime
    entity: str
    entity_id: int | None
    run: int | None
    data: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Notification(Record):
    """One message to one channel; ``state`` pending, sent or failed (given up)."""

    id: int
    event: str
    created_at: datetime
    pipeline: str | None
    run: int | None
    channel: str
    state: str
    attempts: int
    next_at: datetime
    claimed_by: int | None
    claimed_until: datetime | None
    sent_at: datetime | None
    last_error: str | None
    context: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NotificationAttempt(Record):
    """One delivery attempt: whether the channel took it, and what it answered."""

    id: int
    notification: int
    attempt: int
    at: datetime
    ok: bool
    result: str | None
    seconds: float
    sender: int | None


@dataclass(frozen=True, slots=True)
class DatedUsage(TryUsage):
    """A usage row with what it is counted under: its try's run (number, logical date,
    attempt, backfill), task and try number."""

    run: int
    logical_date: datetime
    run_attempt: int
    backfill_id: int | None
    task_id: str
    try_number: int
