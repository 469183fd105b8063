"""The schema exists only through migrations, and the migrations match the models."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from reflow.store.db import HEAD, MIGRATIONS, Database
from reflow.store.models import metadata


def _config(db: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection_url"] = db.url
    return cfg


def test_head_constant_is_the_newest_migration(db: Database) -> None:
    assert ScriptDirectory.from_config(_config(db)).get_current_head() == HEAD


def test_upgrade_to_head_matches_the_models(db: Database) -> None:
    db.migrate()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_downgrade_to_base_and_back(db: Database) -> None:
    cfg = _config(db)
    command.downgrade(cfg, "base")
    assert db.current_revision() is None
    db.migrate()
    assert db.current_revision() == HEAD
