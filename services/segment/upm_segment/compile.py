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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Float,
    Select,
    and_,
    any_,
    case,
    cast,
    except_,
    false,
    func,
    intersect,
    literal,
    not_,
    select,
    union,
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
IdSet = Select[Any] | CompoundSelect[Any]
WORK_MEM = "64MB"


@dataclass(frozen=True)
class _Set:
    """A node compiled to a set of profile ids: the members are the ids in `ids`, or, when
    `negated`, every live profile except those ids. A leaf's positive set also offers
    `restrict(within)`: the same set computed only over the rows of profiles in `within`
    (a hashed semi-join on the leaf's own index range), which an AND chains from its cheapest
    conditions (`rank` 0: traits, consents, identifiers; 1: windowed events; 2: all events)
    to its dearest, so that each condition is evaluated once, on fewer and fewer rows."""

    ids: IdSet
    negated: bool = False
    restrict: Callable[[IdSet], IdSet] | None = None
    rank: int = 0
    grouped: _Grouped | None = None

    def flip(self) -> _Set:
        return _Set(self.ids, not self.negated)


Having = Callable[[Predicate | None], Predicate]


@dataclass(frozen=True)
class _Grouped:
    """A grouped event set's parts: conditions of an AND over the same index range (`key`:
    name, type and window) share one scan and one GROUP BY, their tests ANDed in HAVING."""

    key: tuple[Any, ...]
    rows: list[Predicate]
    filters: list[Predicate]
    having: Having


def _operand(ids: IdSet) -> Select[Any]:
    """A set usable inside another compound select (SQLite rejects nested parentheses)."""
    if isinstance(ids, CompoundSelect):
        inner = ids.subquery()
        return select(inner.c[0])
    return ids


def _intersect(sets: Sequence[IdSet]) -> IdSet:
    return sets[0] if len(sets) == 1 else intersect(*(_operand(s) for s in sets))


def _union(sets: Sequence[IdSet]) -> IdSet:
    return sets[0] if len(sets) == 1 else union(*(_operand(s) for s in sets))


def _except(kept: IdSet, removed: IdSet) -> IdSet:
    return except_(_operand(kept), _operand(removed))


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


def _count(condition: Predicate | None) -> Any:
    """The number of rows of a group, or of those meeting `condition`."""
    return func.count() if condition is None else func.count(case((condition, 1)))


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
        """`profile_profiles.id` is a member: every condition is evaluated once as a set of
        profile ids (index ranges of its own table), combined with INTERSECT / UNION / EXCEPT,
        and the profile table is joined to the result once."""
        found = self._set(condition)
        inside = t.profiles.c.id.in_(found.ids)
        return not_(inside) if found.negated else inside

    def live(self) -> Predicate:
        return t.profiles.c.merged_into.is_(None)

    def count_query(self, condition: m.Condition) -> Select[int]:
        """The number of members. A positive set is counted on its own, without joining the
        profile table: the read model holds rows only for live profiles (a merge moves the
        loser's identifiers and events to the winner and drops its traits and consents), and
        every set is duplicate-free (keys, GROUP BY, DISTINCT or set operators)."""
        found = self._set(condition)
        if found.negated:
            return (
                select(func.count())
                .select_from(t.profiles)
                .where(self.live(), t.profiles.c.id.not_in(found.ids))
            )
        return select(func.count()).select_from(_operand(found.ids).subquery())

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

    def _set(self, node: m.Condition) -> _Set:
        if isinstance(node, m.And):
            return self._and([self._set(c) for c in node.conditions])
        if isinstance(node, m.Or):
            return self._or([self._set(c) for c in node.conditions])
        if isinstance(node, m.Not):
            return self._set(node.condition).flip()
        if isinstance(node, m.TraitCondition):
            return self._trait(node)
        if isinstance(node, m.IdentifierCondition):
            ids = (
                select(t.identifiers.c.profile_id)
                .where(t.identifiers.c.type == node.type)
                .distinct()  # a profile may hold several identifiers of a type
            )
            if not node.present:
                return _Set(ids, negated=True)
            return self._leaf(ids, t.identifiers.c.profile_id)
        if isinstance(node, m.ConsentCondition):
            return self._consent(node)
        if isinstance(node, m.EventCondition):
            return self._event(node)
        if isinstance(node, m.AggregateCondition):
            return self._aggregate(node)
        raise ValueError("segment references must be resolved before compiling")

    @staticmethod
    def _empty() -> IdSet:
        return select(t.profiles.c.id).where(false())

    def _and(self, parts: list[_Set]) -> _Set:
        """Compound positive sets intersected, then the leaves' positive sets chained from the
        cheapest (each restricted to the ids passing the ones before), then the negated sets
        removed with EXCEPT."""
        compound = [p.ids for p in parts if not p.negated and p.restrict is None]
        chained = [p for p in parts if p.restrict is not None and p.grouped is None]
        same_range: dict[tuple[Any, ...], list[_Set]] = {}
        for part in parts:
            if part.restrict is not None and part.grouped is not None:
                same_range.setdefault(part.grouped.key, []).append(part)
        for group in same_range.values():
            chained.append(group[0] if len(group) == 1 else self._shared_scan(group))
        chained.sort(key=lambda p: p.rank)
        removed = [p.ids for p in parts if p.negated]
        kept: IdSet | None = _intersect(compound) if compound else None
        for part in chained:
            assert part.restrict is not None
            kept = part.ids if kept is None else part.restrict(kept)
        if kept is None:
            return _Set(_union(removed) if removed else self._empty(), negated=True)
        if removed:
            kept = _except(kept, _union(removed))
        return _Set(kept)

    def _shared_scan(self, parts: list[_Set]) -> _Set:
        """One GROUP BY over a shared index range for several grouped conditions."""
        groups = [p.grouped for p in parts if p.grouped is not None]
        events = t.events
        rank = min(p.rank for p in parts)

        def build(within: IdSet | None) -> IdSet:
            where = list(groups[0].rows)
            if within is not None:
                where.append(self._events_of(within, rank))
            tests = [g.having(and_(*g.filters) if g.filters else None) for g in groups]
            query = select(events.c.profile_id).where(*where).group_by(events.c.profile_id)
            return query.having(and_(*tests))

        return _Set(build(None), restrict=build, rank=rank)

    def _events_of(self, within: IdSet, rank: int) -> Predicate:
        """Events of the profiles in `within`. An all-time condition (rank 2) restricted by
        others reads, on PostgreSQL, only the events of those profiles: the ids become one
        array (an InitPlan) looked up in the (profile_id, event_time) index, instead of a hash
        probe per row of the name's whole history (nearly half the table for page views).
        Windowed conditions keep the probe: their index range is already narrow, and reading
        every event of each candidate would cost more."""
        ids = _operand(within)
        if self.postgres and rank == 2:
            return t.events.c.profile_id == any_(func.array(ids.scalar_subquery()))
        return t.events.c.profile_id.in_(ids)

    @staticmethod
    def _leaf(ids: Select[Any], column: Any) -> _Set:
        """A positive leaf set of `column` values, restrictable with `column IN (within)`."""
        return _Set(ids, restrict=lambda within: ids.where(column.in_(_operand(within))))

    def _or(self, parts: list[_Set]) -> _Set:
        """Union of positive sets; with negated parts, the complement of (negated ids in
        every negated part, minus every positive part)."""
        added = [p.ids for p in parts if not p.negated]
        negated = [p.ids for p in parts if p.negated]
        if not negated:
            return _Set(_union(added) if added else self._empty())
        outside = _intersect(negated)
        if added:
            outside = _except(outside, _union(added))
        return _Set(outside, negated=True)

    def _text_order(self, column: Any) -> Any:
        return column.collate("C") if self.postgres else column

    def _string_test(self, operator: m.Operator, column: Any, value: str) -> Predicate:
        if operator is m.Operator.CONTAINS:
            found = func.strpos(column, value) if self.postgres else func.instr(column, value)
            return found > 0
        return func.substr(column, 1, len(value)) == value

    def _value_test(
        self, operator: m.Operator, column: Any, kind: str, values: Sequence[m.Value]
    ) -> Predicate:
        """`column` (holding values of `kind`) passes a positive (non-NEQ) value operator."""
        if operator in (m.Operator.CONTAINS, m.Operator.STARTS_WITH):
            return self._string_test(operator, column, str(values[0]))
        if kind == "string" and operator in (*m.ORDER_OPERATORS, m.Operator.BETWEEN):
            column = self._text_order(column)
        return _cmp(operator, column, values)

    def _trait(self, node: m.TraitCondition) -> _Set:
        traits = t.traits
        base = select(traits.c.profile_id).where(traits.c.name == node.name)
        operator = node.operator
        if operator in (m.Operator.EXISTS, m.Operator.NOT_EXISTS):
            present = base.where(traits.c.value_type != "null")
            if operator is m.Operator.NOT_EXISTS:
                return _Set(present, negated=True)
            return self._leaf(present, traits.c.profile_id)
        kind = m.value_kind(node.values[0])
        positive = m.Operator.EQ if operator is m.Operator.NEQ else operator
        test = self._value_test(positive, _TRAIT_COLUMNS[kind], kind, node.values)
        holding = base.where(traits.c.value_type == kind, test)
        if operator is m.Operator.NEQ:
            return _Set(holding, negated=True)
        return self._leaf(holding, traits.c.profile_id)

    def _consent(self, node: m.ConsentCondition) -> _Set:
        consents = t.consents
        base = select(consents.c.profile_id).where(
            consents.c.channel == node.channel, consents.c.purpose == node.purpose
        )
        if node.status == "unknown":
            return _Set(base.where(consents.c.status != "unknown"), negated=True)
        return self._leaf(base.where(consents.c.status == node.status), consents.c.profile_id)

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
        test = self._value_test(positive, self._json_value(item.property, kind), kind, item.values)
        holds = func.coalesce(and_(self._json_is(item.property, kind), test), false())
        return not_(holds) if operator is m.Operator.NEQ else holds

    # --- events ---------------------------------------------------------------------------------

    def _rows(
        self, node: m.EventCondition | m.AggregateCondition, window: m.Window | None
    ) -> tuple[list[Predicate], list[Predicate], tuple[Any, ...]]:
        """The index range of the node's rows (name, type, window) and its row filters
        (property filters), separately: filters can move into the aggregates so that they
        are evaluated only on rows of profiles that pass the other conditions."""
        events = t.events
        event_type = node.event_type if isinstance(node, m.EventCondition) else None
        where: list[Predicate] = [events.c.name == node.name]
        if event_type is not None:
            where.append(events.c.type == event_type)
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
        key = (node.name, event_type, window)
        return where, [self._filter(item) for item in node.filters], key

    @staticmethod
    def _time(moment: datetime) -> Any:
        return literal(moment, UtcDateTime)

    @staticmethod
    def _when(condition: Predicate | None, value: Any) -> Any:
        return value if condition is None else case((condition, value), else_=None)

    def _grouped(
        self,
        rows: list[Predicate],
        filters: list[Predicate],
        key: tuple[Any, ...],
        having: Having,
        *,
        zero_passes: bool,
        rank: int,
    ) -> _Set:
        """Profiles whose matching rows pass `having`; `zero_passes` says whether a profile
        with no matching row passes too (then the set is the complement of the failing ones).
        `having(condition)` builds the test with the aggregates counting only rows meeting
        `condition` (None: every row). Restricted to the ids of other conditions, the rows are
        the index range joined to those ids, and the filters move into the aggregates."""
        events = t.events

        def build(within: IdSet | None) -> IdSet:
            if within is None or not filters:
                where, condition = [*rows, *filters], None
            else:
                where, condition = list(rows), and_(*filters)
            if within is not None:
                where.append(self._events_of(within, rank))
            query = select(events.c.profile_id).where(*where).group_by(events.c.profile_id)
            return query.having(having(condition))

        if zero_passes:
            failing = (
                select(events.c.profile_id)
                .where(*rows, *filters)
                .group_by(events.c.profile_id)
                .having(not_(having(None)))
            )
            return _Set(failing, negated=True)
        grouped = _Grouped(key, rows, filters, having)
        return _Set(build(None), restrict=build, rank=rank, grouped=grouped)

    def _event(self, node: m.EventCondition) -> _Set:
        measure = node.measure
        events = t.events
        rank = 1 if node.window is not None else 2
        if isinstance(measure, m.FirstLastMeasure):
            bound = measure.bound
            point = self._time(bound.point(self.now))
            first = measure.which == "first"

            def moment_test(condition: Predicate | None) -> Predicate:
                time = self._when(condition, events.c.event_time)
                moment: Any = func.min(time) if first else func.max(time)
                test: Predicate = moment <= point if bound.relation == "before" else moment > point
                return test

            return self._grouped(
                *self._rows(node, node.window), moment_test, zero_passes=False, rank=rank
            )
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
                return self._leaf(fast, counts.c.profile_id)

            def count_test(condition: Predicate | None) -> Predicate:
                return _comparison(comparison, _count(condition))

            return self._grouped(
                *self._rows(node, node.window), count_test, zero_passes=zero_passes, rank=rank
            )
        bounds = period_bounds(measure.every, self.now)
        oldest = bounds[-1][0]
        rows, filters, key = self._rows(node, m.RelativeWindow(self.now - oldest))

        def periods_test(condition: Predicate | None) -> Predicate:
            tests = []
            for start, end in bounds:
                in_period = and_(
                    events.c.event_time > self._time(start),
                    events.c.event_time <= self._time(end),
                )
                counted = in_period if condition is None else and_(in_period, condition)
                per_period = func.sum(case((counted, 1), else_=0))
                tests.append(_comparison(comparison, per_period))
            return and_(*tests)

        return self._grouped(rows, filters, key, periods_test, zero_passes=zero_passes, rank=1)

    def _aggregate(self, node: m.AggregateCondition) -> _Set:
        rows, filters, key = self._rows(node, node.window)
        function = node.function
        value: Any = None
        if node.property:
            filters.append(self._json_is(node.property, "number"))
            value = self._json_value(node.property, "number")

        def statistic_test(condition: Predicate | None) -> Predicate:
            statistic: Any
            if function is m.AggregateFunction.COUNT:
                statistic = _count(condition)
            else:
                operand = self._when(condition, value)
                if function is m.AggregateFunction.SUM:
                    statistic = func.sum(operand)
                elif function is m.AggregateFunction.AVG:
                    statistic = func.avg(operand)
                elif function is m.AggregateFunction.MIN:
                    statistic = func.min(operand)
                else:
                    statistic = func.max(operand)
            return _comparison(node.comparison, statistic)

        zero_passes = function in (
            m.AggregateFunction.COUNT,
            m.AggregateFunction.SUM,
        ) and node.comparison.holds(0.0)
        rank = 1 if node.window is not None else 2
        return self._grouped(rows, filters, key, statistic_test, zero_passes=zero_passes, rank=rank)


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
