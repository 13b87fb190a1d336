"""One contract, every event-log backend: SQL on SQLite, SQL on PostgreSQL, Redis Streams."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from upm_common.db import create_engine
from upm_common.eventlog import EventLog, LogRecord, dead_letter_topic
from upm_common.migrations import upgrade

MAX_ATTEMPTS = 3


@pytest.fixture(
    params=[
        "sql-sqlite",
        pytest.param("sql-postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def log(request: pytest.FixtureRequest) -> AsyncIterator[EventLog]:
    if request.param == "redis":
        from upm_common.eventlog.redis import RedisEventLog
        from upm_common.redis import create_redis

        client = create_redis(request.getfixturevalue("redis_url"))
        yield RedisEventLog(client, partitions=4, max_attempts=MAX_ATTEMPTS)
        keys = [k async for k in client.scan_iter(match="*upmct-*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        return
    from upm_common.eventlog.sql import SqlEventLog

    url = request.getfixturevalue("sqlite_url" if request.param == "sql-sqlite" else "pg_url")
    engine = create_engine(url)
    await upgrade(engine, "eventlog")
    yield SqlEventLog(engine, max_attempts=MAX_ATTEMPTS)
    await engine.dispose()


@pytest.fixture
def topic() -> str:
    # Unique per test so runs sharing one Redis never meet.
    return f"upmct-{uuid.uuid4().hex[:10]}"


def records(n: int, key: str = "person-1") -> list[LogRecord]:
    return [LogRecord(key=key, payload=f"event-{i}".encode()) for i in range(n)]


async def drain(log: EventLog, topic: str, group: str, consumer: str = "c1") -> list[bytes]:
    seen: list[bytes] = []
    while batch := await log.claim(topic, group, consumer, 100):
        seen.extend(d.payload for d in batch)
        await log.ack(topic, group, [d.id for d in batch])
    return seen


async def test_a_group_receives_records_of_one_key_in_append_order(
    log: EventLog, topic: str
) -> None:
    await log.ensure_group(topic, "profile")
    ids = await log.append(topic, records(5))
    assert len(ids) == len(set(ids)) == 5
    batch = await log.claim(topic, "profile", "c1", 10)
    assert [d.payload for d in batch] == [f"event-{i}".encode() for i in range(5)]
    assert [d.id for d in batch] == ids
    assert all(d.attempts == 1 and d.key == "person-1" for d in batch)


async def test_every_group_gets_every_record(log: EventLog, topic: str) -> None:
    await log.ensure_group(topic, "profile")
    await log.ensure_group(topic, "audit")
    await log.append(topic, records(3, "a") + records(3, "b"))
    assert sorted(await drain(log, topic, "profile")) == sorted(await drain(log, topic, "audit"))
    assert len(await drain(log, topic, "profile")) == 0


async def test_records_appended_before_the_group_existed_are_not_lost(
    log: EventLog, topic: str
) -> None:
    await log.append(topic, records(2))
    await log.ensure_group(topic, "late")
    assert await drain(log, topic, "late") == [b"event-0", b"event-1"]


async def test_ensure_group_twice_does_not_deliver_twice(log: EventLog, topic: str) -> None:
    await log.ensure_group(topic, "g")
    await log.append(topic, records(2))
    await log.ensure_group(topic, "g")
    assert len(await drain(log, topic, "g")) == 2


async def test_a_leased_record_goes_to_no_one_else_until_the_lease_ends(
    log: EventLog, topic: str
) -> None:
    await log.ensure_group(topic, "g")
    await log.append(topic, records(2))
    first = await log.claim(topic, "g", "dies", 10, lease_seconds=0.3)
    assert len(first) == 2
    assert await log.claim(topic, "g", "other", 10, lease_seconds=0.3) == []
    await asyncio.sleep(0.5)
    again = await log.claim(topic, "g", "other", 10, lease_seconds=5)
    assert sorted(d.payload for d in again) == [b"event-0", b"event-1"]
    assert all(d.attempts == 2 for d in again)


async def test_acknowledged_records_are_not_redelivered(log: EventLog, topic: str) -> None:
    await log.ensure_group(topic, "g")
    await log.append(topic, records(4))
    batch = await log.claim(topic, "g", "c1", 10, lease_seconds=0.2)
    await log.ack(topic, "g", [d.id for d in batch[:3]])
    assert await log.pending(topic, "g") == 1
    await asyncio.sleep(0.4)
    again = await log.claim(topic, "g", "c2", 10)
    assert [d.payload for d in again] == [batch[3].payload]
    await log.ack(topic, "g", [again[0].id])
    assert await log.pending(topic, "g") == 0


async def test_a_record_failing_too_often_moves_to_the_dead_letter_topic(
    log: EventLog, topic: str
) -> None:
    await log.ensure_group(topic, "g")
    await log.ensure_group(dead_letter_topic(topic), "ops")
    await log.append(topic, [LogRecord(key="k", payload=b"poison")])
    for attempt in range(1, MAX_ATTEMPTS + 1):
        batch = await log.claim(topic, "g", "c", 10, lease_seconds=0.05)
        assert [(d.payload, d.attempts) for d in batch] == [(b"poison", attempt)]
        await asyncio.sleep(0.1)
    assert await log.claim(topic, "g", "c", 10) == []
    assert await log.pending(topic, "g") == 0
    assert await drain(log, dead_letter_topic(topic), "ops") == [b"poison"]


async def test_claim_blocks_until_a_record_arrives(log: EventLog, topic: str) -> None:
    await log.ensure_group(topic, "g")

    async def append_later() -> None:
        await asyncio.sleep(0.2)
        await log.append(topic, records(1))

    appender = asyncio.create_task(append_later())
    batch = await log.claim(topic, "g", "c", 10, block_seconds=3)
    await appender
    assert [d.payload for d in batch] == [b"event-0"]


@pytest.mark.parametrize("max_count", [0, -1])
async def test_a_claim_of_no_records_is_refused_and_leases_nothing(
    log: EventLog, topic: str, max_count: int
) -> None:
    await log.ensure_group(topic, "g")
    await log.append(topic, records(2))
    with pytest.raises(ValueError, match=f"max_count must be at least 1, got {max_count}"):
        await log.claim(topic, "g", "c", max_count, block_seconds=5)
    # The refused claim took no lease: another consumer gets both records at once.
    again = await log.claim(topic, "g", "other", 10)
    assert [d.payload for d in again] == [b"event-0", b"event-1"]


async def test_concurrent_consumers_share_the_work_without_overlap(
    log: EventLog, topic: str
) -> None:
    await log.ensure_group(topic, "g")
    for chunk in range(10):
        await log.append(
            topic, [LogRecord(key=f"k{i % 7}", payload=f"{chunk}-{i}".encode()) for i in range(50)]
        )

    async def consume(name: str) -> list[bytes]:
        got: list[bytes] = []
        idle = 0
        while idle < 3:
            batch = await log.claim(topic, "g", name, 17)
            if not batch:
                idle += 1
                await asyncio.sleep(0.05)
                continue
            idle = 0
            got.extend(d.payload for d in batch)
            await log.ack(topic, "g", [d.id for d in batch])
        return got

    results = await asyncio.gather(*(consume(f"c{i}") for i in range(4)))
    everything = [p for r in results for p in r]
    assert len(everything) == 500
    assert len(set(everything)) == 500
