"""The pages: server-rendered templates over the same read models as the API, and forms
that call the same services. Changes are POSTed with the session's CSRF token."""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from reflow.core import formats
from reflow.core.errors import ReflowError
from reflow.core.states import RUN_ACTIVE
from reflow.services import accounts
from reflow.services.accounts import Identity
from reflow.services.project import Project
from reflow.web import forms, notices, security, views
from reflow.web import schemas as s

HERE = pathlib.Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)
ACTIVE = {str(x) for x in RUN_ACTIVE}
WINDOWS = (14, 30, 60, 120, 365)
# Missed deadlines listed on a pipeline's page (the API lists them all).
_LATE_SHOWN = 10


# -- formatting -----------------------------------------------------------------------------
# The pages' names for the shared formats (``core.formats``).
fmt_time = formats.moment
fmt_day = formats.day
fmt_duration = functools.partial(formats.duration, millis=True)


def fmt_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


templates.env.filters["time"] = fmt_time
templates.env.filters["day"] = fmt_day
templates.env.filters["dur"] = fmt_duration
templates.env.filters["json"] = fmt_json


# -- plumbing -------------------------------------------------------------------------------
def project_of(request: Request) -> Project:
    project: Project = request.app.state.projects.current
    return project


def who(request: Request) -> Identity:
    identity = security.page_identity(request, project_of(request), request.app.state.config.auth)
    request.state.identity = identity
    return identity


Who = Annotated[Identity, Depends(who)]


def flash(request: Request, message: str, kind: str = "ok") -> None:
    request.session.setdefault("flash", []).append([kind, message])


def render(
    request: Request, name: str, context: Mapping[str, Any], status_code: int = 200
) -> HTMLResponse:
    config = request.app.state.config
    identity = getattr(request.state, "identity", None)
    if identity is None:
        try:
            identity = security.page_identity(request, project_of(request), config.auth)
        except security.LoginRequired:
            identity = None
    ctx = {
        "identity": identity,
        "auth": config.auth,
        "csrf": security.csrf_token(request),
        "flashes": request.session.pop("flash", []),
        "windows": WINDOWS,
        **context,
    }
    return templates.TemplateResponse(request, name, ctx, status_code=status_code)


def error_page(request: Request, status: int, message: str) -> Response:
    return render(request, "error.html", {"status": status, "message": message}, status)


def safe_next(target: str | None, default: str = "/") -> str:
    """Only local paths: never redirect a logged-in browser to another site."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return default


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def form_of(request: Request) -> dict[str, Any]:
    """The submitted form (lists for repeated fields), after checking its CSRF token."""
    data = await request.form()
    out: dict[str, Any] = {}
    for key in data:
        values = [v for v in data.getlist(key) if isinstance(v, str)]
        out[key] = values if len(values) > 1 else (values[0] if values else "")
    security.check_csrf(
        request, out.get("csrf_token") if isinstance(out.get("csrf_token"), str) else None
    )
    return out


def _list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    return [v for v in (value if isinstance(value, list) else [value]) if v]


# -- login ----------------------------------------------------------------------------------
@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    if not request.app.state.config.auth:
        return redirect("/")
    return render(request, "login.html", {"next": safe_next(next), "error": None})


@router.post("/login")
async def login(request: Request) -> Response:
    form = await form_of(request)
    target = safe_next(str(form.get("next") or "/"))
    name, password = str(form.get("username", "")), str(form.get("password", ""))
    project = project_of(request)
    identity = await run_in_threadpool(accounts.authenticate_user, project, name, password)
    if identity is None:
        ctx = {"next": target, "error": "Wrong user name or password.", "username": name}
        return render(request, "login.html", ctx, status_code=401)
    security.start_session(request, identity)
    return redirect(target)


@router.post("/logout")
async def logout(request: Request) -> Response:
    await form_of(request)
    security.end_session(request)
    return redirect("/login" if request.app.state.config.auth else "/")


# -- pipelines ------------------------------------------------------------------------------
@router.get("/")
def overview(request: Request, _: Who) -> Response:
    project = project_of(request)
    data = views.pipelines(project)
    return render(
        request,
        "pipelines.html",
        {"data": data, "scheduler": views.scheduler_running(project)},
    )


@router.get("/pipelines/{name}")
def pipeline_page(
    request: Request,
    name: str,
    _: Who,
    start: str | None = None,
    end: str | None = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 30,
) -> Response:
    project = project_of(request)
    info = views.pipeline(project, name)
    grid = views.grid(
        project, name, start=start or None, end=end or None, offset=offset, limit=limit
    )

    def page_url(off: int) -> str:
        query = {k: v for k, v in {"start": start, "end": end}.items() if v}
        return f"/pipelines/{name}?" + urlencode({**query, "offset": off, "limit": limit})

    return render(
        request,
        "pipeline.html",
        {
            "p": info,
            "grid": grid,
            "grid_rows": grid_rows(grid),
            "start": start or "",
            "end": end or "",
            "older_url": page_url(grid.older) if grid.older is not None else None,
            "newer_url": page_url(grid.newer) if grid.newer is not None else None,
            "live": any(r.state in ACTIVE for r in grid.runs),
            "scheduler": views.scheduler_running(project),
            "late": views.late_dates(project, name, limit=_LATE_SHOWN).late,
        },
    )


@router.post("/pipelines/{name}/pause")
async def pause_pipeline(request: Request, name: str, who: Who) -> Response:
    return await _pause_action(request, name, True, who)


@router.post("/pipelines/{name}/unpause")
async def unpause_pipeline(request: Request, name: str, who: Who) -> Response:
    return await _pause_action(request, name, False, who)


async def _pause_action(request: Request, name: str, paused: bool, actor: Identity) -> Response:
    """Pause or unpause from the pipeline's page (recorded as the signed-in user)."""
    form = await form_of(request)
    try:
        body = s.PauseIn(reason=str(form.get("reason") or "") or None)
        done = await run_in_threadpool(
            views.pause, project_of(request), name, paused, body, f"{actor.label} (web)"
        )
        if not done.changed:
            flash(request, f"{name} was {'paused' if done.paused else 'not paused'} already.")
        elif done.paused:
            flash(request, f"Paused {name}: nothing new of it starts until it is unpaused.")
        else:
            flash(request, f"Unpaused {name}.")
    except ValidationError as exc:
        flash(request, exc.errors()[0]["msg"], "error")
    except ReflowError as exc:
        flash(request, str(exc), "error")
    return redirect(f"/pipelines/{name}")


@router.get("/pipelines/{name}/runs")
def runs_page(
    request: Request,
    name: str,
    _: Who,
    state: str | None = None,
    start: str | None = None,
    end: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    project = project_of(request)
    info = views.pipeline(project, name)
    runs = views.list_runs(
        project, pipeline=name, state=state or None, start=start, end=end, limit=limit
    )
    return render(
        request,
        "runs.html",
        {
            "p": info,
            "runs": runs.runs,
            "state": state or "",
            "start": start or "",
            "end": end or "",
        },
    )


# -- a run ----------------------------------------------------------------------------------
@router.get("/pipelines/{name}/runs/{run}")
def run_page(request: Request, name: str, run: str, _: Who) -> Response:
    project = project_of(request)
    detail = views.run_detail(project, name, run)
    spark = views.durations(project, name, upto=detail.run.logical_date, limit=30)
    return render(
        request,
        "run.html",
        {
            "name": name,
            "d": detail,
            "gantt": gantt(detail),
            "sparks": sparklines(spark, detail.run.id),
            "live": detail.run.state in ACTIVE,
            "tasks": [t.task_id for t in detail.task_instances],
            "notifications": notices.of_run(project, detail.run.id),
        },
    )


async def _history_action(request: Request, name: str, run: str, action: str) -> Response:
    form = await form_of(request)
    project = project_of(request)
    back = f"/pipelines/{name}/runs/{run}"
    try:
        if action == "clear":
            body = s.ClearIn(
                run=run,
                tasks=_list(form.get("tasks")) or None,
                only_failed=form.get("only_failed") == "true",
                downstream=form.get("downstream") == "true",
            )
            cleared = await run_in_threadpool(views.clear, project, name, body)
            message = f"Cleared {cleared.task_instances} task instances"
            # Only a finished run is queued again; a running one runs them in its course.
            message += "; they will run again." if cleared.task_instances else "."
            for left in cleared.left_running:
                message += f" {left.task_id} is running and was left as it is."
            flash(request, message)
        elif action == "mark":
            marked = await run_in_threadpool(
                views.mark,
                project,
                name,
                s.MarkIn.model_validate({"run": run, "state": form.get("state", "")}),
            )
            flash(request, f"Run {marked.id} is now {marked.state}.")
        else:
            body_d = s.DeleteIn(run=run, force=form.get("force") == "true")
            deleted = await run_in_threadpool(views.delete, project, name, body_d)
            flash(
                request,
                f"Deleted {deleted.runs} run, {deleted.task_instances} task instances, "
                f"{deleted.tries} tries and {deleted.logs} log files.",
            )
            back = f"/pipelines/{name}"
    except ValidationError as exc:
        flash(request, exc.errors()[0]["msg"], "error")
    except ReflowError as exc:
        flash(request, str(exc), "error")
    return redirect(back)


@router.post("/pipelines/{name}/runs/{run}/clear")
async def clear_run(request: Request, name: str, run: str, _: Who) -> Response:
    return await _history_action(request, name, run, "clear")


@router.post("/pipelines/{name}/runs/{run}/mark")
async def mark_run(request: Request, name: str, run: str, _: Who) -> Response:
    return await _history_action(request, name, run, "mark")


@router.post("/pipelines/{name}/runs/{run}/delete")
async def delete_run(request: Request, name: str, run: str, _: Who) -> Response:
    return await _history_action(request, name, run, "delete")


# -- trigger --------------------------------------------------------------------------------
@router.get("/pipelines/{name}/trigger")
def trigger_page(request: Request, name: str, _: Who) -> Response:
    info = views.pipeline(project_of(request), name)
    return render(
        request,
        "trigger.html",
        {
            "p": info,
            "fields": forms.param_fields(info.params, schema=info.params_schema),
            "date": "",
            "error": None,
        },
    )


@router.post("/pipelines/{name}/trigger")
async def trigger(request: Request, name: str, _: Who) -> Response:
    form = await form_of(request)
    project = project_of(request)
    info = await run_in_threadpool(views.pipeline, project, name)
    conf, errors = forms.conf_from_form(info.params, form)
    date = str(form.get("date", "")).strip()
    error = None
    if not errors:
        try:
            body = s.TriggerIn(dates=[date] if date else [], conf=conf)
            out = await run_in_threadpool(views.trigger, project, name, body)
        except ReflowError as exc:
            error = str(exc)
            if (param := forms.field_of_error(error)) is not None:
                errors[param] = error
        else:
            run = out.runs[0]
            flash(request, f"Queued run {run.id} ({run.run_id}).")
            return redirect(f"/pipelines/{name}/runs/{run.id}")
    ctx = {
        "p": info,
        "fields": forms.param_fields(info.params, form, errors, info.params_schema),
        "date": date,
        "error": "Some values are not valid: see below." if errors else error,
    }
    return render(request, "trigger.html", ctx, status_code=422)


# -- backfills ------------------------------------------------------------------------------
def _backfill_request(
    form: Mapping[str, Any], params: Mapping[str, Any]
) -> tuple[s.BackfillIn | None, dict[str, str], str | None]:
    conf, errors = forms.conf_from_form(params, form)
    mar = str(form.get("max_active_runs", "")).strip()
    try:
        body = s.BackfillIn.model_validate(
            {
                "start": str(form.get("start", "")).strip(),
                "end": str(form.get("end", "")).strip(),
                "conf": conf,
                "reprocess": form.get("reprocess", "missing"),
                "max_active_runs": mar or None,
                "order": form.get("order", "oldest"),
                "tasks": _list(form.get("tasks")) or None,
                "from_task": str(form.get("from_task") or "") or None,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        return None, errors, f"{where}: {first['msg']}"
    return (None if errors else body), errors, None


def _backfill_form(
    request: Request,
    info: s.PipelineOut,
    form: Mapping[str, Any] | None,
    errors: Mapping[str, str] | None = None,
    error: str | None = None,
) -> Response:
    values = dict(form or {})
    ctx = {
        "p": info,
        "fields": forms.param_fields(info.params, form, errors, info.params_schema),
        "v": values,
        "chosen": set(_list(values.get("tasks"))),
        "error": error,
    }
    return render(request, "backfill_form.html", ctx, status_code=422 if error else 200)


@router.get("/pipelines/{name}/backfill")
def backfill_page(request: Request, name: str, _: Who) -> Response:
    info = views.pipeline(project_of(request), name)
    return _backfill_form(request, info, None)


@router.post("/pipelines/{name}/backfill")
async def backfill_plan(request: Request, name: str, _: Who) -> Response:
    """Dry run first: the plan, with a Start button carrying the same request."""
    form = await form_of(request)
    project = project_of(request)
    info = await run_in_threadpool(views.pipeline, project, name)
    body, errors, error = _backfill_request(form, info.params)
    if body is None:
        return _backfill_form(request, info, form, errors, error or "Some values are not valid.")
    try:
        plan = (await run_in_threadpool(views.plan, project, name, body))[1]
    except ReflowError as exc:
        message = str(exc)
        if (param := forms.field_of_error(message)) is not None:
            errors[param] = message
        return _backfill_form(request, info, form, errors, message)
    ctx = {"p": info, "plan": plan, "request_json": body.model_dump_json()}
    return render(request, "backfill_plan.html", ctx)


@router.post("/pipelines/{name}/backfill/start")
async def backfill_start(request: Request, name: str, _: Who) -> Response:
    form = await form_of(request)
    project = project_of(request)
    try:
        body = s.BackfillIn.model_validate_json(str(form.get("request", "")))
        created = await run_in_threadpool(views.create_backfill, project, name, body)
    except ValidationError:
        flash(request, "The backfill request was malformed; plan it again.", "error")
        return redirect(f"/pipelines/{name}/backfill")
    except ReflowError as exc:
        flash(request, str(exc), "error")
        return redirect(f"/pipelines/{name}/backfill")
    b = created.backfill
    flash(
        request,
        f"Backfill {b.id} started: {b.planned.get('create', 0)} runs created, "
        f"{b.planned.get('reset', 0)} reset, {b.planned.get('skip', 0)} skipped.",
    )
    return redirect(f"/backfills/{b.id}")


@router.get("/backfills")
def backfills_page(request: Request, _: Who, pipeline: str | None = None) -> Response:
    project = project_of(request)
    data = views.backfills(project, pipeline or None)
    live = any(b.state in ("running", "paused") for b in data.backfills)
    return render(
        request,
        "backfills.html",
        {
            "backfills": data.backfills,
            "pipeline": pipeline or "",
            "live": live,
            "scheduler": views.scheduler_running(project),
        },
    )


@router.get("/backfills/{backfill_id}")
def backfill_detail(
    request: Request, backfill_id: Annotated[int, Path(ge=1, le=views.MAX_ID)], _: Who
) -> Response:
    project = project_of(request)
    detail = views.backfill(project, backfill_id)
    return render(
        request,
        "backfill.html",
        {
            "d": detail,
            "b": detail.backfill,
            "live": detail.backfill.state in ("running", "paused"),
            "scheduler": views.scheduler_running(project),
        },
    )


@router.post("/backfills/{backfill_id}/{action}")
async def backfill_action(request: Request, backfill_id: int, action: str, _: Who) -> Response:
    form = await form_of(request)
    project = project_of(request)
    target = safe_next(str(form.get("next") or ""), f"/backfills/{backfill_id}")
    if action not in ("pause", "resume", "cancel") or not 1 <= backfill_id <= views.MAX_ID:
        return error_page(request, 404, f"no such action {action!r}")
    try:
        if action == "cancel":
            out = await run_in_threadpool(views.cancel_backfill, project, backfill_id)
            flash(
                request, f"Backfill {backfill_id} cancelled: {out.cancelled_runs} runs cancelled."
            )
        else:
            await run_in_threadpool(views.steer, project, backfill_id, action)
            flash(request, f"Backfill {backfill_id} {action}d.")
    except ReflowError as exc:
        flash(request, str(exc), "error")
    return redirect(target)


# -- the API reference ------------------------------------------------------------------------
@router.get("/api")
def api_reference(request: Request, _: Who) -> Response:
    """The endpoints of /api/v1, read from the app's own OpenAPI schema."""
    spec = request.app.openapi()
    groups: dict[str, list[dict[str, Any]]] = {}
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            body = (
                op.get("requestBody", {})
                .get("content", {})
                .get("application/json", {})
                .get("schema")
            )
            ok = next((c for c in op.get("responses", {}) if c.startswith("2")), "")
            out = op.get("responses", {}).get(ok, {}).get("content", {}).get("application/json", {})
            groups.setdefault((op.get("tags") or ["other"])[0], []).append(
                {
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "params": [
                        {
                            "name": p["name"],
                            "in": p["in"],
                            "required": p.get("required", False),
                            "type": _type_of(p.get("schema", {})),
                            "description": p.get("description")
                            or p.get("schema", {}).get("description", ""),
                        }
                        for p in op.get("parameters", [])
                    ],
                    "body": _type_of(body) if body else None,
                    "returns": f"{ok} {_type_of(out.get('schema', {}))}".strip(),
                }
            )
    return render(request, "api.html", {"groups": groups, "title": spec["info"]["title"]})


def _type_of(schema: Mapping[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type_of(x) for x in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list[{_type_of(schema.get('items', {}))}]"
    return str(schema.get("type", "object"))


# -- charts -------------------------------------------------------------------------------
def grid_rows(grid: s.GridOut) -> list[tuple[str, Markup]]:
    """Each task's row of cells, built here rather than in the template: a year of a
    20-task pipeline is 7,300 cells, and a template loop costs several times more."""
    rows = []
    for task, states in zip(grid.tasks, grid.states, strict=True):
        t = escape(task)
        cells = "".join(
            f'<td class="cell s-{escape(st or "none")}{late}" data-run="{r.id}" data-task="{t}" '
            f'title="{t} · {escape(r.label)}: {escape(st or "no task instance")}{missed}"></td>'
            for r, st in zip(grid.runs, states, strict=True)
            for late, missed in [
                (" late", " · deadline missed") if task in r.late_tasks else ("", "")
            ]
        )
        rows.append((task, Markup(cells)))
    return rows


def gantt(detail: s.RunDetailOut) -> dict[str, Any]:
    """Bars of the tries of the run's current attempt, on one time axis (percentages)."""
    tries = [t for t in detail.tries if t.run_attempt == detail.run.attempt]
    if not tries:
        return {"rows": [], "total": 0.0}
    now = datetime.now(UTC)
    origin = min(t.queued_at for t in tries)
    finish = max((t.ended_at or now) for t in tries)
    total = max((finish - origin).total_seconds(), 0.001)
    rows = []
    for t in tries:
        start = t.started_at or t.queued_at
        end = t.ended_at or now
        rows.append(
            {
                "task": t.task_id,
                "try": t.try_number,
                "state": t.state,
                "x": round((t.queued_at - origin).total_seconds() / total * 1000, 1),
                "left": round((start - origin).total_seconds() / total * 1000, 1),
                "width": max(round((end - start).total_seconds() / total * 1000, 1), 2.0),
                "duration": t.duration,
                "reason": t.failure_reason,
            }
        )
    return {"rows": rows, "total": total}


def sparklines(data: s.DurationsOut, current: int) -> list[dict[str, Any]]:
    """Per task, a polyline of its durations across the runs (a 160 by 32 box)."""
    width, height = 160.0, 32.0
    n = len(data.runs)
    where = next((i for i, r in enumerate(data.runs) if r.id == current), None)
    out = []
    for task, values in zip(data.tasks, data.durations, strict=True):
        known = [v for v in values if v is not None]
        top = max(known) if known else 0.0
        points = []
        for i, v in enumerate(values):
            if v is None:
                continue
            x = width / 2 if n == 1 else i * width / (n - 1)
            y = height - 2 - (v / top * (height - 4) if top else 0)
            points.append((round(x, 1), round(y, 1)))
        mark = None
        if where is not None and values[where] is not None:
            mark = next(
                (p for i, p in zip(_indices(values), points, strict=True) if i == where), None
            )
        out.append(
            {
                "task": task,
                "points": " ".join(f"{x},{y}" for x, y in points),
                "mark": mark,
                "max": top if known else None,
                "mean": sum(known) / len(known) if known else None,
                "current": values[where] if where is not None else None,
                "count": len(known),
            }
        )
    return out


def _indices(values: list[float | None]) -> list[int]:
    return [i for i, v in enumerate(values) if v is not None]
