"""The change feed: ProfileChange records written in the same transaction as the change.

With the SQL event log the change is appended to the `profile-changes` topic inside the store's
transaction (the log table is the outbox). With another backend (Redis Streams) the change goes
to the `profile_outbox` table in that transaction and a relay worker moves it to the log, in
order, deleting what it moved; a crash between the two re-sends, so consumers drop repeated
`change_id`s.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol

import structlog
from google.protobuf import timestamp_pb2
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from upm.common.v1 import event_pb2
from upm.profile.v1 import profile_service_pb2 as pb
from upm_common.db import driver_connection
from upm_common.eventlog import PROFILE_CHANGES, EventLog, LogRecord
from upm_profile.effects import EVENT_TYPE_VALUES, public_event_id
from upm_profile.identifiers import IdentifierKey, to_proto
from upm_profile.store.tables import outbox

log = structlog.get_logger(__name__)


def change(
    kind: pb.ProfileChangeType.ValueType,
    profile_id: str,
    *,
    merged: Iterable[str] = (),
    split: Iterable[str] = (),
    trait_names: Iterable[str] = (),
    identifiers: Iterable[IdentifierKey] = (),
    event_id: str = "",
    event_name: str = "",
    event_type: str = "",
    event_time: datetime | None = None,
) -> pb.ProfileChange:
    # Set field by field on an empty message: building a kwargs dict and a datetime for the
    # change time cost more than the record itself (one record per event on the hot path).
    record = pb.ProfileChange()
    record.change_id = os.urandom(16).hex()
    record.type = kind
    if profile_id:
        record.profile_id = profile_id
    if merged:
        record.merged_profile_ids.extend(merged)
    if split:
        record.split_profile_ids.extend(split)
    if trait_names:
        record.trait_names.extend(sorted(trait_names))
    if identifiers:
        record.identifiers.extend([to_proto(k) for k in identifiers])
    if event_id:
        record.event_id = public_event_id(event_id)
    if event_name:
        record.event_name = event_name
    if event_type:
        record.event_type = EVENT_TYPE_VALUES.get(event_type, event_pb2.EVENT_TYPE_UNSPECIFIED)
    # The wall clock at microsecond precision, as datetime.now() gave it.
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    stamp = record.change_time
    stamp.seconds = seconds
    stamp.nanos = micros * 1000
    if event_time is not None:
        _set_time(record.event_time, event_time)
    return record


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _set_time(target: timestamp_pb2.Timestamp, moment: datetime) -> None:
    """Timestamp.FromDatetime without its per-call overhead (the change feed's hot path)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    target.seconds = delta.days * 86400 + delta.seconds
    target.nanos = delta.microseconds * 1000


class ChangePublisher(Protocol):
    """Writes changes inside the caller's transaction."""

    async def publish(self, conn: AsyncConnection, changes: Sequence[pb.ProfileChange]) -> None:
        """Make `changes` part of the transaction of `conn`."""
        ...


class AppendIn(Protocol):
    async def append_in(
        self, conn: AsyncConnection, topic: str, records: Sequence[LogRecord]
    ) -> list[str]: ...


def _records(changes: Sequence[pb.ProfileChange]) -> list[LogRecord]:
    return [LogRecord(key=c.profile_id, payload=c.SerializeToString()) for c in changes]


class SqlLogPublisher:
    """Appends to the SQL event log in the same transaction."""

    def __init__(self, event_log: AppendIn) -> None:
        self._log = event_log

    async def publish(self, conn: AsyncConnection, changes: Sequence[pb.ProfileChange]) -> None:
        if changes:
            await self._log.append_in(conn, PROFILE_CHANGES, _records(changes))


class OutboxPublisher:
    """Writes to profile_outbox; `relay` moves the rows to the event log."""

    async def publish(self, conn: AsyncConnection, changes: Sequence[pb.ProfileChange]) -> None:
        if not changes:
            return
        now = datetime.now(UTC)
        if conn.dialect.name == "postgresql":
            # About one change per applied event: COPY, not a statement per row.
            driver = await driver_connection(conn)
            await driver.copy_records_to_table(
                outbox.name,
                records=[(r.key, r.payload, now) for r in _records(changes)],
                columns=["key", "payload", "created_time"],
            )
            return
        await conn.execute(
            insert(outbox),
            [{"key": r.key, "payload": r.payload, "created_time": now} for r in _records(changes)],
        )


class NullPublisher:
    """Publishes nothing (tools and tests that do not need the feed)."""

    async def publish(self, conn: AsyncConnection, changes: Sequence[pb.ProfileChange]) -> None:
        return None


# The advisory lock that lets one relay at a time move rows on PostgreSQL ("upm outbox").
_RELAY_LOCK = 0x75706D6F7574626F


async def relay_once(engine: AsyncEngine, event_log: EventLog, batch_size: int = 2000) -> int:
    """Move up to `batch_size` outbox rows to the change feed, oldest first; returns how many
    moved (0 also when another relay is moving rows right now)."""
    if engine.dialect.name == "postgresql":
        return await _relay_once_pg(engine, event_log, batch_size)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(outbox.c.id, outbox.c.key, outbox.c.payload)
                .order_by(outbox.c.id)
                .limit(batch_size)
            )
        ).all()
    if not rows:
        return 0
    await event_log.append(PROFILE_CHANGES, [LogRecord(key=r.key, payload=r.payload) for r in rows])
    async with engine.begin() as conn:
        await conn.execute(delete(outbox).where(outbox.c.id.in_([r.id for r in rows])))
    return len(rows)


async def _relay_once_pg(engine: AsyncEngine, event_log: EventLog, batch_size: int) -> int:
    """One transaction: take the relay lock (or give up at once), delete the oldest rows and
    append them, then commit. Rows leave the outbox only if the append succeeded; a crash
    after the append and before the commit sends them again (consumers drop repeated
    change ids). One relay at a time keeps the feed in outbox order across pods."""
    async with engine.begin() as conn:
        driver = await driver_connection(conn)
        if not await driver.fetchval("SELECT pg_try_advisory_xact_lock($1)", _RELAY_LOCK):
            return 0
        rows = await driver.fetch(
            "DELETE FROM profile_outbox WHERE id IN"
            " (SELECT id FROM profile_outbox ORDER BY id LIMIT $1)"
            " RETURNING id, key, payload",
            batch_size,
        )
        if not rows:
            return 0
        rows = sorted(rows, key=lambda row: row[0])
        await event_log.append(PROFILE_CHANGES, [LogRecord(key=r[1], payload=r[2]) for r in rows])
    return len(rows)


async def relay_forever(
    engine: AsyncEngine, event_log: EventLog, idle_seconds: float = 0.1
) -> None:
    """The outbox relay worker (only when the event log is not the SQL one)."""
    while True:
        try:
            moved = await relay_once(engine, event_log)
        except Exception:
            log.exception("outbox_relay_failed")
            moved = 0
            await asyncio.sleep(1.0)
        if moved == 0:
            await asyncio.sleep(idle_seconds)
