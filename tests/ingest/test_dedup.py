"""Exact deduplication across collector instances sharing a database or a Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from tests.ingest.conftest import Running, start_ingest
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
    from upm_common.redis import create_redis

    client = create_redis(redis_url)
    try:
        await check_store_semantics(RedisDedupStore(client, prefix=f"{redis_prefix}dedup"))
    finally:
        await client.aclose()
