"""Erase leaves nothing behind, announces the erased identifiers and blocks re-ingest; export
holds everything."""

from __future__ import annotations

import json

from sqlalchemy import select

from tests.profile.conftest import effects, make_event, make_store
from upm.profile.v1 import profile_service_pb2 as pb
from upm_common.eventlog import PROFILE_CHANGES
from upm_profile.identifiers import IdentifierKey
from upm_profile.store.tables import metadata


async def _seed(store):  # type: ignore[no-untyped-def]
    await store.apply(
        effects(
            make_event(
                "identify", anonymous_id="er-a", traits={"email": "eve@corp.io", "plan": "pro"}
            ),
            make_event("identify", user_id="er-u", device_id="er-d", minutes=1),
            make_event(
                "track",
                user_id="er-u",
                event="Order Completed",
                properties={"order_id": "o1", "revenue": 5, "products": [{"sku": "s1"}]},
                minutes=2,
            ),
            make_event(
                "identify",
                user_id="er-u",
                anonymous_id="er-a",
                traits={"consent": {"sms": True}},
                minutes=3,
            ),
        )
    )
    pid = await store.owner_of(IdentifierKey("user_id", "er-u"))
    assert pid is not None
    return pid


async def test_erase_leaves_nothing_and_blocks_reingest(db_url: str) -> None:
    store, log = await make_store(db_url)
    try:
        pid = await _seed(store)
        merged = (await store.load_profiles([pid]))[pid].merged_ids
        assert merged
        result = await store.erase(pid, actor="dpo", reason="ticket 7")
        assert {str(k) for k in result.identifiers} == {
            "anonymous_id:er-a",
            "email:eve@corp.io",
            "user_id:er-u",
            "device_id:er-d",
        }
        assert result.event_count == 4
        needles = ["er-a", "er-u", "er-d", "eve@corp.io", pid, *merged]
        async with store.engine.connect() as conn:
            for table in metadata.sorted_tables:
                if table.name in ("profile_audit_log", "profile_suppressions"):
                    continue
                for row in await conn.execute(select(table)):
                    text = json.dumps([str(v) for v in row])
                    assert not any(n in text for n in needles), (table.name, row)
            audit = (await conn.execute(select(metadata.tables["profile_audit_log"]))).all()
        assert [a.action for a in audit] == ["erase"]
        assert not any(n in json.dumps(audit[0].details) for n in needles[:4])

        changes = [
            pb.ProfileChange.FromString(d.payload)
            for d in await log.claim(PROFILE_CHANGES, "test", "t", 1000)
        ]
        erased = [c for c in changes if c.type == pb.PROFILE_CHANGE_TYPE_ERASED]
        assert len(erased) == 1
        assert erased[0].profile_id == pid
        assert {i.value for i in erased[0].identifiers} == {"er-a", "er-u", "er-d", "eve@corp.io"}

        again = await store.apply(
            effects(make_event("track", user_id="er-u", event="Back", minutes=9))
        )
        assert (again.applied, again.suppressed) == (0, 1)
        assert await store.owner_of(IdentifierKey("user_id", "er-u")) is None
        assert await store.resolve(pid) is None
    finally:
        await store.engine.dispose()


async def test_export_holds_everything(db_url: str) -> None:
    store, _ = await make_store(db_url)
    try:
        pid = await _seed(store)
        document = await store.export(pid)
        json.dumps(document)
        assert document["profile"]["id"] == pid
        assert {(i["type"], i["value"]) for i in document["identifiers"]} == {
            ("anonymous_id", "er-a"),
            ("email", "eve@corp.io"),
            ("user_id", "er-u"),
            ("device_id", "er-d"),
        }
        assert len(document["events"]) == 4
        assert {t["name"] for t in document["traits"]} >= {"plan", "email", "consent"}
        assert document["trait_history"]
        assert document["consents"][0]["channel"] == "sms"
        assert document["merges"] and document["merges"][0]["kind"] == "merge"
        assert document["identity_edges"]
        assert document["purchases"] == {"count": 1, "total_revenue": 5.0}
        assert {c["name"] for c in document["event_counts"]} == {"Order Completed"}
        assert document["event_daily"][0]["revenue"] == 5.0
    finally:
        await store.engine.dispose()
