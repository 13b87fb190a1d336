"""Inlining of segment references, with cycle detection.

Both evaluators work on a resolved tree: every `in_segment(x)` is replaced by x's definition, so
membership of another segment means exactly what that segment's definition means at the same
evaluation time (no dependency on stored memberships, which may lag).
"""

from __future__ import annotations

from collections.abc import Mapping

from upm_common.errors import FieldViolation
from upm_segment import model as m
from upm_segment.validate import raise_violations


def resolve(
    condition: m.Condition,
    definitions: Mapping[str, m.Condition],
    *,
    path: str = "definition",
    self_id: str | None = None,
) -> m.Condition:
    """`condition` with segment references inlined; raises InvalidArgumentError on an unknown
    segment or a cycle (naming the node). `self_id` is the id the definition is saved under."""
    violations: list[FieldViolation] = []
    stack = (self_id,) if self_id else ()
    result = _resolve(condition, definitions, path, stack, violations)
    raise_violations(violations)
    return result


def _resolve(
    node: m.Condition,
    definitions: Mapping[str, m.Condition],
    path: str,
    stack: tuple[str, ...],
    violations: list[FieldViolation],
) -> m.Condition:
    if isinstance(node, m.And | m.Or):
        key = "and" if isinstance(node, m.And) else "or"
        items = tuple(
            _resolve(child, definitions, f"{path}.{key}[{i}]", stack, violations)
            for i, child in enumerate(node.conditions)
        )
        return type(node)(items)
    if isinstance(node, m.Not):
        return m.Not(_resolve(node.condition, definitions, f"{path}.not", stack, violations))
    if isinstance(node, m.SegmentCondition):
        here = f"{path}.segment.segment_id"
        target = node.segment_id
        if target in stack:
            cycle = " -> ".join([*stack[stack.index(target) :], target])
            violations.append(FieldViolation(here, f"segment reference cycle: {cycle}"))
            return m.And(())
        definition = definitions.get(target)
        if definition is None:
            violations.append(FieldViolation(here, f"segment {target!r} does not exist"))
            return m.And(())
        inner: list[FieldViolation] = []
        resolved = _resolve(definition, definitions, "definition", (*stack, target), inner)
        for violation in inner:
            violations.append(
                FieldViolation(here, f"in segment {target!r}: {violation.description}")
            )
        return resolved
    return node
