"""runs count the changes the scheduler has to look at

The scheduler used to read every task instance of every running run on every tick. Now
every change that can make a task instance of a run ready, or end the run, adds one to
``runs.change_seq`` (in the transaction that makes it), and the scheduler records in
``seen_seq`` the count it has acted on. A tick reads only the running runs whose two
counts differ, through a partial index that holds just those.

Runs that exist at the upgrade start with the counts different, so the first scheduler
looks at each of them once.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UNSEEN_CHANGES = "change_seq <> seen_seq"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("change_seq", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("seen_seq", sa.Integer(), nullable=False, server_default="0"))
    op.create_index(
        "ix_runs_unsettled",
        "runs",
        ["state"],
        sqlite_where=sa.text(UNSEEN_CHANGES),
        postgresql_where=sa.text(UNSEEN_CHANGES),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_unsettled", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("seen_seq")
        batch.drop_column("change_seq")
