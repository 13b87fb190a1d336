"""Duplicate message ids sent through two collector processes sharing a database and Redis."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from upm.common.v1 import event_pb2
from upm_common.db import create_engine
from upm_common.eventlog import EVENTS
from upm_common.eventlog.redis import RedisEventLog
from upm_common.migrations import upgrade
from upm_common.redis import create_redis
from upm_ingest.sources import Limits, SourceRegistry
from upm_ingest.store import SourceLimitOverrides
from upm_ingest.store.sql import SqlSourceStore

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
COLLECTOR = textwrap.dedent(
    """
    import asyncio, sys
    from upm_common.eventlog.redis import RedisEventLog
    from upm_common.redis import create_redis
    from upm_ingest.server import build_ingest
    from upm_ingest.settings import IngestSettings

    async def main():
        database_url, redis_url, prefix = sys.argv[1:4]
        settings = IngestSettings(
            database_url=database_url, redis_url=redis_url, event_log_backend="redis",
            grpc_port=0, http_port=0, metrics_port=0, dedup_key_prefix=prefix + "dedup",
        )
        log = RedisEventLog(create_redis(redis_url), prefix=prefix + "upm")
        app = await build_ingest(settings, event_log=log)
        print("READY", app.http_port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await app.close()

    asyncio.run(main())
    """
)


async def start_collector(database_url: str, redis_url: str, prefix: str) -> tuple[Any, int]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            str(ROOT / p) for p in ("gen/python", "libs", "services/ingest", "services/profile")
        ),
        "UPM_LOG_LEVEL": "warning",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        COLLECTOR,
        database_url,
        redis_url,
        prefix,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    while True:
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        assert line, "collector exited"
        if line.startswith(b"READY "):
            return process, int(line.split()[1])


async def test_two_collector_processes_append_each_message_once(
    sqlite_url: str, redis_url: str, redis_prefix: str
) -> None:
    await upgrade(sqlite_url, "eventlog")
    await upgrade(sqlite_url, "ingest")
    engine = create_engine(sqlite_url)
    registry = SourceRegistry(SqlSourceStore(engine), Limits(32768, 512000, 2500, 1e6, 10**6))
    _, write_key = await registry.create("two processes", SourceLimitOverrides())
    await engine.dispose()
    client = create_redis(redis_url)
    log = RedisEventLog(client, prefix=f"{redis_prefix}upm")
    await log.ensure_group(EVENTS, "check")
    processes = []
    try:
        for _ in range(2):
            processes.append(await start_collector(sqlite_url, redis_url, redis_prefix))
        events = [
            {"type": "track", "event": "Clicked", "messageId": uuid.uuid4().hex, "userId": f"u{i}"}
            for i in range(200)
        ]
        auth = {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}
        async with aiohttp.ClientSession(headers=auth) as http:

            async def send(port: int, batch: list[dict[str, Any]]) -> None:
                for _ in range(50):  # resend on 503, as Segment libraries do
                    url = f"http://127.0.0.1:{port}/v1/batch"
                    async with http.post(url, json={"batch": batch}) as response:
                        if response.status == 200:
                            return
                        assert response.status == 503, await response.text()
                    await asyncio.sleep(0.1)
                raise AssertionError("never accepted")

            (_, first), (_, second) = processes
            await asyncio.gather(
                *(
                    send(port, events[start : start + 40])
                    for start in range(0, 200, 20)
                    for port in (first, second)
                )
            )
        seen: list[str] = []
        while batch := await log.claim(EVENTS, "check", "c", 1000):
            seen.extend(event_pb2.Event.FromString(d.payload).message_id for d in batch)
            await log.ack(EVENTS, "check", [d.id for d in batch])
        assert sorted(seen) == sorted(e["messageId"] for e in events)
    finally:
        for process, _ in processes:
            assert process.stdin is not None
            process.stdin.close()
            await process.wait()
        await client.aclose()
