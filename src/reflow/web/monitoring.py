"""``/metrics`` (Prometheus), ``/healthz`` and ``/readyz`` of the web server.

``/metrics`` is protected like the API: a Bearer token (``reflow tokens create``, the
scrape config's ``authorization``) or a session, unless the server runs with ``--no-auth``.
The probes need no login (the kubelet has none) and say nothing but ok or not and why in
a few words: no names, no addresses, no errors.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client.exposition import choose_encoder

from reflow.scheduler.probes import Changes, Health
from reflow.services import health
from reflow.web import security

log = logging.getLogger("reflow.web")
router = APIRouter(include_in_schema=False)
_NO_STORE = {"Cache-Control": "no-store"}


def _json(answer: Health) -> Response:
    status = "ok" if answer.ok else "unavailable"
    return JSONResponse(
        {"status": status, "detail": answer.detail},
        status_code=200 if answer.ok else 503,
        headers=_NO_STORE,
    )


@router.get("/healthz")
async def healthz() -> Response:
    """Liveness: the server answers (on its event loop, touching nothing else)."""
    return _json(Health(True, "serving"))


@router.get("/readyz")
def readyz(request: Request) -> Response:
    """Readiness: the database answers one cheap read."""
    changes: Changes = request.app.state.readiness
    return _json(changes.note(health.readiness(request.app.state.projects.current)))


@router.get("/metrics")
def metrics(request: Request) -> Response:
    project = request.app.state.projects.current
    try:
        security.api_identity(request, project, request.app.state.config.auth)
    except security.AuthError as exc:
        extra = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        return PlainTextResponse(exc.detail + "\n", status_code=exc.status, headers=extra)
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    body = encoder(request.app.state.metrics)
    return Response(body, media_type=content_type, headers=_NO_STORE)
