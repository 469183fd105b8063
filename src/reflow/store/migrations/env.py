"""Alembic environment: migrations run on the connection reflow passes in, or on the URL it
passes in, never on an ini file.

Either way the whole upgrade is one transaction that holds the migration lock (see
``Database.migration_transaction``): a migration killed midway leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.migration import MigrationContext, MigrationInfo
from sqlalchemy import Connection

from reflow.core import faults
from reflow.store.models import metadata

config = context.config
url: str = config.attributes.get("connection_url") or config.get_main_option("sqlalchemy.url", "")


def _step_done(
    ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any], run_args: Mapping[str, Any]
) -> None:
    faults.crash_point("migration.step")


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from reflow.store.db import Database

    db = Database(url)
    try:
        with db.migration_transaction() as conn:
            _run(conn)
    finally:
        db.dispose()


def _run(connection: Connection) -> None:
    # A connection already in a transaction keeps every step in it: Alembic begins and
    # commits nothing of its own then.
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        transaction_per_migration=False,
        on_version_apply=None if config.attributes.get("scratch") else _step_done,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
