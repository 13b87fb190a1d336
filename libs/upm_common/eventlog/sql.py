"""The SQL event log: a table used as a durable queue, the embedded default.

An append inserts the entries and, in the same transaction, one delivery row per consumer group.
A claim leases the oldest unleased (or lease-expired) deliveries of a group; an ack deletes them,
and an entry no group still needs is deleted with its last delivery. PostgreSQL claims with
FOR UPDATE SKIP LOCKED so concurrent consumers of a group never get the same entry; SQLite has a
single writer at a time, so claims cannot overlap there either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, exists, func, insert, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from upm_common.eventlog.base import (
    DEFAULT_MAX_ATTEMPTS,
    Delivery,
    LogRecord,
    dead_letter_topic,
)
from upm_common.eventlog.tables import deliveries, entries, groups

_POLL_MIN_SECONDS = 0.02
_POLL_MAX_SECONDS = 0.5


def _now() -> datetime:
    return datetime.now(UTC)


class SqlEventLog:
    """EventLog on the service database (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        self._engine = engine
        self._max_attempts = max_attempts
        self._skip_locked = engine.dialect.name == "postgresql"

    async def append(self, topic: str, records: Sequence[LogRecord]) -> list[str]:
        if not records:
            return []
        async with self._engine.begin() as conn:
            return await self.append_in(conn, topic, records)

    async def append_in(
        self, conn: AsyncConnection, topic: str, records: Sequence[LogRecord]
    ) -> list[str]:
        """Append inside the caller's transaction: the outbox of a service on the same database."""
        if not records:
            return []
        now = _now()
        result = await conn.execute(
            insert(entries).returning(entries.c.id, sort_by_parameter_order=True),
            [
                {"topic": topic, "key": r.key, "payload": r.payload, "appended_time": now}
                for r in records
            ],
        )
        ids = [row[0] for row in result]
        group_names = (
            await conn.execute(select(groups.c.group_name).where(groups.c.topic == topic))
        ).scalars()
        fan_out = [
            {"topic": topic, "group_name": g, "entry_id": entry_id, "attempts": 0}
            for g in group_names
            for entry_id in ids
        ]
        if fan_out:
            await conn.execute(insert(deliveries), fan_out)
        return [str(i) for i in ids]

    async def ensure_group(self, topic: str, group: str) -> None:
        async with self._engine.begin() as conn:
            known = await conn.scalar(
                select(groups.c.group_name).where(
                    groups.c.topic == topic, groups.c.group_name == group
                )
            )
            if known is not None:
                return
            await conn.execute(
                insert(groups).values(topic=topic, group_name=group, created_time=_now())
            )
            # A new group starts with everything still retained for the topic.
            await conn.execute(
                insert(deliveries).from_select(
                    ["topic", "group_name", "entry_id", "attempts"],
                    select(entries.c.topic, literal(group), entries.c.id, literal(0)).where(
                        entries.c.topic == topic
                    ),
                )
            )

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
        deadline = asyncio.get_running_loop().time() + block_seconds
        pause = _POLL_MIN_SECONDS
        while True:
            claimed = await self._claim_once(topic, group, consumer, max_count, lease_seconds)
            remaining = deadline - asyncio.get_running_loop().time()
            if claimed or remaining <= 0:
                return claimed
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX_SECONDS)

    async def _claim_once(
        self, topic: str, group: str, consumer: str, max_count: int, lease_seconds: float
    ) -> list[Delivery]:
        now = _now()
        async with self._engine.begin() as conn:
            candidates = (
                select(deliveries.c.entry_id, deliveries.c.attempts)
                .where(
                    deliveries.c.topic == topic,
                    deliveries.c.group_name == group,
                    or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now),
                )
                .order_by(deliveries.c.entry_id)
                .limit(max_count)
            )
            if self._skip_locked:
                candidates = candidates.with_for_update(skip_locked=True)
            rows = (await conn.execute(candidates)).all()
            if not rows:
                return []
            exhausted = [r.entry_id for r in rows if r.attempts >= self._max_attempts]
            live = {r.entry_id: r.attempts + 1 for r in rows if r.attempts < self._max_attempts}
            if exhausted:
                await self._dead_letter(conn, topic, group, exhausted)
            if not live:
                return []
            await conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.topic == topic,
                    deliveries.c.group_name == group,
                    deliveries.c.entry_id.in_(list(live)),
                )
                .values(
                    consumer=consumer,
                    lease_until=now + timedelta(seconds=lease_seconds),
                    attempts=deliveries.c.attempts + 1,
                )
            )
            payloads = await conn.execute(
                select(entries.c.id, entries.c.key, entries.c.payload)
                .where(entries.c.id.in_(list(live)))
                .order_by(entries.c.id)
            )
            return [
                Delivery(id=str(row.id), key=row.key, payload=row.payload, attempts=live[row.id])
                for row in payloads
            ]

    async def _dead_letter(
        self, conn: AsyncConnection, topic: str, group: str, entry_ids: list[int]
    ) -> None:
        rows = (
            await conn.execute(
                select(entries.c.key, entries.c.payload)
                .where(entries.c.id.in_(entry_ids))
                .order_by(entries.c.id)
            )
        ).all()
        await self.append_in(
            conn, dead_letter_topic(topic), [LogRecord(key=r.key, payload=r.payload) for r in rows]
        )
        await self._remove(conn, topic, group, entry_ids)

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        async with self._engine.begin() as conn:
            await self._remove(conn, topic, group, [int(i) for i in ids])

    async def _remove(
        self, conn: AsyncConnection, topic: str, group: str, entry_ids: list[int]
    ) -> None:
        await conn.execute(
            delete(deliveries).where(
                deliveries.c.topic == topic,
                deliveries.c.group_name == group,
                deliveries.c.entry_id.in_(entry_ids),
            )
        )
        still_needed = exists().where(deliveries.c.entry_id == entries.c.id)
        await conn.execute(delete(entries).where(and_(entries.c.id.in_(entry_ids), ~still_needed)))

    async def pending(self, topic: str, group: str) -> int:
        async with self._engine.connect() as conn:
            count = await conn.scalar(
                select(func.count()).where(
                    deliveries.c.topic == topic, deliveries.c.group_name == group
                )
            )
        return int(count or 0)

    async def close(self) -> None:
        """The engine belongs to the caller; nothing to release."""
