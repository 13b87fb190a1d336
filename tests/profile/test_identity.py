"""Identity resolution on the store: the merge scenario, guards, unmerge, idempotency.

Runs on SQLite and PostgreSQL (the `db_url` fixture).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from tests.profile.conftest import effects, make_event, make_store
from upm.common.v1 import identity_pb2
from upm_common.errors import FailedPreconditionError
from upm_profile.effects import effects_of_event
from upm_profile.identifiers import BlockList, IdentifierKey
from upm_profile.resolution import Guards
from upm_profile.store.sql import SqlProfileStore
from upm_profile.store.tables import event_daily, identity_conflicts, profiles


def _ext(event, namespace: str, value: str):  # type: ignore[no-untyped-def]
    event.identifiers.append(
        identity_pb2.Identifier(
            type=identity_pb2.IDENTIFIER_TYPE_EXTERNAL, namespace=namespace, value=value
        )
    )
    return event


async def _live_count(store: SqlProfileStore) -> int:
    async with store.engine.connect() as conn:
        return int(
            await conn.scalar(
                select(func.count()).select_from(profiles).where(profiles.c.merged_into.is_(None))
            )
            or 0
        )


async def test_email_web_and_mobile_teams_know_one_customer(store: SqlProfileStore) -> None:
    web_form = make_event(
        "identify", anonymous_id="cookie-1", traits={"email": " Ann@Acme.ORG "}, minutes=0
    )
    mobile = make_event(
        "screen", user_id="42", name="Home", device_id="ios-token-9", minutes=1, source_id="ios"
    )
    email_click = _ext(
        make_event(
            "track",
            event="Email Link Clicked",
            properties={"channel": "email", "campaign_id": "spring"},
            minutes=2,
            source_id="esp",
        ),
        "esp_id",
        "esp-7",
    )
    email_click.context.traits.update({"email": "ann@acme.org"})
    await store.apply(effects(web_form, mobile, email_click))
    assert await _live_count(store) == 2

    login = make_event("identify", user_id="42", anonymous_id="cookie-1", minutes=3)
    result = await store.apply(effects(login))
    assert (result.applied, result.merges) == (1, 1)
    assert await _live_count(store) == 1

    pid = result.profile_ids[next(iter(result.profile_ids))]
    view = (await store.load_profiles([pid]))[pid]
    assert {str(k) for k in view.identifiers} == {
        "anonymous_id:cookie-1",
        "email:ann@acme.org",
        "user_id:42",
        "device_id:ios-token-9",
        "external:esp_id:esp-7",
    }
    assert len(view.merged_ids) == 1
    assert await store.resolve(view.merged_ids[0]) == pid
    graph = await store.identity_graph(pid)
    assert [m.kind for m in graph.merges] == ["merge"]
    assert graph.merges[0].event_id == "web:" + login.message_id
    assert "cookie-1" in graph.merges[0].reason
    assert {e.rule for e in graph.edges} >= {"identify", "same_event"}
    names = {c.name for c in view.counts}
    assert {"Home", "Email Link Clicked"} <= names


async def test_second_user_id_is_kept_apart_and_reported(store: SqlProfileStore) -> None:
    first = await store.apply(effects(make_event("identify", user_id="u1", anonymous_id="shared")))
    second = await store.apply(
        effects(make_event("identify", user_id="u2", anonymous_id="shared", minutes=1))
    )
    p1 = next(iter(first.profile_ids.values()))
    p2 = next(iter(second.profile_ids.values()))
    assert p1 != p2
    assert (second.merges, second.conflicts) == (0, {"user_id_limit": 1})
    views = await store.load_profiles([p1, p2])
    assert IdentifierKey("anonymous_id", "shared") in views[p1].identifiers
    assert [str(k) for k in views[p2].identifiers] == ["user_id:u2"]
    graph = await store.identity_graph(p2)
    assert [(str(c.identifier), c.rule, c.other_profile_id) for c in graph.conflicts] == [
        ("anonymous_id:shared", "user_id_limit", p1)
    ]


async def test_blocked_values_never_link(store: SqlProfileStore) -> None:
    result = await store.apply(
        effects(
            make_event("identify", anonymous_id="a-1", traits={"email": "test@example.com"}),
            make_event("identify", anonymous_id="a-2", traits={"email": "test@example.com"}),
            make_event("track", user_id="undefined", event="Viewed"),
            make_event("track", user_id="null", anonymous_id="0", event="Viewed"),
        )
    )
    assert result.applied == 2
    assert result.dropped == 2
    assert await _live_count(store) == 2


async def test_identifier_cap_refuses_the_merge(db_url: str) -> None:
    store, _ = await make_store(db_url, guards=Guards(max_identifiers=3))
    try:
        await store.apply(
            effects(
                make_event("identify", anonymous_id="a1", traits={"email": "x@corp.io"}),
                make_event("identify", anonymous_id="a2", traits={"phone": "+14155552671"}),
            )
        )
        link = make_event(
            "identify", anonymous_id="a3", traits={"email": "x@corp.io", "phone": "+14155552671"}
        )
        await store.apply(effects(link))
        assert await _live_count(store) == 2
        async with store.engine.connect() as conn:
            rules = (await conn.execute(select(identity_conflicts.c.rule))).scalars().all()
        assert "identifier_cap" in rules
    finally:
        await store.engine.dispose()


async def test_unmerge_restores_the_previous_profiles(store: SqlProfileStore) -> None:
    ann = await store.apply(
        effects(
            make_event(
                "identify", anonymous_id="c-ann", traits={"email": "ann@corp.io", "plan": "pro"}
            ),
            make_event(
                "track",
                anonymous_id="c-ann",
                event="Order Completed",
                minutes=1,
                properties={"order_id": "o1", "revenue": 10},
            ),
        )
    )
    bob = await store.apply(
        effects(
            make_event(
                "identify",
                anonymous_id="c-bob",
                traits={"email": "bob@corp.io", "plan": "free"},
                minutes=2,
            ),
            make_event("page", anonymous_id="c-bob", name="Pricing", minutes=3),
        )
    )
    ann_id = next(iter(ann.profile_ids.values()))
    bob_id = next(iter(bob.profile_ids.values()))
    kiosk_ann = make_event("page", anonymous_id="kiosk", name="Home", minutes=4)
    kiosk_ann.context.traits.update({"email": "ann@corp.io"})
    kiosk_bob = make_event("page", anonymous_id="kiosk", name="Home", minutes=5)
    kiosk_bob.context.traits.update({"email": "bob@corp.io"})
    await store.apply(effects(kiosk_ann, kiosk_bob))
    assert await _live_count(store) == 1

    owner, split = await store.unmerge(
        IdentifierKey("anonymous_id", "kiosk"), reason="shared kiosk"
    )
    assert await _live_count(store) == 3
    ann_owner = await store.owner_of(IdentifierKey("email", "ann@corp.io"))
    bob_owner = await store.owner_of(IdentifierKey("email", "bob@corp.io"))
    kiosk_owner = await store.owner_of(IdentifierKey("anonymous_id", "kiosk"))
    assert {ann_owner, bob_owner} == {ann_id, bob_id}
    assert kiosk_owner not in {ann_id, bob_id}
    assert owner in {ann_id, bob_id}
    assert set(split) == {bob_owner if owner == ann_owner else ann_owner, kiosk_owner}
    views = await store.load_profiles([ann_id, bob_id, kiosk_owner or ""])
    assert {t.name: t.value for t in views[ann_id].traits}["plan"] == "pro"
    assert {t.name: t.value for t in views[bob_id].traits}["plan"] == "free"
    assert views[ann_id].purchase_count == 1
    assert views[ann_id].total_revenue == 10
    assert views[bob_id].purchase_count == 0
    assert {c.name: c.count for c in views[bob_id].counts} == {"Pricing": 1, "Home": 1}
    assert {c.name: c.count for c in views[ann_id].counts} == {"Order Completed": 1, "Home": 1}
    assert [str(k) for k in views[kiosk_owner or ""].identifiers] == ["anonymous_id:kiosk"]

    # The unmerged identifier does not silently re-link the same people.
    again = make_event("page", anonymous_id="kiosk", name="Home", minutes=6)
    again.context.traits.update({"email": "ann@corp.io"})
    await store.apply(effects(again))
    assert await store.owner_of(IdentifierKey("anonymous_id", "kiosk")) == kiosk_owner
    graph = await store.identity_graph(ann_id)
    assert any(c.rule == "unmerged" for c in graph.conflicts)


async def test_operator_merge_and_guard(store: SqlProfileStore) -> None:
    a = await store.apply(effects(make_event("identify", user_id="u-a")))
    b = await store.apply(effects(make_event("identify", anonymous_id="anon-b")))
    c = await store.apply(effects(make_event("identify", user_id="u-c")))
    pa, pb_, pc = (next(iter(r.profile_ids.values())) for r in (a, b, c))
    assert await store.merge_profiles(pa, pb_, reason="same person", override_guards=False) == pa
    assert await store.resolve(pb_) == pa
    with pytest.raises(FailedPreconditionError, match="user_id"):
        await store.merge_profiles(pa, pc, reason="x", override_guards=False)
    assert await store.merge_profiles(pa, pc, reason="x", override_guards=True) == pa
    assert await _live_count(store) == 1


async def test_events_apply_once(store: SqlProfileStore) -> None:
    event = make_event("track", anonymous_id="a", event="Clicked")
    first = await store.apply(effects(event, event))
    second = await store.apply(effects(event))
    assert (first.applied, first.duplicates) == (1, 1)
    assert (second.applied, second.duplicates) == (0, 1)
    pid = next(iter(first.profile_ids.values()))
    view = (await store.load_profiles([pid]))[pid]
    assert [(c.name, c.count) for c in view.counts] == [("Clicked", 1)]


async def test_a_profile_merged_away_twice_still_leads_to_the_live_one(
    store: SqlProfileStore,
) -> None:
    async def profile_of(event_kind: str, **fields: Any) -> str:
        result = await store.apply(effects(make_event(event_kind, **fields)))
        return next(iter(result.profile_ids.values()))

    first = await profile_of("page", anonymous_id="laptop", name="Home")
    second = await profile_of("page", anonymous_id="phone", name="Home", minutes=1)
    await profile_of("identify", anonymous_id="laptop", traits={"email": "kim@acme.org"}, minutes=2)
    # The phone's profile and the laptop's share the email now: one of them is merged away.
    await profile_of("identify", anonymous_id="phone", traits={"email": "kim@acme.org"}, minutes=3)
    known = await profile_of("identify", user_id="kim-1", anonymous_id="tablet", minutes=4)
    # The user's profile wins the second merge, over the winner of the first.
    final = await profile_of(
        "identify", user_id="kim-1", traits={"email": "kim@acme.org"}, minutes=5
    )
    assert final == known
    assert await _live_count(store) == 1
    assert await store.resolve_many([first, second, known]) == {
        first: known,
        second: known,
        known: known,
    }
    view = (await store.load_profiles([known]))[known]
    assert sorted(view.merged_ids) == sorted([first, second])
    assert [(c.name, c.count) for c in view.counts] == [("Home", 2)]


async def test_three_profiles_merged_by_one_event_add_up_their_counts(
    store: SqlProfileStore,
) -> None:
    await store.apply(
        effects(
            make_event("page", anonymous_id="laptop", name="Home"),
            make_event("screen", device_id="phone-1", name="Home", minutes=1),
        )
    )
    shop = make_event(
        "track", event="Order Completed", properties={"order_id": "o1", "revenue": 5}, minutes=2
    )
    shop.context.traits.update({"email": "kim@acme.org"})
    home = make_event("page", name="Home", minutes=3)
    home.context.traits.update({"email": "kim@acme.org"})
    await store.apply(effects(shop, home))
    assert await _live_count(store) == 3
    # One event carries the three people's identifiers: both others merge into one profile.
    link = make_event("identify", anonymous_id="laptop", device_id="phone-1", minutes=4)
    link.traits.update({"email": "kim@acme.org"})
    result = await store.apply(effects(link))
    assert (result.merges, await _live_count(store)) == (2, 1)
    pid = next(iter(result.profile_ids.values()))
    view = (await store.load_profiles([pid]))[pid]
    assert sorted((c.name, c.count) for c in view.counts) == [("Home", 3), ("Order Completed", 1)]
    assert view.total_revenue == 5
    async with store.engine.connect() as conn:
        daily = (
            await conn.execute(
                select(event_daily.c.name, event_daily.c.count, event_daily.c.revenue).where(
                    event_daily.c.profile_id == pid
                )
            )
        ).all()
    assert sorted(tuple(row) for row in daily) == [("Home", 3, 0.0), ("Order Completed", 1, 5.0)]


async def test_alias_links_previous_id(store: SqlProfileStore) -> None:
    await store.apply(effects(make_event("page", anonymous_id="anon-9", name="Home")))
    await store.apply(effects(make_event("alias", user_id="u-9", previous_id="anon-9", minutes=1)))
    assert await store.owner_of(IdentifierKey("user_id", "u-9")) == await store.owner_of(
        IdentifierKey("anonymous_id", "anon-9")
    )
    assert await _live_count(store) == 1


def test_phone_and_email_are_normalised() -> None:
    event = make_event(
        "identify",
        anonymous_id="a",
        traits={"email": "  MiXed@Case.COM", "phone": "+44 20 7946 0958"},
    )
    keys = {str(k) for k in effects_of_event(event, BlockList()).identifiers}
    assert keys == {"anonymous_id:a", "email:mixed@case.com", "phone:+442079460958"}
