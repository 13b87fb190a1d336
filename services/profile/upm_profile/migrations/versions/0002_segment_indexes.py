"""Covering indexes for segment queries over the read model.

Each segment condition is evaluated as a set of profile ids from an index-only scan: events by
(name, event_time) with the profile id (and, on PostgreSQL, type and properties for property
filters and sums); traits by (name, value_type); consents by (channel, purpose, status);
identifiers by type.

Revision ID: profile_0002
Revises: profile_0001
Create Date: 2026-11-28 14:05:00
"""

from __future__ import annotations

from alembic import op

revision = "profile_0002"
down_revision = "profile_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_profile_identifiers_type_profile", "profile_identifiers", ["type", "profile_id"]
    )
    op.create_index(
        "ix_profile_traits_segment",
        "profile_traits",
        ["name", "value_type", "profile_id"],
        postgresql_include=["bool_value", "num_value", "text_value", "time_value"],
    )
    op.create_index(
        "ix_profile_consents_segment",
        "profile_consents",
        ["channel", "purpose", "status", "profile_id"],
    )
    op.create_index(
        "ix_profile_events_segment",
        "profile_events",
        ["name", "event_time", "profile_id"],
        postgresql_include=["type", "properties"],
    )


def downgrade() -> None:
    op.drop_index("ix_profile_events_segment", table_name="profile_events")
    op.drop_index("ix_profile_consents_segment", table_name="profile_consents")
    op.drop_index("ix_profile_traits_segment", table_name="profile_traits")
    op.drop_index("ix_profile_identifiers_type_profile", table_name="profile_identifiers")
