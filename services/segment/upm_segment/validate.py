"""Validation of a condition tree, with errors that name the offending node.

Paths follow the tree: `definition.and[1].trait.operator`, `definition.not.event.window`,
`definition.or[0].aggregate.comparison.operator`. Segment-reference cycles are found by
`resolve.py`, which knows the other segments.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from upm_common.errors import FieldViolation, InvalidArgumentError
from upm_segment import model as m

MAX_DEPTH = 32
MAX_NODES = 500
MAX_VALUES = 1000
MAX_STRING = 1000
MAX_PERIODS = 120
SEGMENT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
PROPERTY_KEY = re.compile(r'^[^"\\.\x00-\x1f]{1,200}$')
CHANNEL = re.compile(r"^[a-z0-9_][a-z0-9_-]{0,63}$")
EXTERNAL = re.compile(r"^external:[A-Za-z0-9_.-]{1,64}$")
MAX_DURATION = timedelta(days=3660)


class _Collector:
    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def add(self, path: str, description: str) -> None:
        self.violations.append(FieldViolation(path, description))


def validate(condition: m.Condition, *, path: str = "definition") -> list[FieldViolation]:
    """Every problem of the tree; empty when it is valid."""
    out = _Collector()
    nodes = m.walk(condition)
    if len(nodes) > MAX_NODES:
        out.add(path, f"has {len(nodes)} nodes; at most {MAX_NODES} are allowed")
        return out.violations
    _node(condition, path, 1, out)
    return out.violations


def check(condition: m.Condition, *, path: str = "definition") -> None:
    """Raise InvalidArgumentError naming every problem of the tree."""
    raise_violations(validate(condition, path=path))


def raise_violations(violations: Sequence[FieldViolation]) -> None:
    if violations:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise InvalidArgumentError(
            f"invalid segment definition: {first.field}: {first.description}{more}",
            violations=violations,
        )


def _node(node: m.Condition, path: str, depth: int, out: _Collector) -> None:
    if depth > MAX_DEPTH:
        out.add(path, f"is nested deeper than {MAX_DEPTH} levels")
        return
    if isinstance(node, m.And | m.Or):
        key = "and" if isinstance(node, m.And) else "or"
        if not node.conditions:
            out.add(f"{path}.{key}", "needs at least one condition")
        for index, child in enumerate(node.conditions):
            _node(child, f"{path}.{key}[{index}]", depth + 1, out)
    elif isinstance(node, m.Not):
        _node(node.condition, f"{path}.not", depth + 1, out)
    elif isinstance(node, m.TraitCondition):
        here = f"{path}.trait"
        if not node.name or len(node.name) > 200:
            out.add(f"{here}.name", "must be 1 to 200 characters")
        _operands(node.operator, node.values, here, out, allow_timestamps=True)
    elif isinstance(node, m.IdentifierCondition):
        if node.type not in m.IDENTIFIER_TYPES and not EXTERNAL.match(node.type):
            out.add(
                f"{path}.identifier.type",
                f"unknown identifier type {node.type!r}; expected one of "
                f"{', '.join(m.IDENTIFIER_TYPES)} or external:<namespace>",
            )
    elif isinstance(node, m.ConsentCondition):
        here = f"{path}.consent"
        if not CHANNEL.match(node.channel):
            out.add(f"{here}.channel", f"invalid channel {node.channel!r}")
        if node.purpose not in m.CONSENT_PURPOSES:
            out.add(f"{here}.purpose", f"must be one of {', '.join(m.CONSENT_PURPOSES)}")
        if node.status not in m.CONSENT_STATUSES:
            out.add(f"{here}.status", f"must be one of {', '.join(m.CONSENT_STATUSES)}")
    elif isinstance(node, m.EventCondition):
        _event(node, f"{path}.event", out)
    elif isinstance(node, m.AggregateCondition):
        _aggregate(node, f"{path}.aggregate", out)
    elif isinstance(node, m.SegmentCondition):
        if not SEGMENT_ID.match(node.segment_id):
            out.add(f"{path}.segment.segment_id", f"invalid segment id {node.segment_id!r}")
    else:  # pragma: no cover - the union is closed
        out.add(path, f"unknown condition {type(node).__name__}")


def _operands(
    operator: m.Operator,
    values: tuple[m.Value, ...],
    here: str,
    out: _Collector,
    *,
    allow_timestamps: bool,
) -> None:
    if not isinstance(operator, m.Operator):
        out.add(f"{here}.operator", f"unknown operator {operator!r}")
        return
    expected: Callable[[int], bool]
    if operator in (m.Operator.EXISTS, m.Operator.NOT_EXISTS):
        expected, wording = (lambda n: n == 0), "no values"
    elif operator is m.Operator.BETWEEN:
        expected, wording = (lambda n: n == 2), "exactly two values"
    elif operator is m.Operator.IN:
        expected, wording = (lambda n: 1 <= n <= MAX_VALUES), f"1 to {MAX_VALUES} values"
    else:
        expected, wording = (lambda n: n == 1), "exactly one value"
    if not expected(len(values)):
        out.add(f"{here}.values", f"operator {operator.value} takes {wording}, got {len(values)}")
        return
    kinds = {m.value_kind(value) for value in values}
    if len(kinds) > 1:
        out.add(f"{here}.values", f"values mix types: {', '.join(sorted(kinds))}")
        return
    for index, value in enumerate(values):
        if isinstance(value, str) and len(value) > MAX_STRING:
            out.add(f"{here}.values[{index}]", f"is longer than {MAX_STRING} characters")
        if isinstance(value, float) and not math.isfinite(value):
            out.add(f"{here}.values[{index}]", "must be a finite number")
        if isinstance(value, datetime) and value.tzinfo is None:
            out.add(f"{here}.values[{index}]", "a timestamp needs a time zone")
    if not kinds:
        return
    kind = kinds.pop()
    if kind == "timestamp" and not allow_timestamps:
        out.add(f"{here}.values", "event properties cannot be compared with timestamps")
    elif operator in (m.Operator.CONTAINS, m.Operator.STARTS_WITH) and kind != "string":
        out.add(
            f"{here}.operator",
            f"type mismatch: operator {operator.value} needs a string value, got a {kind}",
        )
    elif (operator in m.ORDER_OPERATORS or operator is m.Operator.BETWEEN) and kind == "boolean":
        out.add(
            f"{here}.operator",
            f"type mismatch: operator {operator.value} does not apply to a boolean value",
        )


def _property(prop: str, here: str, out: _Collector, *, required: bool = True) -> None:
    if not prop:
        if required:
            out.add(here, "names no property")
        return
    if not all(PROPERTY_KEY.match(key) for key in prop.split(".")):
        out.add(here, f"invalid property path {prop!r}")


def _filters(filters: tuple[m.PropertyFilter, ...], here: str, out: _Collector) -> None:
    for index, item in enumerate(filters):
        path = f"{here}.property_filters[{index}]"
        _property(item.property, f"{path}.property", out)
        _operands(item.operator, item.values, path, out, allow_timestamps=False)


def _window(window: m.Window | None, here: str, out: _Collector) -> None:
    if isinstance(window, m.RelativeWindow):
        if not timedelta(0) < window.duration <= MAX_DURATION:
            out.add(f"{here}.window.relative_duration", "must be positive and at most 10 years")
    elif isinstance(window, m.AbsoluteWindow):
        if window.start.tzinfo is None or window.end.tzinfo is None:
            out.add(f"{here}.window.range", "times need a time zone")
        elif window.start >= window.end:
            out.add(f"{here}.window.range", "start_time must be before end_time")


def _comparison(comparison: m.Comparison, here: str, out: _Collector) -> None:
    if comparison.operator not in m.COMPARISON_OPERATORS:
        out.add(
            f"{here}.operator",
            f"operator {getattr(comparison.operator, 'value', comparison.operator)} "
            "is not a numeric comparison (use eq, neq, lt, lte, gt, gte or between)",
        )
    elif comparison.operator is m.Operator.BETWEEN and comparison.value > comparison.upper:
        out.add(f"{here}.upper_value", "must not be below value")
    if not (math.isfinite(comparison.value) and math.isfinite(comparison.upper)):
        out.add(f"{here}.value", "must be a finite number")


def _event(node: m.EventCondition, here: str, out: _Collector) -> None:
    if not node.name or len(node.name) > 200:
        out.add(f"{here}.event_name", "must be 1 to 200 characters")
    if node.event_type is not None and node.event_type not in m.EVENT_TYPES:
        out.add(f"{here}.event_type", f"unknown event type {node.event_type!r}")
    _filters(node.filters, here, out)
    _window(node.window, here, out)
    measure = node.measure
    if isinstance(measure, m.CountMeasure):
        _comparison(measure.comparison, f"{here}.count.comparison", out)
        if measure.every is not None:
            if not 1 <= measure.every.count <= MAX_PERIODS:
                out.add(f"{here}.count.every.period_count", f"must be 1 to {MAX_PERIODS}")
            if not isinstance(measure.every.unit, m.PeriodUnit):
                out.add(f"{here}.count.every.unit", "unknown period unit")
            if node.window is not None:
                out.add(f"{here}.window", "cannot be combined with `every` periods")
    else:
        key = f"{here}.{measure.which}_performed"
        bound = measure.bound
        if bound.relation not in ("before", "after"):
            out.add(f"{key}.relation", "must be before or after")
        if (bound.time is None) == (bound.ago is None):
            out.add(key, "needs exactly one of time and ago_duration")
        elif bound.ago is not None and not timedelta(0) <= bound.ago <= MAX_DURATION:
            out.add(f"{key}.ago_duration", "must be between 0 and 10 years")
        elif bound.time is not None and bound.time.tzinfo is None:
            out.add(f"{key}.time", "needs a time zone")


def _aggregate(node: m.AggregateCondition, here: str, out: _Collector) -> None:
    if not node.name or len(node.name) > 200:
        out.add(f"{here}.event_name", "must be 1 to 200 characters")
    if not isinstance(node.function, m.AggregateFunction):
        out.add(f"{here}.function", f"unknown function {node.function!r}")
    _property(
        node.property, f"{here}.property", out, required=node.function != m.AggregateFunction.COUNT
    )
    _filters(node.filters, here, out)
    _window(node.window, here, out)
    _comparison(node.comparison, f"{here}.comparison", out)
