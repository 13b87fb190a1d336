"""Leases updated in place, acknowledgements without a per-row cascade.

A claim sets `lease_until` on every delivery it hands out. Indexed (ix_eventlog_deliveries_claim),
that column made each lease a new row version with an entry in every index of the table; the
claim never used the index (it walks the primary key in entry order). Without it, and with room
left in each page (fillfactor), PostgreSQL updates the lease in place (a HOT update).

The foreign key from a delivery to its entry ran a cascade trigger for each entry an ack deleted
(70% of an ack's time), though the log only deletes an entry once no delivery refers to it. A
delivery whose entry is gone is dropped by the claim that finds it.

Revision ID: eventlog_0003
Revises: eventlog_0002
Create Date: 2026-11-28
"""

from alembic import op

revision = "eventlog_0003"
down_revision = "eventlog_0002"
branch_labels = None
depends_on = None

# Room for one new version of each row of a page: a delivery is leased about once before it
# is deleted.
_FILLFACTOR = 50
# SQLite's foreign key has no name; batch mode names it by this convention to drop it.
_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
_FK_NAME = "fk_eventlog_deliveries_entry_id_eventlog_entries"


def upgrade() -> None:
    op.drop_index("ix_eventlog_deliveries_claim", table_name="eventlog_deliveries")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(
            "eventlog_deliveries_entry_id_fkey", "eventlog_deliveries", type_="foreignkey"
        )
        op.execute(f"ALTER TABLE eventlog_deliveries SET (fillfactor = {_FILLFACTOR})")
        return
    with op.batch_alter_table("eventlog_deliveries", naming_convention=_NAMING) as batch:
        batch.drop_constraint(_FK_NAME, type_="foreignkey")


def downgrade() -> None:
    # Deliveries left without their entry (see the claim) would fail the foreign key.
    op.execute(
        "DELETE FROM eventlog_deliveries WHERE NOT EXISTS"
        " (SELECT 1 FROM eventlog_entries AS e WHERE e.id = eventlog_deliveries.entry_id)"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE eventlog_deliveries RESET (fillfactor)")
        op.create_foreign_key(
            "eventlog_deliveries_entry_id_fkey",
            "eventlog_deliveries",
            "eventlog_entries",
            ["entry_id"],
            ["id"],
            ondelete="CASCADE",
        )
    else:
        with op.batch_alter_table("eventlog_deliveries", naming_convention=_NAMING) as batch:
            batch.create_foreign_key(
                _FK_NAME, "eventlog_entries", ["entry_id"], ["id"], ondelete="CASCADE"
            )
    op.create_index(
        "ix_eventlog_deliveries_claim",
        "eventlog_deliveries",
        ["topic", "group_name", "lease_until", "entry_id"],
    )
