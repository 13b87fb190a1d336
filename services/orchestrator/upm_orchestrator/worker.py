"""Outcomes that flow in as events: the profile service's change feed, read by the orchestrator.

Channel senders and tracking libraries send marketing activity (`Email Delivered`, `Email
Opened`, `Email Link Clicked`, `SMS Delivered`, `Push Opened`, ...) and conversions (`Order
Completed`) to ingest like any other event. Once the profile service has applied one to a
profile, it publishes EVENT_APPLIED on PROFILE_CHANGES with the profile id; this worker records
the marketing activity as outcomes, and the conversion events named by follow-up rules as
CONVERTED outcomes, so follow-ups see conversions whichever way they arrive. Consent changes
carried by such events are the profile service's own business and are not repeated here.
"""

from __future__ import annotations

import asyncio
import re
import time

from upm.profile.v1 import profile_service_pb2
from upm_common.eventlog import PROFILE_CHANGES, Delivery, EventLog, consumer_name
from upm_common.logging import get_logger
from upm_common.protoconv import timestamp_to_datetime
from upm_orchestrator.repository import OutcomeRecord, Repository

GROUP = "orchestrator-outcomes"
RULE_REFRESH_SECONDS = 30.0

log = get_logger(__name__)

# "<Channel> <Activity>" names of the Segment spec's marketing events.
ACTIVITY = re.compile(
    r"^(?P<channel>email|sms|push|in[ _-]?app|web)\s+"
    r"(?P<what>delivered|opened|link clicked|clicked|bounced|unsubscribed|marked as spam)$",
    re.IGNORECASE,
)
ACTIVITY_TYPES = {
    "delivered": "delivered",
    "opened": "opened",
    "link clicked": "clicked",
    "clicked": "clicked",
    "bounced": "bounced",
    "unsubscribed": "unsubscribed",
    "marked as spam": "complained",
}


def classify(event_name: str, conversions: set[str]) -> tuple[str, str] | None:
    """(outcome type, channel) for an event worth recording, or None."""
    match = ACTIVITY.match(event_name.strip())
    if match:
        channel = re.sub(r"[ _-]", "_", match["channel"].lower())
        return ACTIVITY_TYPES[match["what"].lower()], channel
    if event_name in conversions:
        return "converted", ""
    return None


class OutcomeFeed:
    """Consumes PROFILE_CHANGES and records outcomes."""

    def __init__(self, event_log: EventLog, repository: Repository, group: str = GROUP) -> None:
        self._group = group
        self._log = event_log
        self._repository = repository
        self._consumer = consumer_name()
        self._conversions: set[str] = set()
        self._loaded_at = -RULE_REFRESH_SECONDS

    async def _conversion_events(self) -> set[str]:
        if time.monotonic() - self._loaded_at >= RULE_REFRESH_SECONDS:
            rules, _ = await self._repository.list_follow_up_rules()
            self._conversions = {rule.conversion_event for rule in rules}
            self._loaded_at = time.monotonic()
        return self._conversions

    async def handle(self, deliveries: list[Delivery]) -> int:
        """Record the outcomes among `deliveries`; returns how many were recorded."""
        conversions = await self._conversion_events()
        recorded = 0
        for delivery in deliveries:
            change = profile_service_pb2.ProfileChange.FromString(delivery.payload)
            if change.type != profile_service_pb2.PROFILE_CHANGE_TYPE_EVENT_APPLIED:
                continue
            found = classify(change.event_name, conversions)
            if found is None:
                continue
            kind, channel = found
            await self._repository.record_outcome(
                change.profile_id,
                "",
                OutcomeRecord(
                    kind,
                    change.event_name,
                    channel,
                    "",
                    timestamp_to_datetime(change.event_time),
                ),
            )
            recorded += 1
        return recorded

    async def run(self) -> None:
        """The worker loop (at-least-once: a redelivered change records its outcome again)."""
        await self._log.ensure_group(PROFILE_CHANGES, self._group)
        while True:
            deliveries = await self._log.claim(
                PROFILE_CHANGES, self._group, self._consumer, 200, block_seconds=1.0
            )
            if not deliveries:
                await asyncio.sleep(0.2)
                continue
            try:
                await self.handle(deliveries)
            except Exception:
                log.exception("recording outcomes failed; the changes will be redelivered")
                await asyncio.sleep(1.0)
                continue
            await self._log.ack(PROFILE_CHANGES, self._group, [d.id for d in deliveries])
