"""The web application: the REST API under /api/v1 and the pages, in one FastAPI app.

It reads and writes the same metadata database as the scheduler, through the services.
Pipeline files are re-read in the background (every ``parse_interval``), so new and
changed pipelines and import errors show up without a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from reflow.core.discovery import Catalog
from reflow.core.errors import (
    ConfError,
    ConfigError,
    Conflict,
    InvalidInput,
    LogsUnavailable,
    NotFound,
    PipelineError,
    ReflowError,
    TemplateError,
)
from reflow.core.naming import utcnow
from reflow.scheduler.catalog import sync_catalog
from reflow.services.project import Project
from reflow.web.security import SESSION_COOKIE, AuthError, LoginRequired

log = logging.getLogger("reflow.web")
HERE = Path(__file__).parent
API_PREFIX = "/api/v1"
SESSION_MAX_AGE = 12 * 3600


def status_of(exc: ReflowError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, LogsUnavailable):
        return 503
    if isinstance(exc, InvalidInput | ConfError | PipelineError | TemplateError | ConfigError):
        return 422
    return 400


class Projects:
    """The project requests work on. Its pipeline catalog is a snapshot, replaced whole
    when the background refresh finds changed files, so a request never sees a catalog
    half rebuilt."""

    def __init__(self, project: Project) -> None:
        self._settings = project.settings
        self._db = project.db
        self._work = Catalog(project.settings.pipelines_path)
        self._lock = threading.Lock()
        self.current = project
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> bool:
        with self._lock:
            changed = self._work.refresh()
            if not changed and not force:
                return False
            synced = sync_catalog(self._db, self._work, utcnow())
            self.current = Project(self._settings, self._db, self._work.snapshot(), synced.stale)
            return True


@dataclass
class WebConfig:
    auth: bool = True
    secret_key: str = ""
    secure_cookies: bool = False
    refresh_interval: float | None = None  # default: the project's parse_interval


def create_app(
    project: Project,
    *,
    auth: bool = True,
    secret_key: str,
    secure_cookies: bool = False,
    allowed_hosts: list[str] | None = None,
    refresh_interval: float | None = None,
) -> FastAPI:
    """Build the app for ``project``. ``secret_key`` signs the session cookies."""
    from reflow.scheduler.probes import Changes
    from reflow.services import health
    from reflow.web import api, monitoring, ui

    projects = Projects(project)
    config = WebConfig(auth, secret_key, secure_cookies, refresh_interval)
    interval = refresh_interval or project.settings.parse_interval

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    projects.refresh()
                except Exception:  # a broken refresh must not stop the server
                    log.exception("refreshing the pipeline catalog failed")

        thread = threading.Thread(target=loop, name="reflow-web-catalog", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    app = FastAPI(
        title="reflow",
        version="1",
        summary="Pipelines, runs, task instances, logs, backfills and run history.",
        description=(
            "Authenticate with `Authorization: Bearer <token>` (see `reflow tokens create`). "
            "Errors are JSON objects with a one-line `detail`."
        ),
        openapi_url=f"{API_PREFIX}/openapi.json",
        # The reference page is /api (hand-written, no third-party front-end code).
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.projects = projects
    app.state.config = config
    app.state.metrics = health.registry(project)
    app.state.readiness = Changes(log)

    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_key,
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE,
        same_site="lax",
        https_only=secure_cookies,
    )
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; "
            "script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        )
        return response

    def is_api(request: Request) -> bool:
        return request.url.path.startswith(API_PREFIX)

    @app.exception_handler(ReflowError)
    async def reflow_error(request: Request, exc: ReflowError) -> Response:
        status = status_of(exc)
        if is_api(request):
            return JSONResponse({"detail": str(exc)}, status_code=status)
        return ui.error_page(request, status, str(exc))

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> Response:
        if is_api(request):
            extra = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=extra)
        return ui.error_page(request, exc.status, exc.detail)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        from urllib.parse import quote

        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {
                "loc": [str(x) for x in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        detail = "; ".join(_describe(e) for e in errors) or "malformed request"
        if is_api(request):
            return JSONResponse({"detail": detail, "errors": errors}, status_code=422)
        return ui.error_page(request, 422, detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = str(exc.detail)
        if is_api(request):
            return JSONResponse(
                {"detail": detail}, status_code=exc.status_code, headers=exc.headers
            )
        return ui.error_page(request, exc.status_code, detail)

    app.include_router(monitoring.router)
    app.include_router(api.router, prefix=API_PREFIX)
    app.include_router(ui.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app


def _describe(error: dict[str, Any]) -> str:
    loc = [x for x in error["loc"] if x not in ("body",)]
    where = {"query": "query parameter", "path": "path parameter", "header": "header"}.get(
        loc[0] if loc else "", ""
    )
    if where:
        name = ".".join(loc[1:])
        return f"{where} {name!r}: {error['msg']}"
    return f"{'.'.join(loc) or 'body'}: {error['msg']}"
