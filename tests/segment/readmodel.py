"""Write hand-built or generated profiles into the profile read model (Core bulk inserts), and
check the SQL compiler against the in-process evaluator on them."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from upm_common.db import create_engine
from upm_profile.store import tables as t
from upm_segment import model as m
from upm_segment.compile import SqlCompiler, prepare_read
from upm_segment.evaluate import ProfileData, evaluate

CREATED = datetime(2026, 1, 1, tzinfo=UTC)


async def create_read_model(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(
            lambda sync: t.metadata.create_all(sync, tables=list(t.READ_MODEL_TABLES))
        )


async def clear_read_model(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for table in t.READ_MODEL_TABLES:
            await conn.execute(delete(table))


def _trait_row(profile_id: str, name: str, value_type: str, value: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "profile_id": profile_id,
        "name": name,
        "value_type": value_type,
        "value": value.isoformat() if isinstance(value, datetime) else value,
        "num_value": None,
        "text_value": None,
        "bool_value": None,
        "time_value": None,
        "updated_time": CREATED,
        "source": "test",
        "event_id": "",
    }
    column = {
        "string": "text_value",
        "number": "num_value",
        "boolean": "bool_value",
        "timestamp": "time_value",
    }.get(value_type)
    if column:
        row[column] = value
    return row


async def insert_profiles(
    engine: AsyncEngine, profiles: Sequence[ProfileData], *, merged: Sequence[str] = ()
) -> None:
    """Insert profiles with their traits, consents, identifiers and events, deriving the event
    counts and daily buckets the way the profile service maintains them."""
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for profile in profiles:
        pid = profile.profile_id
        rows["profiles"].append(
            {"id": pid, "created_time": CREATED, "updated_time": CREATED, "merged_into": None}
        )
        for name, trait in profile.traits.items():
            rows["traits"].append(_trait_row(pid, name, trait.value_type, trait.value))
        for (channel, purpose), status in profile.consents.items():
            rows["consents"].append(
                {
                    "profile_id": pid,
                    "channel": channel,
                    "purpose": purpose,
                    "status": status,
                    "updated_time": CREATED,
                    "source": "test",
                }
            )
        for index, kind in enumerate(sorted(profile.identifier_types)):
            rows["identifiers"].append(
                {
                    "type": kind,
                    "value": f"{pid}-{index}",
                    "profile_id": pid,
                    "created_time": CREATED,
                }
            )
        counts: dict[str, list[datetime]] = defaultdict(list)
        daily: dict[tuple[str, Any], list[float]] = defaultdict(lambda: [0, 0.0])
        for index, event in enumerate(profile.events):
            rows["events"].append(
                {
                    "id": f"{pid}-e{index}",
                    "profile_id": pid,
                    "type": event.type,
                    "name": event.name,
                    "event_time": event.time,
                    "received_time": event.time,
                    "properties": json.loads(json.dumps(event.properties)),
                    "context": {},
                }
            )
            counts[event.name].append(event.time)
            bucket = daily[(event.name, event.time.astimezone(UTC).date())]
            bucket[0] += 1
            revenue = event.properties.get("revenue")
            if isinstance(revenue, int | float) and not isinstance(revenue, bool):
                bucket[1] += float(revenue)
        for name, times in counts.items():
            rows["event_counts"].append(
                {
                    "profile_id": pid,
                    "name": name,
                    "count": len(times),
                    "first_time": min(times),
                    "last_time": max(times),
                }
            )
        for (name, day), (count, revenue) in daily.items():
            rows["event_daily"].append(
                {"profile_id": pid, "name": name, "day": day, "count": count, "revenue": revenue}
            )
    for merged_id in merged:
        rows["profiles"].append(
            {
                "id": merged_id,
                "created_time": CREATED,
                "updated_time": CREATED,
                "merged_into": profiles[0].profile_id,
            }
        )
    async with engine.begin() as conn:
        for key in (
            "profiles",
            "traits",
            "consents",
            "identifiers",
            "events",
            "event_counts",
            "event_daily",
        ):
            if rows[key]:
                await conn.execute(insert(getattr(t, key)), rows[key])


@asynccontextmanager
async def holding(url: str, population: Sequence[ProfileData]) -> AsyncIterator[AsyncEngine]:
    """An engine on a read model holding only `population`, disposed of on leaving."""
    engine = create_engine(url)
    try:
        await create_read_model(engine)
        await clear_read_model(engine)
        await insert_profiles(engine, population)
        yield engine
    finally:
        await engine.dispose()


async def check_agreement(
    url: str,
    population: list[ProfileData],
    definitions: list[m.Condition],
    now: datetime,
    *,
    prepare: bool = False,
) -> None:
    """The compiler's members and count of each definition are the evaluator's, on a fresh
    read model holding `population` (with `prepare`, under the service's session settings)."""
    async with holding(url, population) as engine:
        compiler = SqlCompiler(engine.dialect.name, now)
        async with engine.connect() as conn:
            if prepare:
                await prepare_read(conn)
            for definition in definitions:
                expected = sorted(p.profile_id for p in population if evaluate(definition, p, now))
                rows = await conn.execute(compiler.members_query(definition))
                assert [row[0] for row in rows] == expected, definition
                count = (await conn.execute(compiler.count_query(definition))).scalar_one()
                assert count == len(expected), definition
