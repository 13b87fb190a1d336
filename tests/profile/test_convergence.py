"""Out-of-order delivery converges: any order and batching of the same events gives the same
profiles (identifiers, traits with provenance, consents, aggregates)."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from tests.profile.conftest import effects, make_event, make_store
from upm.common.v1 import event_pb2
from upm_common.eventlog.tables import metadata as eventlog_metadata
from upm_profile.store.tables import (
    consents,
    event_counts,
    event_daily,
    identifiers,
    metadata,
    profiles,
    traits,
)


def scenario() -> list[event_pb2.Event]:
    return [
        make_event("page", anonymous_id="a1", name="Home", minutes=0, message_id="e0"),
        make_event(
            "identify",
            anonymous_id="a1",
            traits={"email": "ann@corp.io", "name": "A", "$increment": {"logins": 1}},
            minutes=1,
            message_id="e1",
        ),
        make_event(
            "track",
            user_id="u1",
            anonymous_id="a2",
            event="Order Completed",
            properties={"order_id": "o1", "revenue": 20},
            minutes=2,
            message_id="e2",
        ),
        make_event(
            "identify",
            user_id="u1",
            traits={"email": "ann@corp.io", "name": "B", "$add_to_set": {"tags": ["x"]}},
            minutes=3,
            message_id="e3",
        ),
        make_event(
            "identify",
            anonymous_id="a2",
            traits={
                "$set_once": {"first": "a2"},
                "$unset": ["name"],
                "$add_to_set": {"tags": ["y"]},
            },
            minutes=4,
            message_id="e4",
        ),
        make_event("track", user_id="u1", event="Unsubscribed", minutes=5, message_id="e5"),
        make_event(
            "identify",
            anonymous_id="a3",
            traits={
                "phone": "+14155552671",
                "$increment": {"logins": 2},
                "$set_once": {"first": "a3"},
            },
            minutes=6,
            message_id="e6",
        ),
        make_event("alias", user_id="u1", previous_id="a3", minutes=7, message_id="e7"),
        make_event(
            "identify",
            anonymous_id="a9",
            traits={"email": "ann@corp.io", "consent": {"sms": True}, "email_opt_in": True},
            minutes=2.5,
            message_id="e8",
        ),
        make_event("page", anonymous_id="b1", name="Home", minutes=3, message_id="e9"),
    ]


async def _state(url: str, batches: list[list[event_pb2.Event]]) -> set[str]:
    store, _ = await make_store(url)
    try:
        if store.is_postgres:
            # One database serves every example: emptied first.
            tables = [*metadata.sorted_tables, *eventlog_metadata.sorted_tables]
            async with store.engine.begin() as conn:
                await conn.execute(text(f"TRUNCATE {', '.join(t.name for t in tables)}"))
        for batch in batches:
            await store.apply(effects(*batch))
        result: dict[str, dict[str, Any]] = {}
        async with store.engine.connect() as conn:
            for r in await conn.execute(
                select(profiles.c.id).where(profiles.c.merged_into.is_(None))
            ):
                result[r.id] = {"ids": [], "traits": [], "consents": [], "counts": [], "daily": []}
            for r in await conn.execute(select(identifiers)):
                result[r.profile_id]["ids"].append(f"{r.type}:{r.value}")
            for r in await conn.execute(select(traits)):
                result[r.profile_id]["traits"].append(
                    [
                        r.name,
                        r.value,
                        r.value_type,
                        r.updated_time.isoformat(),
                        r.event_id,
                        r.source,
                    ]
                )
            for r in await conn.execute(select(consents)):
                result[r.profile_id]["consents"].append(
                    [r.channel, r.purpose, r.status, r.updated_time.isoformat(), r.source]
                )
            for r in await conn.execute(select(event_counts)):
                result[r.profile_id]["counts"].append(
                    [r.name, r._mapping["count"], r.first_time.isoformat(), r.last_time.isoformat()]
                )
            for r in await conn.execute(select(event_daily)):
                result[r.profile_id]["daily"].append(
                    [r.name, r.day.isoformat(), r._mapping["count"], r.revenue]
                )
        return {
            json.dumps({k: sorted(v) for k, v in p.items()}, sort_keys=True)
            for p in result.values()
        }
    finally:
        await store.engine.dispose()


def _run(batches: list[list[event_pb2.Event]], url: str | None = None) -> set[str]:
    """The profiles after applying `batches` on `url`, or on a new SQLite database."""
    if url is not None:
        return asyncio.run(_state(url, batches))
    with tempfile.TemporaryDirectory() as folder:
        return asyncio.run(_state(f"sqlite+aiosqlite:///{Path(folder) / 'p.db'}", batches))


BASELINE: set[str] = set()


def _baseline() -> set[str]:
    """The profiles of the scenario applied in time order one event at a time, on SQLite."""
    if not BASELINE:
        BASELINE.update(_run([[e] for e in scenario()]))
        assert len(BASELINE) == 2
    return BASELINE


def _shuffled_batches(data: st.DataObject) -> list[list[event_pb2.Event]]:
    order = data.draw(st.permutations(scenario()))
    cuts = sorted(data.draw(st.sets(st.integers(1, len(order) - 1), max_size=4)))
    return [list(order[a:b]) for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_order_and_batching_gives_the_same_profiles(data: st.DataObject) -> None:
    assert _run(_shuffled_batches(data)) == _baseline()


@pytest.mark.postgres
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_postgres_converges_to_the_profiles_sqlite_gives(pg_url: str, data: st.DataObject) -> None:
    """PostgreSQL takes its own statements for locks, merges and aggregates; in any order and
    batching it ends with the profiles SQLite gives."""
    assert _run(_shuffled_batches(data), pg_url) == _baseline()
