"""The SQL fatigue ledger: one transaction per decision, serialised per profile.

The ledger is orchestrator_reservations: one row per reservation with the counter keys it counts
on. A row counts while confirmed, or reserved and not yet expired (an unconfirmed reservation
expires lazily: it stops counting where it lies, and reads as expired); rows older than the
policy's retention are deleted.

On PostgreSQL, every transaction first takes `SELECT ... FOR UPDATE` on the profile's row of
orchestrator_profile_locks, so concurrent decisions for one person queue while decisions for
different people run in parallel. SQLite has one writer at a time (every transaction begins
IMMEDIATE, see upm_common.db), which serialises everything.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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
from upm_orchestrator.store.common import check_transition, new_reservation_id
from upm_orchestrator.store.tables import idempotency, profile_locks, reservations

MAX_GROUP = 500
FOREVER = 2**63 - 1


class SqlFatigueStore:
    """A FatigueStore on the service database (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine, *, concurrency: int = 8) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._concurrency = concurrency
        # One batch of single decisions at a time: a batch already spreads over up to
        # `concurrency` transactions, and decisions arriving meanwhile join the next batch.
        # Single decisions made together share one transaction, one at a time.
        self._single: CallJoiner[None, ReserveRequest, ReserveResult] = CallJoiner(
            lambda _, requests: self._reserve_grouped(requests)
        )

    def _insert(self, table: Any) -> Any:
        return (pg_insert if self._postgres else sqlite_insert)(table)

    async def _lock(self, conn: AsyncConnection, profile_id: str) -> None:
        if not self._postgres:
            return
        query = (
            select(profile_locks.c.profile_id)
            .where(profile_locks.c.profile_id == profile_id)
            .with_for_update()
        )
        if (await conn.execute(query)).first() is None:
            await conn.execute(
                self._insert(profile_locks).values(profile_id=profile_id).on_conflict_do_nothing()
            )
            await conn.execute(query)

    async def reserve(self, request: ReserveRequest) -> ReserveResult:
        [result] = await self._single(None, [request])
        return result

    async def reserve_many(self, requests: list[ReserveRequest]) -> list[ReserveResult]:
        if len(requests) == 1:
            return [await self.reserve(requests[0])]
        return await self._reserve_grouped(requests)

    async def _reserve_grouped(self, requests: list[ReserveRequest]) -> list[ReserveResult]:
        # Requests are split by profile into a few groups, each decided in one transaction
        # with set-based statements (a constant number of round trips per group, not per
        # decision); one profile's requests always land in one group, in order.
        if not requests:
            return []
        groups = min(self._concurrency if self._postgres else 1, len(requests))
        parts: list[list[int]] = [[] for _ in range(groups)]
        slots: dict[str, int] = {}
        for index, request in enumerate(requests):
            slot = slots.setdefault(request.profile_id, len(slots) % groups)
            parts[slot].append(index)
        results: list[ReserveResult | None] = [None] * len(requests)

        async def run(indexes: list[int]) -> None:
            for start in range(0, len(indexes), MAX_GROUP):
                chunk = indexes[start : start + MAX_GROUP]
                done = await self._in_transaction([requests[i] for i in chunk])
                for index, result in zip(chunk, done, strict=True):
                    results[index] = result

        await asyncio.gather(*(run(part) for part in parts if part))
        return [result for result in results if result is not None]

    async def _in_transaction(self, requests: list[ReserveRequest]) -> list[ReserveResult]:
        for attempt in range(5):
            try:
                async with self._engine.begin() as conn:
                    return await self._reserve_group(conn, requests)
            except DBAPIError as exc:
                # Lock waits are ordered by profile id, but PostgreSQL may still pick us as a
                # deadlock victim against a concurrent single-profile transaction: retry.
                if "deadlock" not in str(exc).lower() or attempt == 4:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _lock_many(self, conn: AsyncConnection, profile_ids: list[str]) -> None:
        if not self._postgres:
            return
        await conn.execute(
            self._insert(profile_locks)
            .values([{"profile_id": p} for p in profile_ids])
            .on_conflict_do_nothing()
        )
        await conn.execute(
            select(profile_locks.c.profile_id)
            .where(profile_locks.c.profile_id.in_(profile_ids))
            .order_by(profile_locks.c.profile_id)
            .with_for_update()
        )

    async def _reserve_group(
        self, conn: AsyncConnection, requests: list[ReserveRequest]
    ) -> list[ReserveResult]:
        profile_ids = sorted({r.profile_id for r in requests})
        now = max(r.now_ms for r in requests)
        await self._lock_many(conn, profile_ids)
        prior: dict[tuple[str, str], Any] = {}
        keyed = [r for r in requests if r.idempotency_key]
        if keyed:
            rows = await conn.execute(
                select(
                    idempotency.c.profile_id,
                    idempotency.c.idempotency_key,
                    idempotency.c.result,
                    idempotency.c.decision,
                ).where(
                    idempotency.c.profile_id.in_({r.profile_id for r in keyed}),
                    idempotency.c.idempotency_key.in_({r.idempotency_key for r in keyed}),
                    idempotency.c.expire_ms > now,
                )
            )
            prior = {(row.profile_id, row.idempotency_key): row for row in rows}
        # Per (person, counter key): (time, counts until) of every live entry, oldest first.
        ledger_entries: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
        checked = [r for r in requests if r.checks]
        if checked:
            ledger_rows = await conn.execute(
                select(
                    reservations.c.profile_id,
                    reservations.c.created_ms,
                    reservations.c.state,
                    reservations.c.expire_ms,
                    reservations.c.counter_keys,
                )
                .where(
                    reservations.c.profile_id.in_({r.profile_id for r in checked}),
                    reservations.c.created_ms >= min(c.since_ms for r in checked for c in r.checks),
                    reservations.c.state.in_((RESERVED, CONFIRMED)),
                )
                .order_by(reservations.c.created_ms)
            )
            for profile_id, created_ms, state, expire_ms, keys in ledger_rows:
                until = FOREVER if state == CONFIRMED else expire_ms
                for key in keys:
                    ledger_entries[(profile_id, key)].append((created_ms, until))
        results: list[ReserveResult] = []
        new_reservations: list[dict[str, Any]] = []
        new_keys: dict[tuple[str, str], dict[str, Any]] = {}
        trims: dict[str, int] = {}
        for request in requests:
            profile_id = request.profile_id
            seen = prior.get((profile_id, request.idempotency_key))
            if seen is not None:
                results.append(
                    _result_from_json(seen.result, replayed=True, decision=seen.decision)
                )
                continue
            earlier = new_keys.get((profile_id, request.idempotency_key))
            if earlier is not None:
                results.append(_result_from_json(earlier["result"], replayed=True, decision=None))
                continue
            violations: list[Violation] = []
            now_ms = request.now_ms
            for check in request.checks:
                entries = [
                    t
                    for t, until in ledger_entries.get((profile_id, check.key), ())
                    if t >= check.since_ms and until > now_ms
                ]
                if len(entries) >= check.limit:
                    blocking = entries[len(entries) - check.limit]
                    violations.append(Violation(check.rule_id, len(entries), blocking))
            reservation_id, expire = "", 0
            if request.reserve and not violations:
                reservation_id = new_reservation_id(profile_id)
                expire = request.now_ms + request.ttl_ms
                writes = list(dict.fromkeys(request.writes))
                new_reservations.append(
                    {
                        "reservation_id": reservation_id,
                        "profile_id": profile_id,
                        "state": RESERVED,
                        "created_ms": request.now_ms,
                        "expire_ms": expire,
                        "meta": request.meta,
                        "counter_keys": writes,
                    }
                )
                for key in writes:
                    entries_for_key = ledger_entries[(profile_id, key)]
                    entries_for_key.append((request.now_ms, expire))
                    entries_for_key.sort()
                trims[profile_id] = max(
                    trims.get(profile_id, 0), request.now_ms - request.retention_ms
                )
            body = {
                "r": reservation_id,
                "e": expire,
                "v": [[v.rule_id, v.count, v.blocking_ms] for v in violations],
                "m": request.meta,
            }
            if request.idempotency_key:
                new_keys[(profile_id, request.idempotency_key)] = {
                    "profile_id": profile_id,
                    "idempotency_key": request.idempotency_key,
                    "result": body,
                    "decision": None,
                    "expire_ms": request.now_ms + request.idempotency_ttl_ms,
                }
            results.append(_result_from_json(body, replayed=False, decision=None))
        if new_reservations:
            await conn.execute(reservations.insert(), new_reservations)
        # One statement per distinct cutoff (one per policy), not one per person.
        by_cutoff: dict[int, list[str]] = defaultdict(list)
        for profile_id, before in trims.items():
            by_cutoff[before].append(profile_id)
        for before, trimmed in by_cutoff.items():
            await conn.execute(
                delete(reservations).where(
                    reservations.c.profile_id.in_(trimmed), reservations.c.created_ms < before
                )
            )
        if new_keys:
            await conn.execute(
                delete(idempotency).where(
                    idempotency.c.profile_id == bindparam("p"),
                    idempotency.c.idempotency_key == bindparam("k"),
                ),
                [{"p": profile_id, "k": key} for profile_id, key in new_keys],
            )
            await conn.execute(idempotency.insert(), list(new_keys.values()))
        return results

    async def remember(self, answers: Sequence[tuple[str, str, bytes]]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(idempotency)
                .where(
                    idempotency.c.profile_id == bindparam("p"),
                    idempotency.c.idempotency_key == bindparam("k"),
                    idempotency.c.decision.is_(None),
                )
                .values(decision=bindparam("d")),
                [{"p": p, "k": k, "d": d} for p, k, d in answers],
            )

    async def _move(self, reservation_id: str, now_ms: int, target: str) -> ReservationInfo:
        profile_id = reservation_profile(reservation_id)
        async with self._engine.begin() as conn:
            await self._lock(conn, profile_id)
            row = (
                await conn.execute(
                    select(reservations).where(reservations.c.reservation_id == reservation_id)
                )
            ).first()
            if row is None:
                raise NotFoundError(
                    f"reservation {reservation_id!r} not found",
                    resource_type="reservation",
                    resource_name=reservation_id,
                )
            state = row.state
            if state == RESERVED and row.expire_ms <= now_ms:
                state = EXPIRED
            if state == RESERVED:
                state = target
            if state != row.state:
                await conn.execute(
                    update(reservations)
                    .where(reservations.c.reservation_id == reservation_id)
                    .values(state=state)
                )
        info = ReservationInfo(reservation_id, profile_id, state, row.expire_ms, dict(row.meta))
        check_transition(info, target)
        return info

    async def confirm(self, reservation_id: str, now_ms: int) -> ReservationInfo:
        return await self._move(reservation_id, now_ms, CONFIRMED)

    async def release(self, reservation_id: str, now_ms: int) -> ReservationInfo:
        return await self._move(reservation_id, now_ms, RELEASED)

    async def count(self, profile_id: str, key: str, since_ms: int, now_ms: int) -> int:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(reservations.c.counter_keys).where(
                    reservations.c.profile_id == profile_id,
                    reservations.c.created_ms >= since_ms,
                    or_(
                        reservations.c.state == CONFIRMED,
                        and_(reservations.c.state == RESERVED, reservations.c.expire_ms > now_ms),
                    ),
                )
            )
            return sum(1 for (keys,) in rows if key in keys)

    async def close(self) -> None:
        return None


def _result_from_json(
    body: dict[str, Any], *, replayed: bool, decision: bytes | None
) -> ReserveResult:
    return ReserveResult(
        reservation_id=str(body.get("r") or ""),
        expire_ms=int(body.get("e") or 0),
        violations=tuple(Violation(str(v[0]), int(v[1]), int(v[2])) for v in body.get("v") or []),
        meta=dict(body.get("m") or {}),
        replayed=replayed,
        decision=decision,
    )
