"""A deterministic, seeded population for the segment benchmark: profiles with traits, consents,
identifiers and events, plus the event counts and daily buckets the profile service maintains.

The same seed and size always give the same rows (ids, values and times are functions of the
seed and the row number; times are relative to the fixed `NOW`). Rows come out in chunks of
tuples in the read model's column order, ready for PostgreSQL COPY or SQL bulk inserts.
`python -m bench.segment_datagen --profiles 1000` prints a summary.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
CREATED = datetime(2025, 1, 1, tzinfo=UTC)
HISTORY_SECONDS = 120 * 86_400

PROFILE_COLUMNS = ("id", "created_time", "updated_time", "merged_into", "timezone")
TRAIT_COLUMNS = (
    "profile_id", "name", "value", "value_type", "num_value", "text_value", "bool_value",
    "time_value", "updated_time", "source", "event_id",
)  # fmt: skip
CONSENT_COLUMNS = ("profile_id", "channel", "purpose", "status", "updated_time", "source")
IDENTIFIER_COLUMNS = ("type", "value", "profile_id", "created_time")
EVENT_COLUMNS = (
    "id", "profile_id", "type", "name", "event_time", "received_time", "properties", "context",
)  # fmt: skip
COUNT_COLUMNS = ("profile_id", "name", "count", "first_time", "last_time")
DAILY_COLUMNS = ("profile_id", "name", "day", "count", "revenue")

# (name, type, weight): about 10 events per profile on average.
EVENT_MIX = (
    ("Page Viewed", "page", 45),
    ("Product Viewed", "track", 20),
    ("Creative Viewed", "track", 12),
    ("Email Opened", "track", 13),
    ("Order Completed", "track", 10),
)
PLACEMENTS = ("homepage", "homepage", "category", "footer")
CREATIVES = ("new-product", "spring-sale", "brand")
PATHS = ("/", "/products/1", "/products/2", "/cart", "/about")
PLANS = ("free", "silver", "gold")
ZONES = ("Europe/Paris", "America/New_York", "Asia/Tokyo", None)


@dataclass
class Chunk:
    """One chunk of rows per read-model table."""

    profiles: list[tuple[Any, ...]] = field(default_factory=list)
    traits: list[tuple[Any, ...]] = field(default_factory=list)
    consents: list[tuple[Any, ...]] = field(default_factory=list)
    identifiers: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    event_counts: list[tuple[Any, ...]] = field(default_factory=list)
    event_daily: list[tuple[Any, ...]] = field(default_factory=list)


def profile_id(index: int) -> str:
    return f"{index:032x}"


def _trait(pid: str, name: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, bool):
        typed = ("boolean", None, None, value, None)
    elif isinstance(value, int | float):
        typed = ("number", float(value), None, None, None)
    else:
        typed = ("string", None, value, None, None)
    return (pid, name, json.dumps(value), *typed, CREATED, "bench", "")


def generate(
    profiles: int, *, seed: int = 7, chunk_size: int = 20_000, json_text: bool = True
) -> Iterator[Chunk]:
    """Chunks of rows for `profiles` profiles. JSON columns are JSON text when `json_text`
    (PostgreSQL COPY), else Python objects (SQLAlchemy inserts)."""
    names = [name for name, _, _ in EVENT_MIX]
    types = {name: kind for name, kind, _ in EVENT_MIX}
    weights = [weight for _, _, weight in EVENT_MIX]
    empty_context: Any = "{}" if json_text else {}
    for start in range(0, profiles, chunk_size):
        chunk = Chunk()
        for index in range(start, min(start + chunk_size, profiles)):
            rng = random.Random(seed * 1_000_003 + index)
            pid = profile_id(index)
            chunk.profiles.append((pid, CREATED, CREATED, None, ZONES[index % len(ZONES)]))
            chunk.traits.append(_trait(pid, "newsletter", rng.random() < 0.45))
            chunk.traits.append(_trait(pid, "plan", PLANS[rng.randrange(3)]))
            chunk.traits.append(_trait(pid, "age", rng.randint(18, 80)))
            for channel, share in (("email", 0.6), ("sms", 0.35)):
                roll = rng.random()
                if roll < share:
                    status = "subscribed"
                elif roll < share + 0.2:
                    status = "unsubscribed"
                else:
                    continue
                chunk.consents.append((pid, channel, "marketing", status, CREATED, "bench"))
            if rng.random() < 0.7:
                chunk.identifiers.append(("email", f"{pid}@example.org", pid, CREATED))
            if rng.random() < 0.4:
                chunk.identifiers.append(("phone", f"+1555{index:09d}", pid, CREATED))
            chunk.identifiers.append(("anonymous_id", f"anon-{pid}", pid, CREATED))
            count = rng.randint(0, 20)
            seen: dict[str, list[datetime]] = {}
            daily: dict[tuple[str, date], list[float]] = {}
            for number in range(count):
                name = rng.choices(names, weights)[0]
                moment = NOW - timedelta(seconds=rng.randrange(HISTORY_SECONDS))
                revenue = 0.0
                if name == "Creative Viewed":
                    props: dict[str, Any] = {
                        "placement": PLACEMENTS[rng.randrange(4)],
                        "creative": CREATIVES[rng.randrange(3)],
                    }
                elif name == "Order Completed":
                    revenue = round(rng.uniform(5, 250), 2)
                    props = {"revenue": revenue, "currency": "USD", "order_id": f"{pid}-{number}"}
                elif name == "Page Viewed":
                    props = {"path": PATHS[rng.randrange(5)]}
                else:
                    props = {"channel": "email"} if name == "Email Opened" else {"sku": "X1"}
                chunk.events.append(
                    (
                        f"{pid}-{number}",
                        pid,
                        types[name],
                        name,
                        moment,
                        moment,
                        json.dumps(props) if json_text else props,
                        empty_context,
                    )
                )
                seen.setdefault(name, []).append(moment)
                bucket = daily.setdefault((name, moment.date()), [0, 0.0])
                bucket[0] += 1
                bucket[1] += revenue
            for name, times in seen.items():
                chunk.event_counts.append((pid, name, len(times), min(times), max(times)))
            for (name, day), (number, revenue) in daily.items():
                chunk.event_daily.append((pid, name, day, int(number), revenue))
        yield chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    totals: dict[str, int] = {}
    for chunk in generate(args.profiles, seed=args.seed):
        for key, rows in vars(chunk).items():
            totals[key] = totals.get(key, 0) + len(rows)
    print(json.dumps(totals, indent=2))


if __name__ == "__main__":
    main()
