"""The SQL event log on SQLite and PostgreSQL: what its schema no longer enforces, it handles."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from upm_common.db import create_engine
from upm_common.eventlog import LogRecord
from upm_common.eventlog.sql import SqlEventLog
from upm_common.migrations import alembic_config, upgrade

TOPIC = "orders"


def records(n: int) -> list[LogRecord]:
    return [LogRecord(key=f"k{i}", payload=f"event-{i}".encode()) for i in range(n)]


async def test_a_delivery_whose_entry_is_gone_is_dropped_not_handed_out(db_url: str) -> None:
    # What a group created while the last other group acknowledges an entry can be left with:
    # a delivery of an entry deleted at the same moment (no foreign key ties the two).
    engine = create_engine(db_url)
    try:
        await upgrade(engine, "eventlog")
        log = SqlEventLog(engine)
        await log.ensure_group(TOPIC, "g")
        ids = await log.append(TOPIC, records(3))
        async with engine.begin() as conn:
            await conn.execute(
                text("DELETE FROM eventlog_entries WHERE id = :i"), {"i": int(ids[1])}
            )

        claimed = await log.claim(TOPIC, "g", "c1", 10)

        assert [d.payload for d in claimed] == [b"event-0", b"event-2"]
        assert await log.pending(TOPIC, "g") == 2
        await log.ack(TOPIC, "g", [d.id for d in claimed])
        assert await log.pending(TOPIC, "g") == 0
    finally:
        await engine.dispose()


async def test_a_backlog_survives_the_lease_migration_both_ways(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await upgrade(engine, "eventlog", "eventlog_0002")
        log = SqlEventLog(engine)
        await log.ensure_group(TOPIC, "g")
        await log.append(TOPIC, records(5))
        leased = await log.claim(TOPIC, "g", "c1", 2, lease_seconds=60)

        await upgrade(engine, "eventlog")
        await log.ack(TOPIC, "g", [d.id for d in leased])
        async with engine.begin() as conn:
            await conn.run_sync(
                lambda sync: command.downgrade(alembic_config("eventlog", sync), "eventlog_0002")
            )
        await log.ensure_group(TOPIC, "h")  # a new group gets what is retained, on the old schema

        rest = await log.claim(TOPIC, "g", "c1", 10)
        assert [d.payload for d in rest] == [b"event-2", b"event-3", b"event-4"]
        assert [d.payload for d in await log.claim(TOPIC, "h", "c1", 10)] == [
            b"event-2",
            b"event-3",
            b"event-4",
        ]
        await upgrade(engine, "eventlog")
        assert await log.pending(TOPIC, "g") == 3
    finally:
        await engine.dispose()


async def test_an_entry_is_kept_until_the_last_group_acknowledges_it(db_url: str) -> None:
    engine = create_engine(db_url)

    async def retained() -> list[bytes]:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT payload FROM eventlog_entries ORDER BY id"))
            return [bytes(r[0]) for r in rows]

    try:
        await upgrade(engine, "eventlog")
        log = SqlEventLog(engine)
        for group in ("g", "h", "i"):
            await log.ensure_group(TOPIC, group)
        await log.ensure_group("other-topic", "g")
        await log.append("other-topic", records(1))
        await log.append(TOPIC, records(3))
        first = await log.claim(TOPIC, "g", "c1", 10)
        await log.ack(TOPIC, "g", [d.id for d in first])
        await log.ack(TOPIC, "h", [d.id for d in await log.claim(TOPIC, "h", "c1", 2)])
        # Acknowledged by g and h, event-0 and event-1 are still owed to i; event-2 to h and i.
        assert await retained() == [b"event-0", b"event-0", b"event-1", b"event-2"]

        await log.ack(TOPIC, "i", [d.id for d in await log.claim(TOPIC, "i", "c1", 1)])
        assert await retained() == [b"event-0", b"event-1", b"event-2"]  # other-topic's stays
        for group in ("h", "i"):
            await log.ack(TOPIC, group, [d.id for d in await log.claim(TOPIC, group, "c1", 10)])
        assert await retained() == [b"event-0"]
        # A group created later is owed what is still retained of its topic.
        await log.ensure_group("other-topic", "late")
        for group in ("g", "late"):
            assert await retained() == [b"event-0"]
            claimed = await log.claim("other-topic", group, "c1", 10)
            await log.ack("other-topic", group, [d.id for d in claimed])
        assert await retained() == []
    finally:
        await engine.dispose()
