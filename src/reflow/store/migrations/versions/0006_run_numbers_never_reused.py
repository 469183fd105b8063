"""run numbers are never reused

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Where a run's number may still be written down after the run itself was deleted.
_RUN_REFERENCES = (
    "SELECT max(id) FROM runs",
    "SELECT max(run) FROM events",
    "SELECT max(entity_id) FROM events WHERE entity = 'run'",
    "SELECT max(run) FROM run_attempts",
    "SELECT max(run) FROM task_instances",
    "SELECT max(run) FROM tries",
)


def upgrade() -> None:
    # PostgreSQL's sequence never hands a number out twice: nothing to do there.
    if op.get_bind().dialect.name != "sqlite":
        return
    # SQLite gives max(id) + 1 unless the table is AUTOINCREMENT, which can only be set by
    # rebuilding it; its counter then starts above every number used so far.
    with op.batch_alter_table(
        "runs", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass
    conn = op.get_bind()
    used = max((conn.exec_driver_sql(q).scalar() or 0) for q in _RUN_REFERENCES)
    if not used:
        return
    counted = conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'runs'").first()
    if counted is None:
        conn.exec_driver_sql("INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', ?)", (used,))
    elif counted[0] < used:
        conn.exec_driver_sql("UPDATE sqlite_sequence SET seq = ? WHERE name = 'runs'", (used,))


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "runs", recreate="always", table_kwargs={"sqlite_autoincrement": False}
    ):
        pass
