"""Real-time membership: entered/exited from a stream of profile changes and from time passing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from tests.segment.readmodel import insert_profiles
from upm.profile.v1 import profile_service_pb2 as profile_pb
from upm.segment.v1 import segment_service_pb2 as pb
from upm_common.db import create_engine
from upm_common.eventlog import MEMBERSHIP_CHANGES, PROFILE_CHANGES, LogRecord
from upm_common.eventlog.sql import SqlEventLog
from upm_common.migrations import upgrade
from upm_profile.store import tables as t
from upm_segment.evaluate import EventRecord, ProfileData, TraitValue
from upm_segment.membership import MembershipHub, MembershipWorker, ProfileNotice
from upm_segment.service import SegmentDomain
from upm_segment.store.sql import SqlSegmentStore
from upm_segment.store.tables import segment_memberships

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
                t.events.insert().values(
                    id="bob-new",
                    profile_id="bob",
                    type="track",
                    name="Order Completed",
                    event_time=START + DAY,
                    received_time=START + DAY,
                    properties={},
                    context={},
                )
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

        # Exactly the pairs with a window edge are scheduled: bob's purchase leaves the window
        # 30 days after it happened.
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(segment_memberships.c.profile_id, segment_memberships.c.next_check_time)
                    .where(segment_memberships.c.next_check_time.is_not(None))
                    .order_by(segment_memberships.c.profile_id)
                )
            ).all()
        assert [(r[0], r[1]) for r in rows] == [
            ("ann", START - 2 * DAY + 30 * DAY),
            ("bob", START + 31 * DAY),
        ]

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
