"""The orchestrator over gRPC: policies, bad input, decisions, outcomes and campaign plans."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from upm.common.v1 import consent_pb2
from upm.orchestrator.v1 import orchestrator_service_pb2 as pb
from upm.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

from .conftest import Peers, cap

MARKETING = consent_pb2.CONSENT_PURPOSE_MARKETING


def violations(exc: grpc.aio.AioRpcError) -> list[str]:
    """The BadRequest field paths carried by an INVALID_ARGUMENT error."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    return [v.field for v in bad.field_violations]
    return []


def ask(
    profile_id: str = "p1", channel: str = "email", **message: object
) -> pb.RequestPermissionRequest:
    message.setdefault("purpose", MARKETING)
    return pb.RequestPermissionRequest(
        profile_id=profile_id,
        channel=channel,
        message=pb.Message(**message),  # type: ignore[arg-type]
    )


async def test_policy_lifecycle(stub: pb_grpc.OrchestratorServiceStub) -> None:
    policy = pb.Policy(policy_id="default", rules=[cap("daily", 2, seconds=86_400)])
    created = (await stub.CreatePolicy(pb.CreatePolicyRequest(policy=policy))).policy
    assert created.version == 1
    with pytest.raises(grpc.aio.AioRpcError) as exists:
        await stub.CreatePolicy(pb.CreatePolicyRequest(policy=policy))
    assert exists.value.code() == grpc.StatusCode.ALREADY_EXISTS
    policy.rules[0].frequency_cap.count = 3
    updated = (await stub.UpdatePolicy(pb.UpdatePolicyRequest(policy=policy))).policy
    assert updated.version == 2
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await stub.UpdatePolicy(pb.UpdatePolicyRequest(policy=policy, expected_version=1))
    assert stale.value.code() == grpc.StatusCode.ABORTED
    old = (await stub.GetPolicy(pb.GetPolicyRequest(policy_id="default", version=1))).policy
    assert old.rules[0].frequency_cap.count == 2
    for index in range(3):
        await stub.CreatePolicy(
            pb.CreatePolicyRequest(policy=pb.Policy(policy_id=f"extra-{index}"))
        )
    first = await stub.ListPolicies(pb.ListPoliciesRequest(page_size=3))
    second = await stub.ListPolicies(
        pb.ListPoliciesRequest(page_size=3, page_token=first.next_page_token)
    )
    ids = [p.policy_id for p in first.policies] + [p.policy_id for p in second.policies]
    assert ids == ["default", "extra-0", "extra-1", "extra-2"]
    assert second.next_page_token == ""
    await stub.DeletePolicy(pb.DeletePolicyRequest(policy_id="extra-0"))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.GetPolicy(pb.GetPolicyRequest(policy_id="extra-0"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_policy_names_each_field(stub: pb_grpc.OrchestratorServiceStub) -> None:
    bad = pb.Policy(
        policy_id="default",
        rules=[cap("neg", 1, seconds=-5), cap("unknown", 1, seconds=60, value="fax")],
        fallback_time_zone="Mars/Olympus",
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.CreatePolicy(pb.CreatePolicyRequest(policy=bad))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error.value) == [
        "policy.fallback_time_zone",
        "policy.rules[0].frequency_cap.window_duration",
        "policy.rules[1].frequency_cap.scope.value",
    ]


async def test_bad_requests(stub: pb_grpc.OrchestratorServiceStub) -> None:
    await stub.CreatePolicy(pb.CreatePolicyRequest(policy=pb.Policy(policy_id="default")))
    with pytest.raises(grpc.aio.AioRpcError) as unknown_channel:
        await stub.RequestPermission(ask(channel="fax"))
    assert unknown_channel.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(unknown_channel.value) == ["channel"]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.RequestPermission(ask(profile_id="nobody"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "profile_id" in (missing.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as in_batch:
        await stub.BatchRequestPermission(
            pb.BatchRequestPermissionRequest(requests=[ask(), ask(channel="telegraph")])
        )
    assert violations(in_batch.value) == ["requests[1].channel"]
    with pytest.raises(grpc.aio.AioRpcError) as no_purpose:
        await stub.RequestPermission(ask(purpose=0))
    assert violations(no_purpose.value) == ["message.purpose"]
    with pytest.raises(grpc.aio.AioRpcError) as no_policy:
        await stub.RequestPermission(
            pb.RequestPermissionRequest(
                profile_id="p1", channel="email", message=pb.Message(purpose=1), policy_id="nope"
            )
        )
    assert no_policy.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as no_reservation:
        await stub.ConfirmReservation(pb.ConfirmReservationRequest(reservation_id="p1~missing"))
    assert no_reservation.value.code() == grpc.StatusCode.NOT_FOUND


async def test_decide_confirm_explain_and_unsubscribe(
    stub: pb_grpc.OrchestratorServiceStub, peers: Peers
) -> None:
    policy = pb.Policy(policy_id="default", rules=[cap("daily", 1, seconds=86_400)])
    await stub.CreatePolicy(pb.CreatePolicyRequest(policy=policy))
    allowed = (await stub.RequestPermission(ask())).decision
    assert allowed.outcome == pb.OUTCOME_ALLOW
    confirmed = await stub.ConfirmReservation(
        pb.ConfirmReservationRequest(reservation_id=allowed.reservation_id)
    )
    assert confirmed.reservation.state == pb.RESERVATION_STATE_CONFIRMED
    denied = (await stub.RequestPermission(ask())).decision
    assert denied.outcome == pb.OUTCOME_DENY
    assert denied.suggested_channel == "sms"
    explained = await stub.ExplainDecision(
        pb.ExplainDecisionRequest(decision_id=denied.decision_id)
    )
    assert any("daily" in line for line in explained.explanation)
    listed = await stub.ListDecisions(pb.ListDecisionsRequest(profile_id="p1"))
    assert [d.decision_id for d in listed.decisions] == [denied.decision_id, allowed.decision_id]
    stats = await stub.GetRuleStats(pb.GetRuleStatsRequest())
    assert [(s.rule_id, s.denied_count) for s in stats.stats] == [("daily", 1)]

    outcome = await stub.RecordOutcome(
        pb.RecordOutcomeRequest(
            profile_id="p1",
            reservation_id=allowed.reservation_id,
            channel="sms",
            type=pb.OUTCOME_TYPE_UNSUBSCRIBED,
        )
    )
    assert outcome.consent_updated
    assert peers.profiles.profiles["p1"].consent("sms", MARKETING) == (
        consent_pb2.CONSENT_STATUS_UNSUBSCRIBED
    )
    no_consent = (await stub.RequestPermission(ask(channel="sms"))).decision
    assert no_consent.reasons[0].code == pb.REASON_CODE_NO_CONSENT


async def test_plan_campaign_streams_members_then_totals(
    stub: pb_grpc.OrchestratorServiceStub,
) -> None:
    policy = pb.Policy(policy_id="default", rules=[cap("daily", 1, seconds=86_400)])
    await stub.CreatePolicy(pb.CreatePolicyRequest(policy=policy))
    await stub.RequestPermission(ask(profile_id="p2"))  # p2 already had today's email
    request = pb.PlanCampaignRequest(
        segment_id="vips",
        message=pb.Message(purpose=MARKETING, campaign_id="spring"),
        channels=[
            pb.ChannelVariant(channel="email", variant="10-off"),
            pb.ChannelVariant(channel="push", variant="push-10-off"),
        ],
        dry_run=True,
    )
    items = [item async for item in stub.PlanCampaign(request)]
    sends = [item.send for item in items[:-1]]
    totals = items[-1].totals
    assert [(s.profile_id, s.channel, s.decision.outcome) for s in sends] == [
        ("p1", "email", pb.OUTCOME_ALLOW),
        ("p2", "push", pb.OUTCOME_ALLOW),
        ("p3", "email", pb.OUTCOME_DENY),
    ]
    assert sends[0].variant == "10-off" and sends[1].variant == "push-10-off"
    assert totals.member_count == 4
    assert dict(totals.allowed_by_channel) == {"email": 1, "push": 1}
    assert [(c.outcome, c.reason, c.count) for c in totals.by_reason] == [
        (pb.OUTCOME_DENY, pb.REASON_CODE_NO_CONSENT, 1)
    ]
    # A dry run reserves nothing: p1 is still allowed; a real run reserves.
    request.dry_run = False
    real = [item async for item in stub.PlanCampaign(request)]
    assert real[0].send.decision.reservation_id
    again = (await stub.RequestPermission(ask(profile_id="p1"))).decision
    assert again.outcome == pb.OUTCOME_DENY
