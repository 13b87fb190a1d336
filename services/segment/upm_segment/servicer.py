"""SegmentService over gRPC: proto in, domain call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from upm.segment.v1 import segment_service_pb2 as pb
from upm.segment.v1 import segment_service_pb2_grpc as pb_grpc
from upm_common.protoconv import datetime_to_timestamp, optional_timestamp
from upm_segment import model as m
from upm_segment.convert import from_proto, to_proto
from upm_segment.membership import MembershipHub
from upm_segment.service import SegmentDomain
from upm_segment.store.sql import SegmentRecord

SERVICE_NAME = "upm.segment.v1.SegmentService"


def segment_to_proto(record: SegmentRecord) -> pb.Segment:
    return pb.Segment(
        id=record.id,
        name=record.name,
        description=record.description,
        definition=to_proto(record.definition),
        text=record.text,
        create_time=datetime_to_timestamp(record.create_time),
        update_time=datetime_to_timestamp(record.update_time),
        etag=record.etag,
        version=record.version,
    )


def _definition(segment: pb.Segment, path: str) -> m.Condition | None:
    return from_proto(segment.definition, path=path) if segment.HasField("definition") else None


class SegmentServicer(pb_grpc.SegmentServiceServicer):
    def __init__(self, domain: SegmentDomain, hub: MembershipHub) -> None:
        self.domain = domain
        self.hub = hub

    async def CreateSegment(  # noqa: N802
        self, request: pb.CreateSegmentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateSegmentResponse:
        segment = request.segment
        record = await self.domain.create(
            segment_id=request.segment_id or segment.id,
            name=segment.name,
            description=segment.description,
            definition=_definition(segment, "segment.definition"),
            text=segment.text,
        )
        return pb.CreateSegmentResponse(segment=segment_to_proto(record))

    async def GetSegment(  # noqa: N802
        self, request: pb.GetSegmentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetSegmentResponse:
        record = await self.domain.get(request.segment_id)
        return pb.GetSegmentResponse(segment=segment_to_proto(record))

    async def ListSegments(  # noqa: N802
        self, request: pb.ListSegmentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListSegmentsResponse:
        records, token = await self.domain.list_page(request.page_size, request.page_token)
        return pb.ListSegmentsResponse(
            segments=[segment_to_proto(r) for r in records], next_page_token=token
        )

    async def UpdateSegment(  # noqa: N802
        self, request: pb.UpdateSegmentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UpdateSegmentResponse:
        segment = request.segment
        fields = set(request.update_mask.paths)
        if not fields:
            fields = {"name", "description"}
            fields.add("definition" if segment.HasField("definition") else "text")
        record = await self.domain.update(
            segment.id,
            fields=fields,
            name=segment.name,
            description=segment.description,
            definition=_definition(segment, "segment.definition"),
            text=segment.text,
            etag=segment.etag,
        )
        return pb.UpdateSegmentResponse(segment=segment_to_proto(record))

    async def DeleteSegment(  # noqa: N802
        self, request: pb.DeleteSegmentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteSegmentResponse:
        await self.domain.delete(request.segment_id, request.etag)
        return pb.DeleteSegmentResponse()

    async def PreviewSegment(  # noqa: N802
        self, request: pb.PreviewSegmentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PreviewSegmentResponse:
        definition = from_proto(request.definition) if request.HasField("definition") else None
        preview = await self.domain.preview(
            definition,
            request.text,
            request.sample_size,
            optional_timestamp(request, "evaluation_time"),
        )
        return pb.PreviewSegmentResponse(
            count=preview.count,
            sample_profile_ids=preview.sample,
            definition=to_proto(preview.definition),
            text=preview.text,
            evaluation_time=datetime_to_timestamp(preview.evaluation_time),
        )

    async def CountSegment(  # noqa: N802
        self, request: pb.CountSegmentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CountSegmentResponse:
        count, at = await self.domain.count(
            request.segment_id, optional_timestamp(request, "evaluation_time")
        )
        return pb.CountSegmentResponse(count=count, evaluation_time=datetime_to_timestamp(at))

    async def ListSegmentMembers(  # noqa: N802
        self, request: pb.ListSegmentMembersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListSegmentMembersResponse:
        page = await self.domain.members(
            request.segment_id,
            request.page_size,
            request.page_token,
            optional_timestamp(request, "evaluation_time"),
        )
        return pb.ListSegmentMembersResponse(
            profile_ids=page.profile_ids,
            next_page_token=page.next_page_token,
            evaluation_time=datetime_to_timestamp(page.evaluation_time),
        )

    async def IsMember(  # noqa: N802
        self, request: pb.IsMemberRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.IsMemberResponse:
        member, live, at = await self.domain.is_member(
            request.segment_id, request.profile_id, optional_timestamp(request, "evaluation_time")
        )
        return pb.IsMemberResponse(
            member=member, profile_id=live, evaluation_time=datetime_to_timestamp(at)
        )

    async def GetSegmentOverlap(  # noqa: N802
        self, request: pb.GetSegmentOverlapRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetSegmentOverlapResponse:
        overlap = await self.domain.overlap(
            request.first_segment_id,
            request.second_segment_id,
            optional_timestamp(request, "evaluation_time"),
        )
        return pb.GetSegmentOverlapResponse(
            first_count=overlap.first,
            second_count=overlap.second,
            both_count=overlap.both,
            evaluation_time=datetime_to_timestamp(overlap.evaluation_time),
        )

    async def ParseSegmentText(  # noqa: N802
        self, request: pb.ParseSegmentTextRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ParseSegmentTextResponse:
        tree, canonical, problems = self.domain.parse_text(request.text)
        return pb.ParseSegmentTextResponse(
            definition=to_proto(tree) if tree is not None else None,
            canonical_text=canonical,
            errors=[
                pb.TextError(message=p.message, line=p.line, column=p.column, offset=p.offset)
                for p in problems
            ],
        )

    async def WatchMembershipChanges(  # noqa: N802
        self, request: pb.WatchMembershipChangesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchMembershipChangesResponse]:
        segments = set(request.segment_ids)
        profile = request.profile_id
        queue = self.hub.subscribe()
        try:
            while True:
                change = await queue.get()
                if segments and change.segment_id not in segments:
                    continue
                if profile and change.profile_id != profile:
                    continue
                yield pb.WatchMembershipChangesResponse(change=change)
        finally:
            self.hub.unsubscribe(queue)
