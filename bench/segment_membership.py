"""Real-time membership latency: entered/exited emitted after the profile change that caused it.

A seeded population (bench/segment_datagen.py) is loaded into a fresh PostgreSQL database with
the three benchmark segments saved and materialized. Then, for `seconds`, a producer plays the
profile service at `rate` events/s: every 20 ms it inserts a slice of events (purchases and
creative views, so memberships change) into the read model and appends the matching
EVENT_APPLIED profile changes to the change feed (the SQL event log). The producer runs in its
own process, as the profile service does; the membership worker consumes the feed concurrently
in this one, with its production loop (`consume_forever`). For every membership change emitted
while handling a batch of profile changes, the latency is the time from the append of the
oldest change of that profile in the batch (its `change_time`) to the emission. Reported:
p50/p99/max latency, changes emitted, and the feed's backlog at the end, beside the bare append
rate of the log (its ceiling).
Run: `python -m bench.segment_membership [--smoke]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import random
import statistics
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import make_url

from bench.segment_count import SEGMENTS, _admin, _connect, _load_postgres, _server_url
from bench.segment_datagen import EVENT_COLUMNS, NOW, profile_id
from upm.profile.v1 import profile_service_pb2 as profile_pb
from upm.segment.v1 import segment_service_pb2 as pb
from upm_common.db import create_engine
from upm_common.eventlog import PROFILE_CHANGES, LogRecord
from upm_common.eventlog.sql import SqlEventLog
from upm_common.migrations import upgrade
from upm_segment.membership import (
    GROUP,
    MembershipHub,
    MembershipWorker,
    ProfileNotice,
    decode_profile_change,
)
from upm_segment.service import SegmentDomain
from upm_segment.store.sql import SqlSegmentStore

TICK_SECONDS = 0.02
PURCHASE = json.dumps({"revenue": 40.0, "currency": "USD"})
CREATIVE = json.dumps({"placement": "homepage", "creative": "new-product"})


def _produce(
    url: str, profiles: int, rate: int, seconds: float, origin: float
) -> tuple[int, float]:
    """The producer process: (events produced, seconds taken)."""
    return asyncio.run(_produce_async(url, profiles, rate, seconds, origin))


async def _produce_async(
    url: str, profiles: int, rate: int, seconds: float, origin: float
) -> tuple[int, float]:
    engine = create_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    log = SqlEventLog(engine)
    copier = await _connect(url)  # events go in with COPY, as fast as the profile service's
    produced = 0
    rng = random.Random(11)
    per_tick = max(1, int(rate * TICK_SECONDS))
    started = time.perf_counter()
    try:
        deadline = time.monotonic() + seconds
        next_tick = time.monotonic()
        while time.monotonic() < deadline:
            rows: list[tuple[Any, ...]] = []
            changes: list[profile_pb.ProfileChange] = []
            # The worker's clock (NOW at its start), on the machine-wide monotonic clock.
            moment = NOW + timedelta(seconds=time.monotonic() - origin)
            for _ in range(per_tick):
                pid = profile_id(rng.randrange(profiles))
                name = "Order Completed" if rng.random() < 0.5 else "Creative Viewed"
                props = PURCHASE if name == "Order Completed" else CREATIVE
                rows.append((uuid.uuid4().hex, pid, "track", name, moment, moment, props, "{}"))
                changes.append(
                    profile_pb.ProfileChange(
                        change_id=uuid.uuid4().hex,
                        type=profile_pb.PROFILE_CHANGE_TYPE_EVENT_APPLIED,
                        profile_id=pid,
                        event_name=name,
                    )
                )
            await copier.copy_records_to_table(
                "profile_events", records=rows, columns=list(EVENT_COLUMNS)
            )
            appended = time.time()
            for change in changes:
                change.change_time.seconds = int(appended)
                change.change_time.nanos = int((appended % 1) * 1e9)
            records = [LogRecord(c.profile_id, c.SerializeToString()) for c in changes]
            await log.append(PROFILE_CHANGES, records)
            produced += len(records)
            next_tick += TICK_SECONDS
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        return produced, time.perf_counter() - started
    finally:
        await copier.close()
        await engine.dispose()


@dataclass(frozen=True)
class StampedNotice(ProfileNotice):
    appended: float = 0.0  # the change's append time (`change_time`), in epoch seconds


def _stamped(payload: bytes) -> ProfileNotice:
    change = profile_pb.ProfileChange.FromString(payload)
    notice = decode_profile_change(payload)
    return StampedNotice(
        **{f.name: getattr(notice, f.name) for f in fields(notice)},
        appended=change.change_time.seconds + change.change_time.nanos / 1e9,
    )


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def run(smoke: bool) -> dict[str, Any]:
    """The benchmark's figures (see the module docstring)."""
    profiles = 500 if smoke else 20_000
    rate = 500 if smoke else 5_000
    seconds = 2.0 if smoke else 20.0
    name = f"upm_bench_membership_{uuid.uuid4().hex[:8]}"
    await _admin(f'CREATE DATABASE "{name}"')
    url = make_url(_server_url()).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    started_wall = time.monotonic()

    def clock() -> datetime:
        return NOW + timedelta(seconds=time.monotonic() - started_wall)

    try:
        for component in ("eventlog", "profile", "segment"):
            await upgrade(engine, component)
        await _load_postgres(url, profiles)
        log = SqlEventLog(engine)
        await log.ensure_group(PROFILE_CHANGES, GROUP)
        store = SqlSegmentStore(engine)
        domain = SegmentDomain(store, engine, clock=clock)
        for segment_id, text in SEGMENTS.items():
            await domain.create(
                segment_id=segment_id.replace("_", "-"),
                name=segment_id,
                description="",
                definition=None,
                text=text,
            )
        latencies: list[float] = []
        batch_times: dict[str, float] = {}

        class TimingHub(MembershipHub):
            def publish(self, changes: Sequence[pb.MembershipChange]) -> None:
                emitted = time.time()
                for change in changes:
                    appended = batch_times.get(change.profile_id)
                    if appended is not None:
                        latencies.append(emitted - appended)
                super().publish(changes)

        class TimingWorker(MembershipWorker):
            """Notes, for the batch being handled, the append time of each profile's oldest
            change (the worker claims the next batch meanwhile, so decoding is too early)."""

            async def handle(self, notices: Sequence[ProfileNotice]) -> list[pb.MembershipChange]:
                batch_times.clear()
                for notice in notices:
                    assert isinstance(notice, StampedNotice)
                    known = batch_times.get(notice.profile_id, notice.appended)
                    batch_times[notice.profile_id] = min(known, notice.appended)
                return await super().handle(notices)

        hub = TimingHub()
        worker = TimingWorker(
            engine, store, log, hub, clock=clock, batch_size=2000, decode=_stamped
        )
        materialize_started = time.perf_counter()
        await worker.refresh(force=True)
        materialize_seconds = time.perf_counter() - materialize_started
        latencies.clear()

        tasks = [asyncio.create_task(worker.consume_forever(block_seconds=0.01))]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            produced, produce_seconds = await asyncio.get_running_loop().run_in_executor(
                pool, _produce, url, profiles, rate, seconds, started_wall
            )
        drain_started = time.perf_counter()
        for _ in range(1200):  # at most 60 s
            if not await log.pending(PROFILE_CHANGES, GROUP):
                break
            await asyncio.sleep(0.05)
        drain_seconds = time.perf_counter() - drain_started
        backlog = await log.pending(PROFILE_CHANGES, GROUP)
        await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        ceiling_records = [LogRecord("k", b"x" * 40) for _ in range(1000)]
        ceiling_started = time.perf_counter()
        for _ in range(5):
            await log.append("bench-ceiling", ceiling_records)
        append_ceiling = 5000 / (time.perf_counter() - ceiling_started)
        await log.close()
        return {
            "database": "postgresql",
            "profiles": profiles,
            "target_rate_per_second": rate,
            "achieved_rate_per_second": round(produced / produce_seconds, 1),
            "events": produced,
            "materialize_seconds": round(materialize_seconds, 2),
            "membership_changes": len(latencies),
            "latency_p50_seconds": round(statistics.median(latencies), 4) if latencies else None,
            "latency_p99_seconds": round(_percentile(latencies, 0.99), 4) if latencies else None,
            "latency_max_seconds": round(max(latencies), 4) if latencies else None,
            "drain_seconds_after_producer_stopped": round(drain_seconds, 2),
            "backlog_at_end": backlog,
            "log_append_ceiling_records_per_second": round(append_ceiling, 1),
            "target": "p99 under 1 s at 5,000 events/s",
        }
    finally:
        await engine.dispose()
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    import sys

    print(json.dumps(asyncio.run(run("--smoke" in sys.argv)), indent=2))
