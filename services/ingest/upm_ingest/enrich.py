"""Server-side enrichment of events: campaign, referrer, user agent and client IP.

The referrer and campaign tables are data (data/referrers.json, data/campaigns.json, or the
folder named by UPM_ENRICHMENT_DIR). A running service notices a changed file within
`reload_seconds` and reloads it, so the tables change without a code change or a restart.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

import structlog
import ua_parser

from upm.common.v1 import event_pb2
from upm_ingest.events import varint as _varint

log = structlog.get_logger(__name__)

BUILTIN_DIR = Path(__file__).parent / "data"
REFERRERS_FILE = "referrers.json"
CAMPAIGNS_FILE = "campaigns.json"

IpPrivacy = Literal["keep", "truncate", "drop"]

_CONTEXT_TAG = b"\x4a"  # Event.context (field 9, length-delimited)
_IP_TAG = b"\x0a"  # Context.ip (field 1, length-delimited)

_UTM_FIELDS = {
    "utm_campaign": "name",
    "utm_source": "source",
    "utm_medium": "medium",
    "utm_term": "term",
    "utm_content": "content",
}


@dataclass(frozen=True)
class ReferrerMatch:
    """One site of the referrer table."""

    medium: str
    source: str
    params: tuple[str, ...] = ()


@dataclass
class Tables:
    """The loaded enrichment tables."""

    exact: dict[str, ReferrerMatch] = field(default_factory=dict)
    any_suffix: dict[str, ReferrerMatch] = field(default_factory=dict)
    click_ids: dict[str, str] = field(default_factory=dict)
    organic_click_ids: frozenset[str] = frozenset()
    paid_mediums: frozenset[str] = frozenset()
    email_mediums: frozenset[str] = frozenset()
    social_mediums: frozenset[str] = frozenset()


# Public suffixes a `name.*` pattern accepts after the name: one or two short labels
# (google.com, google.de, google.co.uk, google.com.au).
_SUFFIX = re.compile(r"^[a-z]{2,6}(\.[a-z]{2,3})?$")


def load_tables(folder: Path) -> Tables:
    """Read both table files of `folder` (missing files fall back to the built-in ones)."""
    referrers_path = folder / REFERRERS_FILE
    campaigns_path = folder / CAMPAIGNS_FILE
    if not referrers_path.exists():
        referrers_path = BUILTIN_DIR / REFERRERS_FILE
    if not campaigns_path.exists():
        campaigns_path = BUILTIN_DIR / CAMPAIGNS_FILE
    referrers = json.loads(referrers_path.read_text(encoding="utf-8"))
    campaigns = json.loads(campaigns_path.read_text(encoding="utf-8"))
    tables = Tables()
    for medium in ("search", "social", "email"):
        for source, entry in referrers.get(medium, {}).items():
            match = ReferrerMatch(medium, source, tuple(entry.get("params", ())))
            for raw_domain in entry["domains"]:
                domain = raw_domain.lower().strip()
                if domain.endswith(".*"):
                    tables.any_suffix[domain[:-2]] = match
                else:
                    tables.exact[domain] = match
    tables.click_ids = {k.lower(): v for k, v in campaigns.get("click_ids", {}).items()}
    tables.organic_click_ids = frozenset(k.lower() for k in campaigns.get("organic_click_ids", []))
    tables.paid_mediums = frozenset(m.lower() for m in campaigns.get("paid_mediums", []))
    tables.email_mediums = frozenset(m.lower() for m in campaigns.get("email_mediums", []))
    tables.social_mediums = frozenset(m.lower() for m in campaigns.get("social_mediums", []))
    return tables


def lookup_host(tables: Tables, host: str) -> ReferrerMatch | None:
    """The table entry for a host: exact domain or a parent domain, or a `name.*` pattern."""
    labels = host.lower().rstrip(".").split(".")
    for start in range(len(labels) - 1):
        candidate = ".".join(labels[start:])
        found = tables.exact.get(candidate)
        if found is not None:
            return found
    for start in range(len(labels) - 1):
        name = labels[start]
        rest = ".".join(labels[start + 1 :])
        found = tables.any_suffix.get(name)
        if found is not None and _SUFFIX.match(rest):
            return found
    return None


def _site(host: str) -> str:
    host = host.lower().rstrip(".")
    return host[4:] if host.startswith("www.") else host


@lru_cache(maxsize=16384)
def truncate_ip(ip: str, mode: IpPrivacy) -> str:
    """Keep, drop, or truncate an IP address (IPv4 to /24, IPv6 to /48)."""
    if mode == "keep" or not ip:
        return ip
    if mode == "drop":
        return ""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return ""
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


@dataclass(frozen=True, slots=True)
class UserAgent:
    """What the user agent parser found."""

    browser: str
    browser_version: str
    os: str
    os_version: str
    device_class: str


_DESKTOP_OS = {"Windows", "Mac OS X", "macOS", "Linux", "Ubuntu", "Fedora", "Chrome OS", "FreeBSD"}
_MOBILE_OS = {"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "HarmonyOS"}
_TABLET_WORDS = ("ipad", "tablet", "kindle", "silk", "playbook", "nexus 7", "nexus 9", "sm-t")


def _version(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


@lru_cache(maxsize=8192)
def parse_user_agent(text: str) -> UserAgent:
    """Browser, OS and device class (desktop, mobile, tablet, bot, other) of a user agent."""
    result = ua_parser.parse(text)
    agent, os_, device = result.user_agent, result.os, result.device
    browser = agent.family if agent else "Other"
    os_family = os_.family if os_ else "Other"
    device_family = device.family if device else "Other"
    lowered = text.lower()
    if device_family == "Spider" or any(w in lowered for w in ("bot", "crawler", "spider")):
        device_class = "bot"
    elif any(word in lowered for word in _TABLET_WORDS) or (
        os_family == "Android" and "mobile" not in lowered
    ):
        device_class = "tablet"
    elif os_family in _MOBILE_OS or "mobile" in lowered:
        device_class = "mobile"
    elif os_family in _DESKTOP_OS:
        device_class = "desktop"
    else:
        device_class = "other"
    return UserAgent(
        browser=browser,
        browser_version=_version(agent.major, agent.minor, agent.patch) if agent else "",
        os=os_family,
        os_version=_version(os_.major, os_.minor, os_.patch) if os_ else "",
        device_class=device_class,
    )


class Enricher:
    """Applies the enrichment tables to events; reloads them when their files change."""

    def __init__(
        self,
        folder: Path | None = None,
        *,
        ip_privacy: IpPrivacy = "truncate",
        reload_seconds: float = 5.0,
    ) -> None:
        self._folder = folder or BUILTIN_DIR
        self._ip_privacy: IpPrivacy = ip_privacy
        self._reload_seconds = reload_seconds
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()
        self.tables = load_tables(self._folder)
        self._referrer_cache: dict[str, ReferrerMatch | None] = {}
        self._query_cache: dict[str, list[tuple[str, str, bool]]] = {}
        self._context_cache: dict[tuple[str, str, str, str], bytes] = {}
        # Load the user agent parser's tables now, not on the first request.
        parse_user_agent("Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0 Safari/537.36")

    def _file_stamp(self) -> tuple[float, ...]:
        stamps = []
        for name in (REFERRERS_FILE, CAMPAIGNS_FILE):
            path = self._folder / name
            stamps.append(path.stat().st_mtime if path.exists() else 0.0)
        return tuple(stamps)

    def reload(self) -> None:
        """Load the tables again now; a broken file keeps the previous tables and logs why."""
        try:
            tables = load_tables(self._folder)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("enrichment tables not reloaded", folder=str(self._folder), error=str(exc))
            return
        with self._lock:
            self.tables = tables
            self._referrer_cache = {}
            self._query_cache = {}
            self._context_cache = {}
        log.info("enrichment tables reloaded", folder=str(self._folder))

    def maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self._reload_seconds:
            return
        self._checked = now
        stamp = self._file_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            self.reload()

    def _host_match(self, host: str) -> ReferrerMatch | None:
        cache = self._referrer_cache
        if host in cache:
            return cache[host]
        found = lookup_host(self.tables, host)
        if len(cache) < 100_000:
            cache[host] = found
        return found

    def enrich(self, event: event_pb2.Event, *, client_ip: str = "") -> None:
        """Fill campaign, referrer and user agent info, and apply the IP privacy setting."""
        fragment = self.fragment(event, client_ip=client_ip)
        if fragment:
            event.MergeFromString(fragment)

    def fragment(self, event: event_pb2.Event, *, client_ip: str = "") -> bytes:
        """What `enrich` adds to an event, as a serialized Event to append to the event's own
        serialization (a parser merges the two, as `enrich` does).

        The pipeline appends it to bytes it has anyway instead of changing and serializing the
        event again. An event whose client sent some of what enrichment fills is enriched in
        place, and its whole context is returned.
        """
        self.maybe_reload()
        context = event.context
        page = context.page
        url = page.url
        properties = event.properties
        if not url and event.type == event_pb2.EVENT_TYPE_PAGE and "url" in properties:
            value = properties["url"]
            url = value if isinstance(value, str) else ""
        referrer = page.referrer
        if not referrer and "referrer" in properties:
            value = properties["referrer"]
            referrer = value if isinstance(value, str) else ""
        search = page.search
        query = search.lstrip("?") if search else ""
        if not query and url:
            query = urlsplit(url).query
        user_agent = context.user_agent[:1024]
        ip = context.ip
        kept = truncate_ip(ip or client_ip, self._ip_privacy) if ip or client_ip else ip
        if (
            context.HasField("campaign")
            or context.HasField("referrer")
            or context.HasField("user_agent_info")
        ):
            # The client sent some of what enrichment fills: work on the event itself. The
            # context holds no repeated field, so appending all of it replaces it exactly.
            self._enrich_context(context, query, referrer, url, user_agent)
            if kept != ip:
                context.ip = kept
            raw = context.SerializeToString()
            return _CONTEXT_TAG + _varint(len(raw)) + raw
        # The common case: what enrichment adds depends only on these four strings, so it is
        # computed once per distinct combination and kept serialized.
        key = (query, referrer, url if referrer else "", user_agent)
        cache = self._context_cache
        fragment = cache.get(key)
        if fragment is None:
            enriched = event_pb2.Event()
            self._enrich_context(enriched.context, query, referrer, url, user_agent)
            fragment = enriched.SerializeToString()
            if len(cache) >= 10_000:
                cache.clear()
            cache[key] = fragment
        if kept != ip:
            # Written even when empty, so that it replaces the IP the client sent.
            raw = kept.encode("utf-8")
            inner = _IP_TAG + _varint(len(raw)) + raw
            fragment += _CONTEXT_TAG + _varint(len(inner)) + inner
        return fragment

    def _enrich_context(
        self,
        context: event_pb2.Context,
        query: str,
        referrer: str,
        page_url: str,
        user_agent: str,
    ) -> None:
        """Campaign, referrer and user agent info of `context` (reads nothing else of it)."""
        self._campaign(context.campaign, query)
        if referrer:
            self._referrer(context, referrer, page_url)
        if user_agent:
            agent = parse_user_agent(user_agent)
            info = context.user_agent_info
            info.browser = agent.browser
            info.browser_version = agent.browser_version
            info.os = agent.os
            info.os_version = agent.os_version
            info.device_class = agent.device_class

    def _query_fields(self, query: str) -> list[tuple[str, str, bool]]:
        """(field or click id, value, is_click_id) of a query string; cached per string."""
        cache = self._query_cache
        found = cache.get(query)
        if found is not None:
            return found
        found = []
        click_ids = self.tables.click_ids
        for key, value in parse_qsl(query, keep_blank_values=False):
            lowered = key.lower()
            target = _UTM_FIELDS.get(lowered)
            if target is not None:
                found.append((target, value[:1024], False))
            elif lowered in click_ids:
                found.append((lowered, value[:1024], True))
        if len(cache) >= 10_000:
            cache.clear()
        cache[query] = found
        return found

    def _campaign(self, campaign: event_pb2.Campaign, query: str) -> None:
        tables = self.tables
        if query:
            for name, value, is_click_id in self._query_fields(query):
                if is_click_id:
                    if name not in campaign.click_ids:
                        campaign.click_ids[name] = value
                elif not getattr(campaign, name):
                    setattr(campaign, name, value)
        paid_click = any(k not in tables.organic_click_ids for k in campaign.click_ids)
        if paid_click or campaign.medium.lower() in tables.paid_mediums:
            campaign.paid = True

    def _referrer(self, context: event_pb2.Context, referrer: str, page_url: str) -> None:
        try:
            parts = urlsplit(referrer)
        except ValueError:
            return
        host = (parts.hostname or "").lower()
        if not host:
            return
        out = context.referrer
        out.host = host
        page_host = ""
        if page_url:
            try:
                page_host = (urlsplit(page_url).hostname or "").lower()
            except ValueError:
                page_host = ""
        match = self._host_match(host)
        if page_host and _site(host) == _site(page_host):
            out.medium, out.source = "internal", _site(host)
        elif match is not None:
            out.medium, out.source = match.medium, match.source
            if match.params and parts.query:
                values = dict(parse_qsl(parts.query))
                for param in match.params:
                    if values.get(param):
                        out.search_term = values[param][:1024]
                        break
        else:
            out.medium, out.source = "unknown", _site(host)
        campaign = context.campaign
        if out.medium != "internal" and campaign.paid:
            out.medium = "paid"
        medium = campaign.medium.lower()
        if out.medium == "unknown" and medium in self.tables.email_mediums:
            out.medium = "email"
        elif out.medium == "unknown" and medium in self.tables.social_mediums:
            out.medium = "social"


def enricher_from_settings(folder: str | None, ip_privacy: IpPrivacy) -> Enricher:
    """The enricher for a service: the configured folder or the built-in tables."""
    return Enricher(Path(folder) if folder else None, ip_privacy=ip_privacy)
