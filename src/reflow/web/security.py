"""Who is asking, and may they: Bearer tokens for the API, a signed session cookie for the
pages, CSRF tokens for every change made from a browser.

- A request with ``Authorization: Bearer <token>`` is that token's (no cookie involved,
  so no CSRF check).
- Otherwise the session cookie names the user (it is signed, and dropped when the user
  is deleted). Without auth (``--no-auth``, loopback only) everybody is anonymous.
- A change (POST/PUT/PATCH/DELETE) made with a session must carry the session's CSRF
  token (form field ``csrf_token`` or header ``X-CSRF-Token``); one made with neither a
  token nor a session must not come from another site's page (``Origin``).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request

from reflow.services import accounts
from reflow.services.accounts import ANONYMOUS, Identity
from reflow.services.project import Project

SESSION_COOKIE = "reflow_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


class AuthError(Exception):
    """Refuse the request: 401 (who are you?) or 403 (not like this)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class LoginRequired(Exception):
    """A page was asked for without a session: send the browser to the login page."""


def is_loopback(host: str) -> bool:
    if host.strip("[]") in ("localhost", "::1"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def csrf_token(request: Request) -> str:
    """This session's CSRF token (created on first use)."""
    session: dict[str, Any] = request.session
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def start_session(request: Request, identity: Identity) -> None:
    """After a login: a fresh session (and CSRF token) for this user."""
    request.session.clear()
    request.session["user"] = identity.name
    csrf_token(request)


def end_session(request: Request) -> None:
    request.session.clear()


def _session_identity(request: Request, project: Project) -> Identity | None:
    name = request.session.get("user")
    if not isinstance(name, str) or not name:
        return None
    if not accounts.user_exists(project, name):
        request.session.clear()
        return None
    return Identity("user", name)


def _has_session(request: Request) -> bool:
    return SESSION_COOKIE in request.cookies and "csrf" in request.session


def check_csrf(request: Request, supplied: str | None) -> None:
    """Raise AuthError(403) unless this browser-made change carries the session's token."""
    if request.method in SAFE_METHODS:
        return
    if _has_session(request):
        expected = request.session.get("csrf", "")
        if not supplied or not hmac.compare_digest(str(supplied), str(expected)):
            raise AuthError(403, "missing or wrong CSRF token: reload the page and try again")
        return
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise AuthError(403, f"cross-site request from {origin} refused")
    if origin == "null":
        raise AuthError(403, "cross-site request refused")


def api_identity(request: Request, project: Project, auth: bool) -> Identity:
    """Authenticate an API request (and check CSRF for cookie-borne changes)."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "unsupported Authorization header: use 'Bearer <token>'")
        identity = accounts.authenticate_token(project, token.strip())
        if identity is None:
            raise AuthError(401, "invalid, expired or revoked token")
        return identity
    found = _session_identity(request, project)
    if found is None and auth:
        raise AuthError(
            401, "authentication required: send 'Authorization: Bearer <token>' or log in"
        )
    check_csrf(request, request.headers.get("x-csrf-token"))
    return found or ANONYMOUS


def page_identity(request: Request, project: Project, auth: bool) -> Identity:
    """Authenticate a page request; raise LoginRequired to send the browser to /login."""
    found = _session_identity(request, project)
    if found is not None:
        return found
    if auth:
        raise LoginRequired()
    return ANONYMOUS
