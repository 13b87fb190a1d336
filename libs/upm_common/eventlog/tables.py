"""Tables of the SQL event log (a table used as a durable queue with consumer groups)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

from upm_common.db import UtcDateTime

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY, so the id is BIGINT on PostgreSQL alone.
_ID = BigInteger().with_variant(Integer(), "sqlite")

entries = Table(
    "eventlog_entries",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("topic", String(200), nullable=False),
    Column("key", String(512), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("appended_time", UtcDateTime, nullable=False),
    Index("ix_eventlog_entries_topic_id", "topic", "id"),
)

groups = Table(
    "eventlog_groups",
    metadata,
    Column("topic", String(200), primary_key=True),
    Column("group_name", String(200), primary_key=True),
    Column("created_time", UtcDateTime, nullable=False),
)

# One row per (group, entry) not yet acknowledged: the fan-out of an entry to every group.
deliveries = Table(
    "eventlog_deliveries",
    metadata,
    Column("topic", String(200), primary_key=True),
    Column("group_name", String(200), primary_key=True),
    Column(
        "entry_id",
        _ID,
        ForeignKey("eventlog_entries.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("consumer", String(200), nullable=True),
    Column("lease_until", UtcDateTime, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Index("ix_eventlog_deliveries_claim", "topic", "group_name", "lease_until", "entry_id"),
    # Without it, deleting an acknowledged entry scans every delivery (the FK cascade check).
    Index("ix_eventlog_deliveries_entry", "entry_id"),
)
