"""reflow: an orchestrator for partitioned data pipelines.

The public API for pipeline files. Importing it stays light: no database, no CLI; and each
name is imported on first use, so the command line starts without the pipeline API when
a command does not need it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reflow.core.errors import ConfError, NotFound, PipelineError, ReflowError
    from reflow.core.notify import (
        email,
        on,
        on_backfill_finished,
        on_deadline_missed,
        on_failure,
        on_recovery,
        on_retry,
        on_success,
        on_task_failure,
        on_timeout,
        slack,
        webhook,
    )
    from reflow.core.params import Param
    from reflow.core.pipeline import Pipeline, Task, TaskDefaults
    from reflow.core.pod import Pod, Scratch, Volume, scratch
    from reflow.tasks.python import Python
    from reflow.tasks.shell import Shell
    from reflow.tasks.spark import SparkSubmit

__version__ = "0.1.0"

# name -> the module that defines it
_PUBLIC = {
    "ConfError": "reflow.core.errors",
    "NotFound": "reflow.core.errors",
    "PipelineError": "reflow.core.errors",
    "ReflowError": "reflow.core.errors",
    "email": "reflow.core.notify",
    "on": "reflow.core.notify",
    "on_backfill_finished": "reflow.core.notify",
    "on_deadline_missed": "reflow.core.notify",
    "on_failure": "reflow.core.notify",
    "on_recovery": "reflow.core.notify",
    "on_retry": "reflow.core.notify",
    "on_success": "reflow.core.notify",
    "on_task_failure": "reflow.core.notify",
    "on_timeout": "reflow.core.notify",
    "slack": "reflow.core.notify",
    "webhook": "reflow.core.notify",
    "Param": "reflow.core.params",
    "Pipeline": "reflow.core.pipeline",
    "Task": "reflow.core.pipeline",
    "TaskDefaults": "reflow.core.pipeline",
    "Pod": "reflow.core.pod",
    "Scratch": "reflow.core.pod",
    "Volume": "reflow.core.pod",
    "scratch": "reflow.core.pod",
    "Python": "reflow.tasks.python",
    "Shell": "reflow.tasks.shell",
    "SparkSubmit": "reflow.tasks.spark",
}

__all__ = [
    "ConfError",
    "NotFound",
    "Param",
    "Pipeline",
    "PipelineError",
    "Pod",
    "Python",
    "ReflowError",
    "Scratch",
    "Shell",
    "SparkSubmit",
    "Task",
    "TaskDefaults",
    "Volume",
    "email",
    "on",
    "on_backfill_finished",
    "on_deadline_missed",
    "on_failure",
    "on_recovery",
    "on_retry",
    "on_success",
    "on_task_failure",
    "on_timeout",
    "scratch",
    "slack",
    "webhook",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'reflow' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
