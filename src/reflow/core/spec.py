"""What a launcher is asked to run: plain data built by a task kind from the run context."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reflow.core.cost import Held
from reflow.core.states import FailureReason


@dataclass(frozen=True)
class TrySpec:
    """One try, fully rendered: the launcher runs exactly this and nothing else."""

    try_id: int
    argv: tuple[str, ...]
    log_path: str
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    kill_grace: float = 10.0
    # Identity of the try (pipeline, run_id, task, try_number), for labels and log headers.
    labels: Mapping[str, str] = field(default_factory=dict)
    # Which launcher runs it, and what that launcher needs beyond a command.
    launcher: str = "local"
    timeout: float | None = None
    scratch: Mapping[str, Any] | None = None
    pod: Mapping[str, Any] | None = None
    # Env entries that carry secret values: a pod reads them from a Secret of its own.
    secret_env: frozenset[str] = frozenset()


@dataclass(frozen=True)
class TryRef:
    """What the store remembers of a started try, enough for a launcher to adopt it."""

    try_id: int
    log_path: str
    pid: int | None = None
    host: str | None = None
    external_id: str | None = None
    launcher: str = "local"


@dataclass(frozen=True)
class Handle:
    """Where a started try runs, to be recorded on the try row."""

    try_id: int
    pid: int | None
    host: str
    external_id: str


@dataclass(frozen=True)
class Outcome:
    """How a try ended, as seen by its launcher.

    ``reason`` is None for success, ``error`` for a non-zero exit, ``lost`` when the try
    vanished without leaving an exit status. The scheduler replaces it with the cancel
    reason (``timed_out``, ``killed``, ...) when it had asked for the try to be stopped.
    """

    try_id: int
    exit_code: int | None
    reason: FailureReason | None
    ended_at: datetime
    detail: str = ""
    # When the try's own process began, if later than its launch (a pod's container,
    # after scheduling and the image pull): the try's recorded start moves there.
    started_at: datetime | None = None
    # What the try's pods or processes held, and when, as far as its launcher saw (what
    # its cost is computed from).
    held: tuple[Held, ...] = ()

    @property
    def ok(self) -> bool:
        return self.reason is None
