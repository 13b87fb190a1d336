"""The orchestrator's tables (SQLAlchemy Core), all prefixed `orchestrator_`."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

from upm_common.db import JsonType, UtcDateTime

metadata = MetaData()

# One row per profile that ever had a decision; SELECT ... FOR UPDATE on it serialises the
# decisions of one profile on PostgreSQL.
profile_locks = Table(
    "orchestrator_profile_locks",
    metadata,
    Column("profile_id", String(128), primary_key=True),
)

# The fatigue ledger: one row per reservation, with every counter key it counts on. It counts
# while confirmed, or reserved and not yet expired; rows older than the policy's retention go.
reservations = Table(
    "orchestrator_reservations",
    metadata,
    Column("reservation_id", String(200), primary_key=True),
    Column("profile_id", String(128), nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expire_ms", BigInteger, nullable=False),
    Column("meta", JsonType, nullable=False),
    Column("counter_keys", JsonType, nullable=False, server_default=text("'[]'")),
    Index("ix_orchestrator_reservations_pending", "profile_id", "state", "expire_ms"),
    Index("ix_orchestrator_reservations_window", "profile_id", "created_ms"),
)

idempotency = Table(
    "orchestrator_idempotency",
    metadata,
    Column("profile_id", String(128), primary_key=True),
    Column("idempotency_key", String(200), primary_key=True),
    Column("result", JsonType, nullable=False),
    Column("decision", LargeBinary, nullable=True),
    Column("expire_ms", BigInteger, nullable=False),
)

policies = Table(
    "orchestrator_policies",
    metadata,
    Column("policy_id", String(63), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
)

policy_versions = Table(
    "orchestrator_policy_versions",
    metadata,
    Column("policy_id", String(63), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("payload", LargeBinary, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
)

follow_up_rules = Table(
    "orchestrator_follow_up_rules",
    metadata,
    Column("rule_id", String(63), primary_key=True),
    Column("payload", LargeBinary, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
)

decisions = Table(
    "orchestrator_decisions",
    metadata,
    Column("decision_id", String(64), primary_key=True),
    Column("profile_id", String(128), nullable=False),
    Column("decide_time", UtcDateTime, nullable=False),
    Column("policy_id", String(63), nullable=False),
    Column("outcome", String(8), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("campaign_id", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Index("ix_orchestrator_decisions_profile", "profile_id", "decide_time"),
)

# One row per reason of a decision, for per-rule statistics.
decision_reasons = Table(
    "orchestrator_decision_reasons",
    metadata,
    Column("decision_id", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("policy_id", String(63), nullable=False),
    Column("rule_id", String(63), nullable=False),
    Column("code", String(32), nullable=False),
    Column("outcome", String(8), nullable=False),
    Column("decide_time", UtcDateTime, nullable=False),
    Index("ix_orchestrator_decision_reasons_rule", "policy_id", "decide_time"),
)

# Confirmed sends, for follow-ups and next-best-action.
sends = Table(
    "orchestrator_sends",
    metadata,
    Column("reservation_id", String(200), primary_key=True),
    Column("profile_id", String(128), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("campaign_id", Text, nullable=False),
    Column("intent_key", Text, nullable=False),
    Column("variant", Text, nullable=False),
    Column("sent_time", UtcDateTime, nullable=False),
    Index("ix_orchestrator_sends_profile", "profile_id", "sent_time"),
)

outcomes = Table(
    "orchestrator_outcomes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("profile_id", String(128), nullable=False),
    Column("reservation_id", String(200), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("campaign_id", Text, nullable=False),
    Column("type", String(16), nullable=False),
    Column("event_name", Text, nullable=False),
    Column("occur_time", UtcDateTime, nullable=False),
    Index("ix_orchestrator_outcomes_profile", "profile_id", "occur_time"),
)
