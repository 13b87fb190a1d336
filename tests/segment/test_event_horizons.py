"""Property test: loading only the events at or after each name's horizon (what the membership
worker and IsMember do) changes neither the verdict nor the next window edge."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.segment.strategies import conditions, profiles_strategy
from upm_segment import model as m
from upm_segment.evaluate import (
    ProfileData,
    evaluate,
    evaluate_with_edges,
    event_horizons,
    next_edge,
    plan,
)

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


@settings(max_examples=300, deadline=None)
@given(
    population=profiles_strategy(NOW), definitions=st.lists(conditions(NOW), min_size=1, max_size=4)
)
def test_events_before_the_horizon_do_not_matter(
    population: list[ProfileData], definitions: list[m.Condition]
) -> None:
    horizons = event_horizons(definitions, NOW)
    plans = [plan(definition) for definition in definitions]
    for person in population:
        kept = [
            event
            for event in person.events
            if event.name in horizons
            and ((since := horizons[event.name]) is None or event.time >= since)
        ]
        trimmed = replace(person, events=kept)
        expected = [(evaluate(d, person, NOW), next_edge(d, person, NOW)) for d in definitions]
        assert evaluate_with_edges(plans, trimmed, NOW) == expected
