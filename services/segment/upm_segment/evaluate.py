"""The in-process evaluator: is one profile a member at time `now`, and when may that change?

It must agree with the SQL compiler (`compile.py`) on every input; a property test checks it.
Semantics shared with the compiler:

- A trait comparison holds only when the trait holds a value of the operand's type (string,
  number, boolean, timestamp); NEQ is the negation of EQ (a missing trait is "not equal").
  String order is code-point order.
- An event property filter looks at the JSON value at the dotted path: strings, numbers (not
  booleans) and booleans compare with operands of their type; `exists` means present and not
  JSON null; NEQ and NOT_EXISTS are negations.
- Windows: relative `now - D < t <= now`; absolute `start <= t < end`; periods as in the proto.
- Counts and sums over no events are 0; averages, minimums, maximums and first/last times over
  no events are undefined, and a condition on them is false.
- A missing consent record has the status `unknown`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from upm_segment import model as m


@dataclass(frozen=True)
class TraitValue:
    value_type: str  # string | number | boolean | timestamp | array | object | null
    value: Any


@dataclass(frozen=True)
class EventRecord:
    name: str
    type: str
    time: datetime
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProfileData:
    """What the evaluator needs of one profile (events may be limited to referenced names)."""

    profile_id: str
    traits: dict[str, TraitValue] = field(default_factory=dict)
    consents: dict[tuple[str, str], str] = field(default_factory=dict)
    identifier_types: set[str] = field(default_factory=set)
    events: list[EventRecord] = field(default_factory=list)


EventNode = m.EventCondition | m.AggregateCondition


def _typed(value: Any, kind: str) -> tuple[bool, Any]:
    """Whether a JSON value has the literal kind `kind`, and the comparable value."""
    if kind == "string":
        return isinstance(value, str), value
    if kind == "boolean":
        return isinstance(value, bool), value
    if kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else None
    return isinstance(value, datetime), value


def compare(operator: m.Operator, present: bool, actual: Any, values: tuple[m.Value, ...]) -> bool:
    """Apply an operator to a value of the operands' type (`present` False: missing or another
    type)."""
    if operator is m.Operator.NEQ:
        return not compare(m.Operator.EQ, present, actual, values)
    if operator is m.Operator.NOT_EXISTS:
        return not compare(m.Operator.EXISTS, present, actual, values)
    if not present:
        return False
    if operator is m.Operator.EXISTS:
        return True
    if operator is m.Operator.EQ:
        return bool(actual == values[0])
    if operator is m.Operator.IN:
        return any(actual == value for value in values)
    if operator is m.Operator.LT:
        return bool(actual < values[0])
    if operator is m.Operator.LTE:
        return bool(actual <= values[0])
    if operator is m.Operator.GT:
        return bool(actual > values[0])
    if operator is m.Operator.GTE:
        return bool(actual >= values[0])
    if operator is m.Operator.BETWEEN:
        return bool(values[0] <= actual <= values[1])
    if operator is m.Operator.CONTAINS:
        return str(values[0]) in actual
    if operator is m.Operator.STARTS_WITH:
        return bool(actual.startswith(values[0]))
    raise ValueError(f"unknown operator {operator}")


def _trait(node: m.TraitCondition, profile: ProfileData) -> bool:
    trait = profile.traits.get(node.name)
    if node.operator in (m.Operator.EXISTS, m.Operator.NOT_EXISTS):
        present = trait is not None and trait.value_type != "null"
        return compare(node.operator, present, None, ())
    kind = m.value_kind(node.values[0])
    present = trait is not None and trait.value_type == kind
    actual: Any = trait.value if trait is not None and present else None
    if present and kind == "number":
        actual = float(actual)
    return compare(node.operator, present, actual, node.values)


_MISSING = object()


def property_value(properties: Any, path: str) -> Any:
    """The JSON value at a dotted path, or `_MISSING`."""
    current = properties
    for key in path.split("."):
        if not isinstance(current, dict) or key not in current:
            return _MISSING
        current = current[key]
    return current


def _filter(item: m.PropertyFilter, properties: dict[str, Any]) -> bool:
    value = property_value(properties, item.property)
    if item.operator in (m.Operator.EXISTS, m.Operator.NOT_EXISTS):
        return compare(item.operator, value is not _MISSING and value is not None, None, ())
    ok, actual = _typed(value, m.value_kind(item.values[0]))
    return compare(item.operator, ok, actual, item.values)


def in_window(window: m.Window | None, moment: datetime, now: datetime) -> bool:
    if window is None:
        return True
    if isinstance(window, m.RelativeWindow):
        return now - window.duration < moment <= now
    return window.start <= moment < window.end


def _matching(node: EventNode, events: Iterable[EventRecord]) -> list[EventRecord]:
    """Events of the node's name, type and property filters (any time)."""
    event_type = node.event_type if isinstance(node, m.EventCondition) else None
    return [
        event
        for event in events
        if event.name == node.name
        and (event_type is None or event.type == event_type)
        and all(_filter(item, event.properties) for item in node.filters)
    ]


class _Matches:
    """The matching events of each event node for one profile, each computed once (evaluating
    a tree and finding its next edge both need them). Keyed by node identity, so an instance
    lives only as long as one call over trees that stay referenced meanwhile."""

    def __init__(self, profile: ProfileData) -> None:
        self._by_name: dict[str, list[EventRecord]] = {}
        for event in profile.events:
            self._by_name.setdefault(event.name, []).append(event)
        self._found: dict[int, list[EventRecord]] = {}

    def __call__(self, node: EventNode) -> list[EventRecord]:
        found = self._found.get(id(node))
        if found is None:
            found = self._found[id(node)] = _matching(node, self._by_name.get(node.name, ()))
        return found


def period_bounds(every: m.Periodicity, now: datetime) -> list[tuple[datetime, datetime]]:
    """(exclusive start, inclusive end) of each period, newest first."""
    length = every.length
    return [(now - (i + 1) * length, now - i * length) for i in range(every.count)]


def _event(node: m.EventCondition, matches: _Matches, now: datetime) -> bool:
    events = [e for e in matches(node) if in_window(node.window, e.time, now)]
    measure = node.measure
    if isinstance(measure, m.FirstLastMeasure):
        if not events:
            return False
        times = [e.time for e in events]
        moment = min(times) if measure.which == "first" else max(times)
        return measure.bound.holds(moment, now)
    if measure.every is None:
        return measure.comparison.holds(float(len(events)))
    return all(
        measure.comparison.holds(float(sum(1 for e in events if start < e.time <= end)))
        for start, end in period_bounds(measure.every, now)
    )


def _aggregate(node: m.AggregateCondition, matches: _Matches, now: datetime) -> bool:
    events = [e for e in matches(node) if in_window(node.window, e.time, now)]
    if node.property:
        numbers = []
        for event in events:
            ok, number = _typed(property_value(event.properties, node.property), "number")
            if ok:
                numbers.append(number)
    else:
        numbers = [1.0 for _ in events]
    function = node.function
    if function is m.AggregateFunction.COUNT:
        return node.comparison.holds(float(len(numbers)))
    if function is m.AggregateFunction.SUM:
        return node.comparison.holds(float(sum(numbers)))
    if not numbers:
        return False
    if function is m.AggregateFunction.AVG:
        return node.comparison.holds(sum(numbers) / len(numbers))
    if function is m.AggregateFunction.MIN:
        return node.comparison.holds(min(numbers))
    return node.comparison.holds(max(numbers))


def evaluate(condition: m.Condition, profile: ProfileData, now: datetime) -> bool:
    """Whether `profile` satisfies the resolved tree `condition` at `now`."""
    return _holds(condition, profile, _Matches(profile), now)


Check = Callable[[ProfileData], bool]


@dataclass(frozen=True)
class Plan:
    """A resolved tree prepared for evaluating many profiles: its event nodes that have window
    edges, with their offsets (see `next_edge`), found once; and its gate (see `gate_holds`),
    compiled to plain functions."""

    condition: m.Condition
    edge_nodes: tuple[tuple[EventNode, tuple[timedelta, ...]], ...]
    gate: tuple[Check, ...] = ()


def plan(condition: m.Condition) -> Plan:
    nodes = []
    for node in m.walk(condition):
        if isinstance(node, m.EventCondition | m.AggregateCondition):
            offsets = _edge_offsets(node)
            if offsets:
                nodes.append((node, tuple(offsets)))
    conjuncts = condition.conditions if isinstance(condition, m.And) else (condition,)
    gate = tuple(_check(c) for c in conjuncts if not reads_events(c))
    return Plan(condition, tuple(nodes), gate)


def reads_events(condition: m.Condition) -> bool:
    return any(isinstance(n, m.EventCondition | m.AggregateCondition) for n in m.walk(condition))


def gate_holds(prepared: Plan, profile: ProfileData) -> bool:
    """Whether the tree's top-level conjuncts that read no events (traits, consents,
    identifiers) hold. When one fails the tree is false whatever the profile's events, and it
    stays false until the profile changes (those conditions do not depend on `now`), so the
    events need not be read and there is no window edge to wait for."""
    return all(check(profile) for check in prepared.gate)


def _check(node: m.Condition) -> Check:
    """`_holds` of an event-free tree as a function of the profile, with what depends only on
    the tree (the operand's kind) worked out once."""
    if isinstance(node, m.And):
        parts = tuple(_check(c) for c in node.conditions)
        return lambda profile: all(part(profile) for part in parts)
    if isinstance(node, m.Or):
        parts = tuple(_check(c) for c in node.conditions)
        return lambda profile: any(part(profile) for part in parts)
    if isinstance(node, m.Not):
        inner = _check(node.condition)
        return lambda profile: not inner(profile)
    if isinstance(node, m.TraitCondition):
        return _trait_check(node)
    if isinstance(node, m.IdentifierCondition):
        kind, present = node.type, node.present
        return lambda profile: (kind in profile.identifier_types) == present
    if isinstance(node, m.ConsentCondition):
        key, status = (node.channel, node.purpose), node.status
        return lambda profile: profile.consents.get(key, "unknown") == status
    raise ValueError(f"not an event-free condition: {node!r}")


def _trait_check(node: m.TraitCondition) -> Check:
    name, operator, values = node.name, node.operator, node.values
    if operator in (m.Operator.EXISTS, m.Operator.NOT_EXISTS):

        def exists(profile: ProfileData) -> bool:
            trait = profile.traits.get(name)
            present = trait is not None and trait.value_type != "null"
            return compare(operator, present, None, ())

        return exists
    kind = m.value_kind(values[0])

    def holds(profile: ProfileData) -> bool:
        trait = profile.traits.get(name)
        if trait is None or trait.value_type != kind:
            return compare(operator, False, None, values)
        actual = float(trait.value) if kind == "number" else trait.value
        return compare(operator, True, actual, values)

    return holds


def evaluate_with_edges(
    plans: Sequence[Plan], profile: ProfileData, now: datetime
) -> list[tuple[bool, datetime | None]]:
    """`evaluate` and `next_edge` of several trees for one profile, finding each event node's
    matching events once."""
    matches = _Matches(profile)
    return [
        (_holds(item.condition, profile, matches, now), _next_edge(item, matches, now))
        for item in plans
    ]


def _holds(condition: m.Condition, profile: ProfileData, matches: _Matches, now: datetime) -> bool:
    if isinstance(condition, m.And):
        return all(_holds(child, profile, matches, now) for child in condition.conditions)
    if isinstance(condition, m.Or):
        return any(_holds(child, profile, matches, now) for child in condition.conditions)
    if isinstance(condition, m.Not):
        return not _holds(condition.condition, profile, matches, now)
    if isinstance(condition, m.TraitCondition):
        return _trait(condition, profile)
    if isinstance(condition, m.IdentifierCondition):
        return (condition.type in profile.identifier_types) == condition.present
    if isinstance(condition, m.ConsentCondition):
        status = profile.consents.get((condition.channel, condition.purpose), "unknown")
        return status == condition.status
    if isinstance(condition, m.EventCondition):
        return _event(condition, matches, now)
    if isinstance(condition, m.AggregateCondition):
        return _aggregate(condition, matches, now)
    raise ValueError("segment references must be resolved before evaluation")


def _edge_offsets(node: EventNode) -> list[timedelta]:
    """Offsets d such that the node's truth can change when `now` reaches `t + d` for a matching
    event time t (d = 0: a future event enters a relative window)."""
    offsets: list[timedelta] = []
    if isinstance(node.window, m.RelativeWindow):
        offsets += [timedelta(0), node.window.duration]
    if isinstance(node, m.EventCondition):
        measure = node.measure
        if isinstance(measure, m.CountMeasure) and measure.every is not None:
            length = measure.every.length
            offsets += [i * length for i in range(measure.every.count + 1)]
        if isinstance(measure, m.FirstLastMeasure) and measure.bound.ago is not None:
            offsets.append(measure.bound.ago)
    return offsets


def next_edge(
    condition: m.Condition | Plan, profile: ProfileData, now: datetime
) -> datetime | None:
    """The earliest time after `now` at which the membership may change with no new data; None
    when it cannot. The scheduler re-evaluates the profile then. A segment's `plan` may be
    passed instead of its condition, so that it is not planned again per profile."""
    prepared = condition if isinstance(condition, Plan) else plan(condition)
    return _next_edge(prepared, _Matches(profile), now)


def _next_edge(prepared: Plan, matches: _Matches, now: datetime) -> datetime | None:
    earliest: datetime | None = None
    for node, offsets in prepared.edge_nodes:
        for event in matches(node):
            for offset in offsets:
                moment = event.time + offset
                if moment > now and (earliest is None or moment < earliest):
                    earliest = moment
    return earliest


def event_horizons(conditions: Iterable[m.Condition], now: datetime) -> dict[str, datetime | None]:
    """Per event name of the trees, the earliest event time that can matter to `evaluate` or
    `next_edge` at `now` (None: every event since the beginning). Older events of that name
    need not be loaded."""
    horizons: dict[str, datetime | None] = {}
    for node in (node for condition in conditions for node in m.walk(condition)):
        if not isinstance(node, m.EventCondition | m.AggregateCondition):
            continue
        horizon = _horizon(node, now)
        if node.name in horizons:
            known = horizons[node.name]
            horizon = None if known is None or horizon is None else min(known, horizon)
        horizons[node.name] = horizon
    return horizons


def _horizon(node: EventNode, now: datetime) -> datetime | None:
    offsets = _edge_offsets(node)
    reach = now - max(offsets) if offsets else None
    window = node.window
    if isinstance(window, m.AbsoluteWindow):
        return window.start if reach is None else min(window.start, reach)
    if isinstance(window, m.RelativeWindow):
        return reach  # the window's duration is one of the offsets
    measure = node.measure if isinstance(node, m.EventCondition) else None
    if isinstance(measure, m.CountMeasure) and measure.every is not None:
        return reach  # only the periods count, and the oldest one is the largest offset
    return None
