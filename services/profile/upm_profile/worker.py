"""The profile worker: claims events from the log, applies them in bulk, acknowledges them.

`run` acknowledges a batch while it claims, decodes and applies the next one (the two use
different connections), so the acknowledgement's round trips are off the path of every batch.
Batches are still applied one at a time and in claim order, and a batch is acknowledged only
once its apply has committed: a crash between the two redelivers it, and the store drops what it
already applied. The next batch is claimed only once the apply before it is done: claimed
earlier, it would sit leased while another worker could apply it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Histogram

from upm.common.v1 import event_pb2
from upm_common.eventlog import EVENTS, Delivery, EventLog
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
# Events decoded between two yields to the event loop, so that the acknowledgement of the batch
# before keeps its round trips going while the next batch is decoded.
_DECODE_SLICE = 250
_RETRY_SECONDS = 1.0

_Batch = tuple[list[Delivery], list[tuple[str, EventEffects]]]


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
        deliveries, batch = await self._fetch(block_seconds)
        if not deliveries:
            return 0
        done = await self._apply(deliveries, batch)
        await self.event_log.ack(EVENTS, self.group, done)
        return len(deliveries)

    async def consume(
        self, *, block_seconds: float = 1.0, until: Callable[[], bool] | None = None
    ) -> int:
        """Apply batches, each acknowledged while the next one is claimed and applied, until
        cancelled, or until a claim started after `until()` held finds nothing; returns how many
        deliveries it handled. A failed claim or acknowledgement is logged and the loop goes on
        (an unacknowledged batch is redelivered once its lease ends)."""
        handled = 0
        acking: asyncio.Task[None] | None = None
        try:
            while True:
                stopping = until is not None and until()
                try:
                    deliveries, batch = await self._fetch(block_seconds)
                except Exception:
                    log.exception("profile_claim_failed", consumer=self.consumer)
                    await asyncio.sleep(_RETRY_SECONDS)
                    continue
                if not deliveries:
                    if stopping:
                        break
                    continue
                done = await self._apply(deliveries, batch)
                if acking is not None:
                    await acking
                acking = asyncio.create_task(self._ack(done))
                handled += len(deliveries)
        finally:
            if acking is not None:
                await acking
        return handled

    async def run(self) -> None:
        """Apply events until cancelled; a failing batch is left to be redelivered."""
        await self.event_log.ensure_group(EVENTS, self.group)
        while True:
            try:
                await self.consume(block_seconds=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("profile_batch_failed", consumer=self.consumer)
                await asyncio.sleep(_RETRY_SECONDS)

    async def _fetch(self, block_seconds: float) -> _Batch:
        """Claim a batch and compute the effects of its events."""
        deliveries = await self.event_log.claim(
            EVENTS,
            self.group,
            self.consumer,
            self.batch_size,
            lease_seconds=self.lease_seconds,
            block_seconds=block_seconds,
        )
        batch: list[tuple[str, EventEffects]] = []
        for index, delivery in enumerate(deliveries):
            if index and not index % _DECODE_SLICE:
                await asyncio.sleep(0)
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
        return deliveries, batch

    async def _apply(
        self, deliveries: Sequence[Delivery], batch: list[tuple[str, EventEffects]]
    ) -> list[str]:
        """Apply a decoded batch; returns the delivery ids to acknowledge."""
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
        return done

    async def _ack(self, ids: Sequence[str]) -> None:
        try:
            await self.event_log.ack(EVENTS, self.group, ids)
        except Exception:
            log.exception("profile_ack_failed", consumer=self.consumer, count=len(ids))
