"""The Redis client factory (redis.asyncio), shared by every service that uses Redis."""

from __future__ import annotations

from redis.asyncio import Redis


def create_redis(url: str, *, max_connections: int = 64) -> Redis:
    """A pooled asyncio client; decoding stays off so payloads round-trip as bytes."""
    return Redis.from_url(
        url,
        max_connections=max_connections,
        health_check_interval=30,
        socket_keepalive=True,
        decode_responses=False,
    )
