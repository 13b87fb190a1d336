"""Fixtures of the profile tests: a migrated database, a store, and an event builder."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import struct_pb2

from upm.common.v1 import event_pb2, identity_pb2
from upm_common.db import create_engine
from upm_common.eventlog import PROFILE_CHANGES
from upm_common.eventlog.sql import SqlEventLog
from upm_common.migrations import upgrade
from upm_profile.changes import SqlLogPublisher
from upm_profile.effects import EventEffects, effects_of_event
from upm_profile.identifiers import BlockList
from upm_profile.store.sql import SqlProfileStore
from upm_profile.worker import ProfileWorker

BASE_TIME = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_ids = itertools.count(1)

TYPES = {
    "identify": event_pb2.EVENT_TYPE_IDENTIFY,
    "track": event_pb2.EVENT_TYPE_TRACK,
    "page": event_pb2.EVENT_TYPE_PAGE,
    "screen": event_pb2.EVENT_TYPE_SCREEN,
    "group": event_pb2.EVENT_TYPE_GROUP,
    "alias": event_pb2.EVENT_TYPE_ALIAS,
}


def make_event(
    kind: str = "track",
    *,
    message_id: str | None = None,
    user_id: str = "",
    anonymous_id: str = "",
    event: str = "",
    name: str = "",
    traits: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    minutes: float = 0,
    previous_id: str = "",
    device_id: str = "",
    timezone: str = "",
    source_id: str = "web",
) -> event_pb2.Event:
    """A Segment-spec event as ingest puts it on the log."""
    message = event_pb2.Event(
        message_id=message_id or f"m{next(_ids)}",
        type=TYPES[kind],
        user_id=user_id,
        anonymous_id=anonymous_id,
        event=event,
        name=name,
        previous_id=previous_id,
        source_id=source_id,
    )
    if traits is not None:
        message.traits.CopyFrom(_struct(traits))
    if properties is not None:
        message.properties.CopyFrom(_struct(properties))
    if timezone:
        message.context.timezone = timezone
    if device_id:
        message.identifiers.append(
            identity_pb2.Identifier(type=identity_pb2.IDENTIFIER_TYPE_DEVICE_ID, value=device_id)
        )
    at = BASE_TIME + timedelta(minutes=minutes)
    message.event_time.FromDatetime(at)
    message.received_time.FromDatetime(at + timedelta(seconds=1))
    return message


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


def effects(*events: event_pb2.Event) -> list[EventEffects]:
    return [effects_of_event(e, BlockList()) for e in events]


async def make_store(url: str, **kwargs: Any) -> tuple[SqlProfileStore, SqlEventLog]:
    engine = create_engine(url)
    await upgrade(engine, "eventlog")
    await upgrade(engine, "profile")
    log = SqlEventLog(engine)
    await log.ensure_group(PROFILE_CHANGES, "test")
    return SqlProfileStore(engine, SqlLogPublisher(log), **kwargs), log


async def make_workers(
    url: str, log: SqlEventLog, count: int, *, batch_size: int
) -> list[ProfileWorker]:
    """`count` workers sharing `log`, each on a store with an engine of its own (consumers w0,
    w1, ...); the caller disposes of their engines."""
    return [
        ProfileWorker(
            (await make_store(url))[0],
            log,
            blocklist=BlockList(),
            consumer=f"w{i}",
            batch_size=batch_size,
        )
        for i in range(count)
    ]


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlProfileStore]:
    profile_store, _ = await make_store(db_url)
    yield profile_store
    await profile_store.engine.dispose()


@pytest.fixture
async def sqlite_store(sqlite_url: str) -> AsyncIterator[SqlProfileStore]:
    profile_store, _ = await make_store(sqlite_url)
    yield profile_store
    await profile_store.engine.dispose()
