"""Real-time membership: entered/exited from a stream of profile changes and from time passing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from tests.segment.readmodel import insert_profiles
from upm.profile.v1 import profile_service_pb2 as profile_pb
from upm.segment.v1 import segment_service_pb2 as pb
from upm_common.db import create_engine
from upm_common.eventlog import (
    MEMBERSHIP_CHANGES,
    PROFILE_CHANGES,
    LogRecord,
    dead_letter_topic,
)
from upm_common.eventlog.sql import SqlEventLog
from upm_common.migrations import upgrade
from upm_profile.store import tables as t
from upm_segment import model as m
from upm_segment.evaluate import EventRecord, ProfileData, TraitValue, evaluate
from upm_segment.membership import MembershipHub, MembershipWorker, ProfileNotice
from upm_segment.service import SegmentDomain
from upm_segment.store.sql import SqlSegmentStore
from upm_segment.store.tables import segment_memberships
from upm_segment.text import parse

START = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TEXT = 'performed("Order Completed").within(30d) and trait(newsletter) = true'


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def _person(pid: str, events: list[EventRecord]) -> ProfileData:
    return ProfileData(pid, traits={"newsletter": TraitValue("boolean", True)}, events=events)


def _event_row(
    event_id: str, pid: str, when: datetime, name: str = "Order Completed", kind: str = "track"
) -> dict[str, object]:
    """A row of the read model's event table, as the profile service writes it."""
    return {
        "id": event_id,
        "profile_id": pid,
        "type": kind,
        "name": name,
        "event_time": when,
        "received_time": when,
        "properties": {},
        "context": {},
    }


def _change(kind: int, pid: str, **fields: object) -> LogRecord:
    message = profile_pb.ProfileChange(change_id=f"{pid}-{kind}", type=kind, profile_id=pid)  # type: ignore[arg-type]
    for key, value in fields.items():
        field = getattr(message, key)
        if isinstance(value, list):
            field.extend(value)
        else:
            setattr(message, key, value)
    return LogRecord(pid, message.SerializeToString())


def _summary(changes: list[pb.MembershipChange]) -> list[tuple[str, str, str]]:
    kinds = {
        pb.MEMBERSHIP_CHANGE_KIND_ENTERED: "entered",
        pb.MEMBERSHIP_CHANGE_KIND_EXITED: "exited",
    }
    return sorted((c.profile_id, kinds[c.kind], c.cause) for c in changes)


async def test_entered_and_exited_from_changes_and_from_time(db_url: str) -> None:
    engine = create_engine(db_url)
    clock = Clock()
    try:
        for component in ("eventlog", "profile", "segment"):
            await upgrade(engine, component)
        await insert_profiles(
            engine,
            [
                _person("ann", [EventRecord("Order Completed", "track", START - 2 * DAY)]),
                _person("bob", [EventRecord("Order Completed", "track", START - 40 * DAY)]),
                _person("cat", []),
            ],
        )
        log = SqlEventLog(engine)
        await log.ensure_group(MEMBERSHIP_CHANGES, "test")
        store = SqlSegmentStore(engine)
        domain = SegmentDomain(store, engine, clock=clock)
        hub = MembershipHub()
        watched = hub.subscribe()
        worker = MembershipWorker(engine, store, log, hub, clock=clock, refresh_seconds=0.0)
        await log.ensure_group(PROFILE_CHANGES, "segment")
        await domain.create(
            segment_id="buyers", name="Buyers", description="", definition=None, text=TEXT
        )

        # A new segment is materialized for everyone.
        await worker.refresh(force=True)
        delivered = await log.claim(MEMBERSHIP_CHANGES, "test", "t", 100)
        published = [pb.MembershipChange.FromString(d.payload) for d in delivered]
        assert _summary(published) == [("ann", "entered", "segment-change")]
        assert watched.get_nowait().profile_id == "ann"
        await log.ack(MEMBERSHIP_CHANGES, "test", [d.id for d in delivered])

        # Bob buys: the event is applied by the profile service, which publishes a change.
        clock.now = START + DAY
        async with engine.begin() as conn:
            await conn.execute(
                t.events.insert().values(**_event_row("bob-new", "bob", START + DAY))
            )
        await log.append(
            PROFILE_CHANGES,
            [
                _change(
                    profile_pb.PROFILE_CHANGE_TYPE_EVENT_APPLIED,
                    "bob",
                    event_name="Order Completed",
                ),
                _change(
                    profile_pb.PROFILE_CHANGE_TYPE_EVENT_APPLIED, "cat", event_name="Page Viewed"
                ),
            ],
        )
        assert await worker.consume_once() == 2
        delivered = await log.claim(MEMBERSHIP_CHANGES, "test", "t", 100)
        assert _summary([pb.MembershipChange.FromString(d.payload) for d in delivered]) == [
            ("bob", "entered", "profile-change")
        ]
        await log.ack(MEMBERSHIP_CHANGES, "test", [d.id for d in delivered])

        # Ann unsubscribes from the newsletter: a trait change.
        async with engine.begin() as conn:
            await conn.execute(
                update(t.traits)
                .where(t.traits.c.profile_id == "ann", t.traits.c.name == "newsletter")
                .values(bool_value=False)
            )
        await log.append(
            PROFILE_CHANGES,
            [
                _change(profile_pb.PROFILE_CHANGE_TYPE_TRAITS_CHANGED, "ann", trait_names=["city"]),
                _change(
                    profile_pb.PROFILE_CHANGE_TYPE_TRAITS_CHANGED, "ann", trait_names=["newsletter"]
                ),
            ],
        )
        await worker.consume_once()
        delivered = await log.claim(MEMBERSHIP_CHANGES, "test", "t", 100)
        assert _summary([pb.MembershipChange.FromString(d.payload) for d in delivered]) == [
            ("ann", "exited", "profile-change")
        ]
        await log.ack(MEMBERSHIP_CHANGES, "test", [d.id for d in delivered])

        # Exactly the pairs whose membership time alone can change are scheduled: bob's
        # purchase leaves the window 30 days after it happened. Ann's purchase leaves it too,
        # but without the newsletter she stays out whatever the time, so she waits for her
        # next change instead.
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(segment_memberships.c.profile_id, segment_memberships.c.next_check_time)
                    .where(segment_memberships.c.next_check_time.is_not(None))
                    .order_by(segment_memberships.c.profile_id)
                )
            ).all()
        assert [(r[0], r[1]) for r in rows] == [("bob", START + 31 * DAY)]

        # Time passes with no event: nothing before the edge ...
        clock.now = START + 31 * DAY - timedelta(seconds=1)
        assert await worker.run_due() == []
        # ... and bob exits at the edge.
        clock.now = START + 31 * DAY
        changes = await worker.run_due()
        assert _summary(changes) == [("bob", "exited", "window-edge")]
        async with engine.connect() as conn:
            left = (await conn.execute(select(segment_memberships))).all()
        assert left == []
        await log.close()
    finally:
        await engine.dispose()


async def test_merged_away_and_erased_profiles_exit(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    clock = Clock()
    try:
        for component in ("eventlog", "profile", "segment"):
            await upgrade(engine, component)
        await insert_profiles(
            engine,
            [
                _person(pid, [EventRecord("Order Completed", "track", START - DAY)])
                for pid in ("ann", "bob")
            ],
        )
        log = SqlEventLog(engine)
        store = SqlSegmentStore(engine)
        domain = SegmentDomain(store, engine, clock=clock)
        worker = MembershipWorker(
            engine, store, log, MembershipHub(), clock=clock, refresh_seconds=0.0
        )
        await log.ensure_group(PROFILE_CHANGES, "segment")
        await domain.create(
            segment_id="buyers", name="", description="", definition=None, text=TEXT
        )
        await worker.refresh(force=True)
        async with engine.begin() as conn:
            await conn.execute(
                update(t.profiles).where(t.profiles.c.id == "bob").values(merged_into="ann")
            )
        changes = await worker.handle([ProfileNotice("ann", "merged", merged_ids=("bob",))])
        assert _summary(changes) == [("bob", "exited", "profile-change")]
        await log.append(PROFILE_CHANGES, [_change(profile_pb.PROFILE_CHANGE_TYPE_ERASED, "ann")])
        await worker.consume_once()
        async with engine.connect() as conn:
            assert (await conn.execute(select(segment_memberships))).all() == []
        await log.close()
    finally:
        await engine.dispose()


async def _drain(worker: MembershipWorker, log: SqlEventLog) -> None:
    """Run the worker's production loop until every profile change is acknowledged."""
    task = asyncio.create_task(worker.consume_forever(block_seconds=0.05))
    try:
        for _ in range(1200):  # a stuck worker fails the test instead of hanging it
            if not await log.pending(PROFILE_CHANGES, "segment"):
                break
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("profile changes left unacknowledged")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_concurrent_lanes_emit_each_change_once_and_in_order(pg_url: str) -> None:
    """Batches split into lanes handled at once on PostgreSQL, the next batch claimed while one
    is handled and acknowledgements in flight: every profile enters once, then exits once."""
    engine = create_engine(pg_url)
    clock = Clock()
    people = [f"p{index:04d}" for index in range(900)]
    try:
        for component in ("eventlog", "profile", "segment"):
            await upgrade(engine, component)
        await insert_profiles(engine, [_person(pid, []) for pid in people])
        log = SqlEventLog(engine)
        await log.ensure_group(MEMBERSHIP_CHANGES, "test")
        await log.ensure_group(PROFILE_CHANGES, "segment")
        store = SqlSegmentStore(engine)
        domain = SegmentDomain(store, engine, clock=clock)
        await domain.create(
            segment_id="buyers", name="Buyers", description="", definition=None, text=TEXT
        )
        worker = MembershipWorker(
            engine, store, log, MembershipHub(), clock=clock, batch_size=700, lanes=3
        )
        await worker.refresh(force=True)

        # Everyone buys; each profile's purchase comes with a page view in another batch.
        async with engine.begin() as conn:
            await conn.execute(
                t.events.insert(),
                [_event_row(f"{pid}-buy", pid, START - DAY) for pid in people],
            )
        applied = profile_pb.PROFILE_CHANGE_TYPE_EVENT_APPLIED
        await log.append(
            PROFILE_CHANGES,
            [_change(applied, pid, event_name="Order Completed") for pid in people]
            + [_change(applied, pid, event_name="Page Viewed") for pid in reversed(people)],
        )
        await _drain(worker, log)

        # Then everyone leaves the newsletter, twice over.
        async with engine.begin() as conn:
            await conn.execute(update(t.traits).values(bool_value=False))
        changed = profile_pb.PROFILE_CHANGE_TYPE_TRAITS_CHANGED
        await log.append(
            PROFILE_CHANGES,
            [_change(changed, pid, trait_names=["newsletter"]) for pid in people * 2],
        )
        await _drain(worker, log)

        delivered = await log.claim(MEMBERSHIP_CHANGES, "test", "t", 10_000)
        seen: dict[str, list[str]] = {}
        for change in (pb.MembershipChange.FromString(d.payload) for d in delivered):
            seen.setdefault(change.profile_id, []).append(
                "entered" if change.kind == pb.MEMBERSHIP_CHANGE_KIND_ENTERED else "exited"
            )
        assert seen == {pid: ["entered", "exited"] for pid in people}
        async with engine.connect() as conn:
            assert (await conn.execute(select(segment_memberships))).all() == []
        await log.close()
    finally:
        await engine.dispose()


async def test_profiles_needing_different_events_are_read_and_judged_alike(pg_url: str) -> None:
    """Many segments over different events: each profile's events are read only for the
    segments its change concerns and whose trait gate holds, in a few grouped reads; the
    entered changes are exactly what evaluating each full profile gives."""
    engine = create_engine(pg_url)
    clock = Clock()
    names = ["A", "B", "C", "D"]
    texts = {
        "a": 'trait(newsletter) = true and performed("A").within(30d)',
        "b": 'trait(newsletter) = true and performed("B").within(30d)',
        "c": 'trait(newsletter) = true and performed("C").count() >= 2',
        "d": 'performed("D").within(7d) or trait(newsletter) = false',
    }
    people: list[ProfileData] = []
    for index in range(48):
        events = [
            EventRecord(name, "track", START - (index % 9 + 1) * 2 * DAY - offset * DAY)
            for bit, name in enumerate(names)
            if index & (1 << bit)
            for offset in range(1 + index % 2)
        ]
        person = _person(f"q{index:02d}", events)
        if index % 5 == 0:
            person.traits["newsletter"] = TraitValue("boolean", False)
        people.append(person)
    try:
        for component in ("eventlog", "profile", "segment"):
            await upgrade(engine, component)
        await insert_profiles(engine, [replace(p, events=[]) for p in people])
        log = SqlEventLog(engine)
        await log.ensure_group(MEMBERSHIP_CHANGES, "test")
        await log.ensure_group(PROFILE_CHANGES, "segment")
        store = SqlSegmentStore(engine)
        domain = SegmentDomain(store, engine, clock=clock)
        for segment_id, text in texts.items():
            await domain.create(
                segment_id=segment_id, name="", description="", definition=None, text=text
            )
        worker = MembershipWorker(engine, store, log, MembershipHub(), clock=clock, lanes=1)
        await worker.refresh(force=True)
        before = await log.claim(MEMBERSHIP_CHANGES, "test", "t", 1000)
        await log.ack(MEMBERSHIP_CHANGES, "test", [d.id for d in before])

        async with engine.begin() as conn:
            await conn.execute(
                t.events.insert(),
                [
                    _event_row(
                        f"{person.profile_id}-{number}",
                        person.profile_id,
                        event.time,
                        event.name,
                        event.type,
                    )
                    for person in people
                    for number, event in enumerate(person.events)
                ],
            )
        applied = profile_pb.PROFILE_CHANGE_TYPE_EVENT_APPLIED
        await log.append(
            PROFILE_CHANGES,
            [
                _change(applied, person.profile_id, event_name=name)
                for person in people
                for name in sorted({event.name for event in person.events})
            ],
        )
        while await worker.consume_once():
            pass

        delivered = await log.claim(MEMBERSHIP_CHANGES, "test", "t", 1000)
        entered = {
            (change.segment_id, change.profile_id)
            for change in (pb.MembershipChange.FromString(d.payload) for d in delivered)
            if change.kind == pb.MEMBERSHIP_CHANGE_KIND_ENTERED
        }
        definitions = {sid: parse(text) for sid, text in texts.items()}
        expected = {
            (sid, person.profile_id)
            for person in people
            for sid, tree in definitions.items()
            if m.dependencies(tree).event_names & {event.name for event in person.events}
            and evaluate(tree, person, START)
            and not evaluate(tree, replace(person, events=[]), START)
        }
        assert expected  # the population exercises the segments
        assert entered == expected
        await log.close()
    finally:
        await engine.dispose()


class _AckLostOnce(SqlEventLog):
    """An event log whose first acknowledgement of a profile change fails."""

    lost = False

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        if topic == PROFILE_CHANGES and not self.lost:
            self.lost = True
            raise ConnectionError("acknowledgement lost")
        await super().ack(topic, group, ids)


async def test_a_lost_acknowledgement_delivers_again_without_a_second_change(
    pg_url: str,
) -> None:
    engine = create_engine(pg_url)
    clock = Clock()
    try:
        for component in ("eventlog", "profile", "segment"):
            await upgrade(engine, component)
        await insert_profiles(engine, [_person("ann", [])])
        log = _AckLostOnce(engine)
        await log.ensure_group(MEMBERSHIP_CHANGES, "test")
        await log.ensure_group(PROFILE_CHANGES, "segment")
        await log.ensure_group(dead_letter_topic(PROFILE_CHANGES), "test")
        store = SqlSegmentStore(engine)
        domain = SegmentDomain(store, engine, clock=clock)
        await domain.create(
            segment_id="buyers", name="Buyers", description="", definition=None, text=TEXT
        )
        worker = MembershipWorker(
            engine, store, log, MembershipHub(), clock=clock, lease_seconds=0.3
        )
        await worker.refresh(force=True)
        async with engine.begin() as conn:
            await conn.execute(t.events.insert().values(**_event_row("ann-buy", "ann", START)))
        applied = profile_pb.PROFILE_CHANGE_TYPE_EVENT_APPLIED
        await log.append(PROFILE_CHANGES, [_change(applied, "ann", event_name="Order Completed")])
        await _drain(worker, log)
        assert log.lost
        # Handled again and acknowledged, not given up on after repeated failures.
        assert await log.claim(dead_letter_topic(PROFILE_CHANGES), "test", "t", 100) == []
        delivered = await log.claim(MEMBERSHIP_CHANGES, "test", "t", 100)
        assert _summary([pb.MembershipChange.FromString(d.payload) for d in delivered]) == [
            ("ann", "entered", "profile-change")
        ]
        await log.close()
    finally:
        await engine.dispose()
