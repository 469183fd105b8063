"""The REST API, ``/api/v1``: parse the request, call the services (through the read
models in :mod:`reflow.web.views`), return JSON. Errors are ``{"detail": "..."}`` with a
4xx status: 401 unauthenticated, 403 refused, 404 not found, 409 conflict with the
current state, 422 invalid input."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, status

from reflow.services.accounts import Identity
from reflow.services.project import Project
from reflow.web import notices, security, views
from reflow.web import schemas as s

_TEXT = s.TEXT
_MAX_ID = 2**31 - 1

Name = Annotated[str, Path(min_length=1, max_length=200, pattern=_TEXT, description="Pipeline.")]
RunKey = Annotated[
    str,
    Path(
        min_length=1,
        max_length=250,
        pattern=_TEXT,
        description="Run number, run id or logical date.",
    ),
]
TaskId = Annotated[str, Path(min_length=1, max_length=200, pattern=_TEXT, description="Task id.")]
BackfillId = Annotated[int, Path(ge=1, le=_MAX_ID, description="Backfill id.")]
DateQuery = Annotated[
    str | None,
    Query(max_length=40, pattern=_TEXT, description="YYYY-MM-DD or ISO date-time."),
]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": s.ErrorOut, "description": text}
    for code, text in (
        (400, "Malformed request (a body that does not parse)"),
        (401, "Not authenticated"),
        (403, "Refused (CSRF, cross-site)"),
        (404, "Not found"),
        (409, "Conflicts with the current state"),
        (422, "Invalid input"),
    )
}


def current_project(request: Request) -> Project:
    project: Project = request.app.state.projects.current
    return project


def identity(request: Request) -> Identity:
    return security.api_identity(request, current_project(request), request.app.state.config.auth)


ProjectDep = Annotated[Project, Depends(current_project)]
router = APIRouter(dependencies=[Depends(identity)], responses=ERRORS)


@router.get("/me", tags=["auth"], summary="Who the request authenticates as")
def me(who: Annotated[Identity, Depends(identity)]) -> dict[str, str]:
    return {"kind": who.kind, "name": who.name}


# -- pipelines ------------------------------------------------------------------------------
@router.get("/pipelines", tags=["pipelines"], summary="Pipelines and import errors")
def list_pipelines(project: ProjectDep) -> s.PipelineListOut:
    return views.pipelines(project)


@router.get("/import-errors", tags=["pipelines"], summary="Pipeline files that failed to load")
def import_errors(project: ProjectDep) -> list[s.ImportErrorOut]:
    return views.pipelines(project).import_errors


@router.get("/pipelines/{name}", tags=["pipelines"], summary="A pipeline's structure")
def show_pipeline(name: Name, project: ProjectDep) -> s.PipelineOut:
    return views.pipeline(project, name)


@router.post("/pipelines/{name}/pause", tags=["pipelines"], summary="Pause a pipeline")
def pause_pipeline(
    name: Name,
    project: ProjectDep,
    who: Annotated[Identity, Depends(identity)],
    body: s.PauseIn | None = None,
) -> s.PauseOut:
    """No new scheduled run is created and no task instance starts (manual runs and
    backfills wait too); tries that run finish. Recorded in the pipeline's history."""
    return views.pause(project, name, True, body or s.PauseIn(), f"{who.label} (api)")


@router.post("/pipelines/{name}/unpause", tags=["pipelines"], summary="Unpause a pipeline")
def unpause_pipeline(
    name: Name,
    project: ProjectDep,
    who: Annotated[Identity, Depends(identity)],
    body: s.PauseIn | None = None,
) -> s.PauseOut:
    """Its waiting runs go on; the scheduler creates the scheduled runs missed meanwhile
    (all of them with catchup, else the latest)."""
    return views.pause(project, name, False, body or s.PauseIn(), f"{who.label} (api)")


@router.get(
    "/pipelines/{name}/history", tags=["pipelines"], summary="Who paused and unpaused it, when"
)
def pipeline_history(name: Name, project: ProjectDep) -> list[s.PipelineChangeOut]:
    return views.pipeline_history(project, name)


@router.get("/pools", tags=["pools"], summary="Pools: slots, use, waiting task instances")
def list_pools(project: ProjectDep) -> list[s.PoolOut]:
    return views.pools(project)


@router.post("/pools/{pool}", tags=["pools"], summary="Set a pool's slots (until reset)")
def set_pool(
    pool: Name, body: s.PoolIn, project: ProjectDep, who: Annotated[Identity, Depends(identity)]
) -> s.PoolOut:
    return views.set_pool(project, pool, body, f"{who.label} (api)")


@router.post("/pools/{pool}/reset", tags=["pools"], summary="Back to reflow.toml's slots")
def reset_pool(
    pool: Name, project: ProjectDep, who: Annotated[Identity, Depends(identity)]
) -> s.PoolOut:
    return views.reset_pool(project, pool, f"{who.label} (api)")


# -- notifications --------------------------------------------------------------------------
NotificationId = Annotated[int, Path(ge=1, le=_MAX_ID, description="Notification number.")]


@router.get("/notifications", tags=["notifications"], summary="Notifications, newest first")
def list_notifications(
    project: ProjectDep,
    pipeline: Annotated[str | None, Query(min_length=1, max_length=200, pattern=_TEXT)] = None,
    run: Annotated[int | None, Query(ge=1, le=_MAX_ID, description="Run number.")] = None,
    state: Annotated[str | None, Query(max_length=16, pattern=_TEXT)] = None,
    event: Annotated[str | None, Query(max_length=32, pattern=_TEXT)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before: Annotated[int | None, Query(ge=1, le=_MAX_ID, description="Older than.")] = None,
) -> s.NotificationListOut:
    return notices.listing(
        project,
        pipeline=pipeline,
        run=run,
        state=state,
        event=event,
        limit=limit,
        before=before,
    )


@router.get(
    "/notifications/{notification}",
    tags=["notifications"],
    summary="A notification and its delivery attempts",
)
def show_notification(notification: NotificationId, project: ProjectDep) -> s.NotificationOut:
    return notices.one(project, notification)


@router.post(
    "/notifications/{notification}/retry",
    tags=["notifications"],
    summary="Deliver a given-up notification again",
)
def retry_notification(notification: NotificationId, project: ProjectDep) -> s.NotificationOut:
    return notices.retry(project, notification)


@router.get("/pipelines/{name}/params", tags=["pipelines"], summary="JSON schema of the run conf")
def params_schema(name: Name, project: ProjectDep) -> dict[str, Any]:
    return views.pipeline(project, name).params_schema


@router.get("/pipelines/{name}/grid", tags=["pipelines"], summary="The states of runs by tasks")
def grid(
    name: Name,
    project: ProjectDep,
    start: DateQuery = None,
    end: DateQuery = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Newest runs to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Runs per page.")] = 60,
) -> s.GridOut:
    return views.grid(project, name, start=start, end=end, offset=offset, limit=limit)


@router.get("/pipelines/{name}/cost", tags=["pipelines"], summary="What its tries cost")
def cost(
    name: Name,
    project: ProjectDep,
    start: DateQuery = None,
    end: DateQuery = None,
    by: Annotated[
        Literal["date", "task", "backfill", "run", "month"], Query(description="How to group.")
    ] = "date",
) -> s.CostOut:
    """What the tries of the pipeline's runs from ``start`` to ``end`` cost at the prices
    of ``[reflow.cost]``: what each pod requested or each local process used, for as long
    as it held it; every try of every attempt counted. Amounts are exact decimal text."""
    return views.cost(project, name, start=start, end=end, by=by)


@router.get(
    "/pipelines/{name}/late",
    tags=["pipelines"],
    summary="Dates that missed a deadline, with or without a run",
)
def late_dates(
    name: Name,
    project: ProjectDep,
    start: DateQuery = None,
    end: DateQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> s.LateDateListOut:
    """Each date whose run (or a task with a deadline of its own) had not succeeded by its
    deadline, as the scheduler recorded it, newest date first; ``run`` is null for a date
    that had no run at all (a paused pipeline, a scheduler that was down)."""
    return views.late_dates(project, name, start=start, end=end, limit=limit)


@router.get("/pipelines/{name}/durations", tags=["pipelines"], summary="Task durations across runs")
def durations(
    name: Name,
    project: ProjectDep,
    end: DateQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 30,
) -> s.DurationsOut:
    return views.durations(project, name, end=end, limit=limit)


# -- runs -----------------------------------------------------------------------------------
@router.get("/runs", tags=["runs"], summary="Runs, newest logical date first")
def list_runs(
    project: ProjectDep,
    pipeline: Annotated[str | None, Query(min_length=1, max_length=200, pattern=_TEXT)] = None,
    state: Annotated[str | None, Query(max_length=32, pattern=_TEXT)] = None,
    start: DateQuery = None,
    end: DateQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> s.RunListOut:
    return views.list_runs(
        project, pipeline=pipeline, state=state, start=start, end=end, limit=limit
    )


@router.post(
    "/pipelines/{name}/runs",
    tags=["runs"],
    summary="Trigger runs (one per date) with a conf",
    status_code=status.HTTP_201_CREATED,
)
def trigger(name: Name, body: s.TriggerIn, project: ProjectDep) -> s.TriggerOut:
    return views.trigger(project, name, body)


@router.get("/pipelines/{name}/runs/{run}", tags=["runs"], summary="A run and its tries")
def show_run(name: Name, run: RunKey, project: ProjectDep) -> s.RunDetailOut:
    return views.run_detail(project, name, run)


@router.get(
    "/pipelines/{name}/runs/{run}/tasks/{task}",
    tags=["runs"],
    summary="A task instance and its tries",
)
def show_task_instance(
    name: Name, run: RunKey, task: TaskId, project: ProjectDep
) -> s.TaskInstanceDetailOut:
    return views.task_instance(project, name, run, task)


@router.get(
    "/pipelines/{name}/runs/{run}/tasks/{task}/log",
    tags=["runs"],
    summary="A chunk of a try's log, for tailing",
)
def task_log(
    name: Name,
    run: RunKey,
    task: TaskId,
    project: ProjectDep,
    try_number: Annotated[
        int | None, Query(alias="try", ge=1, le=1_000_000, description="Default: the latest.")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=2**53, description="Byte offset to read from.")] = 0,
    limit: Annotated[int, Query(ge=1, le=views.LOG_CHUNK, description="Bytes at most.")] = (
        views.LOG_CHUNK
    ),
) -> s.LogOut:
    return views.log(project, name, run, task, try_number, offset, limit)


@router.post("/pipelines/{name}/clear", tags=["history"], summary="Clear task instances")
def clear(name: Name, body: s.ClearIn, project: ProjectDep) -> s.ClearOut:
    return views.clear(project, name, body)


@router.post("/pipelines/{name}/mark", tags=["history"], summary="Mark a run success/failed")
def mark(name: Name, body: s.MarkIn, project: ProjectDep) -> s.RunOut:
    return views.mark(project, name, body)


@router.post("/pipelines/{name}/delete", tags=["history"], summary="Delete runs")
def delete(name: Name, body: s.DeleteIn, project: ProjectDep) -> s.DeleteOut:
    return views.delete(project, name, body)


# -- backfills ------------------------------------------------------------------------------
@router.post(
    "/pipelines/{name}/backfills/plan",
    tags=["backfills"],
    summary="Dry run: what a backfill would do, date by date",
)
def plan_backfill(name: Name, body: s.BackfillIn, project: ProjectDep) -> s.PlanOut:
    return views.plan(project, name, body)[1]


@router.post(
    "/pipelines/{name}/backfills",
    tags=["backfills"],
    summary="Create a backfill",
    status_code=status.HTTP_201_CREATED,
)
def create_backfill(name: Name, body: s.BackfillIn, project: ProjectDep) -> s.BackfillDetailOut:
    return views.create_backfill(project, name, body)


@router.get("/backfills", tags=["backfills"], summary="Backfills, newest first")
def list_backfills(
    project: ProjectDep,
    pipeline: Annotated[str | None, Query(min_length=1, max_length=200, pattern=_TEXT)] = None,
) -> s.BackfillListOut:
    return views.backfills(project, pipeline)


@router.get("/backfills/{backfill_id}", tags=["backfills"], summary="A backfill and its runs")
def show_backfill(backfill_id: BackfillId, project: ProjectDep) -> s.BackfillDetailOut:
    return views.backfill(project, backfill_id)


@router.post("/backfills/{backfill_id}/pause", tags=["backfills"], summary="Pause a backfill")
def pause_backfill(backfill_id: BackfillId, project: ProjectDep) -> s.BackfillDetailOut:
    return views.steer(project, backfill_id, "pause")


@router.post("/backfills/{backfill_id}/resume", tags=["backfills"], summary="Resume a backfill")
def resume_backfill(backfill_id: BackfillId, project: ProjectDep) -> s.BackfillDetailOut:
    return views.steer(project, backfill_id, "resume")


@router.post("/backfills/{backfill_id}/cancel", tags=["backfills"], summary="Cancel a backfill")
def cancel_backfill(backfill_id: BackfillId, project: ProjectDep) -> s.BackfillCancelOut:
    return views.cancel_backfill(project, backfill_id)
