"""Pick the event-log backend named by the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from upm_common.eventlog.base import EventLog
from upm_common.settings import CommonSettings, SettingsError

if TYPE_CHECKING:
    from redis.asyncio import Redis


def create_event_log(
    settings: CommonSettings, engine: AsyncEngine, redis: Redis | None = None
) -> EventLog:
    """The SQL log on the service database, or Redis Streams when UPM_EVENT_LOG_BACKEND=redis."""
    if settings.event_log_backend == "redis":
        if redis is None:
            raise SettingsError("UPM_EVENT_LOG_BACKEND=redis needs UPM_REDIS_URL to be set")
        from upm_common.eventlog.redis import RedisEventLog

        return RedisEventLog(redis, partitions=settings.event_log_partitions)
    from upm_common.eventlog.sql import SqlEventLog

    return SqlEventLog(engine)
