"""The SQL fatigue ledger keeps one row per reservation (its counter keys in a column), not one
row per reservation and counter key: a decision writes one row instead of six or more.

Existing ledger rows are folded into their reservations, so no sent message stops counting.

Revision ID: 0002_one_ledger_row_per_send
Revises: 0001_orchestrator
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from upm_common.db import JsonType

revision = "0002_one_ledger_row_per_send"
down_revision = "0001_orchestrator"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column(
        "orchestrator_reservations",
        sa.Column("counter_keys", JsonType, nullable=False, server_default=sa.text("'[]'")),
    )
    aggregate = "jsonb_agg" if postgres else "json_group_array"
    op.execute(
        f"""
        UPDATE orchestrator_reservations SET counter_keys = (
            SELECT {aggregate}(l.counter_key) FROM orchestrator_ledger l
            WHERE l.reservation_id = orchestrator_reservations.reservation_id
        )
        WHERE EXISTS (
            SELECT 1 FROM orchestrator_ledger l
            WHERE l.reservation_id = orchestrator_reservations.reservation_id
        )
        """
    )
    op.create_index(
        "ix_orchestrator_reservations_window",
        "orchestrator_reservations",
        ["profile_id", "created_ms"],
        unique=False,
    )
    op.drop_index("ix_orchestrator_ledger_window", table_name="orchestrator_ledger")
    op.drop_index("ix_orchestrator_ledger_reservation", table_name="orchestrator_ledger")
    op.drop_table("orchestrator_ledger")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
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
    elements = (
        "jsonb_array_elements_text(r.counter_keys) AS k(value)"
        if postgres
        else "json_each(r.counter_keys) AS k"
    )
    op.execute(
        f"""
        INSERT INTO orchestrator_ledger (profile_id, counter_key, reservation_id, sent_ms)
        SELECT DISTINCT r.profile_id, k.value, r.reservation_id, r.created_ms
        FROM orchestrator_reservations r, {elements}
        WHERE r.state IN ('reserved', 'confirmed')
        """
    )
    op.drop_index("ix_orchestrator_reservations_window", table_name="orchestrator_reservations")
    with op.batch_alter_table("orchestrator_reservations") as batch:
        batch.drop_column("counter_keys")
