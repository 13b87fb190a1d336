"""An erased person is never contacted: through the real profile service and the orchestrator's
gRPC directory, decisions about them are DENY SUPPRESSED_PROFILE, while an id that never existed
stays NOT_FOUND."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from tests.orchestrator.conftest import MARKETING, Clock
from upm.common.v1 import consent_pb2, identity_pb2
from upm.orchestrator.v1 import orchestrator_service_pb2 as pb
from upm.profile.v1 import profile_service_pb2 as profile_pb
from upm.profile.v1 import profile_service_pb2_grpc as profile_grpc
from upm_common.db import create_engine
from upm_common.errors import NotFoundError
from upm_common.migrations import upgrade
from upm_common.testing import serve_app
from upm_orchestrator.directory import GrpcProfileDirectory, InMemorySegmentDirectory
from upm_orchestrator.followups import FollowUps
from upm_orchestrator.repository import Repository
from upm_orchestrator.service import DecisionSettings, Orchestrator
from upm_orchestrator.store.sql import SqlFatigueStore
from upm_profile.server import build_profile
from upm_profile.settings import ProfileSettings

UNKNOWN = "f" * 32


@dataclass
class World:
    orchestrator: Orchestrator
    followups: FollowUps
    segments: InMemorySegmentDirectory
    profiles: profile_grpc.ProfileServiceStub


@pytest.fixture
async def world(sqlite_url: str) -> AsyncIterator[World]:
    await upgrade(sqlite_url, "eventlog")
    await upgrade(sqlite_url, "profile")
    settings = ProfileSettings(database_url=sqlite_url, grpc_port=0, metrics_port=0)
    runtime = await build_profile(settings)
    engine = create_engine(sqlite_url)
    await upgrade(engine, "orchestrator")
    store = SqlFatigueStore(engine, concurrency=4)
    repository = Repository(engine)
    async with serve_app(settings, runtime.service_app, with_workers=False) as app:
        orchestrator = Orchestrator(
            store=store,
            repository=repository,
            profiles=GrpcProfileDirectory(app.channel),
            settings=DecisionSettings(policy_cache_seconds=0),
            clock=Clock(datetime(2026, 6, 10, 12, 0, tzinfo=UTC)),
        )
        segments = InMemorySegmentDirectory()
        try:
            yield World(
                orchestrator,
                FollowUps(orchestrator, segments),
                segments,
                profile_grpc.ProfileServiceStub(app.channel),
            )
        finally:
            await repository.close()
            await store.close()
            await engine.dispose()


async def _subscribed_person(stub: profile_grpc.ProfileServiceStub, email: str) -> str:
    response = await stub.UpdateConsent(
        profile_pb.UpdateConsentRequest(
            identifier=identity_pb2.Identifier(
                type=identity_pb2.IDENTIFIER_TYPE_EMAIL, value=email
            ),
            channel="email",
            purpose=MARKETING,
            status=consent_pb2.CONSENT_STATUS_SUBSCRIBED,
        ),
        timeout=5,
    )
    return response.profile.id


def _ask(profile_id: str) -> pb.RequestPermissionRequest:
    return pb.RequestPermissionRequest(
        profile_id=profile_id, channel="email", message=pb.Message(purpose=MARKETING)
    )


async def test_an_erased_person_is_denied_and_an_unknown_one_not_found(world: World) -> None:
    await world.orchestrator.create_policy(pb.Policy(policy_id="default"))
    kept = await _subscribed_person(world.profiles, "kept@corp.io")
    erased = await _subscribed_person(world.profiles, "gone@corp.io")
    assert (await world.orchestrator.request_permission(_ask(erased))).outcome == pb.OUTCOME_ALLOW
    await world.profiles.ErasePerson(
        profile_pb.ErasePersonRequest(profile_id=erased, reason="ticket 12"), timeout=5
    )

    single = await world.orchestrator.request_permission(_ask(erased))
    assert single.outcome == pb.OUTCOME_DENY
    assert [r.code for r in single.reasons] == [pb.REASON_CODE_SUPPRESSED_PROFILE]
    assert single.suggested_channel == ""

    batch = await world.orchestrator.batch_request_permission([_ask(kept), _ask(erased)])
    assert [(d.outcome, [r.code for r in d.reasons]) for d in batch] == [
        (pb.OUTCOME_ALLOW, []),
        (pb.OUTCOME_DENY, [pb.REASON_CODE_SUPPRESSED_PROFILE]),
    ]

    with pytest.raises(NotFoundError) as caught:
        await world.orchestrator.request_permission(_ask(UNKNOWN))
    assert "profile_id" in str(caught.value)
    with pytest.raises(NotFoundError) as in_batch:
        await world.orchestrator.batch_request_permission([_ask(kept), _ask(UNKNOWN)])
    assert "requests[1].profile_id" in str(in_batch.value)


async def test_campaign_planning_skips_an_erased_member_as_suppressed(world: World) -> None:
    await world.orchestrator.create_policy(pb.Policy(policy_id="default"))
    kept = await _subscribed_person(world.profiles, "kept@corp.io")
    erased = await _subscribed_person(world.profiles, "gone@corp.io")
    await world.profiles.ErasePerson(
        profile_pb.ErasePersonRequest(profile_id=erased, reason="ticket 13"), timeout=5
    )
    world.segments.segments["vips"] = [kept, erased]
    request = pb.PlanCampaignRequest(
        segment_id="vips",
        message=pb.Message(purpose=MARKETING, campaign_id="spring"),
        channels=[pb.ChannelVariant(channel="email")],
        dry_run=True,
    )
    items = [item async for item in world.followups.plan_campaign(request)]
    sends = [item.send for item in items[:-1]]
    assert [(s.profile_id, s.decision.outcome) for s in sends] == [
        (kept, pb.OUTCOME_ALLOW),
        (erased, pb.OUTCOME_DENY),
    ]
    totals = items[-1].totals
    assert totals.member_count == 2
    assert [(c.outcome, c.reason, c.count) for c in totals.by_reason] == [
        (pb.OUTCOME_DENY, pb.REASON_CODE_SUPPRESSED_PROFILE, 1)
    ]


async def test_outcomes_about_an_erased_person_are_not_kept(world: World) -> None:
    erased = await _subscribed_person(world.profiles, "gone@corp.io")
    await world.profiles.ErasePerson(
        profile_pb.ErasePersonRequest(profile_id=erased, reason="ticket 14"), timeout=5
    )
    for kind in (pb.OUTCOME_TYPE_OPENED, pb.OUTCOME_TYPE_UNSUBSCRIBED):
        consent_updated = await world.orchestrator.record_outcome(
            pb.RecordOutcomeRequest(profile_id=erased, channel="email", type=kind)
        )
        assert consent_updated is False
    since = datetime(2000, 1, 1, tzinfo=UTC)
    assert await world.orchestrator.repository.outcomes_for(erased, since) == []
    with pytest.raises(NotFoundError):
        await world.orchestrator.record_outcome(
            pb.RecordOutcomeRequest(profile_id=UNKNOWN, channel="email", type=kind)
        )
