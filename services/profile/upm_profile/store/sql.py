"""The profile store on SQL (SQLite or PostgreSQL), with bulk statements on the hot path.

Concurrency on PostgreSQL: a transaction first takes transaction-scoped advisory locks on the
hashed identifiers of its events (sorted, so two workers never wait on each other in a cycle),
then row locks on the profiles those identifiers belong to (sorted by id), re-reading the owners
until they are stable. Two workers can therefore never both create a profile for one identifier,
a merge cannot race an attachment to the profile merged away, and an event id is checked against
the applied-event table under the lock of its identifiers, so it is applied once. Deadlocks,
serialization failures and unique violations roll back and retry the whole batch. SQLite has one
writer at a time (BEGIN IMMEDIATE), so the same code runs there without the locks.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import dataclasses
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import orjson
import structlog
from sqlalchemy import (
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from upm.profile.v1 import profile_service_pb2 as pb
from upm_common.db import driver_connection
from upm_common.errors import AbortedError, FailedPreconditionError, NotFoundError
from upm_profile.changes import ChangePublisher, change
from upm_profile.effects import ORDER_COMPLETED, EventEffects, replay_effects
from upm_profile.identifiers import BlockList, IdentifierKey, strongest
from upm_profile.resolution import Guards, MergeOp, Resolver, new_profile_id
from upm_profile.store.base import (
    ApplyResult,
    ConflictView,
    ConsentView,
    CountView,
    EdgeView,
    ErasureResult,
    EventFilter,
    EventView,
    IdentityGraphView,
    MergeView,
    ProfileView,
    TraitView,
)
from upm_profile.store.tables import (
    applied_events,
    audit_log,
    consents,
    event_counts,
    event_daily,
    events,
    identifiers,
    identity_conflicts,
    identity_edges,
    merges,
    profiles,
    suppressions,
    trait_history,
    traits,
)
from upm_profile.traits import TraitOp, TraitState, fold, step, typed_columns

log = structlog.get_logger(__name__)

_TX_CHANGES: contextvars.ContextVar[list[pb.ProfileChange] | None] = contextvars.ContextVar(
    "profile_tx_changes", default=None
)
_RETRY_SQLSTATES = {"40P01", "40001", "23505"}
_CHUNK = 1000
_FAR = 1 << 30
# The advisory lock ids `k` of a JSON parameter `[id, ...]`.
_LOCK_IDS = "(SELECT json_array_elements_text($1::json)::bigint AS k) AS l"
# The rows (type, value) of a JSON parameter `[[type, value], ...]`.
_KEY_ROWS = "SELECT r->>0 AS type, r->>1 AS value FROM json_array_elements({}::json) AS r"
# How rows inserted into the event counts and daily buckets add to those already there: the
# same for an applied batch and for the losers of a merge.
_ADD_TO_COUNTS = (
    " ON CONFLICT (profile_id, name) DO UPDATE SET"
    " count = profile_event_counts.count + excluded.count,"
    " first_time = LEAST(profile_event_counts.first_time, excluded.first_time),"
    " last_time = GREATEST(profile_event_counts.last_time, excluded.last_time)"
)
_ADD_TO_DAILY = (
    " ON CONFLICT (profile_id, name, day) DO UPDATE SET"
    " count = profile_event_daily.count + excluded.count,"
    " revenue = profile_event_daily.revenue + excluded.revenue"
)


_Loaded = tuple[
    list[EventEffects],
    list[EventEffects],
    int,
    dict[IdentifierKey, str],
    dict[str, dict[str, set[str]]],
    dict[str, int],
    bool,
]
"""What `_load` gives the resolver: events to apply, suppressed events, duplicates, owners,
limited identifiers and identifier counts per profile, whether any edge was ever revoked."""


def _json(value: Any) -> str:
    """JSON for a jsonb parameter or a JSON column's value in COPY (naive datetimes are UTC)."""
    return orjson.dumps(value, option=orjson.OPT_NAIVE_UTC).decode()


def _as_is(value: Any) -> Any:
    return value


# Column orders of the rows the apply inserts as tuples (`_insert_rows`).
_EVENT_COLUMNS = (
    "id",
    "profile_id",
    "type",
    "name",
    "event_time",
    "received_time",
    "properties",
    "context",
)
_APPLIED_COLUMNS = (
    "id",
    "profile_id",
    "kind",
    "event_time",
    "identifiers",
    "payload",
    "applied_time",
)
_MERGE_COLUMNS = (
    "id",
    "kind",
    "winner_id",
    "loser_id",
    "rule",
    "event_id",
    "reason",
    "identifiers",
    "created_time",
)
_HISTORY_COLUMNS = (
    "profile_id",
    "name",
    "op",
    "value",
    "event_time",
    "event_id",
    "source",
    "recorded_time",
)


def _now() -> datetime:
    return datetime.now(UTC)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _retryable(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in _RETRY_SQLSTATES:
        return True
    message = str(orig).lower()
    return "deadlock" in message or "could not serialize" in message


class SqlProfileStore:
    """Profiles, identities, traits, consents, events and aggregates on one SQL database."""

    def __init__(
        self,
        engine: AsyncEngine,
        publisher: ChangePublisher,
        *,
        guards: Guards | None = None,
        blocklist: BlockList | None = None,
        default_region: str | None = None,
        max_attempts: int = 10,
        emit_event_applied: bool = True,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.guards = guards or Guards()
        self.blocklist = blocklist or BlockList()
        self.default_region = default_region
        self.max_attempts = max_attempts
        self.emit_event_applied = emit_event_applied
        self.is_postgres = engine.dialect.name == "postgresql"
        # How `_insert_rows` takes a JSON column's value: text for COPY on PostgreSQL, the
        # object itself elsewhere (the column type encodes it).
        self._json_column: Callable[[Any], Any] = _json if self.is_postgres else _as_is
        self.listeners: list[Callable[[Sequence[pb.ProfileChange]], None]] = []

    # ------------------------------------------------------------------ helpers

    def _insert(self, table: Table) -> Any:
        if self.is_postgres:
            return postgresql.insert(table)
        return sqlite.insert(table)

    async def _publish(self, conn: AsyncConnection, changes: Sequence[pb.ProfileChange]) -> None:
        pending = _TX_CHANGES.get()
        if pending is not None:
            pending.extend(changes)
        await self.publisher.publish(conn, changes)

    async def _transaction(self, work: Any) -> Any:
        """Run `work(conn)` in a transaction, retrying on lock conflicts; listeners hear the
        changes once committed.

        On PostgreSQL every statement of the transaction is planned for its arguments. The
        statements take arrays of ids whose length follows the batch: after a worker's light
        load (batches of 200 events), PostgreSQL settled on generic plans that scan the
        profiles by primary key for `id = ANY(...)` and move merged rows the same way. A burst
        of 4,000-event batches then took 163 µs of database CPU per event instead of 68
        (bench/profile_apply.py's burst measure). Planning each statement costs less than that
        at every batch size measured (10 to 4,000 events)."""
        for attempt in range(1, self.max_attempts + 1):
            pending: list[pb.ProfileChange] = []
            token = _TX_CHANGES.set(pending)
            try:
                async with self.engine.begin() as conn:
                    if self.is_postgres:
                        await driver_connection(conn, plan_for_arguments=True)
                    result = await work(conn)
                for listener in self.listeners:
                    listener(pending)
                return result
            except DBAPIError as exc:
                if attempt == self.max_attempts or not _retryable(exc):
                    raise
                log.info("profile_tx_retry", attempt=attempt, error=type(exc.orig).__name__)
                await asyncio.sleep(0.005 * attempt)
            except asyncpg.PostgresError as exc:
                # Raised by the statements sent straight to asyncpg on the hot path.
                if attempt == self.max_attempts or exc.sqlstate not in _RETRY_SQLSTATES:
                    raise
                log.info("profile_tx_retry", attempt=attempt, error=type(exc).__name__)
                await asyncio.sleep(0.005 * attempt)
            finally:
                _TX_CHANGES.reset(token)
        raise AbortedError("too many conflicts; retry")

    async def _insert_rows(
        self,
        conn: AsyncConnection,
        table: Table,
        columns: Sequence[str],
        records: list[tuple[Any, ...]],
    ) -> None:
        """Insert new rows, built as tuples in `columns` order with their JSON columns encoded
        by `self._json_column` (no dict per row on the hot path, one row per event): COPY on
        PostgreSQL, executemany elsewhere. Only for rows whose keys cannot exist yet (checked
        under the batch's locks)."""
        if not records:
            return
        if not self.is_postgres:
            rows = [dict(zip(columns, r, strict=True)) for r in records]
            for chunk in _chunks(rows):
                await conn.execute(insert(table), list(chunk))
            return
        driver = await driver_connection(conn)
        await driver.copy_records_to_table(table.name, records=records, columns=list(columns))

    async def _lock_identifiers(self, conn: AsyncConnection, keys: Iterable[IdentifierKey]) -> None:
        if not self.is_postgres:
            return
        lock_ids = sorted({k.lock_id() for k in keys})
        if lock_ids:
            # One statement takes every lock of the batch, in sorted order (no lock cycles).
            driver = await driver_connection(conn)
            await driver.execute(
                f"SELECT pg_advisory_xact_lock(k) FROM {_LOCK_IDS} ORDER BY k",
                _json(lock_ids),
            )

    async def _take_free_identifiers(
        self,
        conn: AsyncConnection,
        items: list[EventEffects],
        keys: Sequence[IdentifierKey],
        deferred: list[EventEffects],
    ) -> list[EventEffects]:
        """Lock the identifiers no other transaction holds (without waiting); the events with
        an identifier held elsewhere go to `deferred`. Returns the events to apply now."""
        lock_ids = {k: k.lock_id() for k in keys}
        if not lock_ids:
            return items
        driver = await driver_connection(conn)
        held = {
            row[0]
            for row in await driver.fetch(
                f"SELECT k FROM {_LOCK_IDS} WHERE NOT pg_try_advisory_xact_lock(k)",
                _json(sorted(set(lock_ids.values()))),
            )
        }
        if not held:
            return items
        return _split_off(items, deferred, {k for k, i in lock_ids.items() if i in held})

    async def _try_lock_profiles(self, conn: AsyncConnection, profile_ids: set[str]) -> set[str]:
        """Lock the profiles no other transaction holds, without waiting; returns those locked."""
        driver = await driver_connection(conn)
        rows = await driver.fetch(
            "SELECT id FROM profile_profiles WHERE id = ANY($1::text[]) ORDER BY id"
            " FOR UPDATE SKIP LOCKED",
            sorted(profile_ids),
        )
        return {row[0] for row in rows}

    async def _lock_profiles(self, conn: AsyncConnection, profile_ids: Iterable[str]) -> None:
        if not self.is_postgres:
            return
        ids = sorted(set(profile_ids))
        if ids:
            driver = await driver_connection(conn)
            await driver.execute(
                "SELECT id FROM profile_profiles WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
                ids,
            )

    async def _owners(
        self, conn: AsyncConnection, keys: Sequence[IdentifierKey]
    ) -> dict[IdentifierKey, str]:
        found: dict[IdentifierKey, str] = {}
        if self.is_postgres and keys:
            driver = await driver_connection(conn)
            rows = await driver.fetch(
                "SELECT i.type, i.value, i.profile_id FROM profile_identifiers AS i"
                " JOIN unnest($1::text[], $2::text[]) AS k(type, value)"
                " ON i.type = k.type AND i.value = k.value",
                [k.type for k in keys],
                [k.value for k in keys],
            )
            for type_, value, pid in rows:
                found[IdentifierKey(type_, value)] = pid
            return found
        for chunk in _chunks(list(keys), 500):
            rows = await conn.execute(
                select(identifiers.c.type, identifiers.c.value, identifiers.c.profile_id).where(
                    tuple_(identifiers.c.type, identifiers.c.value).in_(
                        [(k.type, k.value) for k in chunk]
                    )
                )
            )
            for row in rows:
                found[IdentifierKey(row.type, row.value)] = row.profile_id
        return found

    async def _live_ids(self, conn: AsyncConnection, profile_ids: Iterable[str]) -> dict[str, str]:
        """Each requested id mapped to its live profile (following merged_into)."""
        result: dict[str, str] = {}
        pending = set(profile_ids)
        for _ in range(50):
            if not pending:
                break
            rows = await conn.execute(
                select(profiles.c.id, profiles.c.merged_into).where(profiles.c.id.in_(pending))
            )
            nxt: set[str] = set()
            for row in rows:
                if row.merged_into is None:
                    result[row.id] = row.id
                else:
                    result[row.id] = row.merged_into
                    nxt.add(row.merged_into)
            pending = nxt - set(result)
        for key, first in list(result.items()):
            final, seen = first, 0
            while result.get(final, final) != final and seen < 50:
                final = result[final]
                seen += 1
            result[key] = final
        return result

    # ------------------------------------------------------------------ apply

    async def apply(
        self, batch: Sequence[EventEffects], *, wait_for_busy: bool = True
    ) -> ApplyResult:
        """Apply events (or consent calls) once each: identity, traits, consent, events.

        With `wait_for_busy=False`, the events whose identifiers or profiles another
        transaction holds are not applied but returned in `busy` (PostgreSQL; SQLite has one
        writer at a time, so nothing is ever busy there): the caller applies them later."""
        unique: dict[str, EventEffects] = {}
        dropped = 0
        for effects in batch:
            if not effects.identifiers and effects.profile_id is None:
                dropped += 1
                continue
            unique.setdefault(effects.id, effects)
        if not unique:
            return ApplyResult(0, len(batch) - dropped, 0, dropped, {})
        items = list(unique.values())

        in_batch_duplicates = len(batch) - dropped - len(items)
        if self.is_postgres and len(items) > 1:
            return await self._apply_free_first(
                items, in_batch_duplicates, dropped, wait_for_busy=wait_for_busy
            )

        async def work(conn: AsyncConnection) -> ApplyResult:
            result = await self._apply_tx(conn, items, in_batch_duplicates)
            return dataclasses.replace(result, dropped=dropped)

        result: ApplyResult = await self._transaction(work)
        return result

    async def _apply_free_first(
        self,
        items: list[EventEffects],
        duplicates_in_batch: int,
        dropped: int,
        *,
        wait_for_busy: bool,
    ) -> ApplyResult:
        """PostgreSQL: apply first, without waiting, the events whose identifiers and profiles
        no other transaction holds, then the others, waiting for their locks (or, without
        `wait_for_busy`, return them as `busy`).

        Two workers' batches nearly always share a person somewhere (a batch of 2,000 events
        touches ~2,000 people), and waiting for that one person's locks made every batch wait
        for the whole transaction of the other worker: the workers took turns. Taking the
        locks with `pg_try_advisory_xact_lock` and `SKIP LOCKED` instead, the first
        transaction never waits (so it cannot deadlock); the events it leaves go to a second
        transaction on the waiting path, usually a small part of the batch. Events of one
        person may then be applied in two transactions instead of one, which changes nothing:
        traits and consents go by event time, counts add up, and identity resolution already
        sees events of one person from several workers in any order."""
        deferred: list[EventEffects] = []

        async def free(conn: AsyncConnection) -> ApplyResult:
            deferred.clear()  # a retried attempt decides again
            return await self._apply_tx(conn, items, duplicates_in_batch, deferred=deferred)

        first: ApplyResult = await self._transaction(free)
        if not deferred or not wait_for_busy:
            return dataclasses.replace(first, dropped=dropped, busy=list(deferred))
        rest = list(deferred)

        async def waiting(conn: AsyncConnection) -> ApplyResult:
            return await self._apply_tx(conn, rest, 0)

        second: ApplyResult = await self._transaction(waiting)
        return ApplyResult(
            first.applied + second.applied,
            first.duplicates + second.duplicates,
            first.suppressed + second.suppressed,
            dropped,
            {**first.profile_ids, **second.profile_ids},
            merges=first.merges + second.merges,
            conflicts=dict(Counter(first.conflicts) + Counter(second.conflicts)),
        )

    async def _apply_tx(
        self,
        conn: AsyncConnection,
        items: list[EventEffects],
        duplicates_in_batch: int,
        *,
        deferred: list[EventEffects] | None = None,
    ) -> ApplyResult:
        """Apply `items` in the transaction of `conn`. With `deferred` (PostgreSQL only) no
        lock is waited for: the events that would wait are moved to `deferred` instead."""
        keys = sorted({k for e in items for k in e.identifiers})
        if deferred is None:
            await self._lock_identifiers(conn, keys)
        else:
            items = await self._take_free_identifiers(conn, items, keys, deferred)
            if not items:
                return ApplyResult(0, duplicates_in_batch, 0, 0, {})
            keys = sorted({k for e in items for k in e.identifiers})
        if self.is_postgres:
            loaded = await self._load_pg(conn, items, keys, duplicates_in_batch, deferred)
        else:
            loaded = await self._load(conn, items, keys, duplicates_in_batch)
        if isinstance(loaded, ApplyResult):
            return loaded
        items, suppressed, duplicates, owners, limited, counts, any_revoked = loaded
        driver: Any = await driver_connection(conn) if self.is_postgres else None

        async def unmerged(a: set[str], b: set[str]) -> bool:
            return any_revoked and await self._unmerged_between(conn, a, b)

        resolver = Resolver(self.guards, owners, limited, counts, unmerged)
        targets: list[str] = []
        for e in items:
            settled = resolver.settled_target(e)
            targets.append(settled if settled is not None else await resolver.resolve(e))
        now = _now()
        changes: list[pb.ProfileChange] = []
        if resolver.new_profiles and self.is_postgres:
            await driver.execute(
                "INSERT INTO profile_profiles (id, created_time, updated_time)"
                " SELECT p, $2, $2 FROM unnest($1::text[]) AS p",
                resolver.new_profiles,
                now,
            )
        elif resolver.new_profiles:
            await conn.execute(
                insert(profiles),
                [
                    {"id": p, "created_time": now, "updated_time": now, "merged_into": None}
                    for p in resolver.new_profiles
                ],
            )
        await self._move_profiles(conn, resolver.merges, resolver.find, resolver.attachments)
        merged_by_winner: dict[str, list[str]] = defaultdict(list)
        for op in resolver.merges:
            merged_by_winner[resolver.find(op.winner)].append(op.loser)
        if resolver.attachments and self.is_postgres:
            await driver.execute(
                "INSERT INTO profile_identifiers (type, value, profile_id, created_time)"
                " SELECT t, v, p, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS a(t, v, p)",
                [k.type for k, _ in resolver.attachments],
                [k.value for k, _ in resolver.attachments],
                [resolver.find(p) for _, p in resolver.attachments],
                now,
            )
        elif resolver.attachments:
            await conn.execute(
                insert(identifiers),
                [
                    {
                        "type": k.type,
                        "value": k.value,
                        "profile_id": resolver.find(p),
                        "created_time": now,
                    }
                    for k, p in resolver.attachments
                ],
            )
        await self._insert_edges(conn, resolver)
        if resolver.conflicts:
            await conn.execute(
                insert(identity_conflicts),
                [
                    {
                        "profile_id": resolver.find(c.profile_id),
                        "other_profile_id": c.other_profile_id
                        and resolver.find(c.other_profile_id),
                        "identifier": str(c.identifier),
                        "rule": c.rule,
                        "event_id": c.event_id,
                        "created_time": now,
                    }
                    for c in resolver.conflicts
                ],
            )
            log.info("identity_conflicts", count=len(resolver.conflicts))
        for pid in resolver.new_profiles:
            if resolver.find(pid) == pid:
                changes.append(change(pb.PROFILE_CHANGE_TYPE_CREATED, pid))
        for winner, losers in merged_by_winner.items():
            changes.append(change(pb.PROFILE_CHANGE_TYPE_MERGED, winner, merged=losers))
        assigned = [(resolver.find(t), e) for t, e in zip(targets, items, strict=True)]
        changes += await self._apply_effects(conn, assigned, emit_events=self.emit_event_applied)
        await self._record_applied(conn, assigned, now)
        await self._publish(conn, changes)
        conflict_counts: dict[str, int] = defaultdict(int)
        for conflict in resolver.conflicts:
            conflict_counts[conflict.rule] += 1
        return ApplyResult(
            len(items),
            duplicates,
            len(suppressed),
            0,
            {e.id: pid for pid, e in assigned},
            merges=len(resolver.merges),
            conflicts=dict(conflict_counts),
        )

    async def _load(
        self,
        conn: AsyncConnection,
        items: list[EventEffects],
        keys: list[IdentifierKey],
        duplicates_in_batch: int,
    ) -> ApplyResult | _Loaded:
        """Under the identifiers' locks: drop suppressed and applied events, lock the profiles
        holding the identifiers until their owners are stable, and load what the guards need."""
        suppressed_keys: set[IdentifierKey] = set()
        if keys:
            by_hash = {k.suppression_hash(): k for k in keys}
            for chunk in _chunks(list(by_hash)):
                rows = await conn.execute(
                    select(suppressions.c.identifier_hash).where(
                        suppressions.c.identifier_hash.in_(chunk)
                    )
                )
                suppressed_keys.update(by_hash[r[0]] for r in rows)
        suppressed = [e for e in items if any(k in suppressed_keys for k in e.identifiers)]
        if suppressed:
            dropped_ids = {id(e) for e in suppressed}
            items = [e for e in items if id(e) not in dropped_ids]
        already: set[str] = set()
        for chunk in _chunks([e.id for e in items]):
            rows = await conn.execute(
                select(applied_events.c.id).where(applied_events.c.id.in_(chunk))
            )
            already.update(r[0] for r in rows)
        if already:
            items = [e for e in items if e.id not in already]
        duplicates = duplicates_in_batch + len(already)
        if not items:
            return ApplyResult(0, duplicates, len(suppressed), 0, {})
        await self._resolve_explicit(conn, items)
        owners = await self._owners(conn, keys)
        locked: set[str] = set()
        for _ in range(10):
            wanted = set(owners.values()) | {e.profile_id for e in items if e.profile_id}
            if wanted <= locked:
                break
            await self._lock_profiles(conn, wanted - locked)
            locked |= wanted
            owners = await self._owners(conn, keys)
        involved = sorted(set(owners.values()) | {e.profile_id for e in items if e.profile_id})
        limited: dict[str, dict[str, set[str]]] = {}
        counts: dict[str, int] = {}
        limited_types = list(self.guards.type_limits)
        for chunk in _chunks(involved):
            rows = await conn.execute(
                select(identifiers.c.profile_id, identifiers.c.type, identifiers.c.value).where(
                    identifiers.c.profile_id.in_(chunk), identifiers.c.type.in_(limited_types)
                )
            )
            for row in rows:
                limited.setdefault(row.profile_id, {}).setdefault(row.type, set()).add(row.value)
            rows = await conn.execute(
                select(identifiers.c.profile_id, func.count())
                .where(identifiers.c.profile_id.in_(chunk))
                .group_by(identifiers.c.profile_id)
            )
            for pid, count in rows:
                counts[pid] = int(count)
        any_revoked = (
            await conn.execute(
                select(identity_edges.c.a_type)
                .where(identity_edges.c.revoked_time.is_not(None))
                .limit(1)
            )
        ).first() is not None
        return items, suppressed, duplicates, owners, limited, counts, any_revoked

    async def _resolve_explicit(self, conn: AsyncConnection, items: list[EventEffects]) -> None:
        """Point calls addressed by profile id at the live profile (NOT_FOUND if none)."""
        explicit = {e.profile_id for e in items if e.profile_id is not None}
        live = await self._live_ids(conn, explicit) if explicit else {}
        for e in items:
            if e.profile_id is not None:
                if e.profile_id not in live:
                    raise NotFoundError(
                        f"profile {e.profile_id} not found",
                        resource_type="profile",
                        resource_name=e.profile_id,
                    )
                e.profile_id = live[e.profile_id]

    async def _load_pg(
        self,
        conn: AsyncConnection,
        items: list[EventEffects],
        keys: list[IdentifierKey],
        duplicates_in_batch: int,
        deferred: list[EventEffects] | None = None,
    ) -> ApplyResult | _Loaded:
        """`_load` on PostgreSQL in three round trips: suppressions, applied events, owners and
        revoked edges in one statement; the owners' profiles locked (sorted); the owners read
        again with the guards' data (again while new owners appear). With `deferred`, profiles
        held by another transaction are not waited for: their events move to `deferred`."""
        driver = await driver_connection(conn)
        # The identifiers go as one JSON document of [type, value] pairs, read by both
        # statements below: asyncpg encodes an array parameter element by element in Python,
        # which cost more than the rest of the load. The suppression list holds SHA-256 hex of
        # `type:value`, computed here by the database.
        key_rows = _json([(k.type, k.value) for k in keys])
        rows = await driver.fetch(
            f"WITH k AS ({_KEY_ROWS.format('$2')})"
            " SELECT 's', k.type, k.value, NULL FROM k JOIN profile_suppressions AS s"
            " ON s.identifier_hash"
            " = encode(sha256(convert_to(k.type || ':' || k.value, 'UTF8')), 'hex')"
            " UNION ALL SELECT 'a', id, NULL, NULL FROM profile_applied_events"
            " WHERE id IN (SELECT json_array_elements_text($1::json))"
            " UNION ALL SELECT 'o', i.type, i.value, i.profile_id FROM profile_identifiers AS i"
            " JOIN k ON i.type = k.type AND i.value = k.value"
            " UNION ALL (SELECT 'r', NULL, NULL, NULL FROM profile_identity_edges"
            " WHERE revoked_time IS NOT NULL LIMIT 1)",
            _json([e.id for e in items]),
            key_rows,
        )
        suppressed_keys: set[IdentifierKey] = set()
        applied: set[str] = set()
        owners: dict[IdentifierKey, str] = {}
        any_revoked = False
        for kind, a, b, c in rows:
            if kind == "o":
                owners[IdentifierKey(a, b)] = c
            elif kind == "a":
                applied.add(a)
            elif kind == "s":
                suppressed_keys.add(IdentifierKey(a, b))
            else:
                any_revoked = True
        suppressed = (
            [e for e in items if any(k in suppressed_keys for k in e.identifiers)]
            if suppressed_keys
            else []
        )
        if suppressed:
            dropped_ids = {id(e) for e in suppressed}
            items = [e for e in items if id(e) not in dropped_ids]
        already = {e.id for e in items if e.id in applied}
        if already:
            items = [e for e in items if e.id not in already]
        duplicates = duplicates_in_batch + len(already)
        if not items:
            return ApplyResult(0, duplicates, len(suppressed), 0, {})
        await self._resolve_explicit(conn, items)
        explicit = sorted({e.profile_id for e in items if e.profile_id})
        limited: dict[str, dict[str, set[str]]] = {}
        counts: dict[str, int] = {}
        limited_types = list(self.guards.type_limits)
        locked: set[str] = set()
        for _ in range(10):
            wanted = set(owners.values()) | set(explicit)
            if wanted <= locked:
                break
            if deferred is None:
                await self._lock_profiles(conn, wanted - locked)
                locked |= wanted
            else:
                locked |= await self._try_lock_profiles(conn, wanted - locked)
                busy = wanted - locked
                if busy:
                    held = {k for k, pid in owners.items() if pid in busy}
                    items = _split_off(items, deferred, held, busy)
                    if not items:
                        return ApplyResult(0, duplicates, len(suppressed), 0, {})
                    key_rows = _json(
                        sorted({(k.type, k.value) for e in items for k in e.identifiers})
                    )
                    explicit = sorted({e.profile_id for e in items if e.profile_id})
            owners, limited, counts = {}, {}, {}
            for type_, value, pid, count, types, values in await driver.fetch(
                "WITH o AS (SELECT i.type, i.value, i.profile_id FROM profile_identifiers AS i"
                f" JOIN ({_KEY_ROWS.format('$1')}) AS k"
                " ON i.type = k.type AND i.value = k.value)"
                " SELECT type, value, profile_id, NULL::int, NULL::text[], NULL::text[] FROM o"
                " UNION ALL SELECT NULL, NULL, profile_id, count(*)::int,"
                " array_agg(type) FILTER (WHERE type = ANY($3::text[])),"
                " array_agg(value) FILTER (WHERE type = ANY($3::text[]))"
                " FROM profile_identifiers WHERE profile_id IN"
                " (SELECT profile_id FROM o UNION SELECT unnest($2::text[]))"
                " GROUP BY profile_id",
                key_rows,
                explicit,
                limited_types,
            ):
                if type_ is not None:
                    owners[IdentifierKey(type_, value)] = pid
                    continue
                counts[pid] = count
                for held_type, held_value in zip(types or (), values or (), strict=True):
                    limited.setdefault(pid, {}).setdefault(held_type, set()).add(held_value)
        return items, suppressed, duplicates, owners, limited, counts, any_revoked

    async def _insert_edges(self, conn: AsyncConnection, resolver: Resolver) -> None:
        unique: dict[tuple[IdentifierKey, IdentifierKey], Any] = {}
        for edge in resolver.edges:
            unique.setdefault((edge.a, edge.b), edge)
        if not unique:
            return
        if self.is_postgres:
            driver = await driver_connection(conn)
            edges = list(unique.values())
            await driver.execute(
                "INSERT INTO profile_identity_edges (a_type, a_value, b_type, b_value, rule,"
                " event_id, source, created_time) SELECT * FROM unnest($1::text[], $2::text[],"
                " $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[])"
                " ON CONFLICT DO NOTHING",
                [e.a.type for e in edges],
                [e.a.value for e in edges],
                [e.b.type for e in edges],
                [e.b.value for e in edges],
                [e.rule for e in edges],
                [e.event_id for e in edges],
                [e.source for e in edges],
                [e.time for e in edges],
            )
            return
        rows = [
            {
                "a_type": e.a.type,
                "a_value": e.a.value,
                "b_type": e.b.type,
                "b_value": e.b.value,
                "rule": e.rule,
                "event_id": e.event_id,
                "source": e.source,
                "created_time": e.time,
                "revoked_time": None,
                "revoked_reason": None,
            }
            for e in unique.values()
        ]
        await conn.execute(self._insert(identity_edges).on_conflict_do_nothing(), rows)

    async def _unmerged_between(self, conn: AsyncConnection, a: set[str], b: set[str]) -> bool:
        ia = identifiers.alias("ia")
        ib = identifiers.alias("ib")
        query = (
            select(identity_edges.c.a_type)
            .select_from(
                identity_edges.join(
                    ia,
                    and_(
                        ia.c.type == identity_edges.c.a_type, ia.c.value == identity_edges.c.a_value
                    ),
                ).join(
                    ib,
                    and_(
                        ib.c.type == identity_edges.c.b_type, ib.c.value == identity_edges.c.b_value
                    ),
                )
            )
            .where(
                identity_edges.c.revoked_time.is_not(None),
                or_(
                    and_(ia.c.profile_id.in_(a), ib.c.profile_id.in_(b)),
                    and_(ia.c.profile_id.in_(b), ib.c.profile_id.in_(a)),
                ),
            )
            .limit(1)
        )
        return (await conn.execute(query)).first() is not None

    async def _move_profile(self, conn: AsyncConnection, op: MergeOp) -> None:
        await self._move_profiles(conn, [op], lambda pid: op.winner if pid == op.loser else pid)

    async def _move_profiles(
        self,
        conn: AsyncConnection,
        ops: Sequence[MergeOp],
        final: Callable[[str], str],
        attached: Sequence[tuple[IdentifierKey, str]] = (),
    ) -> None:
        """Merge every `op.loser` into its final winner in bulk: identities, events, trait
        history, consents (newest wins), counts and daily buckets (added), traits (recomputed
        from the merged history), redirects and merge records."""
        if not ops:
            return
        losers = [op.loser for op in ops]
        target = {loser: final(loser) for loser in losers}
        held: dict[str, list[str]] = defaultdict(list)
        for chunk in _chunks(losers):
            for r in await conn.execute(
                select(identifiers.c.profile_id, identifiers.c.type, identifiers.c.value).where(
                    identifiers.c.profile_id.in_(chunk)
                )
            ):
                held[r.profile_id].append(f"{r.type}:{r.value}")
        for key, pid in attached:
            if pid in target:
                held[pid].append(str(key))
        records = []
        now = _now()
        for op in ops:
            records.append(
                (
                    uuid.uuid4().hex,
                    "merge",
                    op.winner,
                    op.loser,
                    op.rule,
                    op.event_id,
                    op.reason,
                    self._json_column(sorted(set(held[op.loser]))),
                    now,
                )
            )
            held[op.winner].extend(held[op.loser])
        for chunk_keys in _chunks(losers):
            mapping = {loser: target[loser] for loser in chunk_keys}
            # Every trait the loser ever touched (an unset leaves no row, only history).
            touched_traits = (
                await conn.execute(
                    select(trait_history.c.profile_id, trait_history.c.name)
                    .where(trait_history.c.profile_id.in_(chunk_keys))
                    .distinct()
                )
            ).all()
            await self._redirect_rows(conn, mapping, now)
            loser_consents = (
                await conn.execute(select(consents).where(consents.c.profile_id.in_(chunk_keys)))
            ).all()
            if loser_consents:
                updates: dict[tuple[str, str, str], tuple[str, datetime, str]] = {}
                for r in loser_consents:
                    key3 = (target[r.profile_id], r.channel, r.purpose)
                    candidate = (r.status, r.updated_time, r.source)
                    if key3 not in updates or _consent_newer(candidate, updates[key3]):
                        updates[key3] = candidate
                await self._merge_consents(conn, updates)
                await conn.execute(delete(consents).where(consents.c.profile_id.in_(chunk_keys)))
            if self.is_postgres:
                await self._move_aggregates_pg(conn, mapping)
            else:
                await self._move_aggregates(conn, mapping)
            await conn.execute(delete(traits).where(traits.c.profile_id.in_(chunk_keys)))
            if touched_traits:
                pairs = sorted({(target[r.profile_id], r.name) for r in touched_traits})
                await self._recompute_trait_pairs(conn, pairs)
        await self._insert_rows(conn, merges, _MERGE_COLUMNS, records)

    async def _move_aggregates_pg(self, conn: AsyncConnection, mapping: dict[str, str]) -> None:
        """Add the losers' event counts and daily buckets into their winners' and delete them:
        one statement, the rows never leave the database."""
        driver = await driver_connection(conn)
        winner = "($2::text[])[array_position($1::text[], profile_id::text)]"
        await driver.execute(
            "WITH c AS (DELETE FROM profile_event_counts WHERE profile_id = ANY($1::text[])"
            f" RETURNING {winner} AS winner, name, count, first_time, last_time),"
            " d AS (DELETE FROM profile_event_daily WHERE profile_id = ANY($1::text[])"
            f" RETURNING {winner} AS winner, name, day, count, revenue),"
            " added_counts AS (INSERT INTO profile_event_counts"
            " (profile_id, name, count, first_time, last_time)"
            " SELECT winner, name, sum(count), min(first_time), max(last_time) FROM c"
            f" GROUP BY winner, name ORDER BY winner, name{_ADD_TO_COUNTS})"
            " INSERT INTO profile_event_daily (profile_id, name, day, count, revenue)"
            " SELECT winner, name, day, sum(count), sum(revenue) FROM d"
            f" GROUP BY winner, name, day ORDER BY winner, name, day{_ADD_TO_DAILY}",
            list(mapping),
            list(mapping.values()),
        )

    async def _move_aggregates(self, conn: AsyncConnection, mapping: dict[str, str]) -> None:
        """`_move_aggregates_pg` on SQLite: the rows read, added up in Python, written back."""
        losers = list(mapping)
        count_adds: dict[tuple[str, str], tuple[int, datetime, datetime]] = {}
        for r in await conn.execute(
            select(event_counts).where(event_counts.c.profile_id.in_(losers))
        ):
            key2 = (mapping[r.profile_id], r.name)
            old = count_adds.get(key2)
            n = int(r._mapping["count"])
            count_adds[key2] = (
                (n, r.first_time, r.last_time)
                if old is None
                else (old[0] + n, min(old[1], r.first_time), max(old[2], r.last_time))
            )
        if count_adds:
            await self._add_counts(conn, count_adds)
            await conn.execute(delete(event_counts).where(event_counts.c.profile_id.in_(losers)))
        daily_adds: dict[tuple[str, str, date], tuple[int, float]] = {}
        for r in await conn.execute(
            select(event_daily).where(event_daily.c.profile_id.in_(losers))
        ):
            key_day = (mapping[r.profile_id], r.name, r.day)
            old_day = daily_adds.get(key_day, (0, 0.0))
            daily_adds[key_day] = (
                old_day[0] + int(r._mapping["count"]),
                old_day[1] + r.revenue,
            )
        if daily_adds:
            await self._add_daily(conn, daily_adds)
            await conn.execute(delete(event_daily).where(event_daily.c.profile_id.in_(losers)))

    async def _redirect_rows(
        self, conn: AsyncConnection, mapping: dict[str, str], now: datetime
    ) -> None:
        """Point every row of the losers in `mapping` at their winners, and the losers (and
        the profiles merged into them before) at the winners."""
        if self.is_postgres:
            # One statement; the loser -> winner map goes as two arrays (a CASE with one branch
            # per loser would be compiled again for every batch).
            driver = await driver_connection(conn)
            moved = "($2::text[])[array_position($1::text[], {0}::text)]"
            rows = ", ".join(
                f"m{index} AS (UPDATE {table.name} SET profile_id = {moved.format('profile_id')}"
                " WHERE profile_id = ANY($1::text[]))"
                for index, table in enumerate(_PROFILE_ROW_TABLES)
            )
            await driver.execute(
                f"WITH {rows} UPDATE profile_profiles SET updated_time = $3, merged_into ="
                f" CASE WHEN id = ANY($1::text[]) THEN {moved.format('id')}"
                f" ELSE {moved.format('merged_into')} END"
                " WHERE id = ANY($1::text[]) OR merged_into = ANY($1::text[])",
                list(mapping),
                list(mapping.values()),
                now,
            )
            return
        for table in _PROFILE_ROW_TABLES:
            await conn.execute(
                update(table)
                .where(table.c.profile_id.in_(list(mapping)))
                .values(profile_id=case(mapping, value=table.c.profile_id))
            )
        await conn.execute(
            update(profiles)
            .where(profiles.c.merged_into.in_(list(mapping)))
            .values(merged_into=case(mapping, value=profiles.c.merged_into), updated_time=now)
        )
        await conn.execute(
            update(profiles)
            .where(profiles.c.id.in_(list(mapping)))
            .values(merged_into=case(mapping, value=profiles.c.id), updated_time=now)
        )

    async def _recompute_trait_pairs(
        self, conn: AsyncConnection, pairs: Sequence[tuple[str, str]]
    ) -> None:
        """Recompute the given (profile, trait) pairs from their history, in bulk."""
        wanted = set(pairs)
        folded = await self._fold_pairs(conn, wanted)
        for chunk in _chunks(sorted(wanted), 500):
            await conn.execute(
                delete(traits).where(tuple_(traits.c.profile_id, traits.c.name).in_(list(chunk)))
            )
        rows_out = [_trait_row(k[0], k[1], st) for k, st in sorted(folded.items()) if st.present]
        for chunk in _chunks(rows_out):
            await conn.execute(insert(traits), list(chunk))

    async def _fold_pairs(
        self, conn: AsyncConnection, wanted: set[tuple[str, str]]
    ) -> dict[tuple[str, str], TraitState]:
        """The folded state of each (profile, trait) pair from its history."""
        pids = sorted({p for p, _ in wanted})
        names = sorted({n for _, n in wanted})
        grouped: dict[tuple[str, str], list[TraitOp]] = defaultdict(list)
        for chunk in _chunks(pids):
            rows = await conn.execute(
                select(trait_history)
                .where(trait_history.c.profile_id.in_(chunk), trait_history.c.name.in_(names))
                .order_by(trait_history.c.id)
            )
            for seq, r in enumerate(rows):
                key = (r.profile_id, r.name)
                if key in wanted:
                    grouped[key].append(
                        TraitOp(r.name, r.op, r.value, r.event_time, r.event_id, r.source, seq)
                    )
        result: dict[tuple[str, str], TraitState] = {}
        for key, ops in grouped.items():
            state = fold(ops)
            if state is not None:
                result[key] = state
        return result

    # ------------------------------------------------------------------ effects

    async def _apply_effects(
        self, conn: AsyncConnection, assigned: list[tuple[str, EventEffects]], *, emit_events: bool
    ) -> list[pb.ProfileChange]:
        changes: list[pb.ProfileChange] = []
        await self._insert_events(conn, assigned)
        if emit_events:
            # One change per profile, event name and type in a batch, carrying the newest of
            # those events: a consumer learns that the profile did that event, which is all the
            # segment service asks of it, without a feed record per event.
            newest: dict[tuple[str, str, str], EventEffects] = {}
            for pid, e in assigned:
                if e.kind == "event":
                    newest_key = (pid, e.name, e.type)
                    held = newest.get(newest_key)
                    if held is None or (e.time, e.id) > (held.time, held.id):
                        newest[newest_key] = e
            changes += [
                change(
                    pb.PROFILE_CHANGE_TYPE_EVENT_APPLIED,
                    pid,
                    event_id=e.id,
                    event_name=e.name,
                    event_type=e.type,
                    event_time=e.time,
                )
                for (pid, _, _), e in newest.items()
            ]
        count_adds, daily_adds = self._aggregate_adds(assigned)
        if not self.is_postgres:
            await self._add_counts(conn, count_adds)
            await self._add_daily(conn, daily_adds)

        trait_changes = await self._apply_trait_ops(conn, assigned)
        for pid, names in trait_changes.items():
            changes.append(change(pb.PROFILE_CHANGE_TYPE_TRAITS_CHANGED, pid, trait_names=names))

        consent_updates: dict[tuple[str, str, str], tuple[str, datetime, str]] = {}
        for pid, e in assigned:
            for c in e.consents:
                key3 = (pid, c.channel, c.purpose)
                candidate = (c.status, c.time, c.source)
                current = consent_updates.get(key3)
                if current is None or _consent_newer(candidate, current):
                    consent_updates[key3] = candidate
        for pid in await self._merge_consents(conn, consent_updates):
            changes.append(change(pb.PROFILE_CHANGE_TYPE_CONSENT_CHANGED, pid))

        now = _now()
        newest_tz: dict[str, tuple[datetime, str]] = {}
        for pid, e in assigned:
            if e.timezone and (pid not in newest_tz or e.time >= newest_tz[pid][0]):
                newest_tz[pid] = (e.time, e.timezone)
        by_tz: dict[str, list[str]] = defaultdict(list)
        for pid, (_, tz) in newest_tz.items():
            by_tz[tz].append(pid)
        touched = sorted({pid for pid, _ in assigned})
        if self.is_postgres:
            await self._add_aggregates_pg(
                conn,
                count_adds,
                daily_adds,
                [(pid, newest_tz[pid][1] if pid in newest_tz else None) for pid in touched],
                now,
            )
        else:
            for tz, pids in by_tz.items():
                await conn.execute(
                    update(profiles).where(profiles.c.id.in_(pids)).values(timezone=tz)
                )
            for chunk in _chunks(touched):
                await conn.execute(
                    update(profiles).where(profiles.c.id.in_(chunk)).values(updated_time=now)
                )
        return changes

    @staticmethod
    def _aggregate_adds(
        assigned: Sequence[tuple[str, EventEffects]],
    ) -> tuple[
        dict[tuple[str, str], tuple[int, datetime, datetime]],
        dict[tuple[str, str, date], tuple[int, float]],
    ]:
        """What the aggregated events of `assigned` add to each (profile, name) count (count,
        first and last time) and to each (profile, name, day) bucket (count, revenue)."""
        count_adds: dict[tuple[str, str], tuple[int, datetime, datetime]] = {}
        daily_adds: dict[tuple[str, str, date], tuple[int, float]] = {}
        for pid, e in assigned:
            if not e.aggregate:
                continue
            key = (pid, e.name)
            old = count_adds.get(key)
            count_adds[key] = (
                (1, e.time, e.time)
                if old is None
                else (old[0] + 1, min(old[1], e.time), max(old[2], e.time))
            )
            day_key = (pid, e.name, e.day)
            old_day = daily_adds.get(day_key, (0, 0.0))
            daily_adds[day_key] = (old_day[0] + 1, old_day[1] + e.revenue)
        return count_adds, daily_adds

    async def _insert_events(
        self, conn: AsyncConnection, assigned: Sequence[tuple[str, EventEffects]]
    ) -> None:
        """The event rows of `assigned` (an UpdateConsent call has none)."""
        dumps = self._json_column
        rows = [
            (
                e.id,
                pid,
                e.type,
                e.name,
                e.time,
                e.received_time,
                dumps(e.properties or {}),
                dumps(e.context or {}),
            )
            for pid, e in assigned
            if e.kind == "event"
        ]
        await self._insert_rows(conn, events, _EVENT_COLUMNS, rows)

    async def _record_applied(
        self, conn: AsyncConnection, assigned: Sequence[tuple[str, EventEffects]], now: datetime
    ) -> None:
        """The ledger entries of `assigned`: what makes a redelivered event a duplicate, and
        what an unmerge replays."""
        dumps = self._json_column
        rows = [
            (
                e.id,
                pid,
                e.kind,
                e.time,
                dumps([f"{t}:{v}" for t, v in e.identifiers]),
                e.payload,
                now,
            )
            for pid, e in assigned
        ]
        await self._insert_rows(conn, applied_events, _APPLIED_COLUMNS, rows)

    async def _add_aggregates_pg(
        self,
        conn: AsyncConnection,
        count_adds: dict[tuple[str, str], tuple[int, datetime, datetime]],
        daily_adds: dict[tuple[str, str, date], tuple[int, float]],
        touched: Sequence[tuple[str, str | None]],
        now: datetime,
    ) -> None:
        """Counts, daily buckets, and the touched profiles' timezones (None keeps theirs) and
        update times, in one statement. The rows go as one JSON document each (asyncpg's
        per-element array encoding costs more CPU)."""
        driver = await driver_connection(conn)
        await driver.execute(
            "WITH c AS (INSERT INTO profile_event_counts (profile_id, name, count, first_time,"
            " last_time) SELECT r->>0, r->>1, (r->>2)::int, (r->>3)::timestamptz,"
            f" (r->>4)::timestamptz FROM jsonb_array_elements($1::jsonb) AS r{_ADD_TO_COUNTS}),"
            " d AS (INSERT INTO profile_event_daily (profile_id, name, day, count, revenue)"
            " SELECT r->>0, r->>1, (r->>2)::date, (r->>3)::int, (r->>4)::float8"
            f" FROM jsonb_array_elements($2::jsonb) AS r{_ADD_TO_DAILY})"
            " UPDATE profile_profiles AS p SET updated_time = $3,"
            " timezone = COALESCE(t->>1, p.timezone)"
            " FROM jsonb_array_elements($4::jsonb) AS t WHERE p.id = t->>0",
            _json([(*k, *v) for k, v in sorted(count_adds.items())]),
            # Revenue as text: float8 reads back every float, NaN and infinities included.
            _json([(*k, c, repr(r)) for k, (c, r) in sorted(daily_adds.items())]),
            now,
            _json(list(touched)),
        )

    async def _add_counts(
        self, conn: AsyncConnection, adds: dict[tuple[str, str], tuple[int, datetime, datetime]]
    ) -> None:
        """Add to the event counts (SQLite; PostgreSQL adds them in its bulk statements)."""
        if not adds:
            return
        stmt = self._insert(event_counts)
        stmt = stmt.on_conflict_do_update(
            index_elements=["profile_id", "name"],
            set_={
                "count": event_counts.c.count + stmt.excluded.count,
                "first_time": case(
                    (
                        stmt.excluded.first_time < event_counts.c.first_time,
                        stmt.excluded.first_time,
                    ),
                    else_=event_counts.c.first_time,
                ),
                "last_time": case(
                    (stmt.excluded.last_time > event_counts.c.last_time, stmt.excluded.last_time),
                    else_=event_counts.c.last_time,
                ),
            },
        )
        rows = [
            {"profile_id": p, "name": n, "count": c, "first_time": f, "last_time": last}
            for (p, n), (c, f, last) in sorted(adds.items())
        ]
        for chunk in _chunks(rows):
            await conn.execute(stmt, list(chunk))

    async def _add_daily(
        self, conn: AsyncConnection, adds: dict[tuple[str, str, date], tuple[int, float]]
    ) -> None:
        """Add to the daily buckets (SQLite; PostgreSQL adds them in its bulk statements)."""
        if not adds:
            return
        stmt = self._insert(event_daily)
        stmt = stmt.on_conflict_do_update(
            index_elements=["profile_id", "name", "day"],
            set_={
                "count": event_daily.c.count + stmt.excluded.count,
                "revenue": event_daily.c.revenue + stmt.excluded.revenue,
            },
        )
        rows = [
            {"profile_id": p, "name": n, "day": d, "count": c, "revenue": r}
            for (p, n, d), (c, r) in sorted(adds.items())
        ]
        for chunk in _chunks(rows):
            await conn.execute(stmt, list(chunk))

    async def _merge_consents(
        self, conn: AsyncConnection, updates: dict[tuple[str, str, str], tuple[str, datetime, str]]
    ) -> set[str]:
        """Apply consent updates where newer than what is held; returns profiles changed."""
        if not updates:
            return set()
        pids = sorted({k[0] for k in updates})
        current: dict[tuple[str, str, str], tuple[str, datetime, str]] = {}
        for chunk in _chunks(pids):
            rows = await conn.execute(select(consents).where(consents.c.profile_id.in_(chunk)))
            for r in rows:
                current[(r.profile_id, r.channel, r.purpose)] = (r.status, r.updated_time, r.source)
        rows_out = []
        changed: set[str] = set()
        for key, candidate in sorted(updates.items()):
            held = current.get(key)
            if held is not None and not _consent_newer(candidate, held):
                continue
            rows_out.append(
                {
                    "profile_id": key[0],
                    "channel": key[1],
                    "purpose": key[2],
                    "status": candidate[0],
                    "updated_time": candidate[1],
                    "source": candidate[2],
                }
            )
            if held is None or held[0] != candidate[0]:
                changed.add(key[0])
        if rows_out:
            stmt = self._insert(consents)
            stmt = stmt.on_conflict_do_update(
                index_elements=["profile_id", "channel", "purpose"],
                set_={
                    "status": stmt.excluded.status,
                    "updated_time": stmt.excluded.updated_time,
                    "source": stmt.excluded.source,
                },
            )
            await conn.execute(stmt, rows_out)
        return changed

    async def _apply_trait_ops(
        self, conn: AsyncConnection, assigned: list[tuple[str, EventEffects]]
    ) -> dict[str, set[str]]:
        ops_by_key: dict[tuple[str, str], list[TraitOp]] = defaultdict(list)
        for pid, e in assigned:
            for op in e.trait_ops:
                ops_by_key[(pid, op.name)].append(op)
        if not ops_by_key:
            return {}
        now = _now()
        dumps = self._json_column
        history_rows = [
            (pid, op.name, op.op, dumps(op.value), op.time, op.event_id, op.source, now)
            for (pid, _), ops in ops_by_key.items()
            for op in ops
        ]
        await self._insert_rows(conn, trait_history, _HISTORY_COLUMNS, history_rows)
        # Held traits (value, time, source, event id) and unset tombstones (time, source, event
        # id) of the batch's (profile, trait) pairs.
        held_rows: list[tuple[str, str, Any, datetime, str, str]] = []
        unset_rows: list[tuple[str, str, datetime, str, str]] = []
        if self.is_postgres:
            driver = await driver_connection(conn)
            for present, pid, name, value, moment, source, event_id in await driver.fetch(
                "SELECT true, t.profile_id, t.name, t.value, t.updated_time, t.source, t.event_id"
                " FROM profile_traits AS t JOIN unnest($1::text[], $2::text[]) AS k(p, n)"
                " ON t.profile_id = k.p AND t.name = k.n"
                " UNION ALL SELECT false, h.profile_id, h.name, NULL, h.event_time, h.source,"
                " h.event_id FROM profile_trait_history AS h"
                " JOIN unnest($1::text[], $2::text[]) AS k(p, n)"
                " ON h.profile_id = k.p AND h.name = k.n WHERE h.op = 'unset'",
                [k[0] for k in ops_by_key],
                [k[1] for k in ops_by_key],
            ):
                if present:
                    held_rows.append((pid, name, value, moment, source, event_id))
                else:
                    unset_rows.append((pid, name, moment, source, event_id))
        else:
            pids = sorted({k[0] for k in ops_by_key})
            names = sorted({k[1] for k in ops_by_key})
            for chunk in _chunks(pids):
                held_rows += await conn.execute(
                    select(
                        traits.c.profile_id,
                        traits.c.name,
                        traits.c.value,
                        traits.c.updated_time,
                        traits.c.source,
                        traits.c.event_id,
                    ).where(traits.c.profile_id.in_(chunk), traits.c.name.in_(names))
                )
                unset_rows += await conn.execute(
                    select(
                        trait_history.c.profile_id,
                        trait_history.c.name,
                        trait_history.c.event_time,
                        trait_history.c.source,
                        trait_history.c.event_id,
                    ).where(
                        trait_history.c.profile_id.in_(chunk),
                        trait_history.c.name.in_(names),
                        trait_history.c.op == "unset",
                    )
                )
        states: dict[tuple[str, str], TraitState] = {}
        existing: dict[tuple[str, str], Any] = {}
        for pid, name, value, moment, source, event_id in held_rows:
            existing[(pid, name)] = value
            states[(pid, name)] = TraitState(
                True, value, moment, event_id, source, (moment, event_id, _FAR)
            )
        for pid, name, moment, source, event_id in unset_rows:
            tomb = TraitState(False, None, moment, event_id, source, (moment, event_id, _FAR))
            held = states.get((pid, name))
            if held is None or tomb.op_order > held.op_order:
                states[(pid, name)] = tomb
        recompute: set[tuple[str, str]] = set()
        for key, ops in ops_by_key.items():
            state = states.get(key)
            for op in sorted(ops, key=TraitOp.order):
                if state is not None and op.order() <= state.op_order:
                    recompute.add(key)
                    break
                state = step(state, op)
            if key not in recompute and state is not None:
                states[key] = state
        if recompute:
            states.update(await self._fold_pairs(conn, recompute))
        changed: dict[str, set[str]] = defaultdict(set)
        upserts = []
        removals = []
        for key in ops_by_key:
            state = states.get(key)
            was = existing.get(key, _MISSING)
            now_value = state.value if state is not None and state.present else _MISSING
            if state is None:
                continue
            if state.present:
                upserts.append(_trait_row(key[0], key[1], state))
            elif key in existing:
                removals.append(key)
            if was != now_value or (was is _MISSING) != (now_value is _MISSING):
                changed[key[0]].add(key[1])
        if upserts and self.is_postgres:
            driver = await driver_connection(conn)
            await driver.execute(
                "INSERT INTO profile_traits (profile_id, name, value, value_type, num_value,"
                " text_value, bool_value, time_value, updated_time, source, event_id)"
                " SELECT p, n, v::jsonb, vt, nv, tv, bv, tmv, ut, s, e FROM unnest($1::text[],"
                " $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[], $7::bool[],"
                " $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[])"
                " AS r(p, n, v, vt, nv, tv, bv, tmv, ut, s, e)"
                " ON CONFLICT (profile_id, name) DO UPDATE SET value = excluded.value,"
                " value_type = excluded.value_type, num_value = excluded.num_value,"
                " text_value = excluded.text_value, bool_value = excluded.bool_value,"
                " time_value = excluded.time_value, updated_time = excluded.updated_time,"
                " source = excluded.source, event_id = excluded.event_id",
                *(
                    [orjson.dumps(r["value"]).decode() if c == "value" else r[c] for r in upserts]
                    for c in ("profile_id", "name", *_TRAIT_COLUMNS)
                ),
            )
        elif upserts:
            stmt = self._insert(traits)
            stmt = stmt.on_conflict_do_update(
                index_elements=["profile_id", "name"],
                set_={c: getattr(stmt.excluded, c) for c in _TRAIT_COLUMNS},
            )
            for chunk in _chunks(upserts):
                await conn.execute(stmt, list(chunk))
        for pid, name in removals:
            await conn.execute(
                delete(traits).where(traits.c.profile_id == pid, traits.c.name == name)
            )
        return changed

    # ------------------------------------------------------------------ operator writes

    async def merge_profiles(
        self, target_id: str, source_id: str, *, reason: str, override_guards: bool
    ) -> str:
        """Merge `source_id` into `target_id` (an operator's decision); returns the survivor."""

        async def work(conn: AsyncConnection) -> str:
            live = await self._live_ids(conn, [target_id, source_id])
            for field_name, pid in (
                ("target_profile_id", target_id),
                ("source_profile_id", source_id),
            ):
                if pid not in live:
                    raise NotFoundError(
                        f"{field_name}: profile {pid} not found",
                        resource_type="profile",
                        resource_name=pid,
                    )
            target, source = live[target_id], live[source_id]
            if target == source:
                raise FailedPreconditionError(
                    f"profiles {target_id} and {source_id} are already one profile",
                    reason="ALREADY_MERGED",
                )
            await self._lock_profiles(conn, [target, source])
            held = (
                await conn.execute(
                    select(identifiers.c.profile_id, identifiers.c.type, identifiers.c.value).where(
                        identifiers.c.profile_id.in_([target, source])
                    )
                )
            ).all()
            by_profile: dict[str, list[IdentifierKey]] = defaultdict(list)
            for r in held:
                by_profile[r.profile_id].append(IdentifierKey(r.type, r.value))
            if not override_guards:
                for kind, limit in self.guards.type_limits.items():
                    values = {
                        k.value for p in (target, source) for k in by_profile[p] if k.type == kind
                    }
                    if len(values) > limit:
                        raise FailedPreconditionError(
                            f"the merged profile would hold {len(values)} {kind} identifiers"
                            f" (limit {limit}); set override_guards to merge anyway",
                            reason="MERGE_GUARD",
                        )
            now = _now()
            await self._move_profile(
                conn,
                MergeOp(target, source, "manual", f"op-{uuid.uuid4().hex}", "api", now, reason),
            )
            if by_profile[target] and by_profile[source]:
                a, b = sorted((strongest(by_profile[target]), strongest(by_profile[source])))
                await conn.execute(
                    self._insert(identity_edges)
                    .values(
                        a_type=a.type,
                        a_value=a.value,
                        b_type=b.type,
                        b_value=b.value,
                        rule="manual",
                        event_id="api",
                        source="api",
                        created_time=now,
                    )
                    .on_conflict_do_update(
                        index_elements=["a_type", "a_value", "b_type", "b_value"],
                        set_={"revoked_time": None, "revoked_reason": None, "rule": "manual"},
                    )
                )
            await self._audit(
                conn,
                action="merge",
                pid=target,
                actor="operator",
                reason=reason,
                details={"merged": source},
            )
            await self._publish(
                conn, [change(pb.PROFILE_CHANGE_TYPE_MERGED, target, merged=[source])]
            )
            return target

        result: str = await self._transaction(work)
        return result

    async def unmerge(self, key: IdentifierKey, *, reason: str) -> tuple[str, list[str]]:
        """Split `key` off its profile: recompute the components of the identity graph without it
        and rebuild each component's profile from its events. Returns (profile, split profiles)."""

        async def work(conn: AsyncConnection) -> tuple[str, list[str]]:
            await self._lock_identifiers(conn, [key])
            owner = (await self._owners(conn, [key])).get(key)
            if owner is None:
                raise NotFoundError(
                    f"identifier.value: no profile holds {key.type} identifier",
                    resource_type="identifier",
                    resource_name=key.type,
                )
            await self._lock_profiles(conn, [owner])
            held = [
                IdentifierKey(r.type, r.value)
                for r in await conn.execute(
                    select(identifiers.c.type, identifiers.c.value).where(
                        identifiers.c.profile_id == owner
                    )
                )
            ]
            if len(held) < 2:
                raise FailedPreconditionError(
                    "identifier: the profile holds no other identifier to split it from",
                    reason="NOTHING_TO_UNMERGE",
                )
            now = _now()
            await conn.execute(
                update(identity_edges)
                .where(
                    or_(
                        and_(
                            identity_edges.c.a_type == key.type,
                            identity_edges.c.a_value == key.value,
                        ),
                        and_(
                            identity_edges.c.b_type == key.type,
                            identity_edges.c.b_value == key.value,
                        ),
                    ),
                    identity_edges.c.revoked_time.is_(None),
                )
                .values(revoked_time=now, revoked_reason=reason or "unmerge")
            )
            held_set = set(held)
            parent = {k: k for k in held}

            def find(k: IdentifierKey) -> IdentifierKey:
                while parent[k] != k:
                    parent[k] = parent[parent[k]]
                    k = parent[k]
                return k

            edge_rows = await conn.execute(
                select(identity_edges).where(
                    identity_edges.c.revoked_time.is_(None),
                    tuple_(identity_edges.c.a_type, identity_edges.c.a_value).in_(
                        [(k.type, k.value) for k in held]
                    ),
                )
            )
            for r in edge_rows:
                a, b = IdentifierKey(r.a_type, r.a_value), IdentifierKey(r.b_type, r.b_value)
                if a in held_set and b in held_set:
                    ra, rb = find(a), find(b)
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
            components: dict[IdentifierKey, list[IdentifierKey]] = defaultdict(list)
            for k in held:
                components[find(k)].append(k)
            comps = sorted(components.values(), key=lambda c: strongest(c).sort_key())
            # Components matching a profile merged away earlier get that profile's id back.
            history = (
                await conn.execute(
                    select(merges.c.loser_id, merges.c.identifiers).where(
                        merges.c.kind == "merge",
                        merges.c.loser_id.in_(
                            select(profiles.c.id).where(profiles.c.merged_into == owner)
                        ),
                    )
                )
            ).all()
            candidates = sorted(
                (
                    (
                        len({str(k) for k in comp if k != key} & set(r.identifiers or [])),
                        i,
                        r.loser_id,
                    )
                    for i, comp in enumerate(comps)
                    for r in history
                ),
                reverse=True,
            )
            restored: dict[int, str] = {}
            for overlap, index, loser_id in candidates:
                if overlap and index not in restored and loser_id not in restored.values():
                    restored[index] = loser_id
            keeper_index = next(
                (i for i, c in enumerate(comps) if i not in restored and key not in c),
                next((i for i in range(len(comps)) if i not in restored), 0),
            )
            restored.pop(keeper_index, None)
            assignment: dict[IdentifierKey, str] = {k: owner for k in comps[keeper_index]}
            split_ids: list[str] = []
            ordered = sorted(
                (i for i in range(len(comps)) if i != keeper_index),
                key=lambda i: key not in comps[i],
            )
            for index in ordered:
                comp = comps[index]
                if index in restored:
                    pid = restored[index]
                    await conn.execute(
                        update(profiles)
                        .where(profiles.c.id == pid)
                        .values(merged_into=None, updated_time=now)
                    )
                else:
                    pid = new_profile_id()
                    await conn.execute(
                        insert(profiles).values(
                            id=pid, created_time=now, updated_time=now, merged_into=None
                        )
                    )
                split_ids.append(pid)
                for k in comp:
                    assignment[k] = pid
                await conn.execute(
                    update(identifiers)
                    .where(
                        tuple_(identifiers.c.type, identifiers.c.value).in_(
                            [(k.type, k.value) for k in comp]
                        )
                    )
                    .values(profile_id=pid)
                )
                await conn.execute(
                    insert(merges).values(
                        id=uuid.uuid4().hex,
                        kind="unmerge",
                        winner_id=owner,
                        loser_id=pid,
                        rule="manual",
                        event_id=f"op-{uuid.uuid4().hex}",
                        reason=reason or "unmerge",
                        identifiers=[str(k) for k in comp],
                        created_time=now,
                    )
                )
            await self._rebuild(conn, owner, assignment)
            await self._audit(
                conn,
                action="unmerge",
                pid=owner,
                actor="operator",
                reason=reason,
                details={"split_profiles": split_ids},
            )
            await self._publish(
                conn,
                [change(pb.PROFILE_CHANGE_TYPE_UNMERGED, owner, split=split_ids)]
                + [change(pb.PROFILE_CHANGE_TYPE_CREATED, p) for p in split_ids],
            )
            return owner, split_ids

        result: tuple[str, list[str]] = await self._transaction(work)
        return result

    async def _rebuild(
        self, conn: AsyncConnection, owner: str, assignment: dict[IdentifierKey, str]
    ) -> None:
        """Recompute the read model of `owner` and its split profiles from the applied events."""
        stored = (
            await conn.execute(
                select(applied_events)
                .where(applied_events.c.profile_id == owner)
                .order_by(applied_events.c.event_time, applied_events.c.id)
            )
        ).all()
        for table in (traits, consents, events, event_counts, event_daily, trait_history):
            await conn.execute(delete(table).where(table.c.profile_id == owner))
        replay: list[tuple[str, EventEffects]] = []
        for r in stored:
            keys = [IdentifierKey.parse(k) for k in r.identifiers]
            mine = [k for k in keys if k in assignment]
            pid = assignment[strongest(mine)] if mine else owner
            effects = replay_effects(
                r.kind, r.payload, keys, self.blocklist, default_region=self.default_region
            )
            effects.id = r.id
            if pid != owner:
                await conn.execute(
                    update(applied_events).where(applied_events.c.id == r.id).values(profile_id=pid)
                )
            replay.append((pid, effects))
        if replay:
            await self._apply_effects(conn, replay, emit_events=False)

    # ------------------------------------------------------------------ privacy

    async def erase(self, profile_id: str, *, actor: str, reason: str) -> ErasureResult:
        async def work(conn: AsyncConnection) -> ErasureResult:
            live = await self._live_ids(conn, [profile_id])
            if profile_id not in live:
                raise NotFoundError(
                    f"profile {profile_id} not found",
                    resource_type="profile",
                    resource_name=profile_id,
                )
            pid = live[profile_id]
            await self._lock_profiles(conn, [pid])
            keys = [
                IdentifierKey(r.type, r.value)
                for r in await conn.execute(
                    select(identifiers.c.type, identifiers.c.value).where(
                        identifiers.c.profile_id == pid
                    )
                )
            ]
            await self._lock_identifiers(conn, keys)
            merged_away = [
                r[0]
                for r in await conn.execute(
                    select(profiles.c.id).where(profiles.c.merged_into == pid)
                )
            ]
            all_ids = [pid, *merged_away]
            event_count = int(
                await conn.scalar(select(func.count()).where(events.c.profile_id == pid)) or 0
            )
            for table in (
                traits,
                consents,
                events,
                event_counts,
                event_daily,
                trait_history,
                applied_events,
                identity_conflicts,
                identifiers,
            ):
                await conn.execute(delete(table).where(table.c.profile_id == pid))
            if keys:
                pairs = [(k.type, k.value) for k in keys]
                await conn.execute(
                    delete(identity_edges).where(
                        or_(
                            tuple_(identity_edges.c.a_type, identity_edges.c.a_value).in_(pairs),
                            tuple_(identity_edges.c.b_type, identity_edges.c.b_value).in_(pairs),
                        )
                    )
                )
            await conn.execute(
                delete(merges).where(
                    or_(merges.c.winner_id.in_(all_ids), merges.c.loser_id.in_(all_ids))
                )
            )
            await conn.execute(delete(profiles).where(profiles.c.id.in_(all_ids)))
            now = _now()
            if keys:
                await conn.execute(
                    self._insert(suppressions).on_conflict_do_nothing(),
                    [
                        {
                            "identifier_hash": k.suppression_hash(),
                            "type": k.type,
                            "created_time": now,
                            "reason": "erased",
                        }
                        for k in keys
                    ],
                )
            await self._audit(
                conn,
                action="erase",
                pid=pid,
                actor=actor,
                reason=reason,
                details={
                    "identifier_hashes": sorted(k.suppression_hash() for k in keys),
                    "erased_profile_ids": all_ids,
                    "event_count": event_count,
                },
            )
            await self._publish(
                conn,
                [change(pb.PROFILE_CHANGE_TYPE_ERASED, pid, identifiers=keys, merged=merged_away)],
            )
            return ErasureResult(pid, keys, event_count)

        result: ErasureResult = await self._transaction(work)
        return result

    async def _audit(
        self,
        conn: AsyncConnection,
        *,
        action: str,
        pid: str,
        actor: str,
        reason: str,
        details: dict[str, Any],
    ) -> None:
        await conn.execute(
            insert(audit_log).values(
                action=action,
                profile_id=pid,
                actor=actor or "unknown",
                reason=reason or "",
                details=details,
                created_time=_now(),
            )
        )

    async def record_export(self, profile_id: str, actor: str) -> None:
        async with self.engine.begin() as conn:
            await self._audit(
                conn, action="export", pid=profile_id, actor=actor, reason="export", details={}
            )

    async def is_suppressed(self, keys: Sequence[IdentifierKey]) -> set[IdentifierKey]:
        hashes = {k.suppression_hash(): k for k in keys}
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(suppressions.c.identifier_hash).where(
                    suppressions.c.identifier_hash.in_(list(hashes))
                )
            )
            return {hashes[r[0]] for r in rows}

    async def erased_ids(self, profile_ids: Iterable[str]) -> set[str]:
        """Those of `profile_ids` that ErasePerson deleted, itself or as merged into the erased
        profile. The erase audit records are the only trace an erased id leaves; they are read
        only for ids no profile row answers, and erasures are rare next to profiles."""
        wanted = set(profile_ids)
        if not wanted:
            return set()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(audit_log.c.details).where(audit_log.c.action == "erase")
            )
            erased: set[str] = set()
            for row in rows:
                erased.update(wanted.intersection(row.details.get("erased_profile_ids", ())))
            return erased

    # ------------------------------------------------------------------ reads

    async def resolve(self, profile_id: str) -> str | None:
        return (await self.resolve_many([profile_id])).get(profile_id)

    async def resolve_many(self, profile_ids: Iterable[str]) -> dict[str, str]:
        """The live profile of each of `profile_ids` that has one (absent when none)."""
        async with self.engine.connect() as conn:
            return await self._live_ids(conn, profile_ids)

    async def owner_of(self, key: IdentifierKey) -> str | None:
        return (await self.owners_of([key])).get(key)

    async def owners_of(self, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, str]:
        """The profile holding each of `keys` that is held (absent when none)."""
        async with self.engine.connect() as conn:
            return await self._owners(conn, keys)

    async def load_profiles(self, profile_ids: Sequence[str]) -> dict[str, ProfileView]:
        """Live profiles by id (ids must be live ones; see `resolve`)."""
        ids = sorted(set(profile_ids))
        result: dict[str, ProfileView] = {}
        if not ids:
            return result
        async with self.engine.connect() as conn:
            for r in await conn.execute(
                select(profiles).where(profiles.c.id.in_(ids), profiles.c.merged_into.is_(None))
            ):
                result[r.id] = ProfileView(r.id, r.created_time, r.updated_time, r.timezone)
            live = list(result)
            if not live:
                return result
            for r in await conn.execute(
                select(identifiers.c.profile_id, identifiers.c.type, identifiers.c.value)
                .where(identifiers.c.profile_id.in_(live))
                .order_by(identifiers.c.type, identifiers.c.value)
            ):
                result[r.profile_id].identifiers.append(IdentifierKey(r.type, r.value))
            for r in await conn.execute(
                select(traits).where(traits.c.profile_id.in_(live)).order_by(traits.c.name)
            ):
                result[r.profile_id].traits.append(
                    TraitView(r.name, r.value, r.updated_time, r.source, r.event_id)
                )
            for r in await conn.execute(
                select(consents)
                .where(consents.c.profile_id.in_(live))
                .order_by(consents.c.channel, consents.c.purpose)
            ):
                result[r.profile_id].consents.append(
                    ConsentView(r.channel, r.purpose, r.status, r.updated_time, r.source)
                )
            for r in await conn.execute(
                select(event_counts)
                .where(event_counts.c.profile_id.in_(live))
                .order_by(event_counts.c.name)
            ):
                view = result[r.profile_id]
                view.counts.append(
                    CountView(r.name, r._mapping["count"], r.first_time, r.last_time)
                )
                if r.name == ORDER_COMPLETED:
                    view.purchase_count = r._mapping["count"]
            for pid, revenue in await conn.execute(
                select(event_daily.c.profile_id, func.sum(event_daily.c.revenue))
                .where(event_daily.c.profile_id.in_(live), event_daily.c.name == ORDER_COMPLETED)
                .group_by(event_daily.c.profile_id)
            ):
                result[pid].total_revenue = float(revenue or 0.0)
            for r in await conn.execute(
                select(profiles.c.id, profiles.c.merged_into).where(
                    profiles.c.merged_into.in_(live)
                )
            ):
                result[r.merged_into].merged_ids.append(r.id)
        return result

    async def list_events(
        self,
        profile_id: str,
        filters: EventFilter,
        page_size: int,
        cursor: tuple[datetime, str] | None,
    ) -> tuple[list[EventView], tuple[datetime, str] | None]:
        query = select(events).where(events.c.profile_id == profile_id)
        if filters.types:
            query = query.where(events.c.type.in_(filters.types))
        if filters.names:
            query = query.where(events.c.name.in_(filters.names))
        if filters.start_time is not None:
            query = query.where(events.c.event_time >= filters.start_time)
        if filters.end_time is not None:
            query = query.where(events.c.event_time < filters.end_time)
        if cursor is not None:
            at = bindparam("cursor_time", cursor[0], type_=events.c.event_time.type)
            query = query.where(
                or_(
                    events.c.event_time < at,
                    and_(events.c.event_time == at, events.c.id < cursor[1]),
                )
            )
        query = query.order_by(events.c.event_time.desc(), events.c.id.desc()).limit(page_size + 1)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        page = [
            EventView(
                r.id,
                r.type,
                r.name,
                r.event_time,
                r.received_time,
                r.properties or {},
                r.context or {},
            )
            for r in rows[:page_size]
        ]
        following = (page[-1].event_time, page[-1].id) if len(rows) > page_size and page else None
        return page, following

    async def identity_graph(self, profile_id: str) -> IdentityGraphView:
        async with self.engine.connect() as conn:
            keys = [
                IdentifierKey(r.type, r.value)
                for r in await conn.execute(
                    select(identifiers.c.type, identifiers.c.value)
                    .where(identifiers.c.profile_id == profile_id)
                    .order_by(identifiers.c.type, identifiers.c.value)
                )
            ]
            edges: list[EdgeView] = []
            if keys:
                pairs = [(k.type, k.value) for k in keys]
                for r in await conn.execute(
                    select(identity_edges)
                    .where(
                        identity_edges.c.revoked_time.is_(None),
                        tuple_(identity_edges.c.a_type, identity_edges.c.a_value).in_(pairs),
                    )
                    .order_by(identity_edges.c.created_time)
                ):
                    edges.append(
                        EdgeView(
                            IdentifierKey(r.a_type, r.a_value),
                            IdentifierKey(r.b_type, r.b_value),
                            r.rule,
                            r.event_id,
                            r.source,
                            r.created_time,
                        )
                    )
            related = [profile_id] + [
                r[0]
                for r in await conn.execute(
                    select(profiles.c.id).where(profiles.c.merged_into == profile_id)
                )
            ]
            merge_rows = await conn.execute(
                select(merges)
                .where(or_(merges.c.winner_id.in_(related), merges.c.loser_id.in_(related)))
                .order_by(merges.c.created_time)
            )
            merge_views = [
                MergeView(
                    r.id,
                    r.kind,
                    r.winner_id,
                    r.loser_id,
                    r.rule,
                    r.event_id,
                    r.reason,
                    [IdentifierKey.parse(k) for k in r.identifiers],
                    r.created_time,
                )
                for r in merge_rows
            ]
            conflict_views = [
                ConflictView(
                    IdentifierKey.parse(r.identifier),
                    r.other_profile_id,
                    r.rule,
                    r.event_id,
                    r.created_time,
                )
                for r in await conn.execute(
                    select(identity_conflicts)
                    .where(identity_conflicts.c.profile_id == profile_id)
                    .order_by(identity_conflicts.c.id)
                )
            ]
        return IdentityGraphView(profile_id, keys, edges, merge_views, conflict_views)

    async def export(self, profile_id: str) -> dict[str, Any]:
        """Everything held about a live profile, as JSON-ready data."""
        views = await self.load_profiles([profile_id])
        view = views[profile_id]
        graph = await self.identity_graph(profile_id)
        async with self.engine.connect() as conn:
            event_rows = (
                await conn.execute(
                    select(events)
                    .where(events.c.profile_id == profile_id)
                    .order_by(events.c.event_time)
                )
            ).all()
            history = (
                await conn.execute(
                    select(trait_history)
                    .where(trait_history.c.profile_id == profile_id)
                    .order_by(trait_history.c.event_time, trait_history.c.id)
                )
            ).all()
            daily = (
                await conn.execute(
                    select(event_daily)
                    .where(event_daily.c.profile_id == profile_id)
                    .order_by(event_daily.c.name, event_daily.c.day)
                )
            ).all()
            audits = (
                await conn.execute(
                    select(audit_log)
                    .where(audit_log.c.profile_id == profile_id)
                    .order_by(audit_log.c.id)
                )
            ).all()

        def iso(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment is not None else None

        return {
            "profile": {
                "id": view.id,
                "created_time": iso(view.created_time),
                "updated_time": iso(view.updated_time),
                "timezone": view.timezone,
                "merged_profile_ids": view.merged_ids,
            },
            "identifiers": [{"type": k.type, "value": k.value} for k in view.identifiers],
            "identity_edges": [
                {
                    "from": str(e.a),
                    "to": str(e.b),
                    "rule": e.rule,
                    "event_id": e.event_id,
                    "source": e.source,
                    "created_time": iso(e.created_time),
                }
                for e in graph.edges
            ],
            "merges": [
                {
                    "kind": m.kind,
                    "winner_id": m.winner_id,
                    "loser_id": m.loser_id,
                    "rule": m.rule,
                    "event_id": m.event_id,
                    "reason": m.reason,
                    "identifiers": [str(k) for k in m.identifiers],
                    "created_time": iso(m.created_time),
                }
                for m in graph.merges
            ],
            "identity_conflicts": [
                {
                    "identifier": str(c.identifier),
                    "rule": c.rule,
                    "event_id": c.event_id,
                    "created_time": iso(c.created_time),
                }
                for c in graph.conflicts
            ],
            "traits": [
                {
                    "name": t.name,
                    "value": t.value,
                    "updated_time": iso(t.updated_time),
                    "source": t.source,
                    "event_id": t.event_id,
                }
                for t in view.traits
            ],
            "trait_history": [
                {
                    "name": h.name,
                    "op": h.op,
                    "value": h.value,
                    "event_time": iso(h.event_time),
                    "event_id": h.event_id,
                    "source": h.source,
                }
                for h in history
            ],
            "consents": [
                {
                    "channel": c.channel,
                    "purpose": c.purpose,
                    "status": c.status,
                    "updated_time": iso(c.updated_time),
                    "source": c.source,
                }
                for c in view.consents
            ],
            "events": [
                {
                    "id": r.id,
                    "type": r.type,
                    "name": r.name,
                    "event_time": iso(r.event_time),
                    "received_time": iso(r.received_time),
                    "properties": r.properties,
                    "context": r.context,
                }
                for r in event_rows
            ],
            "event_counts": [
                {
                    "name": c.name,
                    "count": c.count,
                    "first_time": iso(c.first_time),
                    "last_time": iso(c.last_time),
                }
                for c in view.counts
            ],
            "event_daily": [
                {"name": d.name, "day": d.day.isoformat(), "count": d.count, "revenue": d.revenue}
                for d in daily
            ],
            "purchases": {"count": view.purchase_count, "total_revenue": view.total_revenue},
            "audit": [
                {
                    "action": a.action,
                    "actor": a.actor,
                    "reason": a.reason,
                    "created_time": iso(a.created_time),
                }
                for a in audits
            ],
        }


_MISSING: Any = object()


def _split_off(
    items: list[EventEffects],
    deferred: list[EventEffects],
    held_keys: Collection[IdentifierKey],
    held_profiles: Collection[str] = (),
) -> list[EventEffects]:
    """Move to `deferred` the events with an identifier in `held_keys` or addressed to a
    profile in `held_profiles`; returns the others."""
    keep: list[EventEffects] = []
    for e in items:
        waits = e.profile_id in held_profiles or any(k in held_keys for k in e.identifiers)
        (deferred if waits else keep).append(e)
    return keep


# The tables whose rows belong to one profile and follow it into the winner of a merge.
_PROFILE_ROW_TABLES = (identifiers, applied_events, trait_history, events, identity_conflicts)
_TRAIT_COLUMNS = (
    "value",
    "value_type",
    "num_value",
    "text_value",
    "bool_value",
    "time_value",
    "updated_time",
    "source",
    "event_id",
)

_STATUS_RANK = {"unsubscribed": 2, "unknown": 1, "subscribed": 0}


def _consent_newer(candidate: tuple[str, datetime, str], held: tuple[str, datetime, str]) -> bool:
    """Newest time wins; on a tie the more restrictive status wins (deterministic)."""
    if candidate[1] != held[1]:
        return candidate[1] > held[1]
    return _STATUS_RANK.get(candidate[0], 0) > _STATUS_RANK.get(held[0], 0)


def _trait_row(pid: str, name: str, state: TraitState) -> dict[str, Any]:
    return {
        "profile_id": pid,
        "name": name,
        "value": state.value,
        **typed_columns(state.value),
        "updated_time": state.time,
        "source": state.source,
        "event_id": state.event_id,
    }


def encode_cursor(cursor: tuple[datetime, str]) -> str:
    raw = f"{cursor[0].isoformat()}|{cursor[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(token: str) -> tuple[datetime, str] | None:
    try:
        raw = base64.urlsafe_b64decode(token.encode()).decode()
        moment, _, event_id = raw.partition("|")
        return datetime.fromisoformat(moment), event_id
    except (ValueError, UnicodeDecodeError):
        return None
