"""The pure fatigue engine: windows and quiet hours in the person's time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from upm.orchestrator.v1 import orchestrator_service_pb2 as pb
from upm_orchestrator import engine
from upm_orchestrator.policy import Scope

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def test_calendar_day_spring_forward_is_23_hours() -> None:
    start, end = engine.calendar_window(
        pb.WINDOW_KIND_CALENDAR_DAY, datetime(2026, 3, 29, 12, tzinfo=BERLIN), BERLIN
    )
    assert end - start == timedelta(hours=23)
    assert start == datetime(2026, 3, 28, 23, tzinfo=UTC)


def test_calendar_week_and_month() -> None:
    now = datetime(2026, 11, 1, 12, tzinfo=NEW_YORK)  # a Sunday, DST ends that day
    start, end = engine.calendar_window(pb.WINDOW_KIND_CALENDAR_WEEK, now, NEW_YORK)
    assert start == datetime(2026, 10, 26, 0, tzinfo=NEW_YORK)
    assert end == datetime(2026, 11, 2, 0, tzinfo=NEW_YORK)
    assert end - start == timedelta(days=7, hours=1)
    start, end = engine.calendar_window(pb.WINDOW_KIND_CALENDAR_MONTH, now, NEW_YORK)
    assert (start, end) == (
        datetime(2026, 11, 1, 0, tzinfo=NEW_YORK),
        datetime(2026, 12, 1, 0, tzinfo=NEW_YORK),
    )


def test_quiet_hours_across_midnight_and_dst() -> None:
    # 22:00-07:00 in Berlin on the night clocks go forward (2026-03-29 02:00 -> 03:00).
    end = engine.quiet_hours_end(22 * 60, 7 * 60, datetime(2026, 3, 28, 23, tzinfo=BERLIN), BERLIN)
    assert end == datetime(2026, 3, 29, 7, tzinfo=BERLIN)
    assert end is not None and end - datetime(2026, 3, 28, 23, tzinfo=BERLIN) == timedelta(hours=7)
    assert (
        engine.quiet_hours_end(22 * 60, 7 * 60, datetime(2026, 3, 29, 7, tzinfo=BERLIN), BERLIN)
        is None
    )
    # A daytime range does not cross midnight.
    assert (
        engine.quiet_hours_end(
            12 * 60, 14 * 60, datetime(2026, 3, 29, 11, 59, tzinfo=BERLIN), BERLIN
        )
        is None
    )


@given(
    moment=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
    ),
    zone=st.sampled_from([BERLIN, NEW_YORK, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("UTC")]),
    kind=st.sampled_from(
        [pb.WINDOW_KIND_CALENDAR_DAY, pb.WINDOW_KIND_CALENDAR_WEEK, pb.WINDOW_KIND_CALENDAR_MONTH]
    ),
)
def test_calendar_window_contains_now_and_starts_at_local_midnight(
    moment: datetime, zone: ZoneInfo, kind: int
) -> None:
    start, end = engine.calendar_window(kind, moment, zone)
    assert start <= moment < end
    assert start.astimezone(zone).time().hour == 0
    assert engine.calendar_window(kind, end, zone)[0] == end


@given(
    moment=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
    ),
    start=st.integers(0, 1439),
    end=st.integers(0, 1439),
)
def test_quiet_hours_end_is_outside_quiet_hours(moment: datetime, start: int, end: int) -> None:
    if start == end:
        return
    finish = engine.quiet_hours_end(start, end, moment, NEW_YORK)
    if finish is not None:
        assert moment < finish <= moment + timedelta(hours=25)
        assert engine.quiet_hours_end(start, end, finish, NEW_YORK) is None


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        (Scope(pb.SCOPE_KIND_ANY_CHANNEL, ""), "any"),
        (Scope(pb.SCOPE_KIND_CHANNEL, ""), "ch:sms"),
        (Scope(pb.SCOPE_KIND_CHANNEL, "email"), None),
        (Scope(pb.SCOPE_KIND_CATEGORY, ""), "cat:promo"),
        (Scope(pb.SCOPE_KIND_CATEGORY, "news"), None),
        (Scope(pb.SCOPE_KIND_TAG, "vip"), "tag:vip"),
        (Scope(pb.SCOPE_KIND_CAMPAIGN, ""), "cmp:c1"),
    ],
)
def test_scope_keys(scope: Scope, expected: str | None) -> None:
    message = engine.MessageSpec(campaign_id="c1", category="promo", tags=("vip",))
    assert engine.scope_key(scope, "sms", message) == expected
