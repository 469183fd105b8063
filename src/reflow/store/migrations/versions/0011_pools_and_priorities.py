"""pools of slots shared by every pipeline, and priorities

``pools`` holds each pool's slots: from ``reflow.toml`` (origin ``config``) or set at run
time (origin ``set``, kept until reset). A try of a task in a pool records the pool and
the slots it takes (``tries.pool``, ``tries.pool_slots``): the slots in use are those of
the live tries. ``runs.priority`` orders runs and their task instances (higher first):
scheduled 2, manual 1, backfill 0 unless the backfill says otherwise
(``backfills.priority``); existing runs get their origin's priority.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pools",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(8), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_pools")),
    )
    with op.batch_alter_table("tries") as batch:
        batch.add_column(sa.Column("pool", sa.String(200), nullable=True))
        batch.add_column(sa.Column("pool_slots", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("backfills") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE runs SET priority = CASE origin WHEN 'scheduled' THEN 2 "
        "WHEN 'manual' THEN 1 ELSE 0 END"
    )


def downgrade() -> None:
    with op.batch_alter_table("backfills") as batch:
        batch.drop_column("priority")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("priority")
    with op.batch_alter_table("tries") as batch:
        batch.drop_column("pool_slots")
        batch.drop_column("pool")
    op.drop_table("pools")
