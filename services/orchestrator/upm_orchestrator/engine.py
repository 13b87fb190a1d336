"""The fatigue engine: pure decision logic, no I/O.

`plan_decision` turns a policy, what is known about the person and a message into the reasons
that need no ledger (suppression, consent, quiet hours) and the counter checks the ledger must
evaluate atomically; `finish` combines those with the ledger's answer into allow / deny / defer.

Counter keys are per profile: `any`, `ch:<channel>`, `cat:<category>`, `tag:<tag>`,
`cmp:<campaign>` and `int:<intent key>`. Every reserved message is written to every key it
belongs to, whatever the rules, so that a rule added later sees the full history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from upm.common.v1 import consent_pb2
from upm.orchestrator.v1 import orchestrator_service_pb2 as pb
from upm_orchestrator.policy import (
    DEFER,
    DENY,
    MARKETING,
    TRANSACTIONAL,
    CompiledPolicy,
    Scope,
)
from upm_orchestrator.store.base import CounterCheck, Violation

SUBSCRIBED = consent_pb2.CONSENT_STATUS_SUBSCRIBED
UNSUBSCRIBED = consent_pb2.CONSENT_STATUS_UNSUBSCRIBED
UNKNOWN = consent_pb2.CONSENT_STATUS_UNKNOWN


@dataclass(frozen=True)
class MessageSpec:
    """The message a sender wants to send (the contract's Message, validated)."""

    campaign_id: str = ""
    category: str = ""
    tags: tuple[str, ...] = ()
    intent_key: str = ""
    purpose: int = MARKETING
    priority: int = 0
    variant: str = ""
    idempotency_key: str = ""

    def rule_key(self) -> tuple[object, ...]:
        """Everything about the message that decides which rules apply (not variant or key)."""
        return self._key(self.intent_key)

    def shape_key(self) -> tuple[object, ...]:
        """`rule_key` with only whether there is an intent key: intent keys are usually one
        per message sent, and which rules apply does not depend on their value."""
        return self._key(bool(self.intent_key))

    def _key(self, intent: object) -> tuple[object, ...]:
        return (self.campaign_id, self.category, self.tags, intent, self.purpose, self.priority)


@dataclass(frozen=True)
class ProfileInfo:
    """What the orchestrator needs to know about a person."""

    profile_id: str
    timezone: str = ""
    suppressed: bool = False
    consents: Mapping[tuple[str, int], int] | None = None

    def consent(self, channel: str, purpose: int) -> int:
        return (self.consents or {}).get((channel, purpose), UNKNOWN)


@dataclass(frozen=True)
class Reason:
    """Why a message is held back; mirrors the contract's DecisionReason."""

    code: int
    rule_id: str = ""
    window_ms: int = 0
    window_kind: int = 0
    current_count: int = 0
    limit: int = 0
    retry_time: datetime | None = None
    action: int = DENY
    description: str = ""


@dataclass(frozen=True)
class _CheckInfo:
    code: int
    window_ms: int
    window_kind: int
    limit: int
    action: int
    noun: str


@dataclass(frozen=True)
class _Shape:
    """What a plan holds apart from the clock and the person: the same for every decision of
    one policy version, channel and message kind, so it is computed once and kept.

    `checks` are `(rule id, counter key, window kind, window ms, limit)`, window kind
    ROLLING for every rolling window (caps, gaps, duplicate intent). The message's intent key
    is not part of the shape (see `MessageSpec.shape_key`): its counter is left out of `writes`
    and is the empty counter key in `checks`, both filled in per plan.
    """

    exempted: bool
    writes: tuple[str, ...]
    checks: tuple[tuple[str, str, int, int, int], ...]
    infos: Mapping[str, _CheckInfo]


@dataclass(frozen=True)
class Plan:
    """The engine's work order for one decision."""

    reasons: tuple[Reason, ...]
    checks: tuple[CounterCheck, ...]
    writes: tuple[str, ...]
    exempted: bool
    infos: Mapping[str, _CheckInfo]
    calendar_ends: Mapping[int, datetime]
    intent_key: str = ""

    @property
    def blocked(self) -> bool:
        """True when a reason without a ledger already holds the message back."""
        return bool(self.reasons)


@dataclass(frozen=True)
class Verdict:
    """The final answer before a reservation id is attached."""

    outcome: int
    reasons: tuple[Reason, ...]
    not_before: datetime | None


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def profile_zone(profile: ProfileInfo, policy: CompiledPolicy) -> ZoneInfo:
    """The person's time zone, or the policy's fallback when it is unknown or invalid."""
    if profile.timezone:
        try:
            return ZoneInfo(profile.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return policy.fallback_zone


def message_keys(channel: str, message: MessageSpec) -> tuple[str, ...]:
    """Every counter key a message counts on."""
    keys = _keys_but_intent(channel, message)
    return (*keys, intent_counter(message)) if message.intent_key else keys


def _keys_but_intent(channel: str, message: MessageSpec) -> tuple[str, ...]:
    keys = ["any", f"ch:{channel}"]
    if message.category:
        keys.append(f"cat:{message.category}")
    keys.extend(f"tag:{tag}" for tag in sorted(set(message.tags)))
    if message.campaign_id:
        keys.append(f"cmp:{message.campaign_id}")
    return tuple(keys)


def intent_counter(message: MessageSpec) -> str:
    return f"int:{message.intent_key}"


def scope_key(scope: Scope, channel: str, message: MessageSpec) -> str | None:
    """The counter key a scoped rule reads for this message, or None if the rule does not apply."""
    if scope.kind == pb.SCOPE_KIND_ANY_CHANNEL:
        return "any"
    if scope.kind == pb.SCOPE_KIND_CHANNEL:
        return f"ch:{channel}" if scope.value in ("", channel) else None
    if scope.kind == pb.SCOPE_KIND_CATEGORY:
        if not message.category or scope.value not in ("", message.category):
            return None
        return f"cat:{message.category}"
    if scope.kind == pb.SCOPE_KIND_TAG:
        return f"tag:{scope.value}" if scope.value in message.tags else None
    if scope.kind == pb.SCOPE_KIND_CAMPAIGN:
        if not message.campaign_id or scope.value not in ("", message.campaign_id):
            return None
        return f"cmp:{message.campaign_id}"
    return None


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The instant a local day begins (DST aware; a skipped midnight maps to the first instant)."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def calendar_window(kind: int, now: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The current calendar day, ISO week or month in `zone`, as UTC instants [start, end)."""
    today = now.astimezone(zone).date()
    if kind == pb.WINDOW_KIND_CALENDAR_DAY:
        first, after = today, today + timedelta(days=1)
    elif kind == pb.WINDOW_KIND_CALENDAR_WEEK:
        first = today - timedelta(days=today.weekday())
        after = first + timedelta(days=7)
    elif kind == pb.WINDOW_KIND_CALENDAR_MONTH:
        first = today.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"not a calendar window kind: {kind}")
    return local_midnight(first, zone), local_midnight(after, zone)


# Calendar windows by (kind, zone): (start ms, end ms, end). A window is reused while `now`
# lies inside it, so the zone arithmetic runs once per window, not once per decision.
_WINDOWS: dict[tuple[int, ZoneInfo], tuple[int, int, datetime]] = {}
_MAX_WINDOWS = 4096


def cached_calendar_window(
    kind: int, now: datetime, now_ms: int, zone: ZoneInfo
) -> tuple[int, datetime]:
    """The start (ms) and the end of `calendar_window`, remembered for as long as `now` stays
    inside the window."""
    hit = _WINDOWS.get((kind, zone))
    if hit is not None and hit[0] <= now_ms < hit[1]:
        return hit[0], hit[2]
    start, end = calendar_window(kind, now, zone)
    if len(_WINDOWS) >= _MAX_WINDOWS:
        _WINDOWS.clear()
    start_ms = to_ms(start)
    _WINDOWS[(kind, zone)] = (start_ms, to_ms(end), end)
    return start_ms, end


def quiet_hours_end(
    start_minute: int, end_minute: int, now: datetime, zone: ZoneInfo
) -> datetime | None:
    """When the quiet hours around `now` end (UTC), or None when `now` is outside them."""
    local = now.astimezone(zone)
    minute = local.hour * 60 + local.minute
    if start_minute < end_minute:
        inside = start_minute <= minute < end_minute
        end_day = local.date()
    else:
        inside = minute >= start_minute or minute < end_minute
        end_day = local.date() + timedelta(days=1) if minute >= start_minute else local.date()
    if not inside:
        return None
    local_end = datetime.combine(end_day, time(end_minute // 60, end_minute % 60), tzinfo=zone)
    end = local_end.astimezone(UTC)
    return end if end > now else now + timedelta(minutes=1)


def is_exempt(policy: CompiledPolicy, message: MessageSpec) -> bool:
    if policy.exempt_transactional and message.purpose == TRANSACTIONAL:
        return True
    return policy.exempt_min_priority > 0 and message.priority >= policy.exempt_min_priority


def consent_reason(
    policy: CompiledPolicy, profile: ProfileInfo, channel: str, purpose: int
) -> Reason | None:
    """The NO_CONSENT reason for `channel`, or None when the person may be contacted there."""
    status = profile.consent(channel, purpose)
    if purpose == MARKETING or policy.transactional_requires_subscription:
        allowed = status == SUBSCRIBED
    else:
        allowed = status != UNSUBSCRIBED
    if allowed:
        return None
    purpose_name = "marketing" if purpose == MARKETING else "transactional"
    status_name = (
        consent_pb2.ConsentStatus.Name(consent_pb2.ConsentStatus.ValueType(status))
        .removeprefix("CONSENT_STATUS_")
        .lower()
    )
    return Reason(
        code=pb.REASON_CODE_NO_CONSENT,
        rule_id=policy.consent_rule_id,
        description=f"no {purpose_name} consent on {channel} (status {status_name})",
    )


def _shape(policy: CompiledPolicy, channel: str, message: MessageSpec) -> _Shape:
    """The rules that apply to `message` on `channel`, cached on the policy version."""
    key = (channel, *message.shape_key())
    shapes = policy.shapes
    found: _Shape | None = shapes.get(key)
    if found is not None:
        return found
    exempted = is_exempt(policy, message)
    writes = _keys_but_intent(channel, message)
    checks: list[tuple[str, str, int, int, int]] = []
    infos: dict[str, _CheckInfo] = {}
    if exempted:
        writes = writes if policy.exempt_still_counts else ()
    else:
        for cap in policy.caps:
            counter = scope_key(cap.scope, channel, message)
            if counter is None:
                continue
            rolling = cap.window_kind == pb.WINDOW_KIND_ROLLING
            checks.append((cap.rule_id, counter, cap.window_kind, cap.window_ms, cap.count))
            infos[cap.rule_id] = _CheckInfo(
                pb.REASON_CODE_FREQUENCY_CAP,
                cap.window_ms if rolling else 0,
                cap.window_kind,
                cap.count,
                cap.action,
                f"messages on {counter}",
            )
        for gap in policy.gaps:
            counter = scope_key(gap.scope, channel, message)
            if counter is None:
                continue
            checks.append((gap.rule_id, counter, pb.WINDOW_KIND_ROLLING, gap.gap_ms, 1))
            infos[gap.rule_id] = _CheckInfo(
                pb.REASON_CODE_MIN_GAP, gap.gap_ms, 0, 1, gap.action, f"message on {counter}"
            )
        if message.intent_key:
            for dup in policy.duplicates:
                # The empty counter key stands for the message's own intent counter.
                checks.append((dup.rule_id, "", pb.WINDOW_KIND_ROLLING, dup.window_ms, 1))
                infos[dup.rule_id] = _CheckInfo(
                    pb.REASON_CODE_DUPLICATE_INTENT,
                    dup.window_ms,
                    0,
                    1,
                    DENY,
                    "message with intent",
                )
    shape = _Shape(exempted, writes, tuple(checks), infos)
    if len(shapes) >= _MAX_SHAPES:
        shapes.clear()
    shapes[key] = shape
    return shape


_MAX_SHAPES = 4096


def plan_decision(
    policy: CompiledPolicy,
    profile: ProfileInfo,
    channel: str,
    message: MessageSpec,
    now: datetime,
) -> Plan:
    """What must be checked to decide `message` on `channel` for `profile` at `now`."""
    reasons: list[Reason] = []
    if profile.suppressed:
        reasons.append(
            Reason(code=pb.REASON_CODE_SUPPRESSED_PROFILE, description="the person is suppressed")
        )
    else:
        refused = consent_reason(policy, profile, channel, message.purpose)
        if refused is not None:
            reasons.append(refused)
    shape = _shape(policy, channel, message)
    intent = intent_counter(message) if message.intent_key else ""
    writes = (*shape.writes, intent) if intent and shape.writes else shape.writes
    if shape.exempted:
        return Plan(tuple(reasons), (), writes, True, {}, {}, message.intent_key)
    zone = profile_zone(profile, policy)
    now_ms = to_ms(now)
    for rule in policy.quiet_hours:
        if rule.channels and channel not in rule.channels:
            continue
        end = quiet_hours_end(rule.start_minute, rule.end_minute, now, zone)
        if end is None:
            continue
        action = rule.action
        hold_note = ""
        if (
            action == DEFER
            and rule.max_hold_ms is not None
            and to_ms(end) - now_ms > (rule.max_hold_ms)
        ):
            action = DENY
            hold_note = ", longer than the maximum hold"
        reasons.append(
            Reason(
                code=pb.REASON_CODE_QUIET_HOURS,
                rule_id=rule.rule_id,
                retry_time=end,
                action=action,
                description=(
                    f"quiet hours in {zone.key} until {end.astimezone(zone):%Y-%m-%d %H:%M}"
                    f"{hold_note}"
                ),
            )
        )
    checks: list[CounterCheck] = []
    windows: dict[int, tuple[int, datetime]] = {}
    for rule_id, counter, kind, window_ms, limit in shape.checks:
        if kind == pb.WINDOW_KIND_ROLLING:
            since = now_ms - window_ms + 1
        else:
            window = windows.get(kind)
            if window is None:
                window = windows[kind] = cached_calendar_window(kind, now, now_ms, zone)
            since = window[0]
        checks.append(CounterCheck(rule_id, counter or intent, since, limit))
    calendar_ends = {kind: end for kind, (_, end) in windows.items()}
    return Plan(
        tuple(reasons),
        tuple(checks),
        writes,
        False,
        shape.infos,
        calendar_ends,
        message.intent_key,
    )


def _window_text(info: _CheckInfo) -> str:
    if info.window_kind in (0, pb.WINDOW_KIND_ROLLING):
        return f"in {timedelta(milliseconds=info.window_ms)}"
    names: dict[int, str] = {
        pb.WINDOW_KIND_CALENDAR_DAY: "today",
        pb.WINDOW_KIND_CALENDAR_WEEK: "this week",
        pb.WINDOW_KIND_CALENDAR_MONTH: "this month",
    }
    return names[info.window_kind]


def violation_reason(plan: Plan, violation: Violation) -> Reason:
    """The reason a ledger violation stands for."""
    info = plan.infos[violation.rule_id]
    calendar_end = plan.calendar_ends.get(info.window_kind)
    if calendar_end is not None:
        retry = calendar_end
    else:
        retry = from_ms(violation.blocking_ms + info.window_ms)
    if info.code == pb.REASON_CODE_FREQUENCY_CAP:
        text = f"{violation.count} {info.noun} {_window_text(info)}, limit {info.limit}"
    elif info.code == pb.REASON_CODE_MIN_GAP:
        text = f"last {info.noun} less than {timedelta(milliseconds=info.window_ms)} ago"
    else:
        text = f"a {info.noun} {plan.intent_key!r} went out {_window_text(info)}"
    return Reason(
        code=info.code,
        rule_id=violation.rule_id,
        window_ms=info.window_ms,
        window_kind=info.window_kind,
        current_count=violation.count,
        limit=info.limit,
        retry_time=retry,
        action=info.action,
        description=text,
    )


def finish(plan: Plan, violations: tuple[Violation, ...]) -> Verdict:
    """Combine the plan's reasons with the ledger's violations into the answer.

    A violation of a rule the plan does not know (a replay whose first answer is still being
    recorded, under a policy that changed since) is skipped.
    """
    reasons = list(plan.reasons) + [
        violation_reason(plan, v) for v in violations if v.rule_id in plan.infos
    ]
    if not reasons:
        return Verdict(pb.OUTCOME_ALLOW, (), None)
    if any(r.action == DENY for r in reasons):
        return Verdict(pb.OUTCOME_DENY, tuple(reasons), None)
    not_before = max(r.retry_time for r in reasons if r.retry_time is not None)
    return Verdict(pb.OUTCOME_DEFER, tuple(reasons), not_before)
