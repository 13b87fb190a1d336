"""Segment counts over the profile read model, beside a bare `count(*)` of the events table.

Full mode: 1,000,000 profiles and about 10,000,000 events in a fresh PostgreSQL database (loaded
with COPY from the seeded generator in bench/segment_datagen.py), and 100,000 profiles (about
1,000,000 events) in SQLite. Smoke mode: a few hundred profiles, only to prove it works.

For each database: the median time of `SELECT count(*) FROM profile_events` and of the counts of
three segments (the issue's, a 2-condition and an 8-condition one) counted the way the segment
service counts them (its SQL compiler, split into `segment_count_ranges` profile-id ranges
counted at once over one snapshot on PostgreSQL), with the ratio of each count to the bare
scan, and beside it the same count as one unsplit query. Queries run warm (one
unmeasured run first). Run: `python -m bench.segment_count [--smoke] [--cache]`.

Loading 10,000,000 events takes minutes, so the PostgreSQL dataset can be cached between runs:
with `--cache` (or UPM_BENCH_SEGMENT_CACHE=1) the database is named after the size, seed and
`DATA_VERSION` (bump it when the generator changes), kept after the run and reused by the next
one only if its marker table `bench_segment_dataset` says the load completed with the same row
counts; otherwise it is dropped and rebuilt. The profile migrations are applied to a reused
database too (so new indexes appear), followed by VACUUM ANALYZE. Drop cached databases with
`DROP DATABASE upm_bench_segment_p<profiles>_s<seed>_<version>`.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.segment_datagen import (
    CONSENT_COLUMNS,
    COUNT_COLUMNS,
    DAILY_COLUMNS,
    EVENT_COLUMNS,
    IDENTIFIER_COLUMNS,
    NOW,
    PROFILE_COLUMNS,
    TRAIT_COLUMNS,
    generate,
)
from upm_common.db import create_engine
from upm_common.migrations import upgrade
from upm_profile.store import tables as t
from upm_segment.compile import IdRange, SqlCompiler, range_connections, summed
from upm_segment.settings import SegmentSettings
from upm_segment.text import parse

SEED = 7
DATA_VERSION = "v1"
SEGMENTS = {
    "issue": (
        'performed("Order Completed").count(every month, last 2 months) >= 1 and '
        "trait(newsletter) = true and "
        'performed("Creative Viewed", placement = "homepage", creative = "new-product")'
        ".within(30d) and consent(sms, marketing) = subscribed"
    ),
    "two_conditions": 'trait(newsletter) = true and performed("Order Completed").within(30d)',
    "eight_conditions": (
        "trait(newsletter) = true and consent(email, marketing) = subscribed and has(email) "
        'and trait(age) between 25 and 54 and trait(plan) in ("gold", "silver") '
        'and performed("Order Completed").within(90d) '
        'and sum("Order Completed", revenue).within(90d) >= 50 '
        'and performed("Page Viewed", path starts_with "/products").count() >= 2'
    ),
}
TABLES = (
    ("profile_profiles", "profiles", PROFILE_COLUMNS),
    ("profile_traits", "traits", TRAIT_COLUMNS),
    ("profile_consents", "consents", CONSENT_COLUMNS),
    ("profile_identifiers", "identifiers", IDENTIFIER_COLUMNS),
    ("profile_events", "events", EVENT_COLUMNS),
    ("profile_event_counts", "event_counts", COUNT_COLUMNS),
    ("profile_event_daily", "event_daily", DAILY_COLUMNS),
)
SQLA_TABLES = {
    "profiles": t.profiles,
    "traits": t.traits,
    "consents": t.consents,
    "identifiers": t.identifiers,
    "events": t.events,
    "event_counts": t.event_counts,
    "event_daily": t.event_daily,
}


def _server_url() -> str:
    url = os.environ.get("UPM_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _connect(url: str, database: str | None = None) -> Any:
    import asyncpg

    parsed = make_url(url)
    return await asyncpg.connect(
        host=parsed.host,
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        database=database or parsed.database,
    )


async def _admin(sql: str, *args: Any) -> Any:
    conn = await _connect(_server_url(), "postgres")
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def _cache_enabled() -> bool:
    return os.environ.get("UPM_BENCH_SEGMENT_CACHE", "").lower() not in ("", "0", "false", "no")


async def _cached_totals(url: str, profiles: int) -> dict[str, int] | None:
    """The row counts of a completed cached load of this size and seed, else None."""
    conn = await _connect(url)
    try:
        if not await conn.fetchval("SELECT to_regclass('bench_segment_dataset') IS NOT NULL"):
            return None
        row = await conn.fetchrow("SELECT profiles, seed, totals FROM bench_segment_dataset")
        if row is None or row["profiles"] != profiles or row["seed"] != SEED:
            return None
        totals: dict[str, int] = json.loads(row["totals"])
        for table, key, _ in TABLES:
            if await conn.fetchval(f"SELECT count(*) FROM {table}") != totals.get(key, 0):
                return None
        return totals
    finally:
        await conn.close()


async def _mark_complete(url: str, profiles: int, totals: dict[str, int]) -> None:
    conn = await _connect(url)
    try:
        await conn.execute(
            "CREATE TABLE bench_segment_dataset (profiles int, seed int, totals text)"
        )
        await conn.execute(
            "INSERT INTO bench_segment_dataset VALUES ($1, $2, $3)",
            profiles,
            SEED,
            json.dumps(totals),
        )
    finally:
        await conn.close()


async def _load_postgres(url: str, profiles: int) -> dict[str, int]:
    conn = await _connect(url)
    totals: dict[str, int] = {}
    try:
        for chunk in generate(profiles, seed=SEED, chunk_size=50_000):
            for table, key, columns in TABLES:
                rows = getattr(chunk, key)
                if rows:
                    await conn.copy_records_to_table(table, records=rows, columns=list(columns))
                    totals[key] = totals.get(key, 0) + len(rows)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return totals


async def _load_sqlite(engine: AsyncEngine, profiles: int) -> dict[str, int]:
    totals: dict[str, int] = {}
    for chunk in generate(profiles, seed=SEED, chunk_size=20_000, json_text=False):
        async with engine.begin() as conn:
            for _, key, columns in TABLES:
                rows = getattr(chunk, key)
                if rows:
                    await conn.execute(
                        insert(SQLA_TABLES[key]), [dict(zip(columns, r, strict=True)) for r in rows]
                    )
                    totals[key] = totals.get(key, 0) + len(rows)
    async with engine.connect() as conn:
        await conn.exec_driver_sql("ANALYZE")
    return totals


async def _median(action: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, Any]:
    result = await action()  # warm-up, unmeasured
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = await action()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


# The service's default number of ranges a count is split into.
COUNT_RANGES: int = SegmentSettings.model_fields["segment_count_ranges"].default


async def _alternating(
    first: Callable[[], Awaitable[Any]], second: Callable[[], Awaitable[Any]], runs: int
) -> tuple[tuple[float, Any], tuple[float, Any]]:
    """Median times of two actions run in turn (each warmed once first, unmeasured), so that
    both see the same background load on a shared machine."""
    results = [await first(), await second()]
    times: list[list[float]] = [[], []]
    for run in range(runs):
        order = (0, 1) if run % 2 == 0 else (1, 0)
        for index in order:
            started = time.perf_counter()
            results[index] = await (first, second)[index]()
            times[index].append(time.perf_counter() - started)
    return (
        (statistics.median(times[0]), results[0]),
        (statistics.median(times[1]), results[1]),
    )


async def _measure(engine: AsyncEngine, runs: int) -> dict[str, Any]:

    async def scan() -> int:
        async with engine.connect() as conn:
            return int(
                (await conn.execute(text("SELECT count(*) FROM profile_events"))).scalar_one()
            )

    base_seconds, events = await _median(scan, runs)
    figures: dict[str, Any] = {
        "events": events,
        "count_star_seconds": round(base_seconds, 4),
        # Wall-clock figures on a shared machine: the load they were taken under.
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "count_ranges": COUNT_RANGES,
        "segments": {},
    }
    for name, definition in SEGMENTS.items():
        condition = parse(definition)

        def query(part: IdRange | None, condition: Any = condition) -> Any:
            return SqlCompiler(engine.dialect.name, NOW, part).count_query(condition)

        async def count(parts: int, query: Any = query) -> int:
            # The service's path (SegmentDomain.count): ranges over one snapshot, summed.
            async with range_connections(engine, parts) as connections:
                (members,) = await summed(connections, query)
                return members

        (seconds, members), (single_seconds, single_members) = await _alternating(
            lambda: count(COUNT_RANGES), lambda: count(1), runs
        )
        assert members == single_members, (name, members, single_members)
        figures["segments"][name] = {
            "members": members,
            "seconds": round(seconds, 4),
            "ratio_to_count_star": round(seconds / base_seconds, 2) if base_seconds else None,
            "single_query_seconds": round(single_seconds, 4),
        }
    figures["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return figures


async def bench_postgres(profiles: int, runs: int, *, cache: bool = False) -> dict[str, Any]:
    if cache:
        name = f"upm_bench_segment_p{profiles}_s{SEED}_{DATA_VERSION}"
    else:
        name = f"upm_bench_segment_{uuid.uuid4().hex[:8]}"
    url = make_url(_server_url()).set(database=name).render_as_string(hide_password=False)
    totals: dict[str, int] | None = None
    if cache and await _admin("SELECT 1 FROM pg_database WHERE datname = $1", name):
        totals = await _cached_totals(url, profiles)
        if totals is None:
            await _admin(f'DROP DATABASE "{name}" WITH (FORCE)')
    if totals is None:
        await _admin(f'CREATE DATABASE "{name}"')
    engine = create_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        await upgrade(engine, "profile")
        started = time.perf_counter()
        reused = totals is not None
        if totals is None:
            totals = await _load_postgres(url, profiles)
            if cache:
                await _mark_complete(url, profiles, totals)
        else:
            conn = await _connect(url)
            try:
                await conn.execute("VACUUM ANALYZE")
            finally:
                await conn.close()
        load_seconds = time.perf_counter() - started
        figures = await _measure(engine, runs)
        return {"profiles": profiles, "rows": totals, "load_seconds": round(load_seconds, 1),
                "cached_data": reused, **figures}  # fmt: skip
    finally:
        await engine.dispose()
        if not cache:
            await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def bench_sqlite(profiles: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}")
        try:
            await upgrade(engine, "profile")
            started = time.perf_counter()
            totals = await _load_sqlite(engine, profiles)
            load_seconds = time.perf_counter() - started
            figures = await _measure(engine, runs)
            return {"profiles": profiles, "rows": totals, "load_seconds": round(load_seconds, 1),
                    **figures}  # fmt: skip
        finally:
            await engine.dispose()


async def run(smoke: bool, *, cache: bool | None = None) -> dict[str, Any]:
    """The benchmark's figures (see the module docstring)."""
    runs = 1 if smoke else 5
    cache = _cache_enabled() if cache is None else cache
    return {
        "target": "each count under 1 s (goal 0.5 s) and at most 3x count(*) on PostgreSQL",
        "postgres": await bench_postgres(500 if smoke else 1_000_000, runs, cache=cache),
        "sqlite": await bench_sqlite(300 if smoke else 100_000, runs),
    }


if __name__ == "__main__":
    import sys

    result = asyncio.run(run("--smoke" in sys.argv, cache=True if "--cache" in sys.argv else None))
    print(json.dumps(result, indent=2))
