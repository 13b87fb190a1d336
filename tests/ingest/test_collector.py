"""The HTTP collector: Segment's HTTP Tracking API, auth, CORS, gzip, errors."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.ingest.conftest import Running
from upm.common.v1 import event_pb2
from upm.ingest.v1 import ingest_service_pb2 as pb

ENDPOINTS = {
    "identify": ["/v1/identify", "/v1/i"],
    "track": ["/v1/track", "/v1/t"],
    "page": ["/v1/page", "/v1/p"],
    "screen": ["/v1/screen", "/v1/s"],
    "group": ["/v1/group", "/v1/g"],
    "alias": ["/v1/alias", "/v1/a"],
}
TYPES = {
    "identify": event_pb2.EVENT_TYPE_IDENTIFY,
    "track": event_pb2.EVENT_TYPE_TRACK,
    "page": event_pb2.EVENT_TYPE_PAGE,
    "screen": event_pb2.EVENT_TYPE_SCREEN,
    "group": event_pb2.EVENT_TYPE_GROUP,
    "alias": event_pb2.EVENT_TYPE_ALIAS,
}


@pytest.mark.parametrize(
    ("kind", "path"), [(kind, path) for kind, paths in ENDPOINTS.items() for path in paths]
)
async def test_every_endpoint_and_short_form_appends_the_event(
    ingest: Running, make_event: Callable[..., dict[str, Any]], kind: str, path: str
) -> None:
    body = make_event(kind)
    del body["type"]  # implied by the endpoint
    status, answer, _ = await ingest.post(path, body)
    assert status == 200, answer
    assert answer["success"] is True and answer["messageId"] == body["messageId"]
    [event] = await ingest.events(1)
    assert event.type == TYPES[kind]
    assert event.message_id == body["messageId"]
    assert event.source_id == ingest.source_id


async def test_batch_answers_per_event_and_appends_the_valid_ones(
    ingest: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    good = [make_event(kind) for kind in TYPES]
    bad = make_event("track", event="")
    missing_ids = make_event("page")
    del missing_ids["anonymousId"]
    status, answer, _ = await ingest.post("/v1/batch", {"batch": [*good, bad, missing_ids]})
    assert status == 200, answer
    assert answer["accepted"] == 6
    assert [(r["index"], r["field"]) for r in answer["rejected"]] == [(6, "event"), (7, "userId")]
    assert "anonymousId" in answer["rejected"][1]["reason"]
    events = await ingest.events(6)
    assert sorted(e.message_id for e in events) == sorted(e["messageId"] for e in good)


async def test_write_key_in_the_body_and_text_plain_content_type(
    ingest: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    body = {"batch": [make_event()], "writeKey": ingest.write_key}
    status, answer, _ = await ingest.post(
        "/v1/batch", body, write_key=None, headers={"Content-Type": "text/plain"}
    )
    assert status == 200 and answer["accepted"] == 1


@pytest.mark.parametrize(
    ("auth", "body_key", "message"),
    [
        (None, None, "write key is required"),
        ("Basic " + base64.b64encode(b"wrong:").decode(), None, "unknown write key"),
        (None, "wrong", "unknown write key"),
        ("Basic !!!notbase64", None, "malformed"),
    ],
)
async def test_auth_failures_answer_401_json(
    ingest: Running,
    make_event: Callable[..., dict[str, Any]],
    auth: str | None,
    body_key: str | None,
    message: str,
) -> None:
    body: dict[str, Any] = make_event()
    if body_key:
        body["writeKey"] = body_key
    headers = {"Authorization": auth} if auth else {}
    status, answer, _ = await ingest.post("/v1/track", body, write_key=None, headers=headers)
    assert status == 401
    assert answer["code"] == "UNAUTHENTICATED" and message in answer["message"]
    await ingest.no_more_events()


async def test_a_revoked_key_is_refused(
    ingest: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    await ingest.app.registry.revoke(ingest.source_id)
    status, answer, _ = await ingest.post("/v1/track", make_event())
    assert status == 401 and "revoked" in answer["message"]


async def test_gzip_bodies_are_accepted(
    ingest: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    raw = gzip.compress(json.dumps({"batch": [make_event(), make_event()]}).encode())
    status, answer, _ = await ingest.post(
        "/v1/batch", raw=raw, headers={"Content-Encoding": "gzip"}
    )
    assert status == 200 and answer["accepted"] == 2


async def test_a_gzip_bomb_gets_400_not_memory_exhaustion(ingest: Running) -> None:
    bomb = gzip.compress(b'{"batch": [' + b" " * 50_000_000 + b"]}")
    assert len(bomb) < 100_000
    status, answer, _ = await ingest.post(
        "/v1/batch", raw=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert status == 400 and "decompressed" in answer["message"]


async def test_broken_gzip_gets_400(ingest: Running) -> None:
    status, answer, _ = await ingest.post(
        "/v1/batch", raw=b"\x1f\x8bnot gzip at all", headers={"Content-Encoding": "gzip"}
    )
    assert status == 400 and answer["code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b'{"type": "track", "event": "\xff\xfe"}', "not valid UTF-8 JSON"),
        (b"[1, 2]", "JSON object"),
        (b"", "empty"),
    ],
)
async def test_malformed_bodies_get_400(ingest: Running, raw: bytes, fragment: str) -> None:
    status, answer, _ = await ingest.post("/v1/track", raw=raw)
    assert status == 400, answer
    assert answer["code"] == "INVALID_ARGUMENT" and fragment in answer["message"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"userId": {"nested": 1}}, "userId"),
        ({"userId": True}, "userId"),
        ({"properties": [1, 2]}, "properties"),
        ({"context": "mobile"}, "context"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": 12}, "timestamp"),
        ({"messageId": 5}, "messageId"),
        ({"anonymousId": None}, "userId"),
        ({"event": None}, "event"),
        ({"type": "identify"}, "type"),
        ({"context": {"page": {"url": 5}}}, "context.page.url"),
    ],
)
async def test_wrong_types_and_missing_fields_name_the_field(
    ingest: Running, make_event: Callable[..., dict[str, Any]], change: dict[str, Any], field: str
) -> None:
    body = make_event("track")
    body.update(change)
    status, answer, _ = await ingest.post("/v1/track", body)
    assert status == 400, answer
    assert answer["field"] == field


async def test_numeric_ids_are_accepted_as_text(
    ingest: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    status, _, _ = await ingest.post("/v1/identify", make_event("identify", userId=12345))
    assert status == 200
    [event] = await ingest.events(1)
    assert event.user_id == "12345"


async def test_timestamps_with_any_offset_or_none_mean_the_same_utc_moment(
    ingest: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    stamps = ["2030-01-01T12:00:00.25", "2030-01-01T12:00:00.250Z", "2030-01-01T14:00:00.25+02:00"]
    body = {"batch": [make_event(timestamp=stamp) for stamp in stamps]}
    status, _, _ = await ingest.post("/v1/batch", body)
    assert status == 200
    events = await ingest.events(3)
    assert {e.event_time.ToJsonString() for e in events} == {"2030-01-01T12:00:00.250Z"}
    assert {e.original_time.ToJsonString() for e in events} == {"2030-01-01T12:00:00.250Z"}


async def test_clock_skew_is_corrected_against_the_receive_time(
    ingest: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    # The client's clock is an hour ahead: it stamped the event a minute before sending.
    body = make_event(timestamp="2030-01-01T11:59:00Z", sentAt="2030-01-01T12:00:00Z")
    status, _, _ = await ingest.post("/v1/track", body)
    assert status == 200
    [event] = await ingest.events(1)
    received = event.received_time.ToDatetime()
    corrected = event.event_time.ToDatetime()
    assert abs((received - corrected).total_seconds() - 60) < 1
    assert event.original_time.ToJsonString() == "2030-01-01T11:59:00Z"


async def test_batch_level_sent_at_and_context_apply_to_each_event(
    ingest: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    body = {
        "batch": [make_event(timestamp="2030-01-01T11:00:00Z")],
        "sentAt": "2030-01-01T12:00:00Z",
        "context": {"library": {"name": "analytics-python", "version": "2.3.0"}},
    }
    status, _, _ = await ingest.post("/v1/batch", body)
    assert status == 200
    [event] = await ingest.events(1)
    assert event.context.library_name == "analytics-python"
    delta = event.received_time.ToDatetime() - event.event_time.ToDatetime()
    assert abs(delta.total_seconds() - 3600) < 1


async def test_the_http_and_grpc_doors_log_the_same_event(ingest: Running) -> None:
    segment = {
        "type": "page",
        "messageId": "same-event",
        "userId": 42,
        "anonymousId": " anon-7 ",
        "name": "Pricing",
        "category": "Docs",
        "timestamp": "2030-01-01T12:00:00.123456+02:00",
        "properties": {"plan": "pro", "seats": 3, "trial": False, "tags": ["a", {"b": None}]},
        "traits": {"email": "a@example.com"},
        "integrations": {"All": True},
        "context": {
            "ip": "203.0.113.9",
            "userAgent": "curl/8.0",
            "locale": "fr-FR",
            "timezone": "Europe/Paris",
            "page": {"url": "https://example.com/pricing", "title": "Pricing"},
            "campaign": {"name": "spring", "source": "news"},
            "library": {"name": "analytics.js", "version": 4},
            "traits": {"plan": "pro"},
            "screen": {"width": 1280},
        },
    }
    status, _, _ = await ingest.post("/v1/batch", {"batch": [segment]})
    assert status == 200
    [from_http] = await ingest.events(1)

    proto = event_pb2.Event(
        type=event_pb2.EVENT_TYPE_PAGE,
        message_id="same-event-again",  # the same id would be dropped as a duplicate
        user_id="42",
        anonymous_id="anon-7",
        name="Pricing",
        context=event_pb2.Context(
            ip="203.0.113.9",
            user_agent="curl/8.0",
            locale="fr-FR",
            timezone="Europe/Paris",
            page=event_pb2.Page(url="https://example.com/pricing", title="Pricing"),
            campaign=event_pb2.Campaign(name="spring", source="news"),
            library_name="analytics.js",
            library_version="4",
        ),
    )
    proto.event_time.FromJsonString("2030-01-01T10:00:00.123456Z")
    proto.properties.update({**segment["properties"], "category": "Docs"})
    proto.traits.update(segment["traits"])
    proto.integrations.update(segment["integrations"])
    proto.context.traits.update({"plan": "pro"})
    proto.context.extra.update({"screen": {"width": 1280}})
    await ingest.stub.BatchIngest(
        pb.BatchIngestRequest(events=[proto]),
        metadata=(("x-upm-write-key", ingest.write_key),),
    )
    [from_grpc] = await ingest.events(1)

    # Everything but the message id and the moment each door received the event is the same.
    assert (from_http.message_id, from_grpc.message_id) == ("same-event", "same-event-again")
    for logged in (from_http, from_grpc):
        logged.ClearField("message_id")
        logged.ClearField("received_time")
    assert from_http == from_grpc


async def test_server_assigns_a_message_id_when_missing(
    ingest: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    body = make_event()
    del body["messageId"]
    status, answer, _ = await ingest.post("/v1/track", body)
    assert status == 200 and answer["messageId"].startswith("upm-")


async def test_cors_allows_listed_origins_only(ingest: Running) -> None:
    allowed = {"Origin": "http://allowed.example", "Access-Control-Request-Method": "POST"}
    async with ingest.http.options(ingest.base_url + "/v1/batch", headers=allowed) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "http://allowed.example"
    denied = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    async with ingest.http.options(ingest.base_url + "/v1/batch", headers=denied) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers
    status, _, headers = await ingest.post(
        "/v1/batch", {"batch": []}, headers={"Origin": "http://allowed.example"}
    )
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://allowed.example"
    status, answer, headers = await ingest.post(
        "/v1/batch", {"batch": []}, headers={"Origin": "http://evil.example"}
    )
    assert status == 403 and answer["code"] == "PERMISSION_DENIED"
    assert "Access-Control-Allow-Origin" not in headers


async def test_the_snippet_is_served(ingest: Running) -> None:
    async with ingest.http.get(ingest.base_url + "/v1/upm.js") as response:
        assert response.status == 200
        assert response.content_type == "application/javascript"
        text = await response.text()
    assert "sendBeacon" in text and "keepalive" in text


async def test_unavailable_log_answers_503_with_retry_after(
    ingest: Running, make_event: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> list[str]:
        raise ConnectionError("log down")

    monkeypatch.setattr(ingest.app.event_log, "append", broken)
    body = make_event()
    status, answer, headers = await ingest.post("/v1/track", body)
    assert status == 503 and answer["code"] == "UNAVAILABLE"
    assert int(headers["Retry-After"]) >= 1
    monkeypatch.undo()
    # Nothing was acknowledged, so the resend is accepted, not reported as a duplicate.
    status, answer, _ = await ingest.post("/v1/track", body)
    assert status == 200 and answer["status"] == "accepted"
    assert len(await ingest.events(1)) == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://a.example, https://b.example", ["https://a.example", "https://b.example"]),
        ('["https://a.example"]', ["https://a.example"]),
        ("*", ["*"]),
    ],
)
def test_cors_origins_setting_accepts_lists_and_commas(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    from upm_ingest.settings import IngestSettings

    monkeypatch.setenv("UPM_CORS_ORIGINS", raw)
    monkeypatch.setenv("UPM_HTTP_PORT", "9999")
    settings = IngestSettings()
    assert settings.cors_origins == expected and settings.http_port == 9999


def test_a_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from upm_common.settings import SettingsError, load_settings
    from upm_ingest.settings import IngestSettings

    monkeypatch.setenv("UPM_DEDUP_WINDOW_SECONDS", "soon")
    with pytest.raises(SettingsError, match="UPM_DEDUP_WINDOW_SECONDS"):
        load_settings(IngestSettings)
