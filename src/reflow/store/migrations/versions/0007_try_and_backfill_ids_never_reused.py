"""try and backfill ids are never reused

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Per table, where its ids may still be written down after its rows were deleted.
_REFERENCES = {
    "tries": (
        "SELECT max(id) FROM tries",
        "SELECT max(entity_id) FROM events WHERE entity = 'try'",
    ),
    "backfills": (
        "SELECT max(id) FROM backfills",
        "SELECT max(entity_id) FROM events WHERE entity = 'backfill'",
        "SELECT max(backfill_id) FROM runs",
        "SELECT max(backfill_id) FROM run_attempts",
    ),
}


def upgrade() -> None:
    # PostgreSQL's sequences never hand a number out twice: nothing to do there.
    if op.get_bind().dialect.name != "sqlite":
        return
    conn = op.get_bind()
    for table, references in _REFERENCES.items():
        # AUTOINCREMENT can only be set by rebuilding the table (foreign keys are off
        # while migrations run); its counter then starts above every id used so far.
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass
        used = max((conn.exec_driver_sql(q).scalar() or 0) for q in references)
        if not used:
            continue
        counted = conn.exec_driver_sql(
            "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)
        ).first()
        if counted is None:
            conn.exec_driver_sql(
                "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, used)
            )
        elif counted[0] < used:
            conn.exec_driver_sql("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (used, table))


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in _REFERENCES:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": False}
        ):
            pass
