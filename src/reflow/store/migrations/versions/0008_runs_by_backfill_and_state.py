"""runs looked up by backfill and state in one index

The scheduler closes finished backfills and counts their active runs every tick (runs of a
backfill in given states): with (backfill_id, state) the database reads only those runs
instead of every run the backfill ever made.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_backfill_id_state", "runs", ["backfill_id", "state"])
    op.drop_index("ix_runs_backfill_id", table_name="runs")


def downgrade() -> None:
    op.create_index("ix_runs_backfill_id", "runs", ["backfill_id"])
    op.drop_index("ix_runs_backfill_id_state", table_name="runs")
