"""Complementary follow-ups, next-best-action and campaign planning.

A follow-up rule says: when a message with intent I went out on channel A and the conversion
event E did not follow within T, propose channel B with variant V. B must be consented and
allowed by the fatigue rules now, and V must differ from every variant already sent with
intent I. Next-best-action applies the rules first, then the campaign's own candidates.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from upm.orchestrator.v1 import orchestrator_service_pb2 as pb
from upm_common.errors import FieldViolation, InvalidArgumentError
from upm_orchestrator.directory import SegmentDirectory
from upm_orchestrator.policy import CHANNEL_PATTERN, ID_PATTERN, invalid_fields
from upm_orchestrator.repository import Send
from upm_orchestrator.service import Orchestrator, check_profile_id, message_spec

HISTORY = timedelta(days=90)
PLAN_CHUNK = 500


def validate_follow_up_rule(rule: pb.FollowUpRule) -> None:
    problems: list[FieldViolation] = []
    if not ID_PATTERN.match(rule.rule_id):
        problems.append(
            FieldViolation("rule.rule_id", "must be 1-63 lower-case letters, digits, - or _")
        )
    if not rule.intent_key:
        problems.append(FieldViolation("rule.intent_key", "is required"))
    if not CHANNEL_PATTERN.match(rule.source_channel):
        problems.append(FieldViolation("rule.source_channel", "must name a channel"))
    if not rule.conversion_event:
        problems.append(FieldViolation("rule.conversion_event", "is required"))
    wait = rule.wait_duration.ToTimedelta()
    if wait <= timedelta(0):
        problems.append(FieldViolation("rule.wait_duration", "must be a positive duration"))
    if not rule.targets:
        problems.append(FieldViolation("rule.targets", "needs at least one channel and variant"))
    for index, target in enumerate(rule.targets):
        if not CHANNEL_PATTERN.match(target.channel):
            problems.append(FieldViolation(f"rule.targets[{index}].channel", "must name a channel"))
    if problems:
        raise invalid_fields(problems)


class FollowUps:
    """Follow-up rules, next-best-action and campaign plans on top of the Orchestrator."""

    def __init__(self, orchestrator: Orchestrator, segments: SegmentDirectory) -> None:
        self.orchestrator = orchestrator
        self.repository = orchestrator.repository
        self.segments = segments

    async def create_rule(self, rule: pb.FollowUpRule) -> pb.FollowUpRule:
        validate_follow_up_rule(rule)
        policy = await self.orchestrator.policy(rule.policy_id, "rule.policy_id")
        for index, target in enumerate(rule.targets):
            if target.channel not in policy.channels:
                raise InvalidArgumentError.for_field(
                    f"rule.targets[{index}].channel", f"unknown channel {target.channel!r}"
                )
        await self.repository.create_follow_up_rule(rule, self.orchestrator.clock())
        return rule

    async def _probe(
        self,
        profile_id: str,
        channel: str,
        variant: str,
        template: pb.Message,
        *,
        policy_id: str,
        intent_key: str,
    ) -> pb.Decision:
        message = pb.Message()
        message.CopyFrom(template)
        message.variant = variant
        message.intent_key = intent_key
        message.idempotency_key = ""
        request = pb.RequestPermissionRequest(
            profile_id=profile_id, channel=channel, message=message, policy_id=policy_id
        )
        return (await self.orchestrator.decide([request], paths=[""], dry_run=True, suggest=False))[
            0
        ]

    async def next_best_action(
        self, request: pb.GetNextBestActionRequest
    ) -> pb.GetNextBestActionResponse:
        check_profile_id(request.profile_id, "profile_id")
        template = pb.Message()
        template.CopyFrom(request.message)
        if not template.campaign_id:
            template.campaign_id = request.campaign_id
        if template.purpose == 0:
            template.purpose = 1  # type: ignore[assignment]
        message_spec(template, "message")
        now = self.orchestrator.clock()
        sends = await self.repository.sends_for(request.profile_id, now - HISTORY)
        outcomes = await self.repository.outcomes_for(request.profile_id, now - HISTORY)
        reasons: list[pb.DecisionReason] = []
        notes: list[str] = []
        later: tuple[datetime, str, str, str] | None = None
        rules, _ = await self.repository.list_follow_up_rules()
        for rule in rules:
            first = _latest(sends, rule.intent_key, rule.source_channel)
            if first is None:
                continue
            if any(
                o.type == "converted"
                and o.event_name == rule.conversion_event
                and o.occur_time >= first.sent_time
                for o in outcomes
            ):
                notes.append(f"rule {rule.rule_id}: {rule.conversion_event} happened; no follow-up")
                continue
            due = first.sent_time + rule.wait_duration.ToTimedelta()
            sent_variants = {s.variant for s in sends if s.intent_key == rule.intent_key}
            for target in rule.targets:
                if target.variant in sent_variants:
                    notes.append(f"rule {rule.rule_id}: variant {target.variant!r} already sent")
                    continue
                follow_intent = f"{rule.intent_key}/{target.variant}"
                decision = await self._probe(
                    request.profile_id,
                    target.channel,
                    target.variant,
                    template,
                    policy_id=rule.policy_id or request.policy_id,
                    intent_key=follow_intent,
                )
                reasons.extend(decision.reasons)
                if decision.outcome == pb.OUTCOME_DENY:
                    notes.append(f"rule {rule.rule_id}: {target.channel} is not allowed")
                    continue
                when = due
                if decision.outcome == pb.OUTCOME_DEFER:
                    when = max(due, decision.not_before_time.ToDatetime(tzinfo=now.tzinfo))
                why = (
                    f"{rule.intent_key} went out on {first.channel} at "
                    f"{first.sent_time.isoformat()} and {rule.conversion_event} did not follow; "
                    f"follow up on {target.channel} with {target.variant!r} (rule {rule.rule_id})"
                )
                if when <= now:
                    return pb.GetNextBestActionResponse(
                        action=pb.ACTION_KIND_SEND_NOW,
                        channel=target.channel,
                        variant=target.variant,
                        follow_up_rule_id=rule.rule_id,
                        reasons=reasons,
                        explanation=why,
                    )
                if later is None or when < later[0]:
                    later = (when, target.channel, target.variant, rule.rule_id)
                break
        sent_for_campaign = {
            (s.channel, s.variant) for s in sends if s.campaign_id == request.campaign_id
        }
        for candidate in request.candidates:
            if (candidate.channel, candidate.variant) in sent_for_campaign:
                notes.append(f"{candidate.channel}/{candidate.variant} already sent")
                continue
            decision = await self._probe(
                request.profile_id,
                candidate.channel,
                candidate.variant,
                template,
                policy_id=request.policy_id,
                intent_key=template.intent_key,
            )
            reasons.extend(decision.reasons)
            if decision.outcome == pb.OUTCOME_ALLOW:
                return pb.GetNextBestActionResponse(
                    action=pb.ACTION_KIND_SEND_NOW,
                    channel=candidate.channel,
                    variant=candidate.variant,
                    reasons=reasons,
                    explanation=f"{candidate.channel} is consented and allowed now",
                )
            if decision.outcome == pb.OUTCOME_DEFER:
                when = decision.not_before_time.ToDatetime(tzinfo=now.tzinfo)
                if later is None or when < later[0]:
                    later = (when, candidate.channel, candidate.variant, "")
        if later is not None:
            response = pb.GetNextBestActionResponse(
                action=pb.ACTION_KIND_SEND_LATER,
                channel=later[1],
                variant=later[2],
                follow_up_rule_id=later[3],
                reasons=reasons,
                explanation=f"{later[1]} is allowed from {later[0].isoformat()} on",
            )
            response.not_before_time.FromDatetime(later[0])
            return response
        return pb.GetNextBestActionResponse(
            action=pb.ACTION_KIND_NONE,
            reasons=reasons,
            explanation="; ".join(notes) or "no candidate channel is consented and allowed",
        )

    async def plan_campaign(
        self, request: pb.PlanCampaignRequest
    ) -> AsyncIterator[pb.PlanCampaignResponse]:
        """Per member the decision on the first allowed channel, then the totals."""
        if not request.segment_id:
            raise InvalidArgumentError.for_field("segment_id", "is required")
        if not request.channels:
            raise InvalidArgumentError.for_field("channels", "needs at least one channel")
        policy = await self.orchestrator.policy(request.policy_id)
        for index, channel in enumerate(request.channels):
            if channel.channel not in policy.channels:
                raise InvalidArgumentError.for_field(
                    f"channels[{index}].channel", f"unknown channel {channel.channel!r}"
                )
        message_spec(request.message, "message")
        by_outcome: Counter[int] = Counter()
        by_reason: Counter[tuple[int, int, str]] = Counter()
        by_channel: dict[str, int] = defaultdict(int)
        members = 0
        chunk: list[str] = []

        async def flush(profile_ids: list[str]) -> list[pb.PlannedSend]:
            planned = await self._plan_chunk(request, profile_ids)
            for send in planned:
                by_outcome[send.decision.outcome] += 1
                for reason in send.decision.reasons:
                    by_reason[(send.decision.outcome, reason.code, reason.rule_id)] += 1
                if send.decision.outcome == pb.OUTCOME_ALLOW:
                    by_channel[send.channel] += 1
            return planned

        async for profile_id in self.segments.members(request.segment_id):
            members += 1
            chunk.append(profile_id)
            if len(chunk) >= PLAN_CHUNK:
                for send in await flush(chunk):
                    yield pb.PlanCampaignResponse(send=send)
                chunk = []
        if chunk:
            for send in await flush(chunk):
                yield pb.PlanCampaignResponse(send=send)
        totals = pb.PlanTotals(member_count=members, allowed_by_channel=dict(by_channel))
        for outcome, count in sorted(by_outcome.items()):
            totals.by_outcome.add(outcome=outcome, count=count)
        for (outcome, code, rule_id), count in sorted(by_reason.items()):
            totals.by_reason.add(outcome=outcome, reason=code, rule_id=rule_id, count=count)
        yield pb.PlanCampaignResponse(totals=totals)

    def _member_request(
        self, request: pb.PlanCampaignRequest, profile_id: str, index: int
    ) -> pb.RequestPermissionRequest:
        channel = request.channels[index]
        message = pb.Message()
        message.CopyFrom(request.message)
        message.variant = channel.variant
        if message.idempotency_key:
            message.idempotency_key = f"{message.idempotency_key}:{profile_id}"
        return pb.RequestPermissionRequest(
            profile_id=profile_id,
            channel=channel.channel,
            message=message,
            policy_id=request.policy_id,
        )

    async def _plan_chunk(
        self, request: pb.PlanCampaignRequest, profile_ids: list[str]
    ) -> list[pb.PlannedSend]:
        known = await self.orchestrator.profiles.get_profiles(profile_ids)
        profile_ids = [p for p in profile_ids if p in known]
        probes = [
            self._member_request(request, profile_id, index)
            for profile_id in profile_ids
            for index in range(len(request.channels))
        ]
        width = len(request.channels)
        dry = await self.orchestrator.decide(
            probes, paths=[""] * len(probes), dry_run=True, suggest=False
        )
        chosen: list[int] = []
        for member in range(len(profile_ids)):
            options = dry[member * width : (member + 1) * width]
            pick = next((i for i, d in enumerate(options) if d.outcome == pb.OUTCOME_ALLOW), None)
            if pick is None:
                deferred = [
                    (d.not_before_time.ToDatetime(), i)
                    for i, d in enumerate(options)
                    if d.outcome == pb.OUTCOME_DEFER
                ]
                pick = min(deferred)[1] if deferred else 0
            chosen.append(pick)
        decisions = [dry[m * width + chosen[m]] for m in range(len(profile_ids))]
        if not request.dry_run:
            real = [probes[m * width + chosen[m]] for m in range(len(profile_ids))]
            decisions = await self.orchestrator.decide(real, paths=[""] * len(real), suggest=False)
        return [
            pb.PlannedSend(
                profile_id=profile_id,
                channel=request.channels[chosen[m]].channel,
                variant=request.channels[chosen[m]].variant,
                decision=decisions[m],
            )
            for m, profile_id in enumerate(profile_ids)
        ]


def _latest(sends: list[Send], intent_key: str, channel: str) -> Send | None:
    matching = [s for s in sends if s.intent_key == intent_key and s.channel == channel]
    return matching[-1] if matching else None
