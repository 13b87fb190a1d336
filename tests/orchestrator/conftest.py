"""Fixtures of the orchestrator tests: a controllable clock and an orchestrator per backend."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from upm.common.v1 import consent_pb2
from upm.orchestrator.v1 import orchestrator_service_pb2 as pb
from upm.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from upm_common.db import create_engine
from upm_common.migrations import upgrade
from upm_common.redis import create_redis, delete_matching
from upm_common.testing import serve_app
from upm_orchestrator.directory import InMemoryProfileDirectory, InMemorySegmentDirectory
from upm_orchestrator.engine import ProfileInfo
from upm_orchestrator.followups import FollowUps
from upm_orchestrator.repository import Repository
from upm_orchestrator.server import build_orchestrator
from upm_orchestrator.service import DecisionSettings, Orchestrator
from upm_orchestrator.settings import OrchestratorSettings
from upm_orchestrator.store.base import FatigueStore
from upm_orchestrator.store.redis import RedisFatigueStore
from upm_orchestrator.store.sql import SqlFatigueStore

SUBSCRIBED = consent_pb2.CONSENT_STATUS_SUBSCRIBED
MARKETING = consent_pb2.CONSENT_PURPOSE_MARKETING
TRANSACTIONAL = consent_pb2.CONSENT_PURPOSE_TRANSACTIONAL
CHANNELS = ("email", "sms", "push", "web", "in_app")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now

    def set(self, moment: datetime) -> datetime:
        self.now = moment.astimezone(UTC)
        return self.now


def subscribed(*channels: str, purpose: int = MARKETING) -> dict[tuple[str, int], int]:
    return {(channel, purpose): SUBSCRIBED for channel in channels}


def person(
    profile_id: str, timezone: str = "", channels: tuple[str, ...] = CHANNELS
) -> ProfileInfo:
    return ProfileInfo(profile_id, timezone, False, subscribed(*channels))


@dataclass
class Harness:
    """An orchestrator on one backend with in-memory peers."""

    orchestrator: Orchestrator
    followups: FollowUps
    profiles: InMemoryProfileDirectory
    segments: InMemorySegmentDirectory
    store: FatigueStore
    clock: Clock

    async def policy(self, *rules: pb.Rule, **fields: object) -> pb.Policy:
        policy = pb.Policy(policy_id="default", rules=list(rules), **fields)  # type: ignore[arg-type]
        return await self.orchestrator.create_policy(policy)

    async def ask(
        self,
        profile_id: str = "p1",
        channel: str = "email",
        **message: object,
    ) -> pb.Decision:
        message.setdefault("purpose", MARKETING)
        request = pb.RequestPermissionRequest(
            profile_id=profile_id,
            channel=channel,
            message=pb.Message(**message),  # type: ignore[arg-type]
        )
        return await self.orchestrator.request_permission(request)


BACKENDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("redis", marks=pytest.mark.redis),
]


async def make_harness(
    request: pytest.FixtureRequest, backend: str, *, ttl_seconds: float = 2 * 86_400.0
) -> AsyncIterator[Harness]:
    if backend == "postgres":
        url = str(request.getfixturevalue("pg_url"))
    else:
        url = str(request.getfixturevalue("sqlite_url"))
    engine = create_engine(url)
    await upgrade(engine, "orchestrator")
    store: FatigueStore
    redis = None
    if backend == "redis":
        redis_url = str(request.getfixturevalue("redis_url"))
        prefix = f"upmtest:{uuid.uuid4().hex[:12]}:"
        redis = create_redis(redis_url)
        store = RedisFatigueStore(redis, namespace=prefix)
    else:
        store = SqlFatigueStore(engine, concurrency=16)
    clock = Clock(datetime(2026, 6, 10, 12, 0, tzinfo=UTC))
    profiles = InMemoryProfileDirectory([person("p1"), person("p2")])
    segments = InMemorySegmentDirectory()
    repository = Repository(engine)
    orchestrator = Orchestrator(
        store=store,
        repository=repository,
        profiles=profiles,
        settings=DecisionSettings(reservation_ttl_seconds=ttl_seconds, policy_cache_seconds=0),
        clock=clock,
    )
    try:
        yield Harness(
            orchestrator, FollowUps(orchestrator, segments), profiles, segments, store, clock
        )
    finally:
        await repository.close()
        if backend == "redis":
            await _delete_keys(str(request.getfixturevalue("redis_url")), prefix)
        await store.close()
        if redis is not None:
            await redis.aclose()
        await engine.dispose()


async def _delete_keys(redis_url: str, prefix: str) -> None:
    client = create_redis(redis_url)
    try:
        # The server is shared: a large COUNT keeps the walk over everyone's keys to a few
        # round trips.
        await delete_matching(client, f"{prefix}*", batch=20_000)
    finally:
        await client.aclose()


@pytest.fixture(params=BACKENDS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """The same test on SQLite, PostgreSQL and Redis."""
    async for value in make_harness(request, request.param):
        yield value


@pytest.fixture
async def sqlite_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    async for value in make_harness(request, "sqlite"):
        yield value


def rule(rule_id: str, **kind: object) -> pb.Rule:
    return pb.Rule(rule_id=rule_id, **kind)  # type: ignore[arg-type]


def cap(
    rule_id: str,
    count: int,
    *,
    seconds: int = 0,
    kind: int = pb.WINDOW_KIND_ROLLING,
    scope: int = pb.SCOPE_KIND_CHANNEL,
    value: str = "",
    action: int = 0,
) -> pb.Rule:
    freq = pb.FrequencyCapRule(
        count=count,
        window_kind=kind,  # type: ignore[arg-type]
        scope=pb.RuleScope(kind=scope, value=value),  # type: ignore[arg-type]
        action=action,  # type: ignore[arg-type]
    )
    if seconds:
        freq.window_duration.seconds = seconds
    return rule(rule_id, frequency_cap=freq)


Factory = Callable[..., pb.Rule]


class Peers:
    def __init__(self) -> None:
        self.profiles = InMemoryProfileDirectory(
            [person("p1"), person("p2"), ProfileInfo("p3", "", False, subscribed("sms"))]
        )
        self.segments = InMemorySegmentDirectory({"vips": ["p1", "p2", "p3", "ghost"]})


@pytest.fixture
def peers() -> Peers:
    return Peers()


@pytest.fixture
async def stub(sqlite_url: str, peers: Peers) -> AsyncIterator[pb_grpc.OrchestratorServiceStub]:
    await upgrade(sqlite_url, "eventlog")
    await upgrade(sqlite_url, "orchestrator")
    settings = OrchestratorSettings(database_url=sqlite_url, grpc_port=0, metrics_port=0)
    app = await build_orchestrator(settings, profiles=peers.profiles, segments=peers.segments)
    async with serve_app(settings, app.service_app) as served:
        yield pb_grpc.OrchestratorServiceStub(served.channel)
