"""ProfileService over gRPC: proto in, domain call, proto out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from upm.profile.v1 import profile_service_pb2 as pb
from upm.profile.v1 import profile_service_pb2_grpc as pb_grpc
from upm_common.protoconv import optional_timestamp
from upm_profile.convert import (
    PURPOSE_FROM_PROTO,
    STATUS_FROM_PROTO,
    event_to_proto,
    graph_to_proto,
    profile_to_proto,
    purchase_to_proto,
)
from upm_profile.effects import EVENT_TYPE_NAMES, ORDER_COMPLETED
from upm_profile.identifiers import to_proto
from upm_profile.service import ProfileDomain
from upm_profile.store.base import EventFilter

SERVICE_NAME = "upm.profile.v1.ProfileService"


def _identifier(request: Any) -> Any:
    return request.identifier if request.HasField("identifier") else None


class ChangeHub:
    """Fans committed changes out to WatchProfileChanges streams of this process."""

    def __init__(self, queue_size: int = 10_000) -> None:
        self._queues: set[asyncio.Queue[pb.ProfileChange]] = set()
        self._queue_size = queue_size

    def publish(self, changes: Sequence[pb.ProfileChange]) -> None:
        for queue in list(self._queues):
            for item in changes:
                if queue.full():
                    break
                queue.put_nowait(item)

    def subscribe(self) -> asyncio.Queue[pb.ProfileChange]:
        queue: asyncio.Queue[pb.ProfileChange] = asyncio.Queue(self._queue_size)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[pb.ProfileChange]) -> None:
        self._queues.discard(queue)


class ProfileServicer(pb_grpc.ProfileServiceServicer):
    def __init__(self, domain: ProfileDomain, hub: ChangeHub) -> None:
        self.domain = domain
        self.hub = hub

    async def GetProfile(  # noqa: N802
        self, request: pb.GetProfileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetProfileResponse:
        view, redirected = await self.domain.get_profile(request.profile_id, _identifier(request))
        return pb.GetProfileResponse(profile=profile_to_proto(view), redirected_from=redirected)

    async def BatchGetProfiles(  # noqa: N802
        self, request: pb.BatchGetProfilesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.BatchGetProfilesResponse:
        entries = await self.domain.batch_get(request.profile_ids, request.identifiers)
        return pb.BatchGetProfilesResponse(
            results=[
                pb.BatchGetProfilesResult(found=True, profile=profile_to_proto(e.profile))
                if e.profile is not None
                else pb.BatchGetProfilesResult(found=False, erased=e.erased)
                for e in entries
            ]
        )

    async def ListProfileEvents(  # noqa: N802
        self, request: pb.ListProfileEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListProfileEventsResponse:
        filters = EventFilter(
            types=tuple(EVENT_TYPE_NAMES[t] for t in request.types if t in EVENT_TYPE_NAMES),
            names=tuple(request.names),
            start_time=optional_timestamp(request, "start_time"),
            end_time=optional_timestamp(request, "end_time"),
        )
        page, token = await self.domain.list_events(
            request.profile_id,
            page_size=request.page_size,
            page_token=request.page_token,
            filters=filters,
        )
        return pb.ListProfileEventsResponse(
            events=[event_to_proto(e) for e in page], next_page_token=token
        )

    async def ListPurchases(  # noqa: N802
        self, request: pb.ListPurchasesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListPurchasesResponse:
        page, token = await self.domain.list_events(
            request.profile_id,
            page_size=request.page_size,
            page_token=request.page_token,
            filters=EventFilter(types=("track",), names=(ORDER_COMPLETED,)),
        )
        return pb.ListPurchasesResponse(
            purchases=[purchase_to_proto(e) for e in page], next_page_token=token
        )

    async def GetIdentityGraph(  # noqa: N802
        self, request: pb.GetIdentityGraphRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetIdentityGraphResponse:
        graph = await self.domain.identity_graph(request.profile_id, _identifier(request))
        return graph_to_proto(graph)

    async def MergeProfiles(  # noqa: N802
        self, request: pb.MergeProfilesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MergeProfilesResponse:
        view = await self.domain.merge(
            request.target_profile_id,
            request.source_profile_id,
            reason=request.reason,
            override_guards=request.override_guards,
        )
        return pb.MergeProfilesResponse(profile=profile_to_proto(view))

    async def UnmergeIdentifier(  # noqa: N802
        self, request: pb.UnmergeIdentifierRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UnmergeIdentifierResponse:
        view, split = await self.domain.unmerge(_identifier(request), reason=request.reason)
        return pb.UnmergeIdentifierResponse(
            profile=profile_to_proto(view), split_profiles=[profile_to_proto(v) for v in split]
        )

    async def UpdateConsent(  # noqa: N802
        self, request: pb.UpdateConsentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UpdateConsentResponse:
        view = await self.domain.update_consent(
            request.profile_id,
            _identifier(request),
            channel=request.channel,
            purpose=PURPOSE_FROM_PROTO.get(request.purpose, ""),
            status=STATUS_FROM_PROTO.get(request.status, ""),
            update_time=optional_timestamp(request, "update_time"),
            source=request.source,
        )
        return pb.UpdateConsentResponse(profile=profile_to_proto(view))

    async def ErasePerson(  # noqa: N802
        self, request: pb.ErasePersonRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ErasePersonResponse:
        result = await self.domain.erase(
            request.profile_id, _identifier(request), actor=request.actor, reason=request.reason
        )
        return pb.ErasePersonResponse(
            profile_id=result.profile_id,
            identifiers=[to_proto(k) for k in result.identifiers],
            erased_event_count=result.event_count,
        )

    async def ExportPerson(  # noqa: N802
        self, request: pb.ExportPersonRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ExportPersonResponse:
        pid, document = await self.domain.export(
            request.profile_id, _identifier(request), actor=request.actor
        )
        return pb.ExportPersonResponse(
            profile_id=pid, document=json.dumps(document, sort_keys=True).encode()
        )

    async def WatchProfileChanges(  # noqa: N802
        self, request: pb.WatchProfileChangesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchProfileChangesResponse]:
        wanted_ids = set(request.profile_ids)
        wanted_types = set(request.types)
        queue = self.hub.subscribe()
        try:
            while True:
                item = await queue.get()
                if wanted_ids and item.profile_id not in wanted_ids:
                    continue
                if wanted_types and item.type not in wanted_types:
                    continue
                yield pb.WatchProfileChangesResponse(change=item)
        finally:
            self.hub.unsubscribe(queue)
