"""The Redis fatigue ledger: one Lua script per decision checks and reserves every rule atomically.

Everything a decision needs about one person lives in one sorted set, the ledger
`<ns>{p:<profile_id>}:l`: one member per reservation, scored by its time (ms), trimmed to the
policy's retention (the longest window). A member reads

    <state><expire ms>|,<token>,<token>,...,|<reservation suffix>|<metadata JSON>

with state `R` (reserved: counts until its expiry, then it is expired), `C` (confirmed: counts)
or `X` (released: counts no more), and one token per counter key the message counts on (a short
hash of the key, so that any key text fits the format). A decision reads the ledger once and
evaluates every check in one pass over it; an idempotency key adds a second key,
`...:i:<idempotency key>` (a hash with the first result `r` and the final decision `d`, with its
own time to live). Both keys share the profile's hash tag, so the scripts run unchanged on Redis
Cluster.

Unconfirmed reservations expire lazily: a reserved member whose expiry has passed stops counting
where it lies, and stays (answering "expired") until the retention trims it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from upm_common.errors import NotFoundError
from upm_common.joining import CallJoiner
from upm_orchestrator.store.base import (
    CONFIRMED,
    EXPIRED,
    RELEASED,
    RESERVED,
    ReservationInfo,
    ReserveRequest,
    ReserveResult,
    Violation,
    reservation_profile,
)
from upm_orchestrator.store.common import check_transition, new_ids

# A member's head: state, expiry, the counter-key tokens and the reservation suffix.
PARSE = """
local function parse(member)
  return string.match(member, '^(%u)(%d*)|([^|]*)|([^|]*)|')
end
"""

# KEYS: 1 ledger, 2 idempotency hash (only with an idempotency key).
# ARGV: 1 reservation suffix, 2 metadata (JSON), 3 now, 4 reserve ('1' or '0'), 5 the
#       reservation's expiry, 6 the ledger's time to live, 7 the retention cutoff, 8 the tokens
#       to write as `,<token>,<token>,`, 9 the earliest `since` of the checks, 10 the checks as
#       `<since>:<limit>:<token>:<rule id>` joined by `;`, 11 the idempotency time to live.
#       Only the first two differ between the decisions of one call with one plan.
# Returns {0, reservation suffix, expiry, violations} where violations read
# `<rule>:<count>:<blocking ms>` joined by `;`, or {1, first result, final decision} for a
# replay, a result reading `<suffix>|<expiry>|<violations>|<metadata JSON>`.
#
# Lua is slow next to Redis's commands (a pattern match costs about a microsecond), so the
# script does as little of it as it can: arithmetic is done by the caller, and the checks are
# parsed only when the person has entries in their windows.
RESERVE_SCRIPT = """
if KEYS[2] then
  local prior = redis.call('HMGET', KEYS[2], 'r', 'd')
  if prior[1] then return {1, prior[1], prior[2] or ''} end
end
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local violations = ''
if #entries > 0 then
  local now, oldest = tonumber(ARGV[3]), tonumber(ARGV[9])
  local times, scores, members, ends, m = {}, {}, {}, {}, 0
  for i = 1, #entries, 2 do
    local at = tonumber(entries[i + 1])
    if at >= oldest then
      local member = entries[i]
      local state = string.byte(member, 1)
      -- C(onfirmed) counts; R(eserved) counts until its expiry; X (released) never.
      if state == 67 or (state == 82 and tonumber(string.match(member, '^R(%d+)')) > now) then
        m = m + 1
        times[m], scores[m], members[m] = at, entries[i + 1], member
        -- Tokens count where they lie before the second '|' (the metadata comes later).
        ends[m] = string.find(member, '|', string.find(member, '|', 2, true) + 1, true)
      end
    end
  end
  if m > 0 then
    local found = {}
    for since, limit, token, rule in string.gmatch(ARGV[10], '(-?%d+):(%d+):(%x+):([^;]+)') do
      since, limit, token = tonumber(since), tonumber(limit), ',' .. token .. ','
      local hits = {}
      for e = 1, m do
        if times[e] >= since then
          local at = string.find(members[e], token, 1, true)
          if at and at < ends[e] then hits[#hits + 1] = e end
        end
      end
      if #hits >= limit then
        -- The entry whose aging-out lifts the check: the (count - limit + 1)-th in time.
        found[#found + 1] = rule .. ':' .. #hits .. ':' .. scores[hits[#hits - limit + 1]]
      end
    end
    violations = table.concat(found, ';')
  end
end
local granted, expire = '', '0'
if ARGV[4] == '1' and violations == '' then
  granted, expire = ARGV[1], ARGV[5]
  redis.call('ZADD', KEYS[1], ARGV[3], 'R' .. expire .. '|' .. ARGV[8] .. '|' .. granted .. '|'
    .. ARGV[2])
  if #entries > 0 and tonumber(entries[2]) < tonumber(ARGV[7]) then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[7])
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
if KEYS[2] then
  redis.call('HSET', KEYS[2], 'r', granted .. '|' .. expire .. '|' .. violations .. '|' .. ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[11])
end
return {0, granted, expire, violations}
"""

# KEYS: 1 ledger. ARGV: 1 now, 2 reservation suffix, 3 target state (`C` or `X`).
# Returns {state letter or '' when unknown, expiry, metadata JSON}.
TRANSITION_SCRIPT = (
    PARSE
    + """
local now = tonumber(ARGV[1])
local needle = '|' .. ARGV[2] .. '|'
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local member = entries[i]
  if string.find(member, needle, 1, true) then
    local state, expire, held, id = parse(member)
    if id == ARGV[2] then
      local meta = string.sub(member, #state + #expire + #held + #id + 4)
      if state == 'R' and tonumber(expire) <= now then return {'E', expire, meta} end
      if state == 'R' then
        -- A released reservation keeps its place (to answer "released") but no tokens.
        if ARGV[3] == 'X' then held = '' end
        redis.call('ZREM', KEYS[1], member)
        redis.call('ZADD', KEYS[1], entries[i + 1],
          ARGV[3] .. expire .. '|' .. held .. '|' .. id .. '|' .. meta)
        state = ARGV[3]
      end
      return {state, expire, meta}
    end
  end
end
return {'', 0, ''}
"""
)

# KEYS: 1 ledger. ARGV: 1 now, 2 since, 3 token.
COUNT_SCRIPT = (
    PARSE
    + """
local now = tonumber(ARGV[1])
local token = ',' .. ARGV[3] .. ','
local count = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf')) do
  local state, expire, held = parse(member)
  if (state == 'C' or (state == 'R' and tonumber(expire) > now))
    and string.find(held, token, 1, true) then
    count = count + 1
  end
end
return count
"""
)

# KEYS: 1 idempotency hash. ARGV: 1 the final decision. Only while the first result is held, so
# an expired key is not brought back without its time to live.
REMEMBER_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'r') == 1 then redis.call('HSETNX', KEYS[1], 'd', ARGV[1]) end
return 1
"""

_STATES = {b"R": RESERVED, b"C": CONFIRMED, b"X": RELEASED, b"E": EXPIRED}


def _sha(script: str) -> bytes:
    return hashlib.sha1(script.encode()).hexdigest().encode()


RESERVE_SHA = _sha(RESERVE_SCRIPT)
REMEMBER_SHA = _sha(REMEMBER_SCRIPT)


def bulk_strings(parts: Sequence[bytes]) -> bytes:
    """Arguments of a command in the wire format (RESP)."""
    return b"".join([b"$%d\r\n%b\r\n" % (len(part), part) for part in parts])


def evalsha_head(sha: bytes, keys: int, arguments: int) -> bytes:
    """The start of an EVALSHA in the wire format, up to its first key: `keys` keys and
    `arguments` arguments follow. Packing commands here is several times cheaper than the
    client's general packing, once the largest cost of a batch."""
    return b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n$%d\r\n%d\r\n" % (
        3 + keys + arguments,
        sha,
        len(str(keys)),
        keys,
    )


@lru_cache(maxsize=65_536)
def key_token(key: str) -> str:
    """The ledger's token for a counter key: 12 hex digits of its hash (a collision between two
    of one person's keys is a 1-in-10^14 chance)."""
    return hashlib.blake2b(key.encode(), digest_size=6).hexdigest()


class RedisFatigueStore:
    """A FatigueStore on Redis (or Redis Cluster)."""

    def __init__(
        self, redis: Redis, *, namespace: str = "upm:orch:", max_in_flight: int = 32
    ) -> None:
        self._redis = redis
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._namespace = namespace
        self._idle: list[Any] = []
        # Single decisions made together share one pipeline, a few pipelines at most at once;
        # one alone goes at once from its own task.
        self._single: CallJoiner[None, ReserveRequest, ReserveResult] = CallJoiner(
            lambda _, requests: self._execute(requests), max_running=4, inline_when_idle=True
        )
        self._transition = redis.register_script(TRANSITION_SCRIPT)
        self._count = redis.register_script(COUNT_SCRIPT)

    def _prefix(self, profile_id: str) -> str:
        return f"{self._namespace}{{p:{profile_id}}}:"

    def command(
        self,
        request: ReserveRequest,
        suffix: str,
        tails: dict[tuple[object, ...], tuple[bytes, bytes]] | None = None,
    ) -> bytes:
        """One decision's EVALSHA of the reservation script, packed (also the benchmark's).

        Every argument but the reservation suffix and the metadata depends on the plan and the
        clock only: requests planned together (which share their checks and writes tuples)
        pack that tail once per call in `tails`, keyed by identity, which is stable while the
        caller holds the requests.
        """
        keyed = bool(request.idempotency_key)
        shape = (
            id(request.checks),
            id(request.writes),
            request.now_ms,
            request.reserve,
            request.ttl_ms,
            request.retention_ms,
            request.idempotency_ttl_ms,
            keyed,
        )
        found = None if tails is None else tails.get(shape)
        if found is None:
            found = self._tail(request, keyed)
            if tails is not None:
                tails[shape] = found
        head, tail = found
        prefix = self._prefix(request.profile_id)
        parts = [f"{prefix}l".encode()]
        if keyed:
            parts.append(f"{prefix}i:{request.idempotency_key}".encode())
        parts.append(suffix.encode())
        parts.append(orjson.dumps(request.meta))
        return head + bulk_strings(parts) + tail

    @staticmethod
    def _tail(request: ReserveRequest, keyed: bool) -> tuple[bytes, bytes]:
        """The packed command's head (up to the keys) and its tail (the plan's arguments)."""
        now = request.now_ms
        checks = ";".join(
            f"{c.since_ms}:{c.limit}:{key_token(c.key)}:{c.rule_id}" for c in request.checks
        )
        writes = "".join(f",{key_token(key)}" for key in request.writes) + ","
        rest = [
            b"%d" % now,
            b"1" if request.reserve else b"0",
            b"%d" % (now + request.ttl_ms),
            b"%d" % (request.retention_ms + request.ttl_ms),
            b"%d" % (now - request.retention_ms),
            writes.encode(),
            b"%d" % min((c.since_ms for c in request.checks), default=now),
            checks.encode(),
            b"%d" % request.idempotency_ttl_ms,
        ]
        head = evalsha_head(RESERVE_SHA, 2 if keyed else 1, 2 + len(rest))
        return head, bulk_strings(rest)

    @staticmethod
    def _decode(profile_id: str, raw: list[Any], meta: dict[str, Any]) -> ReserveResult:
        """A script's answer; `meta` is what this call sent (a replay answers the first's)."""
        decision = None
        replayed = int(raw[0]) == 1
        if replayed:
            suffix, expire, violations, sent = bytes(raw[1]).split(b"|", 3)
            meta = orjson.loads(sent)
            decision = bytes(raw[2]) if raw[2] else None
        else:
            suffix, expire, violations = raw[1], raw[2], raw[3]
        return ReserveResult(
            reservation_id=f"{profile_id}~{suffix.decode()}" if suffix else "",
            expire_ms=int(expire),
            violations=tuple(
                Violation(rule.decode(), int(count), int(blocking))
                for rule, count, blocking in (v.split(b":") for v in violations.split(b";"))
            )
            if violations
            else (),
            meta=meta,
            replayed=replayed,
            decision=decision,
        )

    async def reserve(self, request: ReserveRequest) -> ReserveResult:
        [result] = await self._single(None, [request])
        return result

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
        tails: dict[tuple[object, ...], tuple[bytes, bytes]] = {}
        suffixes = new_ids(len(requests))
        packed = b"".join(
            [self.command(r, suffix, tails) for r, suffix in zip(requests, suffixes, strict=True)]
        )
        for attempt in range(2):
            raws = await self._pipeline(packed, len(requests))
            if attempt == 0 and any(isinstance(raw, NoScriptError) for raw in raws):
                await self._redis.script_load(RESERVE_SCRIPT)
                continue
            failed = next((raw for raw in raws if isinstance(raw, Exception)), None)
            if failed is not None:
                raise failed
            return [
                self._decode(r.profile_id, raw, r.meta)
                for r, raw in zip(requests, raws, strict=True)
            ]
        raise AssertionError("unreachable")

    async def _pipeline(self, packed: bytes, replies: int) -> list[Any]:
        """Send packed commands in one write on one pooled connection and read the replies.

        Script errors come back in place (like a pipeline with raise_on_error=False); a
        connection error drops the connection and is raised, never retried: scripts may have
        run. One deadline covers every reply: a per-reply timer cost more than a decision.
        """
        pool = self._redis.connection_pool
        # Connections stay checked out between calls (at most `max_in_flight` of them, the
        # semaphore's bound): the pool's locking on every get and release cost more than a
        # small decision's own work.
        if self._idle:
            connection = self._idle.pop()
        else:
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            async with asyncio.timeout(connection.socket_timeout):
                await connection.send_packed_command(packed)
                raws: list[Any] = []
                for _ in range(replies):
                    try:
                        raws.append(await connection.read_response(timeout=math.inf))
                    except ResponseError as exc:
                        raws.append(exc)
        except BaseException:
            # The stream may hold unread replies: never hand this connection out again.
            await connection.disconnect()
            await pool.release(connection)
            raise
        self._idle.append(connection)
        return raws

    async def remember(self, answers: Sequence[tuple[str, str, bytes]]) -> None:
        commands = b"".join(
            [
                evalsha_head(REMEMBER_SHA, 1, 1)
                + bulk_strings([f"{self._prefix(profile_id)}i:{key}".encode(), decision])
                for profile_id, key, decision in answers
            ]
        )
        for attempt in range(2):
            async with self._in_flight:
                raws = await self._pipeline(commands, len(answers))
            if attempt == 0 and any(isinstance(raw, NoScriptError) for raw in raws):
                await self._redis.script_load(REMEMBER_SCRIPT)
                continue
            failed = next((raw for raw in raws if isinstance(raw, Exception)), None)
            if failed is not None:
                raise failed
            return

    async def _move(self, reservation_id: str, now_ms: int, target: str) -> ReservationInfo:
        profile_id = reservation_profile(reservation_id)
        missing = NotFoundError(
            f"reservation {reservation_id!r} not found",
            resource_type="reservation",
            resource_name=reservation_id,
        )
        if not profile_id:
            raise missing
        suffix = reservation_id.rpartition("~")[2]
        raw = await self._transition(
            keys=[f"{self._prefix(profile_id)}l"],
            args=[now_ms, suffix, "C" if target == CONFIRMED else "X"],
        )
        if not raw[0]:
            raise missing
        info = ReservationInfo(
            reservation_id=reservation_id,
            profile_id=profile_id,
            state=_STATES[bytes(raw[0])],
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
        raw = await self._count(
            keys=[f"{self._prefix(profile_id)}l"], args=[now_ms, since_ms, key_token(key)]
        )
        return int(raw)

    async def close(self) -> None:
        """Hand the held connections back to the pool. The Redis client belongs to the caller,
        who may share it (the service shares it with the event log) and closes it."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._redis.connection_pool.release(connection)
