"""The Redis Streams event log: partitioned streams with consumer groups, the log at scale.

Layout: topic `t` has `partitions` streams `upm:{t:0}` ... `upm:{t:N-1}`; a record goes to the
partition `crc32(key) % N`, so the records of one key (one person) stay in order. Each stream
key is its own hash tag, so every command and script touches one Redis Cluster slot. Entries
hold two fields: `k` (the record key) and `p` (the payload). Delivery ids are
`<partition>/<stream id>`.

Leases. A claim takes new entries with XREADGROUP and, for entries whose lease ended, XAUTOCLAIM.
The lease is written into the entry's idle time: a claimer with lease L sets the idle time of
what it took to `LEASE_HORIZON - L` (XCLAIM ... IDLE ... JUSTID), and XAUTOCLAIM reclaims only
entries idle for at least `LEASE_HORIZON`, which they reach exactly L after the claim. So each
claim carries its own lease and a crashed consumer's entries come back when their lease ends.
Reading new entries and setting their lease happen in one Lua script, so no entry is ever
pending without a lease. Redis counts deliveries; past `max_attempts` an entry is appended to
the dead-letter topic (`<topic>.dead`) and acknowledged.

Length bound. With `max_len`, a partition longer than `max_len` is trimmed with XTRIM MINID up
to the oldest entry some group still needs (its oldest pending entry, or the first entry after
its last delivered one), so unconsumed entries are never trimmed: under consumer lag the bound is
soft. Without any group nothing is trimmed (a group created later starts at the oldest entry).

Deduplicating append (Redis only, used by ingest): `append_new` appends a record only if its
dedup mark key did not exist, and sets the mark in the same script call (see the method).

Durability: `append` returns after Redis accepted the XADDs; how durable that is follows the
server's persistence (run Redis with `appendonly yes`; `appendfsync always` for no loss on a
power cut).
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
import zlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from upm_common.eventlog.base import (
    DEFAULT_MAX_ATTEMPTS,
    Delivery,
    LogRecord,
    check_claim_count,
    dead_letter_topic,
)
from upm_common.joining import CallJoiner

LEASE_HORIZON_MS = 24 * 3600 * 1000
"""Idle time at which an entry's lease has ended; leases are at most this long."""

_TRIM_INTERVAL_SECONDS = 1.0
_POLL_MIN_SECONDS = 0.005
_POLL_MAX_SECONDS = 0.1

# KEYS[1]: the stream. ARGV: group, consumer, count, horizon ms, idle to set ms.
# Returns {claimed, deleted}: claimed is a list of {id, delivery count, fields}.
_CLAIM_LUA = """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local count = tonumber(ARGV[3])
local horizon, lease_idle = ARGV[4], ARGV[5]
local out = {}
local ids = {}
local start = '0-0'
repeat
  local reply = redis.call('XAUTOCLAIM', stream, group, consumer, horizon, start,
                           'COUNT', count - #out)
  start = reply[1]
  for _, entry in ipairs(reply[2]) do
    if entry and entry[2] then
      local info = redis.call('XPENDING', stream, group, entry[1], entry[1], 1)
      local deliveries = 1
      if info[1] then deliveries = info[1][4] end
      table.insert(out, {entry[1], deliveries, entry[2]})
      table.insert(ids, entry[1])
    end
  end
until start == '0-0' or #out >= count
if #out < count then
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - #out,
                           'STREAMS', stream, '>')
  if reply and reply[1] then
    for _, entry in ipairs(reply[1][2]) do
      table.insert(out, {entry[1], 1, entry[2]})
      table.insert(ids, entry[1])
    end
  end
end
for first = 1, #ids, 200 do
  local args = {stream, group, consumer, 0}
  for i = first, math.min(first + 199, #ids) do table.insert(args, ids[i]) end
  table.insert(args, 'IDLE')
  table.insert(args, lease_idle)
  table.insert(args, 'JUSTID')
  redis.call('XCLAIM', unpack(args))
end
return out
"""

# KEYS[1]: the stream. ARGV[1]: the records as one MessagePack array key, payload, key, ...
# (see `msgpack_strings`: one argument per call instead of two per record, which the client
# would otherwise encode one by one). Returns the new entry ids joined by spaces (one reply
# string parses much faster than one reply per entry).
_APPEND_LUA = """
local fields = cmsgpack.unpack(ARGV[1])
local ids = {}
for i = 1, #fields, 2 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'k', fields[i], 'p', fields[i + 1])
end
return table.concat(ids, ' ')
"""

# KEYS[1]: the stream. ARGV[1]: the prefix of the dedup marks (it ends with the caller's
# hash tag); ARGV[2]: how long a mark lives, in seconds; ARGV[3]: the records as one
# MessagePack array dedup id, key, payload, dedup id, key, payload, ...
# Each record is appended only if its mark `<prefix><dedup id>` did not exist; the mark is set
# in the same step, so a record is appended once per mark and no mark exists without its
# entry (a failed XADD deletes the mark it just set, then fails the call). Returns one digit
# per record, as one string: 1 appended, 2 held by a pending claim of `RedisDedupStore`
# (value 'p'), 3 already appended (value '1').
_APPEND_NEW_LUA = """
local stream, prefix, ttl = KEYS[1], ARGV[1], ARGV[2]
local fields = cmsgpack.unpack(ARGV[3])
local out = {}
for i = 1, #fields, 3 do
  local mark = prefix .. fields[i]
  if redis.call('SET', mark, '1', 'NX', 'EX', ttl) then
    local id = redis.pcall('XADD', stream, '*', 'k', fields[i + 1], 'p', fields[i + 2])
    if type(id) == 'table' and id.err then
      redis.call('DEL', mark)
      return id
    end
    out[#out + 1] = '1'
  elseif redis.call('GET', mark) == '1' then
    out[#out + 1] = '3'
  else
    out[#out + 1] = '2'
  end
end
return table.concat(out)
"""

_TYPE_AND_LENGTH = struct.Struct(">BI").pack  # a MessagePack array32 or str32 header


def msgpack_strings(items: Sequence[bytes]) -> bytes:
    """A MessagePack array of raw strings, which Lua's `cmsgpack.unpack` turns into a table.

    Written by hand (str32 for every item: the only string format Redis 7.0's cmsgpack reads
    that holds any bytes) so no MessagePack library is needed.
    """
    parts = [_TYPE_AND_LENGTH(0xDD, len(items))]
    append = parts.append
    for item in items:
        append(_TYPE_AND_LENGTH(0xDB, len(item)))
        append(item)
    return b"".join(parts)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: Any) -> dict[str, bytes]:
    if isinstance(raw, dict):
        return {_text(k): v for k, v in raw.items()}
    return {_text(raw[i]): raw[i + 1] for i in range(0, len(raw), 2)}


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class RedisEventLog:
    """EventLog on Redis Streams (see the module docstring for the layout and semantics)."""

    def __init__(
        self,
        redis: Redis,
        *,
        partitions: int = 8,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_len: int | None = None,
        prefix: str = "upm",
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self._redis = redis
        self._partitions = partitions
        self._max_attempts = max_attempts
        self._max_len = max_len
        self._prefix = prefix
        self._claim = redis.register_script(_CLAIM_LUA)
        self._append_sha = hashlib.sha1(_APPEND_LUA.encode()).hexdigest()
        self._joiner: CallJoiner[str, LogRecord, str] = CallJoiner(self._append_now)
        self._append_new_sha = hashlib.sha1(_APPEND_NEW_LUA.encode()).hexdigest()
        # Two calls in flight, not one: with one, Redis sat idle from each answer until the
        # caller's event loop got round to it (behind other requests' parsing) and sent the
        # next call, and the requests that waited meanwhile went in lock-step, one call of
        # nearly all of them at a time. Each caller's records still go in one call, in order.
        self._new_joiner: CallJoiner[tuple[str, str, int], tuple[str, str, bytes], str] = (
            CallJoiner(self._append_new_now, max_running=2)
        )
        self._last_trim: dict[str, float] = {}
        self._cursor = 0

    def stream_key(self, topic: str, partition: int) -> str:
        """The Redis key of one partition of a topic."""
        return f"{self._prefix}:{{{topic}:{partition}}}"

    def partition_of(self, key: str) -> int:
        return zlib.crc32(key.encode("utf-8")) % self._partitions  # as `_by_partition`

    async def append(self, topic: str, records: Sequence[LogRecord]) -> list[str]:
        if not records:
            return []
        # Concurrent appends to a topic share one round trip (see CallJoiner).
        return await self._joiner(topic, records)

    async def _append_now(self, topic: str, records: Sequence[LogRecord]) -> list[str]:
        raw_keys = [record.key.encode("utf-8") for record in records]
        by_partition = self._by_partition(raw_keys)
        # One script call per partition (all XADDs of a partition in one command, in order),
        # all calls in one round trip.
        calls = [
            (
                self.stream_key(topic, partition),
                msgpack_strings(
                    [part for i in indices for part in (raw_keys[i], records[i].payload)]
                ),
            )
            for partition, indices in by_partition.items()
        ]
        replies = await self._eval_each(_APPEND_LUA, self._append_sha, calls)
        ids = [""] * len(records)
        for (partition, indices), joined in zip(by_partition.items(), replies, strict=True):
            stream_ids = _text(joined).split(" ")
            for index, stream_id in zip(indices, stream_ids, strict=True):
                ids[index] = f"{partition}/{stream_id}"
        if self._max_len is not None:
            await self._maybe_trim(topic, sorted(by_partition))
        return ids

    async def append_new(
        self,
        topic: str,
        records: Sequence[tuple[str, str, bytes]],
        *,
        mark_prefix: str,
        mark_seconds: int,
    ) -> list[str]:
        """Append the (dedup id, key, payload) records whose dedup mark is new (Redis only).

        A record's mark is the key `<mark_prefix><dedup id>`; it is set for `mark_seconds` in
        the same script call that appends the record, so each mark's record is appended
        exactly once and the append and the mark cannot be separated by a crash. Returns one
        code per record: "1" appended now, "3" its mark held an appended record, "2" its mark
        is a pending claim of another writer (see `_APPEND_NEW_LUA`). Raises when Redis
        fails; the records appended before the failure keep their marks.

        The marks must be on the same Redis as the streams (one script call touches both):
        `mark_prefix` should carry its own hash tag, and the combination suits one Redis
        server with replicas, not a Redis Cluster.
        """
        if not records:
            return []
        # Concurrent calls of a topic and mark prefix share one round trip (see CallJoiner).
        return await self._new_joiner((topic, mark_prefix, mark_seconds), records)

    async def _append_new_now(
        self, group: tuple[str, str, int], records: list[tuple[str, str, bytes]]
    ) -> list[str]:
        topic, mark_prefix, mark_seconds = group
        raw_ids = [dedup_id.encode("utf-8") for dedup_id, _, _ in records]
        raw_keys = [key.encode("utf-8") for _, key, _ in records]
        by_partition = self._by_partition(raw_keys)
        calls = [
            (
                self.stream_key(topic, partition),
                msgpack_strings(
                    [part for i in indices for part in (raw_ids[i], raw_keys[i], records[i][2])]
                ),
            )
            for partition, indices in by_partition.items()
        ]
        replies = await self._eval_each(
            _APPEND_NEW_LUA, self._append_new_sha, calls, mark_prefix, mark_seconds
        )
        codes = [""] * len(records)
        for positions, reply in zip(by_partition.values(), replies, strict=True):
            text = _text(reply)
            if len(text) != len(positions):
                raise RuntimeError("the append script answered the wrong number of codes")
            for index, code in zip(positions, text, strict=True):
                codes[index] = code
        if self._max_len is not None:
            await self._maybe_trim(topic, sorted(by_partition))
        return codes

    def _by_partition(self, raw_keys: Sequence[bytes]) -> dict[int, list[int]]:
        """The indexes of the records of each partition, in order (as `partition_of`)."""
        groups: dict[int, list[int]] = {}
        crc32, partitions = zlib.crc32, self._partitions
        for index, raw_key in enumerate(raw_keys):
            groups.setdefault(crc32(raw_key) % partitions, []).append(index)
        return groups

    async def _eval_each(
        self, script: str, sha: str, calls: Sequence[tuple[str, bytes]], *shared: str | int
    ) -> list[Any]:
        """EVALSHA `script` once per (key, argument), in one round trip; `shared` arguments
        come first in every call.

        Plain EVALSHA commands rather than redis-py Script objects: a pipeline holding Script
        objects first asks SCRIPT EXISTS, an extra round trip on every call. A server that
        lost its script cache (restart, SCRIPT FLUSH) answers NOSCRIPT: load and send again
        (the script did not run, so nothing is applied twice).
        """
        for attempt in range(2):
            try:
                if len(calls) == 1:
                    key, argument = calls[0]
                    return [await self._redis.evalsha(sha, 1, key, *shared, argument)]
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, argument in calls:
                        pipe.evalsha(sha, 1, key, *shared, argument)
                    return list(await pipe.execute())
            except NoScriptError:
                if attempt:
                    raise
                await self._redis.script_load(script)
        raise AssertionError("unreachable")

    async def ensure_group(self, topic: str, group: str) -> None:
        for partition in range(self._partitions):
            try:
                await self._redis.xgroup_create(
                    self.stream_key(topic, partition), group, id="0", mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def claim(
        self,
        topic: str,
        group: str,
        consumer: str,
        max_count: int,
        *,
        lease_seconds: float = 30.0,
        block_seconds: float = 0.0,
    ) -> list[Delivery]:
        check_claim_count(max_count)
        lease_ms = max(1, min(int(lease_seconds * 1000), LEASE_HORIZON_MS))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_seconds
        pause = _POLL_MIN_SECONDS
        while True:
            claimed = await self._claim_once(topic, group, consumer, max_count, lease_ms)
            remaining = deadline - loop.time()
            if claimed or remaining <= 0:
                return claimed
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX_SECONDS)

    async def _claim_once(
        self, topic: str, group: str, consumer: str, max_count: int, lease_ms: int
    ) -> list[Delivery]:
        out: list[Delivery] = []
        dead: list[tuple[int, str, LogRecord]] = []
        # Start at a rotating partition so one busy partition cannot starve the others.
        self._cursor = (self._cursor + 1) % self._partitions
        for step in range(self._partitions):
            if len(out) >= max_count:
                break
            partition = (self._cursor + step) % self._partitions
            key = self.stream_key(topic, partition)
            try:
                reply = await self._claim(
                    keys=[key],
                    args=[
                        group,
                        consumer,
                        max_count - len(out),
                        LEASE_HORIZON_MS,
                        LEASE_HORIZON_MS - lease_ms,
                    ],
                )
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    continue
                raise
            for raw_id, deliveries, raw_fields in reply:
                stream_id = _text(raw_id)
                fields = _fields(raw_fields)
                record_key = _text(fields.get("k", b""))
                payload = fields.get("p", b"")
                attempts = int(deliveries)
                if attempts > self._max_attempts:
                    dead.append((partition, stream_id, LogRecord(record_key, payload)))
                else:
                    out.append(
                        Delivery(
                            id=f"{partition}/{stream_id}",
                            key=record_key,
                            payload=payload,
                            attempts=attempts,
                        )
                    )
        if dead:
            await self.append(dead_letter_topic(topic), [record for _, _, record in dead])
            await self.ack(topic, group, [f"{p}/{sid}" for p, sid, _ in dead])
        out.sort(key=lambda d: (int(d.id.split("/", 1)[0]), _id_key(d.id.split("/", 1)[1])))
        return out

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        by_partition: dict[int, list[str]] = {}
        for delivery_id in ids:
            number, _, stream_id = delivery_id.partition("/")
            by_partition.setdefault(int(number), []).append(stream_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition, stream_ids in by_partition.items():
                pipe.xack(self.stream_key(topic, partition), group, *stream_ids)
            await pipe.execute()

    async def pending(self, topic: str, group: str) -> int:
        total = 0
        for index in range(self._partitions):
            key = self.stream_key(topic, index)
            try:
                infos = await self._redis.xinfo_groups(key)
            except ResponseError:
                continue
            for raw_info in infos:
                info = {_text(k): v for k, v in raw_info.items()}
                if _text(info.get("name", b"")) != group:
                    continue
                total += int(info.get("pending") or 0)
                lag = info.get("lag")
                if lag is None:
                    last = _text(info.get("last-delivered-id", b"0-0"))
                    lag = len(await self._redis.xrange(key, min=f"({last}", max="+") or [])
                total += int(lag)
        return total

    async def _maybe_trim(self, topic: str, partitions: list[int]) -> None:
        now = time.monotonic()
        for partition in partitions:
            key = self.stream_key(topic, partition)
            if now - self._last_trim.get(key, 0.0) < _TRIM_INTERVAL_SECONDS:
                continue
            self._last_trim[key] = now
            await self.trim(key)

    async def trim(self, key: str) -> int:
        """Trim one partition to its bound without dropping entries any group still needs."""
        if self._max_len is None or await self._redis.xlen(key) <= self._max_len:
            return 0
        safe = await self._oldest_needed(key)
        if safe is None:
            return 0
        return int(await self._redis.xtrim(key, minid=safe, approximate=False))

    async def _oldest_needed(self, key: str) -> str | None:
        """The smallest id some group still needs; None when trimming is not safe or useful."""
        try:
            infos = await self._redis.xinfo_groups(key)
        except ResponseError:
            return None
        if not infos:
            return None
        candidates: list[tuple[int, int]] = []
        for raw_info in infos:
            info = {_text(k): v for k, v in raw_info.items()}
            name = _text(info["name"])
            summary = await self._redis.xpending(key, name)
            if summary and summary.get("pending"):
                candidates.append(_id_key(_text(summary["min"])))
            last_ms, last_seq = _id_key(_text(info.get("last-delivered-id", b"0-0")))
            candidates.append((last_ms, last_seq + 1))
        ms, seq = min(candidates)
        return f"{ms}-{seq}"

    async def close(self) -> None:
        """The Redis client belongs to the caller; nothing to release."""
