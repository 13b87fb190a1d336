"""SegmentService over a real gRPC server on port 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.segment.readmodel import insert_profiles
from tests.segment.test_issue_segment import ISSUE_TEXT, NOW, population
from upm.segment.v1 import segment_service_pb2 as pb
from upm.segment.v1 import segment_service_pb2_grpc as pb_grpc
from upm_common.migrations import upgrade
from upm_common.protoconv import datetime_to_timestamp
from upm_common.server import build_server
from upm_segment.server import SegmentRuntime, build_segment
from upm_segment.settings import SegmentSettings


@dataclass
class Harness:
    stub: pb_grpc.SegmentServiceStub
    runtime: SegmentRuntime


@pytest.fixture
async def harness(sqlite_url: str) -> AsyncIterator[Harness]:
    settings = SegmentSettings(database_url=sqlite_url, grpc_port=0, metrics_port=0)
    for component in ("eventlog", "profile", "segment"):
        await upgrade(sqlite_url, component)
    runtime = await build_segment(settings)
    people, _ = population()
    await insert_profiles(runtime.store.engine, people)
    server = await build_server(settings, runtime.service_app.registrations, port=0)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield Harness(pb_grpc.SegmentServiceStub(channel), runtime)
    finally:
        await channel.close()
        await server.stop(None)
        assert runtime.service_app.close is not None
        await runtime.service_app.close()


def _violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw, "no rich error details"
    status = status_pb2.Status.FromString(raw)  # type: ignore[arg-type]
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [(v.field, v.description) for v in bad.field_violations]
    return found


AT = datetime_to_timestamp(NOW)
EXPECTED = ["a-member", "b-member-tz", "c-member-edge", "g-creative-inside"]


async def test_preview_count_members_overlap(harness: Harness) -> None:
    stub = harness.stub
    preview = await stub.PreviewSegment(
        pb.PreviewSegmentRequest(text=ISSUE_TEXT, sample_size=2, evaluation_time=AT), timeout=10
    )
    assert preview.count == 4
    assert list(preview.sample_profile_ids) == EXPECTED[:2]
    assert preview.text == ISSUE_TEXT

    created = await stub.CreateSegment(
        pb.CreateSegmentRequest(
            segment_id="regulars", segment=pb.Segment(name="Regulars", text=ISSUE_TEXT)
        ),
        timeout=10,
    )
    assert created.segment.version == 1 and created.segment.etag
    assert created.segment.definition.WhichOneof("kind") == "and"
    count = await stub.CountSegment(
        pb.CountSegmentRequest(segment_id="regulars", evaluation_time=AT), timeout=10
    )
    assert count.count == 4

    ids: list[str] = []
    token = ""
    while True:
        page = await stub.ListSegmentMembers(
            pb.ListSegmentMembersRequest(
                segment_id="regulars", page_size=3, page_token=token, evaluation_time=AT
            ),
            timeout=10,
        )
        ids += page.profile_ids
        token = page.next_page_token
        if not token:
            break
    assert ids == EXPECTED

    member = await stub.IsMember(
        pb.IsMemberRequest(segment_id="regulars", profile_id="c-member-edge", evaluation_time=AT),
        timeout=10,
    )
    assert member.member
    other = await stub.IsMember(
        pb.IsMemberRequest(segment_id="regulars", profile_id="d-no-60d", evaluation_time=AT),
        timeout=10,
    )
    assert not other.member
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IsMember(
            pb.IsMemberRequest(segment_id="regulars", profile_id="nobody"), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    await stub.CreateSegment(
        pb.CreateSegmentRequest(
            segment_id="sms-ok",
            segment=pb.Segment(
                text="consent(sms, marketing) = subscribed and not in_segment(regulars)"
            ),
        ),
        timeout=10,
    )
    overlap = await stub.GetSegmentOverlap(
        pb.GetSegmentOverlapRequest(
            first_segment_id="regulars", second_segment_id="sms-ok", evaluation_time=AT
        ),
        timeout=10,
    )
    assert (overlap.first_count, overlap.both_count) == (4, 0)
    assert overlap.second_count == 9  # 13 subscribed to sms, minus the 4 regulars

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DeleteSegment(pb.DeleteSegmentRequest(segment_id="regulars"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_crud_and_errors(harness: Harness) -> None:
    stub = harness.stub
    for index in range(3):
        await stub.CreateSegment(
            pb.CreateSegmentRequest(
                segment_id=f"s{index}", segment=pb.Segment(text=f"trait(t{index}) exists")
            ),
            timeout=10,
        )
    first = await stub.ListSegments(pb.ListSegmentsRequest(page_size=2), timeout=10)
    second = await stub.ListSegments(
        pb.ListSegmentsRequest(page_size=2, page_token=first.next_page_token), timeout=10
    )
    assert [s.id for s in first.segments] + [s.id for s in second.segments] == ["s0", "s1", "s2"]
    assert not second.next_page_token

    current = (await stub.GetSegment(pb.GetSegmentRequest(segment_id="s1"), timeout=10)).segment
    updated = await stub.UpdateSegment(
        pb.UpdateSegmentRequest(
            segment=pb.Segment(id="s1", etag=current.etag, text="has(email)", name="Emails")
        ),
        timeout=10,
    )
    assert (updated.segment.version, updated.segment.text) == (2, "has(email)")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateSegment(
            pb.UpdateSegmentRequest(segment=pb.Segment(id="s1", etag=current.etag, name="x")),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSegment(
            pb.CreateSegmentRequest(segment_id="s0", segment=pb.Segment(text="has(email)")),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS

    bad = pb.Condition()
    group = getattr(bad, "and")
    group.conditions.add().identifier.type = "email"
    group.conditions.add().trait.name = "plan"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSegment(
            pb.CreateSegmentRequest(segment_id="bad", segment=pb.Segment(definition=bad)),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value) == [
        ("segment.definition.and[1].trait.operator", "operator is not set")
    ]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PreviewSegment(
            pb.PreviewSegmentRequest(text="trait(a) = 1 and\n  trait(b) ~ 2"), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value) == [("text", "line 2, column 12: unexpected character '~'")]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateSegment(
            pb.UpdateSegmentRequest(
                segment=pb.Segment(id="s0", text="in_segment(s2) and in_segment(s0)")
            ),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cycle: s0 -> s0" in (caught.value.details() or "")

    parsed = await stub.ParseSegmentText(
        pb.ParseSegmentTextRequest(text='performed("x").within(3q)'), timeout=10
    )
    assert [(e.line, e.column) for e in parsed.errors] == [(1, 23)]
    parsed = await stub.ParseSegmentText(
        pb.ParseSegmentTextRequest(text="trait( x )=1"), timeout=10
    )
    assert parsed.canonical_text == "trait(x) = 1" and not parsed.errors

    await stub.DeleteSegment(pb.DeleteSegmentRequest(segment_id="s2"), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetSegment(pb.GetSegmentRequest(segment_id="s2"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_streams_membership_changes(harness: Harness) -> None:
    stub = harness.stub
    await stub.CreateSegment(
        pb.CreateSegmentRequest(
            segment_id="strings", segment=pb.Segment(text='trait(newsletter) = "true"')
        ),
        timeout=10,
    )
    call = stub.WatchMembershipChanges(
        pb.WatchMembershipChangesRequest(segment_ids=["strings"]), timeout=10
    )
    await asyncio.sleep(0.2)  # let the server register the watcher
    await harness.runtime.worker.refresh(force=True)
    response = await asyncio.wait_for(call.read(), timeout=5)
    assert isinstance(response, pb.WatchMembershipChangesResponse)
    change = response.change
    assert (change.segment_id, change.profile_id) == ("strings", "k-newsletter-string")
    assert change.kind == pb.MEMBERSHIP_CHANGE_KIND_ENTERED
    assert change.evaluation_time.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)
    call.cancel()
