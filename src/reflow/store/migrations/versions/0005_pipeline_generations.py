"""pipeline generations: the current version only moves forward

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipelines") as batch:
        # How many times the current version moved (1 for the first one recorded).
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="1"))
        # The modification time (ns) of the file the current version was read from: a
        # process that read an older file never moves the version back.
        batch.add_column(sa.Column("source_stamp", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pipelines") as batch:
        batch.drop_column("source_stamp")
        batch.drop_column("generation")
