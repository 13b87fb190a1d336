"""Invalid definitions are rejected with the offending node named."""

from __future__ import annotations

from datetime import timedelta

import pytest

from upm.segment.v1 import segment_service_pb2 as pb
from upm_common.errors import InvalidArgumentError
from upm_segment import model as m
from upm_segment.convert import from_proto, to_proto
from upm_segment.resolve import resolve
from upm_segment.validate import check


def _fields(error: InvalidArgumentError) -> list[str]:
    return [v.field for v in error.violations]


def test_unknown_operator_names_the_node() -> None:
    tree = to_proto(
        m.And(
            (
                m.TraitCondition("a", m.Operator.EQ, (1.0,)),
                m.TraitCondition("b", m.Operator.EQ, (2.0,)),
            )
        )
    )
    getattr(tree, "and").conditions[1].trait.operator = 99  # type: ignore[assignment]
    with pytest.raises(InvalidArgumentError) as caught:
        from_proto(tree)
    assert _fields(caught.value) == ["definition.and[1].trait.operator"]
    assert "unknown operator 99" in caught.value.violations[0].description


def test_unset_operator_and_unset_node_are_named() -> None:
    tree = pb.Condition()
    getattr(tree, "or").conditions.add().trait.name = "x"
    getattr(tree, "or").conditions.add()
    with pytest.raises(InvalidArgumentError) as caught:
        from_proto(tree)
    assert _fields(caught.value) == [
        "definition.or[0].trait.operator",
        "definition.or[1]",
    ]


@pytest.mark.parametrize(
    ("tree", "field", "fragment"),
    [
        (
            m.Not(m.TraitCondition("a", m.Operator.CONTAINS, (5.0,))),
            "definition.not.trait.operator",
            "type mismatch",
        ),
        (
            m.TraitCondition("a", m.Operator.LT, (True,)),
            "definition.trait.operator",
            "does not apply to a boolean",
        ),
        (
            m.TraitCondition("a", m.Operator.IN, ("x", 1.0)),
            "definition.trait.values",
            "mix types",
        ),
        (
            m.TraitCondition("a", m.Operator.BETWEEN, (1.0,)),
            "definition.trait.values",
            "exactly two values",
        ),
        (
            m.EventCondition(
                "E", filters=(m.PropertyFilter("p", m.Operator.STARTS_WITH, (True,)),)
            ),
            "definition.event.property_filters[0].operator",
            "type mismatch",
        ),
        (
            m.EventCondition(
                "E",
                window=m.RelativeWindow(timedelta(days=1)),
                measure=m.CountMeasure(every=m.Periodicity(m.PeriodUnit.DAY, 2)),
            ),
            "definition.event.window",
            "every",
        ),
        (
            m.AggregateCondition(
                "E", "", m.AggregateFunction.SUM, m.Comparison(m.Operator.GT, 1.0)
            ),
            "definition.aggregate.property",
            "names no property",
        ),
        (
            m.AggregateCondition(
                "E", "revenue", m.AggregateFunction.SUM, m.Comparison(m.Operator.IN, 1.0)
            ),
            "definition.aggregate.comparison.operator",
            "not a numeric comparison",
        ),
        (
            m.IdentifierCondition("fax"),
            "definition.identifier.type",
            "unknown identifier type",
        ),
        (
            m.And((m.ConsentCondition("sms", "marketing", "maybe"),)),
            "definition.and[0].consent.status",
            "subscribed",
        ),
    ],
)
def test_invalid_nodes_are_named(tree: m.Condition, field: str, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check(tree)
    assert field in _fields(caught.value)
    assert fragment in caught.value.message


def test_segment_reference_cycle_is_rejected_with_the_node_named() -> None:
    definitions = {
        "a": m.And((m.TraitCondition("x", m.Operator.EXISTS), m.SegmentCondition("b"))),
        "b": m.Or((m.TraitCondition("y", m.Operator.EXISTS), m.SegmentCondition("c"))),
        "c": m.Not(m.SegmentCondition("a")),
    }
    with pytest.raises(InvalidArgumentError) as caught:
        resolve(definitions["a"], definitions, self_id="a")
    assert _fields(caught.value) == ["definition.and[1].segment.segment_id"]
    assert "cycle: a -> b -> c -> a" in caught.value.message


def test_self_reference_and_unknown_segment_are_rejected() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        resolve(m.SegmentCondition("me"), {}, self_id="me")
    assert "cycle: me -> me" in caught.value.message
    with pytest.raises(InvalidArgumentError) as caught:
        resolve(m.Not(m.SegmentCondition("ghost")), {})
    assert _fields(caught.value) == ["definition.not.segment.segment_id"]
    assert "does not exist" in caught.value.message


def test_references_are_inlined() -> None:
    vip = m.TraitCondition("vip", m.Operator.EQ, (True,))
    tree = m.And((m.SegmentCondition("vip"), m.IdentifierCondition("email")))
    assert resolve(tree, {"vip": vip}) == m.And((vip, m.IdentifierCondition("email")))
