"""Conversion between `upm.segment.v1.Condition` and the model in `model.py`.

`from_proto` reports what cannot be represented (an unset node, an unknown operator number) as
field violations with the node's path, then validates the resulting tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from upm.common.v1 import consent_pb2, event_pb2
from upm.segment.v1 import segment_service_pb2 as pb
from upm_common.errors import FieldViolation
from upm_common.protoconv import (
    datetime_to_timestamp,
    duration_to_timedelta,
    timedelta_to_duration,
    timestamp_to_datetime,
)
from upm_segment import model as m
from upm_segment.validate import raise_violations, validate

_OPERATORS = {
    pb.OPERATOR_EQ: m.Operator.EQ,
    pb.OPERATOR_NEQ: m.Operator.NEQ,
    pb.OPERATOR_LT: m.Operator.LT,
    pb.OPERATOR_LTE: m.Operator.LTE,
    pb.OPERATOR_GT: m.Operator.GT,
    pb.OPERATOR_GTE: m.Operator.GTE,
    pb.OPERATOR_BETWEEN: m.Operator.BETWEEN,
    pb.OPERATOR_IN: m.Operator.IN,
    pb.OPERATOR_CONTAINS: m.Operator.CONTAINS,
    pb.OPERATOR_STARTS_WITH: m.Operator.STARTS_WITH,
    pb.OPERATOR_EXISTS: m.Operator.EXISTS,
    pb.OPERATOR_NOT_EXISTS: m.Operator.NOT_EXISTS,
}
_OPERATORS_BACK = {value: key for key, value in _OPERATORS.items()}
_FUNCTIONS = {
    pb.AGGREGATE_FUNCTION_SUM: m.AggregateFunction.SUM,
    pb.AGGREGATE_FUNCTION_AVG: m.AggregateFunction.AVG,
    pb.AGGREGATE_FUNCTION_MIN: m.AggregateFunction.MIN,
    pb.AGGREGATE_FUNCTION_MAX: m.AggregateFunction.MAX,
    pb.AGGREGATE_FUNCTION_COUNT: m.AggregateFunction.COUNT,
}
_FUNCTIONS_BACK = {value: key for key, value in _FUNCTIONS.items()}
_UNITS = {
    pb.PERIOD_UNIT_DAY: m.PeriodUnit.DAY,
    pb.PERIOD_UNIT_WEEK: m.PeriodUnit.WEEK,
    pb.PERIOD_UNIT_MONTH: m.PeriodUnit.MONTH,
}
_UNITS_BACK = {value: key for key, value in _UNITS.items()}
_RELATIONS = {pb.TIME_RELATION_BEFORE: "before", pb.TIME_RELATION_AFTER: "after"}
_RELATIONS_BACK = {value: key for key, value in _RELATIONS.items()}
_PURPOSES = {
    consent_pb2.CONSENT_PURPOSE_MARKETING: "marketing",
    consent_pb2.CONSENT_PURPOSE_TRANSACTIONAL: "transactional",
}
_PURPOSES_BACK = {value: key for key, value in _PURPOSES.items()}
_STATUSES = {
    consent_pb2.CONSENT_STATUS_SUBSCRIBED: "subscribed",
    consent_pb2.CONSENT_STATUS_UNSUBSCRIBED: "unsubscribed",
    consent_pb2.CONSENT_STATUS_UNKNOWN: "unknown",
}
_STATUSES_BACK = {value: key for key, value in _STATUSES.items()}
_EVENT_TYPES = {
    event_pb2.EVENT_TYPE_IDENTIFY: "identify",
    event_pb2.EVENT_TYPE_TRACK: "track",
    event_pb2.EVENT_TYPE_PAGE: "page",
    event_pb2.EVENT_TYPE_SCREEN: "screen",
    event_pb2.EVENT_TYPE_GROUP: "group",
    event_pb2.EVENT_TYPE_ALIAS: "alias",
}
_EVENT_TYPES_BACK = {value: key for key, value in _EVENT_TYPES.items()}


class _Reader:
    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def bad(self, path: str, description: str) -> None:
        self.violations.append(FieldViolation(path, description))

    def enum(self, table: Mapping[Any, Any], number: int, path: str, what: str) -> Any:
        if number in table:
            return table[number]
        self.bad(path, f"unknown {what} {number}" if number else f"{what} is not set")
        return None

    def value(self, value: pb.Value, path: str) -> m.Value:
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            return value.string_value
        if kind == "number_value":
            return float(value.number_value)
        if kind == "bool_value":
            return value.bool_value
        if kind == "timestamp_value":
            return timestamp_to_datetime(value.timestamp_value)
        self.bad(path, "value is not set")
        return ""

    def values(self, values: Any, path: str) -> tuple[m.Value, ...]:
        return tuple(self.value(item, f"{path}.values[{i}]") for i, item in enumerate(values))

    def window(self, message: Any) -> m.Window | None:
        if not message.HasField("window"):
            return None
        window = message.window
        kind = window.WhichOneof("kind")
        if kind == "relative_duration":
            return m.RelativeWindow(duration_to_timedelta(window.relative_duration))
        if kind == "range":
            return m.AbsoluteWindow(
                timestamp_to_datetime(window.range.start_time),
                timestamp_to_datetime(window.range.end_time),
            )
        return None

    def comparison(self, message: pb.Comparison, path: str) -> m.Comparison:
        operator = self.enum(_OPERATORS, message.operator, f"{path}.operator", "operator")
        return m.Comparison(operator or m.Operator.GTE, message.value, message.upper_value)

    def filters(self, items: Any, path: str) -> tuple[m.PropertyFilter, ...]:
        result = []
        for index, item in enumerate(items):
            here = f"{path}.property_filters[{index}]"
            operator = self.enum(_OPERATORS, item.operator, f"{here}.operator", "operator")
            values = self.values(item.values, here)
            result.append(m.PropertyFilter(item.property, operator or m.Operator.EQ, values))
        return tuple(result)

    def condition(self, message: pb.Condition, path: str) -> m.Condition:
        kind = message.WhichOneof("kind")
        if kind in ("and", "or"):
            group = getattr(message, kind)
            items = tuple(
                self.condition(child, f"{path}.{kind}[{index}]")
                for index, child in enumerate(group.conditions)
            )
            return m.And(items) if kind == "and" else m.Or(items)
        if kind == "not":
            return m.Not(self.condition(getattr(message, "not"), f"{path}.not"))
        if kind == "trait":
            here = f"{path}.trait"
            trait = message.trait
            operator = self.enum(_OPERATORS, trait.operator, f"{here}.operator", "operator")
            return m.TraitCondition(
                trait.name, operator or m.Operator.EQ, self.values(trait.values, here)
            )
        if kind == "identifier":
            return m.IdentifierCondition(message.identifier.type, message.identifier.present)
        if kind == "consent":
            here = f"{path}.consent"
            consent = message.consent
            purpose = self.enum(_PURPOSES, consent.purpose, f"{here}.purpose", "purpose")
            status = self.enum(_STATUSES, consent.status, f"{here}.status", "status")
            return m.ConsentCondition(consent.channel, purpose or "", status or "")
        if kind == "event":
            return self.event(message.event, f"{path}.event")
        if kind == "aggregate":
            here = f"{path}.aggregate"
            agg = message.aggregate
            function = self.enum(_FUNCTIONS, agg.function, f"{here}.function", "function")
            if not agg.HasField("comparison"):
                self.bad(f"{here}.comparison", "comparison is not set")
            return m.AggregateCondition(
                name=agg.event_name,
                property=agg.property,
                function=function or m.AggregateFunction.COUNT,
                comparison=self.comparison(agg.comparison, f"{here}.comparison"),
                filters=self.filters(agg.property_filters, here),
                window=self.window(agg),
            )
        if kind == "segment":
            return m.SegmentCondition(message.segment.segment_id)
        self.bad(path, "condition is not set")
        return m.And(())

    def event(self, event: pb.EventCondition, here: str) -> m.EventCondition:
        event_type = None
        if event.event_type:
            event_type = self.enum(_EVENT_TYPES, event.event_type, f"{here}.event_type", "type")
        measure: m.Measure = m.CountMeasure()
        which = event.WhichOneof("measure")
        if which == "count":
            count = event.count
            every = None
            if count.HasField("every"):
                unit = self.enum(
                    _UNITS, count.every.unit, f"{here}.count.every.unit", "period unit"
                )
                every = m.Periodicity(unit or m.PeriodUnit.DAY, count.every.period_count)
            comparison = (
                self.comparison(count.comparison, f"{here}.count.comparison")
                if count.HasField("comparison")
                else m.AT_LEAST_ONCE
            )
            measure = m.CountMeasure(comparison, every)
        elif which in ("first_performed", "last_performed"):
            bound = getattr(event, which)
            key = f"{here}.{which}"
            relation = self.enum(_RELATIONS, bound.relation, f"{key}.relation", "relation")
            point = bound.WhichOneof("point")
            measure = m.FirstLastMeasure(
                which.split("_")[0],
                m.TimeBound(
                    relation or "",
                    time=timestamp_to_datetime(bound.time) if point == "time" else None,
                    ago=(
                        duration_to_timedelta(bound.ago_duration)
                        if point == "ago_duration"
                        else None
                    ),
                ),
            )
        return m.EventCondition(
            name=event.event_name,
            event_type=event_type,
            filters=self.filters(event.property_filters, here),
            window=self.window(event),
            measure=measure,
        )


def from_proto(message: pb.Condition, *, path: str = "definition") -> m.Condition:
    """The model of `message`; raises InvalidArgumentError naming every bad node."""
    reader = _Reader()
    condition = reader.condition(message, path)
    violations = reader.violations or validate(condition, path=path)
    raise_violations(violations)
    return condition


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = datetime_to_timestamp(moment.astimezone(UTC))
    assert stamp is not None
    return stamp


def _value(value: m.Value) -> pb.Value:
    if isinstance(value, bool):
        return pb.Value(bool_value=value)
    if isinstance(value, str):
        return pb.Value(string_value=value)
    if isinstance(value, int | float):
        return pb.Value(number_value=float(value))
    return pb.Value(timestamp_value=datetime_to_timestamp(value.astimezone(UTC)))


def _window(window: m.Window) -> pb.TimeWindow:
    if isinstance(window, m.RelativeWindow):
        return pb.TimeWindow(relative_duration=timedelta_to_duration(window.duration))
    return pb.TimeWindow(
        range=pb.TimeRange(
            start_time=datetime_to_timestamp(window.start),
            end_time=datetime_to_timestamp(window.end),
        )
    )


def _comparison(comparison: m.Comparison) -> pb.Comparison:
    return pb.Comparison(
        operator=_OPERATORS_BACK[comparison.operator],
        value=comparison.value,
        upper_value=comparison.upper,
    )


def _filters(filters: tuple[m.PropertyFilter, ...]) -> list[pb.PropertyFilter]:
    return [
        pb.PropertyFilter(
            property=item.property,
            operator=_OPERATORS_BACK[item.operator],
            values=[_value(v) for v in item.values],
        )
        for item in filters
    ]


def to_proto(condition: m.Condition) -> pb.Condition:
    """The protobuf form of a (valid) model tree."""
    if isinstance(condition, m.And | m.Or):
        key = "and" if isinstance(condition, m.And) else "or"
        group = pb.ConditionGroup(conditions=[to_proto(c) for c in condition.conditions])
        message = pb.Condition()
        getattr(message, key).CopyFrom(group)
        return message
    if isinstance(condition, m.Not):
        message = pb.Condition()
        getattr(message, "not").CopyFrom(to_proto(condition.condition))
        return message
    if isinstance(condition, m.TraitCondition):
        return pb.Condition(
            trait=pb.TraitCondition(
                name=condition.name,
                operator=_OPERATORS_BACK[condition.operator],
                values=[_value(v) for v in condition.values],
            )
        )
    if isinstance(condition, m.IdentifierCondition):
        return pb.Condition(
            identifier=pb.IdentifierCondition(type=condition.type, present=condition.present)
        )
    if isinstance(condition, m.ConsentCondition):
        return pb.Condition(
            consent=pb.ConsentCondition(
                channel=condition.channel,
                purpose=_PURPOSES_BACK[condition.purpose],
                status=_STATUSES_BACK[condition.status],
            )
        )
    if isinstance(condition, m.EventCondition):
        event = pb.EventCondition(
            event_name=condition.name, property_filters=_filters(condition.filters)
        )
        if condition.event_type is not None:
            event.event_type = _EVENT_TYPES_BACK[condition.event_type]
        if condition.window is not None:
            event.window.CopyFrom(_window(condition.window))
        measure = condition.measure
        if isinstance(measure, m.CountMeasure):
            count = pb.CountMeasure(comparison=_comparison(measure.comparison))
            if measure.every is not None:
                count.every.CopyFrom(
                    pb.Periodicity(
                        unit=_UNITS_BACK[measure.every.unit], period_count=measure.every.count
                    )
                )
            event.count.CopyFrom(count)
        else:
            bound = pb.TimeBound(relation=_RELATIONS_BACK[measure.bound.relation])
            if measure.bound.time is not None:
                bound.time.CopyFrom(_stamp(measure.bound.time))
            elif measure.bound.ago is not None:
                bound.ago_duration.CopyFrom(timedelta_to_duration(measure.bound.ago))
            getattr(event, f"{measure.which}_performed").CopyFrom(bound)
        return pb.Condition(event=event)
    if isinstance(condition, m.AggregateCondition):
        agg = pb.AggregateCondition(
            event_name=condition.name,
            property_filters=_filters(condition.filters),
            property=condition.property,
            function=_FUNCTIONS_BACK[condition.function],
            comparison=_comparison(condition.comparison),
        )
        if condition.window is not None:
            agg.window.CopyFrom(_window(condition.window))
        return pb.Condition(aggregate=agg)
    return pb.Condition(segment=pb.SegmentMembershipCondition(segment_id=condition.segment_id))
