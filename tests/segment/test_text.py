"""The text form: the issue's example, round trips, and positioned errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.segment.strategies import conditions
from upm_segment import model as m
from upm_segment.convert import from_proto, to_proto
from upm_segment.text import ParseError, parse, to_text

ISSUE_TEXT = (
    'performed("Order Completed").count(every month, last 2 months) >= 1 and '
    "trait(newsletter) = true and "
    'performed("Creative Viewed", placement = "homepage", creative = "new-product").within(30d)'
    " and consent(sms, marketing) = subscribed"
)
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def test_issue_example_parses_to_the_expected_tree_and_prints_back_exactly() -> None:
    tree = parse(ISSUE_TEXT)
    assert tree == m.And(
        (
            m.EventCondition(
                "Order Completed",
                measure=m.CountMeasure(
                    m.Comparison(m.Operator.GTE, 1.0), m.Periodicity(m.PeriodUnit.MONTH, 2)
                ),
            ),
            m.TraitCondition("newsletter", m.Operator.EQ, (True,)),
            m.EventCondition(
                "Creative Viewed",
                filters=(
                    m.PropertyFilter("placement", m.Operator.EQ, ("homepage",)),
                    m.PropertyFilter("creative", m.Operator.EQ, ("new-product",)),
                ),
                window=m.RelativeWindow(timedelta(days=30)),
            ),
            m.ConsentCondition("sms", "marketing", "subscribed"),
        )
    )
    assert to_text(tree) == ISSUE_TEXT


@pytest.mark.parametrize(
    "text",
    [
        "trait(age) between 18 and 30",
        'trait(plan) in ("gold", "silver")',
        'trait(email) contains "@example." or trait(name) starts_with "An"',
        "trait(vip) exists and trait(churned) not_exists",
        'trait(signup) < time("2026-01-01T00:00:00Z")',
        "has(email) and has_no(phone) and has(external:crm_id)",
        "not (consent(email, marketing) = unsubscribed or consent(push, transactional) = unknown)",
        'performed("Order Completed", type: track, revenue > 100).count() between 2 and 5',
        'performed("Order Completed").between(time("2026-01-01T00:00:00Z"), '
        'time("2026-02-01T00:00:00Z"))',
        'performed("Order Completed").first() before 90d ago',
        'performed("Order Completed").last() after time("2026-05-01T00:00:00Z")',
        'sum("Order Completed", revenue, currency = "USD").within(90d) >= 100',
        'avg("Order Completed", revenue).within(12h) between 10 and 20.5',
        'count("Page Viewed", *) != 3',
        'in_segment(vip) and in_segment("big-spenders")',
        '(trait(a) = 1 and trait(b) = 2) and trait(c) = "x\\"y"',
        'performed("Order Completed").count(every week, last 1 week) < 2',
    ],
)
def test_canonical_texts_print_back_unchanged(text: str) -> None:
    tree = parse(text)
    assert to_text(tree) == text
    assert from_proto(to_proto(tree)) == tree


def test_spelling_variants_parse_to_the_canonical_form() -> None:
    tree = parse("trait( x )=1")
    assert to_text(tree) == "trait(x) = 1"
    assert to_text(parse('performed("A").within(14d)')) == 'performed("A").within(2w)'
    assert to_text(parse('trait(t) = time("2026-01-01")')) == (
        'trait(t) = time("2026-01-01T00:00:00Z")'
    )
    assert to_text(parse('trait(t) = time("2026-01-01T02:00:00+02:00")')) == (
        'trait(t) = time("2026-01-01T00:00:00Z")'
    )


@settings(max_examples=300, deadline=None)
@given(tree=conditions(NOW, depth=3))
def test_printing_then_parsing_gives_the_same_tree(tree: m.Condition) -> None:
    text = to_text(tree)
    assert parse(text) == tree
    assert to_text(parse(text)) == text


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=1, max_size=20), value=st.text(max_size=20))
def test_any_string_round_trips(name: str, value: str) -> None:
    tree = m.TraitCondition(name, m.Operator.EQ, (value,))
    assert parse(to_text(tree)) == tree


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("trait(x) = ", 1, 12, "expected a value"),
        ("trait(x) contains 5", 1, 1, "needs a string value"),
        ('performed("a").count(every month, last 2 weeks) >= 1', 1, 28, "units must match"),
        ("trait(a) = 1 and\n  consent(sms, bogus) = subscribed", 2, 3, "marketing"),
        ("trait(a) = 1 and\n  trait(b) ~ 2", 2, 12, "unexpected character"),
        ("trait(a) = 1 trait(b) = 2", 1, 14, "expected 'and', 'or'"),
        ("frobnicate(1)", 1, 1, "unknown condition 'frobnicate'"),
        ('performed("a").within(30x)', 1, 23, "expected a duration"),
        ("", 1, 1, "empty"),
        ("(trait(a) = 1", 1, 14, "expected ')'"),
        ('trait(t) > time("yesterday")', 1, 17, "not an ISO 8601 time"),
    ],
)
def test_errors_point_at_the_position(text: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse(text)
    error = caught.value
    assert (error.line, error.column) == (line, column), str(error)
    assert fragment in error.message
    assert str(error).startswith(f"line {line}, column {column}: ")
    assert error.pointer.splitlines()[-1] == " " * (column - 1) + "^"
