"""Ingest throughput: events/s accepted durably into Redis Streams, beside the raw ceilings.

Measured in one run, on one machine:
- grpc_batch: BatchIngest batches through the real ingest service (validation, enrichment,
  suppression, Redis `SET NX` dedup, XADD into Redis Streams, acknowledgement);
- http_batch: the same events as Segment JSON through the HTTP collector's /v1/batch;
- grpc_echo / http_echo: a bare grpc.aio server / bare aiohttp server answering the same batches
  with one result per event and doing nothing else (the transport's ceiling);
- xadd: the event log's own append of the same serialized events alone (one XADD per event,
  run by one script call per partition and batch, 8 batches in flight): the log's ceiling;
- redis_dedup_xadd: every Redis command the service sends for a batch (the append that sets
  each event's dedup mark, `SET NX EX`, and XADDs only the new ones, one script call per
  partition) and nothing else: the ceiling of the whole Redis side.
Beside each door's events/s, the ingest server's CPU time per event in that phase (from /proc): on
a shared machine the steadier figure; and the share of the phase's wall time the server spent on a
CPU (`*_server_core_pct`) and runnable but waiting for one (`*_server_runqueue_pct`, from
/proc/<pid>/task/*/schedstat). Their sum near 100 means the server always had work and only the
machine's other load held it back; what is missing from 100 is time it sat idle, waiting for the
client or Redis (the shares add up all the server's threads, so their sum can pass 100 a little).
Then the p50 / p99 acknowledgement latency of one batch at half the measured throughput, in an open
loop (batches sent on a fixed schedule, not waiting for each other), with batches of 100 events
(what Segment's server libraries flush at); the throughput phase sends batches of 500 with 8 in
flight.

Servers run in their own processes (the client is this process), so on a 2-core machine the
service gets one core and the load generator the other. Figures are medians of `runs` runs.
Every Redis key a run creates starts with `upmbench-ingest:<run id>:` and is deleted at the end.
Run: `python -m bench.ingest_throughput [--smoke] [--http-only]` (or through `python -m bench`;
`--http-only` skips the gRPC phases while working on the collector); needs Redis
(UPM_BENCH_REDIS_URL, else UPM_TEST_REDIS_URL, else redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
METHOD = "/upm.ingest.v1.IngestService/BatchIngest"


def _redis_url() -> str:
    return (
        os.environ.get("UPM_BENCH_REDIS_URL")
        or os.environ.get("UPM_TEST_REDIS_URL")
        or "redis://127.0.0.1:6379/0"
    )


def _event_dict(run: str, batch: int, i: int) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": f"{run}-{batch}-{i}",
        "anonymousId": f"anon-{(batch * 7919 + i) % 50000}",
        "event": "Product Viewed",
        "timestamp": "2026-01-01T12:00:00.000Z",
        "properties": {"sku": f"SKU-{i % 300}", "price": 19.99, "currency": "EUR"},
        "context": {
            "page": {"url": "https://shop.example.com/p/1?utm_source=google&utm_medium=cpc"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like "
            "Gecko) Chrome/124.0.0.0 Safari/537.36",
            "library": {"name": "analytics-python", "version": "2.3.0"},
        },
    }


def _grpc_batches(run: str, batches: int, size: int) -> list[bytes]:
    """Serialized BatchIngestRequest messages with unique message ids."""
    from upm.common.v1 import event_pb2
    from upm.ingest.v1 import ingest_service_pb2 as pb

    out = []
    for b in range(batches):
        request = pb.BatchIngestRequest()
        for i in range(size):
            data = _event_dict(run, b, i)
            event = request.events.add(
                type=event_pb2.EVENT_TYPE_TRACK,
                message_id=data["messageId"],
                anonymous_id=data["anonymousId"],
                event=data["event"],
            )
            event.event_time.FromJsonString(data["timestamp"])
            event.properties.update(data["properties"])
            event.context.page.url = data["context"]["page"]["url"]
            event.context.user_agent = data["context"]["userAgent"]
            event.context.library_name = "analytics-python"
        out.append(request.SerializeToString())
    return out


def _http_batches(run: str, batches: int, size: int) -> list[bytes]:
    import orjson

    return [
        orjson.dumps({"batch": [_event_dict(run, b, i) for i in range(size)]})
        for b in range(batches)
    ]


# -- servers (child processes) ----------------------------------------------------------------


async def _serve_ingest(redis_url: str, prefix: str) -> None:
    from upm_common.eventlog.redis import RedisEventLog
    from upm_common.logging import configure_logging
    from upm_common.migrations import upgrade
    from upm_common.redis import create_redis
    from upm_common.server import build_server, tune_garbage_collector
    from upm_ingest.server import build_ingest
    from upm_ingest.settings import IngestSettings
    from upm_ingest.store import SourceLimitOverrides

    # As `upm serve` does in production (JSON lines); unconfigured, structlog would render
    # every RPC's line for a terminal onto the pipe the parent stops reading after READY.
    configure_logging("json", os.environ.get("UPM_LOG_LEVEL", "warning"))
    folder = tempfile.mkdtemp(prefix="upm-bench-")
    database_url = f"sqlite+aiosqlite:///{folder}/bench.db"
    await upgrade(database_url, "eventlog")
    await upgrade(database_url, "ingest")
    settings = IngestSettings(
        database_url=database_url,
        redis_url=redis_url,
        event_log_backend="redis",
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        dedup_key_prefix=f"{prefix}dedup",
        rate_per_second=1e9,
        rate_burst=1_000_000_000,
    )
    redis = create_redis(redis_url)
    app = await build_ingest(
        settings, redis=redis, event_log=RedisEventLog(redis, prefix=f"{prefix}upm")
    )
    record, write_key = await app.registry.create("bench", SourceLimitOverrides())
    running = await build_server(settings, app.service_app.registrations, port=0)
    await running.server.start()
    tune_garbage_collector()  # as `upm serve` does once the app is built
    print(
        "READY "
        + json.dumps(
            {
                "grpc": running.port,
                "http": app.http_port,
                "key": write_key,
                "source": record.source_id,
            }
        ),
        flush=True,
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await running.server.stop(0)
    await app.close()
    shutil.rmtree(folder, ignore_errors=True)


async def _serve_echo() -> None:
    import grpc
    import orjson
    from aiohttp import web

    from upm.ingest.v1 import ingest_service_pb2 as pb

    def echo(request: pb.BatchIngestRequest, context: Any) -> pb.BatchIngestResponse:
        return pb.BatchIngestResponse(
            results=[
                pb.EventResult(
                    index=i, message_id=e.message_id, status=pb.EVENT_RESULT_STATUS_ACCEPTED
                )
                for i, e in enumerate(request.events)
            ]
        )

    async def handler(request: pb.BatchIngestRequest, context: Any) -> pb.BatchIngestResponse:
        return echo(request, context)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "upm.ingest.v1.IngestService",
                {
                    "BatchIngest": grpc.unary_unary_rpc_method_handler(
                        handler,
                        request_deserializer=pb.BatchIngestRequest.FromString,
                        response_serializer=pb.BatchIngestResponse.SerializeToString,
                    )
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def http_echo(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        return web.Response(
            body=orjson.dumps({"success": True, "accepted": len(body["batch"])}),
            content_type="application/json",
        )

    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_post("/v1/batch", http_echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_port = runner.addresses[0][1]
    print("READY " + json.dumps({"grpc": port, "http": http_port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)
    await runner.cleanup()


class Child:
    """A server child process that prints `READY {json}` and stops when its stdin closes."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.process: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}

    async def __aenter__(self) -> Child:
        env = {
            **os.environ,
            "UPM_LOG_LEVEL": "warning",
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT)]
                + [
                    str(ROOT / p)
                    for p in ("gen/python", "libs", "services/ingest", "services/profile")
                ]
            ),
        }
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.ingest_throughput",
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            cwd=str(ROOT),
        )
        assert self.process.stdout is not None
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout=60)
            if not line:
                raise RuntimeError(f"server {self.args} exited before it was ready")
            if line.startswith(b"READY "):
                self.info = json.loads(line[6:])
                return self

    def cpu_seconds(self) -> float | None:
        """CPU time the child has used so far (all its threads), from /proc; None elsewhere."""
        assert self.process is not None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def scheduler_seconds(self) -> tuple[float, float] | None:
        """(seconds on a CPU, seconds runnable but waiting for one) of all the child's threads,
        from /proc/<pid>/task/*/schedstat; None where the kernel does not keep them."""
        assert self.process is not None
        running = waiting = 0
        try:
            threads = os.listdir(f"/proc/{self.process.pid}/task")
        except OSError:
            return None
        for thread in threads:
            try:
                fields = Path(f"/proc/{self.process.pid}/task/{thread}/schedstat").read_text()
            except OSError:
                continue  # a thread that ended meanwhile
            on_cpu, queued, _ = fields.split()
            running += int(on_cpu)
            waiting += int(queued)
        return running / 1e9, waiting / 1e9

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout=10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


# -- load generation --------------------------------------------------------------------------

Send = Callable[[bytes], Awaitable[int]]


def _quiet_gc() -> None:
    """Keep the load generator's own garbage collection out of the measured latencies."""
    gc.collect()
    gc.freeze()


async def _drive(send: Send, bodies: list[bytes], concurrency: int) -> dict[str, float]:
    """Send every body with `concurrency` in flight; events/s and ack latency percentiles."""
    _quiet_gc()
    latencies: list[float] = []
    queue = list(reversed(bodies))
    events = 0

    async def worker() -> None:
        nonlocal events
        while queue:
            body = queue.pop()
            started = time.perf_counter()
            accepted = await send(body)  # not `events += await ...`: that reads `events` first
            events += accepted
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"events_per_second": events / elapsed, **_percentiles(latencies)}


async def _paced(send: Send, bodies: list[bytes], per_second: float, size: int) -> dict[str, float]:
    """Send batches at a fixed event rate (open loop); ack latency percentiles."""
    _quiet_gc()
    interval = size / per_second
    latencies: list[float] = []
    tasks = []
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(body: bytes) -> None:
        began = time.perf_counter()
        await send(body)
        latencies.append(time.perf_counter() - began)

    for index, body in enumerate(bodies):
        delay = start + index * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(body)))
    await asyncio.gather(*tasks)
    return _percentiles(latencies)


async def _server_cpu(server: Child, measured: Awaitable[dict[str, float]]) -> dict[str, float]:
    """`measured`'s figures plus the server's CPU time per event during it (0 without /proc),
    and how the server spent the phase's wall time: on a CPU (`server_core_share`, 1.0 = one
    whole core) and runnable but waiting for a CPU (`server_runqueue_share`).

    The machine is shared: events/s swing with what else runs, CPU time per event much less.
    The two shares tell why a server short of 100% of a core was: their sum near 1 means it
    always had work and the machine's other load kept it off the CPU; well below 1 means it
    sat idle, waiting for the client or Redis.
    """
    before = server.cpu_seconds()
    sched_before = server.scheduler_seconds()
    started = time.perf_counter()
    figures = await measured
    after = server.cpu_seconds()
    sched_after = server.scheduler_seconds()
    elapsed = time.perf_counter() - started
    events = figures["events_per_second"] * elapsed
    used = after - before if after is not None and before is not None else 0.0
    shares = {"server_core_share": 0.0, "server_runqueue_share": 0.0}
    if sched_before is not None and sched_after is not None:
        shares = {
            "server_core_share": (sched_after[0] - sched_before[0]) / elapsed,
            "server_runqueue_share": (sched_after[1] - sched_before[1]) / elapsed,
        }
    return {**figures, "server_cpu_us_per_event": used / max(events, 1) * 1e6, **shares}


def _percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50_ms": pick(0.50), "p99_ms": pick(0.99)}


def _grpc_sender(port: int, key: str) -> tuple[Any, Send]:
    import grpc

    from upm.ingest.v1 import ingest_service_pb2 as pb

    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    )
    call = channel.unary_unary(
        METHOD,
        request_serializer=lambda raw: raw,
        response_deserializer=pb.BatchIngestResponse.FromString,
    )
    metadata = (("x-upm-write-key", key),) if key else ()

    async def send(body: bytes) -> int:
        response = await call(body, metadata=metadata, timeout=60)
        accepted = sum(1 for r in response.results if r.status == pb.EVENT_RESULT_STATUS_ACCEPTED)
        return accepted

    return channel, send


def _http_sender(session: Any, port: int, key: str) -> Send:
    import base64

    import orjson

    url = f"http://127.0.0.1:{port}/v1/batch"
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()

    async def send(body: bytes) -> int:
        async with session.post(url, data=body, headers=headers) as response:
            answer = orjson.loads(await response.read())
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {answer}")
            return int(answer["accepted"])

    return send


def _log_entries(bodies: list[bytes]) -> list[list[tuple[str, str, bytes]]]:
    """(message id, log key, payload) of each batch's events, as the service appends them."""
    from upm.ingest.v1 import ingest_service_pb2 as pb

    return [
        [
            (e.message_id, e.user_id or e.anonymous_id, e.SerializeToString())
            for e in pb.BatchIngestRequest.FromString(body).events
        ]
        for body in bodies
    ]


async def _bare_redis(
    redis_url: str, prefix: str, bodies: list[bytes], concurrency: int, *, dedup: bool
) -> float:
    """Events/s of the Redis work alone, batch by batch with `concurrency` batches in flight.

    Without `dedup`: the log's append of each batch (one XADD per event, run by one script
    call per partition, all of a batch's calls in one round trip) -- the bare XADD ceiling.
    With `dedup`: the service's append, which also sets each event's dedup mark and appends
    only new events (`RedisStreamsAppender`), without gRPC, HTTP, validation or enrichment.
    """
    from upm_common.eventlog import EVENTS, LogRecord
    from upm_common.eventlog.redis import RedisEventLog
    from upm_common.redis import create_redis
    from upm_ingest.appenders import RedisStreamsAppender

    redis = create_redis(redis_url)
    name = "dedup" if dedup else "xadd"
    log = RedisEventLog(redis, prefix=f"{prefix}{name}")
    appender = RedisStreamsAppender(log, prefix=f"{prefix}{name}-dedup", window_seconds=600)
    batches = _log_entries(bodies)
    log_records = [[LogRecord(key, payload) for _, key, payload in batch] for batch in batches]
    # Load the script outside the measurement.
    if dedup:
        await appender.append("bench", [(WARM_UP_ID, *batches[0][0][1:])])
    else:
        await log.append(EVENTS, log_records[0][:1])
    queue = list(reversed(range(len(batches))))
    total = 0

    async def worker() -> None:
        nonlocal total
        while queue:
            index = queue.pop()
            if dedup:
                await appender.append("bench", batches[index])
            else:
                await log.append(EVENTS, log_records[index])
            total += len(batches[index])

    _quiet_gc()
    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)
    finally:
        await redis.aclose()


def _message_ids(run: str, batches: int, size: int) -> list[str]:
    """The message ids `_grpc_batches` / `_http_batches` give these batches."""
    return [f"{run}-{b}-{i}" for b in range(batches) for i in range(size)]


async def _cleanup(redis_url: str, keys: list[str]) -> None:
    """Delete the keys a run created: named one by one, so no SCAN walks a shared keyspace."""
    from upm_common.redis import create_redis

    redis = create_redis(redis_url)
    try:
        for start in range(0, len(keys), 1000):
            await redis.unlink(*keys[start : start + 1000])
    finally:
        await redis.aclose()


def _created_keys(prefix: str, source_id: str, sent: list[str]) -> list[str]:
    """Every Redis key a run creates (see `_serve_ingest` and `_bare_redis`)."""
    keys = [f"{prefix}{log}:{{events:{p}}}" for log in ("upm", "xadd", "dedup") for p in range(8)]
    if source_id:
        keys += [f"{prefix}dedup:{{{source_id}}}:{m}" for m in sent]
    keys += [f"{prefix}dedup-dedup:{{bench}}:{m}" for m in [*sent, WARM_UP_ID]]
    return keys


WARM_UP_ID = "warm-up"
"""The message id `_bare_redis` sends before measuring, to load the scripts."""

KEY_PREFIX = "upmbench-ingest:"
"""Every Redis key a run creates starts with this plus the run's id; the run deletes them."""

LATENCY_BATCH = 100
"""Events per batch in the latency phase: what Segment's server libraries flush at."""


def _paced_count(per_second: float, smoke: bool) -> int:
    """Batches for about three seconds of paced load (a handful when smoke testing)."""
    if smoke:
        return 5
    return max(20, min(600, int(per_second * 3 / LATENCY_BATCH)))


def _door_figures(
    door: str, real: dict[str, Any], echo: dict[str, Any], latency: dict[str, Any]
) -> dict[str, Any]:
    """One door's figures for the report, each key prefixed with the door's name."""
    return {
        f"{door}_events_per_second": real["events_per_second"],
        f"{door}_echo_events_per_second": echo["events_per_second"],
        f"{door}_server_cpu_us_per_event": real["server_cpu_us_per_event"],
        f"{door}_server_core_pct": real["server_core_share"] * 100,
        f"{door}_server_runqueue_pct": real["server_runqueue_share"] * 100,
        f"{door}_p99_ms_full_load": real["p99_ms"],
        f"{door}_p50_ms_half_load": latency["p50_ms"],
        f"{door}_p99_ms_half_load": latency["p99_ms"],
    }


async def _one_run(run: int, smoke: bool, redis_url: str, *, http_only: bool) -> dict[str, float]:
    import aiohttp

    size = 50 if smoke else 500
    batches = 4 if smoke else 120
    concurrency = 2 if smoke else 8
    prefix = f"{KEY_PREFIX}{uuid.uuid4().hex[:8]}:"
    tag = uuid.uuid4().hex[:8]
    grpc_bodies = _grpc_batches(f"g{tag}", batches, size)
    http_bodies = _http_batches(f"h{tag}", batches, size)
    sent = _message_ids(f"g{tag}", batches, size) + _message_ids(f"h{tag}", batches, size)
    # One batch through each server before its measurement, as the Redis phases load their
    # scripts first: a serving process has its connections, caches and heap in place.
    [grpc_warm_up] = _grpc_batches(f"gw{tag}", 1, size)
    [http_warm_up] = _http_batches(f"hw{tag}", 1, size)
    sent += _message_ids(f"gw{tag}", 1, size) + _message_ids(f"hw{tag}", 1, size)
    source_id = ""
    result: dict[str, float] = {}
    try:
        async with Child("echo") as echo, Child("serve", redis_url, prefix) as ingest:
            key = ingest.info["key"]
            source_id = ingest.info["source"]

            async def measure(
                door: str,
                send: Send,
                *,
                bodies: list[bytes],
                warm_up: bytes,
                paced_batches: Callable[[str, int, int], list[bytes]],
                echo_figures: dict[str, float],
            ) -> None:
                """One door of the ingest server: throughput, then latency at half of it."""
                await send(warm_up)
                real = await _server_cpu(ingest, _drive(send, bodies, concurrency))
                half = real["events_per_second"] / 2
                count = _paced_count(half, smoke)
                paced_run = f"{door[0]}p{tag}"
                sent.extend(_message_ids(paced_run, count, LATENCY_BATCH))
                paced = paced_batches(paced_run, count, LATENCY_BATCH)
                latency = await _paced(send, paced, half, LATENCY_BATCH)
                result.update(_door_figures(door, real, echo_figures, latency))

            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency)
            ) as session:
                if not http_only:
                    channel, send = _grpc_sender(echo.info["grpc"], "")
                    await send(grpc_warm_up)
                    echo_grpc = await _drive(send, grpc_bodies, concurrency)
                    await channel.close()
                    channel, send = _grpc_sender(ingest.info["grpc"], key)
                    await measure(
                        "grpc",
                        send,
                        bodies=grpc_bodies,
                        warm_up=grpc_warm_up,
                        paced_batches=_grpc_batches,
                        echo_figures=echo_grpc,
                    )
                    await channel.close()
                send_echo = _http_sender(session, echo.info["http"], "")
                await send_echo(http_warm_up)
                echo_http = await _drive(send_echo, http_bodies, concurrency)
                send_http = _http_sender(session, ingest.info["http"], key)
                await measure(
                    "http",
                    send_http,
                    bodies=http_bodies,
                    warm_up=http_warm_up,
                    paced_batches=_http_batches,
                    echo_figures=echo_http,
                )
        result["xadd_events_per_second"] = await _bare_redis(
            redis_url, prefix, grpc_bodies, concurrency, dedup=False
        )
        result["redis_dedup_xadd_events_per_second"] = await _bare_redis(
            redis_url, prefix, grpc_bodies, concurrency, dedup=True
        )
    finally:
        await _cleanup(redis_url, _created_keys(prefix, source_id, sent))
    return result


def _ratio(median: dict[str, float], top: str, bottom: str) -> float | None:
    """median[top] / median[bottom], or None when a phase did not run."""
    if top not in median or bottom not in median:
        return None
    return round(median[top] / median[bottom], 3)


async def run(smoke: bool, *, http_only: bool = False) -> dict[str, Any]:
    """The benchmark entry point used by `python -m bench`; `http_only` skips the gRPC phases
    (quicker while working on the collector)."""
    runs = 1 if smoke else 5
    redis_url = _redis_url()
    samples = [await _one_run(i, smoke, redis_url, http_only=http_only) for i in range(runs)]
    median = {name: statistics.median(s[name] for s in samples) for name in samples[0]}
    rounded = {name: round(value, 1) for name, value in median.items()}
    ratios = {
        "grpc_vs_grpc_echo": _ratio(
            median, "grpc_events_per_second", "grpc_echo_events_per_second"
        ),
        "grpc_vs_xadd": _ratio(median, "grpc_events_per_second", "xadd_events_per_second"),
        "http_vs_http_echo": _ratio(
            median, "http_events_per_second", "http_echo_events_per_second"
        ),
        "http_vs_xadd": _ratio(median, "http_events_per_second", "xadd_events_per_second"),
        "grpc_vs_redis_dedup_xadd": _ratio(
            median, "grpc_events_per_second", "redis_dedup_xadd_events_per_second"
        ),
        "http_vs_redis_dedup_xadd": _ratio(
            median, "http_events_per_second", "redis_dedup_xadd_events_per_second"
        ),
    }
    return {
        "runs": runs,
        "batch_size": 50 if smoke else 500,
        "latency_batch_size": LATENCY_BATCH,
        "median": rounded,
        "ratios": {name: value for name, value in ratios.items() if value is not None},
        "targets": {
            "grpc_events_per_second": 50_000,
            "http_events_per_second": 20_000,
            "p99_ms_half_load": 50,
        },
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve")
    serve.add_argument("redis_url")
    serve.add_argument("prefix")
    sub.add_parser("echo")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--http-only", action="store_true", help="skip the gRPC phases (HTTP and Redis only)"
    )
    args = parser.parse_args()
    if args.command == "serve":
        asyncio.run(_serve_ingest(args.redis_url, args.prefix))
    elif args.command == "echo":
        asyncio.run(_serve_echo())
    else:
        with contextlib.suppress(KeyboardInterrupt):
            print(json.dumps(asyncio.run(run(args.smoke, http_only=args.http_only)), indent=2))


if __name__ == "__main__":
    main()
