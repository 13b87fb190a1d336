"""Trait operations and how they fold into a value.

A trait's value is a function of the *set* of operations applied to it: operations are folded in
event-time order (ties broken by event id, then position), so replays and out-of-order delivery
converge. Applying an operation newer than the current state is the same as appending it to the
fold; an older one makes the store recompute the trait from its history.

Operations (identify traits, or the `$`-keys of a traits object):
- set: the value.  set_once: the value unless the trait has one.  unset: remove the trait.
- increment: add a number (a missing or non-numeric value counts as 0).
- add_to_set: add values to an array, keeping the first occurrence order (a non-array value is
  replaced by an array).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SET = "set"
SET_ONCE = "set_once"
UNSET = "unset"
INCREMENT = "increment"
ADD_TO_SET = "add_to_set"
OPERATIONS = (SET, SET_ONCE, UNSET, INCREMENT, ADD_TO_SET)
_OP_KEYS = {f"${op}": op for op in OPERATIONS}
MAX_TRAIT_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class TraitOp:
    """One operation on one trait, with its provenance."""

    name: str
    op: str
    value: Any
    time: datetime
    event_id: str
    source: str
    seq: int = 0

    def order(self) -> tuple[datetime, str, int]:
        return (self.time, self.event_id, self.seq)


@dataclass(frozen=True, slots=True)
class TraitState:
    """A folded trait: `present` is False after an unset (a tombstone with its time)."""

    present: bool
    value: Any
    time: datetime
    event_id: str
    source: str
    op_order: tuple[datetime, str, int]


def ops_from_traits(
    traits: Mapping[str, Any], *, time: datetime, event_id: str, source: str
) -> list[TraitOp]:
    """The operations of a traits object: plain keys are `set`; `$set_once`, `$unset`,
    `$increment`, `$add_to_set` hold the others."""
    ops: list[TraitOp] = []
    seq = 0

    def add(name: str, op: str, value: Any) -> None:
        nonlocal seq
        if not name or len(name) > MAX_TRAIT_NAME_LENGTH:
            return
        ops.append(TraitOp(name, op, value, time, event_id, source, seq))
        seq += 1

    for key, value in traits.items():
        op = _OP_KEYS.get(key)
        if op is None:
            add(key, SET, value)
        elif op == UNSET:
            names = (
                value
                if isinstance(value, list)
                else list(value)
                if isinstance(value, dict)
                else [value]
            )
            for name in names:
                if isinstance(name, str):
                    add(name, UNSET, None)
        elif isinstance(value, dict):
            for name, operand in value.items():
                if op == INCREMENT and not _is_number(operand):
                    continue
                add(name, op, operand)
    return ops


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def step(state: TraitState | None, op: TraitOp) -> TraitState:
    """Apply one operation (newer than `state`) to a trait state."""
    current = state.value if state is not None and state.present else None
    has_value = state is not None and state.present
    if op.op == SET:
        return _state(op, op.value)
    if op.op == SET_ONCE:
        if has_value and state is not None:
            return state
        return _state(op, op.value)
    if op.op == UNSET:
        return TraitState(False, None, op.time, op.event_id, op.source, op.order())
    if op.op == INCREMENT:
        base = current if _is_number(current) else 0
        total = base + op.value
        if isinstance(total, float) and total.is_integer() and not isinstance(base, float):
            total = int(total)
        return _state(op, total)
    if op.op == ADD_TO_SET:
        items = list(current) if isinstance(current, list) else []
        for item in op.value if isinstance(op.value, list) else [op.value]:
            if item not in items:
                items.append(item)
        return _state(op, items)
    raise ValueError(f"unknown trait operation {op.op!r}")


def _state(op: TraitOp, value: Any) -> TraitState:
    return TraitState(True, value, op.time, op.event_id, op.source, op.order())


def fold(ops: Iterable[TraitOp]) -> TraitState | None:
    """The state of one trait from all its operations, in any order."""
    state: TraitState | None = None
    for op in sorted(ops, key=TraitOp.order):
        state = step(state, op)
    return state


def typed_columns(value: Any) -> dict[str, Any]:
    """The read-model columns of a value: value_type and exactly the one typed column."""
    columns: dict[str, Any] = {
        "value_type": "null",
        "num_value": None,
        "text_value": None,
        "bool_value": None,
        "time_value": None,
    }
    if isinstance(value, bool):
        columns.update(value_type="boolean", bool_value=value)
    elif isinstance(value, int | float):
        columns.update(value_type="number", num_value=float(value))
    elif isinstance(value, str):
        moment = parse_timestamp(value)
        if moment is not None:
            columns.update(value_type="timestamp", time_value=moment)
        else:
            columns.update(value_type="string", text_value=value)
    elif isinstance(value, list):
        columns["value_type"] = "array"
    elif isinstance(value, dict):
        columns["value_type"] = "object"
    return columns


def parse_timestamp(text: str) -> datetime | None:
    """An ISO 8601 date-time with a time part (e.g. `2024-05-01T10:00:00Z`), else None."""
    if len(text) < 16 or len(text) > 40 or text[4:5] != "-" or "T" not in text[:11].upper():
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
