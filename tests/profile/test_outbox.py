"""The change feed on Redis Streams: changes go to the outbox in the store's transaction and the
relay moves them to the stream, in order, once."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

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


async def test_outbox_relays_changes_to_redis_streams(
    sqlite_url: str, redis_url: str, redis_prefix: str
) -> None:
    engine = create_engine(sqlite_url)
    await upgrade(engine, "profile")
    redis = Redis.from_url(redis_url)
    log = RedisEventLog(redis, partitions=2, prefix=redis_prefix + "log")
    await log.ensure_group(PROFILE_CHANGES, "segment")
    store = SqlProfileStore(engine, OutboxPublisher())
    try:
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
    finally:
        await redis.aclose()
        await engine.dispose()
