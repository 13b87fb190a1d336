"""The gRPC IngestService: single calls, batches, streams, sources, errors with details."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.ingest.conftest import Running, start_ingest
from upm.common.v1 import event_pb2
from upm.ingest.v1 import ingest_service_pb2 as pb

ACCEPTED = pb.EVENT_RESULT_STATUS_ACCEPTED
DUPLICATE = pb.EVENT_RESULT_STATUS_DUPLICATE
REJECTED = pb.EVENT_RESULT_STATUS_REJECTED


def event(kind: int = event_pb2.EVENT_TYPE_TRACK, **fields: object) -> event_pb2.Event:
    base: dict[str, object] = {"message_id": uuid.uuid4().hex, "anonymous_id": "anon-1"}
    if kind == event_pb2.EVENT_TYPE_TRACK:
        base["event"] = "Product Viewed"
    base.update(fields)
    message = event_pb2.Event(type=kind, **base)  # type: ignore[arg-type]
    return message


def details(error: grpc.aio.AioRpcError) -> list[object]:
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw, "no rich error details"
    status = status_pb2.Status.FromString(raw)
    found: list[object] = []
    for any_detail in status.details:
        for kind in (
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.ErrorInfo,
            error_details_pb2.QuotaFailure,
        ):
            if any_detail.Is(kind.DESCRIPTOR):
                message = kind()
                any_detail.Unpack(message)
                found.append(message)
    return found


def meta(running: Running) -> tuple[tuple[str, str], ...]:
    return (("x-upm-write-key", running.write_key),)


async def test_each_single_call_appends_its_type(ingest: Running) -> None:
    stub = ingest.stub
    calls = [
        (stub.Identify, pb.IdentifyRequest, event_pb2.EVENT_TYPE_IDENTIFY, {}),
        (stub.Track, pb.TrackRequest, event_pb2.EVENT_TYPE_TRACK, {"event": "Signed Up"}),
        (stub.Page, pb.PageRequest, event_pb2.EVENT_TYPE_PAGE, {}),
        (stub.Screen, pb.ScreenRequest, event_pb2.EVENT_TYPE_SCREEN, {}),
        (stub.Group, pb.GroupRequest, event_pb2.EVENT_TYPE_GROUP, {"group_id": "acme"}),
        (
            stub.Alias,
            pb.AliasRequest,
            event_pb2.EVENT_TYPE_ALIAS,
            {"user_id": "u1", "previous_id": "anon-1"},
        ),
    ]
    sent = []
    for method, request_type, kind, fields in calls:
        message = event_pb2.Event(message_id=uuid.uuid4().hex, anonymous_id="anon-1", **fields)
        response = await method(request_type(event=message), metadata=meta(ingest), timeout=5)
        assert response.status == ACCEPTED and response.message_id == message.message_id
        sent.append((message.message_id, kind))
    events = await ingest.events(6)
    assert sorted((e.message_id, e.type) for e in events) == sorted(sent)
    assert all(e.source_id == ingest.source_id for e in events)


async def test_key_less_calls_are_internal_by_default(ingest: Running) -> None:
    response = await ingest.stub.Track(pb.TrackRequest(event=event()), timeout=5)
    assert response.status == ACCEPTED
    [appended] = await ingest.events(1)
    assert appended.source_id == "internal"


async def test_an_invalid_event_fails_with_bad_request_naming_the_field(ingest: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Track(pb.TrackRequest(event=event(event="")), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad_request] = [
        d for d in details(caught.value) if isinstance(d, error_details_pb2.BadRequest)
    ]
    assert bad_request.field_violations[0].field == "event.event"


async def test_a_call_of_the_wrong_type_is_rejected(ingest: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Identify(pb.IdentifyRequest(event=event()), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event.type" in (caught.value.details() or "")


async def test_batch_answers_one_result_per_event_in_order(ingest: Running) -> None:
    good = event()
    duplicate = event_pb2.Event()
    duplicate.CopyFrom(good)
    no_ids = event(anonymous_id="")
    no_type = event_pb2.Event(message_id="m", anonymous_id="a")
    response = await ingest.stub.BatchIngest(
        pb.BatchIngestRequest(events=[good, duplicate, no_ids, no_type]),
        metadata=meta(ingest),
        timeout=5,
    )
    assert [(r.index, r.status, r.field) for r in response.results] == [
        (0, ACCEPTED, ""),
        (1, DUPLICATE, ""),
        (2, REJECTED, "user_id"),
        (3, REJECTED, "type"),
    ]
    again = await ingest.stub.BatchIngest(
        pb.BatchIngestRequest(events=[good]), metadata=meta(ingest), timeout=5
    )
    assert again.results[0].status == DUPLICATE
    assert len(await ingest.events(1)) == 1
    await ingest.no_more_events()


async def test_a_batch_over_the_event_limit_fails_whole(sqlite_url: str) -> None:
    async for running in start_ingest(sqlite_url, max_batch_events=3):
        request = pb.BatchIngestRequest(events=[event() for _ in range(4)])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.BatchIngest(request, metadata=meta(running), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        request = pb.BatchIngestRequest(events=[event() for _ in range(3)])
        response = await running.stub.BatchIngest(request, metadata=meta(running), timeout=5)
        assert all(r.status == ACCEPTED for r in response.results)


async def test_an_oversized_event_is_rejected(sqlite_url: str) -> None:
    async for running in start_ingest(sqlite_url, max_event_bytes=1024, max_string_length=5000):
        big = event()
        big.properties["pad"] = "x" * 1100
        response = await running.stub.BatchIngest(
            pb.BatchIngestRequest(events=[big, event()]), metadata=meta(running), timeout=5
        )
        assert [r.status for r in response.results] == [REJECTED, ACCEPTED]
        assert "exceeds 1024" in response.results[0].reason


async def test_stream_ingest_summarises_a_bulk_load(ingest: Running) -> None:
    async def chunks() -> AsyncIterator[pb.StreamIngestRequest]:
        for chunk in range(5):
            events = [event(message_id=f"bulk-{chunk}-{i}") for i in range(100)]
            if chunk == 2:
                events[7] = event(message_id="bad", anonymous_id="")
            if chunk == 4:
                events[0] = event(message_id="bulk-0-0")
            yield pb.StreamIngestRequest(events=events)

    call = ingest.stub.StreamIngest(chunks(), metadata=meta(ingest), timeout=30)
    summary = await call
    assert summary.accepted_count == 498
    assert summary.duplicate_count == 1
    assert summary.rejected_count == 1
    assert [(r.index, r.field) for r in summary.rejections] == [(207, "user_id")]
    assert len(await ingest.events(498)) == 498


async def test_rate_limited_calls_fail_with_retry_info(sqlite_url: str) -> None:
    async for running in start_ingest(sqlite_url, rate_per_second=1, rate_burst=2):
        await running.stub.Track(pb.TrackRequest(event=event()), timeout=5)
        await running.stub.Track(pb.TrackRequest(event=event()), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.Track(pb.TrackRequest(event=event()), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        retry = [d for d in details(caught.value) if isinstance(d, error_details_pb2.RetryInfo)]
        assert retry and retry[0].retry_delay.ToTimedelta().total_seconds() > 0


async def test_a_required_write_key_is_enforced(sqlite_url: str) -> None:
    async for running in start_ingest(sqlite_url, grpc_require_write_key=True):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.Track(pb.TrackRequest(event=event()), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.Track(
                pb.TrackRequest(event=event()),
                metadata=(("authorization", "Bearer nope"),),
                timeout=5,
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        response = await running.stub.Track(
            pb.TrackRequest(event=event()),
            metadata=(("authorization", f"Bearer {running.write_key}"),),
            timeout=5,
        )
        assert response.status == ACCEPTED


async def test_sources_are_created_listed_paginated_and_revoked(ingest: Running) -> None:
    created = []
    for i in range(5):
        response = await ingest.stub.CreateSource(
            pb.CreateSourceRequest(
                display_name=f"source {i}", limits=pb.SourceLimits(rate_per_second=5)
            ),
            timeout=5,
        )
        assert response.write_key.startswith(response.source.write_key_prefix)
        created.append(response)
    seen = []
    token = ""
    while True:
        page = await ingest.stub.ListSources(
            pb.ListSourcesRequest(page_size=2, page_token=token), timeout=5
        )
        seen.extend(s.source_id for s in page.sources)
        token = page.next_page_token
        if not token:
            break
    assert seen == [ingest.source_id, *(c.source.source_id for c in created)]
    revoked = await ingest.stub.RevokeSource(
        pb.RevokeSourceRequest(source_id=created[0].source.source_id), timeout=5
    )
    assert revoked.source.HasField("revoke_time")
    active = await ingest.stub.ListSources(pb.ListSourcesRequest(page_size=100), timeout=5)
    assert created[0].source.source_id not in [s.source_id for s in active.sources]
    everything = await ingest.stub.ListSources(
        pb.ListSourcesRequest(page_size=100, show_revoked=True), timeout=5
    )
    assert len(everything.sources) == 6
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Track(
            pb.TrackRequest(event=event()),
            metadata=(("x-upm-write-key", created[0].write_key),),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.RevokeSource(pb.RevokeSourceRequest(source_id="nope"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_write_keys_are_stored_hashed(ingest: Running) -> None:
    from sqlalchemy import text

    async with ingest.app.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT write_key_hash FROM ingest_sources"))).all()
    assert ingest.write_key not in str(rows)
    import hashlib

    assert hashlib.sha256(ingest.write_key.encode()).hexdigest() in [r[0] for r in rows]


async def test_over_long_strings_and_deep_structs_name_the_field(sqlite_url: str) -> None:
    async for running in start_ingest(sqlite_url, max_string_length=100, max_json_depth=4):
        long_id = event(user_id="u" * 256)
        long_agent = event()
        long_agent.context.user_agent = "a" * 101
        long_title = event()
        long_title.context.page.title = "t" * 101
        deep = event()
        deep.properties.update({"a": {"b": {"c": {"d": 1}}}})
        long_value = event()
        long_value.properties.update({"list": ["x" * 101]})
        ok = event()
        ok.properties.update({"a": {"b": [1, "y" * 100]}})
        response = await running.stub.BatchIngest(
            pb.BatchIngestRequest(events=[long_id, long_agent, long_title, deep, long_value, ok]),
            metadata=meta(running),
            timeout=5,
        )
        assert [(r.status, r.field) for r in response.results] == [
            (REJECTED, "user_id"),
            (REJECTED, "context.user_agent"),
            (REJECTED, "context.page.title"),
            (REJECTED, "properties.a.b.c"),
            (REJECTED, "properties.list[0]"),
            (ACCEPTED, ""),
        ]


async def test_a_stream_over_the_rate_is_slowed_down_not_rejected(sqlite_url: str) -> None:
    async for running in start_ingest(sqlite_url, rate_per_second=400, rate_burst=100):

        async def chunks() -> AsyncIterator[pb.StreamIngestRequest]:
            for _ in range(5):
                yield pb.StreamIngestRequest(events=[event() for _ in range(100)])

        loop = asyncio.get_running_loop()
        started = loop.time()
        summary = await running.stub.StreamIngest(chunks(), metadata=meta(running), timeout=30)
        elapsed = loop.time() - started
        assert summary.accepted_count == 500 and summary.rejected_count == 0
        # 100 events come from the burst, the other 400 at 400 events/s.
        assert elapsed >= 0.9
