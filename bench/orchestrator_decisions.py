"""Fatigue decisions per second and single-decision latency, on Redis and on SQL.

The orchestrator runs in a child process (so client and server do not share one interpreter)
with an in-memory profile directory of N people and a 10-rule policy. Figures:

- `redis.batch`: decisions/s through BatchRequestPermission (1,000 per call, a few calls in
  flight), one decision per person over N people; median of several passes;
- `redis.bare_evalsha`: the same Lua script with the same arguments (packed beforehand by the
  service's own planning and packing, for people of their own), written straight to Redis
  connections the way the service writes them (1,000 per write, as many in flight),
  alternating with the batch calls every 10,000 decisions (the machine is shared): the Redis
  work of a decision without the service around it, the ceiling; `redis.ratio_median` = batch
  / bare per pass; `redis_usec_per_evalsha` is Redis's own time per script in that pass (every
  client's EVALSHAs meanwhile: the Redis server is shared);
- `redis.single`: RequestPermission p50 / p99 latency at a fixed (open-loop) request rate, and
  `health_check_floor`: the same client against the server's health check, the gRPC floor;
- `sql_sqlite` (and `sql_postgres` when a local PostgreSQL answers): the same figures on the SQL
  ledger, at smaller sizes.

The client pre-serializes requests and uses raw unary calls (bytes in, bytes out), so its own
cost on the shared cores stays small. Every Redis key the run creates carries the prefix
`upmbench:<run>`; all are deleted (SCAN + UNLINK) at the end, also when the run fails.

Run alone: `python -m bench.orchestrator_decisions [--smoke] [--only redis-single]`;
`--only redis-single` (or UPM_BENCH_ORCH_ONLY=redis-single) measures only the Redis
single-decision latency and its health-check floor, a quick loop while working on that path.
Server mode (internal):
`python -m bench.orchestrator_decisions --serve BACKEND DATABASE_URL PROFILES`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
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
CHUNK = 10  # batches between switches from the service to the bare script and back


def _policy() -> Any:
    from upm.orchestrator.v1 import orchestrator_service_pb2 as pb

    def cap(  # noqa: PLR0917
        rule_id: str, count: int, kind: int, scope: int, value: str = "", secs: int = 0
    ) -> Any:
        rule = pb.FrequencyCapRule(
            count=count,
            window_kind=kind,  # type: ignore[arg-type]
            scope=pb.RuleScope(kind=scope, value=value),  # type: ignore[arg-type]
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
    from upm.common.v1 import consent_pb2
    from upm.orchestrator.v1 import orchestrator_service_pb2 as pb

    return pb.RequestPermissionRequest(
        profile_id=_profile_id(run, index),
        channel=CHANNELS[(index + salt) % len(CHANNELS)],
        message=pb.Message(
            purpose=consent_pb2.CONSENT_PURPOSE_MARKETING,
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
    from upm_common.server import build_server, tune_garbage_collector
    from upm_orchestrator.directory import InMemoryProfileDirectory, InMemorySegmentDirectory
    from upm_orchestrator.engine import ProfileInfo
    from upm_orchestrator.server import build_orchestrator
    from upm_orchestrator.settings import OrchestratorSettings
    from upm_orchestrator.store.redis import RedisFatigueStore

    configure_logging("json", os.environ.get("UPM_LOG_LEVEL", "warning"))
    await upgrade(database_url, "orchestrator")
    consents: dict[tuple[str, int], int] = {
        (c, consent_pb2.CONSENT_PURPOSE_MARKETING): 1 for c in CHANNELS
    }
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
    redis = None
    if backend == "redis":
        from upm_common.redis import create_redis

        redis = create_redis(REDIS_URL)
        store = RedisFatigueStore(redis, namespace=f"upmbench:{run}:")
    app = await build_orchestrator(
        settings,
        profiles=directory,
        segments=InMemorySegmentDirectory(),
        store=store,
        with_outcome_feed=False,
    )
    await app.orchestrator.create_policy(_policy())
    # As `upm serve` does once the app is built; this also keeps the collector off the
    # in-memory directory that stands in for the profile service.
    tune_garbage_collector()
    running = await build_server(settings, app.service_app.registrations, port=0)
    await running.server.start()
    await running.set_serving(True)
    print(running.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await running.server.stop(None)
    await app.close()
    if redis is not None:
        await redis.aclose()


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
#
# The client shares the machine's two cores with the server, so it does as little as it can
# while the clock runs: requests are serialized beforehand and sent through raw unary calls with
# identity serializers; responses are parsed after the clock stops.

SERVICE = "/upm.orchestrator.v1.OrchestratorService/"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def _raw(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(method)  # no serializers: bytes in, bytes out


def _batch_payloads(run: str, first: int, people: int, salt: int) -> list[bytes]:
    """Serialized batches: one decision for each of the people `first` .. `first + people - 1`."""
    from upm.orchestrator.v1 import orchestrator_service_pb2 as pb

    return [
        pb.BatchRequestPermissionRequest(
            requests=[
                _request(run, i, salt) for i in range(start, min(start + BATCH, first + people))
            ]
        ).SerializeToString()
        for start in range(first, first + people, BATCH)
    ]


async def _send_batches(call: Any, payloads: list[bytes]) -> tuple[float, list[bytes]]:
    """Send the batches, IN_FLIGHT at once; the seconds taken and the raw responses."""
    queue = list(reversed(payloads))
    responses: list[bytes] = []

    async def worker() -> None:
        while queue:
            responses.append(await call(queue.pop(), timeout=120))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - started, responses


def _outcomes(responses: list[bytes]) -> dict[str, int]:
    from upm.orchestrator.v1 import orchestrator_service_pb2 as pb

    counts: dict[int, int] = {}
    for raw in responses:
        for decision in pb.BatchRequestPermissionResponse.FromString(raw).decisions:
            counts[decision.outcome] = counts.get(decision.outcome, 0) + 1
    return {pb.Outcome.Name(k): v for k, v in sorted(counts.items())}  # type: ignore[arg-type]


async def _fixed_rate(call: Any, payloads: list[bytes], rate: int) -> dict[str, Any]:
    """Send `payloads` at `rate` per second (open loop); latency percentiles of the answers."""
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def one(payload: bytes) -> None:
        started = time.perf_counter()
        try:
            await call(payload, timeout=5)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
            return
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    # A pause of the client's own garbage collector would count as the server's latency: what
    # the client holds so far (earlier passes' leftovers) is kept out of its walks meanwhile.
    gc.collect()
    gc.freeze()
    try:
        begin = time.perf_counter()
        for index, payload in enumerate(payloads):
            delay = begin + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(payload)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - begin
    finally:
        gc.unfreeze()
    latencies.sort()
    count = len(payloads)
    return {
        "target_rate": rate,
        "achieved_rate": round(count / elapsed),
        "requests": count,
        "errors": sum(errors.values()),
        "error_codes": errors,
        "p50_ms": round(statistics.median(latencies), 3) if latencies else None,
        "p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)], 3)
        if latencies
        else None,
        "max_ms": round(latencies[-1], 3) if latencies else None,
    }


async def _single(
    channel: grpc.aio.Channel, run: str, people: int, rate: int, count: int
) -> dict[str, Any]:
    # People of the first pass, on another channel than that pass used ((index + salt) % 5
    # differs) and with an intent of their own: no rule holds these back.
    payloads = [
        _request(run, index % people, 10_003 + 5 * index).SerializeToString()
        for index in range(count)
    ]
    return await _fixed_rate(_raw(channel, SERVICE + "RequestPermission"), payloads, rate)


async def _health_floor(channel: grpc.aio.Channel, rate: int, count: int) -> dict[str, Any]:
    """The same open-loop client against the server's health check: the gRPC floor."""
    from grpc_health.v1 import health_pb2

    payload = health_pb2.HealthCheckRequest().SerializeToString()
    return await _fixed_rate(_raw(channel, HEALTH_CHECK), [payload] * count, rate)


async def _prepare_bare(redis: Any, first: int, people: int, run: str, salt: int) -> list[bytes]:
    """EVALSHA commands equivalent to what the service sends for `people` decisions.

    Prepared and packed (by the service's own engine and packing) before the clock starts, so
    the bare figure measures only the sending and Redis itself.
    """
    from datetime import UTC, datetime

    from upm.common.v1 import consent_pb2
    from upm_orchestrator import engine
    from upm_orchestrator.engine import ProfileInfo
    from upm_orchestrator.policy import compile_policy
    from upm_orchestrator.service import message_spec
    from upm_orchestrator.store.base import ReserveRequest
    from upm_orchestrator.store.redis import RedisFatigueStore

    store = RedisFatigueStore(redis, namespace=f"upmbench:{run}-bare:")
    policy = compile_policy(_policy())
    consents: dict[tuple[str, int], int] = {
        (c, consent_pb2.CONSENT_PURPOSE_MARKETING): 1 for c in CHANNELS
    }
    now = datetime.now(UTC)
    commands = []
    for index in range(first, first + people):
        request = _request(run, index, salt)
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
            meta={
                "d": uuid.uuid4().hex,
                "t": engine.to_ms(now),
                "c": request.channel,
                "cmp": spec.campaign_id,
                "int": spec.intent_key,
                "var": spec.variant,
            },
        )
        commands.append(store.command(reserve, uuid.uuid4().hex))
    return commands


async def _send_bare(redis: Any, commands: list[bytes]) -> float:
    """The same Lua script, pipelined straight at Redis the way the service sends it: BATCH
    commands a write on a connection of its own, IN_FLIGHT at once. The ceiling for
    `redis.batch`."""
    queue = [commands[i : i + BATCH] for i in range(0, len(commands), BATCH)]
    queue.reverse()
    pool = redis.connection_pool

    async def worker() -> None:
        connection = await pool.get_connection()
        try:
            while queue:
                chunk = queue.pop()
                await connection.send_packed_command(b"".join(chunk))
                for _ in chunk:
                    await connection.read_response(timeout=math.inf)
        finally:
            await pool.release(connection)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - started


def _rate(decisions: int, seconds: float) -> dict[str, Any]:
    return {
        "decisions": decisions,
        "seconds": round(seconds, 3),
        "decisions_per_second": round(decisions / seconds),
    }


async def _evalsha_usec(redis: Any) -> tuple[int, int]:
    stats = (await redis.info("commandstats")).get("cmdstat_evalsha") or {}
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


async def _measure(  # noqa: PLR0917
    backend: str,
    database_url: str,
    people: int,
    rate: int,
    count: int,
    repeats: int,
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    redis = None
    if backend == "redis":
        from upm_common.redis import create_redis, delete_matching

        redis = create_redis(REDIS_URL)
    result: dict[str, Any] = {}
    try:
        # Every pass decides for people of its own (and so does the warm-up): each pass then
        # meets the same ledger state and the same outcomes; the same people twice would
        # hit the policy's caps, and a held-back decision also checks other channels for a
        # suggestion (several scripts, not one).
        async with _server(backend, database_url, people * (repeats + 1), run) as port:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            try:
                call = _raw(channel, SERVICE + "BatchRequestPermission")
                if redis is not None:
                    from upm_orchestrator.store.redis import RESERVE_SCRIPT

                    await redis.script_load(RESERVE_SCRIPT)
                warm = min(people, 2 * BATCH)
                await _send_batches(call, _batch_payloads(run, people * repeats, warm, salt=99))
                batches: list[dict[str, Any]] = []
                bares: list[dict[str, Any]] = []
                ratios: list[float] = []
                for repeat in range(repeats):
                    payloads = _batch_payloads(run, people * repeat, people, salt=1)
                    commands = []
                    if redis is not None:
                        commands = await _prepare_bare(redis, people * repeat, people, run, 1)
                    # Batch and bare alternate every CHUNK batches, so both see the same
                    # machine load (the machine is shared; load swings within seconds).
                    batch_seconds = bare_seconds = 0.0
                    responses: list[bytes] = []
                    before = await _evalsha_usec(redis) if redis is not None else (0, 0)
                    for start in range(0, len(payloads), CHUNK):
                        seconds, answers = await _send_batches(
                            call, payloads[start : start + CHUNK]
                        )
                        batch_seconds += seconds
                        responses.extend(answers)
                        if redis is not None:
                            part = commands[start * BATCH : (start + CHUNK) * BATCH]
                            bare_seconds += await _send_bare(redis, part)
                    batch = _rate(people, batch_seconds)
                    batch["outcomes"] = _outcomes(responses)
                    batches.append(batch)
                    if redis is not None:
                        after = await _evalsha_usec(redis)
                        calls = after[0] - before[0]
                        bare = _rate(people, bare_seconds)
                        # Redis's own time per script (every client's EVALSHAs meanwhile).
                        bare["redis_usec_per_evalsha"] = (
                            round((after[1] - before[1]) / calls, 1) if calls else None
                        )
                        bares.append(bare)
                        ratios.append(bare_seconds / batch_seconds)  # batch rate / bare rate
                    del commands, payloads, responses
                single = await _single(channel, run, people, rate, count)
                floor = await _health_floor(channel, rate, count)
            finally:
                await channel.close()
        if batches:
            result["batch"] = {
                "decisions_per_second_median": _median(
                    [b["decisions_per_second"] for b in batches]
                ),
                "runs": batches,
            }
        if bares:
            result["bare_evalsha"] = {
                "decisions_per_second_median": _median([b["decisions_per_second"] for b in bares]),
                "runs": bares,
            }
            result["ratio_median"] = _median(ratios)
            result["ratios"] = [round(r, 3) for r in ratios]
        result["single"] = single
        result["health_check_floor"] = floor
    finally:
        if redis is not None:
            result["redis_keys_deleted"] = await delete_matching(redis, f"upmbench:{run}*")
            await redis.aclose()
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


ONLY_REDIS_SINGLE = "redis-single"


async def run(smoke: bool, only: str = "") -> dict[str, Any]:
    only = only or os.environ.get("UPM_BENCH_ORCH_ONLY", "")
    if only not in ("", ONLY_REDIS_SINGLE):
        raise ValueError(f"unknown part {only!r}; the one known part is {ONLY_REDIS_SINGLE!r}")
    people = 2_000 if smoke else 100_000
    sql_people = 500 if smoke else 20_000
    repeats = 1 if smoke else 3
    result: dict[str, Any] = {
        "rules_per_profile": 10,
        "batch_size": BATCH,
        "in_flight_batches": IN_FLIGHT,
        "repeats": repeats,
        "targets": {"batch_decisions_per_second": 20_000, "single_p99_ms_at_1000_rps": 5.0},
    }
    with tempfile.TemporaryDirectory() as folder:
        sqlite_url = f"sqlite+aiosqlite:///{folder}/bench.db"
        result["redis"] = await _measure(
            "redis",
            sqlite_url,
            people,
            rate=1000,
            count=500 if smoke else 10_000,
            # No batch passes (only their warm-up) when only the single decisions are wanted.
            repeats=0 if only else repeats,
        )
        if only:
            return result
        sqlite_sql = f"sqlite+aiosqlite:///{folder}/bench-sql.db"
        result["sql_sqlite"] = await _measure(
            "sql", sqlite_sql, sql_people, rate=200, count=100 if smoke else 2_000, repeats=repeats
        )
    created = await _postgres_database()
    if created is not None:
        name, url = created
        try:
            result["sql_postgres"] = await _measure(
                "sql", url, sql_people, rate=500, count=200 if smoke else 5_000, repeats=repeats
            )
        finally:
            await _drop_postgres(name)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--only", choices=[ONLY_REDIS_SINGLE], default="", help="measure only this part"
    )
    parser.add_argument("--serve", nargs=4, metavar=("BACKEND", "URL", "PROFILES", "RUN"))
    args = parser.parse_args()
    if args.serve:
        backend, url, profiles, run_id = args.serve
        from upm_common.server import run_event_loop

        # The server runs on the event loop the services' CLI gives it.
        run_event_loop(_serve(backend, url, int(profiles), run_id))
        return 0
    print(json.dumps(asyncio.run(run(args.smoke, args.only)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
