"""The segment service's composition root.

`build_app(settings)` creates the engine, Redis (when configured), the event log, the store, the
domain, the servicer and the membership worker (profile changes, window edges, new definitions).
"""

from __future__ import annotations

from dataclasses import dataclass

from upm.segment.v1 import segment_service_pb2_grpc as pb_grpc
from upm_common.eventlog import PROFILE_CHANGES, EventLog
from upm_common.server import ServiceApp, ServiceRegistration
from upm_common.storage import Storage
from upm_segment.membership import MembershipHub, MembershipWorker
from upm_segment.service import SegmentDomain
from upm_segment.servicer import SERVICE_NAME, SegmentServicer
from upm_segment.settings import SegmentSettings
from upm_segment.store.sql import SqlSegmentStore


@dataclass
class SegmentRuntime:
    """Everything build_segment made, for tests and tools that need more than the app."""

    store: SqlSegmentStore
    domain: SegmentDomain
    worker: MembershipWorker
    hub: MembershipHub
    event_log: EventLog
    service_app: ServiceApp


async def build_segment(settings: SegmentSettings) -> SegmentRuntime:
    storage = Storage.open(settings)
    engine, event_log = storage.engine, storage.event_log
    store = SqlSegmentStore(engine)
    domain = SegmentDomain(
        store,
        engine,
        query_timeout_seconds=settings.segment_query_timeout_seconds,
        count_ranges=settings.segment_count_ranges,
    )
    hub = MembershipHub()
    worker = MembershipWorker(
        engine,
        store,
        event_log,
        hub,
        group=settings.segment_consumer_group,
        batch_size=settings.segment_worker_batch_size,
        lanes=settings.segment_worker_lanes,
        lease_seconds=settings.segment_lease_seconds,
        refresh_seconds=settings.segment_refresh_seconds,
        scheduler_interval_seconds=settings.segment_scheduler_interval_seconds,
    )
    servicer = SegmentServicer(domain, hub)

    app = ServiceApp(
        registrations=[
            ServiceRegistration(
                SERVICE_NAME, pb_grpc.add_SegmentServiceServicer_to_server, servicer
            )
        ],
        workers=[worker.run],
        close=storage.close,
    )
    return SegmentRuntime(store, domain, worker, hub, event_log, app)


async def build_app(settings: SegmentSettings) -> ServiceApp:
    """The segment service for the `upm` command line."""
    runtime = await build_segment(settings)
    await runtime.event_log.ensure_group(PROFILE_CHANGES, settings.segment_consumer_group)
    return runtime.service_app
