"""Tables of the SQL event log (a table used as a durable queue with consumer groups)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
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
)

groups = Table(
    "eventlog_groups",
    metadata,
    Column("topic", String(200), primary_key=True),
    Column("group_name", String(200), primary_key=True),
    Column("created_time", UtcDateTime, nullable=False),
)

# One row per (group, entry) not yet acknowledged: the fan-out of an entry to every group.
# No foreign key to the entry: its cascade trigger ran once per entry an ack deleted, and the log
# deletes an entry only once no delivery needs it. `lease_until` is in no index and each page
# keeps room (fillfactor), so leasing a delivery updates the row in place (HOT) on PostgreSQL.
# No index but the primary key: whether another group still needs an entry is asked of each
# other group of the topic by (topic, group, entry), not of an index by entry alone.
deliveries = Table(
    "eventlog_deliveries",
    metadata,
    Column("topic", String(200), primary_key=True),
    Column("group_name", String(200), primary_key=True),
    Column("entry_id", _ID, primary_key=True),
    Column("consumer", String(200), nullable=True),
    Column("lease_until", UtcDateTime, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    postgresql_with={"fillfactor": 50},
)
