"""The worker's consuming loop: a batch is acknowledged while the next one is applied."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from tests.profile.conftest import make_event, make_store, make_workers
from upm_common.eventlog import EVENTS, LogRecord
from upm_common.eventlog.sql import SqlEventLog
from upm_profile.identifiers import BlockList, IdentifierKey
from upm_profile.store.sql import SqlProfileStore
from upm_profile.store.tables import event_counts, events, profiles
from upm_profile.worker import GROUP, ProfileWorker


@pytest.mark.postgres
async def test_workers_consuming_a_streaming_log_apply_each_event_once(pg_url: str) -> None:
    """Three consuming loops drain a log that is appended to while they run, with redelivered
    duplicates: every event is applied once, each person ends as one profile, nothing waits."""
    store, log = await make_store(pg_url)
    await log.ensure_group(EVENTS, GROUP)
    people = 30
    generated = []
    for person in range(people):
        anon = f"anon-{person}"
        generated += [make_event("page", anonymous_id=anon, name="Home") for _ in range(3)]
        generated.append(make_event("identify", user_id=f"user-{person}", anonymous_id=anon))
        generated += [make_event("track", user_id=f"user-{person}", event="Seen") for _ in range(2)]
    records = [
        LogRecord(key=e.anonymous_id or e.user_id, payload=e.SerializeToString()) for e in generated
    ]
    feed_done = asyncio.Event()
    workers = await make_workers(pg_url, log, 3, batch_size=7)

    async def feed() -> None:
        # Every record once in small appends, then the first 20 again (a redelivery).
        for start in range(0, len(records), 10):
            await log.append(EVENTS, records[start : start + 10])
            await asyncio.sleep(0.005)
        await log.append(EVENTS, records[:20])
        feed_done.set()

    try:
        handled = await asyncio.gather(
            feed(),
            *(w.consume(block_seconds=0.05, until=feed_done.is_set) for w in workers),
        )
        assert sum(handled[1:]) == len(records) + 20
        assert await log.pending(EVENTS, GROUP) == 0
        async with store.engine.connect() as conn:
            live = await conn.scalar(
                select(func.count()).select_from(profiles).where(profiles.c.merged_into.is_(None))
            )
            stored = await conn.scalar(select(func.count()).select_from(events))
            counted = await conn.scalar(select(func.sum(event_counts.c.count)))
        assert live == people
        assert stored == len(generated)
        assert counted == len(generated) - people  # identifies are not counted
    finally:
        await store.engine.dispose()
        for w in workers:
            await w.store.engine.dispose()


async def _store_with_a_poison_event(url: str) -> tuple[SqlProfileStore, SqlEventLog]:
    """A store whose apply fails for any batch holding the event named Boom, and a log holding
    one good event (anonymous id "ok") and that one ("bad")."""
    store, log = await make_store(url)
    await log.ensure_group(EVENTS, GROUP)
    good = make_event("track", anonymous_id="ok", event="Fine")
    bad = make_event("track", anonymous_id="bad", event="Boom")
    await log.append(
        EVENTS, [LogRecord(key="k", payload=e.SerializeToString()) for e in (good, bad)]
    )
    real_apply = store.apply

    async def flaky_apply(batch, **kwargs):  # type: ignore[no-untyped-def]
        if any(e.name == "Boom" for e in batch):
            raise RuntimeError("poison")
        return await real_apply(batch, **kwargs)

    store.apply = flaky_apply  # type: ignore[method-assign]
    return store, log


async def test_worker_acks_good_events_when_one_fails(sqlite_url: str) -> None:
    store, log = await _store_with_a_poison_event(sqlite_url)
    worker = ProfileWorker(store, log, blocklist=BlockList(), consumer="w", lease_seconds=0.01)
    try:
        assert await worker.run_once() == 2
        assert await store.owner_of(IdentifierKey("anonymous_id", "ok")) is not None
        assert await store.owner_of(IdentifierKey("anonymous_id", "bad")) is None
        assert await log.pending(EVENTS, GROUP) == 1
    finally:
        await store.engine.dispose()


async def test_consuming_loop_leaves_a_failing_event_unacknowledged(sqlite_url: str) -> None:
    store, log = await _store_with_a_poison_event(sqlite_url)
    worker = ProfileWorker(store, log, blocklist=BlockList(), consumer="w")
    try:
        # Stops at the first claim that finds nothing: the failing event stays leased.
        assert await worker.consume(block_seconds=0.0, until=lambda: True) == 2
        assert await store.owner_of(IdentifierKey("anonymous_id", "ok")) is not None
        assert await store.owner_of(IdentifierKey("anonymous_id", "bad")) is None
        assert await log.pending(EVENTS, GROUP) == 1
    finally:
        await store.engine.dispose()


async def _applied(store: SqlProfileStore, anonymous_id: str) -> bool:
    return await store.owner_of(IdentifierKey("anonymous_id", anonymous_id)) is not None


@pytest.mark.postgres
async def test_an_event_another_transaction_holds_is_carried_then_waited_for(
    pg_url: str,
) -> None:
    """Another worker's transaction holds the person of the first event. The events after it
    are applied meanwhile; the held one is carried into the next batch, then, still held, is
    waited for rather than carried further; every delivery ends acknowledged."""
    import asyncpg

    store, log = await make_store(pg_url)
    await log.ensure_group(EVENTS, GROUP)
    names = ["held", "free-1", "free-2", "free-3", "free-4"]
    await log.append(
        EVENTS,
        [
            LogRecord(key=name, payload=make_event("page", anonymous_id=name).SerializeToString())
            for name in names
        ],
    )
    other = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    transaction = other.transaction()
    await transaction.start()
    await other.execute(
        "SELECT pg_advisory_xact_lock($1)", IdentifierKey("anonymous_id", "held").lock_id()
    )
    worker = ProfileWorker(store, log, blocklist=BlockList(), consumer="w", batch_size=2)

    async def applied_when_the_worker_waits() -> list[bool]:
        """Which events are applied once batches 1 [held, free-1] and 2 [free-2, free-3] are
        (and a moment more); then the other transaction ends."""
        try:
            for _ in range(500):
                if await _applied(store, "free-3"):
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            return [await _applied(store, n) for n in names]
        finally:
            await transaction.commit()

    try:
        releasing = asyncio.create_task(applied_when_the_worker_waits())
        handled = await asyncio.wait_for(worker.consume(block_seconds=0.0, until=lambda: True), 10)
        # Carried twice, "held" was waited for: batch 3 [free-4] was not claimed meanwhile.
        assert await releasing == [False, True, True, True, False]
        assert handled == len(names)
        assert [await _applied(store, n) for n in names] == [True] * len(names)
        assert await log.pending(EVENTS, GROUP) == 0
    finally:
        await other.close()
        await store.engine.dispose()


async def test_a_worker_claiming_nothing_at_a_time_is_refused(sqlite_url: str) -> None:
    """A batch size of 0 would have the worker poll forever and apply nothing: it fails at once,
    naming the setting and the value."""
    store, log = await make_store(sqlite_url)
    try:
        with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
            ProfileWorker(store, log, blocklist=BlockList(), consumer="c", batch_size=0)
    finally:
        await store.engine.dispose()
