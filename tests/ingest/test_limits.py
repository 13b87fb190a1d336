"""Each limit at its bound and just over it; the token bucket; property tests of bad input."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ingest.conftest import Running, start_ingest
from upm_ingest.events import FieldError, ShapeLimits, from_segment_json
from upm_ingest.ratelimit import TokenBuckets
from upm_ingest.store import SourceLimitOverrides


@pytest.fixture
async def small(sqlite_url: str) -> AsyncIterator[Running]:
    """Ingest with small limits, so bounds are cheap to reach."""
    async for running in start_ingest(
        sqlite_url,
        max_event_bytes=2048,
        max_batch_bytes=8192,
        max_batch_events=5,
        max_compressed_bytes=16384,
        max_json_depth=5,
        max_string_length=100,
        rate_per_second=1000,
        rate_burst=1000,
    ):
        yield running


async def test_event_size_at_and_over_the_bound(
    small: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    # max_string_length is 100, so pad with many short strings instead of one long one.
    def compact(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def event_of(size: int) -> dict[str, Any]:
        event = make_event("track", properties={})
        i = 0
        while len(compact(event)) < size - 40:
            event["properties"][f"k{i}"] = "v" * 20
            i += 1
        event["properties"]["z"] = ""
        event["properties"]["z"] = "x" * (size - len(compact(event)))
        assert len(compact(event)) == size
        return event

    status, answer, _ = await small.post("/v1/track", raw=compact(event_of(2048)))
    assert status == 200, answer
    status, answer, _ = await small.post("/v1/track", raw=compact(event_of(2049)))
    assert status == 400 and "2048" in answer["message"]
    status, answer, _ = await small.post(
        "/v1/batch", raw=compact({"batch": [event_of(2048), event_of(2049)]})
    )
    assert status == 200 and answer["accepted"] == 1
    assert answer["rejected"][0]["reason"].startswith("the event exceeds")


async def test_batch_event_count_at_and_over_the_bound(
    small: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    status, answer, _ = await small.post("/v1/batch", {"batch": [make_event() for _ in range(5)]})
    assert status == 200 and answer["accepted"] == 5
    status, answer, _ = await small.post("/v1/batch", {"batch": [make_event() for _ in range(6)]})
    assert status == 400 and answer["field"] == "batch"


async def test_batch_size_at_and_over_the_bound(small: Running) -> None:
    def batch_of(size: int) -> bytes:
        body = {"batch": [], "pad": ""}
        body["pad"] = "x" * (size - len(json.dumps(body)))
        raw = json.dumps(body).encode()
        assert len(raw) == size
        return raw

    status, _, _ = await small.post("/v1/batch", raw=batch_of(8192))
    assert status == 200
    status, answer, _ = await small.post("/v1/batch", raw=batch_of(8193))
    assert status == 400 and "8192" in answer["message"]


async def test_request_body_over_the_compressed_cap(small: Running) -> None:
    status, answer, _ = await small.post("/v1/batch", raw=b" " * 16385)
    assert status == 400 and "16384" in answer["message"]


async def test_depth_at_and_over_the_bound(
    small: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    # Objects and lists count: the event is level 1, properties level 2, three more reach 5.
    ok = make_event(properties={"a": {"b": {"c": {"d": 1}}}})
    status, answer, _ = await small.post("/v1/track", ok)
    assert status == 200, answer
    deep = make_event(properties={"a": {"b": {"c": {"d": [1]}}}})
    status, answer, _ = await small.post("/v1/track", deep)
    assert status == 400 and answer["field"] == "properties.a.b.c.d"


async def test_string_length_at_and_over_the_bound(
    small: Running, make_event: Callable[..., dict[str, Any]]
) -> None:
    status, _, _ = await small.post("/v1/track", make_event(properties={"s": "x" * 100}))
    assert status == 200
    status, answer, _ = await small.post("/v1/track", make_event(properties={"s": "x" * 101}))
    assert status == 400 and answer["field"] == "properties.s"


async def test_rate_limit_answers_429_with_retry_after(
    sqlite_url: str, make_event: Callable[..., dict[str, Any]]
) -> None:
    async for running in start_ingest(sqlite_url):
        _record, key = await running.app.registry.create(
            "slow", SourceLimitOverrides(rate_per_second=1, burst=3)
        )
        statuses = []
        for _ in range(4):
            status, answer, headers = await running.post("/v1/track", make_event(), write_key=key)
            statuses.append(status)
        assert statuses == [200, 200, 200, 429]
        assert answer["code"] == "RESOURCE_EXHAUSTED" and headers["Retry-After"] == "1"
        # Another source is not affected.
        status, _, _ = await running.post("/v1/track", make_event())
        assert status == 200


def test_token_bucket_refills_at_the_rate() -> None:
    now = [0.0]
    buckets = TokenBuckets(clock=lambda: now[0])
    assert buckets.take("k", 10, rate=10, burst=10) == 0
    wait = buckets.take("k", 5, rate=10, burst=10)
    assert wait == pytest.approx(0.5)
    now[0] = 0.5
    assert buckets.take("k", 5, rate=10, burst=10) == 0
    # A request bigger than the burst passes from a full bucket and leaves a debt.
    now[0] = 10.0
    assert buckets.take("k", 25, rate=10, burst=10) == 0
    assert buckets.take("k", 1, rate=10, burst=10) == pytest.approx(1.6)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_arbitrary_json_objects_either_parse_or_fail_with_a_field(data: dict[str, Any]) -> None:
    limits = ShapeLimits(max_depth=6, max_string_length=50)
    try:
        event, _ = from_segment_json(data, implied_type="track", limits=limits)
    except FieldError as error:
        assert isinstance(error.field, str) and error.reason
    else:
        assert event.type != 0


@settings(max_examples=100, deadline=None)
@given(depth=st.integers(min_value=1, max_value=60))
def test_any_nesting_depth_is_bounded(depth: int) -> None:
    value: Any = 1
    for _ in range(depth):
        value = {"n": value}
    limits = ShapeLimits(max_depth=10, max_string_length=50)
    event = {"type": "track", "event": "x", "anonymousId": "a", "properties": value}
    if depth + 1 <= 10:
        from_segment_json(event, implied_type=None, limits=limits)
    else:
        with pytest.raises(FieldError, match="nested deeper"):
            from_segment_json(event, implied_type=None, limits=limits)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=5000).map(lambda s: json.dumps({"type": "track", "event": s}).encode()),
        st.builds(
            lambda junk, n: json.dumps(
                {"anonymousId": "a", "event": "e", "properties": {"s": "y" * n, "j": junk}}
            ).encode(),
            json_values,
            st.integers(min_value=0, max_value=20_000),
        ),
    )
)
async def test_the_collector_never_fails_with_500_on_any_body(
    small_app: Running, body: bytes
) -> None:
    status, answer, _ = await small_app.post("/v1/track", raw=body)
    assert status in (200, 400), answer
    assert isinstance(answer, dict)
    if status == 400:
        assert answer["code"] == "INVALID_ARGUMENT" and answer["message"]


@pytest.fixture
async def small_app(sqlite_url: str) -> AsyncIterator[Running]:
    async for running in start_ingest(
        sqlite_url, max_string_length=1000, rate_per_second=1e6, rate_burst=1_000_000
    ):
        yield running
