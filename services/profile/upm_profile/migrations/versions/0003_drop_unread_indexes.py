"""Drop two indexes no read path uses; each one cost every applied event an index insert.

- `ix_profile_events_name_time` (name, event_time): `ix_profile_events_segment` (name,
  event_time, profile_id, ...) serves every query it could, from the same leading columns.
- `ix_profile_event_daily_name_day` (name, day): daily buckets are only read by profile
  (primary key prefix); no segment query reads them.

Revision ID: profile_0003
Revises: profile_0002
Create Date: 2026-11-28 15:10:00
"""

from __future__ import annotations

from alembic import op

revision = "profile_0003"
down_revision = "profile_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_profile_events_name_time", table_name="profile_events")
    op.drop_index("ix_profile_event_daily_name_day", table_name="profile_event_daily")


def downgrade() -> None:
    op.create_index("ix_profile_event_daily_name_day", "profile_event_daily", ["name", "day"])
    op.create_index("ix_profile_events_name_time", "profile_events", ["name", "event_time"])
