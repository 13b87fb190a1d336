"""The first real path: identify and track over gRPC → event log → profile worker → profile.

Run on the embedded default (SQLite) and on PostgreSQL, with the real ingest and profile
services on free ports and the profile worker applying what ingest appended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc
import pytest

from upm.common.v1 import event_pb2, identity_pb2
from upm.ingest.v1 import ingest_service_pb2 as ingest_pb
from upm.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from upm.profile.v1 import profile_service_pb2 as profile_pb
from upm.profile.v1 import profile_service_pb2_grpc as profile_grpc
from upm_common.migrations import upgrade_all
from upm_common.protoconv import datetime_to_timestamp, dict_to_struct, struct_to_dict
from upm_common.testing import serve_app
from upm_ingest.server import build_app as build_ingest
from upm_ingest.settings import IngestSettings
from upm_profile.server import build_app as build_profile
from upm_profile.settings import ProfileSettings

pytestmark = pytest.mark.e2e

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 20.0) -> T:
    """Poll `check` until it returns something, as a user refreshing a page would."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result is not None:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the profile never showed what was sent")
        await asyncio.sleep(0.1)


def user(value: str) -> identity_pb2.Identifier:
    return identity_pb2.Identifier(type=identity_pb2.IDENTIFIER_TYPE_USER_ID, value=value)


async def test_identify_and_track_become_one_profile_with_traits_and_events(db_url: str) -> None:
    await upgrade_all(db_url)
    ingest_settings = IngestSettings(database_url=db_url, http_port=0, metrics_port=0)
    profile_settings = ProfileSettings(database_url=db_url, metrics_port=0)
    ingest_app = await build_ingest(ingest_settings)
    profile_app = await build_profile(profile_settings)
    async with (
        serve_app(ingest_settings, ingest_app) as ingest,
        serve_app(profile_settings, profile_app) as profile,
    ):
        sender = ingest_grpc.IngestServiceStub(ingest.channel)
        reader = profile_grpc.ProfileServiceStub(profile.channel)
        now = datetime.now(UTC)

        identified = await sender.Identify(
            ingest_pb.IdentifyRequest(
                event=event_pb2.Event(
                    message_id="m-identify",
                    user_id="crm-42",
                    anonymous_id="browser-7",
                    traits=dict_to_struct({"email": " Ann@Example.COM ", "plan": "gold"}),
                    event_time=datetime_to_timestamp(now - timedelta(minutes=2)),
                )
            ),
            timeout=10,
        )
        assert identified.status == ingest_pb.EVENT_RESULT_STATUS_ACCEPTED
        tracked = await sender.Track(
            ingest_pb.TrackRequest(
                event=event_pb2.Event(
                    message_id="m-order",
                    anonymous_id="browser-7",
                    event="Order Completed",
                    properties=dict_to_struct({"order_id": "o-1", "revenue": 42.5}),
                    event_time=datetime_to_timestamp(now - timedelta(minutes=1)),
                )
            ),
            timeout=10,
        )
        assert tracked.status == ingest_pb.EVENT_RESULT_STATUS_ACCEPTED

        async def applied() -> profile_pb.ListProfileEventsResponse | None:
            try:
                found = await reader.GetProfile(
                    profile_pb.GetProfileRequest(identifier=user("crm-42")), timeout=5
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise
            events = await reader.ListProfileEvents(
                profile_pb.ListProfileEventsRequest(profile_id=found.profile.id), timeout=5
            )
            return events if len(events.events) == 2 else None

        events = await eventually(applied)
        assert [e.id for e in events.events] == ["m-order", "m-identify"]  # newest first
        assert events.events[0].name == "Order Completed"
        assert struct_to_dict(events.events[0].properties)["revenue"] == 42.5

        found = await reader.GetProfile(
            profile_pb.GetProfileRequest(
                identifier=identity_pb2.Identifier(
                    type=identity_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID, value="browser-7"
                )
            ),
            timeout=5,
        )
        traits = {t.name: t for t in found.profile.traits}
        assert traits["plan"].value.string_value == "gold"
        assert traits["email"].value.string_value.strip().lower() == "ann@example.com"
        identifiers = {(i.type, i.value) for i in found.profile.identifiers}
        assert (identity_pb2.IDENTIFIER_TYPE_USER_ID, "crm-42") in identifiers
        assert (identity_pb2.IDENTIFIER_TYPE_EMAIL, "ann@example.com") in identifiers

        duplicate = await sender.Track(
            ingest_pb.TrackRequest(
                event=event_pb2.Event(
                    message_id="m-order", anonymous_id="browser-7", event="Order Completed"
                )
            ),
            timeout=10,
        )
        assert duplicate.status == ingest_pb.EVENT_RESULT_STATUS_DUPLICATE
