"""Backfills: (re)process a range of logical dates through the one scheduler.

A backfill is planned first (which date gets a new run, which run is reset, which is
skipped and why), then written in one transaction: the backfill row and every run it
creates or resets. The scheduler runs them like any other run, under every limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reflow.core.errors import Conflict, InvalidInput, NotFound
from reflow.core.naming import run_id_for, utcnow
from reflow.core.pipeline import Pipeline
from reflow.core.states import (
    RUN_ACTIVE,
    BackfillState,
    Reprocess,
    RunOrigin,
    RunState,
    TIState,
)
from reflow.services import runs as run_service
from reflow.services.project import Project
from reflow.store import history, transitions
from reflow.store import runs as store_runs
from reflow.store.records import Backfill, Run

ORDERS = ("oldest", "newest")


@dataclass
class PlannedDate:
    logical_date: datetime
    existing: str | None  # state of the date's run, None when it has none
    action: str  # create | reset | skip
    reason: str = ""
    conf_diff: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    run: Run | None = None


@dataclass
class Plan:
    pipeline: Pipeline
    start: datetime
    end: datetime
    conf: dict[str, Any]  # as given
    resolved: dict[str, Any]  # defaults overlaid with conf, validated
    reprocess: Reprocess
    tasks: list[str]  # tasks that run; every task when no selection was made
    selected: bool  # was a task selection made (--tasks / --from-task)?
    max_active_runs: int | None
    order: str
    dates: list[PlannedDate]
    priority: int | None = None  # of its runs; None: the backfill default (PRIORITY)

    def count(self, action: str) -> int:
        return sum(1 for d in self.dates if d.action == action)

    @property
    def planned(self) -> dict[str, int]:
        return _counts(self.dates)


def select_tasks(
    pipeline: Pipeline, tasks: Sequence[str] | None, from_task: str | None
) -> tuple[list[str], bool]:
    """The tasks a backfill runs: ``--tasks``, or ``--from-task`` and its downstream."""
    if tasks and from_task:
        raise InvalidInput("give --tasks or --from-task, not both")
    known = pipeline.tasks
    wanted = list(tasks or []) + ([from_task] if from_task else [])
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise InvalidInput(
            f"pipeline {pipeline.name!r} has no task {', '.join(map(repr, unknown))} "
            f"(tasks: {', '.join(pipeline.topological())})"
        )
    if from_task:
        chosen = {from_task}
        frontier = [from_task]
        while frontier:
            for down in pipeline.downstream_ids(frontier.pop()):
                if down not in chosen:
                    chosen.add(down)
                    frontier.append(down)
        return [t for t in pipeline.topological() if t in chosen], True
    if tasks:
        return [t for t in pipeline.topological() if t in set(tasks)], True
    return pipeline.topological(), False


def plan(
    project: Project,
    name: str,
    *,
    start: str,
    end: str,
    conf: Mapping[str, Any] | None = None,
    reprocess: str = "missing",
    tasks: Sequence[str] | None = None,
    from_task: str | None = None,
    max_active_runs: int | None = None,
    order: str = "oldest",
    priority: int | None = None,
) -> Plan:
    """What a backfill would do, date by date. Validates everything; writes nothing.

    ``priority`` orders its runs among every other (higher first; scheduled runs have 2,
    manual ones 1, backfills 0 unless they say otherwise)."""
    pipeline = project.pipeline(name)
    try:
        policy = Reprocess(reprocess)
    except ValueError:
        raise InvalidInput(
            f"--reprocess must be one of {', '.join(r.value for r in Reprocess)}"
        ) from None
    if order not in ORDERS:
        raise InvalidInput(f"--order must be one of {', '.join(ORDERS)}")
    if pipeline.schedule.is_manual:
        raise InvalidInput(f"pipeline {name!r} has no schedule, so it has no dates to backfill")
    first = run_service.logical_date_for(pipeline, run_service.parse_date(start), utcnow())
    last = run_service.logical_date_for(pipeline, run_service.parse_date(end), utcnow())
    if last < first:
        raise InvalidInput(f"--end {end} is before --start {start}")
    if priority is not None and not -1000 <= priority <= 1000:
        raise InvalidInput("--priority must be between -1000 and 1000")
    if max_active_runs is not None and max_active_runs < 1:
        raise InvalidInput("--max-active-runs must be at least 1")
    if max_active_runs is not None and max_active_runs > pipeline.max_active_runs:
        raise InvalidInput(
            f"--max-active-runs {max_active_runs} is above the pipeline's own limit "
            f"({pipeline.max_active_runs}); a backfill can only lower it"
        )
    _check_in_range(pipeline, first, last)
    resolved = pipeline.params.resolve(conf)
    chosen, selected = select_tasks(pipeline, tasks, from_task)

    dates = list(pipeline.schedule.logical_dates(first, last))
    with project.db.read() as conn:
        existing = history.dated_runs(conn, name, first, last)
    planned = [_plan_date(d, existing.get(d), policy, resolved) for d in dates]
    if order == "newest":
        planned.reverse()
    return Plan(
        pipeline,
        first,
        last,
        dict(conf or {}),
        resolved,
        policy,
        chosen,
        selected,
        max_active_runs,
        order,
        planned,
        priority,
    )


def _check_in_range(pipeline: Pipeline, first: datetime, last: datetime) -> None:
    fmt = "%Y-%m-%d %H:%M"
    run_service.check_in_range(pipeline, first, last, labels=("--start", "--end"))
    now = utcnow()
    latest = pipeline.schedule.latest_complete(now)
    if latest is None or last > latest:
        raise InvalidInput(
            f"--end {last.strftime(fmt)}: that interval has not ended yet (the latest "
            f"complete one starts {latest.strftime(fmt) if latest else '-'})"
        )


def _plan_date(
    logical_date: datetime, run: Run | None, policy: Reprocess, conf: Mapping[str, Any]
) -> PlannedDate:
    if run is None:
        if policy == Reprocess.FAILED:
            return PlannedDate(logical_date, None, "skip", "no run yet (--reprocess failed)")
        return PlannedDate(logical_date, None, "create", "no run yet")
    diff = {k: (run.conf.get(k), v) for k, v in conf.items() if run.conf.get(k) != v}
    diff.update({k: (v, None) for k, v in run.conf.items() if k not in conf})
    state = RunState(run.state)
    if state in RUN_ACTIVE:
        return PlannedDate(logical_date, state, "skip", f"run is {state.value}", diff, run)
    if state == RunState.SUCCESS and policy != Reprocess.ALL:
        return PlannedDate(logical_date, state, "skip", "already succeeded", diff, run)
    return PlannedDate(logical_date, state, "reset", f"new attempt {run.attempt + 1}", diff, run)


def create(project: Project, plan: Plan) -> int:
    """Write the backfill and its runs in one transaction; returns the backfill id.

    The plan was made outside that transaction, so each date is planned again against
    its run as it is now: a run created meanwhile for a date (a scheduled run of the same
    moment) is reset or skipped by the reprocess policy like any existing run, and
    ``plan`` is updated to what was written. Raises InvalidInput when the plan has
    nothing to run, Conflict when what happened meanwhile left it nothing to run; in
    both cases nothing is written."""
    if not plan.count("create") and not plan.count("reset"):
        reasons = sorted({d.reason for d in plan.dates}) or ["no logical date in the range"]
        raise InvalidInput(
            f"nothing to backfill: {len(plan.dates)} dates, all skipped ({'; '.join(reasons)})"
        )
    pipeline = plan.pipeline
    now = utcnow()

    def work(conn: Any) -> tuple[int, list[PlannedDate]]:
        existing = history.dated_runs(conn, pipeline.name, plan.start, plan.end)
        dates = [
            _plan_date(d.logical_date, existing.get(d.logical_date), plan.reprocess, plan.resolved)
            for d in plan.dates
        ]
        backfill_id = history.create_backfill(
            conn,
            pipeline=pipeline.name,
            start=plan.start,
            end=plan.end,
            conf=plan.conf,
            reprocess=plan.reprocess.value,
            max_active_runs=plan.max_active_runs,
            run_order=plan.order,
            tasks=plan.tasks if plan.selected else None,
            planned=_counts(dates),
            now=now,
            priority=plan.priority,
        )
        written = [_write_date(conn, plan, item, backfill_id, now) for item in dates]
        counts = _counts(written)
        if not counts["create"] and not counts["reset"]:
            reasons = sorted({d.reason for d in written})
            raise Conflict(
                f"nothing left to backfill: runs of these {len(written)} dates were created "
                f"or started meanwhile ({'; '.join(reasons)}); nothing was written, retry "
                "to see the new plan"
            )
        if counts != _counts(dates):
            history.set_backfill_planned(conn, backfill_id, counts)
        return backfill_id, written

    backfill_id, written = project.db.write(work)
    plan.dates = written
    return int(backfill_id)


def _counts(dates: Sequence[PlannedDate]) -> dict[str, int]:
    return {a: sum(1 for d in dates if d.action == a) for a in ("create", "reset", "skip")}


def _write_date(
    conn: Any, plan: Plan, item: PlannedDate, backfill_id: int, now: datetime
) -> PlannedDate:
    """Create or reset the run of one date; returns what was done. When the date's run
    changed since it was read (created by the scheduler at the same moment, cleared,
    started), the date is planned again against the run as it is now."""
    pipeline = plan.pipeline
    for _ in range(3):
        if item.action == "create":
            try:
                run_pk = store_runs.create_run(
                    conn,
                    pipeline=pipeline.name,
                    run_id=run_id_for(RunOrigin.BACKFILL, item.logical_date),
                    logical_date=item.logical_date,
                    interval=pipeline.schedule.interval(item.logical_date),
                    origin=RunOrigin.BACKFILL,
                    conf=plan.resolved,
                    version=pipeline.version,
                    task_ids=pipeline.topological(),
                    now=now,
                    backfill_id=backfill_id,
                    priority=plan.priority,
                )
            except Conflict:
                pass  # a run for this date was committed since it was read
            else:
                if plan.selected:
                    _skip_unselected(conn, run_pk, set(plan.tasks), now)
                return item
        elif item.action == "reset":
            assert item.run is not None
            done = history.reset_run(
                conn,
                item.run,
                clear=plan.tasks,
                tasks=pipeline.topological(),
                conf=plan.resolved,
                origin=RunOrigin.BACKFILL,
                version=pipeline.version,
                now=now,
                backfill_id=backfill_id,
                priority=plan.priority,
            )
            if done is not None:
                return item
        else:
            return item
        run = history.dated_run(conn, pipeline.name, item.logical_date)
        item = _plan_date(item.logical_date, run, plan.reprocess, plan.resolved)
    raise Conflict(
        f"the run of {item.logical_date.isoformat()} kept changing while the backfill was "
        "written; nothing was written, try again"
    )


def _skip_unselected(conn: Any, run_pk: int, selected: set[str], now: datetime) -> None:
    """A new run of a partial backfill runs only the selected tasks."""
    others = [
        ti.id for ti in store_runs.run_task_instances(conn, [run_pk]) if ti.task_id not in selected
    ]
    transitions.transition(
        conn,
        "ti",
        others,
        TIState.SKIPPED,
        [TIState.PENDING],
        now,
        detail="not selected by the backfill",
        ended_at=now,
    )


# -- reading and steering -------------------------------------------------------------------
@dataclass
class BackfillStatus:
    row: Backfill
    runs: dict[str, int]  # state -> count

    @property
    def total(self) -> int:
        return sum(self.runs.values())

    @property
    def done(self) -> int:
        return sum(n for s, n in self.runs.items() if s not in RUN_ACTIVE)


def get(project: Project, backfill_id: int) -> Backfill:
    with project.db.read() as conn:
        row = history.get_backfill(conn, backfill_id)
    if row is None:
        raise NotFound(f"no backfill {backfill_id} (see `reflow backfill list`)")
    return row


def list_backfills(project: Project, pipeline: str | None = None) -> list[BackfillStatus]:
    if pipeline is not None:
        run_service.known(project, pipeline)
    with project.db.read() as conn:
        rows = history.list_backfills(conn, pipeline)
        counts = history.run_states_by_backfill(conn, [r.id for r in rows])
    return [BackfillStatus(r, counts.get(r.id, {})) for r in rows]


def show(project: Project, backfill_id: int) -> tuple[BackfillStatus, list[Run]]:
    row = get(project, backfill_id)
    with project.db.read() as conn:
        runs = history.backfill_runs(conn, backfill_id)
        counts = history.run_states_by_backfill(conn, [backfill_id]).get(backfill_id, {})
    return BackfillStatus(row, counts), runs


def pause(project: Project, backfill_id: int) -> None:
    _steer(project, backfill_id, BackfillState.PAUSED, [BackfillState.RUNNING])


def resume(project: Project, backfill_id: int) -> None:
    _steer(project, backfill_id, BackfillState.RUNNING, [BackfillState.PAUSED])


def _steer(
    project: Project, backfill_id: int, to: BackfillState, from_: list[BackfillState]
) -> None:
    get(project, backfill_id)
    moved = project.db.write(
        lambda c: transitions.transition(c, "backfill", [backfill_id], to, from_, utcnow())
    )
    if not moved:
        # Say what it is now: a cancel may have committed since it was read.
        row = get(project, backfill_id)
        raise Conflict(f"backfill {backfill_id} is {row.state}; cannot make it {to.value}")


def cancel(project: Project, backfill_id: int, wait: float = 30.0) -> int:
    """Cancel a backfill: its queued runs are cancelled and its running tries stopped
    through their launcher (the same path as timeouts). Returns the runs cancelled.

    The backfill ends ``cancelled`` whatever a resume or the scheduler does at the same
    moment: its state and its runs change in one transaction, the backfill's row first."""
    row = get(project, backfill_id)
    now = utcnow()
    cancelled, live = project.db.write(lambda c: history.cancel_backfill(c, backfill_id, now))
    if live:
        run_service.stop_tries(project, row.pipeline, live, wait)
    return int(cancelled)


def wait(
    project: Project,
    backfill_id: int,
    on_progress: Callable[[run_service.Progress], None] = lambda p: None,
) -> run_service.Progress:
    row = get(project, backfill_id)
    with project.db.read() as conn:
        run_pks = [r.id for r in history.backfill_runs(conn, backfill_id)]
    return run_service.wait(project, row.pipeline, run_pks, on_progress)


def eta(project: Project, backfill_id: int, now: datetime | None = None) -> float | None:
    """Seconds left, from the durations of this backfill's finished runs and its limit."""
    status, runs = show(project, backfill_id)
    durations = [
        (r.ended_at - r.started_at).total_seconds()
        for r in runs
        if r.ended_at and r.started_at and r.state not in RUN_ACTIVE
    ]
    if not durations:
        return None
    remaining = sum(1 for r in runs if r.state in RUN_ACTIVE)
    row = status.row
    project_pipeline = project.catalog.pipelines.get(row.pipeline)
    slots = row.max_active_runs or (project_pipeline.max_active_runs if project_pipeline else 1)
    return float(sum(durations) / len(durations) * remaining / max(1, slots))
