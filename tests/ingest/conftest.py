"""Fixtures of the ingest tests: a running ingest service (gRPC + HTTP) on a fresh database."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest

from upm.common.v1 import event_pb2
from upm.ingest.v1 import ingest_service_pb2_grpc as pb_grpc
from upm_common.eventlog import EVENTS, EventLog
from upm_common.migrations import upgrade
from upm_common.server import build_server
from upm_ingest.server import IngestApp, build_ingest
from upm_ingest.settings import IngestSettings
from upm_ingest.store import SourceLimitOverrides


def basic_auth(write_key: str) -> str:
    """The Authorization header Segment libraries send: the write key as Basic username."""
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


@dataclass
class Running:
    """An ingest service under test."""

    app: IngestApp
    grpc_port: int
    channel: grpc.aio.Channel
    stub: pb_grpc.IngestServiceStub
    http: aiohttp.ClientSession
    write_key: str
    source_id: str
    group: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.app.http_port}"

    @property
    def log(self) -> EventLog:
        return self.app.event_log

    async def post(
        self,
        path: str,
        body: Any = None,
        *,
        write_key: str | None = "default",
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Any]:
        """POST to the collector; the write key goes as Basic username unless None."""
        all_headers = dict(headers or {})
        if write_key is not None:
            key = self.write_key if write_key == "default" else write_key
            all_headers.setdefault("Authorization", basic_auth(key))
        data = raw if raw is not None else json.dumps(body).encode()
        async with self.http.post(self.base_url + path, data=data, headers=all_headers) as response:
            text = await response.read()
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text
            return response.status, parsed, response.headers

    async def events(self, expected: int, *, timeout: float = 5.0) -> list[event_pb2.Event]:
        """Read `expected` events from the log (fails when fewer arrive in time)."""
        import asyncio

        got: list[event_pb2.Event] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(got) < expected and loop.time() < deadline:
            batch = await self.log.claim(EVENTS, self.group, "test", 1000, block_seconds=0.2)
            got.extend(event_pb2.Event.FromString(d.payload) for d in batch)
            await self.log.ack(EVENTS, self.group, [d.id for d in batch])
        assert len(got) >= expected, f"only {len(got)} of {expected} events arrived"
        return got

    async def no_more_events(self) -> None:
        batch = await self.log.claim(EVENTS, self.group, "test", 1000, block_seconds=0.3)
        assert batch == [], [event_pb2.Event.FromString(d.payload) for d in batch]


async def start_ingest(
    database_url: str,
    *,
    redis_url: str | None = None,
    redis_prefix: str = "",
    **overrides: Any,
) -> AsyncIterator[Running]:
    """Start ingest (gRPC on a free port, HTTP on a free port) and yield a handle."""
    await upgrade(database_url, "eventlog")
    await upgrade(database_url, "ingest")
    values: dict[str, Any] = {
        "database_url": database_url,
        "grpc_port": 0,
        "http_port": 0,
        "metrics_port": 0,
        "ip_privacy": "keep",
        "cors_origins": ["http://allowed.example"],
        **overrides,
    }
    event_log = None
    if redis_url:
        values["redis_url"] = redis_url
        values["dedup_key_prefix"] = f"{redis_prefix}dedup"
        if values.get("event_log_backend") == "redis":
            from upm_common.eventlog.redis import RedisEventLog
            from upm_common.redis import create_redis

            event_log = RedisEventLog(create_redis(redis_url), prefix=f"{redis_prefix}upm")
    settings = IngestSettings(**values)
    app = await build_ingest(settings, event_log=event_log)
    group = f"test-{uuid.uuid4().hex[:8]}"
    await app.event_log.ensure_group(EVENTS, group)
    running_server = await build_server(settings, app.service_app.registrations, port=0)
    await running_server.server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running_server.port}")
    record, write_key = await app.registry.create("test source", SourceLimitOverrides())
    http = aiohttp.ClientSession()
    try:
        yield Running(
            app=app,
            grpc_port=running_server.port,
            channel=channel,
            stub=pb_grpc.IngestServiceStub(channel),
            http=http,
            write_key=write_key,
            source_id=record.source_id,
            group=group,
        )
    finally:
        await http.close()
        await channel.close()
        await running_server.server.stop(0)
        await app.close()


@pytest.fixture
async def ingest(sqlite_url: str) -> AsyncIterator[Running]:
    async for running in start_ingest(sqlite_url):
        yield running


@pytest.fixture
def make_event() -> Callable[..., dict[str, Any]]:
    def make(kind: str = "track", **fields: Any) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": kind,
            "messageId": fields.pop("messageId", uuid.uuid4().hex),
            "anonymousId": fields.pop("anonymousId", "anon-1"),
        }
        if kind == "track":
            event["event"] = "Order Completed"
            event["properties"] = {"revenue": 12.5, "currency": "EUR"}
        elif kind == "identify":
            event["traits"] = {"email": "a@example.com"}
        elif kind == "group":
            event["groupId"] = "acme"
        elif kind == "alias":
            event["userId"] = "user-1"
            event["previousId"] = "anon-1"
        event.update(fields)
        return event

    return make
