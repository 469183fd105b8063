"""Launching: which scheduled task instances start first, and starting their tries.

The scheduler reads the best candidates (``store.scheduling.scheduled_task_instances``),
ranks them (:func:`rank`), takes as many as its limits allow in one transaction
(:func:`choose`, ``store.tries.queue_tries`` with a :func:`claim` each), then starts their
processes or pods outside any transaction (:func:`start_tries`) and records where they run.

Crash points between those steps are named in ``Scheduler._launch``: a try is queued
(committed) before its process starts, so a scheduler that dies in between leaves a
queued try with no process, which the next scheduler adopts and finds lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reflow.core.config import Settings
from reflow.core.context import RunInfo, build_context
from reflow.core.errors import Fenced, ReflowError
from reflow.core.naming import Clock
from reflow.core.pipeline import Pipeline
from reflow.core.spec import Outcome, TrySpec
from reflow.core.states import FailureReason
from reflow.launchers.base import Launcher
from reflow.scheduler import trylog
from reflow.scheduler.readiness import Shape
from reflow.scheduler.shipping import LogShipper, NoShipping
from reflow.store import tries as store_tries
from reflow.store.records import ReadyTaskInstance, Run
from reflow.tasks.build import Remote, build_try

log = logging.getLogger("reflow.scheduler")


@dataclass(frozen=True)
class Launch:
    """A scheduled task instance that may start, with its run and its place in line."""

    ti_id: int
    # The run, with the task instance (store.scheduling.scheduled_task_instances).
    run: ReadyTaskInstance
    task_id: str
    rank: tuple[Any, ...]


@dataclass(frozen=True)
class Started:
    """A try whose process or pod started, not yet recorded as running."""

    try_id: int
    ti_id: int
    handle: Any  # the launcher's handle: pid, host, external id
    at: datetime
    timeout: float | None

    def record(self) -> store_tries.Start:
        h = self.handle
        return store_tries.Start(
            self.try_id, self.ti_id, h.pid, h.host, h.external_id, self.at, self.timeout
        )


def run_info(run: Run, pipeline: Pipeline) -> RunInfo:
    return RunInfo(
        pipeline=run.pipeline,
        run_id=run.run_id,
        logical_date=run.logical_date,
        data_interval_start=run.data_interval_start,
        data_interval_end=run.data_interval_end,
        # Frozen when the run was created, rendered under the current params (core.edits).
        conf=pipeline.params.render(run.conf),
        timezone=pipeline.schedule.timezone,
    )


def rank(
    rows: Iterable[ReadyTaskInstance],
    pipelines: Mapping[str, Pipeline],
    shape: Callable[[Pipeline], Shape],
    skip: Callable[[ReadyTaskInstance], bool],
) -> list[Launch]:
    """The launchable rows, best first: higher run priority (scheduled runs before
    backfills, unless a backfill says otherwise), higher task priority weight, then older
    dates, then upstream tasks first. A row of a run not on its pipeline's current version
    waits (the run is brought to it first); ``skip`` drops others (held runs, paused or
    stale pipelines)."""
    launches = []
    for row in rows:
        pipeline = pipelines.get(row.pipeline)
        if pipeline is None or skip(row) or row.version != pipeline.version:
            continue
        task = pipeline.tasks.get(row.ti_task_id)
        place = (
            -row.priority,
            -(task.option("priority_weight") if task is not None else 1),
            row.logical_date,
            row.id,
            shape(pipeline).order.get(row.ti_task_id, 0),
        )
        launches.append(Launch(row.ti_id, row, row.ti_task_id, place))
    launches.sort(key=lambda c: c.rank)
    return launches


def choose(
    candidates: Sequence[Launch],
    pipelines: Mapping[str, Pipeline],
    *,
    mine: set[str],
    live: dict[str, int],
    free: int,
    pool_free: dict[str, int] | None = None,
) -> list[Launch]:
    """The candidates that start now: at most ``free``, of the pipelines this scheduler
    locked (``mine``), each pipeline under its ``max_active_tasks`` counting its ``live``
    task instances, each task of a pool only when the pool has its slots free
    (``pool_free``: pool -> free slots). The counts are updated as candidates are taken;
    a candidate that does not fit leaves its place to the next (a smaller one may fit)."""
    chosen: list[Launch] = []
    pool_free = {} if pool_free is None else pool_free
    for cand in candidates:
        if len(chosen) >= free:
            break
        name = cand.run.pipeline
        if name not in mine or live.get(name, 0) >= pipelines[name].max_active_tasks:
            continue
        pool, slots = pool_of(pipelines[name], cand.task_id)
        if pool is not None:
            if pool_free.get(pool, 0) < slots:
                continue
            pool_free[pool] -= slots
        live[name] = live.get(name, 0) + 1
        chosen.append(cand)
    return chosen


def pool_of(pipeline: Pipeline, task_id: str) -> tuple[str | None, int]:
    """The pool a task's tries take slots of, and how many (None: no pool)."""
    task = pipeline.tasks[task_id]
    pool = task.option("pool")
    return pool, int(task.option("pool_slots")) if pool is not None else 0


def claim(settings: Settings, pipeline: Pipeline, cand: Launch) -> store_tries.Claim:
    """What the new try of ``cand`` needs when it is queued."""
    task = pipeline.tasks[cand.task_id]
    run = cand.run
    pool, slots = pool_of(pipeline, cand.task_id)
    return store_tries.Claim(
        ti_id=cand.ti_id,
        run_pk=run.id,
        run_attempt=run.attempt,
        launcher=settings.launcher_for(run.pipeline, cand.task_id),
        log_path_for=lambda n: settings.log_location(run.pipeline, run.run_id, cand.task_id, n),
        timeout=task.option("timeout"),
        kill_grace=float(task.option("kill_grace")),
        pool=pool,
        pool_slots=slots if pool is not None else 1,
    )


def target(settings: Settings, pipeline: str, task_id: str) -> dict[str, Any]:
    """Where a task's tries run: the launcher's name and, for pods, the image's layout."""
    launcher = settings.launcher_for(pipeline, task_id)
    remote = None
    if launcher == "kubernetes":
        k8s = settings.kubernetes
        remote = Remote(k8s.pipelines_folder, k8s.python)
    return {"launcher": launcher, "remote": remote}


def start_tries(
    taken: Sequence[tuple[Launch, int, int]],
    pipelines: Mapping[str, Pipeline],
    *,
    settings: Settings,
    launcher: Launcher,
    host: str,
    clock: Clock,
    now: datetime,
    logs: LogShipper | NoShipping | None = None,
) -> tuple[list[Started], list[Outcome]]:
    """Start the queued tries (``taken``: candidate, try id, try number): render each try,
    open its log (shipped by ``logs`` from now on) and hand it to the launcher. Returns the
    tries started and the outcomes of those that could not start (one try's error never
    stops the others)."""
    started: list[Started] = []
    failed: list[Outcome] = []
    for cand, try_id, number in taken:
        run = cand.run
        pipeline = pipelines[run.pipeline]
        task = pipeline.tasks[cand.task_id]
        location = settings.log_location(run.pipeline, run.run_id, cand.task_id, number)
        path = settings.log_file(location)  # with logs_url, the spool file shipped there
        if logs is not None:
            logs.watch(try_id, location)
        spec: TrySpec | None = None
        try:
            context = build_context(run_info(run, pipeline), cand.task_id, number)
            spec = build_try(
                task,
                context,
                try_id=try_id,
                log_path=str(path),
                pipelines_folder=str(settings.pipelines_path),
                cwd=str(settings.home),
                **target(settings, run.pipeline, cand.task_id),
            )
            trylog.note(
                path, trylog.opening(settings, host, run, pipeline, task, number, spec), clock()
            )
            handle = launcher.start(spec)
        except Fenced as exc:
            # Declared lost by another scheduler while this one was paused: recorded only
            # if this scheduler still owns it (never, unless the fence is stale).
            log.warning("try %s not started: %s", try_id, exc)
            trylog.note(path, [trylog.fenced(str(exc))], clock())
            failed.append(Outcome(try_id, None, FailureReason.LOST, now, str(exc)))
            continue
        except Exception as exc:  # one try's error never stops the scheduler
            log.warning(
                "try %s could not start: %s", try_id, exc, exc_info=not isinstance(exc, ReflowError)
            )
            if spec is None:  # not rendered: its log still says which try failed
                opening = trylog.opening(settings, host, run, pipeline, task, number, None)
                trylog.note(path, opening, clock())
            failed.append(
                Outcome(try_id, None, FailureReason.ERROR, now, str(exc) or type(exc).__name__)
            )
            continue
        # The task timeout counts from here, the start of its process or pod.
        started.append(Started(try_id, cand.ti_id, handle, clock(), task.option("timeout")))
    return started, failed
