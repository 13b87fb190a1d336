"""The profile service's tables (SQLAlchemy Core).

The first seven tables are the profile read model that the segment service queries; their names
and columns are a contract. Only live (not merged-away) profiles have rows in traits, consents,
events, event counts and daily buckets. The remaining tables are private to the profile service:
the identity graph with provenance, merge history, trait history, applied events (idempotency and
replay for unmerge), identity conflicts, the suppression list and the privacy audit trail.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from upm_common.db import JsonType, UtcDateTime

metadata = MetaData()

# --- The read model (shared with the segment service) -------------------------------------

profiles = Table(
    "profile_profiles",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_time", UtcDateTime, nullable=False),
    Column("updated_time", UtcDateTime, nullable=False),
    # Set on the losing profile of a merge: reads of the old id redirect to the winner.
    Column("merged_into", String(32), nullable=True, index=True),
    Column("timezone", Text, nullable=True),
)

identifiers = Table(
    "profile_identifiers",
    metadata,
    Column("type", Text, nullable=False),
    Column("value", Text, nullable=False),
    Column("profile_id", String(32), nullable=False),
    Column("created_time", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("type", "value", name="pk_profile_identifiers"),
    Index("ix_profile_identifiers_profile_id", "profile_id"),
    # Segment queries: the profiles having an identifier type, from the index alone.
    Index("ix_profile_identifiers_type_profile", "type", "profile_id"),
)

traits = Table(
    "profile_traits",
    metadata,
    Column("profile_id", String(32), nullable=False),
    Column("name", Text, nullable=False),
    Column("value", JsonType, nullable=True),
    Column("value_type", Text, nullable=False),
    Column("num_value", Float, nullable=True),
    Column("text_value", Text, nullable=True),
    Column("bool_value", Boolean, nullable=True),
    Column("time_value", UtcDateTime, nullable=True),
    Column("updated_time", UtcDateTime, nullable=False),
    Column("source", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    PrimaryKeyConstraint("profile_id", "name", name="pk_profile_traits"),
    Index("ix_profile_traits_name_text", "name", "text_value"),
    Index("ix_profile_traits_name_num", "name", "num_value"),
    # Segment queries: a trait condition from an index-only scan of the trait's rows.
    Index(
        "ix_profile_traits_segment",
        "name",
        "value_type",
        "profile_id",
        postgresql_include=["bool_value", "num_value", "text_value", "time_value"],
    ),
)

consents = Table(
    "profile_consents",
    metadata,
    Column("profile_id", String(32), nullable=False),
    Column("channel", Text, nullable=False),
    Column("purpose", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("updated_time", UtcDateTime, nullable=False),
    Column("source", Text, nullable=False),
    PrimaryKeyConstraint("profile_id", "channel", "purpose", name="pk_profile_consents"),
    # Segment queries: the profiles with a consent status, from the index alone.
    Index("ix_profile_consents_segment", "channel", "purpose", "status", "profile_id"),
)

events = Table(
    "profile_events",
    metadata,
    Column("id", Text, primary_key=True),
    Column("profile_id", String(32), nullable=False),
    Column("type", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("event_time", UtcDateTime, nullable=False),
    Column("received_time", UtcDateTime, nullable=False),
    Column("properties", JsonType, nullable=True),
    Column("context", JsonType, nullable=True),
    Index("ix_profile_events_profile_time", "profile_id", "event_time"),
    # Segment queries: an event condition from an index-only scan of its name and window
    # (PostgreSQL also carries the type and properties for property filters and sums).
    Index(
        "ix_profile_events_segment",
        "name",
        "event_time",
        "profile_id",
        postgresql_include=["type", "properties"],
    ),
)

event_counts = Table(
    "profile_event_counts",
    metadata,
    Column("profile_id", String(32), nullable=False),
    Column("name", Text, nullable=False),
    Column("count", Integer, nullable=False),
    Column("first_time", UtcDateTime, nullable=False),
    Column("last_time", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("profile_id", "name", name="pk_profile_event_counts"),
    Index("ix_profile_event_counts_name", "name", "count"),
)

event_daily = Table(
    "profile_event_daily",
    metadata,
    Column("profile_id", String(32), nullable=False),
    Column("name", Text, nullable=False),
    Column("day", Date, nullable=False),
    Column("count", Integer, nullable=False),
    Column("revenue", Float, nullable=False, default=0.0),
    PrimaryKeyConstraint("profile_id", "name", "day", name="pk_profile_event_daily"),
)

# --- Private to the profile service -------------------------------------------------------

# Every event applied, once: the idempotency key, and the record replayed when an unmerge
# recomputes profiles (events follow their identifiers). `identifiers` lists `type:value` keys.
applied_events = Table(
    "profile_applied_events",
    metadata,
    Column("id", Text, primary_key=True),
    Column("profile_id", String(32), nullable=False),
    Column("kind", Text, nullable=False),  # event | consent (an UpdateConsent call)
    Column("event_time", UtcDateTime, nullable=False),
    Column("identifiers", JsonType, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("applied_time", UtcDateTime, nullable=False),
    Index("ix_profile_applied_events_profile", "profile_id", "event_time"),
)

# The identity graph: an undirected edge between two identifiers seen together, with the
# provenance of the first time they were linked. Revoked edges (unmerge) also block re-linking.
identity_edges = Table(
    "profile_identity_edges",
    metadata,
    Column("a_type", Text, nullable=False),
    Column("a_value", Text, nullable=False),
    Column("b_type", Text, nullable=False),
    Column("b_value", Text, nullable=False),
    Column("rule", Text, nullable=False),  # identify | alias | same_event | manual
    Column("event_id", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("created_time", UtcDateTime, nullable=False),
    Column("revoked_time", UtcDateTime, nullable=True),
    Column("revoked_reason", Text, nullable=True),
    PrimaryKeyConstraint(
        "a_type", "a_value", "b_type", "b_value", name="pk_profile_identity_edges"
    ),
    Index("ix_profile_identity_edges_b", "b_type", "b_value"),
    Index("ix_profile_identity_edges_revoked", "revoked_time"),
)

merges = Table(
    "profile_merges",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", Text, nullable=False),  # merge | unmerge
    Column("winner_id", String(32), nullable=False, index=True),
    Column("loser_id", String(32), nullable=False, index=True),
    Column("rule", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("reason", Text, nullable=False),
    # The identifiers the loser held (merge) or that were split off (unmerge).
    Column("identifiers", JsonType, nullable=False),
    Column("created_time", UtcDateTime, nullable=False),
)

trait_history = Table(
    "profile_trait_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("profile_id", String(32), nullable=False),
    Column("name", Text, nullable=False),
    Column("op", Text, nullable=False),  # set | set_once | unset | increment | add_to_set
    Column("value", JsonType, nullable=True),
    Column("event_time", UtcDateTime, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("recorded_time", UtcDateTime, nullable=False),
    Index("ix_profile_trait_history_profile_name", "profile_id", "name"),
)

# Links the guards refused (a second user_id, the identifier cap, an unmerged pair).
identity_conflicts = Table(
    "profile_identity_conflicts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("profile_id", String(32), nullable=False, index=True),
    Column("other_profile_id", String(32), nullable=True),
    Column("identifier", Text, nullable=False),
    Column("rule", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("created_time", UtcDateTime, nullable=False),
)

# Erased identifiers, stored as SHA-256 hex of `type:value`; ingest drops their future events.
suppressions = Table(
    "profile_suppressions",
    metadata,
    Column("identifier_hash", String(64), primary_key=True),
    Column("type", Text, nullable=False),
    Column("created_time", UtcDateTime, nullable=False),
    Column("reason", Text, nullable=False),
)

audit_log = Table(
    "profile_audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("action", Text, nullable=False),  # erase | export | merge | unmerge | consent
    Column("profile_id", String(32), nullable=False),
    Column("actor", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("details", JsonType, nullable=False),
    Column("created_time", UtcDateTime, nullable=False),
)

# Changes waiting to be relayed to the change feed when the event log is not the SQL one
# (Redis Streams): written in the same transaction as the change, deleted once relayed.
outbox = Table(
    "profile_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_time", UtcDateTime, nullable=False),
)

READ_MODEL_TABLES = (profiles, identifiers, traits, consents, events, event_counts, event_daily)
