"""The compiler's per-candidate lookups (an AND's later conditions read only the index entries
of the profiles that passed the earlier ones) give the same members as the in-process
evaluator, on SQLite and PostgreSQL, with the session settings the service uses.

The compiler switches to lookups only when it guesses the candidates are few, which small test
definitions rarely reach; here the threshold is raised so that every restricted condition of
every AND is looked up per candidate."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.segment.readmodel import check_agreement
from tests.segment.strategies import conditions, examples, leaves, profiles_strategy
from upm_segment import compile as compiler_module
from upm_segment import model as m
from upm_segment.evaluate import EventRecord, ProfileData, evaluate
from upm_segment.text import parse

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def _chains() -> st.SearchStrategy[m.Condition]:
    """ANDs led by a windowed event condition with property filters (the selective kind that
    leads a chain), followed by any leaves or subtrees."""
    lead = st.builds(
        lambda name, value, days: m.EventCondition(
            name,
            filters=(m.PropertyFilter("p", m.Operator.EQ, (value,)),),
            window=m.RelativeWindow(timedelta(days=days)),
        ),
        st.sampled_from(["Order Completed", "Page Viewed"]),
        st.sampled_from(["a", "b", True, 1.0]),
        st.sampled_from([1, 7, 30]),
    )
    rest = st.lists(st.one_of(leaves(NOW), conditions(NOW, depth=1)), min_size=1, max_size=4)
    return st.builds(lambda first, others: m.And((first, *others)), lead, rest)


@examples(60)
@given(
    population=profiles_strategy(NOW),
    definitions=st.lists(_chains(), min_size=1, max_size=4),
)
def test_lookups_per_candidate_agree_with_the_evaluator(
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    population: list[ProfileData],
    definitions: list[m.Condition],
) -> None:
    monkeypatch.setattr(compiler_module, "PROBE_SHARE", 1.0)
    asyncio.run(check_agreement(db_url, population, definitions, NOW, prepare=True))


@pytest.mark.parametrize("probe_share", [0.0, 1.0])
async def test_property_equality_matches_only_values_of_the_literal_type(
    db_url: str, monkeypatch: pytest.MonkeyPatch, probe_share: float
) -> None:
    # String and boolean equalities are containment tests on PostgreSQL: a number, a string
    # spelling of a boolean, a list holding the value or a nested object must not match.
    monkeypatch.setattr(compiler_module, "PROBE_SHARE", probe_share)
    values: list[object] = ["a", "A", 1, "1", True, "true", None, ["a"], {"r": "a"}, {"r": True}]
    population = [
        ProfileData(
            f"p{index}",
            consents={("email", "marketing"): "subscribed"},
            events=[EventRecord("Clicked", "track", NOW - timedelta(hours=1), {"p": value})],
        )
        for index, value in enumerate(values)
    ]
    texts = [
        'performed("Clicked", p = "a").within(1d) and consent(email, marketing) = subscribed',
        'performed("Clicked", p = true).within(1d)',
        'performed("Clicked", p != "a").within(1d)',
        'performed("Clicked", p in ("a", "1")).within(1d)',
        'performed("Clicked", p.r = "a").within(1d)',
        'performed("Clicked", p.r = true).within(1d)',
        'performed("Clicked", p = 1).within(1d)',
    ]
    definitions: list[m.Condition] = [parse(text) for text in texts]
    expected = [
        ["p0"],
        ["p4"],
        [f"p{i}" for i in range(len(values)) if i != 0],
        ["p0", "p3"],
        ["p8"],
        ["p9"],
        ["p2"],
    ]
    for definition, members in zip(definitions, expected, strict=True):
        assert sorted(p.profile_id for p in population if evaluate(definition, p, NOW)) == members
    await check_agreement(db_url, population, definitions, NOW, prepare=True)


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
