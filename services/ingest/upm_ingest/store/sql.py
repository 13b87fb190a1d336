"""SQL backends of the ingest stores (SQLite and PostgreSQL through SQLAlchemy Core)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from upm_ingest.store import ClaimOutcome, SourceLimitOverrides, SourceRecord
from upm_ingest.store.tables import dedup, sources, suppressions

# Rows per statement: keeps bound parameters well below SQLite's and PostgreSQL's limits.
_CHUNK = 1000


def _now() -> datetime:
    return datetime.now(UTC)


def _insert(engine: AsyncEngine, table: Any) -> Any:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _record(row: Any) -> SourceRecord:
    return SourceRecord(
        source_id=row.source_id,
        display_name=row.display_name,
        write_key_prefix=row.write_key_prefix,
        limits=SourceLimitOverrides(
            max_event_bytes=row.max_event_bytes,
            max_batch_bytes=row.max_batch_bytes,
            max_batch_events=row.max_batch_events,
            rate_per_second=row.rate_per_second,
            burst=row.burst,
        ),
        created_time=row.created_time,
        revoked_time=row.revoked_time,
    )


class SqlSourceStore:
    """Sources in table ingest_sources."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, record: SourceRecord, write_key_hash: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                sources.insert().values(
                    source_id=record.source_id,
                    display_name=record.display_name,
                    write_key_hash=write_key_hash,
                    write_key_prefix=record.write_key_prefix,
                    max_event_bytes=record.limits.max_event_bytes,
                    max_batch_bytes=record.limits.max_batch_bytes,
                    max_batch_events=record.limits.max_batch_events,
                    rate_per_second=record.limits.rate_per_second,
                    burst=record.limits.burst,
                    created_time=record.created_time,
                    revoked_time=record.revoked_time,
                )
            )

    async def get_by_key_hash(self, write_key_hash: str) -> SourceRecord | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(sources).where(sources.c.write_key_hash == write_key_hash)
                )
            ).first()
        return _record(row) if row is not None else None

    async def list(
        self, *, page_size: int, after: tuple[datetime, str] | None, show_revoked: bool
    ) -> list[SourceRecord]:
        query = select(sources).order_by(sources.c.created_time, sources.c.source_id)
        if not show_revoked:
            query = query.where(sources.c.revoked_time.is_(None))
        if after is not None:
            created, source_id = after
            query = query.where(
                or_(
                    sources.c.created_time > created,
                    and_(sources.c.created_time == created, sources.c.source_id > source_id),
                )
            )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.limit(page_size))).all()
        return [_record(row) for row in rows]

    async def revoke(self, source_id: str, when: datetime) -> SourceRecord | None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(sources)
                .where(sources.c.source_id == source_id, sources.c.revoked_time.is_(None))
                .values(revoked_time=when)
            )
            row = (
                await conn.execute(select(sources).where(sources.c.source_id == source_id))
            ).first()
        return _record(row) if row is not None else None


class SqlDedupStore:
    """Dedup by the primary key (source_id, message_id) of table ingest_dedup.

    A claim inserts the id, or takes over a row whose time has run out, in one upsert; the ids
    the upsert did not return were held already, and a second read tells pending from done.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def claim(
        self, source_id: str, message_ids: Sequence[str], pending_seconds: int
    ) -> dict[str, ClaimOutcome]:
        now = _now()
        expires = now + timedelta(seconds=pending_seconds)
        outcomes: dict[str, ClaimOutcome] = {}
        async with self._engine.begin() as conn:
            for start in range(0, len(message_ids), _CHUNK):
                chunk = message_ids[start : start + _CHUNK]
                stmt = _insert(self._engine, dedup).values(
                    [
                        {
                            "source_id": source_id,
                            "message_id": message_id,
                            "pending": 1,
                            "expires_time": expires,
                        }
                        for message_id in chunk
                    ]
                )
                stmt = stmt.on_conflict_do_update(
                    index_elements=[dedup.c.source_id, dedup.c.message_id],
                    set_={"pending": 1, "expires_time": expires},
                    where=dedup.c.expires_time <= now,
                ).returning(dedup.c.message_id)
                claimed = set((await conn.execute(stmt)).scalars().all())
                for message_id in chunk:
                    if message_id in claimed:
                        outcomes[message_id] = ClaimOutcome.NEW
                held = [m for m in chunk if m not in claimed]
                if held:
                    rows = await conn.execute(
                        select(dedup.c.message_id, dedup.c.pending).where(
                            dedup.c.source_id == source_id, dedup.c.message_id.in_(held)
                        )
                    )
                    for message_id, pending in rows:
                        outcomes[message_id] = (
                            ClaimOutcome.IN_FLIGHT if pending else ClaimOutcome.DUPLICATE
                        )
        return outcomes

    async def confirm(
        self, source_id: str, message_ids: Sequence[str], window_seconds: int
    ) -> None:
        expires = _now() + timedelta(seconds=window_seconds)
        async with self._engine.begin() as conn:
            for start in range(0, len(message_ids), _CHUNK):
                chunk = message_ids[start : start + _CHUNK]
                await conn.execute(
                    update(dedup)
                    .where(dedup.c.source_id == source_id, dedup.c.message_id.in_(chunk))
                    .values(pending=0, expires_time=expires)
                )

    async def release(self, source_id: str, message_ids: Sequence[str]) -> None:
        async with self._engine.begin() as conn:
            for start in range(0, len(message_ids), _CHUNK):
                chunk = message_ids[start : start + _CHUNK]
                await conn.execute(
                    delete(dedup).where(
                        dedup.c.source_id == source_id,
                        dedup.c.message_id.in_(chunk),
                        dedup.c.pending == 1,
                    )
                )

    async def purge_expired(self, limit: int = 10_000) -> int:
        """Delete rows whose time has run out; returns how many (for a periodic worker)."""
        now = _now()
        async with self._engine.begin() as conn:
            keys = (
                await conn.execute(
                    select(dedup.c.source_id, dedup.c.message_id)
                    .where(dedup.c.expires_time <= now)
                    .limit(limit)
                )
            ).all()
            if not keys:
                return 0
            await conn.execute(
                delete(dedup).where(
                    tuple_(dedup.c.source_id, dedup.c.message_id).in_([tuple(k) for k in keys]),
                    dedup.c.expires_time <= now,
                )
            )
        return len(keys)


class SqlSuppressionStore:
    """Suppressed identifier hashes in table ingest_suppressions."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, identifier_hashes: Collection[str], reason: str) -> None:
        if not identifier_hashes:
            return
        now = _now()
        stmt = (
            _insert(self._engine, suppressions)
            .values(
                [
                    {"identifier_hash": h, "reason": reason[:200], "created_time": now}
                    for h in sorted(set(identifier_hashes))
                ]
            )
            .on_conflict_do_nothing(index_elements=[suppressions.c.identifier_hash])
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def added_since(self, since: datetime | None) -> list[tuple[str, datetime]]:
        query = select(suppressions.c.identifier_hash, suppressions.c.created_time)
        if since is not None:
            query = query.where(suppressions.c.created_time >= since)
        async with self._engine.connect() as conn:
            return [(row[0], row[1]) for row in await conn.execute(query)]
