"""The segment service's tables (SQLAlchemy Core)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from upm_common.db import JsonType, UtcDateTime

metadata = MetaData()

# One row per saved segment. `definition` is the condition tree as protobuf JSON; `text` is its
# canonical text form; `referenced_ids` lists the segments it refers to (for delete checks).
segment_definitions = Table(
    "segment_definitions",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("definition", JsonType, nullable=False),
    Column("text", Text, nullable=False),
    Column("referenced_ids", JsonType, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("etag", String(32), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    # The version whose memberships the worker has computed for everyone (None: not yet).
    Column("materialized_version", BigInteger, nullable=True),
)

# The membership worker's state per (segment, profile): whether the profile is a member, and the
# next time its membership may change with no new data (a window edge), which the scheduler
# polls. Rows exist for members and for non-members with a pending edge.
segment_memberships = Table(
    "segment_memberships",
    metadata,
    Column("segment_id", String(63), nullable=False),
    Column("profile_id", String(32), nullable=False),
    Column("member", Boolean, nullable=False),
    Column("segment_version", BigInteger, nullable=False),
    Column("changed_time", UtcDateTime, nullable=False),
    Column("next_check_time", UtcDateTime, nullable=True),
    PrimaryKeyConstraint("segment_id", "profile_id", name="pk_segment_memberships"),
    Index("ix_segment_memberships_next_check", "next_check_time"),
    Index("ix_segment_memberships_profile", "profile_id"),
)
