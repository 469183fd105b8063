"""Named queries for web access: users (who may log in) and API tokens (Bearer).

Only hashes are stored: a password's scrypt hash with its salt, a token's sha256. Hashing
and checking are the caller's job; these functions only read and write rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from reflow.core.errors import Conflict
from reflow.store.models import api_tokens, users
from reflow.store.records import TokenWithUser, User


# -- users ----------------------------------------------------------------------------------
def create_user(conn: Connection, name: str, password_hash: str, now: datetime) -> int:
    """Insert a user; raises Conflict when the name is taken."""
    try:
        with conn.begin_nested():
            return int(
                conn.execute(
                    insert(users)
                    .values(name=name, password_hash=password_hash, created_at=now)
                    .returning(users.c.id)
                ).scalar_one()
            )
    except IntegrityError:
        raise Conflict(f"user {name!r} already exists") from None


def get_user(conn: Connection, name: str) -> User | None:
    return User.first_of(conn.execute(select(users).where(users.c.name == name)))


def list_users(conn: Connection) -> list[User]:
    return User.from_result(conn.execute(select(users).order_by(users.c.name)))


def set_password(conn: Connection, name: str, password_hash: str) -> bool:
    res = conn.execute(
        update(users).where(users.c.name == name).values(password_hash=password_hash)
    )
    return bool(res.rowcount)


def record_login(conn: Connection, user_id: int, now: datetime) -> None:
    conn.execute(update(users).where(users.c.id == user_id).values(last_login_at=now))


def delete_user(conn: Connection, name: str) -> int | None:
    """Delete a user and the tokens that belong to it; returns the tokens deleted, or
    None when there is no such user."""
    row = get_user(conn, name)
    if row is None:
        return None
    tokens = conn.execute(delete(api_tokens).where(api_tokens.c.user_id == row.id)).rowcount
    conn.execute(delete(users).where(users.c.id == row.id))
    return int(tokens)


# -- tokens ---------------------------------------------------------------------------------
def create_token(
    conn: Connection,
    *,
    name: str,
    token_hash: str,
    prefix: str,
    user_id: int | None,
    now: datetime,
    expires_at: datetime | None,
) -> int:
    """Insert a token; raises Conflict when a live token has that name."""
    try:
        with conn.begin_nested():
            return int(
                conn.execute(
                    insert(api_tokens)
                    .values(
                        name=name,
                        token_hash=token_hash,
                        prefix=prefix,
                        user_id=user_id,
                        created_at=now,
                        expires_at=expires_at,
                    )
                    .returning(api_tokens.c.id)
                ).scalar_one()
            )
    except IntegrityError:
        raise Conflict(f"a token named {name!r} already exists (revoke it first)") from None


def token_by_hash(conn: Connection, token_hash: str, now: datetime) -> TokenWithUser | None:
    """The live token (not revoked, not expired) with this hash, with its user's name."""
    return TokenWithUser.first_of(
        conn.execute(
            select(api_tokens, users.c.name.label("user_name"))
            .outerjoin(users, users.c.id == api_tokens.c.user_id)
            .where(
                api_tokens.c.token_hash == token_hash,
                api_tokens.c.revoked_at.is_(None),
                or_(api_tokens.c.expires_at.is_(None), api_tokens.c.expires_at > now),
            )
        )
    )


def touch_token(conn: Connection, token_id: int, now: datetime, every: timedelta) -> None:
    """Record a use of the token, at most once per ``every`` (reads stay mostly read-only)."""
    conn.execute(
        update(api_tokens)
        .where(
            api_tokens.c.id == token_id,
            or_(api_tokens.c.last_used_at.is_(None), api_tokens.c.last_used_at < now - every),
        )
        .values(last_used_at=now)
    )


def list_tokens(conn: Connection, *, include_revoked: bool = False) -> list[TokenWithUser]:
    stmt = select(api_tokens, users.c.name.label("user_name")).outerjoin(
        users, users.c.id == api_tokens.c.user_id
    )
    if not include_revoked:
        stmt = stmt.where(api_tokens.c.revoked_at.is_(None))
    return TokenWithUser.from_result(
        conn.execute(stmt.order_by(api_tokens.c.name, api_tokens.c.id))
    )


def revoke_token(conn: Connection, name: str, now: datetime) -> bool:
    """Revoke the live token called ``name``; False when there is none."""
    res = conn.execute(
        update(api_tokens)
        .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return bool(res.rowcount)


def count_credentials(conn: Connection, now: datetime) -> int:
    """Users plus live tokens: zero means nobody could authenticate."""
    n_users = conn.execute(select(func.count()).select_from(users)).scalar_one()
    n_tokens = conn.execute(
        select(func.count())
        .select_from(api_tokens)
        .where(
            api_tokens.c.revoked_at.is_(None),
            or_(api_tokens.c.expires_at.is_(None), api_tokens.c.expires_at > now),
        )
    ).scalar_one()
    return int(n_users) + int(n_tokens)
