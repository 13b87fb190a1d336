"""Composition root of the orchestrator service.

`build_app` creates the engine, the fatigue store (SQL or Redis, from UPM_FATIGUE_BACKEND), the
repository, the peer clients (profile and segment services), the servicer, and one worker: the
outcome feed, which reads marketing activity and conversions from the profile service's change
feed (upm_orchestrator.worker). The decision log flushes itself a moment after each decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from upm.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from upm_common.clients import create_channel
from upm_common.db import create_engine
from upm_common.eventlog import EventLog, create_event_log
from upm_common.redis import create_redis
from upm_common.server import ServiceApp, ServiceRegistration
from upm_common.settings import SettingsError
from upm_orchestrator.directory import (
    CachedProfileDirectory,
    GrpcProfileDirectory,
    GrpcSegmentDirectory,
    ProfileDirectory,
    SegmentDirectory,
)
from upm_orchestrator.followups import FollowUps
from upm_orchestrator.repository import Repository
from upm_orchestrator.service import DecisionSettings, Orchestrator
from upm_orchestrator.servicer import OrchestratorServicer
from upm_orchestrator.settings import OrchestratorSettings
from upm_orchestrator.store.base import FatigueStore
from upm_orchestrator.store.redis import RedisFatigueStore
from upm_orchestrator.store.sql import SqlFatigueStore
from upm_orchestrator.worker import GROUP, OutcomeFeed

SERVICE_NAME = "upm.orchestrator.v1.OrchestratorService"


@dataclass
class OrchestratorApp:
    """Everything `build_orchestrator` assembled."""

    engine: AsyncEngine
    store: FatigueStore
    repository: Repository
    orchestrator: Orchestrator
    followups: FollowUps
    servicer: OrchestratorServicer
    channels: list[grpc.aio.Channel]
    event_log: EventLog | None = None
    redis: Redis | None = None
    consumer_group: str = GROUP

    async def close(self) -> None:
        await self.repository.close()
        # The store and the event log share the Redis client, which the app owns: it closes last.
        if self.event_log is not None:
            await self.event_log.close()
        await self.store.close()
        if self.redis is not None:
            await self.redis.aclose()
        for channel in self.channels:
            await channel.close()
        await self.engine.dispose()

    @property
    def service_app(self) -> ServiceApp:
        return ServiceApp(
            registrations=[
                ServiceRegistration(
                    SERVICE_NAME,
                    pb_grpc.add_OrchestratorServiceServicer_to_server,
                    self.servicer,
                )
            ],
            workers=[]
            if self.event_log is None
            else [
                OutcomeFeed(
                    self.event_log,
                    self.repository,
                    group=self.consumer_group,
                ).run
            ],
            close=self.close,
        )


def build_store(
    settings: OrchestratorSettings, engine: AsyncEngine, redis: Redis | None
) -> FatigueStore:
    """The fatigue ledger; `redis` is the client made from UPM_REDIS_URL (None without it)."""
    if settings.fatigue_backend == "redis":
        if redis is None:
            raise SettingsError("UPM_FATIGUE_BACKEND=redis needs UPM_REDIS_URL")
        return RedisFatigueStore(redis)
    return SqlFatigueStore(engine)


async def build_orchestrator(
    settings: OrchestratorSettings,
    *,
    profiles: ProfileDirectory | None = None,
    segments: SegmentDirectory | None = None,
    store: FatigueStore | None = None,
    with_outcome_feed: bool = True,
) -> OrchestratorApp:
    """Assemble the service; tests inject in-memory peers and a store."""
    engine = create_engine(settings.database_url)
    channels: list[grpc.aio.Channel] = []
    if profiles is None:
        channel = create_channel(settings.profile_address, settings)
        channels.append(channel)
        profiles = GrpcProfileDirectory(channel, timeout_seconds=settings.peer_timeout_seconds)
        if settings.profile_cache_seconds > 0:
            profiles = CachedProfileDirectory(profiles, ttl_seconds=settings.profile_cache_seconds)
    if segments is None:
        channel = create_channel(settings.segment_address, settings)
        channels.append(channel)
        segments = GrpcSegmentDirectory(channel)
    # One Redis client, one pool of connections, for the fatigue ledger and the event log.
    needs_redis = with_outcome_feed or (store is None and settings.fatigue_backend == "redis")
    redis = create_redis(settings.redis_url) if settings.redis_url and needs_redis else None
    store = store or build_store(settings, engine, redis)
    repository = Repository(engine)
    orchestrator = Orchestrator(
        store=store,
        repository=repository,
        profiles=profiles,
        settings=DecisionSettings(
            reservation_ttl_seconds=settings.reservation_ttl_seconds,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            policy_cache_seconds=settings.policy_cache_seconds,
        ),
    )
    followups = FollowUps(orchestrator, segments)
    servicer = OrchestratorServicer(orchestrator, followups)
    event_log = create_event_log(settings, engine, redis) if with_outcome_feed else None
    return OrchestratorApp(
        engine,
        store,
        repository,
        orchestrator,
        followups,
        servicer,
        channels,
        event_log,
        redis,
        consumer_group=settings.orchestrator_consumer_group,
    )


async def build_app(settings: OrchestratorSettings) -> ServiceApp:
    """The CLI's entry point: `upm serve orchestrator`."""
    return (await build_orchestrator(settings)).service_app
