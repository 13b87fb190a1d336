"""The issue's segment on a hand-built population with a known answer, and window edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.segment.readmodel import create_read_model, insert_profiles
from upm_common.db import create_engine
from upm_segment.compile import SqlCompiler
from upm_segment.evaluate import EventRecord, ProfileData, TraitValue, evaluate, next_edge
from upm_segment.text import parse

ISSUE_TEXT = (
    'performed("Order Completed").count(every month, last 2 months) >= 1 and '
    "trait(newsletter) = true and "
    'performed("Creative Viewed", placement = "homepage", creative = "new-product").within(30d)'
    " and consent(sms, marketing) = subscribed"
)
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
NEW_YORK_SUMMER = timezone(timedelta(hours=-4))
KOLKATA = timezone(timedelta(hours=5, minutes=30))


def _order(at: datetime) -> EventRecord:
    return EventRecord("Order Completed", "track", at, {"revenue": 10})


def _creative(
    at: datetime, placement: str = "homepage", creative: str = "new-product"
) -> EventRecord:
    return EventRecord(
        "Creative Viewed", "track", at, {"placement": placement, "creative": creative}
    )


def _person(
    pid: str,
    events: list[EventRecord],
    *,
    newsletter: object = True,
    sms: str | None = "subscribed",
) -> ProfileData:
    traits = {}
    if newsletter is not None:
        kind = "boolean" if isinstance(newsletter, bool) else "string"
        traits["newsletter"] = TraitValue(kind, newsletter)
    consents = {("sms", "marketing"): sms} if sms else {}
    return ProfileData(pid, traits=traits, consents=consents, events=events)


def population() -> tuple[list[ProfileData], set[str]]:
    """Profiles around every edge of the issue's segment, and the expected members at NOW."""
    base = [_order(NOW - 3 * DAY), _order(NOW - 45 * DAY), _creative(NOW - 2 * DAY)]
    people = [
        _person("a-member", base),
        # orders in both 30-day periods, the newest exactly at NOW, in another time zone
        _person(
            "b-member-tz",
            [
                _order(NOW.astimezone(KOLKATA)),
                _order(NOW - 59 * DAY),
                _creative((NOW - 29 * DAY).astimezone(NEW_YORK_SUMMER)),
            ],
        ),
        # the second period is (now-60d, now-30d]: an order exactly 30 days ago is in it
        _person("c-member-edge", [_order(NOW - DAY), _order(NOW - 30 * DAY), _creative(NOW - DAY)]),
        # an order exactly 60 days ago is outside both periods
        _person("d-no-60d", [_order(NOW - DAY), _order(NOW - 60 * DAY), _creative(NOW - DAY)]),
        # only one period has an order
        _person("e-one-period", [_order(NOW - DAY), _order(NOW - 2 * DAY), _creative(NOW - DAY)]),
        # the creative view exactly 30 days ago is outside within(30d)
        _person("f-creative-30d", [*base[:2], _creative(NOW - 30 * DAY)]),
        # one second inside the window (expressed in New York time)
        _person(
            "g-creative-inside",
            [
                *base[:2],
                _creative((NOW - 30 * DAY + timedelta(seconds=1)).astimezone(NEW_YORK_SUMMER)),
            ],
        ),
        _person("h-wrong-placement", [*base[:2], _creative(NOW - DAY, placement="footer")]),
        _person("i-wrong-creative", [*base[:2], _creative(NOW - DAY, creative="old-product")]),
        _person("j-no-newsletter", base, newsletter=False),
        _person("k-newsletter-string", base, newsletter="true"),
        _person("l-missing-newsletter", base, newsletter=None),
        _person("m-sms-unsubscribed", base, sms="unsubscribed"),
        _person("n-no-consent", base, sms=None),
        # a future event (clock skew) is not in any relative window
        _person("o-future", [_order(NOW + DAY), _order(NOW - 45 * DAY), _creative(NOW - DAY)]),
    ]
    return people, {"a-member", "b-member-tz", "c-member-edge", "g-creative-inside"}


async def test_issue_segment_has_the_known_members(db_url: str) -> None:
    people, expected = population()
    tree = parse(ISSUE_TEXT)
    assert {p.profile_id for p in people if evaluate(tree, p, NOW)} == expected
    engine = create_engine(db_url)
    try:
        await create_read_model(engine)
        await insert_profiles(engine, people)
        async with engine.connect() as conn:
            for now in (NOW, NOW.astimezone(KOLKATA)):
                compiler = SqlCompiler(engine.dialect.name, now)
                count = (await conn.execute(compiler.count_query(tree))).scalar_one()
                members = [r[0] for r in await conn.execute(compiler.members_query(tree))]
                assert count == len(expected)
                assert members == sorted(expected)
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("offset", "inside"),
    [
        (timedelta(days=30), False),
        (timedelta(days=30) - timedelta(microseconds=1), True),
        (timedelta(days=30) + timedelta(microseconds=1), False),
        (timedelta(0), True),
        (-timedelta(microseconds=1), False),
    ],
)
async def test_within_30d_means_strictly_after_now_minus_30d(
    sqlite_url: str, offset: timedelta, inside: bool
) -> None:
    tree = parse('performed("Order Completed").within(30d)')
    person = ProfileData("p", events=[_order((NOW - offset).astimezone(KOLKATA))])
    assert evaluate(tree, person, NOW) is inside
    engine = create_engine(sqlite_url)
    try:
        await create_read_model(engine)
        await insert_profiles(engine, [person])
        async with engine.connect() as conn:
            count = (await conn.execute(SqlCompiler("sqlite", NOW).count_query(tree))).scalar_one()
        assert count == (1 if inside else 0)
    finally:
        await engine.dispose()


def test_next_edge_is_when_the_newest_event_leaves_a_window() -> None:
    tree = parse(ISSUE_TEXT)
    people, _ = population()
    member = people[0]
    edge = next_edge(tree, member, NOW)
    # The order 45 days ago is the only one in the second 30-day period (now-60d, now-30d];
    # it leaves that period 15 days from now, and the member exits then.
    assert edge == NOW + 15 * DAY
    assert evaluate(tree, member, edge - timedelta(microseconds=1))
    assert not evaluate(tree, member, edge)
    assert next_edge(parse("trait(newsletter) = true"), member, NOW) is None
