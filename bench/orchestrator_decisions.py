"""Fatigue decisions per second and single-decision latency, on Redis and on SQL.

The orchestrator runs in a child process (so client and server do not share one interpreter)
with an in-memory profile directory of N people and a 10-rule policy. Figures:

- `redis.batch`: decisions/s through BatchRequestPermission (1,000 per call, a few calls in
  flight), one decision per person over N people;
- `redis.bare_evalsha`: the same Lua script with equivalent arguments, pipelined straight at
  Redis in the same run: the ceiling; `redis.ratio` = batch / bare;
- `redis.single`: RequestPermission p50 / p99 latency at a fixed request rate;
- `sql_sqlite` (and `sql_postgres` when a local PostgreSQL answers): the same figures on the SQL
  ledger, at smaller sizes.

Run alone: `python -m bench.orchestrator_decisions [--smoke]`. Server mode (internal):
`python -m bench.orchestrator_decisions --serve BACKEND DATABASE_URL PROFILES`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("UPM_BENCH_REDIS_URL") or os.environ.get(
    "UPM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"
)
POSTGRES_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
CHANNELS = ("email", "sms", "push", "web", "in_app")
BATCH = 1000
IN_FLIGHT = 4


def _policy() -> Any:
    from upm.orchestrator.v1 import orchestrator_service_pb2 as pb

    def cap(  # noqa: PLR0917
        rule_id: str, count: int, kind: int, scope: int, value: str = "", secs: int = 0
    ) -> Any:
        rule = pb.FrequencyCapRule(
            count=count, window_kind=kind, scope=pb.RuleScope(kind=scope, value=value)
        )
        if secs:
            rule.window_duration.seconds = secs
        return pb.Rule(rule_id=rule_id, frequency_cap=rule)

    rolling = pb.WINDOW_KIND_ROLLING
    return pb.Policy(
        policy_id="default",
        fallback_time_zone="UTC",
        rules=[
            cap("any-hour", 5, rolling, pb.SCOPE_KIND_ANY_CHANNEL, secs=3600),
            cap("any-day", 10, pb.WINDOW_KIND_CALENDAR_DAY, pb.SCOPE_KIND_ANY_CHANNEL),
            cap("any-week", 30, pb.WINDOW_KIND_CALENDAR_WEEK, pb.SCOPE_KIND_ANY_CHANNEL),
            cap("any-month", 90, pb.WINDOW_KIND_CALENDAR_MONTH, pb.SCOPE_KIND_ANY_CHANNEL),
            cap("channel-day", 3, rolling, pb.SCOPE_KIND_CHANNEL, secs=86_400),
            cap("promo-day", 2, pb.WINDOW_KIND_CALENDAR_DAY, pb.SCOPE_KIND_CATEGORY, "promo"),
            cap("vip-week", 5, pb.WINDOW_KIND_CALENDAR_WEEK, pb.SCOPE_KIND_TAG, "vip"),
            cap("campaign-week", 2, rolling, pb.SCOPE_KIND_CAMPAIGN, secs=7 * 86_400),
            pb.Rule(
                rule_id="gap",
                min_gap=pb.MinGapRule(
                    gap_duration=duration_pb2.Duration(seconds=60),
                    scope=pb.RuleScope(kind=pb.SCOPE_KIND_CHANNEL),
                ),
            ),
            pb.Rule(
                rule_id="same-message",
                duplicate_intent=pb.DuplicateIntentRule(
                    window_duration=duration_pb2.Duration(seconds=86_400)
                ),
            ),
        ],
    )


def _profile_id(run: str, index: int) -> str:
    return f"{run}-{index:07d}"


def _request(run: str, index: int, salt: int = 0) -> Any:
    from upm.orchestrator.v1 import orchestrator_service_pb2 as pb

    return pb.RequestPermissionRequest(
        profile_id=_profile_id(run, index),
        channel=CHANNELS[(index + salt) % len(CHANNELS)],
        message=pb.Message(
            purpose=1,
            campaign_id=f"campaign-{salt % 7}",
            category="promo",
            tags=["vip"],
            intent_key=f"intent-{salt}",
        ),
    )


# Server side (child process) -----------------------------------------------------------------


async def _serve(backend: str, database_url: str, profiles: int, run: str) -> None:
    from upm.common.v1 import consent_pb2
    from upm_common.logging import configure_logging
    from upm_common.migrations import upgrade
    from upm_common.server import build_server
    from upm_orchestrator.directory import InMemoryProfileDirectory, InMemorySegmentDirectory
    from upm_orchestrator.engine import ProfileInfo
    from upm_orchestrator.server import build_orchestrator
    from upm_orchestrator.settings import OrchestratorSettings
    from upm_orchestrator.store.redis import RedisFatigueStore

    configure_logging("json", os.environ.get("UPM_LOG_LEVEL", "warning"))
    await upgrade(database_url, "orchestrator")
    consents = {(c, consent_pb2.CONSENT_PURPOSE_MARKETING): 1 for c in CHANNELS}
    directory = InMemoryProfileDirectory(
        [ProfileInfo(_profile_id(run, i), "", False, consents) for i in range(profiles)]
    )
    settings = OrchestratorSettings(
        database_url=database_url,
        redis_url=REDIS_URL,
        fatigue_backend=backend,  # type: ignore[arg-type]
        grpc_port=0,
        metrics_port=0,
        reflection=False,
    )
    store = None
    if backend == "redis":
        from upm_common.redis import create_redis

        store = RedisFatigueStore(create_redis(REDIS_URL), namespace=f"upmbench:{run}:")
    app = await build_orchestrator(
        settings,
        profiles=directory,
        segments=InMemorySegmentDirectory(),
        store=store,
        with_outcome_feed=False,
    )
    await app.orchestrator.create_policy(_policy())
    # The in-memory directory stands in for the profile service; keep the collector off it.
    gc.freeze()
    running = await build_server(settings, app.service_app.registrations, port=0)
    await running.server.start()
    await running.set_serving(True)
    print(running.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await running.server.stop(None)
    await app.close()


@contextlib.asynccontextmanager
async def _server(backend: str, database_url: str, profiles: int, run: str) -> AsyncIterator[int]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / p) for p in ("gen/python", "libs", "services/orchestrator")]
        + [str(ROOT), env.get("PYTHONPATH", "")]
    )
    env["UPM_LOG_LEVEL"] = "warning"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.orchestrator_decisions",
        "--serve",
        backend,
        database_url,
        str(profiles),
        run,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
        env=env,
    )
    assert process.stdout is not None and process.stdin is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=300)
    if not line.strip():
        raise RuntimeError("the benchmark server did not start")

    async def drain() -> None:
        # The server logs to stdout; a full pipe would block it.
        assert process.stdout is not None
        with open(os.environ.get("UPM_BENCH_SERVER_LOG", os.devnull), "ab") as sink:
            while chunk := await process.stdout.read(65536):
                sink.write(chunk)

    draining = asyncio.create_task(drain())
    try:
        yield int(line)
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout=30)
        except TimeoutError:
            process.kill()
            await process.wait()
        await draining


# Client side ----------------------------------------------------------------------------------


async def _batched(stub: Any, run: str, people: int, salt: int) -> dict[str, Any]:
    from upm.orchestrator.v1 import orchestrator_service_pb2 as pb

    batches = [
        pb.BatchRequestPermissionRequest(
            requests=[_request(run, i, salt) for i in range(start, min(start + BATCH, people))]
        )
        for start in range(0, people, BATCH)
    ]
    queue = list(reversed(batches))
    outcomes: dict[int, int] = {}

    async def worker() -> None:
        while queue:
            response = await stub.BatchRequestPermission(queue.pop(), timeout=120)
            for decision in response.decisions:
                outcomes[decision.outcome] = outcomes.get(decision.outcome, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    elapsed = time.perf_counter() - started
    return {
        "decisions": people,
        "seconds": round(elapsed, 3),
        "decisions_per_second": round(people / elapsed),
        "outcomes": {pb.Outcome.Name(k): v for k, v in sorted(outcomes.items())},  # type: ignore[arg-type]
    }


async def _single(stub: Any, run: str, people: int, rate: int, count: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def one(index: int) -> None:
        started = time.perf_counter()
        try:
            await stub.RequestPermission(_request(run, index % people, 10_000 + index), timeout=5)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
            return
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    begin = time.perf_counter()
    for index in range(count):
        delay = begin + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - begin
    latencies.sort()
    return {
        "target_rate": rate,
        "achieved_rate": round(count / elapsed),
        "requests": count,
        "errors": sum(errors.values()),
        "error_codes": errors,
        "p50_ms": round(statistics.median(latencies), 3) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 3) if latencies else None,
        "max_ms": round(latencies[-1], 3) if latencies else None,
    }


async def _bare_evalsha(people: int, run: str) -> dict[str, Any]:
    """The same Lua script with the same arguments, pipelined straight at Redis: the ceiling.

    Arguments are prepared by the engine before the clock starts, so only the client's command
    packing and Redis itself are measured.
    """
    from datetime import UTC, datetime

    from upm.common.v1 import consent_pb2
    from upm_common.redis import create_redis
    from upm_orchestrator import engine
    from upm_orchestrator.engine import ProfileInfo
    from upm_orchestrator.policy import compile_policy
    from upm_orchestrator.service import message_spec
    from upm_orchestrator.store.base import ReserveRequest
    from upm_orchestrator.store.redis import RESERVE_SCRIPT, RedisFatigueStore

    redis = create_redis(REDIS_URL)
    namespace = f"upmbench:{run}-bare:"
    store = RedisFatigueStore(redis, namespace=namespace)
    policy = compile_policy(_policy())
    consents = {(c, consent_pb2.CONSENT_PURPOSE_MARKETING): 1 for c in CHANNELS}
    now = datetime.now(UTC)
    commands = []
    for index in range(people):
        request = _request(run, index, 1)
        profile = ProfileInfo(request.profile_id, "", False, consents)
        spec = message_spec(request.message, "message")
        plan = engine.plan_decision(policy, profile, request.channel, spec, now)
        reserve = ReserveRequest(
            profile_id=request.profile_id,
            now_ms=engine.to_ms(now),
            checks=plan.checks,
            writes=plan.writes,
            reserve=True,
            ttl_ms=300_000,
            retention_ms=policy.retention_ms,
            meta={"d": "x", "t": engine.to_ms(now), "c": request.channel},
        )
        keys, args = store._args(reserve, f"{request.profile_id}~{index}")
        commands.append((keys, args))
    try:
        sha = await redis.script_load(RESERVE_SCRIPT)
        started = time.perf_counter()
        for start in range(0, people, BATCH):
            async with redis.pipeline(transaction=False) as pipe:
                for keys, args in commands[start : start + BATCH]:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                await pipe.execute()
        elapsed = time.perf_counter() - started
        return {
            "decisions": people,
            "seconds": round(elapsed, 3),
            "decisions_per_second": round(people / elapsed),
        }
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{namespace}*", count=10_000)]
        for start in range(0, len(keys), 10_000):
            await redis.delete(*keys[start : start + 10_000])
        await redis.aclose()


async def _cleanup_redis(run: str) -> None:
    from upm_common.redis import create_redis

    redis = create_redis(REDIS_URL)
    try:
        keys = [k async for k in redis.scan_iter(match=f"upmbench:{run}:*", count=10_000)]
        for start in range(0, len(keys), 10_000):
            await redis.delete(*keys[start : start + 10_000])
    finally:
        await redis.aclose()


async def _measure(
    backend: str, database_url: str, people: int, rate: int, count: int
) -> dict[str, Any]:
    from upm.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

    run = uuid.uuid4().hex[:8]
    async with _server(backend, database_url, people, run) as port:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.OrchestratorServiceStub(channel)
        try:
            await _batched(stub, run, min(people, 2 * BATCH), salt=99)  # warm-up
            batch = await _batched(stub, run, people, salt=1)
            single = await _single(stub, run, people, rate, count)
        finally:
            await channel.close()
    result: dict[str, Any] = {"batch": batch, "single": single}
    if backend == "redis":
        result["bare_evalsha"] = await _bare_evalsha(people, run)
        result["ratio"] = round(
            batch["decisions_per_second"] / result["bare_evalsha"]["decisions_per_second"], 3
        )
        await _cleanup_redis(run)
    return result


def _port_open(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket()) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


async def _postgres_database() -> tuple[str, str] | None:
    if not _port_open("127.0.0.1", 5432):
        return None
    import asyncpg

    name = f"upm_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, POSTGRES_SERVER.rsplit("/", 1)[0] + f"/{name}"


async def _drop_postgres(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def run(smoke: bool) -> dict[str, Any]:
    people = 2_000 if smoke else 100_000
    sql_people = 500 if smoke else 20_000
    result: dict[str, Any] = {
        "rules_per_profile": 10,
        "batch_size": BATCH,
        "in_flight_batches": IN_FLIGHT,
        "targets": {"batch_decisions_per_second": 20_000, "single_p99_ms_at_1000_rps": 5.0},
    }
    with tempfile.TemporaryDirectory() as folder:
        sqlite_url = f"sqlite+aiosqlite:///{folder}/bench.db"
        result["redis"] = await _measure(
            "redis", sqlite_url, people, rate=1000, count=500 if smoke else 10_000
        )
        sqlite_sql = f"sqlite+aiosqlite:///{folder}/bench-sql.db"
        result["sql_sqlite"] = await _measure(
            "sql", sqlite_sql, sql_people, rate=200, count=100 if smoke else 2_000
        )
    created = await _postgres_database()
    if created is not None:
        name, url = created
        try:
            result["sql_postgres"] = await _measure(
                "sql", url, sql_people, rate=500, count=200 if smoke else 5_000
            )
        finally:
            await _drop_postgres(name)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--serve", nargs=4, metavar=("BACKEND", "URL", "PROFILES", "RUN"))
    args = parser.parse_args()
    if args.serve:
        backend, url, profiles, run_id = args.serve
        asyncio.run(_serve(backend, url, int(profiles), run_id))
        return 0
    print(json.dumps(asyncio.run(run(args.smoke)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
