"""The change feed of applied events: one EVENT_APPLIED per profile, event name and type in a
batch, carrying the newest such event (what segment membership needs, not one per event)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from tests.profile.conftest import BASE_TIME, effects, make_event
from upm.common.v1 import event_pb2
from upm.profile.v1 import profile_service_pb2 as pb
from upm_profile.store.sql import SqlProfileStore


async def test_one_event_applied_change_per_profile_and_event_name_in_a_batch(
    store: SqlProfileStore,
) -> None:
    published: list[pb.ProfileChange] = []

    def on_commit(changes: Sequence[pb.ProfileChange]) -> None:
        published.extend(changes)

    store.listeners.append(on_commit)
    views = [
        make_event("track", user_id="feed-1", event="Product Viewed", minutes=minutes)
        for minutes in (3, 1, 2)
    ]
    result = await store.apply(
        effects(
            *views,
            make_event("track", user_id="feed-1", event="Order Completed", minutes=4),
            make_event("page", user_id="feed-1", name="Product Viewed", minutes=5),
            make_event("track", user_id="feed-2", event="Product Viewed", minutes=1),
        )
    )

    assert result.applied == 6
    applied = sorted(
        (c.profile_id, c.event_name, c.event_type, c.event_id)
        for c in published
        if c.type == pb.PROFILE_CHANGE_TYPE_EVENT_APPLIED
    )
    feed_1 = result.profile_ids[f"web:{views[0].message_id}"]
    feed_2 = next(p for p in result.profile_ids.values() if p != feed_1)
    assert len(applied) == 4
    assert (feed_1, "Product Viewed", event_pb2.EVENT_TYPE_TRACK, views[0].message_id) in applied
    assert {(p, name, kind) for p, name, kind, _ in applied} == {
        (feed_1, "Product Viewed", event_pb2.EVENT_TYPE_TRACK),
        (feed_1, "Order Completed", event_pb2.EVENT_TYPE_TRACK),
        (feed_1, "Product Viewed", event_pb2.EVENT_TYPE_PAGE),
        (feed_2, "Product Viewed", event_pb2.EVENT_TYPE_TRACK),
    }
    view = (await store.load_profiles([feed_1]))[feed_1]
    assert {(c.name, c.count) for c in view.counts} == {
        ("Product Viewed", 4),
        ("Order Completed", 1),
    }


async def test_change_records_carry_their_ids_and_times(store: SqlProfileStore) -> None:
    """A consumer drops repeated change ids and orders by change time: every record has its
    own id, the time of the apply that made it, and the time of the event it reports."""
    published: list[pb.ProfileChange] = []
    store.listeners.append(published.extend)
    before = datetime.now(UTC).replace(microsecond=0)
    await store.apply(
        effects(
            make_event("identify", user_id="times-1", traits={"plan": "pro"}, minutes=7),
            make_event("track", user_id="times-1", event="Order Completed", minutes=8),
        )
    )
    after = datetime.now(UTC)

    assert {c.type for c in published} >= {
        pb.PROFILE_CHANGE_TYPE_CREATED,
        pb.PROFILE_CHANGE_TYPE_TRAITS_CHANGED,
        pb.PROFILE_CHANGE_TYPE_EVENT_APPLIED,
    }
    assert len({c.change_id for c in published}) == len(published)
    assert all(len(c.change_id) == 32 for c in published)
    for record in published:
        assert before <= record.change_time.ToDatetime(tzinfo=UTC) <= after
    order = next(c for c in published if c.event_name == "Order Completed")
    assert order.event_type == event_pb2.EVENT_TYPE_TRACK
    assert order.event_time.ToDatetime(tzinfo=UTC) == BASE_TIME + timedelta(minutes=8)
