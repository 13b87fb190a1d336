"""Ingest on Redis Streams: no acknowledged event is lost when a consumer dies mid-batch;
the length bound never trims what a group still needs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ingest.conftest import start_ingest
from upm.common.v1 import event_pb2
from upm_common.eventlog import EVENTS, LogRecord
from upm_common.eventlog.redis import RedisEventLog
from upm_common.redis import create_redis

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
CONSUMER = textwrap.dedent(
    """
    import asyncio, sys
    from upm_common.eventlog.redis import RedisEventLog
    from upm_common.redis import create_redis

    async def main():
        url, prefix, group = sys.argv[1:4]
        log = RedisEventLog(create_redis(url), prefix=prefix)
        got = []
        while len(got) < 150:
            got += await log.claim("events", group, "doomed", 50, lease_seconds=1.0)
        print(len(got), flush=True)
        await asyncio.sleep(3600)  # "applying" the batch when it is killed: never acks

    asyncio.run(main())
    """
)


async def test_a_consumer_killed_mid_batch_loses_no_acknowledged_event(
    sqlite_url: str, redis_url: str, redis_prefix: str, make_event: Callable[..., dict[str, Any]]
) -> None:
    async for running in start_ingest(
        sqlite_url, redis_url=redis_url, redis_prefix=redis_prefix, event_log_backend="redis"
    ):
        acknowledged: set[str] = set()
        for chunk in range(4):
            batch = [make_event(anonymousId=f"anon-{chunk}-{i % 13}") for i in range(100)]
            status, answer, _ = await running.post("/v1/batch", {"batch": batch})
            assert status == 200 and answer["accepted"] == 100
            acknowledged.update(e["messageId"] for e in batch)

        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                str(ROOT / p) for p in ("gen/python", "libs", "services/ingest")
            ),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CONSUMER,
            redis_url,
            f"{redis_prefix}upm",
            running.group,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        assert int(line) >= 150
        process.send_signal(signal.SIGKILL)
        await process.wait()

        # The survivor gets the rest at once and the dead consumer's batch after its lease.
        seen = {e.message_id for e in await running.events(400, timeout=15)}
        assert seen == acknowledged
        assert await running.log.pending(EVENTS, running.group) == 0


async def test_the_length_bound_never_trims_unconsumed_entries(
    redis_url: str, redis_prefix: str
) -> None:
    client = create_redis(redis_url)
    log = RedisEventLog(client, partitions=1, max_len=10, prefix=f"{redis_prefix}upm")
    try:
        await log.ensure_group("t", "fast")
        await log.ensure_group("t", "slow")
        await log.append("t", [LogRecord("k", f"e{i}".encode()) for i in range(30)])
        fast = await log.claim("t", "fast", "c", 100)
        await log.ack("t", "fast", [d.id for d in fast])
        key = log.stream_key("t", 0)
        assert await log.trim(key) == 0  # "slow" has not read anything yet
        slow = await log.claim("t", "slow", "c", 25, lease_seconds=0.5)
        await log.ack("t", "slow", [d.id for d in slow[:20]])
        # Entries 0..19 are done for both groups; 20..24 are pending for "slow", 25..29 unread.
        assert await log.trim(key) == 20
        assert await client.xlen(key) == 10
        rest = await log.claim("t", "slow", "c2", 100, lease_seconds=0.1)
        assert [d.payload for d in rest] == [f"e{i}".encode() for i in range(25, 30)]
        await asyncio.sleep(0.6)
        again = await log.claim("t", "slow", "c2", 100)
        assert sorted(d.payload for d in again) == sorted(f"e{i}".encode() for i in range(20, 30))
        # Without any group nothing is trimmed: a later group starts at the oldest entry.
        await log.append("u", [LogRecord("k", b"x")] * 20)
        assert await log.trim(log.stream_key("u", 0)) == 0
    finally:
        await client.aclose()


async def test_events_are_partitioned_by_identity_key(
    sqlite_url: str, redis_url: str, redis_prefix: str, make_event: Callable[..., dict[str, Any]]
) -> None:
    async for running in start_ingest(
        sqlite_url, redis_url=redis_url, redis_prefix=redis_prefix, event_log_backend="redis"
    ):
        batch = [make_event(userId=f"user-{i % 5}", anonymousId="shared") for i in range(50)]
        status, _, _ = await running.post("/v1/batch", {"batch": batch})
        assert status == 200
        log = running.log
        assert isinstance(log, RedisEventLog)
        deliveries = []
        while chunk := await log.claim(EVENTS, running.group, "c", 100):
            deliveries.extend(chunk)
            await log.ack(EVENTS, running.group, [d.id for d in chunk])
        by_user: dict[str, list[str]] = {}
        for delivery in deliveries:
            event = event_pb2.Event.FromString(delivery.payload)
            assert delivery.key == event.user_id
            assert delivery.id.split("/")[0] == str(log.partition_of(event.user_id))
            by_user.setdefault(event.user_id, []).append(event.message_id)
        for user, ids in by_user.items():
            expected = [e["messageId"] for e in batch if e["userId"] == user]
            assert ids == expected  # one person's events stay in order
