"""Create the SQL event log tables.

Revision ID: eventlog_0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from upm_common.db import UtcDateTime

revision = "eventlog_0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "eventlog_entries",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("appended_time", UtcDateTime, nullable=False),
    )
    op.create_index("ix_eventlog_entries_topic_id", "eventlog_entries", ["topic", "id"])
    op.create_table(
        "eventlog_groups",
        sa.Column("topic", sa.String(200), primary_key=True),
        sa.Column("group_name", sa.String(200), primary_key=True),
        sa.Column("created_time", UtcDateTime, nullable=False),
    )
    op.create_table(
        "eventlog_deliveries",
        sa.Column("topic", sa.String(200), primary_key=True),
        sa.Column("group_name", sa.String(200), primary_key=True),
        sa.Column(
            "entry_id",
            _ID,
            sa.ForeignKey("eventlog_entries.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("consumer", sa.String(200), nullable=True),
        sa.Column("lease_until", UtcDateTime, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index(
        "ix_eventlog_deliveries_claim",
        "eventlog_deliveries",
        ["topic", "group_name", "lease_until", "entry_id"],
    )


def downgrade() -> None:
    op.drop_table("eventlog_deliveries")
    op.drop_table("eventlog_groups")
    op.drop_table("eventlog_entries")
