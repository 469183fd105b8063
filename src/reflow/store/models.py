"""The metadata schema. Created and changed only through the Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    false,
    text,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# The partial indexes and their condition (SQL that SQLite and PostgreSQL read alike). Each
# dialect gets it as its own option (``sqlite_where``, ``postgresql_where``) from
# :func:`use_dialect` when a database of that dialect is opened, not here: naming a
# dialect's option imports that dialect, and a command on SQLite has no use for PostgreSQL's.
_PARTIAL: list[tuple[Index, str]] = []
_PARTIAL_DIALECTS = {"sqlite", "postgresql"}
_dialects_used: set[str] = set()


def _partial(index: Index, where: str) -> Index:
    _PARTIAL.append((index, where))
    return index


def use_dialect(name: str) -> None:
    """Give the partial indexes their condition in dialect ``name``'s option (once per
    dialect; a dialect without partial indexes gets none)."""
    if name not in _PARTIAL_DIALECTS or name in _dialects_used:
        return
    for index, where in _PARTIAL:
        index.dialect_kwargs[f"{name}_where"] = text(where)
    _dialects_used.add(name)


@event.listens_for(metadata, "before_create")
def _before_create(target: MetaData, connection: Connection, **kw: Any) -> None:
    use_dialect(connection.dialect.name)  # metadata.create_all() makes them partial too


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC on every backend, always returned timezone-aware (UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


NAME = 200

pipelines = Table(
    "pipelines",
    metadata,
    Column("name", String(NAME), primary_key=True),
    Column("version", String(32), nullable=False),
    Column("fileloc", Text, nullable=True),
    Column("active", Boolean, nullable=False, default=True),
    Column("structure", JSON, nullable=False),
    # How many times the current version moved forward (see pipelines.sync_pipelines).
    Column("generation", Integer, nullable=False, default=1, server_default="1"),
    # Modification time (ns) of the file the current version was read from.
    Column("source_stamp", BigInteger, nullable=True),
    # The next scheduled interval to create a run for (None: start from start_date).
    Column("next_logical_date", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # No new scheduled run and no new task instance while set (migration 0010).
    Column("paused", Boolean, nullable=False, default=False, server_default=false()),
    # Deadlines due up to here are checked (migration 0013); None: not yet, or the
    # pipeline has no deadline (the first check starts it at that moment).
    Column("deadlines_checked_until", UTCDateTime, nullable=True),
)

# Slots of each pool, shared by every pipeline: from reflow.toml (origin "config") or set at
# run time (origin "set", kept until reset).
pools = Table(
    "pools",
    metadata,
    Column("name", String(NAME), primary_key=True),
    Column("slots", Integer, nullable=False),
    Column("origin", String(8), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("updated_by", String(NAME), nullable=True),
)

# Pauses and unpauses of each pipeline: who, when and why, oldest first.
pipeline_history = Table(
    "pipeline_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String(NAME), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("action", String(16), nullable=False),
    Column("actor", String(NAME), nullable=False),
    Column("detail", Text, nullable=True),
    Index("ix_pipeline_history_pipeline_at", "pipeline", "at"),
)

# Dates whose deadline was missed, once each: for the whole run (task '') or a task
# (migration 0013). A date with no run at all can be here.
deadline_misses = Table(
    "deadline_misses",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String(NAME), nullable=False),
    Column("logical_date", UTCDateTime, nullable=False),
    Column("task", String(NAME), nullable=False, default="", server_default=""),
    Column("due_at", UTCDateTime, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    UniqueConstraint("pipeline", "logical_date", "task"),
)

# What each try's pods or processes held, and when (a try's own pod, each Spark executor
# pod, a local try's process tree), recorded with its outcome: what its cost is computed
# from. Requests in vCPUs and bytes; measured CPU-seconds and peak bytes for processes.
try_usage = Table(
    "try_usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("try_id", Integer, ForeignKey("tries.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("name", String(NAME), nullable=False),
    Column("began_at", UTCDateTime, nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
    Column("cpu", Float, nullable=False, default=0.0),
    Column("memory", Float, nullable=False, default=0.0),
    Column("gpus", JSON, nullable=False),
    Column("ephemeral", Float, nullable=False, default=0.0),
    Column("claims", JSON, nullable=False),
    Column("node_selector", JSON, nullable=False),
    Column("cpu_seconds", Float, nullable=True),
    Column("peak_memory", Float, nullable=True),
    Index("ix_try_usage_try_id", "try_id"),
)

pipeline_versions = Table(
    "pipeline_versions",
    metadata,
    Column(
        "pipeline", String(NAME), ForeignKey("pipelines.name", ondelete="CASCADE"), primary_key=True
    ),
    Column("version", String(32), primary_key=True),
    Column("structure", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

import_errors = Table(
    "import_errors",
    metadata,
    Column("path", String(1000), primary_key=True),
    Column("message", Text, nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False),
)

schedulers = Table(
    "schedulers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("stopped_at", UTCDateTime, nullable=True),
    # Pipelines it works on; None means all (a daemon). `trigger --wait` runs a scoped one.
    Column("scope", JSON, nullable=True),
)

backfills = Table(
    "backfills",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String(NAME), ForeignKey("pipelines.name"), nullable=False),
    # The requested range of logical dates, both ends included.
    Column("start", UTCDateTime, nullable=False),
    Column("end", UTCDateTime, nullable=False),
    Column("conf", JSON, nullable=False),
    Column("reprocess", String(16), nullable=False),
    Column("max_active_runs", Integer, nullable=True),
    Column("run_order", String(8), nullable=False),
    Column("tasks", JSON, nullable=True),
    Column("state", String(16), nullable=False),
    # What the plan did: {"create": n, "reset": n, "skip": n}.
    Column("planned", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
    # The priority of its runs; None: the backfill default (migration 0011).
    Column("priority", Integer, nullable=True),
    Index("ix_backfills_state", "state"),
    # Backfill numbers are never given again (see runs).
    sqlite_autoincrement=True,
)

# Runs with changes the scheduler has not acted on: the condition of a partial index that
# holds only those, written out (not bound) so that the planner matches queries with it.
UNSEEN_CHANGES = "change_seq <> seen_seq"

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String(NAME), ForeignKey("pipelines.name"), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("logical_date", UTCDateTime, nullable=False),
    Column("data_interval_start", UTCDateTime, nullable=False),
    Column("data_interval_end", UTCDateTime, nullable=False),
    Column("origin", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("conf", JSON, nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("version", String(32), nullable=False),
    Column("backfill_id", Integer, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("queued_at", UTCDateTime, nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
    # run_timeout deadline, set when the run starts.
    Column("deadline", UTCDateTime, nullable=True),
    # Changes that can make one of the run's task instances ready or end the run (an
    # outcome, a clear, a new task instance, a state of the run), counted by
    # ``transitions.transition`` in the transaction that makes them; ``seen_seq`` is the
    # count the scheduler last acted on. A running run whose counts differ is the
    # scheduler's work (migration 0009).
    Column("change_seq", Integer, nullable=False, default=1, server_default="1"),
    Column("seen_seq", Integer, nullable=False, default=0, server_default="0"),
    # Higher first, for admission and for slots (migration 0011): see core.states.PRIORITY.
    Column("priority", Integer, nullable=False, default=0, server_default="0"),
    UniqueConstraint("pipeline", "run_id"),
    # The tick's queries filter on state and pipeline: with both in one index the planner
    # never walks a pipeline's whole history instead.
    Index("ix_runs_state_pipeline", "state", "pipeline"),
    # A backfill's runs in given states (its active runs, every tick): migration 0008.
    Index("ix_runs_backfill_id_state", "backfill_id", "state"),
    Index("ix_runs_pipeline_logical_date", "pipeline", "logical_date"),
    # Only the runs the scheduler has not acted on: each tick reads just those.
    _partial(Index("ix_runs_unsettled", "state"), UNSEEN_CHANGES),
    # One scheduled/backfill run per (pipeline, logical date); manual runs are free.
    _partial(
        Index("uq_runs_pipeline_logical_date_dated", "pipeline", "logical_date", unique=True),
        "origin != 'manual'",
    ),
    # Run numbers are never given again, even after the newest run is deleted: a number
    # someone wrote down never points at another run (PostgreSQL's sequence never reuses).
    sqlite_autoincrement=True,
)

run_attempts = Table(
    "run_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("origin", String(16), nullable=False),
    Column("conf", JSON, nullable=False),
    Column("version", String(32), nullable=False),
    Column("backfill_id", Integer, nullable=True),
    Column("state", String(16), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
    UniqueConstraint("run", "attempt"),
)

task_instances = Table(
    "task_instances",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", String(NAME), nullable=False),
    Column("state", String(16), nullable=False),
    Column("try_number", Integer, nullable=False, default=0),
    # Tries that do not use up a retry: those lost with their scheduler, and every try
    # made before the task instance was last cleared.
    Column("lost_tries", Integer, nullable=False, default=0),
    # Tries lost one after another since the last clear or other outcome: past
    # lost_retry_limit the task instance fails instead of being retried again.
    Column("lost_streak", Integer, nullable=False, default=0, server_default="0"),
    Column("next_try_at", UTCDateTime, nullable=True),
    Column("failure_reason", String(16), nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("run", "task_id"),
    Index("ix_task_instances_state", "state"),
)

tries = Table(
    "tries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ti", Integer, ForeignKey("task_instances.id", ondelete="CASCADE"), nullable=False),
    Column("run", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("try_number", Integer, nullable=False),
    Column("run_attempt", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("launcher", String(32), nullable=False),
    Column("owner", Integer, nullable=True),
    Column("host", String(255), nullable=True),
    Column("pid", Integer, nullable=True),
    Column("external_id", String(255), nullable=True),
    Column("log_path", Text, nullable=False),
    Column("queued_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
    # Not written any more: a try is its owner's (``owner``), whose lease is the
    # scheduler's heartbeat. Kept so that no migration rebuilds the tries table for it.
    Column("heartbeat_at", UTCDateTime, nullable=True),
    # Task timeout deadline; run deadlines live on the run.
    Column("deadline", UTCDateTime, nullable=True),
    Column("kill_grace", Float, nullable=False, default=10.0),
    # Why reflow asked this try to stop (timed_out, run_timed_out, killed), if it did.
    Column("cancel_reason", String(16), nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("failure_reason", String(16), nullable=True),
    Column("detail", Text, nullable=True),
    # An id the try's program reported (the Spark application id).
    Column("app_id", String(255), nullable=True),
    # The pool whose slots the try holds while it is live, and how many (migration 0011).
    Column("pool", String(NAME), nullable=True),
    Column("pool_slots", Integer, nullable=False, default=1, server_default="1"),
    UniqueConstraint("ti", "try_number"),
    Index("ix_tries_state", "state"),
    # At most one live try per task instance.
    _partial(Index("uq_tries_ti_live", "ti", unique=True), "ended_at IS NULL"),
    # A try's id names its pod, its fence and its runtime files: never given again, so
    # that nothing left of a deleted try (a fence kept for a day) is taken for a new one.
    sqlite_autoincrement=True,
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("entity", String(8), nullable=False),
    Column("entity_id", Integer, nullable=False),
    Column("run", Integer, nullable=True, index=True),
    Column("old", String(16), nullable=True),
    Column("new", String(16), nullable=False),
    Column("detail", Text, nullable=True),
)

# -- notifications -------------------------------------------------------------------------
# One row per notable state change, written in the change's transaction; the notifier
# routes it to channels (rows of ``notifications``) and deletes it in one transaction.
notify_outbox = Table(
    "notify_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event", String(32), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("entity", String(12), nullable=False),
    Column("entity_id", Integer, nullable=True),
    Column("run", Integer, nullable=True),
    Column("data", JSON, nullable=True),
)

# One message to one channel, and where its delivery stands.
notifications = Table(
    "notifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("pipeline", String(NAME), nullable=True, index=True),
    Column("run", Integer, nullable=True, index=True),
    Column("channel", String(NAME), nullable=False),
    Column("state", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_at", UTCDateTime, nullable=False),
    Column("claimed_by", Integer, nullable=True),
    Column("claimed_until", UTCDateTime, nullable=True),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("context", JSON, nullable=False),
    Index("ix_notifications_state_next_at", "state", "next_at"),
)

notification_attempts = Table(
    "notification_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "notification",
        Integer,
        ForeignKey("notifications.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("attempt", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("result", Text, nullable=True),
    Column("seconds", Float, nullable=False),
    Column("sender", Integer, nullable=True),
)

# -- web access ---------------------------------------------------------------------------
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(NAME), nullable=False),
    # "scrypt$n$r$p$<salt hex>$<hash hex>": the parameters and a per-user salt.
    Column("password_hash", String(255), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_login_at", UTCDateTime, nullable=True),
    UniqueConstraint("name"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(NAME), nullable=False),
    # The token is shown once; only its sha256 is kept (and a prefix, to recognise it).
    Column("token_hash", String(64), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    UniqueConstraint("token_hash"),
    # One live token per name; revoked ones stay for the record.
    _partial(Index("uq_api_tokens_name_live", "name", unique=True), "revoked_at IS NULL"),
)
