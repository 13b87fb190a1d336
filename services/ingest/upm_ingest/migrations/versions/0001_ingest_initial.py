"""Ingest tables: sources, dedup window, suppressions.

Revision ID: ingest_0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from upm_common.db import UtcDateTime

revision: str = "ingest_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingest_sources",
        sa.Column("source_id", sa.String(64), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("write_key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("write_key_prefix", sa.String(16), nullable=False),
        sa.Column("max_event_bytes", sa.Integer, nullable=False),
        sa.Column("max_batch_bytes", sa.Integer, nullable=False),
        sa.Column("max_batch_events", sa.Integer, nullable=False),
        sa.Column("rate_per_second", sa.Float, nullable=False),
        sa.Column("burst", sa.Integer, nullable=False),
        sa.Column("created_time", UtcDateTime, nullable=False),
        sa.Column("revoked_time", UtcDateTime, nullable=True),
    )
    op.create_index("ix_ingest_sources_created", "ingest_sources", ["created_time", "source_id"])
    op.create_table(
        "ingest_dedup",
        sa.Column("source_id", sa.String(64), primary_key=True),
        sa.Column("message_id", sa.String(255), primary_key=True),
        sa.Column("pending", sa.Integer, nullable=False),
        sa.Column("expires_time", UtcDateTime, nullable=False),
    )
    op.create_index("ix_ingest_dedup_expires", "ingest_dedup", ["expires_time"])
    op.create_table(
        "ingest_suppressions",
        sa.Column("identifier_hash", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("created_time", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ingest_suppressions")
    op.drop_index("ix_ingest_dedup_expires", table_name="ingest_dedup")
    op.drop_table("ingest_dedup")
    op.drop_index("ix_ingest_sources_created", table_name="ingest_sources")
    op.drop_table("ingest_sources")
