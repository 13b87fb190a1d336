"""The Redis fatigue ledger: one Lua script per decision checks and reserves every rule atomically.

Keys are hash-tagged per profile (`{p:<profile_id>}`), so one decision's keys live in one slot
and the scripts run unchanged on Redis Cluster. Per profile:

- `...k:<counter key>`: a sorted set of reservation ids scored by their time (ms);
- `...pending`: a sorted set of unconfirmed reservations scored by their expiry time;
- `...r:<reservation id>`: a hash with state `s`, expiry `e`, counter keys `k` and metadata `m`;
- `...i:<idempotency key>`: a hash with the first result `r` and the final decision `d`.

Every script first expires the profile's stale reservations (removing them from their counter
keys), so an unconfirmed reservation stops counting once its time to live has passed. Those
reservation and counter keys are not all declared in KEYS, but they share the profile's hash tag
and so the slot of the declared keys, which Redis Cluster accepts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from upm_common.errors import NotFoundError
from upm_orchestrator.store.base import (
    CONFIRMED,
    RELEASED,
    ReservationInfo,
    ReserveRequest,
    ReserveResult,
    Violation,
    reservation_profile,
)
from upm_orchestrator.store.common import Coalescer, check_transition, new_reservation_id

EXPIRE_STALE = """
local function expire_stale(prefix, pending, now)
  while true do
    local stale = redis.call('ZRANGEBYSCORE', pending, '-inf', now, 'LIMIT', 0, 256)
    if #stale == 0 then return end
    for _, id in ipairs(stale) do
      local rkey = prefix .. 'r:' .. id
      local keys = redis.call('HGET', rkey, 'k')
      if keys then
        for k in string.gmatch(keys, '[^\\n]+') do redis.call('ZREM', k, id) end
        redis.call('HSET', rkey, 's', 'expired')
      end
      redis.call('ZREM', pending, id)
    end
  end
end
"""

# KEYS: 1 idempotency hash, 2 pending set, 3 new reservation hash, 4.. counter keys.
# ARGV: 1 now, 2 has idempotency key, 3 idempotency ttl, 4 reserve, 5 reservation id, 6 ttl,
#       7 retention, 8 metadata (JSON), 9 key prefix, 10 the checks as
#       `<KEYS index>:<since>:<limit>:<rule id>` joined by `|`, 11 the KEYS indexes to write,
#       joined by `,`. Packing checks and writes into two arguments keeps the command small.
RESERVE_SCRIPT = (
    EXPIRE_STALE
    + """
local now = tonumber(ARGV[1])
if ARGV[2] == '1' then
  local prior = redis.call('HMGET', KEYS[1], 'r', 'd')
  if prior[1] then return {1, prior[1], prior[2] or ''} end
end
expire_stale(ARGV[9], KEYS[2], now)
local violations = {}
for index, since, limit, rule in string.gmatch(ARGV[10], '(%d+):(-?%d+):(%d+):([^|]+)') do
  local key = KEYS[tonumber(index)]
  limit = tonumber(limit)
  local count = redis.call('ZCOUNT', key, since, '+inf')
  if count >= limit then
    local entry = redis.call('ZRANGEBYSCORE', key, since, '+inf', 'WITHSCORES', 'LIMIT',
      count - limit, 1)
    violations[#violations + 1] = {rule, count, tonumber(entry[2])}
  end
end
local granted = ''
local expire = 0
if ARGV[4] == '1' and #violations == 0 then
  granted = ARGV[5]
  expire = now + tonumber(ARGV[6])
  local retention = tonumber(ARGV[7])
  local names = {}
  -- Entries older than the retention never count (every window is shorter), so trimming them
  -- is housekeeping only: done by one reservation in eight (its random id ends in 0 or 8),
  -- which keeps a counter key within a few stale entries at an eighth of the calls.
  local trim = string.byte(granted, -1) % 8 == 0
  for index in string.gmatch(ARGV[11], '%d+') do
    local key = KEYS[tonumber(index)]
    redis.call('ZADD', key, now, granted)
    if trim then redis.call('ZREMRANGEBYSCORE', key, '-inf', now - retention) end
    redis.call('PEXPIRE', key, retention)
    names[#names + 1] = key
  end
  redis.call('HSET', KEYS[3], 's', 'reserved', 'e', expire, 'k', table.concat(names, '\\n'),
    'm', ARGV[8])
  redis.call('PEXPIRE', KEYS[3], retention + tonumber(ARGV[6]))
  redis.call('ZADD', KEYS[2], expire, granted)
  redis.call('PEXPIRE', KEYS[2], retention + tonumber(ARGV[6]))
end
local encoded = cjson.encode({r = granted, e = expire, v = violations, m = ARGV[8]})
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'r', encoded)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return {0, encoded, ''}
"""
)

# KEYS: 1 reservation hash, 2 pending set. ARGV: 1 now, 2 key prefix, 3 target state.
TRANSITION_SCRIPT = (
    EXPIRE_STALE
    + """
local now = tonumber(ARGV[1])
expire_stale(ARGV[2], KEYS[2], now)
local fields = redis.call('HMGET', KEYS[1], 's', 'e', 'm', 'k')
local state = fields[1]
if not state then return {''} end
if state == 'reserved' then
  local id = string.sub(KEYS[1], string.len(ARGV[2]) + 3)
  if ARGV[3] == 'confirmed' then
    redis.call('HSET', KEYS[1], 's', 'confirmed')
    state = 'confirmed'
  else
    for k in string.gmatch(fields[4], '[^\\n]+') do redis.call('ZREM', k, id) end
    redis.call('HSET', KEYS[1], 's', 'released')
    state = 'released'
  end
  redis.call('ZREM', KEYS[2], id)
end
return {state, fields[2], fields[3]}
"""
)


# KEYS: 1 pending set, 2 counter key. ARGV: 1 now, 2 key prefix, 3 since.
COUNT_SCRIPT = (
    EXPIRE_STALE
    + """
expire_stale(ARGV[2], KEYS[1], tonumber(ARGV[1]))
return redis.call('ZCOUNT', KEYS[2], ARGV[3], '+inf')
"""
)


# KEYS: 1 idempotency hash. ARGV: 1 the final decision. Only while the first result is held, so
# an expired key is not brought back without its time to live.
REMEMBER_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'r') == 1 then redis.call('HSETNX', KEYS[1], 'd', ARGV[1]) end
return 1
"""


class RedisFatigueStore:
    """A FatigueStore on Redis (or Redis Cluster)."""

    def __init__(
        self, redis: Redis, *, namespace: str = "upm:orch:", max_in_flight: int = 32
    ) -> None:
        self._redis = redis
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._namespace = namespace
        self._reserve_sha: str | None = None
        self._idle: list[Any] = []
        self._single: Coalescer[ReserveRequest, ReserveResult] = Coalescer(self._execute)
        self._transition = redis.register_script(TRANSITION_SCRIPT)
        self._count = redis.register_script(COUNT_SCRIPT)
        self._remember = redis.register_script(REMEMBER_SCRIPT)

    def _prefix(self, profile_id: str) -> str:
        return f"{self._namespace}{{p:{profile_id}}}:"

    @staticmethod
    def _layout(request: ReserveRequest) -> tuple[tuple[str, ...], str, str]:
        """The counter keys (short names, in KEYS order from 4 on) and the packed checks and
        writes arguments: they depend on the checks and writes only, not on the profile."""
        shorts: list[str] = []
        index: dict[str, int] = {}

        def key_index(short: str) -> int:
            found = index.get(short)
            if found is None:
                shorts.append(short)
                found = index[short] = len(shorts) + 3
            return found

        checks = "|".join(
            f"{key_index(c.key)}:{c.since_ms}:{c.limit}:{c.rule_id}" for c in request.checks
        )
        writes = ",".join(str(key_index(short)) for short in request.writes)
        return tuple(shorts), checks, writes

    def _args(
        self,
        request: ReserveRequest,
        reservation_id: str,
        layouts: dict[tuple[int, int], tuple[tuple[str, ...], str, str]] | None = None,
    ) -> tuple[list[str], list[Any]]:
        prefix = self._prefix(request.profile_id)
        if layouts is None:
            layout = self._layout(request)
        else:
            # Requests planned together share their checks and writes tuples (the engine's
            # plan): lay each shape out once per call. Keyed by identity, which is stable
            # while the caller holds the requests.
            shape = (id(request.checks), id(request.writes))
            found = layouts.get(shape)
            if found is None:
                found = layouts[shape] = self._layout(request)
            layout = found
        shorts, checks, writes = layout
        keys = [
            f"{prefix}i:{request.idempotency_key}",
            f"{prefix}pending",
            f"{prefix}r:{reservation_id}",
        ]
        keys.extend([f"{prefix}k:{short}" for short in shorts])
        args: list[Any] = [
            request.now_ms,
            "1" if request.idempotency_key else "0",
            request.idempotency_ttl_ms,
            "1" if request.reserve else "0",
            reservation_id,
            request.ttl_ms,
            request.retention_ms,
            orjson.dumps(request.meta),
            prefix,
            checks,
            writes,
        ]
        return keys, args

    @staticmethod
    def _decode(raw: list[Any]) -> ReserveResult:
        replayed = int(raw[0]) == 1
        body = orjson.loads(raw[1])
        violations = body.get("v") or []
        if isinstance(violations, dict):
            violations = []
        decision = bytes(raw[2]) if len(raw) > 2 and raw[2] else None
        return ReserveResult(
            reservation_id=str(body.get("r") or ""),
            expire_ms=int(body.get("e") or 0),
            violations=tuple(Violation(str(v[0]), int(v[1]), int(v[2])) for v in violations),
            meta=orjson.loads(body["m"]) if body.get("m") else {},
            replayed=replayed,
            decision=decision,
        )

    async def _sha(self) -> str:
        if self._reserve_sha is None:
            loaded = await self._redis.script_load(RESERVE_SCRIPT)
            self._reserve_sha = loaded.decode() if isinstance(loaded, bytes) else str(loaded)
        return self._reserve_sha

    async def reserve(self, request: ReserveRequest) -> ReserveResult:
        return await self._single.submit(request)

    async def reserve_many(self, requests: list[ReserveRequest]) -> list[ReserveResult]:
        if len(requests) == 1:
            return [await self.reserve(requests[0])]
        return await self._execute(requests)

    async def _execute(self, requests: list[ReserveRequest]) -> list[ReserveResult]:
        # At most `max_in_flight` commands or pipelines at once, below the client's pool size:
        # callers wait here instead of failing for want of a connection.
        async with self._in_flight:
            return await self._send(requests)

    async def _send(self, requests: list[ReserveRequest]) -> list[ReserveResult]:
        # EVALSHA straight, not redis-py's Script in a pipeline: that checks SCRIPT EXISTS on
        # every execute, a second round trip. A NOSCRIPT (Redis restarted, or failed over)
        # means the script did not run, so loading it and sending the same commands is safe.
        layouts: dict[tuple[int, int], tuple[tuple[str, ...], str, str]] = {}
        commands = [self._args(r, new_reservation_id(r.profile_id), layouts) for r in requests]
        for _ in range(2):
            sha = await self._sha()
            raws = await self._pipeline(sha, commands)
            if any(isinstance(raw, NoScriptError) for raw in raws):
                self._reserve_sha = None
                continue
            failed = next((raw for raw in raws if isinstance(raw, Exception)), None)
            if failed is not None:
                raise failed
            return [self._decode(raw) for raw in raws]
        raise RuntimeError("Redis keeps forgetting the reservation script")

    async def _pipeline(self, sha: str, commands: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Send every EVALSHA in one write on one pooled connection and read the replies.

        The commands are packed here (RESP, from already flat arguments), several times cheaper
        than the client's general packing, which was the largest cost of a batch. Script errors
        come back in place (like a pipeline with raise_on_error=False); a connection error
        drops the connection and is raised, never retried: scripts may have run.
        """
        head = b"$40\r\n" + sha.encode() + b"\r\n"
        chunks: list[bytes] = []
        for keys, args in commands:
            chunks.append(b"*%d\r\n$7\r\nEVALSHA\r\n" % (len(keys) + len(args) + 3))
            chunks.append(head)
            count = str(len(keys)).encode()
            chunks.append(b"$%d\r\n%s\r\n" % (len(count), count))
            for part in (*keys, *args):
                value = (
                    part
                    if isinstance(part, bytes)
                    else (part.encode() if isinstance(part, str) else str(part).encode())
                )
                chunks.append(b"$%d\r\n%s\r\n" % (len(value), value))
        pool = self._redis.connection_pool
        # Connections stay checked out between calls (at most `max_in_flight` of them, the
        # semaphore's bound): the pool's locking on every get and release cost more than a
        # small decision's own work.
        if self._idle:
            connection = self._idle.pop()
        else:
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(b"".join(chunks))
            raws: list[Any] = []
            for _ in commands:
                try:
                    raws.append(await connection.read_response())
                except ResponseError as exc:
                    raws.append(exc)
        except BaseException:
            # The stream may hold unread replies: never hand this connection out again.
            await connection.disconnect()
            await pool.release(connection)
            raise
        self._idle.append(connection)
        return raws

    async def remember(self, profile_id: str, idempotency_key: str, decision: bytes) -> None:
        key = f"{self._prefix(profile_id)}i:{idempotency_key}"
        await self._remember(keys=[key], args=[decision])

    async def _move(self, reservation_id: str, now_ms: int, target: str) -> ReservationInfo:
        profile_id = reservation_profile(reservation_id)
        if not profile_id:
            raise NotFoundError(
                f"reservation {reservation_id!r} not found",
                resource_type="reservation",
                resource_name=reservation_id,
            )
        prefix = self._prefix(profile_id)
        raw = await self._transition(
            keys=[f"{prefix}r:{reservation_id}", f"{prefix}pending"],
            args=[now_ms, prefix, target],
        )
        state = raw[0].decode() if raw[0] else ""
        if not state:
            raise NotFoundError(
                f"reservation {reservation_id!r} not found",
                resource_type="reservation",
                resource_name=reservation_id,
            )
        info = ReservationInfo(
            reservation_id=reservation_id,
            profile_id=profile_id,
            state=state,
            expire_ms=int(raw[1] or 0),
            meta=orjson.loads(raw[2]) if raw[2] else {},
        )
        check_transition(info, target)
        return info

    async def confirm(self, reservation_id: str, now_ms: int) -> ReservationInfo:
        return await self._move(reservation_id, now_ms, CONFIRMED)

    async def release(self, reservation_id: str, now_ms: int) -> ReservationInfo:
        return await self._move(reservation_id, now_ms, RELEASED)

    async def count(self, profile_id: str, key: str, since_ms: int, now_ms: int) -> int:
        prefix = self._prefix(profile_id)
        raw = await self._count(
            keys=[f"{prefix}pending", f"{prefix}k:{key}"], args=[now_ms, prefix, since_ms]
        )
        return int(raw)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._redis.connection_pool.release(connection)
        await self._redis.aclose()
