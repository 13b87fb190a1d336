"""Create the segment tables: definitions and memberships.

Revision ID: segment_0001
Revises:
Create Date: 2026-11-28 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from upm_common.db import JsonType, UtcDateTime

revision = "segment_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_definitions",
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("definition", JsonType, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("referenced_ids", JsonType, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("etag", sa.String(length=32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("materialized_version", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "segment_memberships",
        sa.Column("segment_id", sa.String(length=63), nullable=False),
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("member", sa.Boolean(), nullable=False),
        sa.Column("segment_version", sa.BigInteger(), nullable=False),
        sa.Column("changed_time", UtcDateTime(), nullable=False),
        sa.Column("next_check_time", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("segment_id", "profile_id", name="pk_segment_memberships"),
    )
    op.create_index(
        "ix_segment_memberships_next_check", "segment_memberships", ["next_check_time"]
    )
    op.create_index("ix_segment_memberships_profile", "segment_memberships", ["profile_id"])


def downgrade() -> None:
    op.drop_index("ix_segment_memberships_profile", table_name="segment_memberships")
    op.drop_index("ix_segment_memberships_next_check", table_name="segment_memberships")
    op.drop_table("segment_memberships")
    op.drop_table("segment_definitions")
