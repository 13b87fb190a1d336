"""Token-bucket rate limiting per write key (in-process, one bucket per source per replica)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Buckets refilled at `rate` tokens per second up to `burst`.

    A request for n tokens passes when the bucket holds at least min(n, burst): a batch larger
    than the burst is let through from a full bucket and leaves it in debt, so large batches are
    never refused forever and the long-run rate still holds.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, count: int, *, rate: float, burst: int) -> float:
        """Take `count` tokens; returns 0 on success, else the seconds to wait before retrying."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=float(burst), updated=now)
        else:
            bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
        needed = float(min(count, burst))
        if bucket.tokens >= needed:
            bucket.tokens -= count
            return 0.0
        return max(0.001, (needed - bucket.tokens) / rate)
