"""Traits with provenance and operations, consent from traits, events and calls, aggregates."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select

from tests.profile.conftest import BASE_TIME, effects, make_event
from upm_profile.convert import purchase_to_proto
from upm_profile.effects import ConsentUpdate, consent_call_effects
from upm_profile.identifiers import IdentifierKey
from upm_profile.store.base import EventFilter
from upm_profile.store.sql import SqlProfileStore
from upm_profile.store.tables import event_daily, traits
from upm_profile.traits import TraitOp, fold, typed_columns


async def _profile(store: SqlProfileStore, key: IdentifierKey):  # type: ignore[no-untyped-def]
    pid = await store.owner_of(key)
    assert pid is not None
    return (await store.load_profiles([pid]))[pid]


async def test_trait_operations_and_provenance(store: SqlProfileStore) -> None:
    user = IdentifierKey("user_id", "t1")
    await store.apply(
        effects(
            make_event(
                "identify",
                user_id="t1",
                traits={
                    "name": "Ann",
                    "$set_once": {"first_seen": "web"},
                    "$increment": {"logins": 1},
                    "$add_to_set": {"tags": ["a", "b"]},
                },
                message_id="i1",
            ),
            make_event(
                "identify",
                user_id="t1",
                minutes=5,
                traits={
                    "$set_once": {"first_seen": "ios"},
                    "$increment": {"logins": 2},
                    "$add_to_set": {"tags": ["b", "c"]},
                    "$unset": ["name"],
                    "birthday": "1990-05-01T00:00:00Z",
                    "vip": True,
                },
                message_id="i2",
                source_id="crm",
            ),
        )
    )
    view = await _profile(store, user)
    values = {t.name: t.value for t in view.traits}
    assert values == {
        "first_seen": "web",
        "logins": 3,
        "tags": ["a", "b", "c"],
        "birthday": "1990-05-01T00:00:00Z",
        "vip": True,
    }
    vip = next(t for t in view.traits if t.name == "vip")
    assert (vip.source, vip.event_id, vip.updated_time) == (
        "crm",
        "crm:i2",
        BASE_TIME + timedelta(minutes=5),
    )
    async with store.engine.connect() as conn:
        typed = {
            r.name: (r.value_type, r.num_value, r.text_value, r.bool_value, r.time_value)
            for r in await conn.execute(select(traits))
        }
    assert typed["logins"] == ("number", 3.0, None, None, None)
    assert typed["vip"] == ("boolean", None, None, True, None)
    assert typed["birthday"][0] == "timestamp"
    assert typed["birthday"][4] == datetime(1990, 5, 1, tzinfo=UTC)

    # An older event arriving late does not overwrite a newer value, and cannot resurrect the
    # trait unset by a newer event.
    await store.apply(
        effects(
            make_event(
                "identify",
                user_id="t1",
                minutes=1,
                traits={"name": "Old", "vip": False},
                message_id="i0",
            )
        )
    )
    values = {t.name: t.value for t in (await _profile(store, user)).traits}
    assert "name" not in values
    assert values["vip"] is True


def test_fold_is_order_independent() -> None:
    t0 = BASE_TIME
    ops = [
        TraitOp("n", "set", 5, t0, "e1", "s"),
        TraitOp("n", "increment", 2, t0 + timedelta(seconds=1), "e2", "s"),
        TraitOp("n", "set_once", 9, t0 - timedelta(seconds=1), "e0", "s"),
    ]
    states = {fold(order).value for order in (ops, ops[::-1], ops[1:] + ops[:1])}  # type: ignore[union-attr]
    assert states == {7}
    assert typed_columns("plain")["value_type"] == "string"
    assert typed_columns(None)["value_type"] == "null"


async def test_consent_from_traits_events_and_calls(store: SqlProfileStore) -> None:
    user = IdentifierKey("user_id", "c1")
    await store.apply(
        effects(
            make_event(
                "identify",
                user_id="c1",
                traits={"email_opt_in": True, "consent": {"push": {"transactional": "subscribed"}}},
            ),
            make_event(
                "track", user_id="c1", event="SMS Received", properties={"body": "START"}, minutes=1
            ),
            make_event(
                "track",
                user_id="c1",
                event="Unsubscribed",
                properties={"channel": "email"},
                minutes=2,
            ),
        )
    )
    consents = {(c.channel, c.purpose): c.status for c in (await _profile(store, user)).consents}
    assert consents == {
        ("email", "marketing"): "unsubscribed",
        ("sms", "marketing"): "subscribed",
        ("push", "transactional"): "subscribed",
    }
    await store.apply(
        effects(
            make_event(
                "track",
                user_id="c1",
                event="SMS Received",
                properties={"body": " stop "},
                minutes=3,
            )
        )
    )
    call = consent_call_effects(
        "consent-1",
        identifier=user,
        profile_id=None,
        update=ConsentUpdate(
            "email",
            "marketing",
            "subscribed",
            BASE_TIME + timedelta(minutes=10),
            "preference-center",
        ),
    )
    stale = consent_call_effects(
        "consent-2",
        identifier=user,
        profile_id=None,
        update=ConsentUpdate("email", "marketing", "unsubscribed", BASE_TIME, "old-import"),
    )
    await store.apply([call, stale])
    view = await _profile(store, user)
    consents = {(c.channel, c.purpose): (c.status, c.source) for c in view.consents}
    assert consents[("email", "marketing")] == ("subscribed", "preference-center")
    assert consents[("sms", "marketing")][0] == "unsubscribed"


async def test_purchases_and_aggregates(store: SqlProfileStore) -> None:
    user = IdentifierKey("user_id", "buyer")
    await store.apply(
        effects(
            *(
                make_event(
                    "track",
                    user_id="buyer",
                    event="Order Completed",
                    properties={"order_id": f"o{i}", "revenue": 10.0 * (i + 1), "currency": "EUR"},
                    minutes=60 * 24 * i,
                )
                for i in range(3)
            ),
            make_event("page", user_id="buyer", name="Home", minutes=30),
            # Revenue that is not a number counts as none, in the totals and the purchase list.
            make_event(
                "track",
                user_id="buyer",
                event="Order Completed",
                properties={"order_id": "o-flag", "revenue": True, "currency": "EUR"},
                minutes=45,
            ),
        )
    )
    view = await _profile(store, user)
    assert view.purchase_count == 4
    assert view.total_revenue == 60.0
    listed = await store.list_events(view.id, EventFilter(names=("Order Completed",)), 10, None)
    by_order = {p.order_id: p.revenue for p in (purchase_to_proto(e) for e in listed[0])}
    assert by_order == {"o0": 10.0, "o1": 20.0, "o2": 30.0, "o-flag": 0.0}
    counts = {c.name: (c.count, c.first_time, c.last_time) for c in view.counts}
    assert counts["Order Completed"] == (4, BASE_TIME, BASE_TIME + timedelta(days=2))
    async with store.engine.connect() as conn:
        daily = sorted(
            (r.day, r.name, r._mapping["count"], r.revenue)
            for r in await conn.execute(
                select(event_daily).where(event_daily.c.profile_id == view.id)
            )
        )
    assert daily == [
        (date(2026, 3, 1), "Home", 1, 0.0),
        (date(2026, 3, 1), "Order Completed", 2, 10.0),
        (date(2026, 3, 2), "Order Completed", 1, 20.0),
        (date(2026, 3, 3), "Order Completed", 1, 30.0),
    ]
