"""Counts split into profile-id ranges: the ranges' counts sum to the single query's count and
to the in-process evaluator's, empty ranges included, and the ranges read one snapshot, so a
write committed between two ranges' queries cannot make the sum wrong."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import delete, not_, update

from tests.segment.readmodel import holding, insert_profiles
from tests.segment.strategies import conditions, examples, profiles_strategy
from upm_common.db import create_engine
from upm_common.migrations import upgrade
from upm_profile.store import tables as t
from upm_segment import compile as compile_module
from upm_segment import model as m
from upm_segment.compile import SqlCompiler, id_ranges, range_connections, summed
from upm_segment.evaluate import EventRecord, ProfileData, TraitValue, evaluate
from upm_segment.service import SegmentDomain
from upm_segment.store.sql import SqlSegmentStore
from upm_segment.text import parse

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
# Generated profiles are p0000..p0009: bounds below, among and above them, so that some
# ranges are empty and some split the population.
BOUNDS = ["", "a", "p", "p0000", "p0001", "p0003", "p0005", "p00050", "p0009", "p001", "q"]


async def _check_ranges(
    url: str,
    population: list[ProfileData],
    definitions: list[m.Condition],
    bounds: list[str],
) -> None:
    async with holding(url, population) as engine:
        ranges = id_ranges(bounds)
        async with engine.connect() as conn:
            for definition in definitions:
                expected = sorted(p.profile_id for p in population if evaluate(definition, p, NOW))
                single = SqlCompiler("postgresql", NOW).count_query(definition)
                assert (await conn.execute(single)).scalar_one() == len(expected)
                listed: list[str] = []
                total = 0
                for part in ranges:
                    compiler = SqlCompiler("postgresql", NOW, part)
                    total += (await conn.execute(compiler.count_query(definition))).scalar_one()
                    listed += [r[0] for r in await conn.execute(compiler.members_query(definition))]
                assert total == len(expected), (definition, ranges)
                assert listed == expected, (definition, ranges)


@pytest.mark.postgres
@examples(60)
@given(
    population=profiles_strategy(NOW),
    definitions=st.lists(conditions(NOW), min_size=1, max_size=4),
    bounds=st.lists(st.sampled_from(BOUNDS), unique=True, max_size=4).map(sorted),
)
def test_range_counts_sum_to_the_single_count(
    pg_url: str, population: list[ProfileData], definitions: list[m.Condition], bounds: list[str]
) -> None:
    asyncio.run(_check_ranges(pg_url, population, definitions, bounds))


def _buyer(pid: str) -> ProfileData:
    return ProfileData(
        pid,
        traits={"newsletter": TraitValue("boolean", True)},
        events=[EventRecord("Order Completed", "track", datetime(2026, 6, 10, tzinfo=UTC))],
    )


BUYERS = 'performed("Order Completed").within(30d) and trait(newsletter) = true'
NOT_BUYERS = 'not performed("Order Completed").within(30d)'


async def _analyzed(url: str, population: list[ProfileData]) -> None:
    engine = create_engine(url)
    try:
        for component in ("profile", "segment"):
            await upgrade(engine, component)
        await insert_profiles(engine, population)
        async with engine.connect() as conn:
            # The ranges' bounds come from the id histogram that ANALYZE keeps.
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("ANALYZE")
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_a_write_between_the_range_queries_does_not_change_the_sum(pg_url: str) -> None:
    buyers = [_buyer(f"b{i:03d}") for i in range(40)]
    others = [ProfileData(f"n{i:03d}") for i in range(40)]
    await _analyzed(pg_url, [*buyers, *others])
    engine = create_engine(pg_url)
    condition = parse(BUYERS)
    try:
        async with range_connections(engine, 2, min_profiles=0) as connections:
            assert len(connections) == 2
            (first_conn, first_range), (second_conn, second_range) = connections
            assert first_range is not None and second_range is not None
            boundary = first_range[1]
            assert boundary is not None and "b000" < boundary <= "n039"
            first = SqlCompiler("postgresql", NOW, first_range).count_query(condition)
            counted_first = (await first_conn.execute(first)).scalar_one()
            # Committed between the two ranges' queries: a buyer leaves the first range and
            # two new buyers join the second one.
            async with engine.begin() as writer:
                await writer.execute(delete(t.events).where(t.events.c.profile_id == "b000"))
            await insert_profiles(engine, [_buyer("zz01"), _buyer("zz02")])
            second = SqlCompiler("postgresql", NOW, second_range).count_query(condition)
            counted_second = (await second_conn.execute(second)).scalar_one()
        assert counted_first + counted_second == 40
        domain = SegmentDomain(SqlSegmentStore(engine), engine, count_ranges=2)
        preview = await domain.preview(condition, "", 3, NOW)
        assert preview.count == 41  # later counts see the writes
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_range_sums_stay_consistent_under_concurrent_writes(pg_url: str) -> None:
    # Each write moves one membership from the low ids to the high ids in one transaction,
    # so every consistent reading counts 40: ranges read at different moments would not.
    low = [
        ProfileData(f"a{i:03d}", traits={"newsletter": TraitValue("boolean", True)})
        for i in range(40)
    ]
    high = [
        ProfileData(f"z{i:03d}", traits={"newsletter": TraitValue("boolean", False)})
        for i in range(40)
    ]
    await _analyzed(pg_url, [*low, *high])
    engine = create_engine(pg_url)
    condition = parse("trait(newsletter) = true")
    stop = asyncio.Event()

    async def write() -> int:
        writes = 0
        while not stop.is_set():
            pair = [low[writes % 40].profile_id, high[writes % 40].profile_id]
            async with engine.begin() as conn:
                await conn.execute(
                    update(t.traits)
                    .where(t.traits.c.profile_id.in_(pair), t.traits.c.name == "newsletter")
                    .values(bool_value=not_(t.traits.c.bool_value))
                )
            writes += 1
            await asyncio.sleep(0)
        return writes

    try:
        writer = asyncio.create_task(write())
        sums: list[int] = []
        for _ in range(60):
            async with range_connections(engine, 2, min_profiles=0) as connections:
                assert len(connections) == 2
                sums += await summed(
                    connections,
                    lambda part: SqlCompiler("postgresql", NOW, part).count_query(condition),
                )
        stop.set()
        assert await writer > 0
        assert sums == [40] * 60
    finally:
        stop.set()
        await engine.dispose()


@pytest.mark.parametrize("parts", [1, 2, 3])
async def test_service_counts_agree_with_the_evaluator_for_any_split(
    db_url: str, parts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Split even this small table (a real one is split only from SPLIT_MIN_PROFILES on).
    monkeypatch.setattr(compile_module, "SPLIT_MIN_PROFILES", 0)
    population = [_buyer(f"b{i:03d}") for i in range(25)] + [
        ProfileData(f"n{i:03d}") for i in range(30)
    ]
    if db_url.startswith("postgresql"):
        await _analyzed(db_url, population)
    else:
        engine = create_engine(db_url)
        for component in ("profile", "segment"):
            await upgrade(engine, component)
        await insert_profiles(engine, population)
        await engine.dispose()
    engine = create_engine(db_url)
    try:
        domain = SegmentDomain(SqlSegmentStore(engine), engine, count_ranges=parts)
        for segment_id, text in (("buyers", BUYERS), ("others", NOT_BUYERS)):
            await domain.create(
                segment_id=segment_id, name="", description="", definition=None, text=text
            )
        buyers = sorted(p.profile_id for p in population if evaluate(parse(BUYERS), p, NOW))
        assert (await domain.count("buyers", NOW))[0] == len(buyers) == 25
        assert (await domain.count("others", NOW))[0] == 30
        preview = await domain.preview(None, BUYERS, 5, NOW)
        assert (preview.count, preview.sample) == (25, buyers[:5])
        overlap = await domain.overlap("buyers", "others", NOW)
        assert (overlap.first, overlap.second, overlap.both) == (25, 30, 0)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_ranges_split_live_profiles_evenly(pg_url: str) -> None:
    population = [ProfileData(f"{i:032x}") for i in range(200)]
    await _analyzed(pg_url, population)
    engine = create_engine(pg_url)
    try:
        everyone = parse("not has(email)")
        async with range_connections(engine, 2, min_profiles=0) as connections:
            sizes = await asyncio.gather(
                *(
                    conn.execute(SqlCompiler("postgresql", NOW, part).count_query(everyone))
                    for conn, part in connections
                )
            )
            counts = [r.scalar_one() for r in sizes]
            assert sum(counts) == 200 and min(counts) >= 80, counts
            assert await summed(
                connections,
                lambda part: SqlCompiler("postgresql", NOW, part).overlap_query(
                    parse("has(email)"), everyone
                ),
            ) == (0, 200, 0)
        # A small table is counted in one query: the split would cost more than it saves.
        async with range_connections(engine, 2) as connections:
            assert [part for _, part in connections] == [None]
    finally:
        await engine.dispose()


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
