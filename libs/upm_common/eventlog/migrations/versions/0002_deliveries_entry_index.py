"""Index deliveries by entry, so an ack's check "does any group still need this entry" is cheap.

Revision ID: eventlog_0002
Revises: eventlog_0001
Create Date: 2026-11-28
"""

from alembic import op

revision = "eventlog_0002"
down_revision = "eventlog_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_eventlog_deliveries_entry", "eventlog_deliveries", ["entry_id"])


def downgrade() -> None:
    op.drop_index("ix_eventlog_deliveries_entry", table_name="eventlog_deliveries")
