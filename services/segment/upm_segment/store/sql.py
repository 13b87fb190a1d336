"""SQL storage of segment definitions and memberships (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf import json_format
from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from upm.segment.v1 import segment_service_pb2 as pb
from upm_common.errors import AbortedError, AlreadyExistsError, NotFoundError
from upm_segment import model as m
from upm_segment.convert import from_proto, to_proto
from upm_segment.store.id_lists import id_chunks, id_in
from upm_segment.store.tables import segment_definitions as defs
from upm_segment.store.tables import segment_memberships as members


@dataclass(frozen=True)
class SegmentRecord:
    id: str
    name: str
    description: str
    definition: m.Condition
    text: str
    version: int
    etag: str
    create_time: datetime
    update_time: datetime
    materialized_version: int | None = None


@dataclass(frozen=True)
class MembershipRow:
    segment_id: str
    profile_id: str
    member: bool
    segment_version: int
    next_check_time: datetime | None


def _definition_json(definition: m.Condition) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(to_proto(definition))
    return result


def _record(row: Any) -> SegmentRecord:
    message = json_format.ParseDict(row.definition, pb.Condition())
    return SegmentRecord(
        id=row.id,
        name=row.name,
        description=row.description,
        definition=from_proto(message),
        text=row.text,
        version=row.version,
        etag=row.etag,
        create_time=row.create_time,
        update_time=row.update_time,
        materialized_version=row.materialized_version,
    )


def _not_found(segment_id: str) -> NotFoundError:
    return NotFoundError(
        f"segment {segment_id!r} not found", resource_type="segment", resource_name=segment_id
    )


def new_etag() -> str:
    return uuid.uuid4().hex


class SqlSegmentStore:
    """Segment definitions and memberships in the service database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # --- definitions --------------------------------------------------------------------------

    async def create(self, record: SegmentRecord) -> SegmentRecord:
        async with self.engine.begin() as conn:
            exists = await conn.execute(select(defs.c.id).where(defs.c.id == record.id))
            if exists.first() is not None:
                raise AlreadyExistsError(f"segment {record.id!r} already exists")
            await conn.execute(
                insert(defs).values(
                    id=record.id,
                    name=record.name,
                    description=record.description,
                    definition=_definition_json(record.definition),
                    text=record.text,
                    referenced_ids=sorted(m.referenced_segments(record.definition)),
                    version=record.version,
                    etag=record.etag,
                    create_time=record.create_time,
                    update_time=record.update_time,
                    materialized_version=None,
                )
            )
        return record

    async def get(self, segment_id: str) -> SegmentRecord:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(defs).where(defs.c.id == segment_id))).first()
        if row is None:
            raise _not_found(segment_id)
        return _record(row)

    async def list_page(self, *, after: str, limit: int) -> list[SegmentRecord]:
        query = select(defs).order_by(defs.c.id).limit(limit)
        if after:
            query = query.where(defs.c.id > after)
        async with self.engine.connect() as conn:
            return [_record(row) for row in await conn.execute(query)]

    async def all(self) -> list[SegmentRecord]:
        async with self.engine.connect() as conn:
            return [_record(row) for row in await conn.execute(select(defs).order_by(defs.c.id))]

    async def definitions(self) -> dict[str, m.Condition]:
        return {record.id: record.definition for record in await self.all()}

    async def update(self, record: SegmentRecord, *, expected_etag: str) -> SegmentRecord:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(defs)
                .where(defs.c.id == record.id, defs.c.etag == expected_etag)
                .values(
                    name=record.name,
                    description=record.description,
                    definition=_definition_json(record.definition),
                    text=record.text,
                    referenced_ids=sorted(m.referenced_segments(record.definition)),
                    version=record.version,
                    etag=record.etag,
                    update_time=record.update_time,
                )
            )
            if result.rowcount != 1:
                raise AbortedError(
                    f"segment {record.id!r} changed concurrently; read it again and retry"
                )
        return record

    async def referrers(self, segment_id: str) -> list[str]:
        return [
            record.id
            for record in await self.all()
            if segment_id in m.referenced_segments(record.definition)
        ]

    async def delete(self, segment_id: str, *, etag: str = "") -> None:
        async with self.engine.begin() as conn:
            query = delete(defs).where(defs.c.id == segment_id)
            if etag:
                query = query.where(defs.c.etag == etag)
            result = await conn.execute(query)
            if result.rowcount != 1:
                exists = await conn.execute(select(defs.c.id).where(defs.c.id == segment_id))
                if exists.first() is None:
                    raise _not_found(segment_id)
                raise AbortedError(f"segment {segment_id!r} changed; its etag is not {etag!r}")
            await conn.execute(delete(members).where(members.c.segment_id == segment_id))

    async def mark_materialized(self, segment_id: str, version: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(defs)
                .where(defs.c.id == segment_id, defs.c.version == version)
                .values(materialized_version=version)
            )

    # --- memberships --------------------------------------------------------------------------

    async def memberships(
        self, conn: AsyncConnection, pairs: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], MembershipRow]:
        """Stored rows for (segment id, profile id) pairs (looked up by profile id)."""
        wanted = set(pairs)
        rows = await self.profile_rows(conn, [profile for _, profile in wanted])
        return {key: row for row in rows if (key := (row.segment_id, row.profile_id)) in wanted}

    async def segment_members(self, conn: AsyncConnection, segment_id: str) -> set[str]:
        rows = await conn.execute(
            select(members.c.profile_id).where(
                members.c.segment_id == segment_id, members.c.member.is_(True)
            )
        )
        return {row[0] for row in rows}

    async def profile_rows(
        self, conn: AsyncConnection, profile_ids: Sequence[str]
    ) -> list[MembershipRow]:
        dialect = conn.dialect.name
        found = []
        for chunk in id_chunks(profile_ids, dialect):
            rows = await conn.execute(
                select(members).where(id_in(members.c.profile_id, chunk, dialect))
            )
            found += [
                MembershipRow(
                    r.segment_id, r.profile_id, r.member, r.segment_version, r.next_check_time
                )
                for r in rows.all()
            ]
        return found

    async def save_memberships(
        self, conn: AsyncConnection, rows: Sequence[MembershipRow], now: datetime
    ) -> None:
        """Upsert the rows of members and of pairs with a pending edge; delete the others."""
        if not rows:
            return
        drop: dict[str, list[str]] = {}
        keep = []
        for row in rows:
            if row.member or row.next_check_time is not None:
                keep.append(
                    {
                        "segment_id": row.segment_id,
                        "profile_id": row.profile_id,
                        "member": row.member,
                        "segment_version": row.segment_version,
                        "changed_time": now,
                        "next_check_time": row.next_check_time,
                    }
                )
            else:
                drop.setdefault(row.segment_id, []).append(row.profile_id)
        dialect = conn.dialect.name
        for segment_id, profile_ids in drop.items():
            for chunk in id_chunks(profile_ids, dialect):
                await conn.execute(
                    delete(members).where(
                        members.c.segment_id == segment_id,
                        id_in(members.c.profile_id, chunk, dialect),
                    )
                )
        if keep:
            upsert = (
                postgresql.insert(members) if dialect == "postgresql" else sqlite.insert(members)
            )
            statement = upsert.on_conflict_do_update(
                index_elements=[members.c.segment_id, members.c.profile_id],
                set_={
                    "member": upsert.excluded.member,
                    "segment_version": upsert.excluded.segment_version,
                    "changed_time": upsert.excluded.changed_time,
                    "next_check_time": upsert.excluded.next_check_time,
                },
            )
            for start in range(0, len(keep), 1000):
                await conn.execute(statement, keep[start : start + 1000])

    async def due(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(segment id, profile id) pairs whose next window edge has passed, oldest first."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(members.c.segment_id, members.c.profile_id)
                .where(
                    and_(members.c.next_check_time.is_not(None), members.c.next_check_time <= now)
                )
                .order_by(members.c.next_check_time)
                .limit(limit)
            )
            return [(row[0], row[1]) for row in rows]
