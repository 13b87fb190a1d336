"""Tables owned by the ingest service (SQLAlchemy Core)."""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table

from upm_common.db import UtcDateTime

metadata = MetaData()

# Registered sources; the write key is kept only as its SHA-256 hex digest.
sources = Table(
    "ingest_sources",
    metadata,
    Column("source_id", String(64), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("write_key_hash", String(64), nullable=False, unique=True),
    Column("write_key_prefix", String(16), nullable=False),
    Column("max_event_bytes", Integer, nullable=False, default=0),
    Column("max_batch_bytes", Integer, nullable=False, default=0),
    Column("max_batch_events", Integer, nullable=False, default=0),
    Column("rate_per_second", Float, nullable=False, default=0.0),
    Column("burst", Integer, nullable=False, default=0),
    Column("created_time", UtcDateTime, nullable=False),
    Column("revoked_time", UtcDateTime, nullable=True),
    Index("ix_ingest_sources_created", "created_time", "source_id"),
)

# Message ids seen per source: a row is live until `expires_time`. While the append of its event
# is in flight the row expires soon (`pending` = 1); once appended it lives for the dedup window.
dedup = Table(
    "ingest_dedup",
    metadata,
    Column("source_id", String(64), primary_key=True),
    Column("message_id", String(255), primary_key=True),
    Column("pending", Integer, nullable=False, default=0),
    Column("expires_time", UtcDateTime, nullable=False),
    Index("ix_ingest_dedup_expires", "expires_time"),
)

# Identifiers of erased people whose future events are dropped at the door, as SHA-256 hex of
# "<kind>:<value>" (kind: user_id or anonymous_id), so the table itself holds no PII.
suppressions = Table(
    "ingest_suppressions",
    metadata,
    Column("identifier_hash", String(64), primary_key=True),
    Column("reason", String(200), nullable=False),
    Column("created_time", UtcDateTime, nullable=False),
)
