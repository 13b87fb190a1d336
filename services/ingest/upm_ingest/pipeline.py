"""The ingest pipeline shared by the gRPC service and the HTTP collector.

For one request of already parsed events: rate limit, enrichment, suppression, deduplication,
a durable append to the event log, and one result per event. An event is reported ACCEPTED only
after `EventLog.append` returned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from prometheus_client import Counter, Histogram

from upm.common.v1 import event_pb2
from upm.ingest.v1 import ingest_service_pb2 as pb
from upm_common.errors import ResourceExhaustedError, UnavailableError
from upm_common.eventlog import EVENTS, EventLog, LogRecord
from upm_ingest.enrich import Enricher
from upm_ingest.events import FieldError
from upm_ingest.ratelimit import TokenBuckets
from upm_ingest.sources import Source
from upm_ingest.store import ClaimOutcome, DedupStore
from upm_ingest.suppression import Suppressions

log = structlog.get_logger(__name__)

ACCEPTED = pb.EVENT_RESULT_STATUS_ACCEPTED
DUPLICATE = pb.EVENT_RESULT_STATUS_DUPLICATE
REJECTED = pb.EVENT_RESULT_STATUS_REJECTED
SUPPRESSED = pb.EVENT_RESULT_STATUS_SUPPRESSED

EVENTS_TOTAL = Counter(
    "upm_ingest_events_total", "Events handled by ingest, by outcome.", ["door", "status"]
)
APPEND_SECONDS = Histogram(
    "upm_ingest_append_seconds",
    "Time to append one request's accepted events to the event log.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
_STATUS_NAMES: dict[int, str] = {
    ACCEPTED: "accepted",
    DUPLICATE: "duplicate",
    REJECTED: "rejected",
    SUPPRESSED: "suppressed",
}
# The counter's children, looked up once (`labels` takes a lock and builds a key per call).
_EVENTS_TOTAL_BY_STATUS = {
    (door, status): EVENTS_TOTAL.labels(door, name)
    for door in ("grpc", "http", "stream")
    for status, name in _STATUS_NAMES.items()
}


@dataclass(slots=True)
class Candidate:
    """One parsed event of a request, or why it could not be parsed."""

    event: event_pb2.Event | None
    error: FieldError | None = None
    message_id: str = ""
    client_ip: str = ""


@dataclass(slots=True)
class Result:
    """The outcome of one event (not frozen: a frozen dataclass is several times slower to
    create, and the pipeline creates one per event)."""

    index: int
    message_id: str
    status: int
    reason: str = ""
    field: str = ""

    def to_proto(self, offset: int = 0) -> pb.EventResult:
        return pb.EventResult(
            index=self.index + offset,
            message_id=self.message_id,
            status=self.status,  # type: ignore[arg-type]
            reason=self.reason,
            field=self.field,
        )


class Ingestor:
    """Runs requests of parsed events through the pipeline into the event log."""

    def __init__(
        self,
        *,
        event_log: EventLog,
        dedup: DedupStore,
        suppressions: Suppressions,
        enricher: Enricher,
        limiter: TokenBuckets | None = None,
        dedup_window_seconds: int = 7 * 24 * 3600,
        pending_seconds: int = 60,
    ) -> None:
        self.event_log = event_log
        self.dedup = dedup
        self.suppressions = suppressions
        self.enricher = enricher
        self.limiter = limiter or TokenBuckets()
        self.dedup_window_seconds = dedup_window_seconds
        self.pending_seconds = pending_seconds

    def check_rate(self, source: Source, count: int) -> None:
        """Take `count` tokens from the source's bucket or raise RESOURCE_EXHAUSTED."""
        wait = self.limiter.take(
            source.source_id,
            count,
            rate=source.limits.rate_per_second,
            burst=source.limits.burst,
        )
        if wait > 0:
            raise ResourceExhaustedError(
                f"source {source.source_id} is over its rate of "
                f"{source.limits.rate_per_second:g} events/s",
                retry_after_seconds=wait,
                subject=f"source:{source.source_id}",
                reason="RATE_LIMITED",
            )

    async def wait_rate(self, source: Source, count: int) -> None:
        """Wait until the source's bucket has `count` tokens (back-pressure for streams)."""
        while True:
            wait = self.limiter.take(
                source.source_id,
                count,
                rate=source.limits.rate_per_second,
                burst=source.limits.burst,
            )
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, 1.0))

    async def submit(
        self,
        source: Source,
        candidates: Sequence[Candidate],
        *,
        door: str = "grpc",
    ) -> list[Result]:
        """Run parsed events through the pipeline; one result per candidate, in order.

        Raises UnavailableError (nothing acknowledged, safe to resend) when the event log or the
        dedup store fails, or when an event's message id is in flight in another request.
        """
        results: list[Result | None] = [None] * len(candidates)
        valid: list[int] = []
        events: list[event_pb2.Event] = []
        enrich = self.enricher.enrich
        for index, candidate in enumerate(candidates):
            event = candidate.event
            if event is None:
                error = candidate.error or FieldError("", "invalid event")
                results[index] = Result(
                    index, candidate.message_id, REJECTED, error.reason, error.field
                )
                continue
            try:
                enrich(event, client_ip=candidate.client_ip)
            except Exception:
                log.exception("enrichment failed", message_id=event.message_id)
            valid.append(index)
            events.append(event)

        suppressed = await self.suppressions.suppressed(events)
        # message id -> (index, event) of the first event of the request with that id
        fresh: dict[str, tuple[int, event_pb2.Event]] = {}
        for position, index in enumerate(valid):
            event = events[position]
            message_id = candidates[index].message_id or event.message_id
            if suppressed and position in suppressed:
                results[index] = Result(index, message_id, SUPPRESSED)
            elif message_id in fresh:
                results[index] = Result(index, message_id, DUPLICATE)
            else:
                fresh[message_id] = (index, event)

        if fresh:
            await self._dedup_and_append(source, fresh, results)
        final = [r for r in results if r is not None]
        counts: dict[int, int] = {}
        for result in final:
            counts[result.status] = counts.get(result.status, 0) + 1
        for status, count in counts.items():
            counter = _EVENTS_TOTAL_BY_STATUS.get((door, status))
            if counter is None:
                counter = EVENTS_TOTAL.labels(door, _STATUS_NAMES[status])
            counter.inc(count)
        return final

    async def _dedup_and_append(
        self,
        source: Source,
        fresh: dict[str, tuple[int, event_pb2.Event]],
        results: list[Result | None],
    ) -> None:
        message_ids = list(fresh)
        try:
            outcomes = await self.dedup.claim(source.source_id, message_ids, self.pending_seconds)
        except Exception as exc:
            log.exception("dedup store failed")
            raise UnavailableError("the dedup store is unavailable", retry_after_seconds=2) from exc
        claimed: list[str] = []
        in_flight = 0
        for message_id in message_ids:
            outcome = outcomes[message_id]
            if outcome is ClaimOutcome.NEW:
                claimed.append(message_id)
            elif outcome is ClaimOutcome.IN_FLIGHT:
                in_flight += 1
        if in_flight:
            # Another request holds these ids and has not acknowledged them yet. Answering
            # DUPLICATE could lose the event if that request fails, so nothing of this request
            # is acknowledged: the client resends after the other request finished.
            await self._release(source, claimed)
            raise UnavailableError(
                f"{in_flight} message id(s) of this request are being ingested by another "
                "request; resend shortly",
                retry_after_seconds=1,
                reason="MESSAGE_IN_FLIGHT",
            )
        if len(claimed) < len(message_ids):
            for message_id in message_ids:
                if outcomes[message_id] is ClaimOutcome.DUPLICATE:
                    index = fresh[message_id][0]
                    results[index] = Result(index, message_id, DUPLICATE)
        if not claimed:
            return
        records = []
        for message_id in claimed:
            event = fresh[message_id][1]
            records.append(
                LogRecord(event.user_id or event.anonymous_id, event.SerializeToString())
            )
        started = time.perf_counter()
        try:
            await self.event_log.append(EVENTS, records)
        except Exception as exc:
            log.exception("event log append failed", count=len(records))
            await self._release(source, claimed)
            raise UnavailableError("the event log is unavailable", retry_after_seconds=2) from exc
        APPEND_SECONDS.observe(time.perf_counter() - started)
        for message_id in claimed:
            index = fresh[message_id][0]
            results[index] = Result(index, message_id, ACCEPTED)
        try:
            await self.dedup.confirm(source.source_id, claimed, self.dedup_window_seconds)
        except Exception:
            # The events are durable; only their dedup marks stay short-lived. A resend after
            # the pending time would be appended twice, which consumers absorb by event id.
            log.exception("dedup confirm failed", count=len(claimed))

    async def _release(self, source: Source, message_ids: list[str]) -> None:
        if not message_ids:
            return
        try:
            await self.dedup.release(source.source_id, message_ids)
        except Exception:
            log.exception("dedup release failed", count=len(message_ids))


def received_now() -> int:
    """The server's receive time of a request, in nanoseconds since the epoch."""
    return time.time_ns()
