"""Many concurrent senders at one person: no rule is ever exceeded and no reservation is lost."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from google.protobuf import duration_pb2

from upm.orchestrator.v1 import orchestrator_service_pb2 as pb
from upm_orchestrator import engine

from .conftest import Harness, cap, make_harness, rule

SENDERS = 96
HOUR = 3600

LIMITS = {
    "any": ("any-10", 10),
    "ch:email": ("email-4", 4),
    "ch:sms": ("sms-4", 4),
    "ch:push": ("push-3", 3),
    "cat:promotions": ("promo-5", 5),
    "tag:vip": ("vip-3", 3),
}


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def busy(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    async for value in make_harness(request, request.param):
        yield value


def _policy_rules() -> list[pb.Rule]:
    return [
        cap("any-10", 10, seconds=HOUR, scope=pb.SCOPE_KIND_ANY_CHANNEL),
        cap("email-4", 4, seconds=HOUR, value="email"),
        cap("sms-4", 4, seconds=HOUR, value="sms"),
        cap("push-3", 3, seconds=HOUR, value="push"),
        cap(
            "promo-5",
            5,
            kind=pb.WINDOW_KIND_CALENDAR_DAY,
            scope=pb.SCOPE_KIND_CATEGORY,
            value="promotions",
        ),
        cap("vip-3", 3, kind=pb.WINDOW_KIND_CALENDAR_WEEK, scope=pb.SCOPE_KIND_TAG, value="vip"),
        rule(
            "no-repeat",
            duplicate_intent=pb.DuplicateIntentRule(
                window_duration=duration_pb2.Duration(seconds=HOUR)
            ),
        ),
    ]


async def _sender(harness: Harness, rng: random.Random, index: int) -> tuple[pb.Decision, bool]:
    channel = rng.choice(["email", "sms", "push"])
    message = pb.Message(
        purpose=1,
        category=rng.choice(["promotions", "news"]),
        tags=["vip"] if rng.random() < 0.5 else [],
        intent_key=f"intent-{rng.randrange(8)}",
        idempotency_key=f"send-{index % (SENDERS - 8)}",
    )
    await asyncio.sleep(rng.random() / 100)
    decision = await harness.orchestrator.request_permission(
        pb.RequestPermissionRequest(profile_id="p1", channel=channel, message=message)
    )
    released = False
    if decision.outcome == pb.OUTCOME_ALLOW and rng.random() < 0.3:
        await harness.orchestrator.release(decision.reservation_id)
        released = True
    return decision, released


def _keys(decision: pb.Decision) -> set[str]:
    message = decision.message
    spec = engine.MessageSpec(
        campaign_id=message.campaign_id,
        category=message.category,
        tags=tuple(message.tags),
        intent_key=message.intent_key,
    )
    return set(engine.message_keys(decision.channel, spec))


async def test_concurrent_senders_never_exceed_a_rule(busy: Harness) -> None:
    await busy.policy(*_policy_rules())
    rng = random.Random(7)
    outcomes = await asyncio.gather(*(_sender(busy, rng, i) for i in range(SENDERS)))
    # Senders sharing an idempotency key share one reservation; one of them may release it.
    released_ids = {d.reservation_id for d, released in outcomes if released}
    by_reservation = {
        d.reservation_id: d
        for d, _ in outcomes
        if d.outcome == pb.OUTCOME_ALLOW and d.reservation_id not in released_ids
    }
    live = list(by_reservation.values())
    assert live, "some messages must get through"
    now_ms = engine.to_ms(busy.clock.now)
    for key, (rule_id, limit) in LIMITS.items():
        holding = sum(1 for d in live if key in _keys(d))
        assert holding <= limit, f"rule {rule_id} exceeded: {holding} > {limit}"
        counted = await busy.store.count("p1", key, 0, now_ms)
        assert counted == holding, f"ledger of {key} holds {counted}, decisions say {holding}"
    intents = [d.message.intent_key for d in live]
    assert len(intents) == len(set(intents)), "an intent went out twice"
    # The any-channel cap is reachable: 96 senders over 8 intents fill at most 8 slots.
    assert len(live) <= 8
    for decision in live:
        confirmed = await busy.orchestrator.confirm(decision.reservation_id)
        assert confirmed.state == pb.RESERVATION_STATE_CONFIRMED


async def test_concurrent_batches_never_exceed_the_cap(busy: Harness) -> None:
    await busy.policy(cap("any-7", 7, seconds=HOUR, scope=pb.SCOPE_KIND_ANY_CHANNEL))

    async def batch(offset: int) -> list[pb.Decision]:
        requests = [
            pb.RequestPermissionRequest(
                profile_id="p1",
                channel=["email", "sms", "push", "web"][(offset + i) % 4],
                message=pb.Message(purpose=1, priority=i % 3),
            )
            for i in range(8)
        ]
        return await busy.orchestrator.batch_request_permission(requests)

    results = await asyncio.gather(*(batch(i) for i in range(SENDERS // 8 * 2)))
    allowed = [d for group in results for d in group if d.outcome == pb.OUTCOME_ALLOW]
    assert len(allowed) == 7
    assert await busy.store.count("p1", "any", 0, engine.to_ms(busy.clock.now)) == 7
