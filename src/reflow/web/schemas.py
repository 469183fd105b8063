"""The shapes the REST API reads and returns (its OpenAPI schema); pages render the same."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Printable text only: control characters never name anything (and PostgreSQL refuses NUL).
TEXT = r"^[^\x00-\x1f\x7f]*$"
Text = Annotated[str, StringConstraints(pattern=TEXT, max_length=250)]
# Dates as users type them: YYYY-MM-DD or an ISO 8601 date-time (checked by the services).
Date = Annotated[
    str,
    StringConstraints(pattern=TEXT, min_length=10, max_length=40),
    Field(examples=["2024-01-31"]),
]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(Model):
    detail: str = Field(description="One line saying what is wrong.")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Field by field, for malformed requests."
    )


# -- pipelines ------------------------------------------------------------------------------
class LatestRun(Model):
    logical_date: datetime
    state: str


class PipelineSummaryOut(Model):
    name: str
    schedule: str | None
    tasks: int
    active: bool
    next_logical_date: datetime | None
    latest: list[LatestRun]
    running: int
    queued: int
    paused: bool = Field(description="No new run or task instance starts while paused.")


class ImportErrorOut(Model):
    path: str
    message: str


class PipelineListOut(Model):
    pipelines: list[PipelineSummaryOut]
    import_errors: list[ImportErrorOut]


class PipelineOut(Model):
    name: str
    version: str
    file: str | None
    active: bool = Field(description="False once its file is gone (history is kept).")
    paused: bool = Field(description="No new run or task instance starts while paused.")
    schedule: str | None
    timezone: str
    start_date: str | None
    end_date: str | None
    catchup: bool
    max_active_runs: int
    max_active_tasks: int
    run_timeout: float | None
    deadline: str | None = Field(
        default=None,
        description="When a date's run must have succeeded: 'HH:MM' in the pipeline's "
        "timezone after the interval, or a time after its end ('6h'); null: none.",
    )
    params: dict[str, dict[str, Any]] = Field(description="Each param: type, default, checks.")
    params_schema: dict[str, Any] = Field(
        description="JSON schema of a run's conf (empty for a pipeline whose file is gone)."
    )
    order: list[str] = Field(description="Task ids, upstream before downstream.")
    tasks: dict[str, dict[str, Any]]


# -- runs -----------------------------------------------------------------------------------
class MissOut(Model):
    task: str | None = Field(description="The task whose deadline passed; null: the run's.")
    due_at: datetime
    recorded_at: datetime


class RunOut(Model):
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
    duration: float | None = Field(
        description="Seconds from its start to its end, so far while it is queued or "
        "running; null when it never started (marked or cancelled before it started)."
    )
    late: bool = Field(
        default=False,
        description="Its logical date had not succeeded by a deadline (the run's or a task's).",
    )
    missed: list[MissOut] = Field(
        default_factory=list, description="The deadlines its logical date missed."
    )


class RunListOut(Model):
    runs: list[RunOut]


class AttemptOut(Model):
    attempt: int
    origin: str
    conf: dict[str, Any]
    version: str
    backfill_id: int | None
    state: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


class TaskInstanceOut(Model):
    task_id: str
    state: str
    try_number: int
    failure_reason: str | None
    started_at: datetime | None = Field(
        description="When its first try started since it was last cleared; null when none did."
    )
    ended_at: datetime | None
    next_try_at: datetime | None
    duration: float | None = Field(
        description="Seconds from started_at to its end, so far while it is unfinished; null "
        "when no try of it started (pending, removed, upstream_failed, marked before it ran)."
    )


class TryOut(Model):
    task_id: str
    try_number: int
    run_attempt: int
    state: str
    launcher: str
    host: str | None
    pid: int | None
    queued_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    duration: float | None
    exit_code: int | None
    failure_reason: str | None
    cancel_reason: str | None
    detail: str | None
    app_id: str | None
    conf: dict[str, Any] = Field(description="The conf of the run attempt this try ran in.")


class HistoryOut(Model):
    at: datetime
    task: str | None = Field(description="The task of a task instance's event; null: the run's.")
    old: str | None
    new: str
    detail: str


class RunDetailOut(Model):
    run: RunOut
    attempts: list[AttemptOut]
    task_instances: list[TaskInstanceOut]
    tries: list[TryOut]
    history: list[HistoryOut] = Field(
        description="What happened to the run, oldest first: attempts, clears, marks, "
        "edits of its pipeline, failures."
    )


class TaskInstanceDetailOut(Model):
    run: RunOut
    task_instance: TaskInstanceOut
    tries: list[TryOut]


class LogOut(Model):
    try_number: int
    state: str
    offset: int = Field(description="Byte offset this chunk starts at.")
    next_offset: int = Field(description="Pass as `offset` to read on (tailing).")
    size: int = Field(description="Bytes in the log file now.")
    complete: bool = Field(description="The try has ended and the whole log was read.")
    data: str


class PauseIn(Model):
    reason: Annotated[str, StringConstraints(max_length=1000)] | None = Field(
        default=None, description="Why, for the pipeline's history."
    )


class PauseOut(Model):
    pipeline: str
    paused: bool
    changed: bool = Field(description="False when the pipeline already was in that state.")
    running: int = Field(description="Its running runs (their started tries finish).")
    queued: int = Field(description="Its queued runs (they wait while it is paused).")


class PoolOut(Model):
    name: str
    slots: int
    origin: Literal["config", "set", "undefined"] = Field(
        description="config: from reflow.toml; set: at run time, until reset; undefined: "
        "named by tasks only (no slots: they wait)."
    )
    used: int = Field(description="Slots held by live tries.")
    waiting: int = Field(description="Task instances ready to start, waiting for slots.")
    tasks: list[str] = Field(description="Its tasks, as pipeline.task.")
    updated_at: datetime | None
    updated_by: str | None


class PoolIn(Model):
    slots: int = Field(ge=0, le=1_000_000, description="Slots from now on (kept until reset).")


class PipelineChangeOut(Model):
    at: datetime
    action: Literal["paused", "unpaused"]
    actor: str
    detail: str | None


class TriggerIn(Model):
    dates: list[Date] = Field(
        default_factory=list,
        max_length=366,
        description="Logical dates (YYYY-MM-DD or ISO date-time); none: the latest interval.",
    )
    conf: dict[str, Any] = Field(default_factory=dict, description="Overrides of the params.")


class TriggerOut(Model):
    runs: list[RunOut]


# -- grid and durations -----------------------------------------------------------------------
class GridRunOut(Model):
    id: int
    run_id: str
    logical_date: datetime
    label: str = Field(description="The logical date in the pipeline's timezone.")
    origin: str
    state: str
    duration: float | None
    late: bool = Field(default=False, description="Its date missed a deadline.")
    late_tasks: list[str] = Field(
        default_factory=list, description="The tasks whose deadline its date missed."
    )


class LateDateOut(Model):
    logical_date: datetime
    label: str = Field(description="The logical date in the pipeline's timezone.")
    task: str | None = Field(description="The task whose deadline passed; null: the run's.")
    due_at: datetime
    recorded_at: datetime
    run: int | None = Field(description="The date's run (null: the date has no run).")
    run_state: str | None


class LateDateListOut(Model):
    pipeline: str
    late: list[LateDateOut] = Field(description="Newest logical date first.")


class CostByResource(Model):
    cpu: str
    memory: str
    gpu: str
    ephemeral: str
    storage: str


class CostLineOut(Model):
    key: str | int | None = Field(
        description="The logical date (ISO 8601), task, backfill number (null: tries of no "
        "backfill), run number or month (YYYY-MM) this line counts; null on the total."
    )
    tries: int = Field(description="Tries counted: every try of every attempt.")
    cpu_hours: str = Field(description="vCPU-hours requested (pods) or used (local tries).")
    memory_gib_hours: str
    cost: str = Field(description="In the table's currency, as exact decimal text.")
    by_resource: CostByResource


class CostOut(Model):
    pipeline: str
    by: Literal["date", "task", "backfill", "run", "month"]
    currency: str
    note: str | None = Field(description="Said with the figures, e.g. that no price is set.")
    lines: list[CostLineOut]
    total: CostLineOut


class GridOut(Model):
    pipeline: str
    tasks: list[str]
    runs: list[GridRunOut] = Field(description="Oldest first.")
    states: list[list[str | None]] = Field(
        description="states[t][r]: state of task t in run r (null: the run has no such task)."
    )
    offset: int
    limit: int
    older: int | None = Field(description="`offset` of the page of older runs, if any.")
    newer: int | None = Field(description="`offset` of the page of newer runs, if any.")


class DurationsOut(Model):
    pipeline: str
    tasks: list[str]
    runs: list[GridRunOut]
    durations: list[list[float | None]] = Field(description="durations[t][r] in seconds.")


# -- backfills ------------------------------------------------------------------------------
class BackfillIn(Model):
    start: Date
    end: Date
    conf: dict[str, Any] = Field(default_factory=dict)
    reprocess: Literal["missing", "failed", "all"] = "missing"
    max_active_runs: int | None = Field(default=None, ge=1, le=10_000)
    order: Literal["oldest", "newest"] = "oldest"
    tasks: list[Text] | None = Field(default=None, max_length=1000)
    from_task: Text | None = None
    priority: int | None = Field(
        default=None,
        ge=-1000,
        le=1000,
        description="Its runs' priority, higher first (scheduled 2, manual 1, backfill 0).",
    )


class PlannedDateOut(Model):
    logical_date: datetime
    label: str
    existing: str | None
    action: Literal["create", "reset", "skip"]
    reason: str
    conf_diff: dict[str, list[Any]] = Field(description="param: [old, new].")
    run: int | None


class EstimateOut(Model):
    seconds: float = Field(description="Expected wall-clock time of the whole backfill.")
    per_run: float = Field(description="Mean duration of the recent successful runs.")
    sample: int = Field(description="How many past runs the mean is taken from.")
    slots: int = Field(description="Runs at once (max_active_runs).")


class PlanOut(Model):
    pipeline: str
    start: datetime
    end: datetime
    conf: dict[str, Any]
    resolved: dict[str, Any]
    reprocess: str
    tasks: list[str]
    selected: bool
    max_active_runs: int | None
    order: str
    counts: dict[str, int]
    dates: list[PlannedDateOut]
    estimate: EstimateOut | None


class BackfillOut(Model):
    id: int
    pipeline: str
    start: datetime
    end: datetime
    conf: dict[str, Any]
    reprocess: str
    max_active_runs: int | None
    order: str
    tasks: list[str] | None
    state: str
    planned: dict[str, int]
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    runs: dict[str, int] = Field(description="Run state -> count.")
    total: int
    done: int
    failed: int


class BackfillListOut(Model):
    backfills: list[BackfillOut]


class BackfillDetailOut(Model):
    backfill: BackfillOut
    eta_seconds: float | None
    runs: list[RunOut]


class BackfillCancelOut(Model):
    backfill: BackfillOut
    cancelled_runs: int


# -- history --------------------------------------------------------------------------------
class Selection(Model):
    run: Text | None = Field(default=None, description="Run number, run id or logical date.")
    start: Date | None = None
    end: Date | None = None


class ClearIn(Selection):
    tasks: list[Text] | None = Field(default=None, max_length=1000)
    only_failed: bool = False
    downstream: bool = False


class LeftRunning(Model):
    run_id: str
    task_id: str


class ClearOut(Model):
    runs: int
    task_instances: int
    left_running: list[LeftRunning]


class MarkIn(Model):
    run: Text = Field(min_length=1, description="Run number, run id or logical date.")
    state: Literal["success", "failed"]


class DeleteIn(Selection):
    force: bool = False


class DeleteOut(Model):
    runs: int
    task_instances: int
    tries: int
    logs: int


# -- notifications --------------------------------------------------------------------------
class NotificationAttemptOut(Model):
    attempt: int
    at: datetime
    ok: bool
    result: str | None = Field(description="What the channel answered, or why it failed.")
    seconds: float


class NotificationOut(Model):
    id: int = Field(description="The delivery number receivers see (X-Reflow-Delivery).")
    event: str
    created_at: datetime
    pipeline: str | None
    run: int | None
    run_id: str | None
    logical_date: str | None
    task: str | None
    channel: str = Field(description="The channel's name in reflow.toml (never its URL).")
    kind: str = Field(description="webhook, slack or email; unknown if no longer configured.")
    state: Literal["pending", "sent", "failed"]
    attempts: int
    next_at: datetime | None = Field(description="Pending: when the next attempt is due.")
    sent_at: datetime | None
    last_error: str | None
    attempt_log: list[NotificationAttemptOut]


class NotificationListOut(Model):
    notifications: list[NotificationOut]
    next_before: int | None = Field(
        description="Pass as before= for the next (older) page; null on the last page."
    )
