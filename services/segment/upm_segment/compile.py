"""The SQL evaluator: a resolved condition tree compiled to SQLAlchemy Core over the read model.

Every node becomes a predicate on `profile_profiles.id` of the form `id IN (subquery)` or
`id NOT IN (subquery)`, never NULL, so NOT and OR keep two-valued logic. Counts over events
use `GROUP BY profile_id HAVING ...`; when a profile with no matching event would pass the
comparison (e.g. `count < 3`), the complement is used: `id NOT IN (... HAVING NOT ...)`.
Semantics are documented in `evaluate.py`, which must agree with this module.

JSON access differs by dialect: PostgreSQL uses `#>` / `#>>` and `jsonb_typeof`; SQLite uses
`json_extract` and `json_type`. String order uses the "C" collation on PostgreSQL, which is
code-point order like SQLite's BINARY and Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Float,
    Select,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import Text

from upm_common.db import UtcDateTime
from upm_profile.store import tables as t
from upm_segment import model as m
from upm_segment.evaluate import period_bounds

Predicate = ColumnElement[bool]
WORK_MEM = "64MB"

_TRAIT_COLUMNS = {
    "string": t.traits.c.text_value,
    "number": t.traits.c.num_value,
    "boolean": t.traits.c.bool_value,
    "timestamp": t.traits.c.time_value,
}
_SQLITE_TYPES = {
    "string": ("text",),
    "number": ("integer", "real"),
    "boolean": ("true", "false"),
}
_PG_TYPES = {"string": "string", "number": "number", "boolean": "boolean"}


def _cmp(operator: m.Operator, column: Any, values: Sequence[Any]) -> Predicate:
    if operator is m.Operator.EQ:
        return column == values[0]  # type: ignore[no-any-return]
    if operator is m.Operator.IN:
        return column.in_(list(values))  # type: ignore[no-any-return]
    if operator is m.Operator.LT:
        return column < values[0]  # type: ignore[no-any-return]
    if operator is m.Operator.LTE:
        return column <= values[0]  # type: ignore[no-any-return]
    if operator is m.Operator.GT:
        return column > values[0]  # type: ignore[no-any-return]
    if operator is m.Operator.GTE:
        return column >= values[0]  # type: ignore[no-any-return]
    if operator is m.Operator.BETWEEN:
        # Not BETWEEN: PostgreSQL rejects `x BETWEEN $1 COLLATE "C" AND ...`.
        return and_(column >= values[0], column <= values[1])
    raise ValueError(f"operator {operator} is not a comparison")


def _comparison(comparison: m.Comparison, column: Any) -> Predicate:
    if comparison.operator is m.Operator.NEQ:
        return column != comparison.value  # type: ignore[no-any-return]
    return _cmp(comparison.operator, column, (comparison.value, comparison.upper))


class SqlCompiler:
    """Compiles resolved trees for one dialect (`postgresql` or `sqlite`) at one time `now`."""

    def __init__(self, dialect: str, now: datetime) -> None:
        self.postgres = dialect == "postgresql"
        self.now = now

    # --- public queries ---------------------------------------------------------------------

    def predicate(self, condition: m.Condition) -> Predicate:
        return self._node(condition)

    def live(self) -> Predicate:
        return t.profiles.c.merged_into.is_(None)

    def count_query(self, condition: m.Condition) -> Select[int]:
        return (
            select(func.count())
            .select_from(t.profiles)
            .where(self.live(), self.predicate(condition))
        )

    def members_query(
        self, condition: m.Condition, *, after: str | None = None, limit: int | None = None
    ) -> Select[str]:
        query = (
            select(t.profiles.c.id)
            .where(self.live(), self.predicate(condition))
            .order_by(t.profiles.c.id)
        )
        if after:
            query = query.where(t.profiles.c.id > after)
        if limit is not None:
            query = query.limit(limit)
        return query

    def overlap_query(self, first: m.Condition, second: m.Condition) -> Select[int, int, int]:
        a, b = self.predicate(first), self.predicate(second)
        return (
            select(
                func.count().filter(a),
                func.count().filter(b),
                func.count().filter(and_(a, b)),
            )
            .select_from(t.profiles)
            .where(self.live())
        )

    # --- nodes ------------------------------------------------------------------------------

    def _node(self, node: m.Condition) -> Predicate:
        if isinstance(node, m.And):
            return and_(true(), *(self._node(c) for c in node.conditions))
        if isinstance(node, m.Or):
            return or_(false(), *(self._node(c) for c in node.conditions))
        if isinstance(node, m.Not):
            return not_(self._node(node.condition))
        if isinstance(node, m.TraitCondition):
            return self._trait(node)
        if isinstance(node, m.IdentifierCondition):
            ids = select(t.identifiers.c.profile_id).where(t.identifiers.c.type == node.type)
            has = t.profiles.c.id.in_(ids)
            return has if node.present else not_(has)
        if isinstance(node, m.ConsentCondition):
            return self._consent(node)
        if isinstance(node, m.EventCondition):
            return self._event(node)
        if isinstance(node, m.AggregateCondition):
            return self._aggregate(node)
        raise ValueError("segment references must be resolved before compiling")

    def _text_order(self, column: Any) -> Any:
        return column.collate("C") if self.postgres else column

    def _string_test(self, operator: m.Operator, column: Any, value: str) -> Predicate:
        if operator is m.Operator.CONTAINS:
            found = func.strpos(column, value) if self.postgres else func.instr(column, value)
            return found > 0
        return func.substr(column, 1, len(value)) == value

    def _trait(self, node: m.TraitCondition) -> Predicate:
        traits = t.traits
        base = select(traits.c.profile_id).where(traits.c.name == node.name)
        operator = node.operator
        if operator in (m.Operator.EXISTS, m.Operator.NOT_EXISTS):
            inside = t.profiles.c.id.in_(base.where(traits.c.value_type != "null"))
            return inside if operator is m.Operator.EXISTS else not_(inside)
        kind = m.value_kind(node.values[0])
        column: Any = _TRAIT_COLUMNS[kind]
        positive = m.Operator.EQ if operator is m.Operator.NEQ else operator
        test: Predicate
        if positive in (m.Operator.CONTAINS, m.Operator.STARTS_WITH):
            test = self._string_test(positive, column, str(node.values[0]))
        else:
            if kind == "string" and positive in (*m.ORDER_OPERATORS, m.Operator.BETWEEN):
                column = self._text_order(column)
            test = _cmp(positive, column, node.values)
        inside = t.profiles.c.id.in_(base.where(traits.c.value_type == kind, test))
        return not_(inside) if operator is m.Operator.NEQ else inside

    def _consent(self, node: m.ConsentCondition) -> Predicate:
        consents = t.consents
        base = select(consents.c.profile_id).where(
            consents.c.channel == node.channel, consents.c.purpose == node.purpose
        )
        if node.status == "unknown":
            return not_(t.profiles.c.id.in_(base.where(consents.c.status != "unknown")))
        return t.profiles.c.id.in_(base.where(consents.c.status == node.status))

    # --- JSON properties ----------------------------------------------------------------------

    def _json_type(self, path: str) -> Any:
        keys = path.split(".")
        if self.postgres:
            node = t.events.c.properties.op("#>", return_type=JSONB)(literal(keys, ARRAY(Text)))
            return func.jsonb_typeof(node)
        return func.json_type(t.events.c.properties, _sqlite_path(keys))

    def _json_value(self, path: str, kind: str) -> Any:
        keys = path.split(".")
        if self.postgres:
            text = t.events.c.properties.op("#>>", return_type=Text)(literal(keys, ARRAY(Text)))
            if kind == "number":
                return case((self._json_is(path, "number"), cast(text, Float)), else_=None)
            if kind == "boolean":
                return text == "true"
            return text
        value = func.json_extract(t.events.c.properties, _sqlite_path(keys))
        if kind == "boolean":
            return func.json_type(t.events.c.properties, _sqlite_path(keys)) == "true"
        if kind == "number":
            return case((self._json_is(path, "number"), value), else_=None)
        return value

    def _json_is(self, path: str, kind: str) -> Predicate:
        json_type = self._json_type(path)
        if self.postgres:
            return json_type == _PG_TYPES[kind]  # type: ignore[no-any-return]
        return json_type.in_(_SQLITE_TYPES[kind])  # type: ignore[no-any-return]

    def _filter(self, item: m.PropertyFilter) -> Predicate:
        operator = item.operator
        if operator in (m.Operator.EXISTS, m.Operator.NOT_EXISTS):
            json_type = self._json_type(item.property)
            exists = func.coalesce(and_(json_type.is_not(None), json_type != "null"), false())
            return exists if operator is m.Operator.EXISTS else not_(exists)
        kind = m.value_kind(item.values[0])
        positive = m.Operator.EQ if operator is m.Operator.NEQ else operator
        value = self._json_value(item.property, kind)
        test: Predicate
        if positive in (m.Operator.CONTAINS, m.Operator.STARTS_WITH):
            test = self._string_test(positive, value, str(item.values[0]))
        else:
            if kind == "string" and positive in (*m.ORDER_OPERATORS, m.Operator.BETWEEN):
                value = self._text_order(value)
            test = _cmp(positive, value, item.values)
        holds = func.coalesce(and_(self._json_is(item.property, kind), test), false())
        return not_(holds) if operator is m.Operator.NEQ else holds

    # --- events ---------------------------------------------------------------------------------

    def _rows(
        self, node: m.EventCondition | m.AggregateCondition, window: m.Window | None
    ) -> list[Predicate]:
        events = t.events
        where: list[Predicate] = [events.c.name == node.name]
        if isinstance(node, m.EventCondition) and node.event_type is not None:
            where.append(events.c.type == node.event_type)
        where += [self._filter(item) for item in node.filters]
        if isinstance(window, m.RelativeWindow):
            where += [
                events.c.event_time > self._time(self.now - window.duration),
                events.c.event_time <= self._time(self.now),
            ]
        elif isinstance(window, m.AbsoluteWindow):
            where += [
                events.c.event_time >= self._time(window.start),
                events.c.event_time < self._time(window.end),
            ]
        return where

    @staticmethod
    def _time(moment: datetime) -> Any:
        return literal(moment, UtcDateTime)

    def _grouped(self, where: list[Predicate], having: Predicate, zero_passes: bool) -> Predicate:
        """Profiles whose matching rows pass `having`; `zero_passes` says whether a profile
        with no matching row passes too."""
        events = t.events
        if zero_passes:
            failing = (
                select(events.c.profile_id)
                .where(*where)
                .group_by(events.c.profile_id)
                .having(not_(having))
            )
            return not_(t.profiles.c.id.in_(failing))
        passing = (
            select(events.c.profile_id).where(*where).group_by(events.c.profile_id).having(having)
        )
        return t.profiles.c.id.in_(passing)

    def _event(self, node: m.EventCondition) -> Predicate:
        measure = node.measure
        events = t.events
        if isinstance(measure, m.FirstLastMeasure):
            bound = measure.bound
            column = events.c.event_time
            moment = func.min(column) if measure.which == "first" else func.max(column)
            point = self._time(bound.point(self.now))
            test = moment <= point if bound.relation == "before" else moment > point
            return self._grouped(self._rows(node, node.window), test, zero_passes=False)
        comparison = measure.comparison
        zero_passes = comparison.holds(0.0)
        if measure.every is None:
            if (
                node.window is None
                and node.event_type is None
                and not node.filters
                and not zero_passes
            ):
                counts = t.event_counts
                fast = select(counts.c.profile_id).where(
                    counts.c.name == node.name, _comparison(comparison, counts.c.count)
                )
                return t.profiles.c.id.in_(fast)
            return self._grouped(
                self._rows(node, node.window), _comparison(comparison, func.count()), zero_passes
            )
        bounds = period_bounds(measure.every, self.now)
        oldest = bounds[-1][0]
        where = [
            *self._rows(node, None),
            events.c.event_time > self._time(oldest),
            events.c.event_time <= self._time(self.now),
        ]
        tests = []
        for start, end in bounds:
            in_period = and_(
                events.c.event_time > self._time(start), events.c.event_time <= self._time(end)
            )
            per_period = func.sum(case((in_period, 1), else_=0))
            tests.append(_comparison(comparison, per_period))
        return self._grouped(where, and_(*tests), zero_passes)

    def _aggregate(self, node: m.AggregateCondition) -> Predicate:
        where = self._rows(node, node.window)
        function = node.function
        value: Any = None
        if node.property:
            where.append(self._json_is(node.property, "number"))
            value = self._json_value(node.property, "number")
        if function is m.AggregateFunction.COUNT:
            statistic: Any = func.count()
        elif function is m.AggregateFunction.SUM:
            statistic = func.sum(value)
        elif function is m.AggregateFunction.AVG:
            statistic = func.avg(value)
        elif function is m.AggregateFunction.MIN:
            statistic = func.min(value)
        else:
            statistic = func.max(value)
        zero_passes = function in (
            m.AggregateFunction.COUNT,
            m.AggregateFunction.SUM,
        ) and node.comparison.holds(0.0)
        return self._grouped(where, _comparison(node.comparison, statistic), zero_passes)


async def prepare_read(conn: AsyncConnection, *, timeout_seconds: float | None = None) -> None:
    """Settings for segment queries in the connection's current transaction (PostgreSQL only):
    no JIT, whose compile time (about a second) exceeds the query time of a sub-second count;
    no nested loops, because the planner underestimates JSON property filters by orders of
    magnitude and then re-runs grouped subqueries per row (hash joins are right for counts over
    a population); a work_mem that keeps sorts in memory and bitmaps exact; and an optional
    statement timeout."""
    if conn.dialect.name != "postgresql":
        return
    await conn.exec_driver_sql("SET LOCAL jit = off")
    await conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
    await conn.exec_driver_sql(f"SET LOCAL work_mem = '{WORK_MEM}'")
    if timeout_seconds:
        await conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout_seconds * 1000)}")


def _sqlite_path(keys: list[str]) -> str:
    return "$" + "".join(f'."{key}"' for key in keys)
