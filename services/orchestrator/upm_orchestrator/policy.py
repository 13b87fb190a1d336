"""Fatigue policies: validation of the contract's Policy and its compiled, immutable form.

The engine works on `CompiledPolicy`, never on protobuf messages, so that decision logic stays
pure and cheap: a policy is validated and compiled once when it is stored or loaded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from upm.common.v1 import consent_pb2
from upm.orchestrator.v1 import orchestrator_service_pb2 as pb
from upm_common.errors import FieldViolation, InvalidArgumentError

DEFAULT_POLICY_ID = "default"
DEFAULT_CHANNELS = ("email", "sms", "push", "web", "in_app")
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
CHANNEL_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_RULES = 100
MAX_WINDOW_MS = 400 * 86_400_000
# Ledger entries are kept at least this long: a calendar month plus a DST shift, with margin.
MIN_RETENTION_MS = 35 * 86_400_000

DENY = pb.RULE_ACTION_DENY
DEFER = pb.RULE_ACTION_DEFER
MARKETING = consent_pb2.CONSENT_PURPOSE_MARKETING
TRANSACTIONAL = consent_pb2.CONSENT_PURPOSE_TRANSACTIONAL


@dataclass(frozen=True)
class Scope:
    """Which messages a rule counts; `value` empty means "each channel/category/campaign apart"."""

    kind: int
    value: str


@dataclass(frozen=True)
class CapRule:
    rule_id: str
    count: int
    window_kind: int
    window_ms: int
    scope: Scope
    action: int


@dataclass(frozen=True)
class GapRule:
    rule_id: str
    gap_ms: int
    scope: Scope
    action: int


@dataclass(frozen=True)
class DuplicateRule:
    rule_id: str
    window_ms: int


@dataclass(frozen=True)
class QuietRule:
    rule_id: str
    start_minute: int
    end_minute: int
    action: int
    max_hold_ms: int | None
    channels: frozenset[str]


@dataclass(frozen=True)
class CompiledPolicy:
    """A validated policy version, ready for the engine."""

    policy_id: str
    version: int
    channels: tuple[str, ...]
    caps: tuple[CapRule, ...] = ()
    gaps: tuple[GapRule, ...] = ()
    duplicates: tuple[DuplicateRule, ...] = ()
    quiet_hours: tuple[QuietRule, ...] = ()
    consent_rule_id: str = ""
    transactional_requires_subscription: bool = False
    exempt_transactional: bool = False
    exempt_min_priority: int = 0
    exempt_still_counts: bool = False
    fallback_zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    # The engine's per-message-kind rule shapes for this version (upm_orchestrator.engine).
    shapes: dict[tuple[object, ...], Any] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def retention_ms(self) -> int:
        """How long ledger entries must be kept for every rule of this policy."""
        longest = [r.window_ms for r in self.caps] + [r.gap_ms for r in self.gaps]
        longest += [r.window_ms for r in self.duplicates]
        return max([MIN_RETENTION_MS, *longest])


def invalid_fields(problems: Sequence[FieldViolation]) -> InvalidArgumentError:
    """One error naming every bad field: `<field>: <description>; ...`."""
    return InvalidArgumentError(
        "; ".join(f"{v.field}: {v.description}" for v in problems), violations=problems
    )


def _duration_ms(path: str, value: object, problems: list[FieldViolation]) -> int:
    seconds = getattr(value, "seconds", 0)
    nanos = getattr(value, "nanos", 0)
    total = seconds * 1000 + nanos // 1_000_000
    if total <= 0:
        problems.append(FieldViolation(path, "must be a positive duration"))
    elif total > MAX_WINDOW_MS:
        problems.append(FieldViolation(path, "must be at most 400 days"))
    return total


def _action(value: int, default: int) -> int:
    return default if value == pb.RULE_ACTION_UNSPECIFIED else value


def _scope(
    scope: pb.RuleScope, path: str, channels: tuple[str, ...], problems: list[FieldViolation]
) -> Scope:
    if scope.kind == pb.SCOPE_KIND_UNSPECIFIED or scope.kind not in pb.ScopeKind.values():
        problems.append(FieldViolation(f"{path}.kind", "must be set to a known scope kind"))
    elif scope.kind == pb.SCOPE_KIND_TAG and not scope.value:
        problems.append(FieldViolation(f"{path}.value", "must name the tag"))
    elif scope.kind == pb.SCOPE_KIND_CHANNEL and scope.value and scope.value not in channels:
        problems.append(FieldViolation(f"{path}.value", f"unknown channel {scope.value!r}"))
    return Scope(scope.kind, scope.value if scope.kind != pb.SCOPE_KIND_ANY_CHANNEL else "")


def compile_policy(policy: pb.Policy, *, field_prefix: str = "policy") -> CompiledPolicy:
    """Validate `policy` and compile it; raises InvalidArgumentError naming every bad field."""
    problems: list[FieldViolation] = []
    p = field_prefix
    if not ID_PATTERN.match(policy.policy_id):
        problems.append(
            FieldViolation(f"{p}.policy_id", "must be 1-63 lower-case letters, digits, '-' or '_'")
        )
    channels = tuple(policy.channels) or DEFAULT_CHANNELS
    for index, channel in enumerate(policy.channels):
        if not CHANNEL_PATTERN.match(channel):
            problems.append(FieldViolation(f"{p}.channels[{index}]", "must be a lower-case name"))
    if len(set(channels)) != len(channels):
        problems.append(FieldViolation(f"{p}.channels", "must not repeat a channel"))
    zone = ZoneInfo("UTC")
    if policy.fallback_time_zone:
        try:
            zone = ZoneInfo(policy.fallback_time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(FieldViolation(f"{p}.fallback_time_zone", "unknown IANA time zone"))
    if len(policy.rules) > MAX_RULES:
        problems.append(FieldViolation(f"{p}.rules", f"at most {MAX_RULES} rules"))
    caps: list[CapRule] = []
    gaps: list[GapRule] = []
    duplicates: list[DuplicateRule] = []
    quiet: list[QuietRule] = []
    consent_rule_id = ""
    transactional_requires_subscription = False
    seen: set[str] = set()
    for index, rule in enumerate(policy.rules):
        path = f"{p}.rules[{index}]"
        if not ID_PATTERN.match(rule.rule_id):
            problems.append(
                FieldViolation(f"{path}.rule_id", "must be 1-63 lower-case letters, digits, - or _")
            )
        elif rule.rule_id in seen:
            problems.append(FieldViolation(f"{path}.rule_id", f"repeats {rule.rule_id!r}"))
        seen.add(rule.rule_id)
        kind = rule.WhichOneof("kind")
        if kind == "frequency_cap":
            cap = rule.frequency_cap
            cpath = f"{path}.frequency_cap"
            if cap.count < 1:
                problems.append(FieldViolation(f"{cpath}.count", "must be at least 1"))
            window_ms = 0
            if cap.window_kind == pb.WINDOW_KIND_ROLLING:
                window_ms = _duration_ms(f"{cpath}.window_duration", cap.window_duration, problems)
            elif cap.window_kind in (
                pb.WINDOW_KIND_CALENDAR_DAY,
                pb.WINDOW_KIND_CALENDAR_WEEK,
                pb.WINDOW_KIND_CALENDAR_MONTH,
            ):
                if cap.HasField("window_duration"):
                    problems.append(
                        FieldViolation(
                            f"{cpath}.window_duration", "must be unset for calendar windows"
                        )
                    )
                window_ms = 32 * 86_400_000
            else:
                problems.append(FieldViolation(f"{cpath}.window_kind", "must be set"))
            scope = _scope(cap.scope, f"{cpath}.scope", channels, problems)
            caps.append(
                CapRule(
                    rule.rule_id,
                    cap.count,
                    cap.window_kind,
                    window_ms,
                    scope,
                    _action(cap.action, DENY),
                )
            )
        elif kind == "min_gap":
            gap = rule.min_gap
            gpath = f"{path}.min_gap"
            gap_ms = _duration_ms(f"{gpath}.gap_duration", gap.gap_duration, problems)
            scope = _scope(gap.scope, f"{gpath}.scope", channels, problems)
            gaps.append(GapRule(rule.rule_id, gap_ms, scope, _action(gap.action, DENY)))
        elif kind == "duplicate_intent":
            window_ms = _duration_ms(
                f"{path}.duplicate_intent.window_duration",
                rule.duplicate_intent.window_duration,
                problems,
            )
            duplicates.append(DuplicateRule(rule.rule_id, window_ms))
        elif kind == "quiet_hours":
            q = rule.quiet_hours
            qpath = f"{path}.quiet_hours"
            for name, local in (("start", q.start), ("end", q.end)):
                if not (0 <= local.hours <= 23 and 0 <= local.minutes <= 59):
                    problems.append(FieldViolation(f"{qpath}.{name}", "must be a time of day"))
            start = q.start.hours * 60 + q.start.minutes
            end = q.end.hours * 60 + q.end.minutes
            if start == end:
                problems.append(FieldViolation(f"{qpath}.end", "must differ from start"))
            max_hold: int | None = None
            if q.HasField("max_hold_duration"):
                max_hold = _duration_ms(f"{qpath}.max_hold_duration", q.max_hold_duration, problems)
            for cindex, channel in enumerate(q.channels):
                if channel not in channels:
                    problems.append(
                        FieldViolation(
                            f"{qpath}.channels[{cindex}]", f"unknown channel {channel!r}"
                        )
                    )
            quiet.append(
                QuietRule(
                    rule.rule_id,
                    start,
                    end,
                    _action(q.action, DEFER),
                    max_hold,
                    frozenset(q.channels),
                )
            )
        elif kind == "consent":
            consent_rule_id = rule.rule_id
            transactional_requires_subscription = rule.consent.transactional_requires_subscription
        else:
            problems.append(FieldViolation(f"{path}.kind", "must set one rule kind"))
    if policy.exemptions.min_priority < 0:
        problems.append(FieldViolation(f"{p}.exemptions.min_priority", "must not be negative"))
    if problems:
        raise invalid_fields(problems)
    return CompiledPolicy(
        policy_id=policy.policy_id,
        version=policy.version,
        channels=channels,
        caps=tuple(caps),
        gaps=tuple(gaps),
        duplicates=tuple(duplicates),
        quiet_hours=tuple(quiet),
        consent_rule_id=consent_rule_id,
        transactional_requires_subscription=transactional_requires_subscription,
        exempt_transactional=policy.exemptions.transactional,
        exempt_min_priority=policy.exemptions.min_priority,
        exempt_still_counts=policy.exemptions.still_counts,
        fallback_zone=zone,
    )
