"""Hypothesis strategies for definitions and populations sharing small alphabets, so that
conditions often hit what profiles hold (and window edges are hit exactly)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from upm_segment import model as m
from upm_segment.evaluate import EventRecord, ProfileData, TraitValue

TRAITS = ["t1", "t2", "plan"]
EVENTS = ["Order Completed", "Page Viewed"]
CHANNELS = ["email", "sms"]
IDENTIFIERS = ["email", "phone", "external:crm"]
STRINGS = ["a", "ab", "b", "B", "é", "", "home page"]
NUMBERS = [-1.0, 0.0, 1.0, 2.5, 10.0]
DURATIONS = [timedelta(days=30), timedelta(days=7), timedelta(days=1), timedelta(hours=36)]
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]


def examples(count: int) -> settings:
    """Settings for a property test over a database: `count` examples, no deadline, and the
    database fixture shared by all of them."""
    return settings(
        max_examples=count,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def _times(now: datetime) -> st.SearchStrategy[datetime]:
    window_edges = [now - d for d in DURATIONS]
    edges = [now - 2 * d for d in DURATIONS[:2]]
    edges += [now - timedelta(days=2), now, now + timedelta(hours=1)]
    near = [now - timedelta(days=30, seconds=s) for s in (-1, 1)]
    anywhere = st.integers(-120 * 86400, 2 * 86400).map(lambda s: now + timedelta(seconds=s))
    return st.tuples(
        st.one_of(
            st.sampled_from(window_edges), st.sampled_from(edges), st.sampled_from(near), anywhere
        ),
        st.sampled_from(ZONES),
    ).map(lambda pair: pair[0].astimezone(pair[1]))


def _literal(kind: str, now: datetime) -> st.SearchStrategy[Any]:
    if kind == "string":
        return st.sampled_from(STRINGS)
    if kind == "number":
        return st.sampled_from(NUMBERS)
    if kind == "boolean":
        return st.booleans()
    return st.sampled_from([now - timedelta(days=10), now - timedelta(days=30), now])


def _operands(
    now: datetime, kinds: list[str]
) -> st.SearchStrategy[tuple[m.Operator, tuple[m.Value, ...]]]:
    @st.composite
    def build(draw: st.DrawFn) -> tuple[m.Operator, tuple[m.Value, ...]]:
        operator = draw(st.sampled_from(list(m.Operator)))
        if operator in (m.Operator.EXISTS, m.Operator.NOT_EXISTS):
            return operator, ()
        allowed = list(kinds)
        if operator in (m.Operator.CONTAINS, m.Operator.STARTS_WITH):
            allowed = ["string"]
        elif operator in (*m.ORDER_OPERATORS, m.Operator.BETWEEN):
            allowed = [k for k in allowed if k != "boolean"]
        kind = draw(st.sampled_from(allowed))
        literal = _literal(kind, now)
        if operator is m.Operator.BETWEEN:
            low, high = sorted([draw(literal), draw(literal)])
            return operator, (low, high)
        if operator is m.Operator.IN:
            return operator, tuple(draw(st.lists(literal, min_size=1, max_size=3)))
        return operator, (draw(literal),)

    return build()


def _comparisons() -> st.SearchStrategy[m.Comparison]:
    return st.builds(
        lambda op, value, extra: m.Comparison(
            op, float(value), float(value + extra) if op is m.Operator.BETWEEN else 0.0
        ),
        st.sampled_from(sorted(m.COMPARISON_OPERATORS)),
        st.integers(0, 3),
        st.integers(0, 3),
    )


def _windows(now: datetime) -> st.SearchStrategy[m.Window | None]:
    relative = st.sampled_from(DURATIONS).map(m.RelativeWindow)
    return st.one_of(
        st.none(),
        relative,
        relative,
        st.sampled_from(
            [
                m.AbsoluteWindow(now - timedelta(days=30), now - timedelta(days=1)),
                m.AbsoluteWindow(now - timedelta(days=90), now),
            ]
        ),
    )


def _filters(now: datetime) -> st.SearchStrategy[tuple[m.PropertyFilter, ...]]:
    item = st.builds(
        lambda prop, ops: m.PropertyFilter(prop, ops[0], ops[1]),
        st.sampled_from(["p", "q.r", "revenue"]),
        _operands(now, ["string", "number", "boolean"]),
    )
    some = st.lists(item, min_size=1, max_size=2).map(tuple)
    return st.integers(0, 2).flatmap(lambda k: some if k == 0 else st.just(()))


def _measures(now: datetime) -> st.SearchStrategy[m.Measure]:
    bound = st.one_of(
        st.builds(
            lambda rel, ago: m.TimeBound(rel, ago=ago),
            st.sampled_from(["before", "after"]),
            st.sampled_from(DURATIONS),
        ),
        st.builds(
            lambda rel, moment: m.TimeBound(rel, time=moment),
            st.sampled_from(["before", "after"]),
            st.sampled_from([now - timedelta(days=30), now - timedelta(days=2)]),
        ),
    )
    kinds = [
        st.builds(m.CountMeasure, _comparisons()),
        st.just(m.CountMeasure()),
        st.builds(m.FirstLastMeasure, st.sampled_from(["first", "last"]), bound),
    ]
    return st.sampled_from([0, 1, 1, 2]).flatmap(lambda k: kinds[k])


@st.composite
def _event(draw: st.DrawFn, now: datetime) -> m.EventCondition:
    measure = draw(_measures(now))
    every = draw(
        st.one_of(
            st.none(),
            st.builds(m.Periodicity, st.sampled_from(list(m.PeriodUnit)), st.integers(1, 3)),
        )
    )
    window = draw(_windows(now))
    if isinstance(measure, m.CountMeasure) and every is not None:
        measure = m.CountMeasure(measure.comparison, every)
        window = None
    return m.EventCondition(
        name=draw(st.sampled_from(EVENTS)),
        event_type=draw(st.sampled_from([None, None, None, None, "track", "page"])),
        filters=draw(_filters(now)),
        window=window,
        measure=measure,
    )


def leaves(now: datetime) -> st.SearchStrategy[m.Condition]:
    trait = st.builds(
        lambda name, ops: m.TraitCondition(name, ops[0], ops[1]),
        st.sampled_from(TRAITS),
        _operands(now, ["string", "number", "boolean", "timestamp"]),
    )
    identifier = st.builds(m.IdentifierCondition, st.sampled_from(IDENTIFIERS), st.booleans())
    consent = st.builds(
        m.ConsentCondition,
        st.sampled_from(CHANNELS),
        st.sampled_from(list(m.CONSENT_PURPOSES)),
        st.sampled_from(list(m.CONSENT_STATUSES)),
    )
    aggregate = st.builds(
        lambda name, fn, prop, cmp, filters, window: m.AggregateCondition(
            name,
            "" if fn is m.AggregateFunction.COUNT and prop == "p" else prop,
            fn,
            cmp,
            filters,
            window,
        ),
        st.sampled_from(EVENTS),
        st.sampled_from(list(m.AggregateFunction)),
        st.sampled_from(["revenue", "p", "q.r"]),
        _comparisons(),
        _filters(now),
        _windows(now),
    )
    kinds = [trait, identifier, consent, _event(now), _event(now), _event(now), aggregate]
    return st.integers(0, len(kinds) - 1).flatmap(lambda k: kinds[k])


def conditions(now: datetime, depth: int = 2) -> st.SearchStrategy[m.Condition]:
    leaves_ = leaves(now)
    if depth == 0:
        return leaves_
    inner = conditions(now, depth - 1)
    return st.one_of(
        leaves_,
        leaves_,
        leaves_,
        st.lists(inner, min_size=2, max_size=3).map(lambda c: m.And(tuple(c))),
        st.lists(inner, min_size=2, max_size=3).map(lambda c: m.Or(tuple(c))),
        inner.map(m.Not),
    )


def _json_values(now: datetime) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(STRINGS),
        st.sampled_from(NUMBERS),
        st.booleans(),
        st.none(),
        st.sampled_from([3, 0, -2]),
    )


@st.composite
def _profile(draw: st.DrawFn, now: datetime, index: int) -> ProfileData:
    profile = ProfileData(f"p{index:04d}")
    for name in draw(st.lists(st.sampled_from(TRAITS), unique=True)):
        kind = draw(st.sampled_from(["string", "number", "boolean", "timestamp", "null"]))
        value = None if kind == "null" else draw(_literal(kind, now))
        profile.traits[name] = TraitValue(kind, value)
    for channel in draw(st.lists(st.sampled_from(CHANNELS), unique=True)):
        purpose = draw(st.sampled_from(list(m.CONSENT_PURPOSES)))
        profile.consents[(channel, purpose)] = draw(st.sampled_from(list(m.CONSENT_STATUSES)))
    profile.identifier_types = set(draw(st.lists(st.sampled_from(IDENTIFIERS), unique=True)))
    for _ in range(draw(st.integers(0, 6))):
        properties: dict[str, Any] = {}
        if draw(st.booleans()):
            properties["p"] = draw(_json_values(now))
        if draw(st.booleans()):
            properties["q"] = {"r": draw(_json_values(now))} if draw(st.booleans()) else "x"
        if draw(st.booleans()):
            properties["revenue"] = draw(st.one_of(st.sampled_from([5, 10.5, 0, -3]), st.just("7")))
        profile.events.append(
            EventRecord(
                draw(st.sampled_from(EVENTS)),
                draw(st.sampled_from(["track", "track", "track", "page"])),
                draw(_times(now)),
                properties,
            )
        )
    return profile


def profiles_strategy(now: datetime) -> st.SearchStrategy[list[ProfileData]]:
    @st.composite
    def build(draw: st.DrawFn) -> list[ProfileData]:
        size = draw(st.integers(1, 10))
        return [draw(_profile(now, index)) for index in range(size)]

    return build()
