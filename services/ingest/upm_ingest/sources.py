"""Sources and their write keys: create, authenticate, list, revoke.

Write keys are random tokens shown once at creation and stored only as SHA-256 hex digests;
a write key is a source id and a rate-limit key, not a secret for browsers (it is embedded in
pages), so a plain fast hash is enough and lets every request be checked with one lookup.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from upm_common.errors import InvalidArgumentError, NotFoundError, UnauthenticatedError
from upm_ingest.store import SourceLimitOverrides, SourceRecord, SourceStore

INTERNAL_SOURCE_ID = "internal"
REFRESH_AHEAD = 0.8
"""Fraction of the cache time after which a used entry is refreshed in the background."""
WRITE_KEY_PREFIX = "upmwk_"
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50


def hash_write_key(write_key: str) -> str:
    return hashlib.sha256(write_key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Limits:
    """The effective limits of one source (defaults merged with the source's overrides)."""

    max_event_bytes: int
    max_batch_bytes: int
    max_batch_events: int
    rate_per_second: float
    burst: int

    def with_overrides(self, overrides: SourceLimitOverrides) -> Limits:
        return Limits(
            max_event_bytes=overrides.max_event_bytes or self.max_event_bytes,
            max_batch_bytes=overrides.max_batch_bytes or self.max_batch_bytes,
            max_batch_events=overrides.max_batch_events or self.max_batch_events,
            rate_per_second=overrides.rate_per_second or self.rate_per_second,
            burst=overrides.burst or self.burst,
        )


@dataclass(frozen=True, slots=True)
class Source:
    """An authenticated caller: the source id events are attributed to, and its limits."""

    source_id: str
    limits: Limits


def _encode_token(record: SourceRecord) -> str:
    raw = f"{record.created_time.isoformat()}|{record.source_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        created, source_id = raw.split("|", 1)
        return datetime.fromisoformat(created), source_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgumentError.for_field("page_token", "is not a valid page token") from None


class SourceRegistry:
    """Source management and write-key authentication, with a short positive/negative cache."""

    def __init__(self, store: SourceStore, defaults: Limits, *, cache_seconds: float = 5.0) -> None:
        self._store = store
        self.defaults = defaults
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, SourceRecord | None]] = {}
        self._lookups: dict[str, asyncio.Future[SourceRecord | None]] = {}
        self.internal = Source(INTERNAL_SOURCE_ID, defaults)

    async def create(
        self, display_name: str, overrides: SourceLimitOverrides
    ) -> tuple[SourceRecord, str]:
        """Register a source; returns it and its write key (which is not stored)."""
        display_name = display_name.strip()
        if not display_name:
            raise InvalidArgumentError.for_field("display_name", "is required")
        if len(display_name) > 200:
            raise InvalidArgumentError.for_field("display_name", "longer than 200 characters")
        for name in ("max_event_bytes", "max_batch_bytes", "max_batch_events", "burst"):
            if getattr(overrides, name) < 0:
                raise InvalidArgumentError.for_field(f"limits.{name}", "must not be negative")
        if overrides.rate_per_second < 0:
            raise InvalidArgumentError.for_field("limits.rate_per_second", "must not be negative")
        write_key = WRITE_KEY_PREFIX + secrets.token_urlsafe(24)
        record = SourceRecord(
            source_id="src_" + uuid.uuid4().hex[:20],
            display_name=display_name,
            write_key_prefix=write_key[:12],
            limits=overrides,
            created_time=datetime.now(UTC),
        )
        await self._store.create(record, hash_write_key(write_key))
        return record, write_key

    async def authenticate(self, write_key: str) -> Source:
        """The active source of a write key, or UnauthenticatedError."""
        if not write_key or len(write_key) > 256:
            raise UnauthenticatedError("a valid write key is required", reason="WRITE_KEY_INVALID")
        digest = hash_write_key(write_key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is None or now - cached[0] >= self._cache_seconds:
            record = await self._lookup(digest)
        else:
            record = cached[1]
            age = now - cached[0]
            if age >= self._cache_seconds * REFRESH_AHEAD and digest not in self._lookups:
                # Refreshed in the background before it expires, so the requests of a busy
                # key never all wait for the store at once.
                self._start_lookup(digest)
        if record is None:
            raise UnauthenticatedError("unknown write key", reason="WRITE_KEY_INVALID")
        if record.revoked_time is not None:
            raise UnauthenticatedError("the write key was revoked", reason="WRITE_KEY_REVOKED")
        return Source(record.source_id, self.defaults.with_overrides(record.limits))

    async def _lookup(self, digest: str) -> SourceRecord | None:
        """One store lookup per key at a time: the requests that find the cache entry expired
        while a lookup runs share it, so under load an expiry costs one query, not one per
        request (which, with the store slower than the request rate, kept the cache cold)."""
        pending = self._lookups.get(digest) or self._start_lookup(digest)
        # A cancelled caller must not cancel the lookup the others wait for.
        return await asyncio.shield(pending)

    def _start_lookup(self, digest: str) -> asyncio.Future[SourceRecord | None]:
        pending = asyncio.ensure_future(self._fetch(digest))
        self._lookups[digest] = pending
        # A background refresh nobody awaits may fail (store down): the entry then expires
        # and the next request's own lookup reports the error, so this one is only marked
        # as retrieved.
        pending.add_done_callback(lambda done: done.cancelled() or done.exception())
        return pending

    async def _fetch(self, digest: str) -> SourceRecord | None:
        started = time.monotonic()
        try:
            record = await self._store.get_by_key_hash(digest)
        finally:
            self._lookups.pop(digest, None)
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[digest] = (started, record)
        return record

    async def list(
        self, *, page_size: int, page_token: str, show_revoked: bool
    ) -> tuple[list[SourceRecord], str]:
        if page_size < 0:
            raise InvalidArgumentError.for_field("page_size", "must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_token(page_token) if page_token else None
        records = await self._store.list(page_size=size + 1, after=after, show_revoked=show_revoked)
        if len(records) > size:
            return records[:size], _encode_token(records[size - 1])
        return records, ""

    async def revoke(self, source_id: str) -> SourceRecord:
        if not source_id:
            raise InvalidArgumentError.for_field("source_id", "is required")
        record = await self._store.revoke(source_id, datetime.now(UTC))
        if record is None:
            raise NotFoundError(
                f"source {source_id} not found", resource_type="source", resource_name=source_id
            )
        self._cache.clear()
        return record
