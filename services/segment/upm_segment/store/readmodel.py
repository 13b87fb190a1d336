"""Reads of the profile read model (owned by the profile service) for in-process evaluation."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Text, and_, cast, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from upm_profile.store import tables as t
from upm_segment.evaluate import EventRecord, ProfileData, TraitValue
from upm_segment.store.id_lists import id_chunks, id_in

MAX_REDIRECTS = 16


async def live_profile_id(conn: AsyncConnection, profile_id: str) -> str | None:
    """The live profile an id stands for (following merges), or None when it does not exist."""
    current = profile_id
    for _ in range(MAX_REDIRECTS):
        row = (
            await conn.execute(select(t.profiles.c.merged_into).where(t.profiles.c.id == current))
        ).first()
        if row is None:
            return None
        if row.merged_into is None:
            return current
        current = row.merged_into
    return None


async def live_profiles(conn: AsyncConnection, profile_ids: Collection[str]) -> set[str]:
    """Those of `profile_ids` that exist and are not merged away."""
    dialect = conn.dialect.name
    live: set[str] = set()
    for chunk in id_chunks(profile_ids, dialect):
        rows = await conn.execute(
            select(t.profiles.c.id).where(
                id_in(t.profiles.c.id, chunk, dialect), t.profiles.c.merged_into.is_(None)
            )
        )
        live.update(rows.scalars().all())
    return live


def trait_value(row: Any) -> TraitValue:
    """A trait from its typed column, or from its JSON text for the other types."""
    value_type = row.value_type
    return TraitValue(
        value_type,
        typed_value(
            value_type,
            row.text_value,
            row.num_value,
            row.bool_value,
            row.time_value,
            json_text=row.value,
        ),
    )


def typed_value(
    value_type: str, text: Any, number: Any, flag: Any, moment: Any, *, json_text: Any
) -> Any:
    """A trait's value from the typed column of its type, or from its JSON text (`json_text`)
    for the types without one."""
    if value_type == "string":
        return text
    if value_type == "number":
        return number
    if value_type == "boolean":
        return flag
    if value_type == "timestamp":
        return moment
    return orjson.loads(json_text) if json_text else None


async def load_profile(
    conn: AsyncConnection,
    profile_id: str,
    *,
    events: Mapping[str, datetime | None] | None = None,
) -> ProfileData:
    """Everything the evaluator needs of one profile. With `events` (`event_horizons`), only
    the events of those names, and of each name only those at or after its horizon (None:
    all of them)."""
    return (await load_profiles(conn, [profile_id], events=events))[profile_id]


async def load_profiles(
    conn: AsyncConnection,
    profile_ids: Collection[str],
    *,
    events: Mapping[str, datetime | None] | None = None,
) -> dict[str, ProfileData]:
    """`load_profile` for many profiles: one query per table (per chunk of ids on SQLite).
    JSON comes back as text and is decoded here (orjson), and a trait's JSON value only for
    the types without a typed column."""
    dialect = conn.dialect.name
    found = {pid: ProfileData(pid) for pid in profile_ids}
    for chunk in id_chunks(found, dialect):
        traits = t.traits.c
        rows = await conn.execute(
            select(
                traits.profile_id,
                traits.name,
                traits.value_type,
                traits.text_value,
                traits.num_value,
                traits.bool_value,
                traits.time_value,
                cast(traits.value, Text).label("value"),
            ).where(id_in(traits.profile_id, chunk, dialect))
        )
        for row in rows.all():
            found[row.profile_id].traits[row.name] = trait_value(row)
        consents = t.consents.c
        rows = await conn.execute(
            select(consents.profile_id, consents.channel, consents.purpose, consents.status).where(
                id_in(consents.profile_id, chunk, dialect)
            )
        )
        for row in rows.all():
            found[row.profile_id].consents[(row.channel, row.purpose)] = row.status
        identifiers = t.identifiers.c
        rows = await conn.execute(
            select(identifiers.profile_id, identifiers.type)
            .where(id_in(identifiers.profile_id, chunk, dialect))
            .distinct()
        )
        for row in rows.all():
            found[row.profile_id].identifier_types.add(row.type)
        if events is not None and not events:
            continue
        columns = t.events.c
        query = select(
            columns.profile_id,
            columns.name,
            columns.type,
            columns.event_time,
            cast(columns.properties, Text).label("properties"),
        ).where(id_in(columns.profile_id, chunk, dialect))
        if events is not None:
            query = query.where(event_ranges(events))
        for profile_id, name, kind, moment, text in (await conn.execute(query)).all():
            properties = orjson.loads(text) if text else None
            found[profile_id].events.append(EventRecord(name, kind, moment, properties or {}))
    return found


def event_ranges(horizons: Mapping[str, datetime | None]) -> Any:
    """Events of the names in `horizons`, each from its horizon on."""
    columns = t.events.c
    whole = sorted(name for name, since in horizons.items() if since is None)
    ranges: list[ColumnElement[bool]] = [columns.name.in_(whole)] if whole else []
    ranges += [
        and_(columns.name == name, columns.event_time >= since)
        for name, since in sorted(horizons.items())
        if since is not None
    ]
    return or_(*ranges)
