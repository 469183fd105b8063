"""Errors are types: raised in core and services, rendered as one line by the CLI."""

from __future__ import annotations


class ReflowError(Exception):
    """Base of every error a user can cause; its message is one clear line."""


class PipelineError(ReflowError):
    """A pipeline definition is invalid (names the file, the pipeline and the problem)."""


class ScheduleError(PipelineError):
    """A schedule expression or date range is invalid."""


class ConfError(ReflowError):
    """A run's conf does not match the pipeline's params."""


class TemplateError(ReflowError):
    """A templated field failed to render."""


class TaskError(ReflowError):
    """A try cannot be built or started (a missing program, a bad field); the try fails
    with this message in its log."""


class Fenced(TaskError):
    """A try that another scheduler declared lost (and retried) must not start any more."""


class StoreUnavailable(ReflowError):
    """The metadata database cannot be used (unreachable, read-only, half-created)."""


class LogsUnavailable(ReflowError):
    """A try's log cannot be read where it lives (a bucket that does not answer)."""


class LeaseLost(ReflowError):
    """This scheduler was declared dead by another one (its heartbeat stopped for longer
    than ``scheduler_timeout``): it is fenced, and must register again before it starts,
    adopts or records anything."""


class ConfigError(ReflowError):
    """reflow's own configuration is invalid."""


class NotFound(ReflowError):
    """A pipeline, run, task or try that was asked for does not exist."""


class InvalidInput(ReflowError):
    """A request that cannot be honoured as given (bad date, bad JSON, conflicting options)."""


class Conflict(ReflowError):
    """A request that contradicts the current state (a run already exists, is running, ...)."""


class IllegalTransition(RuntimeError):
    """A state change that the transition table forbids: always a bug, never user input."""
