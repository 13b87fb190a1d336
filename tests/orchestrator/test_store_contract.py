"""The FatigueStore contract, straight at the store, on every backend."""

from __future__ import annotations

import pytest

from upm_common.errors import FailedPreconditionError, NotFoundError
from upm_orchestrator.store.base import (
    CONFIRMED,
    RELEASED,
    CounterCheck,
    ReserveRequest,
    reservation_profile,
)

from .conftest import Harness

T0 = 1_800_000_000_000


def request(now: int, *, limit: int = 2, reserve: bool = True, key: str = "") -> ReserveRequest:
    return ReserveRequest(
        profile_id="p1",
        now_ms=now,
        checks=(CounterCheck("cap", "ch:email", now - 60_000 + 1, limit),),
        writes=("any", "ch:email"),
        reserve=reserve,
        ttl_ms=10_000,
        retention_ms=86_400_000,
        idempotency_key=key,
        meta={"c": "email"},
    )


async def test_reserve_counts_at_once_and_reports_the_blocking_entry(harness: Harness) -> None:
    store = harness.store
    first = await store.reserve(request(T0))
    second = await store.reserve(request(T0 + 1_000))
    assert first.reservation_id and second.reservation_id
    assert reservation_profile(first.reservation_id) == "p1"
    assert first.meta == {"c": "email"}
    third = await store.reserve(request(T0 + 2_000))
    assert third.reservation_id == ""
    [violation] = third.violations
    assert (violation.rule_id, violation.count, violation.blocking_ms) == ("cap", 2, T0)
    assert await store.count("p1", "any", 0, T0 + 2_000) == 2
    dry = await store.reserve(request(T0 + 2_000, limit=5, reserve=False))
    assert dry.reservation_id == "" and dry.violations == ()
    assert await store.count("p1", "any", 0, T0 + 2_000) == 2


async def test_expiry_confirm_release(harness: Harness) -> None:
    store = harness.store
    a = await store.reserve(request(T0))
    b = await store.reserve(request(T0))
    assert (await store.confirm(a.reservation_id, T0 + 5_000)).state == CONFIRMED
    assert (await store.confirm(a.reservation_id, T0 + 6_000)).state == CONFIRMED
    assert await store.count("p1", "ch:email", 0, T0 + 10_000) == 1  # b expired unconfirmed
    with pytest.raises(FailedPreconditionError):
        await store.confirm(b.reservation_id, T0 + 10_000)
    assert (await store.release(b.reservation_id, T0 + 10_000)).state == "expired"
    c = await store.reserve(request(T0 + 11_000))
    assert (await store.release(c.reservation_id, T0 + 11_500)).state == RELEASED
    assert await store.count("p1", "ch:email", 0, T0 + 11_500) == 1
    with pytest.raises(FailedPreconditionError):
        await store.release(a.reservation_id, T0 + 12_000)
    with pytest.raises(NotFoundError):
        await store.confirm("p1~nothing", T0)


async def test_idempotency_key_replays_the_first_result(harness: Harness) -> None:
    store = harness.store
    first = await store.reserve(request(T0, key="k1"))
    again = await store.reserve(request(T0 + 1, key="k1"))
    assert again.replayed and again.reservation_id == first.reservation_id
    assert again.decision is None
    await store.remember([("p1", "k1", b"final")])
    assert (await store.reserve(request(T0 + 2, key="k1"))).decision == b"final"
    assert await store.count("p1", "any", 0, T0 + 2) == 1
