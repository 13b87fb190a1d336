"""How accepted events reach the event log at most once per (source, message id).

Two ways, chosen by the composition root from the backends:
- `RedisStreamsAppender` (event log on Redis Streams): each event's dedup mark is set by the
  same script call that appends it (`RedisEventLog.append_new`): one Redis call per partition
  and batch, and a mark can never exist without its event.
- `ClaimingAppender` (any other combination): claim the ids in the dedup store (pending),
  append, then confirm the ids for the whole window, or release them if the append failed.

Either way an event is reported NEW only once its append returned, and a message id still
pending in another request makes the whole request UNAVAILABLE (the other request may fail,
so answering DUPLICATE could lose the event).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import structlog

from upm_common.errors import UnavailableError
from upm_common.eventlog import EVENTS, EventLog, LogRecord
from upm_common.eventlog.redis import RedisEventLog
from upm_ingest.store import ClaimOutcome, DedupStore

log = structlog.get_logger(__name__)

_OUTCOMES = {"1": ClaimOutcome.NEW, "2": ClaimOutcome.IN_FLIGHT, "3": ClaimOutcome.DUPLICATE}


class EventAppender(Protocol):
    """Appends the events of one request whose message ids are new for their source."""

    async def append(
        self, source_id: str, entries: list[tuple[str, str, bytes]]
    ) -> list[ClaimOutcome]:
        """Append each (message id, log key, payload) entry unless its message id (distinct
        within the call) was seen; one outcome per entry, NEW meaning "appended now".

        Raises UnavailableError (nothing needs to be acknowledged; a resend is answered
        correctly) when a store fails or a message id is pending in another request.
        """
        ...


def _in_flight(count: int) -> UnavailableError:
    return UnavailableError(
        f"{count} message id(s) of this request are being ingested by another request; "
        "resend shortly",
        retry_after_seconds=1,
        reason="MESSAGE_IN_FLIGHT",
    )


def _log_unavailable() -> UnavailableError:
    return UnavailableError("the event log is unavailable", retry_after_seconds=2)


class RedisStreamsAppender:
    """Dedup marks `<prefix>:{<source>}:<message id>` set with the append, in one script."""

    def __init__(self, event_log: RedisEventLog, *, prefix: str, window_seconds: int) -> None:
        self._event_log = event_log
        self._prefix = prefix
        self._window_seconds = window_seconds

    async def append(
        self, source_id: str, entries: list[tuple[str, str, bytes]]
    ) -> list[ClaimOutcome]:
        try:
            codes = await self._event_log.append_new(
                EVENTS,
                entries,
                mark_prefix=f"{self._prefix}:{{{source_id}}}:",
                mark_seconds=self._window_seconds,
            )
        except Exception as exc:
            # What was appended before the failure keeps its mark: a resend of it is answered
            # DUPLICATE, and it is in the log, so nothing acknowledged-or-not is lost.
            log.exception("event log append failed", count=len(entries))
            raise _log_unavailable() from exc
        if "2" in codes:
            raise _in_flight(codes.count("2"))
        return [_OUTCOMES[code] for code in codes]


class ClaimingAppender:
    """Claim in the dedup store, append to the event log, then confirm (or release)."""

    def __init__(
        self,
        event_log: EventLog,
        dedup: DedupStore,
        *,
        pending_seconds: int,
        window_seconds: int,
    ) -> None:
        self._event_log = event_log
        self._dedup = dedup
        self._pending_seconds = pending_seconds
        self._window_seconds = window_seconds

    async def append(
        self, source_id: str, entries: list[tuple[str, str, bytes]]
    ) -> list[ClaimOutcome]:
        message_ids = [message_id for message_id, _, _ in entries]
        try:
            claims = await self._dedup.claim(source_id, message_ids, self._pending_seconds)
        except Exception as exc:
            log.exception("dedup store failed")
            raise UnavailableError("the dedup store is unavailable", retry_after_seconds=2) from exc
        outcomes = [claims[message_id] for message_id in message_ids]
        claimed = [m for m, o in zip(message_ids, outcomes, strict=True) if o is ClaimOutcome.NEW]
        in_flight = outcomes.count(ClaimOutcome.IN_FLIGHT)
        if in_flight:
            await self._release(source_id, claimed)
            raise _in_flight(in_flight)
        if not claimed:
            return outcomes
        new_records = [
            LogRecord(key, payload)
            for (_, key, payload), outcome in zip(entries, outcomes, strict=True)
            if outcome is ClaimOutcome.NEW
        ]
        try:
            await self._event_log.append(EVENTS, new_records)
        except Exception as exc:
            log.exception("event log append failed", count=len(new_records))
            await self._release(source_id, claimed)
            raise _log_unavailable() from exc
        try:
            await self._dedup.confirm(source_id, claimed, self._window_seconds)
        except Exception:
            # The events are durable; only their dedup marks stay short-lived. A resend after
            # the pending time would be appended twice, which consumers absorb by event id.
            log.exception("dedup confirm failed", count=len(claimed))
        return outcomes

    async def _release(self, source_id: str, message_ids: Sequence[str]) -> None:
        if not message_ids:
            return
        try:
            await self._dedup.release(source_id, message_ids)
        except Exception:
            log.exception("dedup release failed", count=len(message_ids))
