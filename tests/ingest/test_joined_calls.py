"""Concurrent Redis calls of the ingest path are joined into one round trip (group commit)
without changing what each caller gets back."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from upm_common.eventlog import LogRecord
from upm_common.eventlog.redis import RedisEventLog
from upm_common.joining import CallJoiner
from upm_common.redis import create_redis
from upm_ingest.store import ClaimOutcome
from upm_ingest.store.redis import RedisDedupStore


async def test_concurrent_calls_share_one_operation_and_get_their_own_results() -> None:
    calls: list[list[int]] = []

    async def double(group: str, items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0.01)
        return [2 * i for i in items]

    joiner: CallJoiner[str, int, int] = CallJoiner(double)
    results = await asyncio.gather(*(joiner("g", [n, n + 100]) for n in range(5)))
    assert results == [[2 * n, 2 * n + 200] for n in range(5)]
    assert calls == [[0, 100, 1, 101, 2, 102, 3, 103, 4, 104]]
    # Callers arriving while a call is in flight go together in the next one.
    first = asyncio.ensure_future(joiner("g", [1]))
    await asyncio.sleep(0.001)
    later = await asyncio.gather(joiner("g", [2]), joiner("h", [3]), joiner("g", [4]))
    assert await first == [2] and later == [[4], [6], [8]]
    assert calls[1:] == [[1], [3], [2, 4]] or calls[1:] == [[1], [2, 4], [3]]
    assert await joiner("g", []) == []


async def test_a_failed_operation_fails_every_caller_in_it_and_not_later_ones() -> None:
    failing = True

    async def flaky(group: str, items: list[int]) -> list[int]:
        await asyncio.sleep(0.01)
        if failing:
            raise ConnectionError("down")
        return items

    joiner: CallJoiner[str, int, int] = CallJoiner(flaky)
    outcomes = await asyncio.gather(*(joiner("g", [n]) for n in range(3)), return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    failing = False
    assert await joiner("g", [7]) == [7]


@pytest.mark.redis
async def test_joined_dedup_claims_treat_an_id_in_two_requests_as_in_flight(
    redis_url: str,
) -> None:
    client = create_redis(redis_url)
    prefix = f"upmjoin-{uuid.uuid4().hex[:8]}"
    store = RedisDedupStore(client, prefix=prefix)
    try:
        results = await asyncio.gather(
            store.claim("s", ["a", "b"], 60),
            store.claim("s", ["b", "c"], 60),
            store.claim("s", ["c", "d"], 60),
        )
        assert results[0] == {"a": ClaimOutcome.NEW, "b": ClaimOutcome.NEW}
        assert results[1] == {"b": ClaimOutcome.IN_FLIGHT, "c": ClaimOutcome.NEW}
        assert results[2] == {"c": ClaimOutcome.IN_FLIGHT, "d": ClaimOutcome.NEW}
        await asyncio.gather(store.confirm("s", ["a"], 60), store.confirm("s", ["c"], 60))
        assert await store.claim("s", ["a", "c"], 60) == {
            "a": ClaimOutcome.DUPLICATE,
            "c": ClaimOutcome.DUPLICATE,
        }
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.mark.redis
async def test_joined_appends_return_each_callers_ids_in_order(redis_url: str) -> None:
    client = create_redis(redis_url)
    prefix = f"upmjoin-{uuid.uuid4().hex[:8]}"
    log = RedisEventLog(client, partitions=4, prefix=prefix)
    try:
        await log.ensure_group("t", "g")
        batches = [
            [LogRecord(f"k{i % 3}", f"{n}-{i}".encode()) for i in range(n + 1)] for n in range(6)
        ]
        ids = await asyncio.gather(*(log.append("t", batch) for batch in batches))
        assert [len(i) for i in ids] == [len(b) for b in batches]
        by_id = {}
        while claimed := await log.claim("t", "g", "c", 100):
            by_id.update({d.id: d.payload for d in claimed})
            await log.ack("t", "g", [d.id for d in claimed])
        for batch, batch_ids in zip(batches, ids, strict=True):
            assert [by_id[i] for i in batch_ids] == [r.payload for r in batch]
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
