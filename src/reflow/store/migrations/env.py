"""Alembic environment: migrations run on the URL reflow passes in, never on an ini file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from reflow.store.models import metadata

config = context.config
url: str = config.attributes.get("connection_url") or config.get_main_option("sqlalchemy.url", "")


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
