"""Property test: the SQL compiler and the in-process evaluator agree on random definitions and
random profiles with events, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from tests.segment.readmodel import clear_read_model, create_read_model, insert_profiles
from tests.segment.strategies import conditions, leaves, profiles_strategy
from upm_common.db import create_engine
from upm_segment import model as m
from upm_segment.compile import SqlCompiler
from upm_segment.evaluate import ProfileData, evaluate

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


async def _check(
    url: str, population: list[ProfileData], definitions: list[m.Condition], now: datetime
) -> None:
    engine = create_engine(url)
    try:
        await create_read_model(engine)
        await clear_read_model(engine)
        await insert_profiles(engine, population)
        compiler = SqlCompiler(engine.dialect.name, now)
        async with engine.connect() as conn:
            for definition in definitions:
                expected = sorted(p.profile_id for p in population if evaluate(definition, p, now))
                rows = await conn.execute(compiler.members_query(definition))
                actual = [row[0] for row in rows]
                assert actual == expected, definition
                count = (await conn.execute(compiler.count_query(definition))).scalar_one()
                assert count == len(expected)
    finally:
        await engine.dispose()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    population=profiles_strategy(NOW),
    definitions=st.lists(conditions(NOW), min_size=1, max_size=6),
    shift=st.sampled_from([timedelta(0), timedelta(0), timedelta(seconds=1), timedelta(hours=7)]),
)
def test_sql_and_in_process_agree(
    db_url: str, population: list[ProfileData], definitions: list[m.Condition], shift: timedelta
) -> None:
    asyncio.run(_check(db_url, population, definitions, NOW + shift))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    population=profiles_strategy(NOW),
    definitions=st.lists(leaves(NOW), min_size=4, max_size=12),
)
def test_leaf_conditions_agree(
    db_url: str, population: list[ProfileData], definitions: list[m.Condition]
) -> None:
    asyncio.run(_check(db_url, population, definitions, NOW))


@pytest.mark.parametrize(
    "kind",
    [
        "TraitCondition",
        "EventCondition",
        "AggregateCondition",
        "ConsentCondition",
        "IdentifierCondition",
        "Not",
        "And",
        "Or",
    ],
)
def test_strategies_can_generate_every_kind(kind: str) -> None:
    # The agreement tests above only mean something if the generator reaches every node kind.
    tree = find(
        conditions(NOW),
        lambda t: kind in {type(node).__name__ for node in m.walk(t)},
        settings=settings(max_examples=2000, database=None),
    )
    assert kind in {type(node).__name__ for node in m.walk(tree)}


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
