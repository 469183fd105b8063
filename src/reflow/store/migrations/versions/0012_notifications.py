"""notifications: an outbox written with each notable state change, and deliveries

``notify_outbox`` receives one row in the same transaction as the change that caused it
(a run or task instance failing, a backfill ending, a scheduler starting or found dead, a
deadline missed); the scheduler's notifier routes each to the channels that want it,
turning it into ``notifications`` (one per channel) and deleting it in one transaction.
Each delivery attempt is kept in ``notification_attempts``.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notify_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("entity", sa.String(12), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=True),
        sa.Column("run", sa.Integer(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_outbox")),
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("pipeline", sa.String(200), nullable=True),
        sa.Column("run", sa.Integer(), nullable=True),
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_by", sa.Integer(), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    op.create_index("ix_notifications_state_next_at", "notifications", ["state", "next_at"])
    op.create_index("ix_notifications_run", "notifications", ["run"])
    op.create_index("ix_notifications_pipeline", "notifications", ["pipeline"])
    op.create_table(
        "notification_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("notification", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("sender", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["notification"],
            ["notifications.id"],
            name=op.f("fk_notification_attempts_notification_notifications"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_attempts")),
    )
    op.create_index(
        "ix_notification_attempts_notification", "notification_attempts", ["notification"]
    )


def downgrade() -> None:
    op.drop_index("ix_notification_attempts_notification", "notification_attempts")
    op.drop_table("notification_attempts")
    op.drop_index("ix_notifications_pipeline", "notifications")
    op.drop_index("ix_notifications_run", "notifications")
    op.drop_index("ix_notifications_state_next_at", "notifications")
    op.drop_table("notifications")
    op.drop_table("notify_outbox")
