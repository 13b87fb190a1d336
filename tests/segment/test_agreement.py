"""Property test: the SQL compiler and the in-process evaluator agree on random definitions and
random profiles with events, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from tests.segment.readmodel import check_agreement
from tests.segment.strategies import conditions, examples, leaves, profiles_strategy
from upm_segment import model as m
from upm_segment.evaluate import ProfileData

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


@examples(100)
@given(
    population=profiles_strategy(NOW),
    definitions=st.lists(conditions(NOW), min_size=1, max_size=6),
    shift=st.sampled_from([timedelta(0), timedelta(0), timedelta(seconds=1), timedelta(hours=7)]),
)
def test_sql_and_in_process_agree(
    db_url: str, population: list[ProfileData], definitions: list[m.Condition], shift: timedelta
) -> None:
    asyncio.run(check_agreement(db_url, population, definitions, NOW + shift))


@examples(100)
@given(
    population=profiles_strategy(NOW),
    definitions=st.lists(leaves(NOW), min_size=4, max_size=12),
)
def test_leaf_conditions_agree(
    db_url: str, population: list[ProfileData], definitions: list[m.Condition]
) -> None:
    asyncio.run(check_agreement(db_url, population, definitions, NOW))


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
