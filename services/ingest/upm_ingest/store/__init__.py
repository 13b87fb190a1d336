"""Storage interfaces of the ingest service; backends live in sql.py and redis.py."""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SourceLimitOverrides:
    """Per-source limits as configured; zero means "the service default"."""

    max_event_bytes: int = 0
    max_batch_bytes: int = 0
    max_batch_events: int = 0
    rate_per_second: float = 0.0
    burst: int = 0


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A registered source (its write key is only stored hashed)."""

    source_id: str
    display_name: str
    write_key_prefix: str
    limits: SourceLimitOverrides
    created_time: datetime
    revoked_time: datetime | None = None


class SourceStore(Protocol):
    """Registered sources, found by the SHA-256 of their write key."""

    async def create(self, record: SourceRecord, write_key_hash: str) -> None:
        """Store a new source."""
        ...

    async def get_by_key_hash(self, write_key_hash: str) -> SourceRecord | None:
        """The source holding this key hash (revoked or not), or None."""
        ...

    async def list(
        self, *, page_size: int, after: tuple[datetime, str] | None, show_revoked: bool
    ) -> list[SourceRecord]:
        """Sources ordered by (created_time, source_id), strictly after `after`."""
        ...

    async def revoke(self, source_id: str, when: datetime) -> SourceRecord | None:
        """Mark a source revoked (idempotent); None when it does not exist."""
        ...


class ClaimOutcome(enum.Enum):
    """What a dedup claim found for one message id."""

    NEW = "new"
    """Nobody held the id: it is now held (pending) by the caller."""
    DUPLICATE = "duplicate"
    """The id's event was appended within the window."""
    IN_FLIGHT = "in_flight"
    """Another request holds the id and its append has not finished (or crashed recently)."""


class DedupStore(Protocol):
    """Exact deduplication of (source, message id) across every collector replica.

    A claim holds an id for a short pending time while its event is appended; `confirm` then
    extends it to the full window, and `release` drops it when the append failed, so an event
    that was never acknowledged can be resent.
    """

    async def claim(
        self, source_id: str, message_ids: Sequence[str], pending_seconds: int
    ) -> dict[str, ClaimOutcome]:
        """Try to hold every id; answers per id. `message_ids` must be distinct."""
        ...

    async def confirm(
        self, source_id: str, message_ids: Sequence[str], window_seconds: int
    ) -> None:
        """The events of these ids were appended: remember them for the window."""
        ...

    async def release(self, source_id: str, message_ids: Sequence[str]) -> None:
        """The append failed: forget these ids."""
        ...


class SuppressionStore(Protocol):
    """Hashed identifiers of erased people (see `suppression.identifier_hash`)."""

    async def add(self, identifier_hashes: Collection[str], reason: str) -> None:
        """Suppress these identifiers (idempotent)."""
        ...

    async def added_since(self, since: datetime | None) -> list[tuple[str, datetime]]:
        """(hash, created time) of the rows created at or after `since` (all when None)."""
        ...
