"""Outcomes that arrive as events through ingest and the profile service's change feed."""

from __future__ import annotations

from datetime import UTC, datetime

from upm.profile.v1 import profile_service_pb2 as profile_pb
from upm_common.db import create_engine
from upm_common.eventlog import PROFILE_CHANGES, LogRecord
from upm_common.eventlog.sql import SqlEventLog
from upm_common.migrations import upgrade
from upm_orchestrator.repository import Repository
from upm_orchestrator.worker import GROUP, OutcomeFeed, classify

from .test_followups import FOLLOW_UP


def test_classify_marketing_activity_and_conversions() -> None:
    conversions = {"Order Completed"}
    assert classify("Email Opened", conversions) == ("opened", "email")
    assert classify("Email Link Clicked", conversions) == ("clicked", "email")
    assert classify("SMS Delivered", conversions) == ("delivered", "sms")
    assert classify("Push Opened", conversions) == ("opened", "push")
    assert classify("Email Marked as Spam", conversions) == ("complained", "email")
    assert classify("Order Completed", conversions) == ("converted", "")
    assert classify("Product Viewed", conversions) is None


def _change(kind: int, name: str = "", profile_id: str = "p1") -> LogRecord:
    change = profile_pb.ProfileChange(
        change_id=name or "traits",
        type=kind,
        profile_id=profile_id,
        event_name=name,  # type: ignore[arg-type]
    )
    change.event_time.FromDatetime(datetime(2026, 6, 10, 12, tzinfo=UTC))
    return LogRecord(key=profile_id, payload=change.SerializeToString())


async def test_feed_records_activity_and_rule_conversions(sqlite_url: str) -> None:
    await upgrade(sqlite_url, "eventlog")
    await upgrade(sqlite_url, "orchestrator")
    engine = create_engine(sqlite_url)
    try:
        repository = Repository(engine)
        await repository.create_follow_up_rule(FOLLOW_UP, datetime.now(UTC))
        log = SqlEventLog(engine)
        feed = OutcomeFeed(log, repository)
        await log.ensure_group(PROFILE_CHANGES, GROUP)
        applied = profile_pb.PROFILE_CHANGE_TYPE_EVENT_APPLIED
        await log.append(
            PROFILE_CHANGES,
            [
                _change(applied, "Email Opened"),
                _change(profile_pb.PROFILE_CHANGE_TYPE_TRAITS_CHANGED),
                _change(applied, "Product Viewed"),
                _change(applied, "Order Completed"),
            ],
        )
        deliveries = await log.claim(PROFILE_CHANGES, GROUP, "test", 10)
        assert await feed.handle(deliveries) == 2
        outcomes = await repository.outcomes_for("p1", datetime(2026, 1, 1, tzinfo=UTC))
        assert [(o.type, o.event_name, o.channel) for o in outcomes] == [
            ("opened", "Email Opened", "email"),
            ("converted", "Order Completed", ""),
        ]
    finally:
        await engine.dispose()
