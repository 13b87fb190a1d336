"""The orchestrator's first tables: ledger, reservations, policies, decisions, follow-ups.

Revision ID: 0001_orchestrator
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from upm_common.db import JsonType, UtcDateTime

revision = "0001_orchestrator"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orchestrator_decision_reasons",
        sa.Column("decision_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("policy_id", sa.String(length=63), nullable=False),
        sa.Column("rule_id", sa.String(length=63), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=8), nullable=False),
        sa.Column("decide_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("decision_id", "seq"),
    )
    op.create_index(
        "ix_orchestrator_decision_reasons_rule",
        "orchestrator_decision_reasons",
        ["policy_id", "decide_time"],
        unique=False,
    )
    op.create_table(
        "orchestrator_decisions",
        sa.Column("decision_id", sa.String(length=64), nullable=False),
        sa.Column("profile_id", sa.String(length=128), nullable=False),
        sa.Column("decide_time", UtcDateTime(), nullable=False),
        sa.Column("policy_id", sa.String(length=63), nullable=False),
        sa.Column("outcome", sa.String(length=8), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("decision_id"),
    )
    op.create_index(
        "ix_orchestrator_decisions_profile",
        "orchestrator_decisions",
        ["profile_id", "decide_time"],
        unique=False,
    )
    op.create_table(
        "orchestrator_follow_up_rules",
        sa.Column("rule_id", sa.String(length=63), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("rule_id"),
    )
    op.create_table(
        "orchestrator_idempotency",
        sa.Column("profile_id", sa.String(length=128), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("result", JsonType, nullable=False),
        sa.Column("decision", sa.LargeBinary(), nullable=True),
        sa.Column("expire_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("profile_id", "idempotency_key"),
    )
    op.create_table(
        "orchestrator_ledger",
        sa.Column("profile_id", sa.String(length=128), nullable=False),
        sa.Column("counter_key", sa.Text(), nullable=False),
        sa.Column("reservation_id", sa.String(length=200), nullable=False),
        sa.Column("sent_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("profile_id", "counter_key", "reservation_id"),
    )
    op.create_index(
        "ix_orchestrator_ledger_reservation",
        "orchestrator_ledger",
        ["reservation_id"],
        unique=False,
    )
    op.create_index(
        "ix_orchestrator_ledger_window",
        "orchestrator_ledger",
        ["profile_id", "counter_key", "sent_ms"],
        unique=False,
    )
    op.create_table(
        "orchestrator_outcomes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("profile_id", sa.String(length=128), nullable=False),
        sa.Column("reservation_id", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.Text(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("event_name", sa.Text(), nullable=False),
        sa.Column("occur_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_orchestrator_outcomes_profile",
        "orchestrator_outcomes",
        ["profile_id", "occur_time"],
        unique=False,
    )
    op.create_table(
        "orchestrator_policies",
        sa.Column("policy_id", sa.String(length=63), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("policy_id"),
    )
    op.create_table(
        "orchestrator_policy_versions",
        sa.Column("policy_id", sa.String(length=63), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("policy_id", "version"),
    )
    op.create_table(
        "orchestrator_profile_locks",
        sa.Column("profile_id", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("profile_id"),
    )
    op.create_table(
        "orchestrator_reservations",
        sa.Column("reservation_id", sa.String(length=200), nullable=False),
        sa.Column("profile_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("expire_ms", sa.BigInteger(), nullable=False),
        sa.Column("meta", JsonType, nullable=False),
        sa.PrimaryKeyConstraint("reservation_id"),
    )
    op.create_index(
        "ix_orchestrator_reservations_pending",
        "orchestrator_reservations",
        ["profile_id", "state", "expire_ms"],
        unique=False,
    )
    op.create_table(
        "orchestrator_sends",
        sa.Column("reservation_id", sa.String(length=200), nullable=False),
        sa.Column("profile_id", sa.String(length=128), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.Text(), nullable=False),
        sa.Column("intent_key", sa.Text(), nullable=False),
        sa.Column("variant", sa.Text(), nullable=False),
        sa.Column("sent_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("reservation_id"),
    )
    op.create_index(
        "ix_orchestrator_sends_profile",
        "orchestrator_sends",
        ["profile_id", "sent_time"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_orchestrator_sends_profile", table_name="orchestrator_sends")
    op.drop_table("orchestrator_sends")
    op.drop_index("ix_orchestrator_reservations_pending", table_name="orchestrator_reservations")
    op.drop_table("orchestrator_reservations")
    op.drop_table("orchestrator_profile_locks")
    op.drop_table("orchestrator_policy_versions")
    op.drop_table("orchestrator_policies")
    op.drop_index("ix_orchestrator_outcomes_profile", table_name="orchestrator_outcomes")
    op.drop_table("orchestrator_outcomes")
    op.drop_index("ix_orchestrator_ledger_window", table_name="orchestrator_ledger")
    op.drop_index("ix_orchestrator_ledger_reservation", table_name="orchestrator_ledger")
    op.drop_table("orchestrator_ledger")
    op.drop_table("orchestrator_idempotency")
    op.drop_table("orchestrator_follow_up_rules")
    op.drop_index("ix_orchestrator_decisions_profile", table_name="orchestrator_decisions")
    op.drop_table("orchestrator_decisions")
    op.drop_index(
        "ix_orchestrator_decision_reasons_rule", table_name="orchestrator_decision_reasons"
    )
    op.drop_table("orchestrator_decision_reasons")
