"""The profile worker: claims events from the log, applies them in bulk, acknowledges them.

`run` acknowledges a batch while it claims, decodes and applies the next one (the two use
different connections), so the acknowledgement's round trips are off the path of every batch.
Batches are still applied one at a time and in claim order, and a batch is acknowledged only
once its apply has committed: a crash between the two redelivers it, and the store drops what it
already applied. The next batch is claimed only once the apply before it is done: claimed
earlier, it would sit leased while another worker could apply it.

Workers share people: two batches of a busy log touch many of the same profiles. An event whose
identifiers or profile another worker's transaction holds is not waited for (that wait was a
third of a worker's time at full load, bench/profile_apply.py): `consume` carries it, still
leased and unacknowledged, into the apply of the next batch, when the other transaction has
usually committed. After `_CARRY_ROUNDS` batches, or when no new batch comes, it is applied
waiting for the locks. Order within a person does not matter to the store: traits and consents
go by event time, counts add up, and identity resolution converges in any order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
# Batches an event held by another worker's transaction is carried into before it is applied
# waiting for that transaction.
_CARRY_ROUNDS = 2


@dataclass(frozen=True, slots=True)
class _Pending:
    """A decoded event waiting to be applied, and how many batches it was carried into."""

    delivery_id: str
    effects: EventEffects
    carried: int = 0


_Batch = tuple[list[Delivery], list[_Pending]]


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
        if batch_size < 1:
            # A claim of nothing finds nothing: the worker would poll forever, applying nothing.
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.group = group
        self.store = store
        self.event_log = event_log
        self.blocklist = blocklist
        self.consumer = consumer
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.default_region = default_region

    async def run_once(self, *, block_seconds: float = 0.0) -> int:
        """Claim, apply and acknowledge one batch (waiting for the locks other workers hold);
        returns how many deliveries it handled."""
        deliveries, batch = await self._fetch(block_seconds)
        if not deliveries:
            return 0
        done, _ = await self._apply(deliveries, batch, wait=True)
        await self.event_log.ack(EVENTS, self.group, done)
        return len(deliveries)

    async def consume(
        self, *, block_seconds: float = 1.0, until: Callable[[], bool] | None = None
    ) -> int:
        """Apply batches, each acknowledged while the next one is claimed and applied, until
        cancelled, or until a claim started after `until()` held finds nothing (and nothing is
        carried); returns how many deliveries it handled. A failed claim or acknowledgement is
        logged and the loop goes on (an unacknowledged batch is redelivered once its lease
        ends)."""
        handled = 0
        acking: asyncio.Task[None] | None = None
        carried: list[_Pending] = []
        try:
            while True:
                stopping = until is not None and until()
                try:
                    # With events carried, an empty log is not waited on: they are applied.
                    deliveries, batch = await self._fetch(0.0 if carried else block_seconds)
                except Exception:
                    log.exception("profile_claim_failed", consumer=self.consumer)
                    await asyncio.sleep(_RETRY_SECONDS)
                    continue
                if not deliveries and not carried:
                    if stopping:
                        break
                    continue
                done, carried = await self._apply(deliveries, carried + batch, wait=not deliveries)
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
        batch: list[_Pending] = []
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
            batch.append(_Pending(delivery.id, effects))
        return deliveries, batch

    async def _apply(
        self, deliveries: Sequence[Delivery], pending: list[_Pending], *, wait: bool
    ) -> tuple[list[str], list[_Pending]]:
        """Apply the new batch's decoded events and those carried into it. Returns the
        delivery ids to acknowledge (the new deliveries, undecodable ones included, and the
        carried ones, less what is carried on or failed) and the events to carry on: without
        `wait`, those another transaction holds and not yet carried `_CARRY_ROUNDS` times."""
        done = [d.id for d in deliveries]
        done += [p.delivery_id for p in pending if p.carried]
        busy, failed = await self._apply_isolating(pending, wait=wait)
        carry: list[_Pending] = []
        if busy:
            held = [p for p in pending if p.effects.id in busy]
            carry = [_Pending(p.delivery_id, p.effects, p.carried + 1) for p in held]
            overdue = [p for p in carry if p.carried >= _CARRY_ROUNDS]
            if overdue:
                carry = [p for p in carry if p.carried < _CARRY_ROUNDS]
                failed |= (await self._apply_isolating(overdue, wait=True))[1]
        if carry or failed:
            left = failed | {p.delivery_id for p in carry}
            done = [i for i in done if i not in left]
        return done, carry

    async def _apply_isolating(
        self, pending: list[_Pending], *, wait: bool
    ) -> tuple[set[str], set[str]]:
        """Apply `pending` in one call; if that fails, one event at a time (waiting), so that one
        bad event does not hold back the others. Returns the event ids left unapplied because
        another transaction holds them (only without `wait`) and the delivery ids of the events
        that failed."""
        failed: set[str] = set()
        busy: set[str] = set()
        with BATCH_SECONDS.time():
            try:
                results = [await self.store.apply([p.effects for p in pending], wait_for_busy=wait)]
                busy = {e.id for e in results[0].busy}
            except Exception:
                # The failing ones stay unacknowledged (redelivered, then dead-lettered).
                log.exception("profile_batch_failed_retrying_one_by_one", size=len(pending))
                results = []
                for p in pending:
                    try:
                        results.append(await self.store.apply([p.effects]))
                    except Exception:
                        log.exception("profile_event_failed", delivery_id=p.delivery_id)
                        failed.add(p.delivery_id)
                EVENTS_APPLIED.labels("failed").inc(len(failed))
        for outcome in results:
            EVENTS_APPLIED.labels("applied").inc(outcome.applied)
            EVENTS_APPLIED.labels("duplicate").inc(outcome.duplicates)
            EVENTS_APPLIED.labels("suppressed").inc(outcome.suppressed)
            EVENTS_APPLIED.labels("no_identifier").inc(outcome.dropped)
            MERGES.inc(outcome.merges)
            for rule, count in outcome.conflicts.items():
                CONFLICTS.labels(rule).inc(count)
        return busy, failed

    async def _ack(self, ids: Sequence[str]) -> None:
        try:
            await self.event_log.ack(EVENTS, self.group, ids)
        except Exception:
            log.exception("profile_ack_failed", consumer=self.consumer, count=len(ids))
