"""Every operator and condition kind, on SQLite and PostgreSQL, against a hand-built population
with known answers; both evaluators must give exactly the expected members."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from tests.segment.readmodel import create_read_model, insert_profiles
from upm_common.db import create_engine
from upm_segment import model as m
from upm_segment.compile import SqlCompiler
from upm_segment.evaluate import EventRecord, ProfileData, TraitValue, evaluate
from upm_segment.text import parse

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
PARIS = timezone(timedelta(hours=2))
TOKYO = timezone(timedelta(hours=9))


def _population() -> list[ProfileData]:
    ann = ProfileData(
        "ann",
        traits={
            "plan": TraitValue("string", "gold"),
            "age": TraitValue("number", 30.0),
            "vip": TraitValue("boolean", True),
            "signup": TraitValue("timestamp", datetime(2026, 1, 10, tzinfo=UTC)),
            "tags": TraitValue("array", ["a", "b"]),
            "nothing": TraitValue("null", None),
            "email": TraitValue("string", "ann@example.org"),
        },
        consents={("email", "marketing"): "subscribed", ("sms", "marketing"): "subscribed"},
        identifier_types={"email", "user_id"},
        events=[
            EventRecord("Order Completed", "track", NOW - DAY, {"revenue": 100, "currency": "USD"}),
            EventRecord(
                "Order Completed", "track", NOW - 40 * DAY, {"revenue": 50.5, "currency": "EUR"}
            ),
            EventRecord("Order Completed", "track", NOW - 70 * DAY, {"revenue": "n/a"}),
            EventRecord("Home", "page", NOW - 2 * DAY, {"path": "/"}),
        ],
    )
    bob = ProfileData(
        "bob",
        traits={
            "plan": TraitValue("string", "silver"),
            "age": TraitValue("number", 17.0),
            "vip": TraitValue("boolean", False),
            "signup": TraitValue("timestamp", datetime(2026, 3, 1, 8, 0, tzinfo=PARIS)),
            "email": TraitValue("string", "bob@test.example"),
        },
        consents={("sms", "marketing"): "unsubscribed", ("email", "marketing"): "unknown"},
        identifier_types={"phone", "external:crm"},
        events=[
            EventRecord(
                "Order Completed",
                "track",
                NOW - 10 * DAY,
                {"revenue": 20, "product": {"sku": "X1"}},
            ),
            EventRecord(
                "Creative Viewed",
                "track",
                NOW - 5 * DAY,
                {"placement": "homepage", "creative": "new-product", "visible": True},
            ),
        ],
    )
    cat = ProfileData("cat")
    dan = ProfileData(
        "dan",
        traits={"plan": TraitValue("string", "Gold"), "age": TraitValue("number", 30.5)},
        identifier_types={"email"},
        events=[
            EventRecord(
                "Creative Viewed",
                "track",
                (NOW - 30 * DAY).astimezone(TOKYO),
                {"placement": "homepage", "creative": "old", "visible": False},
            ),
            EventRecord("Order Completed", "track", NOW - 35 * DAY, {"revenue": 5}),
            EventRecord("Order Completed", "track", NOW - 3 * DAY, {"revenue": 7}),
        ],
    )
    return [ann, bob, cat, dan]


CASES: list[tuple[str, set[str]]] = [
    # trait operators, per type
    ('trait(plan) = "gold"', {"ann"}),
    ('trait(plan) != "gold"', {"bob", "cat", "dan"}),
    ('trait(plan) < "gold"', {"dan"}),  # code-point order: "G" < "g"
    ('trait(plan) >= "h"', {"bob"}),
    ('trait(plan) in ("gold", "Gold")', {"ann", "dan"}),
    ('trait(plan) between "a" and "h"', {"ann"}),
    ('trait(email) contains "@example."', {"ann"}),
    ('trait(email) starts_with "bob@"', {"bob"}),
    ('trait(plan) contains "ol"', {"ann", "dan"}),
    ("trait(age) = 30", {"ann"}),
    ("trait(age) != 30", {"bob", "cat", "dan"}),
    ("trait(age) < 30", {"bob"}),
    ("trait(age) <= 30", {"ann", "bob"}),
    ("trait(age) > 30", {"dan"}),
    ("trait(age) >= 30", {"ann", "dan"}),
    ("trait(age) between 17 and 30", {"ann", "bob"}),
    ("trait(age) in (17, 30.5)", {"bob", "dan"}),
    ('trait(age) = "30"', set()),  # a string never equals a number trait
    ("trait(vip) = true", {"ann"}),
    ("trait(vip) = false", {"bob"}),
    ("trait(vip) != true", {"bob", "cat", "dan"}),
    ('trait(signup) < time("2026-02-01T00:00:00Z")', {"ann"}),
    ('trait(signup) = time("2026-03-01T06:00:00Z")', {"bob"}),
    ('trait(signup) >= time("2026-03-01T08:00:00+02:00")', {"bob"}),
    ("trait(tags) exists", {"ann"}),
    ("trait(nothing) exists", set()),
    ("trait(nothing) not_exists", {"ann", "bob", "cat", "dan"}),
    ("trait(age) not_exists", {"cat"}),
    # identifiers and consent
    ("has(email)", {"ann", "dan"}),
    ("has_no(email)", {"bob", "cat"}),
    ("has(external:crm)", {"bob"}),
    ("consent(sms, marketing) = subscribed", {"ann"}),
    ("consent(sms, marketing) = unsubscribed", {"bob"}),
    ("consent(sms, marketing) = unknown", {"cat", "dan"}),
    ("consent(email, marketing) = unknown", {"bob", "cat", "dan"}),
    ("consent(email, transactional) = unknown", {"ann", "bob", "cat", "dan"}),
    # events
    ('performed("Order Completed")', {"ann", "bob", "dan"}),
    ('not performed("Order Completed")', {"cat"}),
    ('performed("Order Completed").within(30d)', {"ann", "bob", "dan"}),
    ('performed("Order Completed").within(7d)', {"ann", "dan"}),
    ('performed("Order Completed").count() >= 2', {"ann", "dan"}),
    ('performed("Order Completed").count() = 3', {"ann"}),
    ('performed("Order Completed").count() < 2', {"bob", "cat"}),
    ('performed("Order Completed").count() != 1', {"ann", "cat", "dan"}),
    ('performed("Order Completed").within(60d).count() between 1 and 1', {"bob"}),
    ('performed("Home", type: page)', {"ann"}),
    ('performed("Home", type: track)', set()),
    ('performed("Order Completed", currency = "USD")', {"ann"}),
    ('performed("Order Completed", currency != "USD")', {"ann", "bob", "dan"}),
    ('performed("Order Completed", revenue > 10)', {"ann", "bob"}),
    ('performed("Order Completed", revenue exists).count() = 3', {"ann"}),
    ('performed("Order Completed", revenue not_exists)', set()),
    ('performed("Order Completed", product.sku = "X1")', {"bob"}),
    ('performed("Creative Viewed", visible = true)', {"bob"}),
    ('performed("Creative Viewed", creative in ("old", "x"))', {"dan"}),
    ('performed("Creative Viewed", placement starts_with "home").within(30d)', {"bob"}),
    (
        'performed("Order Completed").between(time("2026-05-01T00:00:00Z"), '
        'time("2026-06-10T00:00:00Z"))',
        {"ann", "bob", "dan"},
    ),
    (
        'performed("Order Completed").between(time("2026-06-05T12:00:00Z"), '
        'time("2026-06-10T00:00:00Z"))',
        {"bob"},
    ),
    ('performed("Order Completed").first() before 60d ago', {"ann"}),
    ('performed("Order Completed").first() after 60d ago', {"bob", "dan"}),
    ('performed("Order Completed").last() before 5d ago', {"bob"}),
    ('performed("Order Completed").last() after time("2026-06-13T12:00:00Z")', {"ann"}),
    ('performed("Order Completed").count(every month, last 2 months) >= 1', {"ann", "dan"}),
    # bob's only order (10 days ago) is in the second week, none in the first
    ('performed("Order Completed").count(every week, last 2 weeks) = 0', {"cat"}),
    (
        'performed("Order Completed").count(every week, last 2 weeks) <= 1',
        {"ann", "bob", "cat", "dan"},
    ),
    # ann's order exactly one day ago is outside (now - 1d, now]
    (
        'performed("Order Completed").count(every day, last 1 day) = 0',
        {"ann", "bob", "cat", "dan"},
    ),
    # aggregates
    ('sum("Order Completed", revenue) >= 150', {"ann"}),
    ('sum("Order Completed", revenue).within(30d) > 15', {"ann", "bob"}),
    ('sum("Order Completed", revenue).within(30d) < 10', {"cat", "dan"}),
    ('avg("Order Completed", revenue) = 75.25', {"ann"}),
    ('avg("Order Completed", revenue) < 100', {"ann", "bob", "dan"}),
    ('min("Order Completed", revenue) <= 5', {"dan"}),
    ('max("Order Completed", revenue).within(7d) between 7 and 100', {"ann", "dan"}),
    ('count("Order Completed", revenue) = 2', {"ann", "dan"}),
    ('count("Order Completed", *) = 0', {"cat"}),
    ('sum("Order Completed", revenue, currency = "EUR") > 0', {"ann"}),
    # composition
    ("has(email) and (trait(age) > 30 or consent(sms, marketing) = subscribed)", {"ann", "dan"}),
    ("not (has(email) or has(phone))", {"cat"}),
]


async def test_every_operator_and_condition_kind(db_url: str) -> None:
    population = _population()
    engine = create_engine(db_url)
    try:
        await create_read_model(engine)
        await insert_profiles(engine, population)
        compiler = SqlCompiler(engine.dialect.name, NOW)
        wrong = []
        async with engine.connect() as conn:
            for text, expected in CASES:
                tree = parse(text)
                in_process = {p.profile_id for p in population if evaluate(tree, p, NOW)}
                sql = {row[0] for row in await conn.execute(compiler.members_query(tree))}
                if not in_process == sql == expected:
                    wrong.append(f"{text}: expected {expected}, sql {sql}, in-process {in_process}")
        assert not wrong, "\n".join(wrong)
    finally:
        await engine.dispose()


async def test_merged_profiles_are_not_counted(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await create_read_model(engine)
        await insert_profiles(engine, _population(), merged=["old-ann"])
        compiler = SqlCompiler(engine.dialect.name, NOW)
        tree = parse("trait(nothing) not_exists")
        async with engine.connect() as conn:
            count = (await conn.execute(compiler.count_query(tree))).scalar_one()
            page = [r[0] for r in await conn.execute(compiler.members_query(tree, after="bob"))]
            overlap = (
                await conn.execute(
                    compiler.overlap_query(parse("has(email)"), parse("has(phone) or has(email)"))
                )
            ).one()
        assert count == 4
        assert page == ["cat", "dan"]
        assert tuple(overlap) == (2, 3, 2)
    finally:
        await engine.dispose()


def test_cases_cover_every_operator_and_kind() -> None:
    trees = [parse(text) for text, _ in CASES]
    nodes = [node for tree in trees for node in m.walk(tree)]
    trait_ops = {n.operator for n in nodes if isinstance(n, m.TraitCondition)}
    filter_ops = {f.operator for n in nodes if isinstance(n, m.EventCondition) for f in n.filters}
    assert trait_ops == set(m.Operator)
    assert len(filter_ops) >= 7
    functions = {n.function for n in nodes if isinstance(n, m.AggregateCondition)}
    assert functions == set(m.AggregateFunction)
    units = {
        n.measure.every.unit
        for n in nodes
        if isinstance(n, m.EventCondition)
        and isinstance(n.measure, m.CountMeasure)
        and n.measure.every is not None
    }
    assert units == set(m.PeriodUnit)
