"""The orchestrator's use cases: policies, permission decisions, reservations and outcomes.

The servicer calls these with contract messages and returns what they return; everything that
decides lives in upm_orchestrator.engine (pure) and the FatigueStore (atomic per profile).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from upm.common.v1 import consent_pb2
from upm.orchestrator.v1 import orchestrator_service_pb2 as pb
from upm_common.errors import FieldViolation, InvalidArgumentError, NotFoundError
from upm_common.protoconv import optional_timestamp
from upm_orchestrator import engine
from upm_orchestrator.directory import ProfileDirectory
from upm_orchestrator.engine import MessageSpec, Plan, ProfileInfo, Reason
from upm_orchestrator.metrics import DECISIONS, HELD_BACK, RESERVATIONS
from upm_orchestrator.policy import (
    DEFAULT_POLICY_ID,
    ID_PATTERN,
    CompiledPolicy,
    compile_policy,
    invalid_fields,
)
from upm_orchestrator.repository import OutcomeRecord, Repository, Send
from upm_orchestrator.store.base import FatigueStore, ReserveRequest, ReserveResult
from upm_orchestrator.store.common import new_id, new_ids

_OUTCOME_NAMES = {v: k.removeprefix("OUTCOME_").lower() for k, v in pb.Outcome.items()}
_REASON_NAMES = {v: k.removeprefix("REASON_CODE_").lower() for k, v in pb.ReasonCode.items()}
# Metric children by enum value, each looked up once: a label lookup on every decision cost
# more than the counting.
_DECISION_COUNTERS: dict[int, Any] = {}
_HELD_BACK_COUNTERS: dict[int, Any] = {}
PROFILE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
MAX_BATCH = 1000
MAX_TAGS = 32
MAX_TEXT = 256


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DecisionSettings:
    """Tunables of the decision path."""

    reservation_ttl_seconds: float = 300.0
    idempotency_ttl_seconds: float = 86_400.0
    policy_cache_seconds: float = 2.0


@dataclass
class _Item:
    path: str
    profile_id: str
    channel: str
    message: MessageSpec
    source: pb.Message
    policy: CompiledPolicy
    policy_id: str
    profile: ProfileInfo | None = None
    plan: Plan | None = None


def _counter(children: dict[int, Any], metric: Any, names: dict[Any, str], value: int) -> Any:
    child = children.get(value)
    if child is None:
        child = children[value] = metric.labels(names[value])
    return child


def reason_to_pb(reason: Reason) -> pb.DecisionReason:
    out = pb.DecisionReason(
        code=reason.code,  # type: ignore[arg-type]
        rule_id=reason.rule_id,
        window_kind=reason.window_kind,  # type: ignore[arg-type]
        current_count=reason.current_count,
        limit=reason.limit,
        action=reason.action,  # type: ignore[arg-type]
        description=reason.description,
    )
    if reason.window_ms:
        out.window_duration.FromMilliseconds(reason.window_ms)
    if reason.retry_time is not None:
        out.retry_time.FromDatetime(reason.retry_time)
    return out


def message_spec(message: pb.Message, path: str) -> MessageSpec:
    """Validate a contract Message; raises InvalidArgumentError naming the bad fields."""
    problems: list[FieldViolation] = []
    if message.purpose not in (
        consent_pb2.CONSENT_PURPOSE_MARKETING,
        consent_pb2.CONSENT_PURPOSE_TRANSACTIONAL,
    ):
        problems.append(FieldViolation(f"{path}.purpose", "must be MARKETING or TRANSACTIONAL"))
    for name in ("campaign_id", "category", "intent_key", "variant", "idempotency_key"):
        if len(getattr(message, name)) > MAX_TEXT:
            problems.append(FieldViolation(f"{path}.{name}", f"at most {MAX_TEXT} characters"))
    if len(message.tags) > MAX_TAGS:
        problems.append(FieldViolation(f"{path}.tags", f"at most {MAX_TAGS} tags"))
    for index, tag in enumerate(message.tags):
        if not tag or len(tag) > MAX_TEXT:
            problems.append(FieldViolation(f"{path}.tags[{index}]", "must be 1-256 characters"))
    if problems:
        raise invalid_fields(problems)
    return MessageSpec(
        campaign_id=message.campaign_id,
        category=message.category,
        tags=tuple(message.tags),
        intent_key=message.intent_key,
        purpose=message.purpose,
        priority=message.priority,
        variant=message.variant,
        idempotency_key=message.idempotency_key,
    )


def check_profile_id(profile_id: str, path: str) -> None:
    if not PROFILE_ID_PATTERN.match(profile_id):
        raise InvalidArgumentError.for_field(
            path, "must be 1-128 letters, digits or any of . _ : @ -"
        )


class Orchestrator:
    """Policies and permission decisions."""

    def __init__(
        self,
        *,
        store: FatigueStore,
        repository: Repository,
        profiles: ProfileDirectory,
        settings: DecisionSettings | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.repository = repository
        self.profiles = profiles
        self.settings = settings or DecisionSettings()
        self.clock = clock
        self._policies: dict[str, tuple[float, CompiledPolicy]] = {}
        self._loading: dict[str, asyncio.Future[CompiledPolicy]] = {}

    # Policies -------------------------------------------------------------------------------

    async def create_policy(self, policy: pb.Policy) -> pb.Policy:
        compile_policy(policy)
        stored = await self.repository.create_policy(policy, self.clock())
        self._policies.pop(policy.policy_id, None)
        return stored

    async def get_policy(self, policy_id: str, version: int) -> pb.Policy:
        if version < 0:
            raise InvalidArgumentError.for_field("version", "must not be negative")
        return await self.repository.get_policy(policy_id, version)

    async def update_policy(self, policy: pb.Policy, expected_version: int) -> pb.Policy:
        compile_policy(policy)
        stored = await self.repository.update_policy(policy, expected_version, self.clock())
        self._policies.pop(policy.policy_id, None)
        return stored

    async def delete_policy(self, policy_id: str) -> None:
        await self.repository.delete_policy(policy_id)
        self._policies.pop(policy_id, None)

    async def policy(self, policy_id: str, path: str = "policy_id") -> CompiledPolicy:
        """The current compiled policy, cached for a short while.

        When the cache runs out, one caller reads the policy again while the others wait for
        that read (not one read each), and an unchanged version keeps its compiled form.
        """
        policy_id = policy_id or DEFAULT_POLICY_ID
        cached = self._policies.get(policy_id)
        if cached is not None and time.monotonic() - cached[0] < self.settings.policy_cache_seconds:
            return cached[1]
        if not ID_PATTERN.match(policy_id):
            raise InvalidArgumentError.for_field(path, "is not a valid policy id")
        loading = self._loading.get(policy_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load_policy(policy_id))
            self._loading[policy_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(policy_id, None))
        try:
            return await asyncio.shield(loading)
        except NotFoundError:
            raise NotFoundError(
                f"{path}: policy {policy_id!r} not found",
                resource_type="policy",
                resource_name=policy_id,
            ) from None

    async def _load_policy(self, policy_id: str) -> CompiledPolicy:
        read_at = time.monotonic()
        stored = await self.repository.get_policy(policy_id)
        cached = self._policies.get(policy_id)
        if cached is not None and cached[1].version == stored.version:
            compiled = cached[1]
        else:
            compiled = compile_policy(stored)
        self._policies[policy_id] = (read_at, compiled)
        return compiled

    # Decisions ------------------------------------------------------------------------------

    async def request_permission(self, request: pb.RequestPermissionRequest) -> pb.Decision:
        return (await self.decide([request], paths=[""]))[0]

    async def batch_request_permission(
        self, requests: Sequence[pb.RequestPermissionRequest]
    ) -> list[pb.Decision]:
        if len(requests) > MAX_BATCH:
            raise InvalidArgumentError.for_field("requests", f"at most {MAX_BATCH} requests")
        return await self.decide(requests, paths=[f"requests[{i}]." for i in range(len(requests))])

    async def _prepare(
        self, requests: Sequence[pb.RequestPermissionRequest], paths: Sequence[str]
    ) -> list[_Item]:
        items: list[_Item] = []
        # A batch usually holds one campaign: each policy is resolved and each distinct
        # message validated once per call, not once per request.
        policies: dict[str, CompiledPolicy] = {}
        specs: dict[bytes, MessageSpec] = {}
        for request, path in zip(requests, paths, strict=True):
            check_profile_id(request.profile_id, f"{path}profile_id")
            policy = policies.get(request.policy_id)
            if policy is None:
                policy = await self.policy(request.policy_id, f"{path}policy_id")
                policies[request.policy_id] = policy
            if request.channel not in policy.channels:
                raise InvalidArgumentError.for_field(
                    f"{path}channel",
                    f"unknown channel {request.channel!r}; policy {policy.policy_id!r} knows "
                    + ", ".join(policy.channels),
                )
            raw = request.message.SerializeToString()
            spec = specs.get(raw)
            if spec is None:
                spec = specs[raw] = message_spec(request.message, f"{path}message")
            items.append(
                _Item(
                    path,
                    request.profile_id,
                    request.channel,
                    spec,
                    request.message,
                    policy,
                    policy.policy_id,
                )
            )
        found = await self.profiles.get_profiles([item.profile_id for item in items])
        for item in items:
            profile = found.get(item.profile_id)
            if profile is None:
                raise _profile_not_found(item.profile_id, f"{item.path}profile_id")
            item.profile = profile
        return items

    def _reserve_request(
        self,
        item: _Item,
        now: datetime,
        *,
        dry_run: bool,
        decision_id: str,
        plans: dict[tuple[object, ...], Plan] | None = None,
    ) -> ReserveRequest:
        assert item.profile is not None
        if plans is None:
            item.plan = engine.plan_decision(
                item.policy, item.profile, item.channel, item.message, now
            )
        else:
            # Within one call `now` is fixed, so a plan depends only on the policy, the channel,
            # what the message counts on and the few facts about the person the engine reads:
            # a batch of one campaign plans once per channel and time zone, not once per person.
            profile, message = item.profile, item.message
            key = (
                id(item.policy),
                item.channel,
                *message.rule_key(),
                profile.suppressed,
                profile.timezone,
                profile.consent(item.channel, message.purpose),
            )
            plan = plans.get(key)
            if plan is None:
                plan = plans[key] = engine.plan_decision(
                    item.policy, profile, item.channel, message, now
                )
            item.plan = plan
        now_ms = engine.to_ms(now)
        keyed = bool(item.message.idempotency_key) and not dry_run
        return ReserveRequest(
            profile_id=item.profile_id,
            now_ms=now_ms,
            checks=item.plan.checks,
            writes=item.plan.writes,
            reserve=not dry_run and not item.plan.blocked,
            ttl_ms=int(self.settings.reservation_ttl_seconds * 1000),
            retention_ms=item.policy.retention_ms,
            idempotency_key=item.message.idempotency_key if keyed else "",
            idempotency_ttl_ms=int(self.settings.idempotency_ttl_seconds * 1000),
            meta={
                "d": decision_id,
                "t": now_ms,
                "c": item.channel,
                "cmp": item.message.campaign_id,
                "int": item.message.intent_key,
                "var": item.message.variant,
                # A replay may have to answer for this request: keep what it asked.
                **({"msg": item.source.SerializeToString().hex()} if keyed else {}),
            },
        )

    async def decide(
        self,
        requests: Sequence[pb.RequestPermissionRequest],
        *,
        paths: Sequence[str],
        dry_run: bool = False,
        suggest: bool = True,
    ) -> list[pb.Decision]:
        """Decide every request; dry runs reserve and log nothing."""
        items = await self._prepare(requests, paths)
        now = self.clock()
        # One person's messages are decided in order of priority, highest first.
        order = sorted(
            range(len(items)), key=lambda i: (items[i].profile_id, -items[i].message.priority)
        )
        # Plans and decision templates are shared by the decisions of one call: a call of one
        # decision needs neither.
        single = len(items) == 1
        plans: dict[tuple[object, ...], Plan] | None = None if single else {}
        reserve_requests = [
            self._reserve_request(
                items[i], now, dry_run=dry_run, decision_id=decision_id, plans=plans
            )
            for i, decision_id in zip(order, new_ids(len(order)), strict=True)
        ]
        results = await self.store.reserve_many(reserve_requests)
        decisions: list[pb.Decision | None] = [None] * len(items)
        fresh: list[tuple[_Item, pb.Decision]] = []
        replays: list[tuple[int, ReserveRequest, ReserveResult]] = []
        templates: dict[tuple[object, ...], pb.Decision] | None = None if single else {}
        for index, request, result in zip(order, reserve_requests, results, strict=True):
            item = items[index]
            if result.replayed:
                replays.append((index, request, result))
                continue
            decision = self._build(item, result, templates)
            decisions[index] = decision
            fresh.append((item, decision))
        if suggest:
            await self._suggest(fresh, now, plans)
        # A replay answers what the first request with its key answered: from this very call
        # (the same key twice in one batch), else as recorded, waiting briefly if the first
        # call is still in flight.
        by_id = {decision.decision_id: decision for _, decision in fresh}
        for index, request, result in replays:
            first = by_id.get(str(result.meta.get("d", "")))
            if first is not None and result.decision is None:
                decisions[index] = first
                continue
            answer = await self._await_first_answer(request, result)
            if answer.decision is not None:
                decisions[index] = pb.Decision.FromString(answer.decision)
            elif answer.replayed:
                decisions[index] = self._build(self._first_item(items[index], answer), answer)
            else:
                decisions[index] = self._build(items[index], answer)
        if not dry_run:
            await self._record(fresh)
        return [d for d in decisions if d is not None]

    async def _record(self, fresh: list[tuple[_Item, pb.Decision]]) -> None:
        """Remember the answers for their idempotency keys, log them and count them."""
        answers = [
            (item.profile_id, item.message.idempotency_key, decision.SerializeToString())
            for item, decision in fresh
            if item.message.idempotency_key
        ]
        if answers:
            await self.store.remember(answers)
        await self.repository.log([decision for _, decision in fresh])
        outcomes: Counter[pb.Outcome.ValueType] = Counter()
        reasons: Counter[pb.ReasonCode.ValueType] = Counter()
        for _, decision in fresh:
            outcomes[decision.outcome] += 1
            for reason in decision.reasons:
                reasons[reason.code] += 1
        for outcome, count in outcomes.items():
            _counter(_DECISION_COUNTERS, DECISIONS, _OUTCOME_NAMES, outcome).inc(count)
        for code, count in reasons.items():
            _counter(_HELD_BACK_COUNTERS, HELD_BACK, _REASON_NAMES, code).inc(count)

    def _first_item(self, item: _Item, result: ReserveResult) -> _Item:
        """The request that first used `item`'s idempotency key, from what the store kept of
        it (its channel and message), planned again at its own time: a replay whose first
        answer was never recorded answers for that request, not for the one replaying it."""
        meta = result.meta
        if "msg" not in meta:
            return item
        source = pb.Message.FromString(bytes.fromhex(str(meta["msg"])))
        first = _Item(
            item.path,
            item.profile_id,
            str(meta.get("c") or item.channel),
            message_spec(source, f"{item.path}message"),
            source,
            item.policy,
            item.policy_id,
            item.profile,
        )
        assert first.profile is not None
        decided = engine.from_ms(int(meta.get("t") or 0))
        first.plan = engine.plan_decision(
            first.policy, first.profile, first.channel, first.message, decided
        )
        return first

    async def _await_first_answer(
        self, request: ReserveRequest, result: ReserveResult
    ) -> ReserveResult:
        """For a replay whose first call is still in flight, wait briefly for its answer."""
        for _ in range(50):
            if not result.replayed or result.decision is not None:
                return result
            await asyncio.sleep(0.005)
            result = await self.store.reserve(request)
        return result

    def _build(
        self,
        item: _Item,
        result: ReserveResult,
        templates: dict[tuple[object, ...], pb.Decision] | None = None,
    ) -> pb.Decision:
        """The decision for `result`. Decisions of one call that differ only in the person
        are copies of one template (`templates`, per call): copying a message is a third of
        the cost of building it field by field. Without `templates` (a call of one decision)
        the decision is built at once."""
        assert item.plan is not None
        meta = result.meta
        decide_ms = int(meta.get("t") or 0)
        shape = (
            id(item.policy),
            item.channel,
            id(item.message),
            item.plan.exempted,
            decide_ms,
            result.expire_ms if result.reservation_id else 0,
        )
        template = None if templates is None else templates.get(shape)
        if template is None:
            template = pb.Decision(
                channel=item.channel,
                message=item.source,
                policy_id=item.policy_id,
                policy_version=item.policy.version,
                exempted=item.plan.exempted,
            )
            template.decide_time.FromMilliseconds(decide_ms)
            if result.reservation_id:
                template.outcome = pb.OUTCOME_ALLOW
                template.reservation_expire_time.FromMilliseconds(result.expire_ms)
            if templates is not None:
                templates[shape] = template
        if templates is None:
            decision = template
        else:
            decision = pb.Decision()
            decision.CopyFrom(template)
        decision.decision_id = str(meta.get("d") or new_id())
        decision.profile_id = item.profile_id
        if result.reservation_id:
            decision.reservation_id = result.reservation_id
            return decision
        verdict = engine.finish(item.plan, result.violations)
        decision.outcome = verdict.outcome  # type: ignore[assignment]
        decision.reasons.extend(reason_to_pb(r) for r in verdict.reasons)
        if verdict.not_before is not None:
            decision.not_before_time.FromDatetime(verdict.not_before)
        return decision

    async def _suggest(
        self,
        fresh: list[tuple[_Item, pb.Decision]],
        now: datetime,
        plans: dict[tuple[object, ...], Plan] | None = None,
    ) -> None:
        """Name, for held-back messages, another consented channel allowed now."""
        candidates: list[tuple[pb.Decision, str, ReserveRequest]] = []
        for item, decision in fresh:
            if decision.outcome == pb.OUTCOME_ALLOW or item.profile is None:
                continue
            if item.profile.suppressed:
                continue
            for channel in item.policy.channels:
                if channel == item.channel:
                    continue
                if (
                    engine.consent_reason(item.policy, item.profile, channel, item.message.purpose)
                    is not None
                ):
                    continue
                other = _Item(
                    item.path,
                    item.profile_id,
                    channel,
                    item.message,
                    item.source,
                    item.policy,
                    item.policy_id,
                    item.profile,
                )
                request = self._reserve_request(
                    other, now, dry_run=True, decision_id="", plans=plans
                )
                assert other.plan is not None
                if other.plan.blocked:
                    continue
                candidates.append((decision, channel, request))
        if not candidates:
            return
        results = await self.store.reserve_many([c[2] for c in candidates])
        for (decision, channel, _), result in zip(candidates, results, strict=True):
            if not result.violations and not decision.suggested_channel:
                decision.suggested_channel = channel

    # Reservations and outcomes ----------------------------------------------------------------

    async def confirm(self, reservation_id: str) -> pb.Reservation:
        if not reservation_id:
            raise InvalidArgumentError.for_field("reservation_id", "is required")
        now = self.clock()
        info = await self.store.confirm(reservation_id, engine.to_ms(now))
        RESERVATIONS.labels("confirmed").inc()
        meta = info.meta
        await self.repository.record_send(
            info.profile_id,
            Send(
                reservation_id,
                str(meta.get("c", "")),
                str(meta.get("cmp", "")),
                str(meta.get("int", "")),
                str(meta.get("var", "")),
                engine.from_ms(int(meta.get("t") or engine.to_ms(now))),
            ),
        )
        return _reservation_pb(
            info.reservation_id, info.profile_id, info.state, info.expire_ms, str(meta.get("c", ""))
        )

    async def release(self, reservation_id: str) -> pb.Reservation:
        if not reservation_id:
            raise InvalidArgumentError.for_field("reservation_id", "is required")
        info = await self.store.release(reservation_id, engine.to_ms(self.clock()))
        RESERVATIONS.labels("released").inc()
        return _reservation_pb(
            info.reservation_id,
            info.profile_id,
            info.state,
            info.expire_ms,
            str(info.meta.get("c", "")),
        )

    async def record_outcome(self, request: pb.RecordOutcomeRequest) -> bool:
        check_profile_id(request.profile_id, "profile_id")
        if (
            request.type == pb.OUTCOME_TYPE_UNSPECIFIED
            or request.type not in pb.OutcomeType.values()
        ):
            raise InvalidArgumentError.for_field("type", "must be a known outcome type")
        if not request.channel:
            raise InvalidArgumentError.for_field("channel", "is required")
        if request.type == pb.OUTCOME_TYPE_CONVERTED and not request.event_name:
            raise InvalidArgumentError.for_field("event_name", "is required for CONVERTED")
        when = optional_timestamp(request, "occur_time") or self.clock()
        found = await self.profiles.get_profiles([request.profile_id])
        if request.profile_id not in found:
            raise _profile_not_found(request.profile_id, "profile_id")
        if found[request.profile_id].suppressed:
            # Nothing is kept about an erased person, as ingest drops their events at the door;
            # they can no longer be messaged, so there is no consent left to withdraw.
            return False
        kind = pb.OutcomeType.Name(request.type).removeprefix("OUTCOME_TYPE_").lower()
        consent_updated = False
        if request.type in (pb.OUTCOME_TYPE_UNSUBSCRIBED, pb.OUTCOME_TYPE_COMPLAINED):
            await self.profiles.withdraw_consent(
                request.profile_id,
                request.channel,
                consent_pb2.CONSENT_PURPOSE_MARKETING,
                when,
                f"orchestrator:{kind}",
            )
            consent_updated = True
        await self.repository.record_outcome(
            request.profile_id,
            request.reservation_id,
            OutcomeRecord(kind, request.event_name, request.channel, request.campaign_id, when),
        )
        return consent_updated

    async def list_decisions(
        self, profile_id: str, size: int, token: str
    ) -> tuple[list[pb.Decision], str]:
        check_profile_id(profile_id, "profile_id")
        return await self.repository.list_decisions(profile_id, size, token)

    async def rule_stats(self, request: pb.GetRuleStatsRequest) -> pb.GetRuleStatsResponse:
        stats, total = await self.repository.rule_stats(
            request.policy_id,
            optional_timestamp(request, "start_time"),
            optional_timestamp(request, "end_time"),
        )
        return pb.GetRuleStatsResponse(stats=stats, decision_count=total)

    async def explain(self, decision_id: str) -> pb.ExplainDecisionResponse:
        if not decision_id:
            raise InvalidArgumentError.for_field("decision_id", "is required")
        decision = await self.repository.get_decision(decision_id)
        return pb.ExplainDecisionResponse(decision=decision, explanation=explain(decision))


def explain(decision: pb.Decision) -> list[str]:
    """One sentence per reason, or why the message was allowed."""
    lines: list[str] = []
    subject = f"{decision.channel} message to {decision.profile_id}"
    if decision.outcome == pb.OUTCOME_ALLOW:
        lines.append(
            f"The {subject} was allowed by policy {decision.policy_id!r} "
            f"v{decision.policy_version}"
            + (" under an exemption." if decision.exempted else ": no rule objected.")
        )
        lines.append(
            f"Reservation {decision.reservation_id} counts at once until confirmed or released."
        )
        return lines
    verb = "denied" if decision.outcome == pb.OUTCOME_DENY else "deferred"
    lines.append(
        f"The {subject} was {verb} by policy {decision.policy_id!r} v{decision.policy_version}."
    )
    for reason in decision.reasons:
        code = pb.ReasonCode.Name(reason.code).removeprefix("REASON_CODE_")
        rule = f" (rule {reason.rule_id})" if reason.rule_id else ""
        lines.append(f"{code}{rule}: {reason.description}.")
    if decision.HasField("not_before_time"):
        lines.append(
            f"It may be sent from {decision.not_before_time.ToDatetime(tzinfo=UTC).isoformat()} on."
        )
    if decision.suggested_channel:
        lines.append(f"It is allowed now on {decision.suggested_channel}.")
    return lines


def _profile_not_found(profile_id: str, path: str) -> NotFoundError:
    return NotFoundError(
        f"{path}: profile {profile_id!r} not found",
        resource_type="profile",
        resource_name=profile_id,
    )


def _reservation_pb(
    reservation_id: str, profile_id: str, state: str, expire_ms: int, channel: str
) -> pb.Reservation:
    out = pb.Reservation(
        reservation_id=reservation_id,
        profile_id=profile_id,
        state=pb.ReservationState.Value(f"RESERVATION_STATE_{state.upper()}"),
        channel=channel,
    )
    out.expire_time.FromMilliseconds(expire_ms)
    return out


__all__ = ["DecisionSettings", "Orchestrator", "explain"]
