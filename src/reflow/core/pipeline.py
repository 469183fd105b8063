"""The pipeline model: a DAG of tasks plus a schedule, limits, params and task defaults.

Pipelines are defined in Python files::

    with Pipeline("events", schedule="@daily", start_date="2024-01-01") as p:
        extract = Shell("extract", "fetch --day {{ ds }}")
        load = Shell("load", "load --day {{ ds }}")
        extract >> load

Tasks are linked while the file is imported; :meth:`Pipeline.validate` then checks the
graph, after which the pipeline is treated as read-only.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta
from typing import Any, ClassVar

from reflow.core.errors import ConfError, PipelineError, ReflowError, ScheduleError
from reflow.core.lateness import Deadline
from reflow.core.naming import NAME_PATTERN
from reflow.core.notify import Rule, rules_of
from reflow.core.params import Param, ParamSet
from reflow.core.pod import Pod, Scratch, check_requests_within_limits, scratch_plain
from reflow.core.schedule import Schedule, to_datetime

_ID = re.compile(NAME_PATTERN)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def to_seconds(value: timedelta | float | int | str | None, what: str) -> float | None:
    """Accept a timedelta, a number of seconds or a string like ``"45m"``."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise PipelineError(f"{what}: expected seconds, a timedelta or e.g. '45m', got {value!r}")
    if seconds < 0:
        raise PipelineError(f"{what} must not be negative")
    return seconds


@dataclass(frozen=True)
class TaskDefaults:
    """Options every task of a pipeline inherits unless it sets its own."""

    retries: int = 0
    retry_delay: float = 60.0
    retry_exponential_backoff: bool = False
    max_retry_delay: float | None = None
    timeout: float | None = None
    kill_grace: float = 10.0
    env: Mapping[str, str] = field(default_factory=dict)
    pod: Pod | None = None
    scratch: Scratch | None = None
    pool: str | None = None
    pool_slots: int = 1
    priority_weight: int = 1
    deadline: Deadline | None = None

    def __post_init__(self) -> None:
        # Durations may be given as seconds, timedeltas or strings like "45m".
        for name in ("retry_delay", "max_retry_delay", "timeout", "kill_grace"):
            object.__setattr__(self, name, to_seconds(getattr(self, name), f"default {name}"))
        object.__setattr__(self, "deadline", _deadline_of(self.deadline, "task defaults:"))
        _check_slots("default", self.pool, self.pool_slots, self.priority_weight)
        _check_kind(self.pod, Pod, "default pod", "Pod(...)")
        _check_kind(self.scratch, Scratch, "default scratch", "scratch(size, ...)")
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise PipelineError(
                f"default retries must be a non-negative integer, got {self.retries!r}"
            )

    @classmethod
    def of(cls, value: TaskDefaults | Mapping[str, Any] | None) -> TaskDefaults:
        if value is None:
            return cls()
        if isinstance(value, TaskDefaults):
            return value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise PipelineError(f"unknown task default {', '.join(unknown)}")
        return cls(**value)


def _check_slots(what: str, pool: Any, slots: Any, weight: Any) -> None:
    """A pool's name, the slots a try takes in it, and a priority weight."""
    if pool is not None and (not isinstance(pool, str) or not _ID.match(pool)):
        raise PipelineError(f"{what} pool: bad name {pool!r}: use letters, digits, '_', '-', '.'")
    for name, value, least in (("pool_slots", slots, 1), ("priority_weight", weight, None)):
        if value is None:
            continue
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or (least is not None and value < least)
        ):
            need = "a positive integer" if least else "an integer"
            raise PipelineError(f"{what} {name} must be {need}, got {value!r}")


def _deadline_of(value: Any, what: str) -> Deadline | None:
    try:
        return Deadline.of(value)
    except PipelineError as exc:
        raise PipelineError(f"{what} {exc}") from None


def _check_kind(value: Any, kind: type, what: str, example: str) -> None:
    if value is not None and not isinstance(value, kind):
        raise PipelineError(f"{what}: expected {example}, got {value!r}")


_INHERITED = (
    "retries",
    "retry_delay",
    "retry_exponential_backoff",
    "max_retry_delay",
    "timeout",
    "kill_grace",
)


class Task:
    """Base of every task kind. A kind adds its own fields and how a try is built from them.

    Options left as None are taken from the pipeline's :class:`TaskDefaults`.
    """

    kind: ClassVar[str] = "task"
    # Names of the attributes that are templates (rendered with the run context).
    template_fields: ClassVar[tuple[str, ...]] = ("env",)

    def __init__(
        self,
        task_id: str,
        *,
        retries: int | None = None,
        retry_delay: timedelta | float | str | None = None,
        retry_exponential_backoff: bool | None = None,
        max_retry_delay: timedelta | float | str | None = None,
        timeout: timedelta | float | str | None = None,
        kill_grace: timedelta | float | str | None = None,
        env: Mapping[str, str] | None = None,
        pod: Pod | None = None,
        scratch: Scratch | None = None,
        pool: str | None = None,
        pool_slots: int | None = None,
        priority_weight: int | None = None,
        deadline: str | timedelta | None = None,
        pipeline: Pipeline | None = None,
    ) -> None:
        if not isinstance(task_id, str) or not _ID.match(task_id):
            raise PipelineError(f"bad task id {task_id!r}: use letters, digits, '_', '-' or '.'")
        self.task_id = task_id
        if retries is not None and (
            not isinstance(retries, int) or isinstance(retries, bool) or retries < 0
        ):
            raise PipelineError(f"task {task_id!r}: retries must be a non-negative integer")
        self.retries = retries
        self.retry_delay = to_seconds(retry_delay, f"task {task_id!r} retry_delay")
        self.retry_exponential_backoff = retry_exponential_backoff
        self.max_retry_delay = to_seconds(max_retry_delay, f"task {task_id!r} max_retry_delay")
        self.timeout = to_seconds(timeout, f"task {task_id!r} timeout")
        self.kill_grace = to_seconds(kill_grace, f"task {task_id!r} kill_grace")
        self.env: dict[str, str] = dict(env or {})
        _check_kind(pod, Pod, f"task {task_id!r} pod", "Pod(...)")
        _check_kind(scratch, Scratch, f"task {task_id!r} scratch", "scratch(size, ...)")
        self.pod = pod
        self.scratch = scratch
        _check_slots(f"task {task_id!r}", pool, pool_slots, priority_weight)
        # Tries of a task in a pool take ``pool_slots`` of its slots, shared by every
        # pipeline; ``priority_weight`` orders task instances that compete for slots.
        self.pool = pool
        self.pool_slots = pool_slots
        self.priority_weight = priority_weight
        owner = pipeline or Pipeline.current()
        # When this task's output for a date must be there (see core.lateness).
        where = f"pipeline {owner.name!r}: " if owner is not None else ""
        self.deadline = _deadline_of(deadline, f"{where}task {task_id!r}:")
        self.upstream_ids: set[str] = set()
        self.pipeline: Pipeline | None = None
        if owner is not None:
            owner.add(self)

    # -- dependencies -------------------------------------------------------------------
    def set_downstream(self, other: Task | Sequence[Task]) -> None:
        for task in _as_tasks(other):
            task.upstream_ids.add(self.task_id)
            if task.pipeline is not None:
                task.pipeline._frozen = None
            if self.pipeline is not None and task.pipeline is None:
                self.pipeline.add(task)

    def set_upstream(self, other: Task | Sequence[Task]) -> None:
        for task in _as_tasks(other):
            task.set_downstream(self)

    def __rshift__(self, other: Task | Sequence[Task]) -> Task | Sequence[Task]:
        self.set_downstream(other)
        return other

    def __lshift__(self, other: Task | Sequence[Task]) -> Task | Sequence[Task]:
        self.set_upstream(other)
        return other

    def __rrshift__(self, other: Sequence[Task]) -> Task:
        self.set_upstream(other)
        return self

    def __rlshift__(self, other: Sequence[Task]) -> Task:
        self.set_downstream(other)
        return self

    # -- resolved options ---------------------------------------------------------------
    def option(self, name: str) -> Any:
        """An option with the pipeline's default applied."""
        value = getattr(self, name)
        if value is None and self.pipeline is not None:
            value = getattr(self.pipeline.defaults, name)
        if value is None:
            value = getattr(TaskDefaults(), name)
        return value

    def merged_env(self) -> dict[str, str]:
        base = dict(self.pipeline.defaults.env) if self.pipeline else {}
        base.update(self.env)
        return base

    def resolved_pod(self) -> Pod:
        """The task's pod options over the pipeline's default ones."""
        base = self.pipeline.defaults.pod if self.pipeline else None
        return (self.pod or Pod()).merged_over(base)

    def resolved_scratch(self) -> Scratch | None:
        if self.scratch is not None or self.pipeline is None:
            return self.scratch
        return self.pipeline.defaults.scratch

    def retry_delay_for(self, try_number: int) -> float:
        """Seconds to wait before try ``try_number + 1`` after try ``try_number`` failed."""
        delay = float(self.option("retry_delay"))
        if self.option("retry_exponential_backoff"):
            delay = delay * (2 ** max(0, try_number - 1))
        cap = self.option("max_retry_delay")
        return min(delay, cap) if cap is not None else delay

    def describe(self) -> dict[str, Any]:
        """The task's structure: what defines its version (kind, fields, upstreams), with
        the pipeline's defaults applied, so that changing a default changes the version."""
        out: dict[str, Any] = {"kind": self.kind, "upstream": sorted(self.upstream_ids)}
        for name in _INHERITED:
            out[name] = _plain(self.option(name))
        for name in (*self.template_fields, *self.extra_fields()):
            out[name] = _plain(self.merged_env() if name == "env" else getattr(self, name))
        # Only when set: pipelines without Kubernetes options keep their version.
        pod = self.resolved_pod()
        if pod != Pod():
            out["pod"] = _plain(pod.to_plain())
        if (space := self.resolved_scratch()) is not None:
            out["scratch"] = scratch_plain(space)
        # Only when set, like the pod: pipelines without them keep their version.
        for name, default in (("pool", None), ("pool_slots", 1), ("priority_weight", 1)):
            if (value := self.option(name)) != default:
                out[name] = value
        if (deadline := self.option("deadline")) is not None:
            out["deadline"] = str(deadline)
        return out

    def extra_fields(self) -> tuple[str, ...]:
        return ()

    def check(self) -> None:
        """Validate kind-specific fields; raise PipelineError naming the problem."""

    def app_id_from_log(self, log_path: str) -> str | None:
        """The id of the application a try ran (e.g. Spark's), read from its log.

        Task kinds that launch such applications override this; the default reads nothing.
        """
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.task_id}>"


def _as_tasks(other: Task | Sequence[Task]) -> list[Task]:
    items = [other] if isinstance(other, Task) else list(other)
    for item in items:
        if not isinstance(item, Task):
            raise PipelineError(f"cannot link a task to {item!r}: not a task")
    return items


def _plain(value: Any) -> Any:
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return json.loads(json.dumps(value, default=str, sort_keys=True))


class _Definitions(threading.local):
    """Per thread: the pipelines being defined (``with Pipeline(...)``) and, while a file is
    loaded, the list collecting the pipelines it creates. Per thread because the scheduler
    and the web server may load files at the same time in one process."""

    def __init__(self) -> None:
        self.stack: list[Pipeline] = []
        self.registry: list[Pipeline] | None = None


_defining = _Definitions()


class Pipeline:
    """A DAG of tasks plus a schedule, limits, params and task defaults."""

    def __init__(
        self,
        name: str,
        *,
        schedule: str | None = None,
        start_date: datetime | date | str | None = None,
        end_date: datetime | date | str | None = None,
        catchup: bool = False,
        timezone: str = "UTC",
        max_active_runs: int = 16,
        max_active_tasks: int = 16,
        run_timeout: timedelta | float | str | None = None,
        deadline: str | timedelta | None = None,
        params: Mapping[str, Param | Any] | None = None,
        defaults: TaskDefaults | Mapping[str, Any] | None = None,
        description: str = "",
        tags: Iterable[str] = (),
        notify: Iterable[Rule] | Rule | None = None,
    ) -> None:
        if not isinstance(name, str) or not _ID.match(name):
            raise PipelineError(f"bad pipeline name {name!r}: use letters, digits, '_', '-', '.'")
        self.name = name
        self.fileloc: str | None = None
        try:
            self.schedule = Schedule(schedule, timezone)
            tz = self.schedule.tz
            self.start_date = to_datetime(start_date, tz) if start_date is not None else None
            self.end_date = to_datetime(end_date, tz) if end_date is not None else None
            if not self.schedule.is_manual and self.start_date is None:
                raise ScheduleError("a scheduled pipeline needs a start_date")
            if self.start_date and self.end_date and self.end_date < self.start_date:
                raise ScheduleError("end_date is before start_date")
            for label, limit in (
                ("max_active_runs", max_active_runs),
                ("max_active_tasks", max_active_tasks),
            ):
                if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                    raise PipelineError(f"{label} must be a positive integer, got {limit!r}")
            self.catchup = bool(catchup)
            self.max_active_runs = max_active_runs
            self.max_active_tasks = max_active_tasks
            self.run_timeout = to_seconds(run_timeout, "run_timeout")
            # When a date's run must have succeeded (see core.lateness).
            self.deadline = Deadline.of(deadline)
            if self.deadline is not None and self.schedule.is_manual:
                raise PipelineError(
                    f"deadline {deadline!r} needs a schedule (a deadline is per logical date)"
                )
            self.params = ParamSet(params)
            self.params.check_defaults()
            self.defaults = TaskDefaults.of(defaults)
            # Who hears of this pipeline's runs; not part of its version (see describe).
            self.notify = rules_of(notify)
        except ConfError as exc:
            raise PipelineError(f"pipeline {name!r}: {exc}") from None
        except PipelineError as exc:
            raise PipelineError(f"pipeline {name!r}: {exc}") from None
        self.description = description
        self.tags = tuple(tags)
        self.tasks: dict[str, Task] = {}
        self._frozen: tuple[list[str], str] | None = None
        if _defining.registry is not None:
            _defining.registry.append(self)

    # -- definition ---------------------------------------------------------------------
    @classmethod
    def current(cls) -> Pipeline | None:
        return _defining.stack[-1] if _defining.stack else None

    @staticmethod
    @contextmanager
    def collecting() -> Iterator[list[Pipeline]]:
        """Collect the pipelines created (in this thread) inside the block."""
        found: list[Pipeline] = []
        previous, _defining.registry = _defining.registry, found
        try:
            yield found
        finally:
            _defining.registry = previous
            _defining.stack.clear()

    def __enter__(self) -> Pipeline:
        _defining.stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _defining.stack.pop()

    def add(self, task: Task) -> Task:
        if task.pipeline is not None and task.pipeline is not self:
            raise PipelineError(
                f"pipeline {self.name!r}: task {task.task_id!r} belongs to "
                f"pipeline {task.pipeline.name!r}"
            )
        existing = self.tasks.get(task.task_id)
        if existing is not None and existing is not task:
            raise PipelineError(f"pipeline {self.name!r}: duplicate task id {task.task_id!r}")
        task.pipeline = self
        self.tasks[task.task_id] = task
        self._frozen = None
        return task

    # -- validation and structure ---------------------------------------------------------
    def validate(self) -> Pipeline:
        """Check the graph and every task; raise PipelineError naming the problem."""
        if not self.tasks:
            raise PipelineError(f"pipeline {self.name!r}: has no tasks")
        for task in self.tasks.values():
            unknown = sorted(task.upstream_ids - set(self.tasks))
            if unknown:
                raise PipelineError(
                    f"pipeline {self.name!r}: task {task.task_id!r} depends on unknown "
                    f"task {', '.join(map(repr, unknown))}"
                )
            try:
                task.check()
                pod = task.resolved_pod()
                check_requests_within_limits(pod.requests, pod.limits)
            except ReflowError as exc:
                raise PipelineError(
                    f"pipeline {self.name!r}: task {task.task_id!r}: {exc}"
                ) from None
        cycle = self._find_cycle()
        if cycle:
            raise PipelineError(f"pipeline {self.name!r}: cycle {' -> '.join(cycle)}")
        self._check_deadlines()
        # A validated pipeline is read-only: its order and version are computed once, as
        # the scheduler asks for them on every tick.
        self._frozen = (self._topological(), self._version())
        return self

    def _check_deadlines(self) -> None:
        """A deadline is per logical date: a pipeline without a schedule has none."""
        if not self.schedule.is_manual:
            return
        for task in self.tasks.values():
            if (deadline := task.option("deadline")) is not None:
                raise PipelineError(
                    f"pipeline {self.name!r}: task {task.task_id!r} has deadline "
                    f"{str(deadline)!r} but the pipeline has no schedule (a deadline is per "
                    "logical date)"
                )

    def _find_cycle(self) -> list[str] | None:
        white, grey, black = 0, 1, 2
        color = dict.fromkeys(self.tasks, white)
        path: list[str] = []

        def visit(node: str) -> list[str] | None:
            color[node] = grey
            path.append(node)
            for up in sorted(self.tasks[node].upstream_ids):
                if color[up] == grey:
                    return [*path[path.index(up) :], up]
                if color[up] == white and (found := visit(up)):
                    return found
            path.pop()
            color[node] = black
            return None

        for task_id in sorted(self.tasks):
            if color[task_id] == white and (found := visit(task_id)):
                return list(reversed(found))
        return None

    def topological(self) -> list[str]:
        """Task ids, every task after its upstreams (ties by name, for stable output)."""
        if self._frozen is not None:
            return list(self._frozen[0])
        return self._topological()

    def _topological(self) -> list[str]:
        done: list[str] = []
        placed: set[str] = set()
        remaining = dict(sorted(self.tasks.items()))
        while remaining:
            ready = [t for t, task in remaining.items() if task.upstream_ids <= placed]
            if not ready:  # a cycle: validate() reports it
                raise PipelineError(f"pipeline {self.name!r}: has a cycle")
            for t in ready:
                done.append(t)
                placed.add(t)
                del remaining[t]
        return done

    def downstream_ids(self, task_id: str) -> set[str]:
        return {t for t, task in self.tasks.items() if task_id in task.upstream_ids}

    def structure(self) -> dict[str, Any]:
        """Everything that defines how this pipeline runs, as plain JSON-able data."""
        return {
            "name": self.name,
            "schedule": self.schedule.expression,
            "timezone": self.schedule.timezone,
            "start_date": self.start_date.isoformat() if self.start_date else None,
            "end_date": self.end_date.isoformat() if self.end_date else None,
            "catchup": self.catchup,
            "max_active_runs": self.max_active_runs,
            "max_active_tasks": self.max_active_tasks,
            "run_timeout": self.run_timeout,
            "params": self.params.describe(),
            "tasks": {t: self.tasks[t].describe() for t in sorted(self.tasks)},
            # Only when set: pipelines without one keep their version.
            **({"deadline": str(self.deadline)} if self.deadline is not None else {}),
        }

    @property
    def version(self) -> str:
        """A short hash of :meth:`structure`: changes whenever the pipeline's shape does."""
        return self._frozen[1] if self._frozen is not None else self._version()

    def _version(self) -> str:
        blob = json.dumps(self.structure(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"<Pipeline {self.name} tasks={len(self.tasks)}>"
