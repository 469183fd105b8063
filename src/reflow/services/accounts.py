"""Users and API tokens: create, list, delete or revoke them, and check credentials.

Passwords are kept as scrypt hashes with a per-user salt; tokens are high-entropy random
strings shown once and kept as their sha256. Used by the ``reflow users`` and ``reflow
tokens`` commands and by the web server's authentication.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from reflow.core.errors import InvalidInput, NotFound
from reflow.core.naming import utcnow
from reflow.services.project import Project
from reflow.store import auth as store
from reflow.store.records import TokenWithUser, User

# scrypt cost: ~16 MiB and a few tens of ms per check, once per login.
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32
TOKEN_PREFIX = "rfl_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,99}$")
MIN_PASSWORD = 8
_TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Identity:
    """Who makes a request: a user (session), a token (Bearer) or nobody (``--no-auth``)."""

    kind: str  # user | token | anonymous
    name: str

    @property
    def label(self) -> str:
        return {"user": self.name, "token": f"token {self.name}"}.get(self.kind, "anonymous")


ANONYMOUS = Identity("anonymous", "")


# -- hashing --------------------------------------------------------------------------------
def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = bytes.fromhex(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, expected)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# A hash to check against when the user does not exist, so timing does not tell.
_DUMMY = hash_password("not a password", b"reflow-dummy-salt")


# -- users ----------------------------------------------------------------------------------
def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise InvalidInput(
            f"bad {what} name {name!r}: 1-100 letters, digits, '_', '.', '@' or '-', "
            "starting with a letter or digit"
        )


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"the password must have at least {MIN_PASSWORD} characters")


def create_user(project: Project, name: str, password: str) -> None:
    _check_name(name, "user")
    _check_password(password)
    hashed = hash_password(password)
    project.db.write(lambda c: store.create_user(c, name, hashed, utcnow()))


def set_password(project: Project, name: str, password: str) -> None:
    _check_password(password)
    hashed = hash_password(password)
    if not project.db.write(lambda c: store.set_password(c, name, hashed)):
        raise NotFound(f"no user {name!r} (see `reflow users list`)")


def list_users(project: Project) -> list[User]:
    with project.db.read() as conn:
        return store.list_users(conn)


def delete_user(project: Project, name: str) -> int:
    """Delete a user and its tokens; returns how many tokens went with it."""
    tokens = project.db.write(lambda c: store.delete_user(c, name))
    if tokens is None:
        raise NotFound(f"no user {name!r} (see `reflow users list`)")
    return tokens


def authenticate_user(project: Project, name: str, password: str) -> Identity | None:
    with project.db.read() as conn:
        row = store.get_user(conn, name)
    if row is None:
        check_password(password, _DUMMY)
        return None
    if not check_password(password, row.password_hash):
        return None
    project.db.write(lambda c: store.record_login(c, row.id, utcnow()))
    return Identity("user", row.name)


def user_exists(project: Project, name: str) -> bool:
    with project.db.read() as conn:
        return store.get_user(conn, name) is not None


# -- tokens ---------------------------------------------------------------------------------
def create_token(
    project: Project, name: str, *, user: str | None = None, expires_days: float | None = None
) -> str:
    """Create a token and return it: the only time it can be seen."""
    _check_name(name, "token")
    if expires_days is not None and expires_days <= 0:
        raise InvalidInput("--expires-days must be positive")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    expires = now + timedelta(days=expires_days) if expires_days else None

    def work(conn: Any) -> None:
        user_id = None
        if user is not None:
            row = store.get_user(conn, user)
            if row is None:
                raise NotFound(f"no user {user!r} (see `reflow users list`)")
            user_id = row.id
        store.create_token(
            conn,
            name=name,
            token_hash=hash_token(token),
            prefix=token[: len(TOKEN_PREFIX) + 4],
            user_id=user_id,
            now=now,
            expires_at=expires,
        )

    project.db.write(work)
    return token


def list_tokens(project: Project, *, include_revoked: bool = False) -> list[TokenWithUser]:
    with project.db.read() as conn:
        return store.list_tokens(conn, include_revoked=include_revoked)


def revoke_token(project: Project, name: str) -> None:
    if not project.db.write(lambda c: store.revoke_token(c, name, utcnow())):
        raise NotFound(f"no live token {name!r} (see `reflow tokens list`)")


def authenticate_token(project: Project, token: str) -> Identity | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    now = utcnow()
    with project.db.read() as conn:
        row = store.token_by_hash(conn, hash_token(token), now)
    if row is None:
        return None
    if row.last_used_at is None or row.last_used_at < now - _TOUCH_EVERY:
        project.db.write(lambda c: store.touch_token(c, row.id, now, _TOUCH_EVERY))
    return Identity("token", row.name)


def has_credentials(project: Project, now: datetime | None = None) -> bool:
    """Could anybody authenticate: is there a user or a live token?"""
    with project.db.read() as conn:
        return store.count_credentials(conn, now or utcnow()) > 0
