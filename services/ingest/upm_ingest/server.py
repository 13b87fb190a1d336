"""Composition root of the ingest service.

`build_app` creates the engine, the optional Redis client, the event log, the stores, the
pipeline, the gRPC servicer and the HTTP collector. The collector is started inside `build_app`
(not as a worker): it is part of serving, like the gRPC port, so it runs under `upm serve ingest`
whether or not workers run, and `ServiceApp.close` stops it. The workers are the suppression
feed (erasures published by the profile service on PROFILE_CHANGES) and, on the SQL dedup
backend, a periodic purge of expired dedup rows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from upm.ingest.v1 import ingest_service_pb2_grpc as pb_grpc
from upm_common.db import create_engine
from upm_common.eventlog import PROFILE_CHANGES, EventLog, consumer_name, create_event_log
from upm_common.eventlog.redis import RedisEventLog
from upm_common.redis import create_redis
from upm_common.server import ServiceApp, ServiceRegistration, Worker
from upm_common.storage import Storage
from upm_ingest.appenders import ClaimingAppender, EventAppender, RedisStreamsAppender
from upm_ingest.collector import Collector, CollectorConfig, start
from upm_ingest.enrich import enricher_from_settings
from upm_ingest.events import ShapeLimits
from upm_ingest.pipeline import Ingestor
from upm_ingest.ratelimit import TokenBuckets
from upm_ingest.servicer import IngestServicer
from upm_ingest.settings import IngestSettings
from upm_ingest.sources import Limits, SourceRegistry
from upm_ingest.store import DedupStore
from upm_ingest.store.redis import RedisDedupStore
from upm_ingest.store.sql import SqlDedupStore, SqlSourceStore, SqlSuppressionStore
from upm_ingest.suppression import Suppressions

SERVICE_NAME = "upm.ingest.v1.IngestService"
SUPPRESSION_GROUP = "ingest-suppression"

log = structlog.get_logger(__name__)


@dataclass
class IngestApp:
    """Everything `build_ingest` assembled; `service_app` is what the CLI runs."""

    settings: IngestSettings
    engine: AsyncEngine
    redis: Redis | None
    event_log: EventLog
    ingestor: Ingestor
    registry: SourceRegistry
    suppressions: Suppressions
    servicer: IngestServicer
    http_port: int
    runner: web.AppRunner | None
    workers: list[Worker] = field(default_factory=list)

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await Storage(self.engine, self.redis, self.event_log).close()

    @property
    def service_app(self) -> ServiceApp:
        return ServiceApp(
            registrations=[
                ServiceRegistration(
                    SERVICE_NAME, pb_grpc.add_IngestServiceServicer_to_server, self.servicer
                )
            ],
            workers=self.workers,
            close=self.close,
        )


def default_limits(settings: IngestSettings) -> Limits:
    return Limits(
        max_event_bytes=settings.max_event_bytes,
        max_batch_bytes=settings.max_batch_bytes,
        max_batch_events=settings.max_batch_events,
        rate_per_second=settings.rate_per_second,
        burst=settings.rate_burst,
    )


async def build_ingest(
    settings: IngestSettings,
    *,
    engine: AsyncEngine | None = None,
    redis: Redis | None = None,
    event_log: EventLog | None = None,
    start_http: bool | None = None,
) -> IngestApp:
    """Assemble the service; the HTTP collector is listening when this returns."""
    engine = engine or create_engine(settings.database_url)
    if redis is None and settings.redis_url:
        redis = create_redis(settings.redis_url)
    event_log = event_log or create_event_log(settings, engine, redis)
    dedup: DedupStore | None = None
    appender: EventAppender
    if isinstance(event_log, RedisEventLog):
        # The dedup marks live beside the streams and are set by the append itself.
        appender = RedisStreamsAppender(
            event_log,
            prefix=settings.dedup_key_prefix,
            window_seconds=settings.dedup_window_seconds,
        )
    else:
        dedup = (
            RedisDedupStore(redis, prefix=settings.dedup_key_prefix)
            if redis is not None
            else SqlDedupStore(engine)
        )
        appender = ClaimingAppender(
            event_log,
            dedup,
            pending_seconds=settings.dedup_pending_seconds,
            window_seconds=settings.dedup_window_seconds,
        )
    suppressions = Suppressions(
        SqlSuppressionStore(engine), cache_seconds=settings.suppression_cache_seconds
    )
    ingestor = Ingestor(
        appender=appender,
        suppressions=suppressions,
        enricher=enricher_from_settings(settings.enrichment_dir, settings.ip_privacy),
        limiter=TokenBuckets(),
    )
    registry = SourceRegistry(SqlSourceStore(engine), default_limits(settings))
    shape = ShapeLimits(
        max_depth=settings.max_json_depth, max_string_length=settings.max_string_length
    )
    servicer = IngestServicer(
        ingestor, registry, shape=shape, require_write_key=settings.grpc_require_write_key
    )
    runner: web.AppRunner | None = None
    http_port = settings.http_port
    if settings.http_enabled if start_http is None else start_http:
        collector = Collector(
            ingestor,
            registry,
            CollectorConfig(
                max_compressed_bytes=settings.max_compressed_bytes,
                max_decompressed_bytes=settings.max_batch_bytes,
                shape=shape,
                cors_origins=tuple(settings.cors_origins),
                trust_forwarded_for=settings.trust_forwarded_for,
            ),
        )
        host = settings.http_host or settings.grpc_host
        runner, http_port = await start(collector.app(), host, settings.http_port)
        log.info("http collector listening", host=host, port=http_port)
    app = IngestApp(
        settings=settings,
        engine=engine,
        redis=redis,
        event_log=event_log,
        ingestor=ingestor,
        registry=registry,
        suppressions=suppressions,
        servicer=servicer,
        http_port=http_port,
        runner=runner,
    )
    app.workers.append(lambda: suppression_worker(event_log, suppressions))
    if isinstance(dedup, SqlDedupStore):
        sql_dedup = dedup
        app.workers.append(lambda: dedup_purge_worker(sql_dedup))
    return app


async def build_app(settings: IngestSettings) -> ServiceApp:
    """The ingest service for the `upm` command line (see the module docstring)."""
    app = await build_ingest(settings)
    return app.service_app


def _erased_identifiers(payload: bytes) -> list[tuple[str, str]]:
    from upm.common.v1 import identity_pb2
    from upm.profile.v1 import profile_service_pb2

    change = profile_service_pb2.ProfileChange.FromString(payload)
    if change.type != profile_service_pb2.PROFILE_CHANGE_TYPE_ERASED:
        return []
    kinds = {
        identity_pb2.IDENTIFIER_TYPE_USER_ID: "user_id",
        identity_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID: "anonymous_id",
    }
    return [
        (kinds[identifier.type], identifier.value)
        for identifier in change.identifiers
        if identifier.type in kinds and identifier.value
    ]


async def suppression_worker(
    event_log: EventLog,
    suppressions: Suppressions,
    *,
    consumer: str | None = None,
    idle_seconds: float = 1.0,
    stop: asyncio.Event | None = None,
) -> None:
    """Suppress the identifiers of erased profiles, from the profile change feed.

    Every ingest replica shares one consumer group: the suppression list is in the shared
    database, so one replica recording an erasure is enough.
    """
    consumer = consumer or consumer_name()
    await event_log.ensure_group(PROFILE_CHANGES, SUPPRESSION_GROUP)
    while stop is None or not stop.is_set():
        deliveries = await event_log.claim(
            PROFILE_CHANGES, SUPPRESSION_GROUP, consumer, 200, block_seconds=idle_seconds
        )
        if not deliveries:
            if stop is not None:
                await asyncio.sleep(0.05)
            continue
        erased: list[tuple[str, str]] = []
        for delivery in deliveries:
            try:
                erased.extend(_erased_identifiers(delivery.payload))
            except Exception:
                log.exception("bad profile change", id=delivery.id)
        if erased:
            await suppressions.add(erased, reason="profile erased")
            log.info("identifiers suppressed", count=len(erased))
        await event_log.ack(PROFILE_CHANGES, SUPPRESSION_GROUP, [d.id for d in deliveries])


async def dedup_purge_worker(dedup: SqlDedupStore, *, interval_seconds: float = 60.0) -> None:
    """Delete expired dedup rows now and then, so the table stays the size of the window."""
    while True:
        try:
            purged = await dedup.purge_expired()
            while purged > 0:
                purged = await dedup.purge_expired()
        except Exception:
            log.exception("dedup purge failed")
        await asyncio.sleep(interval_seconds)
