"""Concurrent workers on PostgreSQL: one profile per identifier, no lost merge, no double apply."""

from __future__ import annotations

import asyncio
import random

import pytest
from sqlalchemy import func, select

from tests.profile.conftest import effects, make_event, make_store, make_workers
from upm_common.eventlog import EVENTS, LogRecord
from upm_profile.store.sql import SqlProfileStore
from upm_profile.store.tables import event_counts, events, identifiers, profiles
from upm_profile.worker import GROUP, ProfileWorker

pytestmark = pytest.mark.postgres


async def _live(store: SqlProfileStore) -> int:
    async with store.engine.connect() as conn:
        return int(
            await conn.scalar(
                select(func.count()).select_from(profiles).where(profiles.c.merged_into.is_(None))
            )
            or 0
        )


async def test_two_workers_linking_the_same_identities_at_once(pg_url: str) -> None:
    stores = [(await make_store(pg_url))[0] for _ in range(2)]
    try:
        for round_ in range(15):
            a, b = f"a-{round_}", f"b-{round_}"
            await stores[0].apply(
                effects(
                    make_event("page", anonymous_id=a, name="Home"),
                    make_event("identify", anonymous_id=b, traits={"email": f"p{round_}@corp.io"}),
                )
            )
            link_1 = make_event("page", anonymous_id=a, name="Cart")
            link_1.context.traits.update({"email": f"p{round_}@corp.io"})
            link_2 = make_event("identify", anonymous_id=a, traits={"email": f"p{round_}@corp.io"})
            await asyncio.gather(stores[0].apply(effects(link_1)), stores[1].apply(effects(link_2)))
            owner_a = await stores[0].owner_of(effects(link_1)[0].identifiers[0])
            owner_b = await stores[0].owner_of(effects(link_2)[0].identifiers[1])
            assert owner_a == owner_b
            view = (await stores[0].load_profiles([owner_a or ""]))[owner_a or ""]
            assert {c.name: c.count for c in view.counts} == {"Home": 1, "Cart": 1}
        assert await _live(stores[0]) == 15
    finally:
        for s in stores:
            await s.engine.dispose()


async def test_concurrent_creates_make_one_profile_per_identifier(pg_url: str) -> None:
    stores = [(await make_store(pg_url))[0] for _ in range(4)]
    try:
        batches = [
            effects(
                *(make_event("track", anonymous_id=f"new-{i}", event="Seen") for i in range(30))
            )
            for _ in range(4)
        ]
        results = await asyncio.gather(*(s.apply(b) for s, b in zip(stores, batches, strict=True)))
        assert sum(r.applied for r in results) == 120
        assert await _live(stores[0]) == 30
        async with stores[0].engine.connect() as conn:
            seen = await conn.scalar(select(func.sum(event_counts.c.count)))
        assert seen == 120
    finally:
        for s in stores:
            await s.engine.dispose()


async def test_workers_on_the_event_log_converge(pg_url: str) -> None:
    """Four workers consume one log with redelivered duplicates; every link is kept."""
    store, log = await make_store(pg_url)
    await log.ensure_group(EVENTS, GROUP)
    rng = random.Random(7)
    people = 40
    generated = []
    for person in range(people):
        anon = [f"anon-{person}-{k}" for k in range(3)]
        generated += [make_event("page", anonymous_id=x, name="Home") for x in anon]
        generated += [
            make_event("identify", anonymous_id=x, traits={"email": f"person{person}@corp.io"})
            for x in anon
        ]
        generated.append(make_event("identify", user_id=f"user-{person}", anonymous_id=anon[1]))
    rng.shuffle(generated)
    payloads = [
        LogRecord(key=e.anonymous_id or e.user_id, payload=e.SerializeToString()) for e in generated
    ]
    await log.append(EVENTS, payloads + payloads[:50])
    workers = await make_workers(pg_url, log, 4, batch_size=25)

    async def drain(worker: ProfileWorker) -> None:
        while await worker.run_once():
            pass

    try:
        await asyncio.gather(*(drain(w) for w in workers))
        assert await log.pending(EVENTS, GROUP) == 0
        assert await _live(store) == people
        async with store.engine.connect() as conn:
            per_profile = (
                await conn.execute(
                    select(identifiers.c.profile_id, func.count()).group_by(
                        identifiers.c.profile_id
                    )
                )
            ).all()
            stored_events = await conn.scalar(select(func.count()).select_from(events))
        assert sorted(c for _, c in per_profile) == [5] * people
        assert stored_events == len(generated)
    finally:
        await store.engine.dispose()
        for w in workers:
            await w.store.engine.dispose()


async def _applied_ids(store: SqlProfileStore) -> set[str]:
    async with store.engine.connect() as conn:
        return {row[0] for row in await conn.execute(select(events.c.id))}


async def test_a_held_identifier_holds_back_only_its_own_events(pg_url: str) -> None:
    """While another transaction holds one person's identifier, a batch commits its other
    events at once and applies the held person's event once the holder commits."""
    store, _ = await make_store(pg_url)
    holder_engine = (await make_store(pg_url))[0].engine
    try:
        batch = effects(
            *(make_event("track", user_id=f"free-{i}", event="Seen") for i in range(5)),
            make_event("track", user_id="held", event="Seen"),
        )
        held_key = batch[-1].identifiers[0]
        async with holder_engine.connect() as holder:
            await holder.exec_driver_sql(f"SELECT pg_advisory_xact_lock({held_key.lock_id()})")
            applying = asyncio.create_task(store.apply(batch))
            free_ids = {e.id for e in batch[:-1]}
            for _ in range(200):
                if free_ids <= await _applied_ids(store):
                    break
                await asyncio.sleep(0.02)
            assert free_ids <= await _applied_ids(store), "the free events waited for the lock"
            assert batch[-1].id not in await _applied_ids(store)
            assert not applying.done()
            await holder.rollback()
        result = await asyncio.wait_for(applying, 10)
        assert result.applied == 6
        assert set(result.profile_ids) == {e.id for e in batch}
        assert {e.id for e in batch} <= await _applied_ids(store)
        assert await _live(store) == 6
    finally:
        await store.engine.dispose()
        await holder_engine.dispose()


async def test_a_held_profile_holds_back_only_the_events_that_reach_it(pg_url: str) -> None:
    """An event whose identifier is free but whose profile another transaction has locked
    waits for that transaction; the batch's other events do not."""
    store, _ = await make_store(pg_url)
    holder_engine = (await make_store(pg_url))[0].engine
    try:
        await store.apply(effects(make_event("track", user_id="known", event="Seen")))
        known = await store.owner_of(
            effects(make_event("track", user_id="known", event="Seen"))[0].identifiers[0]
        )
        batch = effects(
            make_event("track", user_id="known", event="Again"),
            make_event("track", user_id="other", event="Seen"),
        )
        async with holder_engine.connect() as holder:
            await holder.exec_driver_sql(
                f"SELECT id FROM profile_profiles WHERE id = '{known}' FOR UPDATE"
            )
            applying = asyncio.create_task(store.apply(batch))
            for _ in range(200):
                if batch[1].id in await _applied_ids(store):
                    break
                await asyncio.sleep(0.02)
            assert batch[1].id in await _applied_ids(store)
            assert batch[0].id not in await _applied_ids(store)
            await holder.rollback()
        result = await asyncio.wait_for(applying, 10)
        assert result.applied == 2
        assert result.profile_ids[batch[0].id] == known
        view = (await store.load_profiles([known or ""]))[known or ""]
        assert {c.name: c.count for c in view.counts} == {"Seen": 1, "Again": 1}
    finally:
        await store.engine.dispose()
        await holder_engine.dispose()
