"""The ingest pipeline shared by the gRPC service and the HTTP collector.

For one request of already parsed events: rate limit, enrichment, suppression, deduplication,
a durable append to the event log (see appenders.py), and one result per event. An event is
reported ACCEPTED only after its append returned.
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
from upm_common.errors import ResourceExhaustedError
from upm_ingest.appenders import EventAppender
from upm_ingest.enrich import Enricher
from upm_ingest.events import FieldError, identity_key
from upm_ingest.ratelimit import TokenBuckets
from upm_ingest.sources import Source
from upm_ingest.store import ClaimOutcome
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
    "Time to deduplicate and append one request's new events to the event log.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
STATUS_NAMES: dict[int, str] = {
    ACCEPTED: "accepted",
    DUPLICATE: "duplicate",
    REJECTED: "rejected",
    SUPPRESSED: "suppressed",
}
# The counter's children, looked up once (`labels` takes a lock and builds a key per call).
_EVENTS_TOTAL_BY_STATUS = {
    (door, status): EVENTS_TOTAL.labels(door, name)
    for door in ("grpc", "http", "stream")
    for status, name in STATUS_NAMES.items()
}


@dataclass(slots=True)
class Candidate:
    """One parsed event of a request, or why it could not be parsed.

    `payload` is the finalized event serialized, as the log will hold it before enrichment;
    `event` holds at least the fields enrichment and suppression read (see the two doors).
    """

    event: event_pb2.Event | None
    error: FieldError | None = None
    message_id: str = ""
    client_ip: str = ""
    payload: bytes = b""


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


_UNSET = Result(-1, "", REJECTED)
"""Placeholder of a result not known yet (every one is replaced before `submit` returns)."""


class Ingestor:
    """Runs requests of parsed events through the pipeline into the event log."""

    def __init__(
        self,
        *,
        appender: EventAppender,
        suppressions: Suppressions,
        enricher: Enricher,
        limiter: TokenBuckets | None = None,
    ) -> None:
        self.appender = appender
        self.suppressions = suppressions
        self.enricher = enricher
        self.limiter = limiter or TokenBuckets()

    def check_rate(self, source: Source, count: int) -> None:
        """Take `count` tokens from the source's bucket or raise RESOURCE_EXHAUSTED."""
        wait = self._take(source, count)
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
            wait = self._take(source, count)
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, 1.0))

    def _take(self, source: Source, count: int) -> float:
        limits = source.limits
        return self.limiter.take(
            source.source_id, count, rate=limits.rate_per_second, burst=limits.burst
        )

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
        await self.suppressions.refresh()
        suppressed = self.suppressions.matcher()
        fragment = self.enricher.fragment
        results: list[Result] = [_UNSET] * len(candidates)
        # One pass: the events to append, as (message id, log key, payload), and where their
        # results go. Only those are enriched.
        positions: list[int] = []
        entries: list[tuple[str, str, bytes]] = []
        seen: set[str] = set()
        for index, candidate in enumerate(candidates):
            event = candidate.event
            if event is None:
                error = candidate.error or FieldError("", "invalid event")
                results[index] = Result(
                    index, candidate.message_id, REJECTED, error.reason, error.field
                )
                continue
            message_id = candidate.message_id
            if suppressed is not None and suppressed(event):
                results[index] = Result(index, message_id, SUPPRESSED)
                continue
            if message_id in seen:
                results[index] = Result(index, message_id, DUPLICATE)
                continue
            seen.add(message_id)
            try:
                added = fragment(event, client_ip=candidate.client_ip)
            except Exception:
                log.exception("enrichment failed", message_id=message_id)
                added = b""
            positions.append(index)
            entries.append((message_id, identity_key(event), candidate.payload + added))

        if entries:
            started = time.perf_counter()
            outcomes = await self.appender.append(source.source_id, entries)
            APPEND_SECONDS.observe(time.perf_counter() - started)
            for index, (message_id, _, _), outcome in zip(
                positions, entries, outcomes, strict=True
            ):
                results[index] = Result(
                    index, message_id, ACCEPTED if outcome is ClaimOutcome.NEW else DUPLICATE
                )
        counts: dict[int, int] = {}
        for result in results:
            counts[result.status] = counts.get(result.status, 0) + 1
        for status, count in counts.items():
            counter = _EVENTS_TOTAL_BY_STATUS.get((door, status))
            if counter is None:
                counter = EVENTS_TOTAL.labels(door, STATUS_NAMES[status])
            counter.inc(count)
        return results


def received_now() -> int:
    """The server's receive time of a request, in nanoseconds since the epoch."""
    return time.time_ns()
