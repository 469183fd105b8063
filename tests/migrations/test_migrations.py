"""The schema exists only through migrations, and the migrations match the models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect, text

from reflow.core import faults
from reflow.core.errors import StoreUnavailable
from reflow.core.faults import ARM_VAR, MARK_VAR
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


def test_the_models_partial_indexes_are_those_of_the_migrations(db: Database) -> None:
    """Alembic compares no index condition; a model's is given to the dialect of each
    database opened (not at import, see ``models.use_dialect``)."""
    db.migrate()
    dialect = db.engine.dialect.name
    with db.engine.connect() as conn:
        reflected = inspect(conn)
        in_database = {
            ix["name"]
            for table in metadata.tables
            for ix in reflected.get_indexes(table)
            if ix.get("dialect_options", {}).get(f"{dialect}_where") is not None
        }
    in_models = {
        ix.name
        for table in metadata.tables.values()
        for ix in table.indexes
        if ix.dialect_options[dialect]["where"] is not None
    }
    assert in_models == in_database
    assert "uq_runs_pipeline_logical_date_dated" in in_models


def test_downgrade_to_base_and_back(db: Database) -> None:
    cfg = _config(db)
    command.downgrade(cfg, "base")
    assert db.current_revision() is None
    db.migrate()
    assert db.current_revision() == HEAD


# -- first use and upgrades are atomic, serialized and safe to interrupt --------------------
MIGRATE = "import sys; from reflow.store.db import Database; Database(sys.argv[1]).migrate()"
STEPS = 3  # migrations from base to head


def _snapshot(db: Database) -> dict[str, object]:
    """Every table with its columns, the revision and the pipelines' rows."""
    with db.engine.connect() as conn:
        inspector = inspect(conn)
        tables = {
            name: sorted(c["name"] for c in inspector.get_columns(name))
            for name in inspector.get_table_names()
        }
        rows = []
        if "pipelines" in tables:
            rows = [tuple(r) for r in conn.execute(text("SELECT name, version FROM pipelines"))]
    return {"tables": tables, "revision": db.current_revision(), "rows": rows}


def _at(db: Database, revision: str) -> None:
    """Put the database at ``revision`` (downgrading from head)."""
    command.downgrade(_config(db), revision)
    assert db.current_revision() == (None if revision == "base" else revision)


def _add_pipeline(db: Database, name: str = "p") -> None:
    db.write(
        lambda c: c.execute(
            text(
                "INSERT INTO pipelines (name, version, active, structure, created_at, "
                "updated_at) VALUES (:n, 'v1', true, '{}', :t, :t)"
            ),
            {"n": name, "t": datetime(2024, 1, 1)},
        )
    )


def _migrate_in_subprocess(
    url: str, crash_at: str | None, mark: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (ARM_VAR, MARK_VAR)}
    if crash_at:
        env |= {ARM_VAR: crash_at, MARK_VAR: str(mark)}
    return subprocess.run(
        [sys.executable, "-c", MIGRATE, url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(("start", "step"), [("base", 1), ("base", STEPS), ("0001", 1)])
def test_a_migration_killed_between_steps_leaves_the_database_as_it_was(
    db: Database, tmp_path: Path, start: str, step: int
) -> None:
    _at(db, start)
    if start != "base":
        _add_pipeline(db)
    before = _snapshot(db)
    mark = tmp_path / "crash-mark"
    killed = _migrate_in_subprocess(db.url, f"migration.step:{step}", mark)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert mark.read_text().startswith("migration.step ")
    assert _snapshot(db) == before
    again = _migrate_in_subprocess(db.url, None, mark)
    assert again.returncode == 0, again.stderr
    assert db.current_revision() == HEAD
    assert _snapshot(db)["rows"] == before["rows"]


def test_a_failing_migration_step_rolls_back_every_step(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    _at(db, "base")
    before = _snapshot(db)
    steps = 0

    def fail_at_the_second_step(name: str) -> None:
        nonlocal steps
        steps += 1
        if name == "migration.step" and steps == 2:
            raise RuntimeError("power cut")

    monkeypatch.setattr(faults, "crash_point", fail_at_the_second_step)
    with pytest.raises(RuntimeError, match="power cut"):
        db.migrate()
    assert _snapshot(db) == before
    monkeypatch.undo()
    db.migrate()
    assert db.current_revision() == HEAD


@pytest.mark.slow
def test_commands_creating_a_new_database_together_all_succeed(
    db: Database, tmp_path: Path
) -> None:
    """Several processes migrate one empty database at the same moment: one migrates, the
    others wait for its lock, then find the schema at head."""
    racers = 3
    waiter = (
        "import os, sys, time; from pathlib import Path; from reflow.store.db import Database; "
        "go = Path(sys.argv[2]); Path(sys.argv[2] + f'.{os.getpid()}').touch(); "
        "[time.sleep(0.001) for _ in iter(lambda: go.exists(), True)]; "
        "Database(sys.argv[1]).migrate()"
    )
    for trial in range(2):
        _at(db, "base")
        go = tmp_path / f"go-{trial}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", waiter, db.url, str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                stdin=subprocess.DEVNULL,
            )
            for _ in range(racers)
        ]
        try:
            deadline = time.monotonic() + 120
            while len(list(tmp_path.glob(f"go-{trial}.*"))) < racers:
                assert time.monotonic() < deadline, "the racers never got ready"
                time.sleep(0.02)
            go.touch()
            outcomes = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
        finally:
            for p in procs:
                p.kill()
                p.wait()
        assert [code for code, _ in outcomes] == [0] * racers, outcomes
        assert db.current_revision() == HEAD


def test_migrate_at_head_is_one_read_and_takes_no_lock(db: Database) -> None:
    db.migrate()
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    db.migrate()
    queries = [s for s in statements if s.strip().upper() not in ("BEGIN", "ROLLBACK")]
    assert len(queries) == 1 and "alembic_version" in queries[0], statements
    assert not any("IMMEDIATE" in s or "advisory" in s for s in statements), statements


def test_a_half_created_database_without_data_is_created_again(db: Database) -> None:
    """Tables created by an interrupted first start of an older reflow, with no revision."""
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("DROP TABLE api_tokens"))
    db.migrate()
    assert db.current_revision() == HEAD
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_a_revision_that_does_not_match_the_tables_is_repaired_when_empty(
    db: Database,
) -> None:
    with db.engine.begin() as conn:  # tables of 0002 and 0003, revision of 0001
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    db.migrate()
    assert db.current_revision() == HEAD
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


@pytest.mark.parametrize("damage", ["no revision", "wrong revision"])
def test_a_half_created_database_holding_data_is_refused_in_one_line(
    db: Database, damage: str
) -> None:
    _add_pipeline(db)
    with db.engine.begin() as conn:
        if damage == "no revision":
            conn.execute(text("DROP TABLE alembic_version"))
        else:
            conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    before = _snapshot(db)
    with pytest.raises(StoreUnavailable) as caught:
        db.migrate()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"the database {db.where} is half-created: ")
    assert "holds data (in pipelines)" in message and "restore it from a backup" in message
    assert _snapshot(db) == before


def test_a_database_from_a_newer_reflow_is_refused_in_one_line(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreUnavailable, match="revision 9999, which this version of reflow"):
        db.migrate()
    assert db.current_revision() == "9999"


def _add_run(db: Database, run_id: str) -> int:
    when = datetime(2024, 1, 1)
    return int(
        db.write(
            lambda c: c.execute(
                text(
                    "INSERT INTO runs (pipeline, run_id, logical_date, data_interval_start, "
                    "data_interval_end, origin, state, conf, attempt, version, created_at) "
                    "VALUES ('p', :r, :t, :t, :t, 'manual', 'success', '{}', 1, 'v1', :t) "
                    "RETURNING id"
                ),
                {"r": run_id, "t": when},
            ).scalar_one()
        )
    )


def test_0006_never_gives_a_run_number_again(db: Database) -> None:
    """Before 0006, SQLite gave a new run max(id) + 1: the number of a deleted newest run
    went to the next one. Numbers still written in the history of runs deleted earlier
    (events) are not given again either."""
    _at(db, "0005")
    _add_pipeline(db)
    numbers = [_add_run(db, f"r{i}") for i in range(3)]
    db.write(lambda c: c.execute(text("DELETE FROM runs WHERE id = :i"), {"i": numbers[-1]}))
    lost = numbers[-1] + 5  # a run deleted earlier; an event of it was left behind
    if db.is_sqlite:
        db.write(
            lambda c: c.execute(
                text(
                    "INSERT INTO events (at, entity, entity_id, run, new) "
                    "VALUES (:t, 'run', :i, :i, 'success')"
                ),
                {"t": datetime(2024, 1, 1), "i": lost},
            )
        )
    db.migrate()
    after = [_add_run(db, f"s{i}") for i in range(2)]
    assert after[0] > numbers[-1] and after[1] > after[0]
    if db.is_sqlite:
        assert after[0] == lost + 1
        with db.engine.connect() as conn:
            assert (
                "AUTOINCREMENT"
                in conn.execute(
                    text("SELECT sql FROM sqlite_master WHERE name = 'runs'")
                ).scalar_one()
            )
        # downgrading keeps the runs (and can be upgraded again)
        _at(db, "0005")
        db.migrate()
    with db.engine.connect() as conn:
        kept = [r[0] for r in conn.execute(text("SELECT id FROM runs ORDER BY id"))]
    assert kept == [*numbers[:-1], *after]


def test_an_older_schema_is_upgraded_with_its_data(db: Database) -> None:
    _at(db, "0001")
    _add_pipeline(db)
    db.migrate()
    assert db.current_revision() == HEAD
    assert _snapshot(db)["rows"] == [("p", "v1")]


def _add_try(db: Database, run: int, task: str) -> int:
    when = datetime(2024, 1, 1)

    def add(c: Any) -> int:
        ti = c.execute(
            text(
                "INSERT INTO task_instances (run, task_id, state, try_number, lost_tries, "
                "lost_streak, updated_at) VALUES (:r, :k, 'success', 1, 0, 0, :t) RETURNING id"
            ),
            {"r": run, "k": task, "t": when},
        ).scalar_one()
        return int(
            c.execute(
                text(
                    "INSERT INTO tries (ti, run, try_number, run_attempt, state, launcher, "
                    "log_path, queued_at, kill_grace) VALUES (:ti, :r, 1, 1, 'success', "
                    "'local', 'x.log', :t, 1) RETURNING id"
                ),
                {"ti": ti, "r": run, "t": when},
            ).scalar_one()
        )

    return int(db.write(add))


def test_0007_never_gives_a_try_id_again(db: Database) -> None:
    """A try's id names its pod, fence and runtime files: before 0007, SQLite gave the id
    of a deleted newest try to the next one, which could meet the old try's fence."""
    _at(db, "0006")
    _add_pipeline(db)
    run = _add_run(db, "r")
    first = _add_try(db, run, "a")
    db.migrate()
    gone = _add_try(db, run, "b")
    db.write(lambda c: c.execute(text("DELETE FROM tries WHERE id = :i"), {"i": gone}))
    again = _add_try(db, run, "c")
    assert again > gone > first
    if db.is_sqlite:
        with db.engine.connect() as conn:
            for table in ("tries", "backfills"):
                sql = conn.execute(
                    text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": table}
                ).scalar_one()
                assert "AUTOINCREMENT" in sql, table
        _at(db, "0006")  # downgrading keeps the tries
        db.migrate()
    with db.engine.connect() as conn:
        kept = [r[0] for r in conn.execute(text("SELECT id FROM tries ORDER BY id"))]
    assert kept == [first, again]
