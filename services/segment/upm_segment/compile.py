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

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
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
    or_,
    select,
    union,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import Executable
from sqlalchemy.types import Text

from upm_common.db import UtcDateTime
from upm_profile.store import tables as t
from upm_segment import model as m
from upm_segment.evaluate import period_bounds

Predicate = ColumnElement[bool]
IdSet = Select[Any] | CompoundSelect[Any]
WORK_MEM = "64MB"
RANDOM_PAGE_COST = 1.1
# Below this guessed share of profiles, a restricted condition looks up each candidate in an
# index (one descent for a trait, consent or identifier; the candidate's events, about ten
# rows, for an event condition) instead of scanning its whole index range (up to a row per
# profile, or tens of events per profile for an event name's window): at 2% the lookups stay
# well under the scan even when the guess is several times too low.
PROBE_SHARE = 0.02
# Guessed shares of profiles (see `_Set.share`): a property filter keeps about a third of a
# condition's profiles; a trait equality, a third; a present trait or identifier, most.
FILTER_SHARE = 0.3
EQ_SHARE = 0.3
EXISTS_SHARE = 0.9
IDENTIFIER_SHARE = 0.7
CONSENT_SHARE = 0.4


Restrict = Callable[[IdSet, bool], IdSet]
# A slice of the profile-id space, `lo <= id < hi` (None: unbounded on that side).
IdRange = tuple[str | None, str | None]


@dataclass(frozen=True)
class _Set:
    """A node compiled to a set of profile ids: the members are the ids in `ids`, or, when
    `negated`, every live profile except those ids. A leaf's positive set also offers
    `restrict(within, probe)`: the same set computed only over the rows of profiles in
    `within`, either as a semi-join on the leaf's own index range or, when `probe`, by looking
    up each profile of `within` in an index (the leaf's own, or for events the
    (profile_id, event_time) one).
    An AND chains its leaves from the cheapest and most selective (`rank` 0: traits,
    consents, identifiers and windowed events with property filters; 1: other windowed
    events; 2: all-time events; then by `share`) to the dearest, so that each condition is
    evaluated once, on fewer and fewer rows. `share` is a rough guess of the fraction of
    profiles in the set (no statistics are read): it only orders the chain and decides when
    the candidates are few enough for per-profile lookups."""

    ids: IdSet
    negated: bool = False
    restrict: Restrict | None = None
    rank: int = 0
    grouped: _Grouped | None = None
    share: float = 0.5

    def flip(self) -> _Set:
        return _Set(self.ids, not self.negated, share=1.0 - self.share)


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
    """Compiles resolved trees for one dialect (`postgresql` or `sqlite`) at one time `now`.
    With `id_range`, every query covers only the profiles whose ids lie in that range: each
    base-table subquery gets the range on its `profile_id`, so that its index scan reads only
    that slice where profile_id follows the index's equality columns (the ranged counts of a
    partition of the id space sum to the whole count)."""

    def __init__(self, dialect: str, now: datetime, id_range: IdRange | None = None) -> None:
        self.postgres = dialect == "postgresql"
        self.now = now
        self.id_range = id_range

    def _in_range(self, column: Any) -> list[Predicate]:
        """The range's bounds on a profile-id column (none without a range)."""
        if self.id_range is None:
            return []
        lo, hi = self.id_range
        bounds: list[Predicate] = []
        if lo is not None:
            bounds.append(column >= lo)
        if hi is not None:
            bounds.append(column < hi)
        return bounds

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
                .where(
                    self.live(),
                    *self._in_range(t.profiles.c.id),
                    t.profiles.c.id.not_in(found.ids),
                )
            )
        return select(func.count()).select_from(_operand(found.ids).subquery())

    def members_query(
        self, condition: m.Condition, *, after: str | None = None, limit: int | None = None
    ) -> Select[str]:
        query = (
            select(t.profiles.c.id)
            .where(self.live(), *self._in_range(t.profiles.c.id), self.predicate(condition))
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
            .where(self.live(), *self._in_range(t.profiles.c.id))
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
                .where(
                    t.identifiers.c.type == node.type,
                    *self._in_range(t.identifiers.c.profile_id),
                )
                .distinct()  # a profile may hold several identifiers of a type
            )
            if not node.present:
                return _Set(ids, negated=True, share=1.0 - IDENTIFIER_SHARE)
            return self._leaf(ids, t.identifiers.c.profile_id, IDENTIFIER_SHARE)
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
        chained.sort(key=lambda p: (p.rank, p.share))
        removed = [p.ids for p in parts if p.negated]
        kept: IdSet | None = _intersect(compound) if compound else None
        share = 1.0
        for part in parts:
            if part.restrict is None and not part.negated:
                share *= part.share
        for part in chained:
            assert part.restrict is not None
            kept = part.ids if kept is None else part.restrict(kept, share < PROBE_SHARE)
            share *= part.share
        for part in parts:
            if part.negated:
                share *= part.share
        if kept is None:
            return _Set(_union(removed) if removed else self._empty(), negated=True, share=share)
        if removed:
            kept = _except(kept, _union(removed))
        return _Set(kept, share=share)

    def _shared_scan(self, parts: list[_Set]) -> _Set:
        """One GROUP BY over a shared index range for several grouped conditions."""
        groups = [p.grouped for p in parts if p.grouped is not None]
        events = t.events
        rank = min(p.rank for p in parts)
        share = math.prod(p.share for p in parts)

        def build(within: IdSet | None, probe: bool = False) -> IdSet:
            where = list(groups[0].rows)
            if within is not None:
                where.append(self._events_of(within, probe or rank == 2))
            tests = [g.having(and_(*g.filters) if g.filters else None) for g in groups]
            query = select(events.c.profile_id).where(*where).group_by(events.c.profile_id)
            return query.having(and_(*tests))

        return _Set(build(None), restrict=build, rank=rank, share=share)

    def _events_of(self, within: IdSet, probe: bool) -> Predicate:
        """Events of the profiles in `within`. When `probe` (an all-time condition, or
        candidates already few), PostgreSQL reads only the events of those profiles: the ids
        become one array (an InitPlan) looked up in the (profile_id, event_time) index,
        instead of a hash probe per row of the name's whole window or history (nearly half
        the table for page views). Otherwise the index range of the name and window is
        scanned and semi-joined to the candidates: reading every event of many candidates
        would cost more."""
        ids = _operand(within)
        if self.postgres and probe:
            return t.events.c.profile_id == any_(func.array(ids.scalar_subquery()))
        return t.events.c.profile_id.in_(ids)

    def _leaf(self, ids: Select[Any], column: Any, share: float) -> _Set:
        """A positive leaf set of `column` values, restrictable with `column IN (within)`, or,
        on PostgreSQL when `probe` (few candidates), with `column = ANY(array)`: one descent
        per candidate in the leaf's index instead of a scan of its whole range."""

        def restrict(within: IdSet, probe: bool) -> IdSet:
            if self.postgres and probe:
                return ids.where(column == any_(func.array(_operand(within).scalar_subquery())))
            return ids.where(column.in_(_operand(within)))

        return _Set(ids, restrict=restrict, share=share)

    def _or(self, parts: list[_Set]) -> _Set:
        """Union of positive sets; with negated parts, the complement of (negated ids in
        every negated part, minus every positive part)."""
        added = [p.ids for p in parts if not p.negated]
        negated = [p.ids for p in parts if p.negated]
        share = min(1.0, sum(p.share for p in parts))
        if not negated:
            return _Set(_union(added) if added else self._empty(), share=share)
        outside = _intersect(negated)
        if added:
            outside = _except(outside, _union(added))
        return _Set(outside, negated=True, share=share)

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
        base = select(traits.c.profile_id).where(
            traits.c.name == node.name, *self._in_range(traits.c.profile_id)
        )
        operator = node.operator
        if operator in (m.Operator.EXISTS, m.Operator.NOT_EXISTS):
            present = base.where(traits.c.value_type != "null")
            if operator is m.Operator.NOT_EXISTS:
                return _Set(present, negated=True, share=1.0 - EXISTS_SHARE)
            return self._leaf(present, traits.c.profile_id, EXISTS_SHARE)
        kind = m.value_kind(node.values[0])
        positive = m.Operator.EQ if operator is m.Operator.NEQ else operator
        test = self._value_test(positive, _TRAIT_COLUMNS[kind], kind, node.values)
        holding = base.where(traits.c.value_type == kind, test)
        share = _value_share(positive, kind, len(node.values))
        if operator is m.Operator.NEQ:
            return _Set(holding, negated=True, share=1.0 - share)
        return self._leaf(holding, traits.c.profile_id, share)

    def _consent(self, node: m.ConsentCondition) -> _Set:
        consents = t.consents
        base = select(consents.c.profile_id).where(
            consents.c.channel == node.channel,
            consents.c.purpose == node.purpose,
            *self._in_range(consents.c.profile_id),
        )
        if node.status == "unknown":
            return _Set(base.where(consents.c.status != "unknown"), negated=True, share=0.5)
        return self._leaf(
            base.where(consents.c.status == node.status), consents.c.profile_id, CONSENT_SHARE
        )

    # --- JSON properties ----------------------------------------------------------------------

    @staticmethod
    def _pg_json(path: str, *, as_text: bool) -> Any:
        """The JSONB (or text) at a dotted path: `->` / `->>` for one key, which skip the path
        array that `#>` / `#>>` build and walk for every row."""
        keys = path.split(".")
        properties = t.events.c.properties
        if len(keys) == 1:
            key = literal(keys[0], Text)
            return (
                properties.op("->>", return_type=Text)(key)
                if as_text
                else properties.op("->", return_type=JSONB)(key)
            )
        array = literal(keys, ARRAY(Text))
        if as_text:
            return properties.op("#>>", return_type=Text)(array)
        return properties.op("#>", return_type=JSONB)(array)

    def _json_type(self, path: str) -> Any:
        keys = path.split(".")
        if self.postgres:
            return func.jsonb_typeof(self._pg_json(path, as_text=False))
        return func.json_type(t.events.c.properties, _sqlite_path(keys))

    def _json_value(self, path: str, kind: str) -> Any:
        keys = path.split(".")
        if self.postgres:
            text = self._pg_json(path, as_text=True)
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
        contained = self._containment(item, positive, kind)
        if contained is not None:
            holds = func.coalesce(contained, false())
        else:
            # The value test first: it fails on most rows, and the type test then runs only on
            # the rest. A number's value is already NULL unless the JSON value is a number;
            # a string's or boolean's text exists for other JSON types too, hence their test.
            value = self._json_value(item.property, kind)
            test = self._value_test(positive, value, kind, item.values)
            if kind != "number":
                test = and_(test, self._json_is(item.property, kind))
            holds = func.coalesce(test, false())
        return not_(holds) if operator is m.Operator.NEQ else holds

    def _containment(self, item: m.PropertyFilter, operator: m.Operator, kind: str) -> Any:
        """On PostgreSQL, a string or boolean equality (or IN) as JSONB containment,
        `properties @> '{"a": {"b": value}}'`: true exactly when the value at the path is that
        JSON string or boolean (strings compare byte for byte), and one operator call per row
        instead of extracting and typing the value (about a quarter of the cost on a scan).
        Numbers keep the extraction: JSONB compares them as exact decimals, the evaluator as
        floats. None when not applicable."""
        if not self.postgres or operator not in (m.Operator.EQ, m.Operator.IN):
            return None
        if kind not in ("string", "boolean"):
            return None
        if any(isinstance(v, str) and "\x00" in v for v in item.values):
            return None  # JSONB cannot hold NUL, so the value cannot be written as a document
        tests = []
        for value in item.values:
            document: Any = value
            for key in reversed(item.property.split(".")):
                document = {key: document}
            tests.append(
                t.events.c.properties.op("@>", is_comparison=True)(
                    cast(literal(json.dumps(document), Text), JSONB)
                )
            )
        return tests[0] if len(tests) == 1 else or_(*tests)

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
        where += self._in_range(events.c.profile_id)
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
        node: m.EventCondition | m.AggregateCondition,
    ) -> _Set:
        """Profiles whose matching rows pass `having`; `zero_passes` says whether a profile
        with no matching row passes too (then the set is the complement of the failing ones).
        `having(condition)` builds the test with the aggregates counting only rows meeting
        `condition` (None: every row). Restricted to the ids of other conditions, the rows are
        the index range joined to those ids, and the filters move into the aggregates."""
        events = t.events
        rank, share = _event_placement(node)

        def build(within: IdSet | None, probe: bool = False) -> IdSet:
            if within is None or not filters:
                where, condition = [*rows, *filters], None
            else:
                where, condition = list(rows), and_(*filters)
            if within is not None:
                where.append(self._events_of(within, probe or rank == 2))
            query = select(events.c.profile_id).where(*where).group_by(events.c.profile_id)
            return query.having(having(condition))

        if zero_passes:
            failing = (
                select(events.c.profile_id)
                .where(*rows, *filters)
                .group_by(events.c.profile_id)
                .having(not_(having(None)))
            )
            return _Set(failing, negated=True, share=1.0 - share)
        grouped = _Grouped(key, rows, filters, having)
        return _Set(build(None), restrict=build, rank=rank, grouped=grouped, share=share)

    def _event(self, node: m.EventCondition) -> _Set:
        measure = node.measure
        events = t.events
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
                *self._rows(node, node.window), moment_test, zero_passes=False, node=node
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
                    counts.c.name == node.name,
                    _comparison(comparison, counts.c.count),
                    *self._in_range(counts.c.profile_id),
                )
                return self._leaf(fast, counts.c.profile_id, _event_placement(node)[1])

            def count_test(condition: Predicate | None) -> Predicate:
                return _comparison(comparison, _count(condition))

            return self._grouped(
                *self._rows(node, node.window), count_test, zero_passes=zero_passes, node=node
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

        return self._grouped(rows, filters, key, periods_test, zero_passes=zero_passes, node=node)

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
        return self._grouped(rows, filters, key, statistic_test, zero_passes=zero_passes, node=node)


def _value_share(operator: m.Operator, kind: str, count: int) -> float:
    """Guessed share of profiles whose trait passes a positive value test."""
    if operator is m.Operator.IN:
        return min(0.9, EQ_SHARE * count)
    if operator is m.Operator.EQ:
        return 0.5 if kind == "boolean" else EQ_SHARE
    if operator in (m.Operator.CONTAINS, m.Operator.STARTS_WITH):
        return EQ_SHARE
    return 0.5  # an order comparison or a range


def _event_placement(node: m.EventCondition | m.AggregateCondition) -> tuple[int, float]:
    """The chain rank and guessed share of an event condition. Property filters make a
    windowed condition selective enough to lead a chain: its window is scanned once with the
    filters as row conditions, and the conditions after it see few profiles. A condition
    over every event of a name (no window) comes last, looked up per candidate."""
    share = 0.5 * FILTER_SHARE ** len(node.filters)
    if node.window is None and not (
        isinstance(node, m.EventCondition)
        and isinstance(node.measure, m.CountMeasure)
        and node.measure.every is not None
    ):
        return 2, share
    return (0 if node.filters else 1), share


async def prepare_read(conn: AsyncConnection, *, timeout_seconds: float | None = None) -> None:
    """Settings for segment queries in the connection's current transaction (PostgreSQL only):
    no JIT, whose compile time (about a second) exceeds the query time of a sub-second count;
    no nested loops, because the planner underestimates JSON property filters by orders of
    magnitude and then re-runs grouped subqueries per row (hash joins are right for counts over
    a population); a work_mem that keeps sorts in memory and bitmaps exact; a random page cost
    near the sequential one, because the read model's segment indexes are read from memory:
    with the default (4) the planner prefers a sequential scan of a whole consent or
    identifier table to the index range in profile order, and then hashes and sorts what
    merge joins of the index ranges get for free (a third of the 8-condition count's time);
    and an optional statement timeout."""
    if conn.dialect.name != "postgresql":
        return
    local = {
        "jit": "off",
        "enable_nestloop": "off",
        "work_mem": WORK_MEM,
        "random_page_cost": str(RANDOM_PAGE_COST),
        "max_parallel_workers_per_gather": "0",
    }
    if timeout_seconds:
        local["statement_timeout"] = str(int(timeout_seconds * 1000))
    # One round trip for all of them (a count split into ranges prepares several connections):
    # set_config(..., true) is SET LOCAL.
    calls = ", ".join(f"set_config('{name}', '{value}', true)" for name, value in local.items())
    await conn.exec_driver_sql(f"SELECT {calls}")


# Profile ids are fixed-length lower-case hex (uuid4): without statistics, ranges split the id
# space evenly by its first four hex digits.
_HEX_SPACE = 16**4
# Below this many profiles (the planner's estimate) a count takes milliseconds, and a second
# connection, snapshot import and settings would cost more than the split saves.
SPLIT_MIN_PROFILES = 50_000
_ID_STATISTICS = sql_text(
    "SELECT (SELECT reltuples FROM pg_class WHERE oid = to_regclass(:table)),"
    " (SELECT histogram_bounds::text::text[] FROM pg_stats"
    "  WHERE schemaname = current_schema() AND tablename = :table AND attname = 'id')"
)


def id_ranges(bounds: Sequence[str]) -> list[IdRange]:
    """The ranges between sorted, distinct `bounds`: together they cover every id once."""
    edges: list[str | None] = [None, *bounds, None]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


async def _id_bounds(conn: AsyncConnection, parts: int, min_profiles: int) -> list[str]:
    """`parts - 1` ids splitting the live profiles into ranges of about equal size: quantiles
    of the profile table's id histogram (ANALYZE keeps it; it follows the ids' actual spread,
    e.g. sequential ids in test data), else an even split of the uuid hex space. None (an
    empty list) when the table is estimated to hold fewer than `min_profiles` (-1: never
    analyzed)."""
    estimate, histogram = (await conn.execute(_ID_STATISTICS, {"table": t.profiles.name})).one()
    if estimate is None or estimate < min_profiles:
        return []
    if histogram and len(histogram) > parts:
        picked = [histogram[(len(histogram) - 1) * i // parts] for i in range(1, parts)]
    else:
        picked = [f"{_HEX_SPACE * i // parts:04x}" for i in range(1, parts)]
    return sorted(set(picked))


@asynccontextmanager
async def range_connections(
    engine: AsyncEngine,
    parts: int,
    *,
    timeout_seconds: float | None = None,
    min_profiles: int | None = None,
) -> AsyncIterator[list[tuple[AsyncConnection, IdRange | None]]]:
    """Connections prepared for segment queries, each with the profile-id range it covers
    (None: all), so that one count can run as `parts` range counts at once and be summed:
    on PostgreSQL a query runs on one core, and the merge joins of an AND's index ranges do
    not parallelize well inside one query (parallel workers each rerun the inner scans).
    The first connection exports its REPEATABLE READ snapshot and the others import it, so
    the ranges are read at one moment and their sum is the count a single query would give.
    The split costs some CPU: trait, consent and identifier ranges are bounded by the id
    range (profile_id follows their equality columns in the index), but an event window's
    index has profile_id after event_time, so every range reads the whole window and skips
    the other ranges' rows (about 15% more backend CPU in total for the 8-condition count,
    for about 40% less time when a second core is free).
    SQLite, `parts` 1, or fewer profiles than `min_profiles` (default `SPLIT_MIN_PROFILES`)
    get one connection and no range. The first connection comes first
    (it also serves follow-up queries, e.g. a preview's sample, in the same snapshot)."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(engine.connect())
        if first.dialect.name != "postgresql" or parts <= 1:
            await prepare_read(first, timeout_seconds=timeout_seconds)
            yield [(first, None)]
            return
        # REPEATABLE READ: the transaction's first statement takes the snapshot that every
        # later statement, and the exported copy, reads.
        await first.execution_options(isolation_level="REPEATABLE READ")
        await prepare_read(first, timeout_seconds=timeout_seconds)
        least = SPLIT_MIN_PROFILES if min_profiles is None else min_profiles
        bounds = await _id_bounds(first, parts, least)
        if not bounds:
            yield [(first, None)]
            return
        ranges = id_ranges(bounds)
        snapshot = (await first.exec_driver_sql("SELECT pg_export_snapshot()")).scalar_one()

        async def joined() -> AsyncConnection:
            conn = await stack.enter_async_context(engine.connect())
            await conn.execution_options(isolation_level="REPEATABLE READ")
            # First in the transaction: a snapshot can only be imported before any query.
            await conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            await prepare_read(conn, timeout_seconds=timeout_seconds)
            return conn

        others = [await joined() for _ in ranges[1:]]
        yield list(zip([first, *others], ranges, strict=True))


async def summed(
    connections: Sequence[tuple[AsyncConnection, IdRange | None]],
    query: Callable[[IdRange | None], Executable],
) -> tuple[int, ...]:
    """The one-row counting `query` run for every range at once, its columns summed."""
    outcomes = await asyncio.gather(
        *(conn.execute(query(slice_)) for conn, slice_ in connections), return_exceptions=True
    )
    rows = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        rows.append(outcome.one())
    return tuple(sum(int(row[i]) for row in rows) for i in range(len(rows[0])))


def _sqlite_path(keys: list[str]) -> str:
    return "$" + "".join(f'."{key}"' for key in keys)
