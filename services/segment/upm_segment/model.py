"""The segment definition model: an immutable condition tree.

The tree mirrors `upm.segment.v1.Condition` (see `convert.py` for the mapping) and is what the
text form parses into, what the validator checks and what both evaluators (SQL and in-process)
interpret. Time semantics are documented in segment_service.proto and in `evaluate.py`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

# A literal: str, float, bool or an aware datetime. Integers are normalised to float.
Value = str | float | bool | datetime


class Operator(enum.StrEnum):
    EQ = "eq"
    NEQ = "neq"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    BETWEEN = "between"
    IN = "in"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    EXISTS = "exists"
    NOT_EXISTS = "not_exists"


ORDER_OPERATORS = frozenset({Operator.LT, Operator.LTE, Operator.GT, Operator.GTE})
COMPARISON_OPERATORS = frozenset({Operator.EQ, Operator.NEQ, *ORDER_OPERATORS, Operator.BETWEEN})


class AggregateFunction(enum.StrEnum):
    SUM = "sum"
    AVG = "avg"
    MIN = "min"
    MAX = "max"
    COUNT = "count"


class PeriodUnit(enum.StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


PERIOD_LENGTHS = {
    PeriodUnit.DAY: timedelta(days=1),
    PeriodUnit.WEEK: timedelta(days=7),
    PeriodUnit.MONTH: timedelta(days=30),
}

IDENTIFIER_TYPES = ("user_id", "email", "phone", "anonymous_id", "device_id")
CONSENT_PURPOSES = ("marketing", "transactional")
CONSENT_STATUSES = ("subscribed", "unsubscribed", "unknown")
EVENT_TYPES = ("identify", "track", "page", "screen", "group", "alias")


def value_kind(value: Value) -> str:
    """The type name of a literal: string, number, boolean or timestamp."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, datetime):
        return "timestamp"
    return "number"


@dataclass(frozen=True)
class And:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class Or:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    condition: Condition


@dataclass(frozen=True)
class TraitCondition:
    name: str
    operator: Operator
    values: tuple[Value, ...] = ()


@dataclass(frozen=True)
class IdentifierCondition:
    type: str
    present: bool = True


@dataclass(frozen=True)
class ConsentCondition:
    channel: str
    purpose: str
    status: str


@dataclass(frozen=True)
class PropertyFilter:
    property: str
    operator: Operator
    values: tuple[Value, ...] = ()


@dataclass(frozen=True)
class RelativeWindow:
    """Events with `now - duration < event_time <= now`."""

    duration: timedelta


@dataclass(frozen=True)
class AbsoluteWindow:
    """Events with `start <= event_time < end`."""

    start: datetime
    end: datetime


Window = RelativeWindow | AbsoluteWindow


@dataclass(frozen=True)
class Comparison:
    operator: Operator
    value: float
    upper: float = 0.0

    def holds(self, measured: float) -> bool:
        """Whether `measured` passes the comparison."""
        op = self.operator
        if op is Operator.EQ:
            return measured == self.value
        if op is Operator.NEQ:
            return measured != self.value
        if op is Operator.LT:
            return measured < self.value
        if op is Operator.LTE:
            return measured <= self.value
        if op is Operator.GT:
            return measured > self.value
        if op is Operator.GTE:
            return measured >= self.value
        if op is Operator.BETWEEN:
            return self.value <= measured <= self.upper
        raise ValueError(f"operator {op} is not a numeric comparison")


AT_LEAST_ONCE = Comparison(Operator.GTE, 1.0)


@dataclass(frozen=True)
class Periodicity:
    unit: PeriodUnit
    count: int

    @property
    def length(self) -> timedelta:
        return PERIOD_LENGTHS[self.unit]


@dataclass(frozen=True)
class CountMeasure:
    comparison: Comparison = AT_LEAST_ONCE
    every: Periodicity | None = None


@dataclass(frozen=True)
class TimeBound:
    """`before` means `time <= point`, `after` means `time > point`; the point is `time` or
    `now - ago`."""

    relation: str
    time: datetime | None = None
    ago: timedelta | None = None

    def point(self, now: datetime) -> datetime:
        if self.time is not None:
            return self.time
        assert self.ago is not None
        return now - self.ago

    def holds(self, moment: datetime, now: datetime) -> bool:
        point = self.point(now)
        return moment <= point if self.relation == "before" else moment > point


@dataclass(frozen=True)
class FirstLastMeasure:
    which: str  # first | last
    bound: TimeBound


Measure = CountMeasure | FirstLastMeasure


@dataclass(frozen=True)
class EventCondition:
    name: str
    event_type: str | None = None
    filters: tuple[PropertyFilter, ...] = ()
    window: Window | None = None
    measure: Measure = CountMeasure()


@dataclass(frozen=True)
class AggregateCondition:
    name: str
    property: str
    function: AggregateFunction
    comparison: Comparison
    filters: tuple[PropertyFilter, ...] = ()
    window: Window | None = None


@dataclass(frozen=True)
class SegmentCondition:
    segment_id: str


Condition = (
    And
    | Or
    | Not
    | TraitCondition
    | IdentifierCondition
    | ConsentCondition
    | EventCondition
    | AggregateCondition
    | SegmentCondition
)


def children(condition: Condition) -> tuple[Condition, ...]:
    if isinstance(condition, And | Or):
        return condition.conditions
    if isinstance(condition, Not):
        return (condition.condition,)
    return ()


def walk(condition: Condition) -> list[Condition]:
    """Every node of the tree, depth first."""
    nodes = [condition]
    for child in children(condition):
        nodes.extend(walk(child))
    return nodes


def referenced_segments(condition: Condition) -> set[str]:
    return {node.segment_id for node in walk(condition) if isinstance(node, SegmentCondition)}


@dataclass(frozen=True)
class Dependencies:
    """What a definition reads, so the membership worker re-evaluates only affected segments."""

    traits: frozenset[str]
    event_names: frozenset[str]
    consents: bool
    time_dependent: bool


def dependencies(condition: Condition) -> Dependencies:
    """The dependencies of a resolved tree (segment references already inlined or ignored)."""
    traits: set[str] = set()
    names: set[str] = set()
    consents = time_dependent = False
    for node in walk(condition):
        if isinstance(node, TraitCondition):
            traits.add(node.name)
        elif isinstance(node, ConsentCondition):
            consents = True
        elif isinstance(node, EventCondition | AggregateCondition):
            names.add(node.name)
            if is_time_dependent(node):
                time_dependent = True
    return Dependencies(frozenset(traits), frozenset(names), consents, time_dependent)


def is_time_dependent(node: EventCondition | AggregateCondition) -> bool:
    """Whether the node's truth can change as time passes with no new data."""
    if isinstance(node.window, RelativeWindow):
        return True
    if isinstance(node, EventCondition):
        measure = node.measure
        if isinstance(measure, CountMeasure) and measure.every is not None:
            return True
        if isinstance(measure, FirstLastMeasure) and measure.bound.ago is not None:
            return True
    return False
