"""Events of erased (suppressed) people are dropped at the door."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.ingest.conftest import Running
from upm.common.v1 import identity_pb2
from upm.profile.v1 import profile_service_pb2
from upm_common.eventlog import PROFILE_CHANGES, LogRecord
from upm_ingest.server import suppression_worker


async def test_events_of_suppressed_identifiers_are_dropped(
    ingest: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    await ingest.app.suppressions.add([("user_id", "erased-1")], reason="test")
    kept = make_event("track", userId="kept-1")
    dropped = make_event("track", userId="erased-1", anonymousId="anon-x")
    status, answer, _ = await ingest.post("/v1/batch", {"batch": [kept, dropped]})
    assert status == 200
    assert (answer["accepted"], answer["suppressed"]) == (1, 1)
    [event] = await ingest.events(1)
    assert event.user_id == "kept-1"
    await ingest.no_more_events()
    status, answer, _ = await ingest.post("/v1/track", make_event(userId="erased-1"))
    assert status == 200 and answer["status"] == "suppressed"


async def test_the_suppression_list_holds_no_plain_identifiers(ingest: Running) -> None:
    from sqlalchemy import text

    await ingest.app.suppressions.add([("anonymous_id", "cookie-123")], reason="test")
    async with ingest.app.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM ingest_suppressions"))).all()
    assert len(rows) == 1 and "cookie-123" not in str(rows)


async def test_erasures_on_the_profile_change_feed_suppress_identifiers(
    ingest: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    change = profile_service_pb2.ProfileChange(
        type=profile_service_pb2.PROFILE_CHANGE_TYPE_ERASED,
        identifiers=[
            identity_pb2.Identifier(type=identity_pb2.IDENTIFIER_TYPE_USER_ID, value="gone-7"),
            identity_pb2.Identifier(
                type=identity_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID, value="anon-gone"
            ),
            identity_pb2.Identifier(type=identity_pb2.IDENTIFIER_TYPE_EMAIL, value="g@x.io"),
        ],
    )
    other = profile_service_pb2.ProfileChange(
        type=profile_service_pb2.PROFILE_CHANGE_TYPE_TRAITS_CHANGED
    )
    log = ingest.app.event_log
    await log.append(
        PROFILE_CHANGES,
        [
            LogRecord("p1", other.SerializeToString()),
            LogRecord("p1", change.SerializeToString()),
        ],
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(
        suppression_worker(log, ingest.app.suppressions, idle_seconds=0.1, stop=stop)
    )
    try:
        for _ in range(50):
            _status, answer, _ = await ingest.post("/v1/track", make_event(anonymousId="anon-gone"))
            if answer.get("status") == "suppressed":
                break
            await asyncio.sleep(0.1)
        assert answer["status"] == "suppressed"
    finally:
        stop.set()
        await worker
    _status, answer, _ = await ingest.post("/v1/track", make_event(userId="gone-7"))
    assert answer["status"] == "suppressed"
    assert await log.pending(PROFILE_CHANGES, "ingest-suppression") == 0
