"""The gRPC clients of the profile and segment services, against stand-in servicers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from upm.common.v1 import consent_pb2
from upm.profile.v1 import profile_service_pb2 as profile_pb
from upm.profile.v1 import profile_service_pb2_grpc as profile_grpc
from upm.segment.v1 import segment_service_pb2 as segment_pb
from upm.segment.v1 import segment_service_pb2_grpc as segment_grpc
from upm_common.errors import NotFoundError
from upm_orchestrator.directory import (
    CachedProfileDirectory,
    GrpcProfileDirectory,
    GrpcSegmentDirectory,
)

SUBSCRIBED = consent_pb2.CONSENT_STATUS_SUBSCRIBED
UNSUBSCRIBED = consent_pb2.CONSENT_STATUS_UNSUBSCRIBED
MARKETING = consent_pb2.CONSENT_PURPOSE_MARKETING


class Profiles(profile_grpc.ProfileServiceServicer):
    def __init__(self) -> None:
        self.updates: list[profile_pb.UpdateConsentRequest] = []
        self.lookups: list[list[str]] = []

    async def BatchGetProfiles(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.lookups.append(list(request.profile_ids))
        results = []
        for profile_id in request.profile_ids:
            if profile_id == "p1":
                profile = profile_pb.Profile(id="p1", timezone="Europe/Paris")
                status = UNSUBSCRIBED if self.updates else SUBSCRIBED
                profile.consents.add(channel="email", purpose=MARKETING, status=status)
                results.append(profile_pb.BatchGetProfilesResult(found=True, profile=profile))
            elif profile_id == "erased":
                results.append(profile_pb.BatchGetProfilesResult(found=False, erased=True))
            else:
                results.append(profile_pb.BatchGetProfilesResult(found=False))
        return profile_pb.BatchGetProfilesResponse(results=results)

    async def UpdateConsent(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.updates.append(request)
        return profile_pb.UpdateConsentResponse()


class Segments(segment_grpc.SegmentServiceServicer):
    async def ListSegmentMembers(self, request: Any, context: Any) -> Any:  # noqa: N802
        if request.segment_id != "vips":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such segment")
        members = [f"p{i}" for i in range(5)]
        start = int(request.page_token or 0)
        page = members[start : start + 2]
        token = str(start + 2) if start + 2 < len(members) else ""
        return segment_pb.ListSegmentMembersResponse(profile_ids=page, next_page_token=token)


@pytest.fixture
async def peers() -> AsyncIterator[tuple[grpc.aio.Channel, Profiles]]:
    server = grpc.aio.server()
    profiles = Profiles()
    profile_grpc.add_ProfileServiceServicer_to_server(profiles, server)
    segment_grpc.add_SegmentServiceServicer_to_server(Segments(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, profiles
    finally:
        await channel.close()
        await server.stop(None)


async def test_profile_client(peers: tuple[grpc.aio.Channel, Profiles]) -> None:
    channel, servicer = peers
    directory = GrpcProfileDirectory(channel)
    found = await directory.get_profiles(["p1", "ghost", "erased"])
    assert list(found) == ["p1", "erased"]
    assert found["p1"].timezone == "Europe/Paris"
    assert found["p1"].consent("email", MARKETING) == SUBSCRIBED
    assert not found["p1"].suppressed
    assert found["erased"].suppressed  # no profile is left, yet they must not be contacted
    when = datetime(2026, 6, 1, tzinfo=UTC)
    await directory.withdraw_consent("p1", "sms", MARKETING, when, "orchestrator:complained")
    [update] = servicer.updates
    assert (update.profile_id, update.channel, update.status) == (
        "p1",
        "sms",
        consent_pb2.CONSENT_STATUS_UNSUBSCRIBED,
    )
    assert update.update_time.ToDatetime(tzinfo=UTC) == when


async def test_cached_profiles_share_lookups_and_see_a_withdrawal_at_once(
    peers: tuple[grpc.aio.Channel, Profiles],
) -> None:
    channel, servicer = peers
    directory = CachedProfileDirectory(GrpcProfileDirectory(channel), ttl_seconds=60)
    asked = await asyncio.gather(
        directory.get_profiles(["p1"]), directory.get_profiles(["p1", "ghost"])
    )
    assert [list(found) for found in asked] == [["p1"], ["p1"]]
    assert servicer.lookups == [["p1", "ghost"]]  # one call for both decisions
    assert list(await directory.get_profiles(["ghost", "p1"])) == ["p1"]
    assert len(servicer.lookups) == 1  # remembered, absent people too
    when = datetime(2026, 6, 1, tzinfo=UTC)
    await directory.withdraw_consent("p1", "email", MARKETING, when, "orchestrator:unsubscribed")
    found = await directory.get_profiles(["p1"])
    assert found["p1"].consent("email", MARKETING) == UNSUBSCRIBED


async def test_segment_client_pages_through_members(
    peers: tuple[grpc.aio.Channel, Profiles],
) -> None:
    directory = GrpcSegmentDirectory(peers[0])
    assert [p async for p in directory.members("vips")] == [f"p{i}" for i in range(5)]
    with pytest.raises(NotFoundError):
        [p async for p in directory.members("nope")]
