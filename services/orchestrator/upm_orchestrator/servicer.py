"""The gRPC face of the orchestrator: contract in, use case, contract out."""

# Method names are the contract's RPC names.
# ruff: noqa: N802

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from upm.orchestrator.v1 import orchestrator_service_pb2 as pb
from upm.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from upm_orchestrator.followups import FollowUps
from upm_orchestrator.service import Orchestrator


class OrchestratorServicer(pb_grpc.OrchestratorServiceServicer):
    """upm.orchestrator.v1.OrchestratorService."""

    def __init__(self, orchestrator: Orchestrator, followups: FollowUps) -> None:
        self._orchestrator = orchestrator
        self._followups = followups

    async def CreatePolicy(self, request: pb.CreatePolicyRequest, context: Any) -> Any:
        return pb.CreatePolicyResponse(
            policy=await self._orchestrator.create_policy(request.policy)
        )

    async def GetPolicy(self, request: pb.GetPolicyRequest, context: Any) -> Any:
        policy = await self._orchestrator.get_policy(request.policy_id, request.version)
        return pb.GetPolicyResponse(policy=policy)

    async def ListPolicies(self, request: pb.ListPoliciesRequest, context: Any) -> Any:
        items, token = await self._orchestrator.repository.list_policies(
            request.page_size, request.page_token
        )
        return pb.ListPoliciesResponse(policies=items, next_page_token=token)

    async def UpdatePolicy(self, request: pb.UpdatePolicyRequest, context: Any) -> Any:
        policy = await self._orchestrator.update_policy(request.policy, request.expected_version)
        return pb.UpdatePolicyResponse(policy=policy)

    async def DeletePolicy(self, request: pb.DeletePolicyRequest, context: Any) -> Any:
        await self._orchestrator.delete_policy(request.policy_id)
        return pb.DeletePolicyResponse()

    async def RequestPermission(self, request: pb.RequestPermissionRequest, context: Any) -> Any:
        decision = await self._orchestrator.request_permission(request)
        return pb.RequestPermissionResponse(decision=decision)

    async def BatchRequestPermission(
        self, request: pb.BatchRequestPermissionRequest, context: Any
    ) -> Any:
        decisions = await self._orchestrator.batch_request_permission(request.requests)
        return pb.BatchRequestPermissionResponse(decisions=decisions)

    async def ConfirmReservation(self, request: pb.ConfirmReservationRequest, context: Any) -> Any:
        reservation = await self._orchestrator.confirm(request.reservation_id)
        return pb.ConfirmReservationResponse(reservation=reservation)

    async def ReleaseReservation(self, request: pb.ReleaseReservationRequest, context: Any) -> Any:
        reservation = await self._orchestrator.release(request.reservation_id)
        return pb.ReleaseReservationResponse(reservation=reservation)

    async def RecordOutcome(self, request: pb.RecordOutcomeRequest, context: Any) -> Any:
        updated = await self._orchestrator.record_outcome(request)
        return pb.RecordOutcomeResponse(consent_updated=updated)

    async def CreateFollowUpRule(self, request: pb.CreateFollowUpRuleRequest, context: Any) -> Any:
        rule = await self._followups.create_rule(request.rule)
        return pb.CreateFollowUpRuleResponse(rule=rule)

    async def ListFollowUpRules(self, request: pb.ListFollowUpRulesRequest, context: Any) -> Any:
        rules, token = await self._orchestrator.repository.list_follow_up_rules(
            request.page_size, request.page_token
        )
        return pb.ListFollowUpRulesResponse(rules=rules, next_page_token=token)

    async def DeleteFollowUpRule(self, request: pb.DeleteFollowUpRuleRequest, context: Any) -> Any:
        await self._orchestrator.repository.delete_follow_up_rule(request.rule_id)
        return pb.DeleteFollowUpRuleResponse()

    async def GetNextBestAction(self, request: pb.GetNextBestActionRequest, context: Any) -> Any:
        return await self._followups.next_best_action(request)

    async def PlanCampaign(
        self, request: pb.PlanCampaignRequest, context: Any
    ) -> AsyncIterator[pb.PlanCampaignResponse]:
        async for item in self._followups.plan_campaign(request):
            yield item

    async def ListDecisions(self, request: pb.ListDecisionsRequest, context: Any) -> Any:
        decisions, token = await self._orchestrator.list_decisions(
            request.profile_id, request.page_size, request.page_token
        )
        return pb.ListDecisionsResponse(decisions=decisions, next_page_token=token)

    async def GetRuleStats(self, request: pb.GetRuleStatsRequest, context: Any) -> Any:
        return await self._orchestrator.rule_stats(request)

    async def ExplainDecision(self, request: pb.ExplainDecisionRequest, context: Any) -> Any:
        return await self._orchestrator.explain(request.decision_id)
