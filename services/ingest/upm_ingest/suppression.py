"""Suppression of erased people: their future events are dropped at the door.

Identifiers are kept hashed (SHA-256 of "<kind>:<value>"), so the suppression list holds no
PII. The profile service's erasure publishes the erased identifiers; `Suppressions.add` records
them. Lookups go through an in-memory copy of the list, refreshed every few seconds, so the hot
path makes no database round trip.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from upm.common.v1 import event_pb2
from upm_ingest.store import SuppressionStore


def identifier_hash(kind: str, value: str) -> str:
    """The stored form of one identifier, e.g. kind `user_id`."""
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


def event_hashes(event: event_pb2.Event) -> list[str]:
    """The hashes of the identities an event is about."""
    hashes = []
    if event.user_id:
        hashes.append(identifier_hash("user_id", event.user_id))
    if event.anonymous_id:
        hashes.append(identifier_hash("anonymous_id", event.anonymous_id))
    if event.previous_id:
        hashes.append(identifier_hash("user_id", event.previous_id))
        hashes.append(identifier_hash("anonymous_id", event.previous_id))
    return hashes


class Suppressions:
    """The suppression list, mirrored in memory: the hot path makes no database round trip.

    The mirror picks up rows added by any replica every `cache_seconds` (rows created since
    the last refresh) and reloads in full every `FULL_RELOAD_EVERY` refreshes, which also
    drops lifted suppressions.
    """

    FULL_RELOAD_EVERY = 12

    def __init__(self, store: SuppressionStore, *, cache_seconds: float = 5.0) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._hashes: set[str] = set()
        self._refreshed = float("-inf")
        self._since: datetime | None = None
        self._refreshes = 0
        self._lock = asyncio.Lock()

    async def add(self, identifiers: Iterable[tuple[str, str]], reason: str) -> None:
        """Suppress (kind, value) identifiers."""
        hashes = {identifier_hash(kind, value) for kind, value in identifiers}
        await self._store.add(hashes, reason)
        self._hashes |= hashes

    async def refresh(self, *, force: bool = False) -> None:
        """Bring the in-memory mirror up to date with the table."""
        if not force and time.monotonic() - self._refreshed < self._cache_seconds:
            return
        async with self._lock:
            if not force and time.monotonic() - self._refreshed < self._cache_seconds:
                return
            full = self._since is None or self._refreshes % self.FULL_RELOAD_EVERY == 0
            rows = await self._store.added_since(None if full else self._since)
            hashes = {digest for digest, _ in rows}
            if full:
                self._hashes = hashes
            else:
                self._hashes |= hashes
            if rows:
                newest = max(created for _, created in rows)
                # Rows of the same instant may still be committing: look back a little.
                self._since = newest - timedelta(seconds=self._cache_seconds + 1)
            elif self._since is None:
                self._since = datetime.now(UTC) - timedelta(seconds=self._cache_seconds + 1)
            self._refreshes += 1
            self._refreshed = time.monotonic()

    def matcher(self) -> Callable[[event_pb2.Event], bool] | None:
        """A test "is this event's person suppressed?" against the mirror as it is now, or
        None when nobody is suppressed (the common case: no per-event work at all). Call
        `refresh` first."""
        hashes = self._hashes
        if not hashes:
            return None

        def suppressed(event: event_pb2.Event) -> bool:
            return any(digest in hashes for digest in event_hashes(event))

        return suppressed
