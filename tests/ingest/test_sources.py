"""Write-key lookups under load: a burst of requests costs one store query, and a busy key is
refreshed before its cache entry expires, so requests never queue behind the store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from upm_ingest import sources
from upm_ingest.sources import Limits, SourceRegistry, hash_write_key
from upm_ingest.store import SourceLimitOverrides, SourceRecord

KEY = "upmwk_test"
RECORD = SourceRecord(
    source_id="src_test",
    display_name="test",
    write_key_prefix=KEY[:12],
    limits=SourceLimitOverrides(),
    created_time=datetime(2026, 1, 1, tzinfo=UTC),
)


class SlowStore:
    """Answers key lookups only when the test lets it, counting them."""

    def __init__(self) -> None:
        self.lookups = 0
        self.answer = asyncio.Event()

    async def get_by_key_hash(self, write_key_hash: str) -> SourceRecord | None:
        assert write_key_hash == hash_write_key(KEY)
        self.lookups += 1
        await self.answer.wait()
        return RECORD


async def test_a_burst_shares_one_lookup_and_busy_keys_refresh_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(sources.time, "monotonic", lambda: now[0])
    store = SlowStore()
    registry = SourceRegistry(store, Limits(1, 1, 1, 1.0, 1), cache_seconds=5.0)  # type: ignore[arg-type]

    burst = [asyncio.ensure_future(registry.authenticate(KEY)) for _ in range(50)]
    await asyncio.sleep(0)
    store.answer.set()
    assert {s.source_id for s in await asyncio.gather(*burst)} == {"src_test"}
    assert store.lookups == 1

    # Past the refresh point but before expiry: answered from the cache at once, and one
    # background lookup renews the entry.
    store.answer.clear()
    now[0] += 4.5
    answers = await asyncio.gather(*(registry.authenticate(KEY) for _ in range(20)))
    assert {s.source_id for s in answers} == {"src_test"} and store.lookups == 2
    store.answer.set()
    for _ in range(5):  # let the background lookup finish
        await asyncio.sleep(0)
    store.answer.clear()  # from now on a lookup would block
    now[0] += 3.0  # 7.5 s after the first lookup, 3 s after the refresh: still cached
    source = await asyncio.wait_for(registry.authenticate(KEY), timeout=1)
    assert source.source_id == "src_test" and store.lookups == 2
