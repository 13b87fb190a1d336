"""The gRPC door logs an event as its own bytes with the finalization and enrichment appended.

A parser merges repeated fields (the last one wins, sub-messages field by field), so the
appended bytes must replace whatever the client sent for the fields the server owns, zero
values included. These tests read the logged bytes back as a consumer does.
"""

from __future__ import annotations

from tests.ingest.conftest import Running, start_ingest
from upm.common.v1 import event_pb2
from upm.ingest.v1 import ingest_service_pb2 as pb
from upm_ingest.enrich import Enricher
from upm_ingest.events import ShapeLimits, normalize_proto_event

SECOND = 1_000_000_000
RECEIVED = 1_900_000_000 * SECOND  # a whole second: every nanos field below must become 0


def logged(event: event_pb2.Event, *, implied_type: int | None = None) -> event_pb2.Event:
    """What the log holds for `event`, received at RECEIVED from source `src_1`."""
    data = event.SerializeToString()
    message_id, tail = normalize_proto_event(
        event,
        implied_type=implied_type,
        limits=ShapeLimits(),
        received=RECEIVED,
        source_id="src_1",
        data=data,
    )
    result = event_pb2.Event.FromString(data + tail)
    assert result.message_id == message_id
    return result


def stamp(seconds: int, nanos: int = 0) -> tuple[int, int]:
    return seconds, nanos


def as_pair(value: object) -> tuple[int, int]:
    return value.seconds, value.nanos  # type: ignore[attr-defined]


def test_a_timestamp_is_kept_and_copied_to_original_time() -> None:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, message_id="m", anonymous_id="a")
    event.event = "Signed Up"
    event.event_time.seconds, event.event_time.nanos = 1_800_000_000, 5
    result = logged(event)
    assert as_pair(result.event_time) == stamp(1_800_000_000, 5)
    assert as_pair(result.original_time) == stamp(1_800_000_000, 5)
    assert as_pair(result.received_time) == stamp(1_900_000_000)
    assert result.source_id == "src_1"


def test_server_owned_fields_the_client_sent_are_replaced_even_by_zeros() -> None:
    event = event_pb2.Event(
        type=event_pb2.EVENT_TYPE_IDENTIFY, message_id="m", user_id="u", source_id="spoofed"
    )
    # The client's clock is 100 s behind: corrected, the event time falls on a whole second.
    event.event_time.seconds, event.event_time.nanos = 1_799_999_800, 7
    event.sent_time.seconds, event.sent_time.nanos = 1_899_999_900, 7
    event.received_time.seconds, event.received_time.nanos = 1, 9
    result = logged(event)
    assert as_pair(result.event_time) == stamp(1_799_999_900)
    assert as_pair(result.original_time) == stamp(1_799_999_800, 7)
    assert as_pair(result.sent_time) == stamp(1_899_999_900, 7)
    assert as_pair(result.received_time) == stamp(1_900_000_000)
    assert result.source_id == "src_1"


def test_an_original_time_alone_is_corrected_and_kept() -> None:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, message_id="m", user_id="u")
    event.original_time.seconds, event.original_time.nanos = 1_800_000_000, 3
    event.sent_time.seconds, event.sent_time.nanos = 1_800_000_050, 3
    result = logged(event)
    assert as_pair(result.event_time) == stamp(1_899_999_950)
    assert as_pair(result.original_time) == stamp(1_800_000_000, 3)


def test_an_event_without_times_or_message_id_gets_both() -> None:
    event = event_pb2.Event(anonymous_id="a")
    result = logged(event, implied_type=event_pb2.EVENT_TYPE_PAGE)
    assert result.type == event_pb2.EVENT_TYPE_PAGE
    assert result.message_id.startswith("upm-")
    assert as_pair(result.event_time) == stamp(1_900_000_000)
    assert not result.HasField("original_time")


def enriched(enricher: Enricher, event: event_pb2.Event, client_ip: str = "") -> event_pb2.Event:
    """The event as logged: its bytes with the enrichment appended."""
    fragment = enricher.fragment(event, client_ip=client_ip)
    return event_pb2.Event.FromString(event.SerializeToString() + fragment)


def browser_event(**context: str) -> event_pb2.Event:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_PAGE, anonymous_id="a")
    event.context.page.url = "https://shop.example.com/?utm_source=news&utm_medium=email"
    event.context.user_agent = "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0 Safari/537.36"
    for name, value in context.items():
        setattr(event.context, name, value)
    return event


def test_a_dropped_ip_replaces_the_one_the_client_sent() -> None:
    result = enriched(Enricher(ip_privacy="drop"), browser_event(ip="203.0.113.9"))
    assert result.context.ip == ""
    assert result.context.campaign.source == "news"
    assert result.context.user_agent_info.browser == "Chrome"


def test_a_truncated_ip_comes_from_the_event_or_else_the_connection() -> None:
    enricher = Enricher(ip_privacy="truncate")
    assert enriched(enricher, browser_event(ip="203.0.113.9")).context.ip == "203.0.113.0"
    assert enriched(enricher, browser_event(), "198.51.100.7").context.ip == "198.51.100.0"


def test_a_campaign_the_client_sent_is_completed_not_replaced() -> None:
    event = browser_event(ip="203.0.113.9")
    event.context.campaign.name = "spring"
    event.context.campaign.source = "partner"
    result = enriched(Enricher(ip_privacy="truncate"), event)
    campaign = result.context.campaign
    assert (campaign.name, campaign.source, campaign.medium) == ("spring", "partner", "email")
    assert result.context.ip == "203.0.113.0"
    assert result.context.user_agent_info.device_class == "desktop"


async def test_the_service_logs_grpc_events_finalized_and_enriched(sqlite_url: str) -> None:
    async for ingest in start_ingest(sqlite_url, ip_privacy="drop"):
        await check_logged_event(ingest)


async def check_logged_event(ingest: Running) -> None:
    event = browser_event(ip="203.0.113.9")
    event.message_id = "logged-1"
    event.source_id = "spoofed"
    event.received_time.seconds = 1
    event.event_time.seconds = 1_800_000_000
    await ingest.stub.BatchIngest(
        pb.BatchIngestRequest(events=[event]),
        metadata=(("x-upm-write-key", ingest.write_key),),
    )
    [result] = await ingest.events(1)
    assert result.source_id == ingest.source_id
    assert result.received_time.seconds > 1_700_000_000
    assert as_pair(result.original_time) == stamp(1_800_000_000)
    assert result.context.ip == ""
    assert result.context.campaign.medium == "email"
    assert result.context.user_agent_info.os == "Linux"
