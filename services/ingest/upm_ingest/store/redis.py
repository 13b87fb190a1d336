"""Redis backend of the dedup store: one key per (source, message id), `SET NX EX`."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from upm_ingest.store import ClaimOutcome

# KEYS: the dedup keys. ARGV[1]: pending seconds. Returns one digit per key, as one string
# (1 new, 2 in flight, 3 duplicate): one reply string parses much faster than one per key.
_CLAIM_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, 'p', 'NX', 'EX', ARGV[1]) then
    out[i] = '1'
  elseif redis.call('GET', key) == '1' then
    out[i] = '3'
  else
    out[i] = '2'
  end
end
return table.concat(out)
"""

# KEYS: the dedup keys. ARGV[1]: window seconds.
_CONFIRM_LUA = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, '1', 'EX', ARGV[1])
end
return #KEYS
"""

# Keys per script call: keeps each call short, so Redis stays responsive to other clients.
_CHUNK = 1000
_OUTCOMES = {"1": ClaimOutcome.NEW, "2": ClaimOutcome.IN_FLIGHT, "3": ClaimOutcome.DUPLICATE}


class RedisDedupStore:
    """Dedup keys `<prefix>:{<source>}:<message id>`, claimed with `SET NX EX`.

    The source id is the hash tag, so one source's keys share a Redis Cluster slot and one
    Lua script call handles a whole batch atomically (a key that vanished between SET and GET
    counts as in flight: the client resends and the resend claims it).
    """

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "upm:ingest:dedup") -> None:
        self._redis = redis
        self._prefix = prefix
        self._claim = redis.register_script(_CLAIM_LUA)
        self._confirm = redis.register_script(_CONFIRM_LUA)

    def _key(self, source_id: str, message_id: str) -> str:
        return f"{self._prefix}:{{{source_id}}}:{message_id}"

    async def claim(
        self, source_id: str, message_ids: Sequence[str], pending_seconds: int
    ) -> dict[str, ClaimOutcome]:
        outcomes: dict[str, ClaimOutcome] = {}
        for start in range(0, len(message_ids), _CHUNK):
            chunk = message_ids[start : start + _CHUNK]
            codes = await self._claim(
                keys=[self._key(source_id, m) for m in chunk], args=[pending_seconds]
            )
            text = codes.decode() if isinstance(codes, bytes) else str(codes)
            for message_id, code in zip(chunk, text, strict=True):
                outcomes[message_id] = _OUTCOMES[code]
        return outcomes

    async def confirm(
        self, source_id: str, message_ids: Sequence[str], window_seconds: int
    ) -> None:
        for start in range(0, len(message_ids), _CHUNK):
            chunk = message_ids[start : start + _CHUNK]
            await self._confirm(
                keys=[self._key(source_id, m) for m in chunk], args=[window_seconds]
            )

    async def release(self, source_id: str, message_ids: Sequence[str]) -> None:
        for start in range(0, len(message_ids), _CHUNK):
            chunk = message_ids[start : start + _CHUNK]
            await self._redis.delete(*(self._key(source_id, m) for m in chunk))
