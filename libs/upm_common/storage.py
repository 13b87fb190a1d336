"""The storage a service opens from its settings: database engine, optional Redis, event log."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from upm_common.db import create_engine
from upm_common.eventlog import EventLog, create_event_log
from upm_common.redis import create_redis
from upm_common.settings import CommonSettings


@dataclass
class Storage:
    """Connections a service owns; `close` releases them in reverse order of opening."""

    engine: AsyncEngine
    redis: Redis | None
    event_log: EventLog

    @classmethod
    def open(cls, settings: CommonSettings) -> Storage:
        engine = create_engine(settings.database_url)
        redis = create_redis(settings.redis_url) if settings.redis_url else None
        return cls(engine, redis, create_event_log(settings, engine, redis))

    async def close(self) -> None:
        await self.event_log.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()
