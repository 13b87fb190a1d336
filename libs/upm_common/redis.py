"""The Redis client factory (redis.asyncio), shared by every service that uses Redis."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

POOL_WAIT_SECONDS = 5.0


def create_redis(url: str, *, max_connections: int = 64) -> Redis:
    """A pooled asyncio client; decoding stays off so payloads round-trip as bytes.

    The pool blocks when all its connections are busy (up to POOL_WAIT_SECONDS) instead of
    failing: a burst of concurrent requests queues for a connection rather than erroring.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_SECONDS,
        health_check_interval=30,
        socket_keepalive=True,
        decode_responses=False,
    )
    return Redis.from_pool(pool)


async def delete_matching(redis: Redis, pattern: str, *, batch: int = 10_000) -> int:
    """Delete every key matching `pattern` (SCAN, then UNLINK in batches); returns how many.
    For tools and tests that clean up the keys they made under a prefix."""
    deleted = 0
    keys: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=batch):
        keys.append(key)
        if len(keys) >= batch:
            deleted += await redis.unlink(*keys)
            keys = []
    if keys:
        deleted += await redis.unlink(*keys)
    return deleted
