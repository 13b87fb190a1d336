"""Real-time membership: the worker that keeps `segment_memberships` current.

Three things change a membership:

- A profile change (consumed from PROFILE_CHANGES, group `segment`): the segments that depend on
  what changed are re-evaluated in process for that profile.
- Time passing: every stored (segment, profile) row carries the next window edge at which its
  truth may change with no new data (`evaluate.next_edge`); the scheduler re-evaluates exactly
  the rows whose edge has passed.
- A new or changed definition: the worker materializes it for everyone (SQL for the members,
  in-process evaluation of the profiles with matching events for the window edges).

Each change is appended to MEMBERSHIP_CHANGES (key: profile id) before the membership rows are
committed and the input acknowledged, so a crash re-sends rather than loses a change (at least
once; consumers may see a change twice). Changes are also published to in-process watchers.

The hot path is per batch, not per change: on PostgreSQL one array statement per table
(`store/pg_batch.py`), events read only for segments whose trait/consent/identifier gate holds,
large batches split into lanes by profile id, and the next claim and the previous acknowledgement
overlapped with the batch being handled (`consume_forever`).
"""

from __future__ import annotations

import asyncio
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from upm.profile.v1 import profile_service_pb2 as profile_pb
from upm.segment.v1 import segment_service_pb2 as pb
from upm_common.db import driver_connection
from upm_common.eventlog import (
    MEMBERSHIP_CHANGES,
    PROFILE_CHANGES,
    Delivery,
    EventLog,
    LogRecord,
    consumer_name,
)
from upm_common.protoconv import datetime_to_timestamp
from upm_profile.store import tables as t
from upm_segment import model as m
from upm_segment.compile import SqlCompiler, prepare_read
from upm_segment.evaluate import (
    Plan,
    ProfileData,
    evaluate_with_edges,
    event_horizons,
    gate_holds,
    next_edge,
    plan,
)
from upm_segment.resolve import resolve
from upm_segment.service import Clock, utc_now
from upm_segment.store import pg_batch
from upm_segment.store.readmodel import event_ranges, live_profiles, load_profiles
from upm_segment.store.sql import MembershipRow, SegmentRecord, SqlSegmentStore
from upm_segment.store.tables import segment_definitions

log = structlog.get_logger(__name__)

GROUP = "segment"
CAUSE_PROFILE = "profile-change"
CAUSE_EDGE = "window-edge"
CAUSE_SEGMENT = "segment-change"
# A batch of profile changes is split into lanes handled concurrently (one connection each,
# so one lane's statements run while another evaluates) when each lane gets at least this
# many profiles; below that the extra round trips cost more than they overlap.
MIN_LANE_PROFILES = 200
# A batch's events are read in groups of profiles by the event names they need; past this
# many distinct groups one read for all of them costs less than a statement per group.
MAX_READ_GROUPS = 3


class MembershipHub:
    """Fans recorded membership changes out to WatchMembershipChanges streams of this process."""

    def __init__(self, queue_size: int = 10_000) -> None:
        self._queues: set[asyncio.Queue[pb.MembershipChange]] = set()
        self._queue_size = queue_size

    def publish(self, changes: Sequence[pb.MembershipChange]) -> None:
        for queue in list(self._queues):
            for item in changes:
                if queue.full():
                    break
                queue.put_nowait(item)

    def subscribe(self) -> asyncio.Queue[pb.MembershipChange]:
        queue: asyncio.Queue[pb.MembershipChange] = asyncio.Queue(self._queue_size)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[pb.MembershipChange]) -> None:
        self._queues.discard(queue)


@dataclass(frozen=True)
class ActiveSegment:
    record: SegmentRecord
    resolved: m.Condition
    deps: m.Dependencies
    plan: Plan


@dataclass(frozen=True)
class ProfileNotice:
    """What the worker needs of one profile change (decoded from upm.profile.v1.ProfileChange)."""

    profile_id: str
    kind: str  # created | traits | consent | merged | unmerged | erased | event | other
    trait_names: tuple[str, ...] = ()
    event_name: str = ""
    merged_ids: tuple[str, ...] = ()
    split_ids: tuple[str, ...] = ()


_KINDS = {
    profile_pb.PROFILE_CHANGE_TYPE_CREATED: "created",
    profile_pb.PROFILE_CHANGE_TYPE_TRAITS_CHANGED: "traits",
    profile_pb.PROFILE_CHANGE_TYPE_CONSENT_CHANGED: "consent",
    profile_pb.PROFILE_CHANGE_TYPE_MERGED: "merged",
    profile_pb.PROFILE_CHANGE_TYPE_UNMERGED: "unmerged",
    profile_pb.PROFILE_CHANGE_TYPE_ERASED: "erased",
    profile_pb.PROFILE_CHANGE_TYPE_EVENT_APPLIED: "event",
}


def decode_profile_change(payload: bytes) -> ProfileNotice:
    change = profile_pb.ProfileChange.FromString(payload)
    return ProfileNotice(
        profile_id=change.profile_id,
        kind=_KINDS.get(change.type, "other"),
        trait_names=tuple(change.trait_names),
        event_name=change.event_name,
        merged_ids=tuple(change.merged_profile_ids),
        split_ids=tuple(change.split_profile_ids),
    )


def _outcomes(
    items: Sequence[ActiveSegment], data: ProfileData | None, now: datetime
) -> list[tuple[bool, datetime | None]]:
    """(member, next edge) of each segment for a profile (None: missing or merged away). A
    segment whose gate fails is not a member and has no edge, whatever the events."""
    if data is None:
        return [(False, None)] * len(items)
    passing = [s for s in items if gate_holds(s.plan, data)]
    if not passing:
        return [(False, None)] * len(items)
    evaluated = iter(evaluate_with_edges([s.plan for s in passing], data, now))
    passed = {id(s) for s in passing}
    return [next(evaluated) if id(s) in passed else (False, None) for s in items]


def _lane(profile_id: str, lanes: int) -> int:
    return zlib.crc32(profile_id.encode()) % lanes


def affected(segment: ActiveSegment, notice: ProfileNotice) -> bool:
    """Whether the change can alter the segment's membership of the profile."""
    deps = segment.deps
    if notice.kind == "traits":
        return bool(deps.traits.intersection(notice.trait_names))
    if notice.kind == "consent":
        return deps.consents
    if notice.kind == "event":
        return notice.event_name in deps.event_names
    return True


class MembershipWorker:
    def __init__(
        self,
        engine: AsyncEngine,
        store: SqlSegmentStore,
        event_log: EventLog,
        hub: MembershipHub,
        *,
        read_engine: AsyncEngine | None = None,
        clock: Clock = utc_now,
        consumer: str = "",
        batch_size: int = 500,
        lease_seconds: float = 60.0,
        refresh_seconds: float = 2.0,
        scheduler_interval_seconds: float = 1.0,
        decode: Callable[[bytes], ProfileNotice] = decode_profile_change,
        group: str = GROUP,
        lanes: int = 2,
    ) -> None:
        self.engine = engine
        self.read_engine = read_engine or engine
        self.store = store
        self.event_log = event_log
        self.hub = hub
        self.clock = clock
        self.consumer = consumer or consumer_name()
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.refresh_seconds = refresh_seconds
        self.scheduler_interval_seconds = scheduler_interval_seconds
        self.decode = decode
        self.group = group
        self.lanes = max(1, lanes)
        self._segments: dict[str, ActiveSegment] = {}
        self._loaded_at: datetime | None = None
        self._signature: tuple[tuple[str, str, int | None], ...] | None = None
        self._needs_cache: dict[tuple[str, ...], pg_batch.Needs] = {}

    # --- loops ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume profile changes and run the scheduler until cancelled."""
        await self.event_log.ensure_group(PROFILE_CHANGES, self.group)
        await asyncio.gather(self.consume_forever(), self._schedule_forever())

    async def consume_forever(self, *, block_seconds: float = 1.0) -> None:
        """Handle batches of profile changes until cancelled, one batch at a time in the order
        they were claimed (so a profile's changes are handled in order), with the round trips
        around a batch overlapped with it: the next batch is claimed while this one is
        handled, and this one is acknowledged while the next is handled. A batch's effects are
        stored before its acknowledgement starts; a lost acknowledgement only delivers the
        batch again, and handling it again emits nothing new."""
        claiming: asyncio.Task[list[Delivery]] | None = None
        acking: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    claimed = claiming or asyncio.create_task(self._claim(block_seconds))
                    claiming = None
                    deliveries = await claimed
                    if not deliveries:
                        await self.refresh()
                        continue
                    claiming = asyncio.create_task(self._claim(block_seconds))
                    await self.handle(self._decode(deliveries))
                    if acking is not None:  # at most one acknowledgement in flight
                        previous, acking = acking, None
                        await previous
                    acking = asyncio.create_task(self._ack(deliveries))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("membership worker batch failed; retrying")
                    await asyncio.sleep(1.0)
        finally:
            for task in (claiming, acking):
                if task is not None:
                    task.cancel()

    async def _schedule_forever(self) -> None:
        while True:
            try:
                await self.run_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("membership scheduler failed; retrying")
            await asyncio.sleep(self.scheduler_interval_seconds)

    # --- definitions ----------------------------------------------------------------------

    async def refresh(self, *, force: bool = False) -> dict[str, ActiveSegment]:
        """Reload definitions (at most every refresh_seconds) and materialize changed ones.

        Between reloads only each definition's etag and materialized version are read: the
        definitions are parsed and resolved again only when one of them changed."""
        now = self.clock()
        if (
            not force
            and self._loaded_at is not None
            and (now - self._loaded_at).total_seconds() < self.refresh_seconds
        ):
            return self._segments
        self._loaded_at = now
        signature = await self._definitions_signature()
        if not force and signature == self._signature:
            return self._segments
        records = await self.store.all()
        definitions = {r.id: r.definition for r in records}
        active: dict[str, ActiveSegment] = {}
        for record in records:
            try:
                resolved = resolve(record.definition, definitions, self_id=record.id)
            except Exception:
                log.warning("segment definition cannot be resolved", segment_id=record.id)
                continue
            active[record.id] = ActiveSegment(
                record, resolved, m.dependencies(resolved), plan(resolved)
            )
        self._segments = active
        self._needs_cache = {}
        self._signature = None
        pending = [s for s in active.values() if s.record.materialized_version != s.record.version]
        for segment in pending:
            await self.materialize(segment)
        # Read before the definitions, so a change made meanwhile makes the next check reload;
        # after a materialization (or a failed one) the next check reloads too.
        self._signature = None if pending else signature
        return active

    async def _definitions_signature(self) -> tuple[tuple[str, str, int | None], ...]:
        columns = segment_definitions.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(columns.id, columns.etag, columns.materialized_version).order_by(columns.id)
            )
            return tuple((row[0], row[1], row[2]) for row in rows)

    async def materialize(self, segment: ActiveSegment) -> list[pb.MembershipChange]:
        """Compute a (new or changed) segment's memberships for everyone."""
        now = self.clock()
        record = segment.record
        compiler = SqlCompiler(self.read_engine.dialect.name, now)
        async with self.read_engine.connect() as conn:
            await prepare_read(conn)
            members = {
                row[0] for row in await conn.execute(compiler.members_query(segment.resolved))
            }
            candidates: set[str] = set()
            horizons = event_horizons([segment.resolved], now)
            if segment.deps.time_dependent:
                found = await conn.execute(
                    select(t.events.c.profile_id).where(event_ranges(horizons)).distinct()
                )
                candidates = {str(row[0]) for row in found}
            edges: dict[str, datetime | None] = {}
            ordered = sorted(candidates)
            for start in range(0, len(ordered), 2000):
                loaded = await load_profiles(conn, ordered[start : start + 2000], events=horizons)
                for profile_id, data in loaded.items():
                    if gate_holds(segment.plan, data):
                        edges[profile_id] = next_edge(segment.plan, data, now)
        async with self.engine.connect() as conn:
            before = await self.store.segment_members(conn, record.id)
        rows = [
            MembershipRow(record.id, pid, pid in members, record.version, edges.get(pid))
            for pid in sorted(members | before | set(edges))
        ]
        changes = [
            self._change(record, pid, pid in members, now, CAUSE_SEGMENT)
            for pid in sorted(members ^ before)
        ]
        await self._commit(rows, changes, now)
        await self.store.mark_materialized(record.id, record.version)
        log.info(
            "segment materialized",
            segment_id=record.id,
            version=record.version,
            members=len(members),
            changes=len(changes),
        )
        return changes

    # --- profile changes --------------------------------------------------------------------

    async def consume_once(self, *, block_seconds: float = 0.0) -> int:
        """Handle one claimed batch of profile changes; returns how many were claimed."""
        deliveries = await self._claim(block_seconds)
        if not deliveries:
            return 0
        await self.handle(self._decode(deliveries))
        await self._ack(deliveries)
        return len(deliveries)

    async def _claim(self, block_seconds: float) -> list[Delivery]:
        return await self.event_log.claim(
            PROFILE_CHANGES,
            self.group,
            self.consumer,
            self.batch_size,
            lease_seconds=self.lease_seconds,
            block_seconds=block_seconds,
        )

    def _decode(self, deliveries: Sequence[Delivery]) -> list[ProfileNotice]:
        notices = []
        for delivery in deliveries:
            try:
                notices.append(self.decode(delivery.payload))
            except Exception:
                log.warning("undecodable profile change skipped", id=delivery.id)
        return notices

    async def _ack(self, deliveries: Sequence[Delivery]) -> None:
        await self.event_log.ack(PROFILE_CHANGES, self.group, [d.id for d in deliveries])

    async def handle(self, notices: Sequence[ProfileNotice]) -> list[pb.MembershipChange]:
        segments = await self.refresh()
        todo: dict[str, set[str]] = defaultdict(set)
        gone: set[str] = set()
        for notice in notices:
            if notice.kind == "erased":
                gone.add(notice.profile_id)
                continue
            gone.update(notice.merged_ids)
            for other in notice.split_ids:
                todo[other].update(segments)
            todo[notice.profile_id].update(
                sid for sid, segment in segments.items() if affected(segment, notice)
            )
        now = self.clock()
        wanted = {pid: sids for pid, sids in todo.items() if sids and pid not in gone}
        if self.lanes == 1 or len(wanted) + len(gone) < MIN_LANE_PROFILES * self.lanes:
            return await self._handle_lane(gone, wanted, now)
        # A profile's lane depends on its id alone, so no two lanes touch the same profile and
        # its changes are still handled (and emitted) in order.
        lanes: list[tuple[set[str], dict[str, set[str]]]] = [(set(), {}) for _ in range(self.lanes)]
        for pid in gone:
            lanes[_lane(pid, self.lanes)][0].add(pid)
        for pid, sids in wanted.items():
            lanes[_lane(pid, self.lanes)][1][pid] = sids
        handled = await asyncio.gather(*(self._handle_lane(g, w, now) for g, w in lanes))
        return [change for changes in handled for change in changes]

    async def _handle_lane(
        self, gone: set[str], wanted: dict[str, set[str]], now: datetime
    ) -> list[pb.MembershipChange]:
        changes = await self._exit_all(gone, now)
        changes += await self.evaluate_profiles(wanted, now, CAUSE_PROFILE)
        return changes

    async def _exit_all(
        self, profile_ids: Iterable[str], now: datetime
    ) -> list[pb.MembershipChange]:
        ids = sorted(set(profile_ids))
        if not ids:
            return []
        async with self.engine.connect() as conn:
            stored = await self.store.profile_rows(conn, ids)
        changes = []
        updates = []
        for row in stored:
            segment = self._segments.get(row.segment_id)
            if row.member and segment is not None:
                changes.append(
                    self._change(segment.record, row.profile_id, False, now, CAUSE_PROFILE)
                )
            updates.append(
                MembershipRow(row.segment_id, row.profile_id, False, row.segment_version, None)
            )
        await self._commit(updates, changes, now)
        return changes

    async def evaluate_profiles(
        self, todo: dict[str, set[str]], now: datetime, cause: str
    ) -> list[pb.MembershipChange]:
        """Re-evaluate the given segments of each profile and record what changed."""
        segments = self._segments
        chosen = {
            pid: [segments[sid] for sid in sorted(sids) if sid in segments]
            for pid, sids in todo.items()
        }
        chosen = {pid: items for pid, items in chosen.items() if items}
        if not chosen:
            return []
        if self.read_engine.dialect.name == "postgresql":
            loaded, stored = await self._read_postgres(chosen, now)
        else:
            loaded, stored = await self._read_portable(chosen, now)
        changes = []
        writes = []
        for profile_id, items in chosen.items():
            data = loaded.get(profile_id)
            for segment, (member, edge) in zip(items, _outcomes(items, data, now), strict=True):
                record = segment.record
                result = MembershipRow(record.id, profile_id, member, record.version, edge)
                previous = stored.get((record.id, profile_id))
                was_member = previous is not None and previous.member
                if member != was_member:
                    changes.append(self._change(record, profile_id, member, now, cause))
                if previous != result:  # same key: member, version or next check differs
                    writes.append(result)
        await self._commit(writes, changes, now)
        return changes

    async def _read_portable(
        self, chosen: dict[str, list[ActiveSegment]], now: datetime
    ) -> tuple[dict[str, ProfileData], dict[tuple[str, str], MembershipRow]]:
        """The profiles' data (live ones only) and their stored rows, on any dialect."""
        used = {s.record.id: s.resolved for items in chosen.values() for s in items}
        horizons = event_horizons(used.values(), now)
        async with self.read_engine.connect() as conn:
            live = await live_profiles(conn, list(chosen))
            loaded = await load_profiles(conn, live, events=horizons)
        async with self.engine.connect() as conn:
            stored = await self.store.memberships(
                conn, [(s.record.id, pid) for pid, items in chosen.items() for s in items]
            )
        return loaded, stored

    async def _read_postgres(
        self, chosen: dict[str, list[ActiveSegment]], now: datetime
    ) -> tuple[dict[str, ProfileData], dict[tuple[str, str], MembershipRow]]:
        """`_read_portable` with one array statement per table, on one connection when the read
        model is in the service database. Traits, consents and identifiers come first; events
        are then read only for the segments whose gate holds (`gate_holds`), each profile only
        the event names those segments refer to."""
        async with self.read_engine.connect() as conn:
            driver = await driver_connection(conn)
            used = tuple(sorted({s.record.id for items in chosen.values() for s in items}))
            loaded = await pg_batch.load_live(driver, chosen, self._needs(used))
            # Per event name, how far back any of the segments reads it; per profile, the
            # names of the segments whose gate holds.
            horizons = event_horizons([self._segments[sid].resolved for sid in used], now)
            groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
            for pid, data in loaded.items():
                names = {
                    name
                    for s in chosen[pid]
                    if gate_holds(s.plan, data)
                    for name in s.deps.event_names
                }
                if names:
                    groups[tuple(sorted(names))].append(pid)
            for key, pids in pg_batch.merge_groups(groups, MAX_READ_GROUPS).items():
                await pg_batch.load_events(
                    driver, {pid: loaded[pid] for pid in pids}, {n: horizons[n] for n in key}
                )
            if self.read_engine is self.engine:
                driver = await driver_connection(conn, plan_for_arguments=True)
                return loaded, await pg_batch.stored_rows(driver, chosen)
        async with self.engine.connect() as conn:
            driver = await driver_connection(conn, plan_for_arguments=True)
            return loaded, await pg_batch.stored_rows(driver, chosen)

    def _needs(self, segment_ids: tuple[str, ...]) -> pg_batch.Needs:
        needs = self._needs_cache.get(segment_ids)
        if needs is None:
            needs = pg_batch.needs_of(self._segments[sid].resolved for sid in segment_ids)
            self._needs_cache[segment_ids] = needs
        return needs

    # --- time -----------------------------------------------------------------------------

    async def run_due(self, limit: int = 1000) -> list[pb.MembershipChange]:
        """Re-evaluate the (segment, profile) pairs whose window edge has passed."""
        await self.refresh()
        now = self.clock()
        due = await self.store.due(now, limit)
        todo: dict[str, set[str]] = defaultdict(set)
        for segment_id, profile_id in due:
            todo[profile_id].add(segment_id)
        missing = [(s, p) for s, p in due if s not in self._segments]
        if missing:
            async with self.engine.begin() as conn:
                await self.store.save_memberships(
                    conn, [MembershipRow(s, p, False, 0, None) for s, p in missing], now
                )
        return await self.evaluate_profiles(todo, now, CAUSE_EDGE)

    # --- output ---------------------------------------------------------------------------

    def _change(
        self, record: SegmentRecord, profile_id: str, entered: bool, now: datetime, cause: str
    ) -> pb.MembershipChange:
        return pb.MembershipChange(
            segment_id=record.id,
            profile_id=profile_id,
            kind=(
                pb.MEMBERSHIP_CHANGE_KIND_ENTERED if entered else pb.MEMBERSHIP_CHANGE_KIND_EXITED
            ),
            change_time=datetime_to_timestamp(self.clock()),
            evaluation_time=datetime_to_timestamp(now),
            segment_version=record.version,
            cause=cause,
        )

    async def _commit(
        self, rows: Sequence[MembershipRow], changes: Sequence[pb.MembershipChange], now: datetime
    ) -> None:
        if changes:
            await self.event_log.append(
                MEMBERSHIP_CHANGES,
                [LogRecord(c.profile_id, c.SerializeToString()) for c in changes],
            )
        if rows:
            async with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    driver = await driver_connection(conn, plan_for_arguments=True)
                    await pg_batch.save_rows(driver, rows, now)
                else:
                    await self.store.save_memberships(conn, rows, now)
        if changes:
            self.hub.publish(changes)
