"""Enrichment on real referrer and user agent strings; tables reload without a code change."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ingest.conftest import Running
from upm.common.v1 import event_pb2
from upm_ingest.enrich import BUILTIN_DIR, Enricher, parse_user_agent, truncate_ip

SHOP = "https://shop.example.com/shoes?color=red"


def page_event(url: str = SHOP, referrer: str = "", **context: Any) -> event_pb2.Event:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_PAGE)
    event.context.page.url = url
    event.context.page.referrer = referrer
    for key, value in context.items():
        setattr(event.context, key, value)
    return event


@pytest.mark.parametrize(
    ("referrer", "medium", "source", "term"),
    [
        (
            "https://www.google.com/search?q=running+shoes&oq=running",
            "search",
            "Google",
            "running shoes",
        ),
        ("https://www.google.co.uk/search?q=trail%20shoes", "search", "Google", "trail shoes"),
        ("https://www.google.de/", "search", "Google", ""),
        ("https://www.bing.com/search?q=red+shoes&form=QBLH", "search", "Bing", "red shoes"),
        ("https://search.yahoo.com/search?p=shoe+sale&fr=yfp-t", "search", "Yahoo", "shoe sale"),
        ("https://duckduckgo.com/?q=vegan+sneakers&t=h_", "search", "DuckDuckGo", "vegan sneakers"),
        ("https://www.baidu.com/s?wd=%E8%B7%91%E9%9E%8B&rsv_spt=1", "search", "Baidu", "跑鞋"),
        (
            "https://yandex.ru/search/?text=%D0%BA%D1%80%D0%BE%D1%81%D1%81%D0%BE%D0%B2%D0%BA%D0%B8&lr=213",
            "search",
            "Yandex",
            "кроссовки",
        ),
        (
            "https://www.ecosia.org/search?method=index&q=sustainable+shoes",
            "search",
            "Ecosia",
            "sustainable shoes",
        ),
        (
            "https://search.naver.com/search.naver?where=nexearch&query=%EC%8B%A0%EB%B0%9C",
            "search",
            "Naver",
            "신발",
        ),
        ("https://l.facebook.com/l.php?u=https%3A%2F%2Fshop.example.com", "social", "Facebook", ""),
        ("https://t.co/abc123", "social", "X (Twitter)", ""),
        ("https://www.linkedin.com/feed/", "social", "LinkedIn", ""),
        ("https://out.reddit.com/t3_abc", "social", "Reddit", ""),
        ("https://mail.google.com/mail/u/0/", "email", "Gmail", ""),
        ("https://outlook.live.com/mail/0/inbox", "email", "Outlook.com", ""),
        ("https://shop.example.com/cart", "internal", "shop.example.com", ""),
        ("https://www.shop.example.com/", "internal", "shop.example.com", ""),
        ("https://blog.someone.net/post/1", "unknown", "blog.someone.net", ""),
        ("https://notgoogle.com/search?q=x", "unknown", "notgoogle.com", ""),
    ],
)
def test_referrers_are_classified(referrer: str, medium: str, source: str, term: str) -> None:
    event = page_event(referrer=referrer)
    Enricher().enrich(event)
    assert (event.context.referrer.medium, event.context.referrer.source) == (medium, source)
    assert event.context.referrer.search_term == term


def test_utm_and_click_ids_fill_the_campaign_and_the_paid_flag() -> None:
    url = (
        "https://shop.example.com/?utm_source=google&utm_medium=cpc&utm_campaign=spring"
        "&utm_term=red+shoes&utm_content=banner-a&gclid=Cj0KCQ"
    )
    event = page_event(url, "https://www.google.com/")
    Enricher().enrich(event)
    campaign = event.context.campaign
    assert (campaign.source, campaign.medium, campaign.name) == ("google", "cpc", "spring")
    assert (campaign.term, campaign.content) == ("red shoes", "banner-a")
    assert dict(campaign.click_ids) == {"gclid": "Cj0KCQ"}
    assert campaign.paid
    assert event.context.referrer.medium == "paid"
    assert event.context.referrer.source == "Google"


@pytest.mark.parametrize("click_id", ["gclid", "fbclid", "msclkid"])
def test_a_click_id_alone_marks_the_visit_paid(click_id: str) -> None:
    event = page_event(f"https://shop.example.com/?{click_id}=xyz")
    Enricher().enrich(event)
    assert event.context.campaign.paid and event.context.campaign.click_ids[click_id] == "xyz"


def test_organic_utm_is_not_paid_and_client_campaign_wins() -> None:
    event = page_event("https://shop.example.com/?utm_source=newsletter&utm_medium=email")
    event.context.campaign.name = "sent-by-client"
    Enricher().enrich(event)
    assert not event.context.campaign.paid
    assert event.context.campaign.name == "sent-by-client"
    assert event.context.campaign.source == "newsletter"


@pytest.mark.parametrize(
    ("agent", "browser", "os", "device"),
    [
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36",
            "Chrome",
            "Windows",
            "desktop",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
            "Mobile Safari",
            "iOS",
            "mobile",
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
            "Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
            "Mobile Safari",
            "iOS",
            "tablet",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.6367.82 Mobile Safari/537.36",
            "Chrome Mobile",
            "Android",
            "mobile",
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/123.0.0.0 Safari/537.36",
            "Chrome",
            "Android",
            "tablet",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:125.0) Gecko/20100101 Firefox/125.0",
            "Firefox",
            "Mac OS X",
            "desktop",
        ),
        (
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Googlebot",
            "Other",
            "bot",
        ),
    ],
)
def test_user_agents_are_parsed(agent: str, browser: str, os: str, device: str) -> None:
    parsed = parse_user_agent(agent)
    assert (parsed.browser, parsed.os, parsed.device_class) == (browser, os, device)


@pytest.mark.parametrize(
    ("mode", "ip", "expected"),
    [
        ("keep", "203.0.113.77", "203.0.113.77"),
        ("truncate", "203.0.113.77", "203.0.113.0"),
        ("truncate", "2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::"),
        ("truncate", "not an ip", ""),
        ("drop", "203.0.113.77", ""),
    ],
)
def test_ip_privacy(mode: Any, ip: str, expected: str) -> None:
    assert truncate_ip(ip, mode) == expected


def test_tables_reload_when_their_file_changes(tmp_path: Path) -> None:
    for name in ("referrers.json", "campaigns.json"):
        shutil.copy(BUILTIN_DIR / name, tmp_path / name)
    enricher = Enricher(tmp_path, reload_seconds=0)
    event = page_event(referrer="https://search.example-engine.io/find?k=boots")
    enricher.enrich(event)
    assert event.context.referrer.medium == "unknown"

    table = json.loads((tmp_path / "referrers.json").read_text())
    table["search"]["Example Engine"] = {"domains": ["example-engine.io"], "params": ["k"]}
    (tmp_path / "referrers.json").write_text(json.dumps(table))
    later = time.time() + 5
    os.utime(tmp_path / "referrers.json", (later, later))

    event = page_event(referrer="https://search.example-engine.io/find?k=boots")
    enricher.enrich(event)
    assert event.context.referrer.medium == "search"
    assert event.context.referrer.search_term == "boots"

    # A broken file keeps the last good tables.
    (tmp_path / "referrers.json").write_text("{broken")
    os.utime(tmp_path / "referrers.json", (later + 5, later + 5))
    event = page_event(referrer="https://search.example-engine.io/find?k=boots")
    enricher.enrich(event)
    assert event.context.referrer.source == "Example Engine"


async def test_the_collector_enriches_what_it_appends(
    ingest: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    body = make_event(
        "page",
        context={
            "page": {
                "url": "https://shop.example.com/?utm_campaign=spring&msclkid=m1",
                "referrer": "https://www.bing.com/search?q=shoes",
            }
        },
    )
    agent = (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
    )
    status, _, _ = await ingest.post("/v1/page", body, headers={"User-Agent": agent})
    assert status == 200
    [event] = await ingest.events(1)
    context = event.context
    assert context.campaign.name == "spring" and context.campaign.paid
    assert (context.referrer.medium, context.referrer.source) == ("paid", "Bing")
    assert context.referrer.search_term == "shoes"
    assert context.user_agent_info.device_class == "mobile"
    assert context.ip == "127.0.0.1"
