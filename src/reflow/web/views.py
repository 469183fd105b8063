"""Read models for the API and the pages: call the services, shape their rows into the
API's schemas, mask secrets. Nothing here decides anything the services decide."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

from reflow.core.errors import InvalidInput, NotFound
from reflow.core.masking import MASK, Secrets
from reflow.core.naming import utcnow
from reflow.core.states import RUN_ACTIVE, RunState
from reflow.services import backfill as backfill_service
from reflow.services import cost as cost_service
from reflow.services import history as history_service
from reflow.services import lateness as lateness_service
from reflow.services import logs as log_service
from reflow.services import pipelines as pipeline_service
from reflow.services import pools as pool_service
from reflow.services import runs as run_service
from reflow.services.project import Project
from reflow.services.records import DeadlineMiss, Run, TaskInstance, TaskTry
from reflow.web import schemas as s

Action = Literal["create", "reset", "skip"]
LOG_CHUNK = log_service.LOG_CHUNK
MAX_ID = 2**31 - 1
_YEARS = (1900, 2999)
_LABELS = ("start", "end")  # what the API and the pages call the ends of a date range


# -- helpers --------------------------------------------------------------------------------
def seconds(
    start: datetime | None, end: datetime | None, now: datetime | None = None
) -> float | None:
    if start is None:
        return None
    return round(((end or now or utcnow()) - start).total_seconds(), 3)


def took(span: history_service.Span, now: datetime) -> float | None:
    """How long it ran, in seconds to the millisecond; None when it never ran."""
    value = span.seconds(now)
    return None if value is None else round(value, 3)


def parse_day(text: str, what: str = "date") -> datetime:
    """A user-given date, refused with one line when it is not one reflow can schedule."""
    when = run_service.parse_date(text)
    if not _YEARS[0] <= when.year <= _YEARS[1]:
        raise InvalidInput(f"{what} {text!r} is out of range (years {_YEARS[0]}-{_YEARS[1]})")
    return when


class Structures:
    """Each pipeline's structure and secrets, from its file or, once the file is gone, the
    store. Cached per loaded pipeline object (a changed file loads a new one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[object, dict[str, Any], Secrets]] = {}

    def get(self, project: Project, name: str) -> tuple[dict[str, Any], Secrets]:
        pipeline = project.catalog.pipelines.get(name)
        with self._lock:
            hit = self._cache.get(name)
        if hit is not None and pipeline is not None and hit[0] is pipeline:
            return hit[1], hit[2]
        if pipeline is not None:
            structure = pipeline.structure()
        else:
            recorded = pipeline_service.recorded(project, name)
            structure = recorded.structure if recorded is not None else {}
        secrets = Secrets.of(structure, pipeline.params.secret_names() if pipeline else ())
        if pipeline is not None:
            with self._lock:
                self._cache[name] = (pipeline, structure, secrets)
        return structure, secrets

    def secrets(self, project: Project, name: str) -> Secrets:
        return self.get(project, name)[1]

    def timezone(self, project: Project, name: str) -> ZoneInfo:
        structure, _ = self.get(project, name)
        try:
            return ZoneInfo(structure.get("timezone") or "UTC")
        except Exception:
            return ZoneInfo("UTC")


STRUCTURES = Structures()


def label(when: datetime, tz: ZoneInfo) -> str:
    local = when.astimezone(tz)
    if local.hour == local.minute == local.second == 0:
        return local.strftime("%Y-%m-%d")
    return local.strftime("%Y-%m-%d %H:%M")


def misses_of(project: Project, rows: Sequence[Run]) -> dict[int, list[DeadlineMiss]]:
    """The deadlines each run's logical date missed (by run id)."""
    return lateness_service.misses_of_runs(project, rows)


def _miss_out(row: DeadlineMiss) -> s.MissOut:
    return s.MissOut(task=row.task or None, due_at=row.due_at, recorded_at=row.recorded_at)


def run_out(
    row: Run,
    secrets: Secrets,
    now: datetime | None = None,
    misses: Sequence[DeadlineMiss] = (),
) -> s.RunOut:
    return s.RunOut(
        id=row.id,
        pipeline=row.pipeline,
        run_id=row.run_id,
        logical_date=row.logical_date,
        data_interval_start=row.data_interval_start,
        data_interval_end=row.data_interval_end,
        origin=row.origin,
        state=row.state,
        conf=secrets.conf(row.conf),
        attempt=row.attempt,
        version=row.version,
        backfill_id=row.backfill_id,
        created_at=row.created_at,
        queued_at=row.queued_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        duration=took(history_service.run_span(row), now or utcnow()),
        late=bool(misses),
        missed=[_miss_out(m) for m in misses],
    )


def _ti_out(row: TaskInstance, span: history_service.Span, now: datetime) -> s.TaskInstanceOut:
    return s.TaskInstanceOut(
        task_id=row.task_id,
        state=row.state,
        try_number=row.try_number,
        failure_reason=row.failure_reason,
        started_at=span.started_at,
        ended_at=row.ended_at,
        next_try_at=row.next_try_at,
        duration=took(span, now),
    )


def _try_out(row: TaskTry, confs: Mapping[int, dict[str, Any]], now: datetime) -> s.TryOut:
    return s.TryOut(
        task_id=row.task_id,
        try_number=row.try_number,
        run_attempt=row.run_attempt,
        state=row.state,
        launcher=row.launcher,
        host=row.host,
        pid=row.pid,
        queued_at=row.queued_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        duration=seconds(row.started_at, row.ended_at, now),
        exit_code=row.exit_code,
        failure_reason=row.failure_reason,
        cancel_reason=row.cancel_reason,
        detail=row.detail,
        app_id=row.app_id,
        conf=confs.get(row.run_attempt, {}),
    )


# -- pipelines ------------------------------------------------------------------------------
def pipelines(project: Project) -> s.PipelineListOut:
    summaries, problems = pipeline_service.list_pipelines(project)
    return s.PipelineListOut(
        pipelines=[
            s.PipelineSummaryOut(
                name=p.name,
                schedule=p.schedule,
                tasks=p.tasks,
                active=p.active,
                next_logical_date=p.next_logical_date,
                latest=[s.LatestRun(logical_date=d, state=st) for d, st in p.latest],
                running=p.running,
                queued=p.queued,
                paused=p.paused,
            )
            for p in summaries
        ],
        import_errors=[s.ImportErrorOut(path=p.path, message=p.message) for p in problems],
    )


def pipeline(project: Project, name: str) -> s.PipelineOut:
    """A pipeline's structure; one whose file is gone is shown as last recorded."""
    try:
        data = pipeline_service.show_pipeline(project, name)
    except NotFound:
        return _recorded(project, name)
    defined = project.pipeline(name)
    secrets = STRUCTURES.secrets(project, name)
    schema = defined.params.json_schema()
    for pname, prop in (schema.get("properties") or {}).items():
        if pname in secrets.params and "default" in prop:
            prop["default"] = MASK
    return _pipeline_out(data, secrets, schema, active=True)


def _recorded(project: Project, name: str) -> s.PipelineOut:
    recorded = pipeline_service.recorded(project, name)
    if recorded is None:
        project.pipeline(name)  # raises NotFound, naming the known pipelines
        raise NotFound(f"unknown pipeline {name!r}")
    data = dict(recorded.structure)
    data.update(
        file=recorded.file, version=recorded.version, order=recorded.order, paused=recorded.paused
    )
    return _pipeline_out(data, STRUCTURES.secrets(project, name), {}, active=recorded.active)


def _pipeline_out(
    data: Mapping[str, Any], secrets: Secrets, schema: dict[str, Any], *, active: bool
) -> s.PipelineOut:
    masked = secrets.structure(data)
    return s.PipelineOut(
        name=data["name"],
        version=data["version"],
        file=data.get("file"),
        active=active,
        paused=bool(data.get("paused")),
        schedule=data.get("schedule"),
        timezone=data.get("timezone") or "UTC",
        start_date=data.get("start_date"),
        end_date=data.get("end_date"),
        catchup=bool(data.get("catchup")),
        max_active_runs=int(data.get("max_active_runs") or 0),
        max_active_tasks=int(data.get("max_active_tasks") or 0),
        run_timeout=data.get("run_timeout"),
        deadline=data.get("deadline"),
        params=masked["params"],
        params_schema=schema,
        order=list(data["order"]),
        tasks=masked["tasks"],
    )


def pause(project: Project, name: str, paused: bool, body: s.PauseIn, actor: str) -> s.PauseOut:
    done = pipeline_service.set_paused(project, name, paused, actor=actor, reason=body.reason)
    return s.PauseOut(
        pipeline=done.name,
        paused=done.paused,
        changed=done.changed,
        running=done.running,
        queued=done.queued,
    )


def pipeline_history(project: Project, name: str) -> list[s.PipelineChangeOut]:
    return [
        s.PipelineChangeOut(at=c.at, action=cast(Any, c.action), actor=c.actor, detail=c.detail)
        for c in pipeline_service.history(project, name)
    ]


def pools(project: Project) -> list[s.PoolOut]:
    return [_pool_out(p) for p in pool_service.list_pools(project)]


def set_pool(project: Project, name: str, body: s.PoolIn, actor: str) -> s.PoolOut:
    return _pool_out(pool_service.set_slots(project, name, body.slots, actor=actor))


def reset_pool(project: Project, name: str, actor: str) -> s.PoolOut:
    return _pool_out(pool_service.reset(project, name, actor=actor))


def _pool_out(p: pool_service.PoolStatus) -> s.PoolOut:
    return s.PoolOut(
        name=p.name,
        slots=p.slots,
        origin=cast(Any, p.origin),
        used=p.used,
        waiting=p.waiting,
        tasks=p.tasks,
        updated_at=p.updated_at,
        updated_by=p.updated_by,
    )


# -- runs -----------------------------------------------------------------------------------
def _check_days(start: str | None, end: str | None) -> None:
    """Refuse range ends that are not dates reflow can schedule."""
    for text, what in ((start, "start"), (end, "end")):
        if text:
            parse_day(text, what)


def _range(
    project: Project, name: str, start: str | None, end: str | None
) -> tuple[datetime | None, datetime | None]:
    """A date range as logical dates of the pipeline's schedule (UTC), either end open."""
    run_service.known(project, name)
    _check_days(start, end)
    return run_service.date_range(project, name, start or None, end or None, labels=_LABELS)


def list_runs(
    project: Project,
    *,
    pipeline: str | None,
    state: str | None,
    start: str | None,
    end: str | None,
    limit: int,
) -> s.RunListOut:
    if start or end:
        run_service.check_run_filter(project, pipeline, state)  # refused before the dates
        _check_days(start, end)
    rows = run_service.list_runs(
        project, pipeline, state, limit, start=start or None, end=end or None, labels=_LABELS
    )
    now = utcnow()
    late = misses_of(project, rows)
    return s.RunListOut(
        runs=[run_out(r, STRUCTURES.secrets(project, r.pipeline), now, late[r.id]) for r in rows]
    )


def check_run_key(key: str | None) -> None:
    """Refuse run numbers no database holds (before they reach a query)."""
    if key and key.isdigit() and (not key.isascii() or int(key) > MAX_ID):
        raise NotFound(f"no run {key!r}")


def find_run(project: Project, name: str, key: str) -> Run:
    run_service.known(project, name)
    check_run_key(key)
    return run_service.find_run(project, key, name)


def run_detail(project: Project, name: str, key: str) -> s.RunDetailOut:
    detail = run_service.run_detail(project, find_run(project, name, key))
    secrets = STRUCTURES.secrets(project, name)
    now = utcnow()
    confs = {a.attempt: secrets.conf(a.conf) for a in detail.attempts}
    spans = history_service.task_spans(project, detail.task_instances)
    return s.RunDetailOut(
        run=run_out(detail.run, secrets, now, misses_of(project, [detail.run])[detail.run.id]),
        attempts=[
            s.AttemptOut(
                attempt=a.attempt,
                origin=a.origin,
                conf=confs[a.attempt],
                version=a.version,
                backfill_id=a.backfill_id,
                state=a.state,
                created_at=a.created_at,
                started_at=a.started_at,
                ended_at=a.ended_at,
            )
            for a in detail.attempts
        ],
        task_instances=[_ti_out(t, spans[t.id], now) for t in detail.task_instances],
        tries=[_try_out(t, confs, now) for t in detail.tries],
        history=[
            s.HistoryOut(at=e.at, task=e.task_id, old=e.old, new=e.new, detail=e.detail)
            for e in detail.history
        ],
    )


def task_instance(project: Project, name: str, key: str, task_id: str) -> s.TaskInstanceDetailOut:
    detail = run_detail(project, name, key)
    for ti in detail.task_instances:
        if ti.task_id == task_id:
            return s.TaskInstanceDetailOut(
                run=detail.run,
                task_instance=ti,
                tries=[t for t in detail.tries if t.task_id == task_id],
            )
    tasks = ", ".join(t.task_id for t in detail.task_instances)
    raise NotFound(f"run {detail.run.run_id} has no task {task_id!r} (tasks: {tasks})")


def log(
    project: Project,
    name: str,
    key: str,
    task_id: str,
    try_number: int | None,
    offset: int,
    limit: int = LOG_CHUNK,
) -> s.LogOut:
    """A piece of a try's log from ``offset``, every secret of its run masked (the one
    reading the CLI does too). While the try runs, a piece ends at a line end."""
    run = find_run(project, name, key)
    log = log_service.try_log(project, run, task_id, try_number)
    chunk = log.read(offset, limit, whole_lines=True)
    return s.LogOut(
        try_number=log.attempt.try_number,
        state=log.attempt.state,
        offset=chunk.offset,
        next_offset=chunk.next_offset,
        size=chunk.size,
        complete=chunk.complete,
        data=chunk.text,
    )


def trigger(project: Project, name: str, body: s.TriggerIn) -> s.TriggerOut:
    for d in body.dates:
        parse_day(d)
    rows = run_service.trigger(project, name, body.dates, body.conf)
    secrets = STRUCTURES.secrets(project, name)
    late = misses_of(project, rows)
    return s.TriggerOut(runs=[run_out(r, secrets, None, late[r.id]) for r in rows])


# -- grid -----------------------------------------------------------------------------------
def _grid_run(
    row: Run, tz: ZoneInfo, now: datetime, misses: Sequence[DeadlineMiss] = ()
) -> s.GridRunOut:
    return s.GridRunOut(
        id=row.id,
        run_id=row.run_id,
        logical_date=row.logical_date,
        label=label(row.logical_date, tz),
        origin=row.origin,
        state=row.state,
        duration=took(history_service.run_span(row), now),
        late=bool(misses),
        late_tasks=sorted({m.task for m in misses if m.task}),
    )


def grid(
    project: Project,
    name: str,
    *,
    start: str | None = None,
    end: str | None = None,
    offset: int = 0,
    limit: int = 60,
) -> s.GridOut:
    first, last = _range(project, name, start, end)
    g = history_service.grid(project, name, first, last, offset=offset, limit=limit)
    tz = STRUCTURES.timezone(project, name)
    now = utcnow()
    late = misses_of(project, g.runs)
    return s.GridOut(
        pipeline=name,
        tasks=g.tasks,
        runs=[_grid_run(r, tz, now, late[r.id]) for r in g.runs],
        states=g.states,
        offset=offset,
        limit=limit,
        older=offset + limit if g.older else None,
        newer=max(0, offset - limit) if offset > 0 else None,
    )


def durations(
    project: Project,
    name: str,
    *,
    end: str | None = None,
    limit: int = 30,
    upto: datetime | None = None,
) -> s.DurationsOut:
    """Each task's duration across the latest ``limit`` runs up to ``end`` (a date as
    typed) or ``upto`` (an exact logical date)."""
    if upto is None:
        _, upto = _range(project, name, None, end)
    else:
        run_service.known(project, name)
    d = history_service.durations(project, name, upto, limit=limit)
    tz = STRUCTURES.timezone(project, name)
    now = utcnow()
    return s.DurationsOut(
        pipeline=name,
        tasks=d.tasks,
        runs=[_grid_run(r, tz, now) for r in d.runs],
        durations=[[None if v is None else round(v, 3) for v in row] for row in d.seconds],
    )


def cost(
    project: Project,
    name: str,
    *,
    start: str | None = None,
    end: str | None = None,
    by: str = "date",
) -> s.CostOut:
    """What ``name``'s tries cost, grouped ``by`` date, task, backfill, run or month."""
    _check_days(start, end)
    report = cost_service.cost(project, name, start, end, by, labels=_LABELS)
    return s.CostOut.model_validate(report.as_dict())


def late_dates(
    project: Project,
    name: str,
    *,
    start: str | None = None,
    end: str | None = None,
    limit: int = 100,
) -> s.LateDateListOut:
    """The dates of ``name`` that missed a deadline, with or without a run."""
    run_service.known(project, name)
    _check_days(start, end)
    rows = lateness_service.late_dates(project, name, start, end, limit=limit, labels=_LABELS)
    tz = STRUCTURES.timezone(project, name)
    return s.LateDateListOut(
        pipeline=name,
        late=[
            s.LateDateOut(
                logical_date=m.logical_date,
                label=label(m.logical_date, tz),
                task=m.task or None,
                due_at=m.due_at,
                recorded_at=m.recorded_at,
                run=m.run,
                run_state=m.run_state,
            )
            for m in rows
        ],
    )


# -- backfills ------------------------------------------------------------------------------
def plan(
    project: Project, name: str, body: s.BackfillIn
) -> tuple[backfill_service.Plan, s.PlanOut]:
    parse_day(body.start, "start")
    parse_day(body.end, "end")
    p = backfill_service.plan(
        project,
        name,
        start=body.start,
        end=body.end,
        conf=body.conf,
        reprocess=body.reprocess,
        tasks=body.tasks or None,
        from_task=body.from_task or None,
        max_active_runs=body.max_active_runs,
        order=body.order,
        priority=body.priority,
    )
    secrets = STRUCTURES.secrets(project, name)
    tz = STRUCTURES.timezone(project, name)
    todo = p.count("create") + p.count("reset")
    out = s.PlanOut(
        pipeline=name,
        start=p.start,
        end=p.end,
        conf=secrets.conf(p.conf),
        resolved=secrets.conf(p.resolved),
        reprocess=p.reprocess.value,
        tasks=p.tasks,
        selected=p.selected,
        max_active_runs=p.max_active_runs,
        order=p.order,
        counts=p.planned,
        dates=[
            s.PlannedDateOut(
                logical_date=d.logical_date,
                label=label(d.logical_date, tz),
                existing=d.existing,
                action=cast(Action, d.action),
                reason=d.reason,
                conf_diff={
                    k: [MASK, MASK] if k in secrets.params else [old, new]
                    for k, (old, new) in sorted(d.conf_diff.items())
                },
                run=d.run.id if d.run is not None else None,
            )
            for d in p.dates
        ],
        estimate=_estimate(project, name, todo, p.max_active_runs or p.pipeline.max_active_runs),
    )
    return p, out


def _estimate(project: Project, name: str, runs: int, slots: int) -> s.EstimateOut | None:
    """From the mean duration of the pipeline's recent successful runs."""
    recent = run_service.list_runs(project, name, RunState.SUCCESS.value, 20)
    now = utcnow()
    ran = [t for t in (history_service.run_span(r).seconds(now) for r in recent) if t is not None]
    if not ran or not runs:
        return None
    per_run = sum(ran) / len(ran)
    slots = max(1, slots)
    return s.EstimateOut(
        seconds=round(per_run * math.ceil(runs / slots), 3),
        per_run=round(per_run, 3),
        sample=len(ran),
        slots=slots,
    )


def create_backfill(project: Project, name: str, body: s.BackfillIn) -> s.BackfillDetailOut:
    p, _ = plan(project, name, body)
    backfill_id = backfill_service.create(project, p)
    return backfill(project, backfill_id)


def _backfill_out(status: backfill_service.BackfillStatus, secrets: Secrets) -> s.BackfillOut:
    r = status.row
    return s.BackfillOut(
        id=r.id,
        pipeline=r.pipeline,
        start=r.start,
        end=r.end,
        conf=secrets.conf(r.conf),
        reprocess=r.reprocess,
        max_active_runs=r.max_active_runs,
        order=r.run_order,
        tasks=r.tasks,
        state=r.state,
        planned=r.planned,
        created_at=r.created_at,
        updated_at=r.updated_at,
        ended_at=r.ended_at,
        runs=status.runs,
        total=status.total,
        done=status.done,
        failed=status.runs.get(RunState.FAILED, 0) + status.runs.get(RunState.CANCELLED, 0),
    )


def backfills(project: Project, pipeline: str | None = None) -> s.BackfillListOut:
    rows = backfill_service.list_backfills(project, pipeline)
    return s.BackfillListOut(
        backfills=[_backfill_out(b, STRUCTURES.secrets(project, b.row.pipeline)) for b in rows]
    )


def backfill(project: Project, backfill_id: int) -> s.BackfillDetailOut:
    status, runs = backfill_service.show(project, backfill_id)
    secrets = STRUCTURES.secrets(project, status.row.pipeline)
    active = any(r.state in RUN_ACTIVE for r in runs)
    now = utcnow()
    late = misses_of(project, runs)
    return s.BackfillDetailOut(
        backfill=_backfill_out(status, secrets),
        eta_seconds=backfill_service.eta(project, backfill_id) if active else None,
        runs=[run_out(r, secrets, now, late[r.id]) for r in runs],
    )


def steer(project: Project, backfill_id: int, action: str) -> s.BackfillDetailOut:
    if action == "pause":
        backfill_service.pause(project, backfill_id)
    elif action == "resume":
        backfill_service.resume(project, backfill_id)
    else:
        raise InvalidInput(f"unknown backfill action {action!r}")
    return backfill(project, backfill_id)


def cancel_backfill(project: Project, backfill_id: int) -> s.BackfillCancelOut:
    n = backfill_service.cancel(project, backfill_id)
    return s.BackfillCancelOut(backfill=backfill(project, backfill_id).backfill, cancelled_runs=n)


# -- history --------------------------------------------------------------------------------
def _check_selection(sel: s.Selection) -> None:
    check_run_key(sel.run)
    _check_days(sel.start, sel.end)


def clear(project: Project, name: str, body: s.ClearIn) -> s.ClearOut:
    _check_selection(body)
    result = history_service.clear(
        project,
        name,
        run=body.run,
        start=body.start,
        end=body.end,
        tasks=body.tasks or None,
        only_failed=body.only_failed,
        downstream=body.downstream,
    )
    return s.ClearOut(
        runs=result.runs,
        task_instances=result.task_instances,
        left_running=[s.LeftRunning(run_id=r, task_id=t) for r, t in result.left_running],
    )


def mark(project: Project, name: str, body: s.MarkIn) -> s.RunOut:
    check_run_key(body.run)
    row = history_service.mark(project, name, body.run, body.state)
    return run_out(row, STRUCTURES.secrets(project, name), None, misses_of(project, [row])[row.id])


def delete(project: Project, name: str, body: s.DeleteIn) -> s.DeleteOut:
    _check_selection(body)
    d = history_service.delete(
        project, name, run=body.run, start=body.start, end=body.end, force=body.force
    )
    return s.DeleteOut(runs=d.runs, task_instances=d.task_instances, tries=d.tries, logs=d.logs)


def scheduler_running(project: Project) -> bool:
    return run_service.scheduler_is_running(project)
