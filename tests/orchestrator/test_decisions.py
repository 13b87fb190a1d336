"""Decision contract tests: every rule kind at its boundary, on SQLite, PostgreSQL and Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from google.protobuf import duration_pb2

from upm.orchestrator.v1 import orchestrator_service_pb2 as pb
from upm_common.errors import FailedPreconditionError
from upm_orchestrator.engine import ProfileInfo
from upm_orchestrator.service import DecisionSettings

from .conftest import TRANSACTIONAL, Harness, cap, person, rule, subscribed

HOUR = 3600
NEW_YORK = ZoneInfo("America/New_York")


def seconds(value: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=value)


async def test_rolling_cap_nth_allowed_next_denied_until_window_edge(harness: Harness) -> None:
    await harness.policy(cap("email-3-per-hour", 3, seconds=HOUR, value="email"))
    start = harness.clock.now
    for _ in range(3):
        assert (await harness.ask()).outcome == pb.OUTCOME_ALLOW
        harness.clock.advance(minutes=1)
    denied = await harness.ask()
    assert denied.outcome == pb.OUTCOME_DENY
    [reason] = denied.reasons
    assert reason.code == pb.REASON_CODE_FREQUENCY_CAP
    assert reason.rule_id == "email-3-per-hour"
    assert (reason.current_count, reason.limit) == (3, 3)
    assert reason.window_duration.seconds == HOUR
    assert reason.retry_time.ToDatetime(tzinfo=UTC) == start + timedelta(hours=1)
    # Other channels are not capped by an email cap.
    assert (await harness.ask(channel="sms")).outcome == pb.OUTCOME_ALLOW
    harness.clock.set(start + timedelta(hours=1) - timedelta(milliseconds=1))
    assert (await harness.ask()).outcome == pb.OUTCOME_DENY
    harness.clock.set(start + timedelta(hours=1))
    assert (await harness.ask()).outcome == pb.OUTCOME_ALLOW


async def test_cap_with_defer_action_answers_when_the_window_reopens(harness: Harness) -> None:
    await harness.policy(
        cap(
            "any-1-per-hour",
            1,
            seconds=HOUR,
            scope=pb.SCOPE_KIND_ANY_CHANNEL,
            action=pb.RULE_ACTION_DEFER,
        )
    )
    start = harness.clock.now
    assert (await harness.ask(channel="push")).outcome == pb.OUTCOME_ALLOW
    harness.clock.advance(minutes=10)
    deferred = await harness.ask(channel="email")
    assert deferred.outcome == pb.OUTCOME_DEFER
    assert deferred.not_before_time.ToDatetime(tzinfo=UTC) == start + timedelta(hours=1)


async def test_calendar_day_cap_resets_at_local_midnight(harness: Harness) -> None:
    harness.profiles.put(person("p1", "America/New_York"))
    await harness.policy(cap("daily", 1, kind=pb.WINDOW_KIND_CALENDAR_DAY))
    harness.clock.set(datetime(2026, 6, 10, 23, 50, tzinfo=NEW_YORK))  # 03:50 UTC next day
    assert (await harness.ask()).outcome == pb.OUTCOME_ALLOW
    harness.clock.set(datetime(2026, 6, 10, 23, 59, tzinfo=NEW_YORK))
    denied = await harness.ask()
    assert denied.outcome == pb.OUTCOME_DENY
    midnight = datetime(2026, 6, 11, 0, 0, tzinfo=NEW_YORK)
    assert denied.reasons[0].retry_time.ToDatetime(tzinfo=UTC) == midnight
    assert denied.reasons[0].window_kind == pb.WINDOW_KIND_CALENDAR_DAY
    harness.clock.set(midnight + timedelta(minutes=5))
    assert (await harness.ask()).outcome == pb.OUTCOME_ALLOW


async def test_calendar_day_across_a_dst_change_is_25_hours(harness: Harness) -> None:
    harness.profiles.put(person("p1", "America/New_York"))
    await harness.policy(cap("daily", 1, kind=pb.WINDOW_KIND_CALENDAR_DAY))
    # 2026-11-01 is the day clocks go back in New York: the local day lasts 25 hours.
    harness.clock.set(datetime(2026, 11, 1, 0, 30, tzinfo=NEW_YORK))
    assert (await harness.ask()).outcome == pb.OUTCOME_ALLOW
    harness.clock.advance(hours=24)  # 23:30 local on the same day
    assert harness.clock.now.astimezone(NEW_YORK).day == 1
    denied = await harness.ask()
    assert denied.outcome == pb.OUTCOME_DENY
    assert denied.reasons[0].retry_time.ToDatetime(tzinfo=UTC) == datetime(
        2026, 11, 2, 5, 0, tzinfo=UTC
    )
    harness.clock.advance(minutes=31)
    assert (await harness.ask()).outcome == pb.OUTCOME_ALLOW


async def test_fallback_time_zone_is_used_for_unknown_zones(harness: Harness) -> None:
    await harness.policy(
        cap("daily", 1, kind=pb.WINDOW_KIND_CALENDAR_DAY), fallback_time_zone="Asia/Tokyo"
    )
    tokyo = ZoneInfo("Asia/Tokyo")
    harness.clock.set(datetime(2026, 6, 10, 23, 0, tzinfo=tokyo))
    assert (await harness.ask()).outcome == pb.OUTCOME_ALLOW
    harness.clock.set(datetime(2026, 6, 11, 0, 1, tzinfo=tokyo))
    assert (await harness.ask()).outcome == pb.OUTCOME_ALLOW


async def test_min_gap_per_channel_and_across_channels(harness: Harness) -> None:
    await harness.policy(
        rule(
            "gap-email",
            min_gap=pb.MinGapRule(
                gap_duration=seconds(HOUR), scope=pb.RuleScope(kind=pb.SCOPE_KIND_CHANNEL)
            ),
        ),
        rule(
            "gap-any",
            min_gap=pb.MinGapRule(
                gap_duration=seconds(600), scope=pb.RuleScope(kind=pb.SCOPE_KIND_ANY_CHANNEL)
            ),
        ),
    )
    start = harness.clock.now
    assert (await harness.ask()).outcome == pb.OUTCOME_ALLOW
    harness.clock.advance(minutes=5)
    across = await harness.ask(channel="sms")
    assert across.outcome == pb.OUTCOME_DENY
    assert [r.rule_id for r in across.reasons] == ["gap-any"]
    assert across.reasons[0].code == pb.REASON_CODE_MIN_GAP
    harness.clock.set(start + timedelta(minutes=10))
    assert (await harness.ask(channel="sms")).outcome == pb.OUTCOME_ALLOW
    harness.clock.advance(minutes=10)
    same = await harness.ask(channel="email")
    assert [r.rule_id for r in same.reasons] == ["gap-email"]
    assert same.reasons[0].retry_time.ToDatetime(tzinfo=UTC) == start + timedelta(hours=1)


async def test_duplicate_intent_on_another_channel_is_denied(harness: Harness) -> None:
    await harness.policy(
        rule(
            "same-message",
            duplicate_intent=pb.DuplicateIntentRule(window_duration=seconds(6 * HOUR)),
        )
    )
    assert (await harness.ask(channel="email", intent_key="spring-sale")).outcome == (
        pb.OUTCOME_ALLOW
    )
    harness.clock.advance(minutes=3)
    dup = await harness.ask(channel="sms", intent_key="spring-sale")
    assert dup.outcome == pb.OUTCOME_DENY
    assert dup.reasons[0].code == pb.REASON_CODE_DUPLICATE_INTENT
    assert dup.suggested_channel == ""  # the same intent is a duplicate on every channel
    assert (await harness.ask(channel="sms", intent_key="other")).outcome == pb.OUTCOME_ALLOW
    harness.clock.advance(hours=6)
    assert (await harness.ask(channel="sms", intent_key="spring-sale")).outcome == (
        pb.OUTCOME_ALLOW
    )


async def test_messages_alike_but_for_their_intent_are_told_apart(harness: Harness) -> None:
    # The same campaign on the same channel with one intent after another: each intent is
    # counted and named on its own, however the rules for such messages are kept.
    await harness.policy(
        rule(
            "same-message",
            duplicate_intent=pb.DuplicateIntentRule(window_duration=seconds(6 * HOUR)),
        )
    )
    for intent in ("spring-sale", "summer-sale", "autumn-sale"):
        first = await harness.ask(channel="email", campaign_id="seasons", intent_key=intent)
        assert first.outcome == pb.OUTCOME_ALLOW, intent
        harness.clock.advance(minutes=1)
    for intent in ("summer-sale", "spring-sale"):
        again = await harness.ask(channel="sms", campaign_id="seasons", intent_key=intent)
        assert again.outcome == pb.OUTCOME_DENY, intent
        assert [r.description for r in again.reasons] == [
            f"a message with intent {intent!r} went out in 6:00:00"
        ]
    assert (
        await harness.ask(channel="sms", campaign_id="seasons", intent_key="winter-sale")
    ).outcome == pb.OUTCOME_ALLOW
    assert (await harness.ask(channel="sms", campaign_id="seasons")).outcome == pb.OUTCOME_ALLOW


async def test_quiet_hours_defer_to_local_morning_and_deny_beyond_max_hold(
    harness: Harness,
) -> None:
    harness.profiles.put(person("p1", "America/New_York"))
    quiet = pb.QuietHoursRule(
        start=pb.LocalTime(hours=21), end=pb.LocalTime(hours=8), channels=["sms"]
    )
    await harness.policy(rule("nights", quiet_hours=quiet))
    harness.clock.set(datetime(2026, 6, 10, 23, 15, tzinfo=NEW_YORK))
    deferred = await harness.ask(channel="sms")
    assert deferred.outcome == pb.OUTCOME_DEFER
    assert deferred.not_before_time.ToDatetime(tzinfo=UTC) == datetime(
        2026, 6, 11, 8, 0, tzinfo=NEW_YORK
    )
    assert deferred.reasons[0].code == pb.REASON_CODE_QUIET_HOURS
    assert deferred.suggested_channel == "email"
    assert (await harness.ask(channel="email")).outcome == pb.OUTCOME_ALLOW
    quiet.max_hold_duration.seconds = 4 * HOUR
    await harness.orchestrator.update_policy(
        pb.Policy(policy_id="default", rules=[rule("nights", quiet_hours=quiet)]), 0
    )
    assert (await harness.ask(channel="sms")).outcome == pb.OUTCOME_DENY
    harness.clock.set(datetime(2026, 6, 11, 5, 0, tzinfo=NEW_YORK))
    assert (await harness.ask(channel="sms")).outcome == pb.OUTCOME_DEFER
    harness.clock.set(datetime(2026, 6, 11, 8, 0, tzinfo=NEW_YORK))
    assert (await harness.ask(channel="sms")).outcome == pb.OUTCOME_ALLOW


async def test_consent_and_suppression(harness: Harness) -> None:
    await harness.policy()
    harness.profiles.put(ProfileInfo("p1", "", False, subscribed("sms")))
    denied = await harness.ask(channel="email")
    assert denied.outcome == pb.OUTCOME_DENY
    assert denied.reasons[0].code == pb.REASON_CODE_NO_CONSENT
    assert denied.suggested_channel == "sms"
    # Transactional messages need only the absence of an unsubscription.
    assert (await harness.ask(channel="email", purpose=TRANSACTIONAL)).outcome == (pb.OUTCOME_ALLOW)
    harness.profiles.put(ProfileInfo("p1", "", True, subscribed("email")))
    suppressed = await harness.ask(channel="email")
    assert [r.code for r in suppressed.reasons] == [pb.REASON_CODE_SUPPRESSED_PROFILE]
    assert suppressed.suggested_channel == ""


@pytest.mark.parametrize("still_counts", [False, True])
async def test_transactional_exemption_with_and_without_counting(
    harness: Harness, still_counts: bool
) -> None:
    await harness.policy(
        cap("one-a-day", 1, seconds=24 * HOUR, scope=pb.SCOPE_KIND_ANY_CHANNEL),
        exemptions=pb.Exemptions(transactional=True, still_counts=still_counts),
    )
    for _ in range(3):
        receipt = await harness.ask(purpose=TRANSACTIONAL)
        assert receipt.outcome == pb.OUTCOME_ALLOW
        assert receipt.exempted
    marketing = await harness.ask()
    expected = pb.OUTCOME_DENY if still_counts else pb.OUTCOME_ALLOW
    assert marketing.outcome == expected
    if still_counts:
        assert marketing.reasons[0].current_count == 3


async def test_unconfirmed_reservation_expires_confirmed_keeps_counting(
    harness: Harness,
) -> None:
    harness.orchestrator.settings = DecisionSettings(
        reservation_ttl_seconds=60, policy_cache_seconds=0
    )
    await harness.policy(cap("one-per-day", 1, seconds=24 * HOUR))
    first = await harness.ask()
    assert first.outcome == pb.OUTCOME_ALLOW
    assert first.reservation_expire_time.ToDatetime(tzinfo=UTC) == harness.clock.now + timedelta(
        seconds=60
    )
    assert (await harness.ask()).outcome == pb.OUTCOME_DENY  # the reservation counts at once
    harness.clock.advance(seconds=61)
    second = await harness.ask()
    assert second.outcome == pb.OUTCOME_ALLOW  # the first expired unconfirmed
    with pytest.raises(FailedPreconditionError):
        await harness.orchestrator.confirm(first.reservation_id)
    confirmed = await harness.orchestrator.confirm(second.reservation_id)
    assert confirmed.state == pb.RESERVATION_STATE_CONFIRMED
    harness.clock.advance(seconds=120)
    assert (await harness.ask()).outcome == pb.OUTCOME_DENY  # confirmed: still counting
    with pytest.raises(FailedPreconditionError):
        await harness.orchestrator.release(second.reservation_id)


async def test_released_reservation_stops_counting_at_once(harness: Harness) -> None:
    await harness.policy(cap("one-per-day", 1, seconds=24 * HOUR))
    first = await harness.ask()
    released = await harness.orchestrator.release(first.reservation_id)
    assert released.state == pb.RESERVATION_STATE_RELEASED
    assert (await harness.ask()).outcome == pb.OUTCOME_ALLOW
    again = await harness.orchestrator.release(first.reservation_id)  # a harmless repeat
    assert again.state == pb.RESERVATION_STATE_RELEASED


async def test_same_idempotency_key_answers_the_same_and_reserves_once(harness: Harness) -> None:
    await harness.policy(cap("two-per-day", 2, seconds=24 * HOUR))
    first = await harness.ask(idempotency_key="send-1")
    harness.clock.advance(seconds=1)
    again = await harness.ask(idempotency_key="send-1")
    assert again == first
    assert (await harness.ask(idempotency_key="send-2")).outcome == pb.OUTCOME_ALLOW
    denied = await harness.ask(idempotency_key="send-3")
    assert denied.outcome == pb.OUTCOME_DENY
    assert denied.reasons[0].current_count == 2
    assert await harness.ask(idempotency_key="send-3") == denied


async def test_batch_decides_one_person_by_priority(harness: Harness) -> None:
    await harness.policy(cap("one-per-day", 1, seconds=24 * HOUR, scope=pb.SCOPE_KIND_ANY_CHANNEL))
    low = pb.RequestPermissionRequest(
        profile_id="p1", channel="email", message=pb.Message(purpose=1, priority=1)
    )
    high = pb.RequestPermissionRequest(
        profile_id="p1", channel="sms", message=pb.Message(purpose=1, priority=9)
    )
    other = pb.RequestPermissionRequest(
        profile_id="p2", channel="email", message=pb.Message(purpose=1)
    )
    decisions = await harness.orchestrator.batch_request_permission([low, high, other])
    assert [d.outcome for d in decisions] == [pb.OUTCOME_DENY, pb.OUTCOME_ALLOW, pb.OUTCOME_ALLOW]
    assert [d.channel for d in decisions] == ["email", "sms", "email"]


async def test_category_tag_and_campaign_scopes(harness: Harness) -> None:
    await harness.policy(
        cap("promo", 1, seconds=HOUR, scope=pb.SCOPE_KIND_CATEGORY, value="promotions"),
        cap("vip", 2, seconds=HOUR, scope=pb.SCOPE_KIND_TAG, value="vip"),
        cap("per-campaign", 1, seconds=HOUR, scope=pb.SCOPE_KIND_CAMPAIGN),
    )
    assert (await harness.ask(category="promotions", campaign_id="c1")).outcome == (
        pb.OUTCOME_ALLOW
    )
    promo = await harness.ask(channel="sms", category="promotions", campaign_id="c2")
    assert [r.rule_id for r in promo.reasons] == ["promo"]
    campaign = await harness.ask(channel="sms", category="news", campaign_id="c1")
    assert [r.rule_id for r in campaign.reasons] == ["per-campaign"]
    assert (await harness.ask(tags=["vip"], campaign_id="c3")).outcome == pb.OUTCOME_ALLOW
    assert (await harness.ask(tags=["vip"], campaign_id="c4")).outcome == pb.OUTCOME_ALLOW
    vip = await harness.ask(tags=["vip", "x"], campaign_id="c5")
    assert [r.rule_id for r in vip.reasons] == ["vip"]


async def test_decision_log_per_profile_and_per_rule(harness: Harness) -> None:
    await harness.policy(cap("one-per-day", 1, seconds=24 * HOUR))
    for _ in range(3):
        await harness.ask()
        harness.clock.advance(seconds=1)
    await harness.ask(profile_id="p2")
    decisions, token = await harness.orchestrator.list_decisions("p1", 2, "")
    assert [d.outcome for d in decisions] == [pb.OUTCOME_DENY, pb.OUTCOME_DENY]
    rest, last = await harness.orchestrator.list_decisions("p1", 2, token)
    assert [d.outcome for d in rest] == [pb.OUTCOME_ALLOW]
    assert last == ""
    stats = await harness.orchestrator.rule_stats(pb.GetRuleStatsRequest(policy_id="default"))
    assert stats.decision_count == 4
    [stat] = stats.stats
    assert (stat.rule_id, stat.denied_count, stat.deferred_count) == ("one-per-day", 2, 0)
    explained = await harness.orchestrator.explain(decisions[0].decision_id)
    assert "FREQUENCY_CAP (rule one-per-day)" in explained.explanation[1]


async def test_same_idempotency_key_twice_in_one_batch(harness: Harness) -> None:
    await harness.policy(cap("two-per-day", 2, seconds=24 * HOUR))
    request = pb.RequestPermissionRequest(
        profile_id="p1", channel="email", message=pb.Message(purpose=1, idempotency_key="k")
    )
    first, second = await harness.orchestrator.batch_request_permission([request, request])
    assert first.outcome == pb.OUTCOME_ALLOW
    assert second == first
    assert (await harness.ask(idempotency_key="k")) == first
    assert (await harness.ask()).outcome == pb.OUTCOME_ALLOW  # only one slot was taken


async def test_a_replay_answers_for_the_first_request_when_its_answer_was_never_recorded(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await harness.policy(cap("two-per-day", 2, seconds=24 * HOUR))

    async def lost(answers: object) -> None:
        """The first caller died between its reservation and recording its answer."""

    monkeypatch.setattr(harness.store, "remember", lost)
    first = await harness.ask(channel="email", campaign_id="spring", idempotency_key="k")
    harness.clock.advance(seconds=1)
    again = await harness.ask(channel="sms", campaign_id="autumn", idempotency_key="k")
    assert again.outcome == pb.OUTCOME_ALLOW
    assert (again.decision_id, again.reservation_id) == (first.decision_id, first.reservation_id)
    assert (again.channel, again.message.campaign_id) == ("email", "spring")
    assert again.decide_time == first.decide_time
