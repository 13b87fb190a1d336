"""Redis backend of the dedup store: one key per (source, message id), `SET NX EX`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from upm_common.eventlog.redis import msgpack_strings
from upm_common.joining import CallJoiner
from upm_ingest.store import ClaimOutcome

# KEYS[1]: the key prefix of the source, `<prefix>:{<source>}:` (it carries the hash tag, so
# every key the script builds from it lives in the same Redis Cluster slot). ARGV[1]: the
# message ids as one MessagePack array (one argument per call instead of one per id, which
# the client would otherwise encode one by one); ARGV[2]: pending seconds.
# Returns one digit per id, as one string (1 new, 2 in flight, 3 duplicate): one reply string
# parses much faster than one per key.
_CLAIM_LUA = """
local prefix, ttl = KEYS[1], ARGV[2]
local ids = cmsgpack.unpack(ARGV[1])
local out = {}
for i = 1, #ids do
  local key = prefix .. ids[i]
  if redis.call('SET', key, 'p', 'NX', 'EX', ttl) then
    out[i] = '1'
  elseif redis.call('GET', key) == '1' then
    out[i] = '3'
  else
    out[i] = '2'
  end
end
return table.concat(out)
"""

# KEYS[1]: the key prefix of the source. ARGV[1]: the message ids (MessagePack);
# ARGV[2]: window seconds.
_CONFIRM_LUA = """
local prefix, ttl = KEYS[1], ARGV[2]
local ids = cmsgpack.unpack(ARGV[1])
for i = 1, #ids do
  redis.call('SET', prefix .. ids[i], '1', 'EX', ttl)
end
return #ids
"""

# Ids per script call: keeps each call short, so Redis stays responsive to other clients.
_CHUNK = 1000
_OUTCOMES = {"1": ClaimOutcome.NEW, "2": ClaimOutcome.IN_FLIGHT, "3": ClaimOutcome.DUPLICATE}


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


class RedisDedupStore:
    """Dedup keys `<prefix>:{<source>}:<message id>`, claimed with `SET NX EX`.

    The source id is the hash tag, so one source's keys share a Redis Cluster slot and one
    Lua script call handles a whole batch atomically (a key that vanished between SET and GET
    counts as in flight: the client resends and the resend claims it).
    """

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "upm:ingest:dedup") -> None:
        self._redis = redis
        self._prefix = prefix
        self._claim_sha = _sha(_CLAIM_LUA)
        self._confirm_sha = _sha(_CONFIRM_LUA)
        self._claims: CallJoiner[tuple[str, int], str, str] = CallJoiner(self._claim_now)
        self._confirms: CallJoiner[tuple[str, int], str, None] = CallJoiner(self._confirm_now)

    def _source_prefix(self, source_id: str) -> str:
        return f"{self._prefix}:{{{source_id}}}:"

    def _key(self, source_id: str, message_id: str) -> str:
        return f"{self._source_prefix(source_id)}{message_id}"

    async def _run(self, script: str, sha: str, key: str, ids: Sequence[str], ttl: int) -> Any:
        argument = msgpack_strings([m.encode("utf-8") for m in ids])
        try:
            return await self._redis.evalsha(sha, 1, key, argument, ttl)
        except NoScriptError:
            # The server lost its script cache (restart, SCRIPT FLUSH); the script did not run.
            await self._redis.script_load(script)
            return await self._redis.evalsha(sha, 1, key, argument, ttl)

    async def claim(
        self, source_id: str, message_ids: Sequence[str], pending_seconds: int
    ) -> dict[str, ClaimOutcome]:
        # Concurrent claims of a source share one round trip (see CallJoiner). Results are
        # positional, so an id claimed by two requests at once is NEW for the first and
        # IN_FLIGHT for the second, as with two separate calls.
        codes = await self._claims((source_id, pending_seconds), message_ids)
        return {
            message_id: _OUTCOMES[code] for message_id, code in zip(message_ids, codes, strict=True)
        }

    async def _claim_now(self, group: tuple[str, int], message_ids: list[str]) -> list[str]:
        source_id, pending_seconds = group
        key = self._source_prefix(source_id)
        out: list[str] = []
        for start in range(0, len(message_ids), _CHUNK):
            chunk = message_ids[start : start + _CHUNK]
            codes = await self._run(_CLAIM_LUA, self._claim_sha, key, chunk, pending_seconds)
            text = codes.decode() if isinstance(codes, bytes) else str(codes)
            if len(text) != len(chunk):
                raise RuntimeError("the dedup claim script answered the wrong number of codes")
            out.extend(text)
        return out

    async def confirm(
        self, source_id: str, message_ids: Sequence[str], window_seconds: int
    ) -> None:
        await self._confirms((source_id, window_seconds), message_ids)

    async def _confirm_now(self, group: tuple[str, int], message_ids: list[str]) -> list[None]:
        source_id, window_seconds = group
        key = self._source_prefix(source_id)
        for start in range(0, len(message_ids), _CHUNK):
            chunk = message_ids[start : start + _CHUNK]
            await self._run(_CONFIRM_LUA, self._confirm_sha, key, chunk, window_seconds)
        return [None] * len(message_ids)

    async def release(self, source_id: str, message_ids: Sequence[str]) -> None:
        for start in range(0, len(message_ids), _CHUNK):
            chunk = message_ids[start : start + _CHUNK]
            await self._redis.delete(*(self._key(source_id, m) for m in chunk))
