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
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from upm.profile.v1 import profile_service_pb2 as profile_pb
from upm.segment.v1 import segment_service_pb2 as pb
from upm_common.eventlog import (
    MEMBERSHIP_CHANGES,
    PROFILE_CHANGES,
    EventLog,
    LogRecord,
    consumer_name,
)
from upm_common.protoconv import datetime_to_timestamp
from upm_profile.store import tables as t
from upm_segment import model as m
from upm_segment.compile import SqlCompiler, prepare_read
from upm_segment.evaluate import Plan, evaluate_with_edges, event_horizons, next_edge, plan
from upm_segment.resolve import resolve
from upm_segment.service import Clock, utc_now
from upm_segment.store.readmodel import event_ranges, live_profiles, load_profiles
from upm_segment.store.sql import MembershipRow, SegmentRecord, SqlSegmentStore

log = structlog.get_logger(__name__)

GROUP = "segment"
CAUSE_PROFILE = "profile-change"
CAUSE_EDGE = "window-edge"
CAUSE_SEGMENT = "segment-change"


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
        self._segments: dict[str, ActiveSegment] = {}
        self._loaded_at: datetime | None = None

    # --- loops ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume profile changes and run the scheduler until cancelled."""
        await self.event_log.ensure_group(PROFILE_CHANGES, self.group)
        await asyncio.gather(self._consume_forever(), self._schedule_forever())

    async def _consume_forever(self) -> None:
        while True:
            try:
                handled = await self.consume_once(block_seconds=1.0)
                if not handled:
                    await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("membership worker batch failed; retrying")
                await asyncio.sleep(1.0)

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
        """Reload definitions (at most every refresh_seconds) and materialize changed ones."""
        now = self.clock()
        if (
            not force
            and self._loaded_at is not None
            and (now - self._loaded_at).total_seconds() < self.refresh_seconds
        ):
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
        self._loaded_at = now
        for segment in active.values():
            if segment.record.materialized_version != segment.record.version:
                await self.materialize(segment)
        return active

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
                    edges[profile_id] = next_edge(segment.resolved, data, now)
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
        deliveries = await self.event_log.claim(
            PROFILE_CHANGES,
            self.group,
            self.consumer,
            self.batch_size,
            lease_seconds=self.lease_seconds,
            block_seconds=block_seconds,
        )
        if not deliveries:
            return 0
        notices = []
        for delivery in deliveries:
            try:
                notices.append(self.decode(delivery.payload))
            except Exception:
                log.warning("undecodable profile change skipped", id=delivery.id)
        await self.handle(notices)
        await self.event_log.ack(PROFILE_CHANGES, self.group, [d.id for d in deliveries])
        return len(deliveries)

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
        changes = await self._exit_all(gone, now)
        changes += await self.evaluate_profiles(
            {pid: sids for pid, sids in todo.items() if sids and pid not in gone},
            now,
            CAUSE_PROFILE,
        )
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
        if not todo:
            return []
        segments = self._segments
        results: list[MembershipRow] = []
        chosen = {
            pid: [segments[sid] for sid in sorted(sids) if sid in segments]
            for pid, sids in todo.items()
        }
        used = {s.record.id: s.resolved for items in chosen.values() for s in items}
        horizons = event_horizons(used.values(), now)
        async with self.read_engine.connect() as conn:
            live = await live_profiles(conn, list(chosen))
            loaded = await load_profiles(conn, live, events=horizons)
        for profile_id, items in chosen.items():
            data = loaded.get(profile_id)
            outcomes = (
                evaluate_with_edges([s.plan for s in items], data, now)
                if data is not None
                else [(False, None)] * len(items)
            )
            for segment, (member, edge) in zip(items, outcomes, strict=True):
                results.append(
                    MembershipRow(
                        segment.record.id, profile_id, member, segment.record.version, edge
                    )
                )
        async with self.engine.connect() as conn:
            stored = await self.store.memberships(
                conn, [(r.segment_id, r.profile_id) for r in results]
            )
        changes = []
        writes = []
        for result in results:
            previous = stored.get((result.segment_id, result.profile_id))
            was_member = previous is not None and previous.member
            if result.member != was_member:
                record = segments[result.segment_id].record
                changes.append(self._change(record, result.profile_id, result.member, now, cause))
            if previous != result:  # same key: member, version or next check differs
                writes.append(result)
        await self._commit(writes, changes, now)
        return changes

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
                await self.store.save_memberships(conn, rows, now)
        if changes:
            self.hub.publish(changes)
