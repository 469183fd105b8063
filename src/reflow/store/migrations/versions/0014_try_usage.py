"""cost: what each try's pods or processes held, and when

``try_usage`` holds one row per pod (the try's own, each Spark executor) or local process
tree of a try: its requests (vCPUs, bytes of memory and ephemeral storage, GPUs by
resource name, ephemeral claims), its node selector, from when to when it held them, and
for a local process what it was measured to use. Written with the try's outcome.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "try_usage",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("try_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("began_at", sa.DateTime(), nullable=True),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("cpu", sa.Float(), nullable=False),
        sa.Column("memory", sa.Float(), nullable=False),
        sa.Column("gpus", sa.JSON(), nullable=False),
        sa.Column("ephemeral", sa.Float(), nullable=False),
        sa.Column("claims", sa.JSON(), nullable=False),
        sa.Column("node_selector", sa.JSON(), nullable=False),
        sa.Column("cpu_seconds", sa.Float(), nullable=True),
        sa.Column("peak_memory", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["try_id"], ["tries.id"], name=op.f("fk_try_usage_try_id_tries"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_try_usage")),
    )
    op.create_index(op.f("ix_try_usage_try_id"), "try_usage", ["try_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_try_usage_try_id"), table_name="try_usage")
    op.drop_table("try_usage")
