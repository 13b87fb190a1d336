"""The profile worker: claims events from the log, applies them in bulk, acknowledges them."""

from __future__ import annotations

import asyncio

import structlog
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Histogram

from upm.common.v1 import event_pb2
from upm_common.eventlog import EVENTS, EventLog
from upm_profile.effects import EventEffects, effects_of_event
from upm_profile.identifiers import BlockList
from upm_profile.store.sql import SqlProfileStore

GROUP = "profile"
log = structlog.get_logger(__name__)

EVENTS_APPLIED = Counter(
    "upm_profile_events_total", "Events handled by profile workers, by outcome.", ["outcome"]
)
MERGES = Counter("upm_profile_merges_total", "Profiles merged by identity resolution.")
CONFLICTS = Counter(
    "upm_profile_identity_conflicts_total", "Links refused by an over-merge guard.", ["rule"]
)
BATCH_SECONDS = Histogram(
    "upm_profile_apply_batch_seconds", "Time to apply one claimed batch of events."
)


class ProfileWorker:
    """One consumer of the `profile` group on the EVENTS topic."""

    def __init__(
        self,
        store: SqlProfileStore,
        event_log: EventLog,
        *,
        blocklist: BlockList,
        consumer: str,
        batch_size: int = 500,
        lease_seconds: float = 60.0,
        default_region: str | None = None,
        group: str = GROUP,
    ) -> None:
        self.group = group
        self.store = store
        self.event_log = event_log
        self.blocklist = blocklist
        self.consumer = consumer
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.default_region = default_region

    async def run_once(self, *, block_seconds: float = 0.0) -> int:
        """Claim, apply and acknowledge one batch; returns how many deliveries it handled."""
        deliveries = await self.event_log.claim(
            EVENTS,
            self.group,
            self.consumer,
            self.batch_size,
            lease_seconds=self.lease_seconds,
            block_seconds=block_seconds,
        )
        if not deliveries:
            return 0
        batch: list[tuple[str, EventEffects]] = []
        for delivery in deliveries:
            event = event_pb2.Event()
            try:
                event.ParseFromString(delivery.payload)
            except DecodeError:
                log.warning("profile_event_undecodable", delivery_id=delivery.id)
                EVENTS_APPLIED.labels("undecodable").inc()
                continue
            effects = effects_of_event(
                event,
                self.blocklist,
                default_region=self.default_region,
                payload=delivery.payload,
            )
            batch.append((delivery.id, effects))
        done = [d.id for d in deliveries]
        with BATCH_SECONDS.time():
            try:
                results = [await self.store.apply([e for _, e in batch])]
            except Exception:
                # One bad event must not hold back the batch: apply one by one and leave the
                # failing ones unacknowledged (redelivered, then dead-lettered).
                log.exception("profile_batch_failed_retrying_one_by_one", size=len(batch))
                results, failed = [], set()
                for delivery_id, effects in batch:
                    try:
                        results.append(await self.store.apply([effects]))
                    except Exception:
                        log.exception("profile_event_failed", delivery_id=delivery_id)
                        failed.add(delivery_id)
                EVENTS_APPLIED.labels("failed").inc(len(failed))
                done = [i for i in done if i not in failed]
        for result in results:
            EVENTS_APPLIED.labels("applied").inc(result.applied)
            EVENTS_APPLIED.labels("duplicate").inc(result.duplicates)
            EVENTS_APPLIED.labels("suppressed").inc(result.suppressed)
            EVENTS_APPLIED.labels("no_identifier").inc(result.dropped)
            MERGES.inc(result.merges)
            for rule, count in result.conflicts.items():
                CONFLICTS.labels(rule).inc(count)
        await self.event_log.ack(EVENTS, self.group, done)
        return len(deliveries)

    async def run(self) -> None:
        """Apply events until cancelled; a failing batch is left to be redelivered."""
        await self.event_log.ensure_group(EVENTS, self.group)
        while True:
            try:
                await self.run_once(block_seconds=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("profile_batch_failed", consumer=self.consumer)
                await asyncio.sleep(1.0)
