"""Complementary follow-ups and next-best-action."""

from __future__ import annotations

from datetime import timedelta

import pytest
from google.protobuf import duration_pb2

from upm.orchestrator.v1 import orchestrator_service_pb2 as pb
from upm_common.errors import InvalidArgumentError
from upm_orchestrator.engine import ProfileInfo

from .conftest import Harness, rule, subscribed

FOLLOW_UP = pb.FollowUpRule(
    rule_id="spring-nudge",
    intent_key="spring-sale",
    source_channel="email",
    conversion_event="Order Completed",
    wait_duration=duration_pb2.Duration(seconds=2 * 86_400),
    targets=[
        pb.ChannelVariant(channel="in_app", variant="10-off"),
        pb.ChannelVariant(channel="sms", variant="20-off"),
        pb.ChannelVariant(channel="push", variant="free-shipping"),
    ],
)


def nba(*candidates: tuple[str, str]) -> pb.GetNextBestActionRequest:
    return pb.GetNextBestActionRequest(
        profile_id="p1",
        campaign_id="spring",
        candidates=[pb.ChannelVariant(channel=c, variant=v) for c, v in candidates],
        message=pb.Message(purpose=1, intent_key="spring-sale"),
    )


async def test_follow_up_proposes_another_channel_and_incentive(harness: Harness) -> None:
    await harness.policy(
        rule(
            "same-message",
            duplicate_intent=pb.DuplicateIntentRule(
                window_duration=duration_pb2.Duration(seconds=86_400)
            ),
        )
    )
    await harness.followups.create_rule(FOLLOW_UP)
    first = await harness.ask(
        channel="email", intent_key="spring-sale", campaign_id="spring", variant="10-off"
    )
    await harness.orchestrator.confirm(first.reservation_id)
    sent_at = harness.clock.now

    waiting = await harness.followups.next_best_action(nba())
    assert waiting.action == pb.ACTION_KIND_SEND_LATER
    assert (waiting.channel, waiting.variant) == ("sms", "20-off")
    assert waiting.not_before_time.ToDatetime().replace(tzinfo=sent_at.tzinfo) == (
        sent_at + timedelta(days=2)
    )
    assert waiting.follow_up_rule_id == "spring-nudge"

    harness.clock.advance(days=2, minutes=1)
    now = await harness.followups.next_best_action(nba())
    assert now.action == pb.ACTION_KIND_SEND_NOW
    # in_app would repeat the "10-off" incentive already sent; sms offers a different one.
    assert (now.channel, now.variant) == ("sms", "20-off")
    assert "Order Completed did not follow" in now.explanation

    harness.profiles.put(ProfileInfo("p1", "", False, subscribed("email", "push", "web")))
    fallback = await harness.followups.next_best_action(nba())
    assert (fallback.action, fallback.channel, fallback.variant) == (
        pb.ACTION_KIND_SEND_NOW,
        "push",
        "free-shipping",
    )

    await harness.orchestrator.record_outcome(
        pb.RecordOutcomeRequest(
            profile_id="p1",
            channel="web",
            type=pb.OUTCOME_TYPE_CONVERTED,
            event_name="Order Completed",
        )
    )
    converted = await harness.followups.next_best_action(
        nba(("email", "10-off"), ("web", "banner"))
    )
    assert (converted.action, converted.channel, converted.variant) == (
        pb.ACTION_KIND_SEND_NOW,
        "web",
        "banner",
    )
    assert converted.follow_up_rule_id == ""


async def test_next_best_action_waits_for_fatigue(harness: Harness) -> None:
    await harness.policy(
        rule(
            "gap",
            min_gap=pb.MinGapRule(
                gap_duration=duration_pb2.Duration(seconds=3600),
                scope=pb.RuleScope(kind=pb.SCOPE_KIND_ANY_CHANNEL),
                action=pb.RULE_ACTION_DEFER,
            ),
        )
    )
    sent = await harness.ask(channel="email", campaign_id="other")
    await harness.orchestrator.confirm(sent.reservation_id)
    answer = await harness.followups.next_best_action(nba(("sms", "a"), ("push", "b")))
    assert answer.action == pb.ACTION_KIND_SEND_LATER
    assert answer.channel == "sms"
    assert answer.reasons[0].code == pb.REASON_CODE_MIN_GAP
    nothing = await harness.followups.next_best_action(nba())
    assert nothing.action == pb.ACTION_KIND_NONE


async def test_follow_up_rule_validation(harness: Harness) -> None:
    await harness.policy()
    bad = pb.FollowUpRule(
        rule_id="x",
        intent_key="i",
        source_channel="email",
        conversion_event="e",
        targets=[pb.ChannelVariant(channel="fax")],
    )
    with pytest.raises(InvalidArgumentError) as error:
        await harness.followups.create_rule(bad)
    assert [v.field for v in error.value.violations] == ["rule.wait_duration"]
    bad.wait_duration.seconds = 60
    with pytest.raises(InvalidArgumentError) as channel:
        await harness.followups.create_rule(bad)
    assert [v.field for v in channel.value.violations] == ["rule.targets[0].channel"]
