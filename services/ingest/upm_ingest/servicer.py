"""The gRPC IngestService: proto in, pipeline call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from upm.common.v1 import event_pb2
from upm.ingest.v1 import ingest_service_pb2 as pb
from upm.ingest.v1 import ingest_service_pb2_grpc as pb_grpc
from upm_common.errors import InvalidArgumentError, UnauthenticatedError
from upm_ingest.events import FieldError, ShapeLimits, normalize_proto_event
from upm_ingest.pipeline import Candidate, Ingestor, Result, received_now
from upm_ingest.sources import Source, SourceRegistry
from upm_ingest.store import SourceLimitOverrides, SourceRecord

MAX_STREAM_REJECTIONS = 1000
WRITE_KEY_METADATA = "x-upm-write-key"


def _source_proto(record: SourceRecord) -> pb.Source:
    source = pb.Source(
        source_id=record.source_id,
        display_name=record.display_name,
        write_key_prefix=record.write_key_prefix,
        limits=pb.SourceLimits(
            max_event_bytes=record.limits.max_event_bytes,
            max_batch_bytes=record.limits.max_batch_bytes,
            max_batch_events=record.limits.max_batch_events,
            rate_per_second=record.limits.rate_per_second,
            burst=record.limits.burst,
        ),
    )
    source.create_time.FromDatetime(record.created_time)
    if record.revoked_time is not None:
        source.revoke_time.FromDatetime(record.revoked_time)
    return source


def write_key_from_metadata(metadata: Any) -> str:
    """The write key of a call: `x-upm-write-key`, or `authorization: Bearer <key>`."""
    for key, value in metadata or ():
        if key == WRITE_KEY_METADATA:
            return str(value)
        if key == "authorization" and str(value).lower().startswith("bearer "):
            return str(value)[7:].strip()
    return ""


def batch_response(results: list[Result]) -> pb.BatchIngestResponse:
    """The response of a batch (`results.add` is several times faster than building a list of
    EventResult messages first)."""
    response = pb.BatchIngestResponse()
    add = response.results.add
    for result in results:
        if result.reason or result.field:
            add(
                index=result.index,
                message_id=result.message_id,
                status=result.status,
                reason=result.reason,
                field=result.field,
            )
        else:
            add(index=result.index, message_id=result.message_id, status=result.status)
    return response


class IngestServicer(pb_grpc.IngestServiceServicer):
    """Implements upm.ingest.v1.IngestService on top of the pipeline."""

    def __init__(
        self,
        ingestor: Ingestor,
        registry: SourceRegistry,
        *,
        shape: ShapeLimits,
        require_write_key: bool,
    ) -> None:
        self._ingestor = ingestor
        self._registry = registry
        self._shape = shape
        self._require_write_key = require_write_key

    async def _source(self, context: grpc.aio.ServicerContext) -> Source:
        write_key = write_key_from_metadata(context.invocation_metadata())
        if write_key:
            return await self._registry.authenticate(write_key)
        if self._require_write_key:
            raise UnauthenticatedError(
                f"a write key is required in the `{WRITE_KEY_METADATA}` metadata",
                reason="WRITE_KEY_MISSING",
            )
        return self._registry.internal

    def _candidate(
        self,
        event: event_pb2.Event,
        implied_type: int | None,
        source: Source,
        received: int | None = None,
    ) -> Candidate:
        try:
            # Serialized once, up front: the size limit and the shape checks read these bytes
            # (see events._proto_shape_ok), and they become the logged payload with the
            # finalization appended (see normalize_proto_event).
            data = event.SerializeToString()
            if len(data) > source.limits.max_event_bytes:
                raise FieldError(
                    "", f"event of {len(data)} bytes exceeds {source.limits.max_event_bytes}"
                )
            message_id, tail = normalize_proto_event(
                event,
                implied_type=implied_type,
                limits=self._shape,
                received=received_now() if received is None else received,
                source_id=source.source_id,
                data=data,
            )
        except FieldError as error:
            return Candidate(None, error, message_id=event.message_id)
        return Candidate(event, message_id=message_id, payload=data + tail)

    async def _single(
        self, event: event_pb2.Event, implied_type: int, context: grpc.aio.ServicerContext
    ) -> tuple[str, Any]:
        source = await self._source(context)
        candidate = self._candidate(event, implied_type, source)
        if candidate.event is None:
            error = candidate.error
            assert error is not None
            field = f"event.{error.field}" if error.field else "event"
            raise InvalidArgumentError.for_field(field, error.reason)
        self._ingestor.check_rate(source, 1)
        [result] = await self._ingestor.submit(source, [candidate])
        return result.message_id, result.status

    async def Identify(  # noqa: N802
        self, request: pb.IdentifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.IdentifyResponse:
        message_id, status = await self._single(
            request.event, event_pb2.EVENT_TYPE_IDENTIFY, context
        )
        return pb.IdentifyResponse(message_id=message_id, status=status)

    async def Track(  # noqa: N802
        self, request: pb.TrackRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrackResponse:
        message_id, status = await self._single(request.event, event_pb2.EVENT_TYPE_TRACK, context)
        return pb.TrackResponse(message_id=message_id, status=status)

    async def Page(  # noqa: N802
        self, request: pb.PageRequest, context: grpc.aio.ServicerContext
    ) -> pb.PageResponse:
        message_id, status = await self._single(request.event, event_pb2.EVENT_TYPE_PAGE, context)
        return pb.PageResponse(message_id=message_id, status=status)

    async def Screen(  # noqa: N802
        self, request: pb.ScreenRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScreenResponse:
        message_id, status = await self._single(request.event, event_pb2.EVENT_TYPE_SCREEN, context)
        return pb.ScreenResponse(message_id=message_id, status=status)

    async def Group(  # noqa: N802
        self, request: pb.GroupRequest, context: grpc.aio.ServicerContext
    ) -> pb.GroupResponse:
        message_id, status = await self._single(request.event, event_pb2.EVENT_TYPE_GROUP, context)
        return pb.GroupResponse(message_id=message_id, status=status)

    async def Alias(  # noqa: N802
        self, request: pb.AliasRequest, context: grpc.aio.ServicerContext
    ) -> pb.AliasResponse:
        message_id, status = await self._single(request.event, event_pb2.EVENT_TYPE_ALIAS, context)
        return pb.AliasResponse(message_id=message_id, status=status)

    async def BatchIngest(  # noqa: N802
        self, request: pb.BatchIngestRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchIngestResponse:
        source = await self._source(context)
        self._check_batch(source, request.events, "events")
        self._ingestor.check_rate(source, len(request.events))
        received = received_now()
        candidates = [self._candidate(event, None, source, received) for event in request.events]
        results = await self._ingestor.submit(source, candidates)
        return batch_response(results)

    async def StreamIngest(  # noqa: N802
        self,
        request_iterator: AsyncIterator[pb.StreamIngestRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.StreamIngestResponse:
        source = await self._source(context)
        response = pb.StreamIngestResponse()
        offset = 0
        # The next chunk is read only once this one is durable: HTTP/2 flow control then
        # holds the client back (see the proto's comment on StreamIngest).
        async for chunk in request_iterator:
            self._check_batch(source, chunk.events, "events")
            await self._ingestor.wait_rate(source, len(chunk.events))
            received = received_now()
            candidates = [self._candidate(event, None, source, received) for event in chunk.events]
            for result in await self._ingestor.submit(source, candidates, door="stream"):
                if result.status == pb.EVENT_RESULT_STATUS_ACCEPTED:
                    response.accepted_count += 1
                elif result.status == pb.EVENT_RESULT_STATUS_DUPLICATE:
                    response.duplicate_count += 1
                elif result.status == pb.EVENT_RESULT_STATUS_SUPPRESSED:
                    response.suppressed_count += 1
                else:
                    response.rejected_count += 1
                    if len(response.rejections) < MAX_STREAM_REJECTIONS:
                        response.rejections.append(result.to_proto(offset))
            offset += len(chunk.events)
        return response

    def _check_batch(self, source: Source, events: Any, field: str) -> None:
        if len(events) > source.limits.max_batch_events:
            raise InvalidArgumentError.for_field(
                field,
                f"{len(events)} events exceed the batch limit of {source.limits.max_batch_events}",
            )

    async def CreateSource(  # noqa: N802
        self, request: pb.CreateSourceRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSourceResponse:
        limits = request.limits
        record, write_key = await self._registry.create(
            request.display_name,
            SourceLimitOverrides(
                max_event_bytes=limits.max_event_bytes,
                max_batch_bytes=limits.max_batch_bytes,
                max_batch_events=limits.max_batch_events,
                rate_per_second=limits.rate_per_second,
                burst=limits.burst,
            ),
        )
        return pb.CreateSourceResponse(source=_source_proto(record), write_key=write_key)

    async def ListSources(  # noqa: N802
        self, request: pb.ListSourcesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSourcesResponse:
        records, token = await self._registry.list(
            page_size=request.page_size,
            page_token=request.page_token,
            show_revoked=request.show_revoked,
        )
        return pb.ListSourcesResponse(
            sources=[_source_proto(r) for r in records], next_page_token=token
        )

    async def RevokeSource(  # noqa: N802
        self, request: pb.RevokeSourceRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeSourceResponse:
        record = await self._registry.revoke(request.source_id)
        return pb.RevokeSourceResponse(source=_source_proto(record))
