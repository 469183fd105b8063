"""The records services hand to the CLI and the web layer, which never import the store:
the store's own (``reflow.store.records``), named here."""

from reflow.store.records import (
    Backfill,
    DatedUsage,
    DeadlineMiss,
    HistoryEvent,
    LateDate,
    Notification,
    NotificationAttempt,
    PipelineRecord,
    Run,
    RunAttempt,
    SchedulerRecord,
    TaskInstance,
    TaskTry,
    TokenWithUser,
    User,
)

__all__ = [
    "Backfill",
    "DatedUsage",
    "DeadlineMiss",
    "HistoryEvent",
    "LateDate",
    "Notification",
    "NotificationAttempt",
    "PipelineRecord",
    "Run",
    "RunAttempt",
    "SchedulerRecord",
    "TaskInstance",
    "TaskTry",
    "TokenWithUser",
    "User",
]
