"""The change feed on Redis Streams: changes go to the outbox in the store's transaction and the
relay moves them to the stream, in order, once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.profile.conftest import effects, make_event
from upm.profile.v1 import profile_service_pb2 as pb
from upm_common.db import create_engine
from upm_common.eventlog import PROFILE_CHANGES
from upm_common.eventlog.redis import RedisEventLog
from upm_common.migrations import upgrade
from upm_profile.changes import OutboxPublisher, relay_once
from upm_profile.store.sql import SqlProfileStore
from upm_profile.store.tables import outbox

pytestmark = pytest.mark.redis


@asynccontextmanager
async def _outbox_store(
    url: str, redis_url: str, redis_prefix: str, *, partitions: int
) -> AsyncIterator[tuple[AsyncEngine, SqlProfileStore, RedisEventLog]]:
    """A store publishing to the outbox, and the Redis Streams change feed its relay fills."""
    engine = create_engine(url)
    await upgrade(engine, "profile")
    redis = Redis.from_url(redis_url)
    log = RedisEventLog(redis, partitions=partitions, prefix=redis_prefix + "log")
    await log.ensure_group(PROFILE_CHANGES, "segment")
    try:
        yield engine, SqlProfileStore(engine, OutboxPublisher()), log
    finally:
        await redis.aclose()
        await engine.dispose()


async def test_outbox_relays_changes_to_redis_streams(
    db_url: str, redis_url: str, redis_prefix: str
) -> None:
    async with _outbox_store(db_url, redis_url, redis_prefix, partitions=2) as (
        engine,
        store,
        log,
    ):
        await store.apply(
            effects(
                make_event("identify", user_id="ob-1", traits={"plan": "pro"}),
                make_event("track", user_id="ob-1", event="Clicked", minutes=1),
            )
        )
        async with engine.connect() as conn:
            waiting = await conn.scalar(select(func.count()).select_from(outbox))
        assert waiting == 4
        assert await relay_once(engine, log) == 4
        assert await relay_once(engine, log) == 0
        deliveries = await log.claim(PROFILE_CHANGES, "segment", "c", 100)
        kinds = [pb.ProfileChange.FromString(d.payload).type for d in deliveries]
        assert sorted(kinds) == sorted(
            [
                pb.PROFILE_CHANGE_TYPE_CREATED,
                pb.PROFILE_CHANGE_TYPE_EVENT_APPLIED,
                pb.PROFILE_CHANGE_TYPE_EVENT_APPLIED,
                pb.PROFILE_CHANGE_TYPE_TRAITS_CHANGED,
            ]
        )


@pytest.mark.postgres
async def test_relays_at_once_move_every_change_once_in_outbox_order(
    pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    """Several pods each run a relay: every change reaches the feed exactly once, and the feed
    holds them in the order of the outbox."""
    async with _outbox_store(pg_url, redis_url, redis_prefix, partitions=1) as (
        engine,
        store,
        log,
    ):
        for start in range(0, 600, 200):
            await store.apply(
                effects(
                    *(
                        make_event("track", user_id=f"relay-{i % 150}", event=f"E{i % 7}")
                        for i in range(start, start + 200)
                    )
                )
            )
        async with engine.connect() as conn:
            queued = [
                row[0] for row in await conn.execute(select(outbox.c.payload).order_by(outbox.c.id))
            ]
        assert len(queued) > 600  # created profiles and events applied

        async def relay_until_empty() -> int:
            moved = 0
            while True:
                step = await relay_once(engine, log, batch_size=50)
                moved += step
                if step == 0:
                    async with engine.connect() as conn:
                        if not await conn.scalar(select(func.count()).select_from(outbox)):
                            return moved
                    await asyncio.sleep(0.001)

        moved = await asyncio.gather(*(relay_until_empty() for _ in range(3)))
        assert sum(moved) == len(queued)
        fed = [d.payload for d in await log.claim(PROFILE_CHANGES, "segment", "c", 10_000)]
        assert fed == queued
