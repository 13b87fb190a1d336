"""The profile service's composition root.

`build_app(settings)` creates the engine, Redis (when configured), the event log, the store with
its change publisher, the servicer, and the workers: the profile workers applying EVENTS, and the
outbox relay when the event log is not the SQL one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from upm.profile.v1 import profile_service_pb2_grpc as pb_grpc
from upm_common.eventlog import EVENTS, EventLog, consumer_name
from upm_common.server import ServiceApp, ServiceRegistration
from upm_common.storage import Storage
from upm_profile.changes import ChangePublisher, OutboxPublisher, SqlLogPublisher, relay_forever
from upm_profile.identifiers import BlockList
from upm_profile.resolution import Guards
from upm_profile.service import ProfileDomain
from upm_profile.servicer import SERVICE_NAME, ChangeHub, ProfileServicer
from upm_profile.settings import ProfileSettings
from upm_profile.store.sql import SqlProfileStore
from upm_profile.worker import ProfileWorker


@dataclass
class ProfileRuntime:
    """Everything build_profile made, for tests and tools that need more than the app."""

    store: SqlProfileStore
    domain: ProfileDomain
    event_log: EventLog
    service_app: ServiceApp


def make_store(
    settings: ProfileSettings, engine: Any, publisher: ChangePublisher
) -> SqlProfileStore:
    return SqlProfileStore(
        engine,
        publisher,
        guards=Guards(
            type_limits={"user_id": settings.profile_max_user_ids},
            max_identifiers=settings.profile_max_identifiers,
        ),
        blocklist=BlockList(settings.profile_blocked_values, settings.profile_blocked_patterns),
        default_region=settings.profile_default_phone_region,
        emit_event_applied=settings.profile_emit_event_applied,
    )


async def build_profile(settings: ProfileSettings) -> ProfileRuntime:
    storage = Storage.open(settings)
    engine, event_log = storage.engine, storage.event_log
    append_in = getattr(event_log, "append_in", None)
    publisher: ChangePublisher = (
        SqlLogPublisher(event_log) if append_in is not None else OutboxPublisher()  # type: ignore[arg-type]
    )
    store = make_store(settings, engine, publisher)
    domain = ProfileDomain(store, default_region=settings.profile_default_phone_region)
    hub = ChangeHub()
    store.listeners.append(hub.publish)
    servicer = ProfileServicer(domain, hub)
    blocklist = store.blocklist

    workers: list[Callable[[], Awaitable[None]]] = []
    for index in range(settings.profile_worker_concurrency):
        worker = ProfileWorker(
            store,
            event_log,
            blocklist=blocklist,
            consumer=consumer_name(index),
            batch_size=settings.profile_worker_batch_size,
            lease_seconds=settings.profile_lease_seconds,
            default_region=settings.profile_default_phone_region,
            group=settings.profile_consumer_group,
        )
        workers.append(worker.run)
    if append_in is None:

        async def relay() -> None:
            await relay_forever(engine, event_log)

        workers.append(relay)

    app = ServiceApp(
        registrations=[
            ServiceRegistration(
                SERVICE_NAME, pb_grpc.add_ProfileServiceServicer_to_server, servicer
            )
        ],
        workers=workers,
        close=storage.close,
    )
    return ProfileRuntime(store, domain, event_log, app)


async def build_app(settings: ProfileSettings) -> ServiceApp:
    """The profile service for the `upm` command line."""
    runtime = await build_profile(settings)
    await runtime.event_log.ensure_group(EVENTS, settings.profile_consumer_group)
    return runtime.service_app
