"""deadlines per date: the misses, and how far each pipeline's deadlines are checked

``deadline_misses`` holds one row per (pipeline, logical date, task) whose deadline passed
before it succeeded (task ``''``: the whole run), whether or not the date has a run.
``pipelines.deadlines_checked_until`` is the scheduler's cursor: the deadlines due up to
it are checked; it moves forward in the transaction that records the misses.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipelines") as batch:
        batch.add_column(sa.Column("deadlines_checked_until", sa.DateTime(), nullable=True))
    op.create_table(
        "deadline_misses",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("logical_date", sa.DateTime(), nullable=False),
        sa.Column("task", sa.String(200), nullable=False, server_default=""),
        sa.Column("due_at", sa.DateTime(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deadline_misses")),
        sa.UniqueConstraint(
            "pipeline",
            "logical_date",
            "task",
            name=op.f("uq_deadline_misses_pipeline_logical_date_task"),
        ),
    )


def downgrade() -> None:
    op.drop_table("deadline_misses")
    with op.batch_alter_table("pipelines") as batch:
        batch.drop_column("deadlines_checked_until")
