"""pipelines can be paused, and their history says who paused them and when

``pipelines.paused`` stops a pipeline's new work: no scheduled run is created and no task
instance starts while it is set; running tries finish. ``pipeline_history`` keeps one row
per pause and unpause (who, when, why), oldest first.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipelines") as batch:
        batch.add_column(
            sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "pipeline_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipeline_history")),
    )
    op.create_index("ix_pipeline_history_pipeline_at", "pipeline_history", ["pipeline", "at"])


def downgrade() -> None:
    op.drop_index("ix_pipeline_history_pipeline_at", table_name="pipeline_history")
    op.drop_table("pipeline_history")
    with op.batch_alter_table("pipelines") as batch:
        batch.drop_column("paused")
