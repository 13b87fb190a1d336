"""Property test: a segment's gate (its top-level conditions on traits, consents and
identifiers, which the membership worker checks before reading any event) never turns away a
profile the full evaluation would admit, and decides event-free segments exactly."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.segment.strategies import conditions, leaves, profiles_strategy
from upm_segment import model as m
from upm_segment.evaluate import ProfileData, evaluate, gate_holds, plan, reads_events

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


@settings(max_examples=300, deadline=None)
@given(
    population=profiles_strategy(NOW),
    definitions=st.lists(
        st.one_of(
            conditions(NOW),
            st.lists(conditions(NOW), min_size=2, max_size=4).map(
                lambda parts: m.And(tuple(parts))
            ),
            st.lists(leaves(NOW), min_size=2, max_size=5).map(lambda parts: m.And(tuple(parts))),
        ),
        min_size=1,
        max_size=4,
    ),
    later=st.sampled_from([timedelta(0), timedelta(days=3), timedelta(days=400)]),
)
def test_a_closed_gate_means_not_a_member_now_and_later(
    population: list[ProfileData], definitions: list[m.Condition], later: timedelta
) -> None:
    for definition in definitions:
        prepared = plan(definition)
        for person in population:
            if gate_holds(prepared, person):
                if not reads_events(definition):
                    assert evaluate(definition, person, NOW)
                continue
            # Whatever the events and however much time passes.
            assert not evaluate(definition, person, NOW + later)
            assert not evaluate(definition, replace(person, events=[]), NOW + later)
