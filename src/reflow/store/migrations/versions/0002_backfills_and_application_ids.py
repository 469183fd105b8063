"""backfills and application ids

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backfills",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pipeline", sa.String(length=200), nullable=False),
        sa.Column("start", sa.DateTime(), nullable=False),
        sa.Column("end", sa.DateTime(), nullable=False),
        sa.Column("conf", sa.JSON(), nullable=False),
        sa.Column("reprocess", sa.String(length=16), nullable=False),
        sa.Column("max_active_runs", sa.Integer(), nullable=True),
        sa.Column("run_order", sa.String(length=8), nullable=False),
        sa.Column("tasks", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("planned", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["pipeline"], ["pipelines.name"], name=op.f("fk_backfills_pipeline_pipelines")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backfills")),
    )
    with op.batch_alter_table("backfills", schema=None) as batch_op:
        batch_op.create_index("ix_backfills_state", ["state"], unique=False)

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_backfill_id", ["backfill_id"], unique=False)
        batch_op.drop_index("ix_runs_state")
        batch_op.create_index("ix_runs_state_pipeline", ["state", "pipeline"], unique=False)

    with op.batch_alter_table("tries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("app_id", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tries", schema=None) as batch_op:
        batch_op.drop_column("app_id")

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_state_pipeline")
        batch_op.create_index("ix_runs_state", ["state"], unique=False)
        batch_op.drop_index("ix_runs_backfill_id")

    with op.batch_alter_table("backfills", schema=None) as batch_op:
        batch_op.drop_index("ix_backfills_state")

    op.drop_table("backfills")
