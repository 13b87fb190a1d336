"""Reads of the profile read model (owned by the profile service) for in-process evaluation."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from upm_profile.store import tables as t
from upm_segment.evaluate import EventRecord, ProfileData, TraitValue

_TYPED = {
    "string": "text_value",
    "number": "num_value",
    "boolean": "bool_value",
    "timestamp": "time_value",
}
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
    ids = sorted(set(profile_ids))
    live: set[str] = set()
    for start in range(0, len(ids), 500):
        rows = await conn.execute(
            select(t.profiles.c.id).where(
                t.profiles.c.id.in_(ids[start : start + 500]), t.profiles.c.merged_into.is_(None)
            )
        )
        live.update(row[0] for row in rows)
    return live


def trait_value(row: Any) -> TraitValue:
    column = _TYPED.get(row.value_type)
    value = getattr(row, column) if column else row.value
    return TraitValue(row.value_type, value)


async def load_profile(
    conn: AsyncConnection,
    profile_id: str,
    *,
    event_names: Collection[str] | None = None,
) -> ProfileData:
    """Everything the evaluator needs of one profile; events only of `event_names` when given."""
    return (await load_profiles(conn, [profile_id], event_names=event_names))[profile_id]


async def load_profiles(
    conn: AsyncConnection,
    profile_ids: Collection[str],
    *,
    event_names: Collection[str] | None = None,
    chunk_size: int = 500,
) -> dict[str, ProfileData]:
    """`load_profile` for many profiles, a few queries per chunk of ids."""
    found = {pid: ProfileData(pid) for pid in profile_ids}
    ids = sorted(found)
    for start in range(0, len(ids), chunk_size):
        chunk = ids[start : start + chunk_size]
        for row in await conn.execute(select(t.traits).where(t.traits.c.profile_id.in_(chunk))):
            found[row.profile_id].traits[row.name] = trait_value(row)
        consents = await conn.execute(
            select(
                t.consents.c.profile_id,
                t.consents.c.channel,
                t.consents.c.purpose,
                t.consents.c.status,
            ).where(t.consents.c.profile_id.in_(chunk))
        )
        for row in consents:
            found[row.profile_id].consents[(row.channel, row.purpose)] = row.status
        kinds = await conn.execute(
            select(t.identifiers.c.profile_id, t.identifiers.c.type)
            .where(t.identifiers.c.profile_id.in_(chunk))
            .distinct()
        )
        for row in kinds:
            found[row.profile_id].identifier_types.add(row.type)
        if event_names is not None and not event_names:
            continue
        query = select(
            t.events.c.profile_id,
            t.events.c.name,
            t.events.c.type,
            t.events.c.event_time,
            t.events.c.properties,
        ).where(t.events.c.profile_id.in_(chunk))
        if event_names is not None:
            query = query.where(t.events.c.name.in_(sorted(event_names)))
        for row in await conn.execute(query):
            found[row.profile_id].events.append(
                EventRecord(row.name, row.type, row.event_time, row.properties or {})
            )
    return found
