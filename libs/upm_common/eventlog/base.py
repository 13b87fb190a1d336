"""The event-log contract shared by every backend.

Semantics (both backends, checked by one contract test module):
- `append` returns only once the records are durable; each gets an id, increasing per partition.
- Every consumer group of a topic receives every record appended after the group exists.
- `claim` hands a record to one consumer of the group at a time, under a lease. A record not
  acknowledged before its lease ends (the consumer crashed) is handed out again, with
  `attempts` counting the deliveries; past `max_attempts` it moves to the dead-letter topic.
- Delivery is at least once: consumers make their effects idempotent (by event id).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

EVENTS = "events"
"""Accepted events (serialized upm.common.v1.Event), keyed by identity; consumed by profile."""

PROFILE_CHANGES = "profile-changes"
"""The profile change feed (serialized upm.profile.v1.ProfileChange)."""

MEMBERSHIP_CHANGES = "membership-changes"
"""Segment entered / exited signals (serialized upm.segment.v1.MembershipChange)."""

DEFAULT_MAX_ATTEMPTS = 5


def consumer_name(index: int = 0) -> str:
    """A consumer name unique to this process (and worker index) across hosts and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{index}"


def check_claim_count(max_count: int) -> None:
    """Refuse a claim of fewer than one record: it would find nothing every time, and a
    consumer polling with it would spin forever and apply nothing."""
    if max_count < 1:
        raise ValueError(f"max_count must be at least 1, got {max_count}")


def dead_letter_topic(topic: str) -> str:
    """Where records go after too many failed deliveries."""
    return f"{topic}.dead"


@dataclass(frozen=True, slots=True)
class LogRecord:
    """A record to append: `key` picks the partition (records of one key stay in order)."""

    key: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Delivery:
    """A record handed to a consumer; acknowledge it by `id` once its effect is stored."""

    id: str
    key: str
    payload: bytes
    attempts: int


class EventLog(Protocol):
    """A durable, partitioned log with consumer groups."""

    async def append(self, topic: str, records: Sequence[LogRecord]) -> list[str]:
        """Append records durably; returns their ids in order."""
        ...

    async def ensure_group(self, topic: str, group: str) -> None:
        """Create the consumer group if missing; a new group starts with what is retained."""
        ...

    async def claim(
        self,
        topic: str,
        group: str,
        consumer: str,
        max_count: int,
        *,
        lease_seconds: float = 30.0,
        block_seconds: float = 0.0,
    ) -> list[Delivery]:
        """Up to `max_count` (at least 1) records for this consumer: expired leases first, then
        new ones."""
        ...

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        """Mark records as processed by the group."""
        ...

    async def pending(self, topic: str, group: str) -> int:
        """How many records the group has not acknowledged yet (delivered or not)."""
        ...

    async def close(self) -> None:
        """Release connections the log owns."""
        ...
