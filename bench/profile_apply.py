"""Profile apply throughput on PostgreSQL, beside a raw COPY of the same rows.

The mix follows the issue: 60% anonymous page views, 20% identified tracks, 10% identifies that
link an anonymous id to a known user (with traits), 10% purchases (`Order Completed`). A feeder
appends the events to the SQL event log as ingest does, keeping at most UPM_BENCH_PROFILE_BACKLOG
(10,000) waiting, while ProfileWorkers in several processes consume it through the service's
consuming loop (`ProfileWorker.consume`, what `run` does): claim, decode, identity resolution,
traits, aggregates, change feed, acknowledge, each batch acknowledged while the next one is claimed
and applied. The change feed has the consumer groups of a whole deployment (segment, orchestrator
outcomes, ingest suppressions), so that on the SQL log each change record is fanned out to their
deliveries as in production; nothing consumes them here. The batch size is the service's default.
The rate is events over the time from the workers' start to the last acknowledgement. Beside it:
the CPU the workers and their PostgreSQL backends spent per event (read from /proc; the wall-clock
rate moves with the machine's other load). The ceiling is a COPY of the same number of rows into a
bare table shaped like profile_events, measured on the same database in the same run. Beside it,
two more ceilings, each the same feeder and workers on another fresh database: the storage floor,
whose workers write only the rows the issue asks of every event (the ledger check, the event, its
ledger entry, its count and daily bucket, its profile's update time; no identity resolution,
traits, consent, merges or change feed), which is what storing the events alone allows; and the
pipeline ceiling, whose workers claim, decode and acknowledge every event but apply none, which is
what the log and the decoding leave for the profile work. Each run uses a fresh database; the
figures are those of the median run (all runs are listed). Tune with
UPM_BENCH_PROFILE_PROCESSES / _WORKERS (per process) / _BATCH / _BACKLOG.

A second measure appends events to the SQL event log at a fixed rate while two worker processes
consume it, and reports the latency from the append being acknowledged to the commit of the
apply that makes the event readable (p50 / p99 / max, wall clock across processes), and the
same percentiles for each stage of that latency (waiting in the log, claim to apply, apply to
commit) with the sizes of the applied batches. UPM_BENCH_PROFILE_LATENCY_ONLY=1 runs only this
measure, UPM_BENCH_PROFILE_LATENCY_RATES (e.g. "5000") picks its rates.

A third measure, `burst`, has one worker apply 12,000 events in batches of 200, as under light
load, then a burst of 20,000 events appended at once; beside it, a worker applies the same events
in batches of the default size, then the same burst. Their ratio shows whether what a worker
settles on under light load (such as PostgreSQL's cached plans of its statements) slows it when
the load rises.

The throughput is measured on each event-log transport (UPM_BENCH_PROFILE_TRANSPORTS, default
"sql,redis"): `sql` is the all-PostgreSQL deployment (the log, its claims and acknowledgements,
and the change feed are tables in the same database); `redis` is the deployment the Kubernetes
chart recommends (ingest appends to Redis Streams, the workers claim from them, and the change
feed goes through the outbox table to a relay in each worker process, as in each profile pod).
With `redis` the run also waits for the relays to empty the outbox and reports how long that
took after the last acknowledgement. The latency measure uses the SQL log.

Run: `python -m bench.profile_apply [--smoke]` (needs PostgreSQL on 127.0.0.1:5432, and Redis on
127.0.0.1:6379 for the `redis` transport).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2
from redis.asyncio import Redis
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from upm.common.v1 import event_pb2
from upm_common.db import create_engine, driver_connection
from upm_common.eventlog import EVENTS, PROFILE_CHANGES, Delivery, EventLog, LogRecord
from upm_common.eventlog.redis import RedisEventLog
from upm_common.eventlog.sql import SqlEventLog
from upm_common.migrations import upgrade
from upm_common.redis import create_redis, delete_matching
from upm_common.server import run_event_loop, tune_garbage_collector
from upm_common.settings import CommonSettings
from upm_ingest.events import identity_key
from upm_ingest.server import SUPPRESSION_GROUP
from upm_profile.changes import OutboxPublisher, SqlLogPublisher, relay_forever
from upm_profile.effects import EventEffects, public_event_id
from upm_profile.identifiers import BlockList
from upm_profile.settings import ProfileSettings
from upm_profile.store.base import ApplyResult
from upm_profile.store.sql import SqlProfileStore
from upm_profile.store.tables import applied_events, outbox, profiles
from upm_profile.worker import GROUP, ProfileWorker

# The service's default batch size unless told otherwise.
BATCH = int(
    os.environ.get(
        "UPM_BENCH_PROFILE_BATCH",
        str(ProfileSettings.model_fields["profile_worker_batch_size"].default),
    )
)
PROCESSES = int(os.environ.get("UPM_BENCH_PROFILE_PROCESSES", "2"))
# One worker per process, as the service's default (UPM_PROFILE_WORKER_CONCURRENCY): two in one
# process measured slower, since they queue behind each other's identifier locks.
TASKS_PER_PROCESS = int(os.environ.get("UPM_BENCH_PROFILE_WORKERS", "1"))
# Events waiting in the log at most while the feeder appends (the streaming load).
BACKLOG = int(os.environ.get("UPM_BENCH_PROFILE_BACKLOG", "10000"))
FEED_CHUNK = 2_000
PENDING_POLL_SECONDS = 0.1
# How long a worker's claim waits for events when the log is empty (the log polls meanwhile).
IDLE_POLL_SECONDS = 0.05
TRANSPORTS = [
    t.strip()
    for t in os.environ.get("UPM_BENCH_PROFILE_TRANSPORTS", "sql,redis").split(",")
    if t.strip()
]
REDIS_URL = os.environ.get("UPM_BENCH_REDIS_URL") or os.environ.get(
    "UPM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"
)
LATENCY_PROCESSES = 2
LATENCY_BATCH = BATCH
# Set to run only the latency measure (while iterating on it); the rates it offers, comma
# separated, default to 1,000/s and 5,000/s (500/s with --smoke).
LATENCY_ONLY = os.environ.get("UPM_BENCH_PROFILE_LATENCY_ONLY", "") not in ("", "0")
LATENCY_RATES = [
    int(r) for r in os.environ.get("UPM_BENCH_PROFILE_LATENCY_RATES", "").split(",") if r.strip()
]
START = datetime(2026, 1, 1, tzinfo=UTC)
# The burst measure: light load as this many batches of this many events (about what the
# latency measure's 5,000 events/s gives), then one burst.
BURST_LIGHT_BATCH = 200
BURST_LIGHT_BATCHES = 60
BURST_EVENTS = 20_000


def _server_url() -> str:
    url = os.environ.get("UPM_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    return url.replace("postgresql+asyncpg://", "postgresql://")


def generate(count: int, seed: int = 1) -> list[event_pb2.Event]:
    """`count` events of the issue's mix over count/20 people with three devices each."""
    rng = random.Random(seed)
    people = max(10, count // 20)
    result = []
    for index in range(count):
        person = rng.randrange(people)
        anon = f"anon-{person}-{rng.randrange(3)}"
        roll = rng.random()
        event = event_pb2.Event(message_id=f"m-{index}", source_id="bench")
        if roll < 0.6:
            event.type = event_pb2.EVENT_TYPE_PAGE
            event.anonymous_id = anon
            event.name = rng.choice(["Home", "Product", "Pricing", "Blog", "Cart"])
            event.context.page.path = "/" + event.name.lower()
        elif roll < 0.8:
            event.type = event_pb2.EVENT_TYPE_TRACK
            event.user_id = f"user-{person}"
            event.event = rng.choice(["Product Viewed", "Email Opened", "Added to Cart"])
            event.properties.update({"channel": "email", "campaign_id": f"c{rng.randrange(20)}"})
        elif roll < 0.9:
            event.type = event_pb2.EVENT_TYPE_IDENTIFY
            event.user_id = f"user-{person}"
            event.anonymous_id = anon
            event.traits.update(
                {
                    "email": f"person{person}@corp.io",
                    "plan": rng.choice(["free", "pro"]),
                    "$increment": {"logins": 1},
                }
            )
        else:
            event.type = event_pb2.EVENT_TYPE_TRACK
            event.user_id = f"user-{person}"
            event.event = "Order Completed"
            revenue = round(rng.uniform(5, 200), 2)
            products = struct_pb2.ListValue()
            product = struct_pb2.Struct()
            product.update({"sku": f"sku-{rng.randrange(100)}", "price": revenue, "quantity": 1})
            products.append(product)
            event.properties.update({"order_id": f"o-{index}", "revenue": revenue})
            event.properties.fields["products"].list_value.CopyFrom(products)
        event.event_time.FromDatetime(START + timedelta(seconds=index))
        event.received_time.FromDatetime(START + timedelta(seconds=index, milliseconds=50))
        result.append(event)
    return result


async def _create_database() -> tuple[str, str]:
    import asyncpg

    server = _server_url().rsplit("/", 1)[0]
    name = f"upm_bench_profile_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(server + "/postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, server.replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"


async def _migrate(url: str) -> None:
    await upgrade(url, "eventlog")
    await upgrade(url, "profile")


async def _drop_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_server_url().rsplit("/", 1)[0] + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _log_record(event: event_pb2.Event) -> LogRecord:
    """The event as ingest appends it to the log (keyed by its identity)."""
    return LogRecord(key=identity_key(event), payload=event.SerializeToString())


@asynccontextmanager
async def _fresh_database() -> AsyncIterator[str]:
    """A new, migrated database for one measure (its URL), dropped afterwards."""
    name, url = await _create_database()
    try:
        await _migrate(url)
        yield url
    finally:
        await _drop_database(name)


def _event_log(transport: str, engine: AsyncEngine, prefix: str) -> tuple[EventLog, Redis | None]:
    """The event log of a transport, and the Redis client it uses (to close)."""
    if transport == "sql":
        return SqlEventLog(engine), None
    if transport != "redis":
        raise ValueError(f"unknown transport {transport!r}: sql or redis")
    redis = create_redis(REDIS_URL)
    return RedisEventLog(redis, prefix=prefix), redis


# The consumer groups a whole deployment keeps on the change feed (segment workers, the
# orchestrator's outcome feed, ingest's suppression feed): on the SQL log each change record the
# workers append is fanned out to one delivery row per group, in the apply's transaction.
CHANGE_FEED_GROUPS = (
    CommonSettings.model_fields["segment_consumer_group"].default,
    CommonSettings.model_fields["orchestrator_consumer_group"].default,
    SUPPRESSION_GROUP,
)


async def _ensure_groups(log: EventLog) -> None:
    """The profile workers' group on the events, and the change feed's groups (nobody consumes
    those here: their deliveries wait, as they would behind busy consumers)."""
    await log.ensure_group(EVENTS, GROUP)
    for group in CHANGE_FEED_GROUPS:
        await log.ensure_group(PROFILE_CHANGES, group)


@dataclass(frozen=True, kw_only=True)
class _Setup:
    """Where one throughput run happens: its database, transport and Redis key prefix, and
    which store the workers apply through (the service's, or one of the two ceilings')."""

    url: str
    transport: str
    prefix: str
    tasks: int = TASKS_PER_PROCESS
    batch: int = BATCH
    store: type[SqlProfileStore] = SqlProfileStore


class _NothingApplied(SqlProfileStore):
    """A store whose apply does nothing: what the log and decoding alone let workers reach
    (the pipeline ceiling)."""

    async def apply(
        self, batch: Sequence[EventEffects], *, wait_for_busy: bool = True
    ) -> ApplyResult:
        return ApplyResult(len(batch), 0, 0, 0, {})


class _RowsOnly(SqlProfileStore):
    """A store that writes only the rows the issue asks of every event, through the service
    store's own statements: the ledger check, the event row, its ledger entry, its count and
    daily bucket, and its profile's update time. There is no identity resolution (an event's
    profile is a hash of its first identifier, created if missing), and no traits, consent,
    merges or change feed: what storing the events alone lets workers reach (the storage floor).
    """

    async def apply(
        self, batch: Sequence[EventEffects], *, wait_for_busy: bool = True
    ) -> ApplyResult:
        unique = {e.id: e for e in batch if e.identifiers}

        async def work(conn: Any) -> ApplyResult:
            driver = await driver_connection(conn)
            seen = {
                row[0]
                for row in await driver.fetch(
                    "SELECT id FROM profile_applied_events WHERE id = ANY($1::text[])",
                    list(unique),
                )
            }
            assigned = [
                (hashlib.md5(str(e.identifiers[0]).encode()).hexdigest(), e)
                for e in unique.values()
                if e.id not in seen
            ]
            now = datetime.now(UTC)
            touched = sorted({pid for pid, _ in assigned})
            await driver.execute(
                "INSERT INTO profile_profiles (id, created_time, updated_time)"
                " SELECT p, $2, $2 FROM unnest($1::text[]) AS p ON CONFLICT DO NOTHING",
                touched,
                now,
            )
            await self._insert_events(conn, assigned)
            counts, daily = self._aggregate_adds(assigned)
            await self._add_aggregates_pg(conn, counts, daily, [(p, None) for p in touched], now)
            await self._record_applied(conn, assigned, now)
            return ApplyResult(len(assigned), len(seen), 0, len(batch) - len(unique), {})

        result: ApplyResult = await self._transaction(work)
        return result


async def _feed_log(
    setup: _Setup, payloads: Sequence[bytes], keys: Sequence[str], done: Any, acked: Any
) -> tuple[float, float | None]:
    """Append every event to the event log as ingest does, keeping at most BACKLOG events
    waiting (a streaming load, not one huge backlog); sets `done` after the last append.
    `acked` maps each worker to the events it acknowledged so far. Returns the seconds spent
    appending and the CPU seconds of its database backend."""
    engine = create_engine(setup.url)
    log, redis = _event_log(setup.transport, engine, setup.prefix)
    backend = _BackendCpu(engine)
    spent = 0.0
    try:
        for offset in range(0, len(payloads), FEED_CHUNK):
            # Waiting: appended and not yet acknowledged. Counted from the workers' reports, not
            # by asking the log: a count of the SQL log's deliveries scans them, and polled
            # every 0.1 s it took about 4% of the machine (15 us of PostgreSQL per event) from
            # the workers being measured; ingest never asks. (Polled: the count lives in other
            # processes, with no event to wait on.)
            while offset - sum(acked.values()) > BACKLOG - FEED_CHUNK:  # noqa: ASYNC110
                await asyncio.sleep(PENDING_POLL_SECONDS)
            started = time.perf_counter()
            await log.append(
                EVENTS,
                [
                    LogRecord(key=k, payload=p)
                    for k, p in zip(
                        keys[offset : offset + FEED_CHUNK],
                        payloads[offset : offset + FEED_CHUNK],
                        strict=True,
                    )
                ],
            )
            spent += time.perf_counter() - started
    finally:
        done.set()
        db_cpu = backend.seconds() if setup.transport == "sql" else 0.0
        if redis is not None:
            await redis.aclose()
        await engine.dispose()
    return spent, db_cpu


class _BackendCpu:
    """CPU seconds used by the PostgreSQL backends of an engine's connections, read from /proc
    (the benchmark's server runs on this machine); None when /proc does not show them. The
    wall-clock rate moves with the machine's other load, CPU per event much less. A connection
    the pool closes during the run (an overflow one, once returned) is read as it closes,
    before its backend exits."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.pids: set[int] = set()
        # What the backends of closed connections had spent as they closed (None: unread).
        self.closed: list[float | None] = []

        @sa_event.listens_for(engine.sync_engine, "connect")
        def _record(dbapi_connection: Any, _record: Any) -> None:
            self.pids.add(dbapi_connection.driver_connection.get_server_pid())

        @sa_event.listens_for(engine.sync_engine, "close")
        def _closing(dbapi_connection: Any, _record: Any) -> None:
            pid = dbapi_connection.driver_connection.get_server_pid()
            if pid in self.pids:
                self.pids.discard(pid)
                self.closed.append(_backend_seconds(pid))

    def seconds(self) -> float | None:
        spent = self.closed + [_backend_seconds(pid) for pid in self.pids]
        return None if None in spent else sum(s for s in spent if s is not None)


def _backend_seconds(pid: int) -> float | None:
    """utime + stime of a PostgreSQL backend on this machine, or None if /proc lacks it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _TimedLog:
    """An event log, timing the claims and acknowledgements of the workers (summed over the
    process) and reporting how many events each worker acknowledged (to the feeder)."""

    claim_seconds = 0.0
    ack_seconds = 0.0

    def __init__(self, inner: EventLog, acked: Any, name: str) -> None:
        self.inner = inner
        self.acked = acked
        self.name = name
        self.count = 0

    async def append(self, topic: str, records: Sequence[LogRecord]) -> list[str]:
        return await self.inner.append(topic, records)

    async def ensure_group(self, topic: str, group: str) -> None:
        await self.inner.ensure_group(topic, group)

    async def pending(self, topic: str, group: str) -> int:
        return await self.inner.pending(topic, group)

    async def close(self) -> None:
        await self.inner.close()

    async def claim(
        self, topic: str, group: str, consumer: str, max_count: int, **kwargs: Any
    ) -> list[Delivery]:
        started = time.perf_counter()
        try:
            return await self.inner.claim(topic, group, consumer, max_count, **kwargs)
        finally:
            _TimedLog.claim_seconds += time.perf_counter() - started

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        started = time.perf_counter()
        try:
            await self.inner.ack(topic, group, ids)
        finally:
            _TimedLog.ack_seconds += time.perf_counter() - started
        self.count += len(ids)
        self.acked[self.name] = self.count


async def _drain_share(setup: _Setup, done: Any, acked: Any) -> dict[str, Any]:
    """One process: `tasks` ProfileWorkers (own engine each) claiming, applying and
    acknowledging until the feed is done and the log holds nothing unclaimed; with the Redis
    transport, also the outbox relay a profile pod runs, until the outbox is empty."""
    workers = []
    backends = []
    clients = []
    for index in range(setup.tasks):
        engine = create_engine(setup.url)
        backends.append(_BackendCpu(engine))
        event_log, redis = _event_log(setup.transport, engine, setup.prefix)
        if redis is not None:
            clients.append(redis)
        publisher = (
            SqlLogPublisher(event_log) if isinstance(event_log, SqlEventLog) else OutboxPublisher()
        )
        store = setup.store(engine, publisher)
        consumer = f"bench-{os.getpid()}-{index}"
        workers.append(
            ProfileWorker(
                store,
                _TimedLog(event_log, acked, consumer),  # type: ignore[arg-type]
                blocklist=store.blocklist,
                consumer=consumer,
                batch_size=setup.batch,
            )
        )
    # As `upm serve` and `upm worker` do once a service's app is built.
    tune_garbage_collector()
    relays = [
        asyncio.create_task(relay_forever(w.store.engine, w.event_log, idle_seconds=0.05))
        for w in workers
        if not isinstance(w.store.publisher, SqlLogPublisher)
    ]
    started = time.time()
    cpu = time.process_time()
    # The service's consuming loop (ProfileWorker.run), stopping once the feed is done and a
    # claim finds nothing left.
    counts = await asyncio.gather(
        *(w.consume(block_seconds=IDLE_POLL_SECONDS, until=done.is_set) for w in workers)
    )
    handled = sum(counts)
    finished = time.time()
    relayed = finished
    if relays:
        # The outbox is a table: nothing signals that it is empty.
        while await _outbox_size(workers[0].store.engine):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        relayed = time.time()
        for relay in relays:
            relay.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
    cpu = time.process_time() - cpu
    db_cpu = [b.seconds() for b in backends]
    for worker in workers:
        await worker.store.engine.dispose()
    for client in clients:
        await client.aclose()
    return {
        "handled": handled,
        "started": started,
        "finished": finished,
        "relayed": relayed,
        "cpu": cpu,
        "db_cpu": None if None in db_cpu else sum(c for c in db_cpu if c is not None),
        "claim": _TimedLog.claim_seconds,
        "ack": _TimedLog.ack_seconds,
    }


async def _outbox_size(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(outbox)) or 0)


def _process_main(setup: _Setup, done: Any, acked: Any) -> dict[str, Any]:
    return run_event_loop(_drain_share(setup, done, acked))


async def _apply_throughput(
    setup: _Setup, payloads: Sequence[bytes], keys: Sequence[str], processes: int
) -> dict[str, Any]:
    engine = create_engine(setup.url)
    log, redis = _event_log(setup.transport, engine, setup.prefix)
    await _ensure_groups(log)
    if redis is not None:
        await redis.aclose()
    await engine.dispose()
    try:
        return await _apply_throughput_on(setup, payloads, keys, processes)
    finally:
        if setup.transport == "redis":
            redis = create_redis(REDIS_URL)
            try:
                await delete_matching(redis, f"{setup.prefix}:*")
            finally:
                await redis.aclose()


async def _apply_throughput_on(
    setup: _Setup, payloads: Sequence[bytes], keys: Sequence[str], processes: int
) -> dict[str, Any]:
    url, tasks, transport = setup.url, setup.tasks, setup.transport
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    with (
        context.Manager() as manager,
        ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool,
    ):
        done = manager.Event()
        acked = manager.dict()
        # Start the interpreters first so that start-up is not timed.
        await asyncio.gather(*(loop.run_in_executor(pool, _warm) for _ in range(processes)))
        feeding = asyncio.create_task(_feed_log(setup, payloads, keys, done, acked))
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(pool, _process_main, setup, done, acked)
                for _ in range(processes)
            )
        )
        append_seconds, feed_db_cpu = await feeding
    handled = sum(p["handled"] for p in parts)
    if handled < len(payloads):
        # A rate over events the workers never took would be no measure at all.
        raise RuntimeError(f"the workers handled {handled} of {len(payloads)} events")
    seconds = max(p["finished"] for p in parts) - min(p["started"] for p in parts)
    db_cpu = None if any(p["db_cpu"] is None for p in parts) else sum(p["db_cpu"] for p in parts)
    engine = create_engine(url)
    try:
        log, redis = _event_log(transport, engine, setup.prefix)
        pending = await log.pending(EVENTS, GROUP)
        if redis is not None:
            await redis.aclose()
        async with engine.connect() as conn:
            applied = await conn.scalar(select(func.count()).select_from(applied_events))
            live = await conn.scalar(
                select(func.count()).select_from(profiles).where(profiles.c.merged_into.is_(None))
            )
    finally:
        await engine.dispose()
    relayed = max(p["relayed"] for p in parts)
    return {
        "transport": transport,
        "events": len(payloads),
        "applied": int(applied or 0),
        "pending_after": pending,
        "live_profiles": int(live or 0),
        "processes": processes,
        "workers_per_process": tasks,
        "seconds": round(seconds, 3),
        "events_per_second": round(len(payloads) / seconds),
        "worker_cpu_seconds": round(sum(p["cpu"] for p in parts), 2),
        # CPU of the workers' PostgreSQL backends (claim, apply, ack) and both per event.
        "worker_db_cpu_seconds": None if db_cpu is None else round(db_cpu, 2),
        "cpu_us_per_event": None
        if db_cpu is None
        else round((db_cpu + sum(p["cpu"] for p in parts)) / len(payloads) * 1e6),
        "feeder_db_cpu_seconds": None if feed_db_cpu is None else round(feed_db_cpu, 2),
        # Summed over workers: time spent in claim and in ack (the rest is decode + apply).
        "worker_claim_seconds": round(sum(p["claim"] for p in parts), 2),
        "worker_ack_seconds": round(sum(p["ack"] for p in parts), 2),
        # Redis transport: from the last acknowledgement until the relays emptied the outbox.
        "outbox_drain_seconds_after": round(relayed - max(p["finished"] for p in parts), 3),
        "backlog_limit": BACKLOG,
        "log_append_seconds": round(append_seconds, 2),
    }


def _warm() -> None:
    """Imports the worker modules in a pool process."""


async def _raw_copy(url: str, events: Sequence[event_pb2.Event]) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(
            "CREATE TABLE bench_raw_events (id text primary key, profile_id text, type text,"
            " name text, event_time timestamptz, received_time timestamptz,"
            " properties jsonb, context jsonb)"
        )
        rows = [
            (
                e.message_id,
                e.user_id or e.anonymous_id,
                str(e.type),
                e.event or e.name,
                e.event_time.ToDatetime(tzinfo=UTC),
                e.received_time.ToDatetime(tzinfo=UTC),
                json.dumps({k: str(v) for k, v in e.properties.items()}),
                "{}",
            )
            for e in events
        ]
        started = time.perf_counter()
        await conn.copy_records_to_table("bench_raw_events", records=rows)
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return {
        "rows": len(rows),
        "seconds": round(seconds, 3),
        "rows_per_second": round(len(rows) / seconds),
    }


class _ClaimTimedLog(SqlEventLog):
    """The SQL event log, noting when each delivery was handed to the worker (wall clock), and
    how long each claim that found something and each acknowledgement took."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.claimed: dict[str, float] = {}
        self.claim_seconds: list[float] = []
        self.ack_seconds: list[float] = []

    async def claim(
        self, topic: str, group: str, consumer: str, max_count: int, **kwargs: Any
    ) -> list[Delivery]:
        deliveries = await super().claim(topic, group, consumer, max_count, **kwargs)
        now = time.time()
        for delivery in deliveries:
            self.claimed[delivery.id] = now
        return deliveries

    async def _claim_once(
        self, topic: str, group: str, consumer: str, max_count: int, lease_seconds: float
    ) -> list[Delivery]:
        # The claim's statement alone, without the pauses of a claim polling an empty log.
        started = time.perf_counter()
        deliveries = await super()._claim_once(topic, group, consumer, max_count, lease_seconds)
        if deliveries:
            self.claim_seconds.append(time.perf_counter() - started)
        return deliveries

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        started = time.perf_counter()
        await super().ack(topic, group, ids)
        self.ack_seconds.append(time.perf_counter() - started)


async def _latency_share(url: str, batch: int, done: Any) -> dict[str, Any]:
    """One worker process of the latency measure: when each event was claimed (by entry id),
    when its apply started and when it became readable (by message id), wall clock, comparable
    across processes; and the size of each applied batch."""
    engine = create_engine(url)
    store = SqlProfileStore(engine, SqlLogPublisher(SqlEventLog(engine)))
    started: dict[str, float] = {}
    committed: dict[str, float] = {}
    sizes: list[int] = []
    apply = store.apply

    async def timed_apply(batch: Sequence[EventEffects], **kwargs: Any) -> ApplyResult:
        # The change feed has one EVENT_APPLIED per profile and event name in a batch, so the
        # moment each event became readable is taken from the apply's return (its commit).
        # An event carried into a later batch (busy) is started and committed in that one.
        begun = time.time()
        result = await apply(batch, **kwargs)
        now = time.time()
        sizes.append(len(batch))
        for effects in batch:
            started.setdefault(public_event_id(effects.id), begun)
        for event_id in result.profile_ids:
            committed[public_event_id(event_id)] = now
        return result

    store.apply = timed_apply  # type: ignore[method-assign]
    event_log = _ClaimTimedLog(engine)
    worker = ProfileWorker(
        store,
        event_log,
        blocklist=BlockList(),
        consumer=f"lat-{os.getpid()}",
        batch_size=batch,
    )
    tune_garbage_collector()  # as in _drain_share
    try:
        await worker.consume(block_seconds=IDLE_POLL_SECONDS, until=done.is_set)
    finally:
        await engine.dispose()
    return {
        "claimed": event_log.claimed,
        "started": started,
        "committed": committed,
        "sizes": sizes,
        "claim_seconds": event_log.claim_seconds,
        "ack_seconds": event_log.ack_seconds,
    }


def _latency_main(url: str, batch: int, done: Any) -> dict[str, Any]:
    return run_event_loop(_latency_share(url, batch, done))


async def _latency(url: str, events: Sequence[event_pb2.Event], rate: int) -> dict[str, Any]:
    """Append at `rate` events/s through the event log while LATENCY_PROCESSES worker processes
    consume it; measure append acknowledged -> apply committed."""
    engine = create_engine(url)
    log = SqlEventLog(engine)
    await _ensure_groups(log)
    appended: dict[str, float] = {}
    entry_of: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    with (
        context.Manager() as manager,
        ProcessPoolExecutor(max_workers=LATENCY_PROCESSES, mp_context=context) as pool,
    ):
        done = manager.Event()
        await asyncio.gather(*(loop.run_in_executor(pool, _warm) for _ in range(LATENCY_PROCESSES)))
        workers = [
            loop.run_in_executor(pool, _latency_main, url, LATENCY_BATCH, done)
            for _ in range(LATENCY_PROCESSES)
        ]
        await asyncio.sleep(1.0)  # the workers are polling
        chunk = max(1, rate // 50)
        started = time.perf_counter()
        try:
            for offset in range(0, len(events), chunk):
                part = events[offset : offset + chunk]
                entry_ids = await log.append(
                    EVENTS,
                    [_log_record(e) for e in part],
                )
                acked = time.time()
                for e, entry_id in zip(part, entry_ids, strict=True):
                    appended[e.message_id] = acked
                    entry_of[e.message_id] = entry_id
                delay = started + (offset + chunk) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            offered = len(events) / (time.perf_counter() - started)
        finally:
            done.set()
        parts = await asyncio.gather(*workers)
    await engine.dispose()
    claimed: dict[str, float] = {}
    apply_started: dict[str, float] = {}
    committed: dict[str, float] = {}
    sizes: list[int] = []
    calls: dict[str, list[float]] = {"claim": [], "ack": []}
    for share in parts:
        calls["claim"].extend(share["claim_seconds"])
        calls["ack"].extend(share["ack_seconds"])
        claimed.update(share["claimed"])
        apply_started.update(share["started"])
        committed.update(share["committed"])
        sizes.extend(share["sizes"])
    measured = [m for m in appended if m in committed]
    # The stages of each event's latency: waiting in the log until a claim took it, from the
    # claim to the start of its apply (decoding, the apply of the batch before), the apply
    # up to its commit.
    stages = {
        "end_to_end": [committed[m] - appended[m] for m in measured],
        "wait_before_claim": [claimed[entry_of[m]] - appended[m] for m in measured],
        "claim_to_apply": [apply_started[m] - claimed[entry_of[m]] for m in measured],
        "apply_to_commit": [committed[m] - apply_started[m] for m in measured],
    }
    latencies = sorted(stages["end_to_end"])

    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)

    def spread(groups: dict[str, list[float]]) -> dict[str, dict[str, float | None]]:
        ordered = {name: sorted(v) for name, v in groups.items()}
        return {
            name: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "max": pct(v, 1.0)}
            for name, v in ordered.items()
        }

    return {
        "rate_per_second": rate,
        "offered_per_second": round(offered),
        "events": len(events),
        "measured": len(latencies),
        "worker_processes": LATENCY_PROCESSES,
        "worker_batch_size": LATENCY_BATCH,
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "max_ms": pct(latencies, 1.0),
        "stages_ms": spread(stages),
        # One claim that found something, one acknowledgement (the claim's time counts in
        # wait_before_claim).
        "calls_ms": spread(calls),
        "batches": len(sizes),
        "batch_size_mean": round(sum(sizes) / len(sizes)) if sizes else None,
        "batch_size_max": max(sizes, default=None),
    }


async def _burst(
    url: str, light: Sequence[LogRecord], light_batch: int, burst: Sequence[LogRecord]
) -> dict[str, Any]:
    """One worker on a fresh database applies `light` in batches of `light_batch` events, then
    `burst`, appended at once, in batches of the default size; the burst is timed."""
    engine = create_engine(url)
    backend = _BackendCpu(engine)
    event_log = SqlEventLog(engine)
    await _ensure_groups(event_log)
    store = SqlProfileStore(engine, SqlLogPublisher(event_log))
    worker = ProfileWorker(
        store, event_log, blocklist=store.blocklist, consumer="burst", batch_size=BATCH
    )
    tune_garbage_collector()
    try:
        for start in range(0, len(light), light_batch):
            await event_log.append(EVENTS, light[start : start + light_batch])
            await worker.run_once()
        await event_log.append(EVENTS, burst)
        db_cpu = backend.seconds()
        cpu = time.process_time()
        started = time.perf_counter()
        handled = 0
        while handled < len(burst):
            claimed = await worker.run_once()
            if not claimed:
                raise RuntimeError(f"the burst stopped at {handled} of {len(burst)} events")
            handled += claimed
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        end_db_cpu = backend.seconds()
    finally:
        await engine.dispose()
    db_seconds = None if db_cpu is None or end_db_cpu is None else end_db_cpu - db_cpu
    return {
        "before": f"{len(light)} events in batches of {light_batch}",
        "events": len(burst),
        "seconds": round(seconds, 3),
        "events_per_second": round(len(burst) / seconds),
        "worker_cpu_us_per_event": round(cpu / len(burst) * 1e6),
        "worker_db_cpu_us_per_event": (
            None if db_seconds is None else round(db_seconds / len(burst) * 1e6)
        ),
    }


async def _burst_after_light_load(smoke: bool) -> dict[str, Any]:
    """A burst applied by a worker that has just applied small batches, as under light load,
    beside the same burst applied by a worker that applied the same events before it in batches
    of the default size (each on a fresh database). A worker that settled on something fit only
    for small batches (PostgreSQL's cached plans of its statements) applies the burst slower."""
    light_count = 100 if smoke else BURST_LIGHT_BATCHES * BURST_LIGHT_BATCH
    burst_count = 1_000 if smoke else BURST_EVENTS
    records = [_log_record(e) for e in generate(light_count + burst_count, seed=3)]
    before, burst = records[:light_count], records[light_count:]
    result: dict[str, Any] = {}
    for name, batch in (("after_light_load", BURST_LIGHT_BATCH), ("after_full_batches", BATCH)):
        async with _fresh_database() as url:
            result[name] = await _burst(url, before, batch, burst)
    result["light_vs_full"] = round(
        result["after_light_load"]["events_per_second"]
        / result["after_full_batches"]["events_per_second"],
        3,
    )
    return result


async def _one_run(
    events: Sequence[event_pb2.Event], processes: int, tasks: int, transport: str = "sql"
) -> dict[str, Any]:
    """Apply through the workers, then COPY the same rows, on one fresh database; then the
    storage floor (the same workers writing only the rows every event needs) and the pipeline
    ceiling (the same workers applying nothing), each on another."""
    payloads = [e.SerializeToString() for e in events]
    keys = [identity_key(e) for e in events]
    async with _fresh_database() as url:
        setup = _Setup(
            url=url, transport=transport, prefix=f"upmbench:{uuid.uuid4().hex[:8]}", tasks=tasks
        )
        apply = await _apply_throughput(setup, payloads, keys, processes)
        copy = await _raw_copy(url, events)
    result: dict[str, Any] = {
        "apply": apply,
        "raw_copy": copy,
        "apply_vs_copy": round(apply["events_per_second"] / copy["rows_per_second"], 4),
    }
    for name, store in (("storage_floor", _RowsOnly), ("pipeline_ceiling", _NothingApplied)):
        async with _fresh_database() as url:
            # The same run elsewhere (the earlier run's Redis keys are deleted by now).
            other = await _apply_throughput(
                replace(setup, url=url, store=store), payloads, keys, processes
            )
        result[name] = {
            k: other[k]
            for k in ("events_per_second", "cpu_us_per_event", "seconds", "pending_after")
        }
        result[f"apply_vs_{name}"] = round(
            apply["events_per_second"] / other["events_per_second"], 4
        )
    return result


async def run(smoke: bool) -> dict[str, Any]:
    count = 3_000 if smoke else 100_000
    repeats = 1 if smoke else 3
    events = generate(count)
    result: dict[str, Any] = {
        "mix": {
            "anonymous_pages": 0.6,
            "identified_tracks": 0.2,
            "identifies": 0.1,
            "purchases": 0.1,
        },
        "batch_size": BATCH,
        "targets": {"events_per_second": 20_000, "p99_ms_at_5000_per_second": 500},
        "change_feed_groups": list(CHANGE_FEED_GROUPS),
    }
    if not LATENCY_ONLY:
        # The transports take turns run by run, so that the machine's drift over the minutes
        # of the measure falls on both alike.
        by_transport: dict[str, list[dict[str, Any]]] = {t: [] for t in TRANSPORTS}
        for _ in range(repeats):
            for transport in TRANSPORTS:
                by_transport[transport].append(
                    await _one_run(events, PROCESSES, TASKS_PER_PROCESS, transport)
                )
        for transport, runs in by_transport.items():
            runs.sort(key=lambda r: r["apply"]["events_per_second"])
            median = runs[len(runs) // 2]
            # The SQL transport's figures stay at the top level, as before.
            target = result if transport == "sql" else result.setdefault(transport, {})
            target.update(median)
            target["runs_events_per_second"] = [r["apply"]["events_per_second"] for r in runs]
        result["burst"] = await _burst_after_light_load(smoke)
    # The latency target is at 5,000 events/s; a sustainable rate is measured beside it.
    result["latency"] = []
    for rate in LATENCY_RATES or ((500,) if smoke else (1_000, 5_000)):
        async with _fresh_database() as url:
            seconds = 2 if smoke else 10
            result["latency"].append(await _latency(url, generate(rate * seconds, seed=2), rate))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.smoke)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
