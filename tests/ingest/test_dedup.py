"""Exact deduplication across collector instances sharing a database or a Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.ingest.conftest import Running, start_ingest
from upm_common.errors import UnavailableError
from upm_common.eventlog import EVENTS
from upm_common.eventlog.redis import RedisEventLog
from upm_common.redis import create_redis
from upm_ingest.appenders import RedisStreamsAppender
from upm_ingest.store import ClaimOutcome
from upm_ingest.store.redis import RedisDedupStore
from upm_ingest.store.sql import SqlDedupStore


async def two_collectors(
    stack: AsyncExitStack, database_url: str, redis_url: str | None, **options: Any
) -> tuple[Running, Running]:
    first = await stack.enter_async_context(
        _Started(start_ingest(database_url, redis_url=redis_url, **options))
    )
    second = await stack.enter_async_context(
        _Started(start_ingest(database_url, redis_url=redis_url, **options))
    )
    # Both instances accept the same write key (one shared source table).
    second.write_key, second.source_id = first.write_key, first.source_id
    return first, second


class _Started:
    def __init__(self, generator: Any) -> None:
        self._generator = generator

    async def __aenter__(self) -> Running:
        return await self._generator.__anext__()  # type: ignore[no-any-return]

    async def __aexit__(self, *exc: object) -> None:
        await self._generator.aclose()


async def run_duplicates_scenario(
    first: Running, second: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    events = [make_event() for _ in range(50)]
    # The same 50 events sent at once through both instances, split in different batches.
    answers = await asyncio.gather(
        first.post("/v1/batch", {"batch": events[:30]}),
        second.post("/v1/batch", {"batch": events[20:]}),
        first.post("/v1/batch", {"batch": events[10:40]}),
        return_exceptions=False,
    )
    retries = []
    for status, answer, _ in answers:
        if status == 503:  # an id was in flight in the other instance: resend, as clients do
            retries.append(answer)
        else:
            assert status == 200, answer
    for _ in range(20):
        pending = []
        for body in ({"batch": events[:30]}, {"batch": events[20:]}, {"batch": events[10:40]}):
            status, answer, _ = await second.post("/v1/batch", body)
            if status == 503:
                pending.append(answer)
        if not pending:
            break
        await asyncio.sleep(0.2)
    appended = await first.events(50, timeout=10)
    await first.no_more_events()
    assert sorted(e.message_id for e in appended) == sorted(e["messageId"] for e in events)


async def test_duplicates_across_two_instances_on_one_sqlite_database(
    sqlite_url: str, make_event: Callable[..., dict[str, Any]]
) -> None:
    async with AsyncExitStack() as stack:
        first, second = await two_collectors(stack, sqlite_url, None)
        await run_duplicates_scenario(first, second, make_event)


@pytest.mark.postgres
async def test_duplicates_across_two_instances_on_postgres(
    pg_url: str, make_event: Callable[..., dict[str, Any]]
) -> None:
    async with AsyncExitStack() as stack:
        first, second = await two_collectors(stack, pg_url, None)
        await run_duplicates_scenario(first, second, make_event)


@pytest.mark.redis
async def test_duplicates_across_two_instances_sharing_redis(
    sqlite_url: str, redis_url: str, redis_prefix: str, make_event: Callable[..., dict[str, Any]]
) -> None:
    async with AsyncExitStack() as stack:
        first, second = await two_collectors(
            stack, sqlite_url, redis_url, redis_prefix=redis_prefix
        )
        await run_duplicates_scenario(first, second, make_event)


@pytest.mark.redis
async def test_duplicates_across_two_instances_on_redis_streams(
    sqlite_url: str, redis_url: str, redis_prefix: str, make_event: Callable[..., dict[str, Any]]
) -> None:
    async with AsyncExitStack() as stack:
        first, second = await two_collectors(
            stack, sqlite_url, redis_url, redis_prefix=redis_prefix, event_log_backend="redis"
        )
        await run_duplicates_scenario(first, second, make_event)


async def check_store_semantics(store: Any) -> None:
    source = f"src-{uuid.uuid4().hex[:6]}"
    first = await store.claim(source, ["a", "b"], 60)
    assert first == {"a": ClaimOutcome.NEW, "b": ClaimOutcome.NEW}
    assert await store.claim(source, ["a"], 60) == {"a": ClaimOutcome.IN_FLIGHT}
    await store.confirm(source, ["a"], 3600)
    await store.release(source, ["b"])
    assert await store.claim(source, ["a", "b", "c"], 60) == {
        "a": ClaimOutcome.DUPLICATE,
        "b": ClaimOutcome.NEW,
        "c": ClaimOutcome.NEW,
    }
    # Another source may use the same message ids.
    assert await store.claim(source + "x", ["a"], 60) == {"a": ClaimOutcome.NEW}
    # A confirmed id expires with its window.
    await store.confirm(source, ["c"], 1)
    await asyncio.sleep(1.2)
    assert await store.claim(source, ["c"], 60) == {"c": ClaimOutcome.NEW}


async def test_sql_dedup_store_semantics(db_url: str) -> None:
    from upm_common.db import create_engine
    from upm_common.migrations import upgrade

    await upgrade(db_url, "ingest")
    engine = create_engine(db_url)
    try:
        store = SqlDedupStore(engine)
        await check_store_semantics(store)
        assert await store.purge_expired() == 0
    finally:
        await engine.dispose()


@pytest.mark.redis
async def test_redis_dedup_store_semantics(redis_url: str, redis_prefix: str) -> None:
    client = create_redis(redis_url)
    try:
        await check_store_semantics(RedisDedupStore(client, prefix=f"{redis_prefix}dedup"))
    finally:
        await client.aclose()


@asynccontextmanager
async def streams_appender(
    redis_url: str, redis_prefix: str, partitions: int
) -> AsyncIterator[tuple[Redis, RedisEventLog, RedisStreamsAppender]]:
    """A Redis client, an event log of `partitions` and an appender on it; closed after."""
    client = create_redis(redis_url)
    log = RedisEventLog(client, partitions=partitions, prefix=f"{redis_prefix}upm")
    appender = RedisStreamsAppender(log, prefix=f"{redis_prefix}dedup", window_seconds=60)
    try:
        yield client, log, appender
    finally:
        await client.aclose()


async def drain(log: RedisEventLog, count: int) -> list[bytes]:
    """Every payload group "g" has yet to read, claimed `count` at a time and acknowledged."""
    payloads = []
    while claimed := await log.claim(EVENTS, "g", "c", count):
        payloads += [d.payload for d in claimed]
        await log.ack(EVENTS, "g", [d.id for d in claimed])
    return payloads


@pytest.mark.redis
async def test_redis_streams_appender_appends_each_message_id_once(
    redis_url: str, redis_prefix: str
) -> None:
    async with streams_appender(redis_url, redis_prefix, 2) as (client, log, appender):
        await log.ensure_group(EVENTS, "g")
        first, second = await asyncio.gather(
            appender.append("s", [("a", "k1", b"A"), ("b", "k2", b"B")]),
            appender.append("s", [("b", "k2", b"B"), ("c", "k3", b"C")]),
        )
        # The two calls may run at the same time: "b" is appended by exactly one of them.
        assert first[0] == second[1] == ClaimOutcome.NEW
        assert {first[1], second[0]} == {ClaimOutcome.NEW, ClaimOutcome.DUPLICATE}
        # Another source may use the same message ids.
        assert await appender.append("t", [("a", "k1", b"A2")]) == [ClaimOutcome.NEW]
        # An id a claiming writer holds but has not appended yet: retry, never "duplicate".
        store = RedisDedupStore(client, prefix=f"{redis_prefix}dedup")
        assert await store.claim("s", ["d"], 60) == {"d": ClaimOutcome.NEW}
        with pytest.raises(UnavailableError):
            await appender.append("s", [("d", "k4", b"D")])
        assert sorted(await drain(log, 100)) == [b"A", b"A2", b"B", b"C"]


@pytest.mark.redis
async def test_concurrent_overlapping_appends_append_each_message_id_once(
    redis_url: str, redis_prefix: str
) -> None:
    # 30 requests of 40 ids each, every id in two requests, arriving one after another so
    # that several joined calls to Redis are in flight together.
    requests = [
        [
            (f"m{(start * 20 + i) % 600}", f"k{i % 7}", f"m{(start * 20 + i) % 600}".encode())
            for i in range(40)
        ]
        for start in range(30)
    ]
    async with streams_appender(redis_url, redis_prefix, 4) as (_, log, appender):
        await log.ensure_group(EVENTS, "g")

        async def send(index: int) -> list[ClaimOutcome]:
            await asyncio.sleep(index * 0.002)  # arriving while earlier calls are in flight
            return await appender.append("s", requests[index])

        outcomes = await asyncio.gather(*(send(i) for i in range(len(requests))))
        new = [
            m
            for r, o in zip(requests, outcomes, strict=True)
            for (m, _, _), c in zip(r, o, strict=True)
            if c is ClaimOutcome.NEW
        ]
        assert sorted(new) == sorted({m for r in requests for m, _, _ in r})
        assert sorted(await drain(log, 1000)) == sorted(m.encode() for m in new)


@pytest.mark.redis
async def test_a_failed_redis_streams_append_leaves_no_dedup_mark(
    redis_url: str, redis_prefix: str
) -> None:
    async with streams_appender(redis_url, redis_prefix, 1) as (client, log, appender):
        stream = log.stream_key(EVENTS, 0)
        await client.set(stream, "not a stream")  # every XADD now fails
        with pytest.raises(UnavailableError):
            await appender.append("s", [("a", "k", b"A")])
        assert not await client.exists(f"{redis_prefix}dedup:{{s}}:a")
        await client.delete(stream)
        # Nothing was acknowledged, so the resend is appended, not reported as a duplicate.
        assert await appender.append("s", [("a", "k", b"A")]) == [ClaimOutcome.NEW]
        assert await client.xlen(stream) == 1
