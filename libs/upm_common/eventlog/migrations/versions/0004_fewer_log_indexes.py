"""Two fewer index entries for each entry appended to the log.

`ix_eventlog_entries_topic_id` served only the creation of a consumer group (which copies every
entry of its topic once); `ix_eventlog_deliveries_entry` served the acknowledgement's check
"does another group still need this entry", which now looks each other group of the topic up
through the deliveries' primary key (topic, group, entry). Every append wrote both, about two of
the profile worker's nineteen index insertions per applied event.

Revision ID: eventlog_0004
Revises: eventlog_0003
Create Date: 2026-11-28
"""

from alembic import op

revision = "eventlog_0004"
down_revision = "eventlog_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_eventlog_entries_topic_id", table_name="eventlog_entries")
    op.drop_index("ix_eventlog_deliveries_entry", table_name="eventlog_deliveries")


def downgrade() -> None:
    op.create_index("ix_eventlog_deliveries_entry", "eventlog_deliveries", ["entry_id"])
    op.create_index("ix_eventlog_entries_topic_id", "eventlog_entries", ["topic", "id"])
