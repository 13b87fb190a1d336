"""The orchestrator's data migrations keep every sent message counting."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from upm_common.db import create_engine
from upm_common.migrations import alembic_config, upgrade
from upm_orchestrator.store.sql import SqlFatigueStore

T0 = 1_800_000_000_000


async def test_one_row_per_send_keeps_the_ledger_and_goes_back(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await upgrade(engine, "orchestrator", "0001_orchestrator")
        async with engine.begin() as conn:
            for rid, state in (("p1~a", "confirmed"), ("p1~b", "reserved"), ("p1~c", "released")):
                await conn.execute(
                    text(
                        "INSERT INTO orchestrator_reservations (reservation_id, profile_id, "
                        "state, created_ms, expire_ms, meta) "
                        "VALUES (:r, 'p1', :s, :t, :e, '{}')"
                    ),
                    {"r": rid, "s": state, "t": T0, "e": T0 + 60_000},
                )
            for rid, key in (("p1~a", "any"), ("p1~a", "ch:email"), ("p1~b", "any")):
                await conn.execute(
                    text(
                        "INSERT INTO orchestrator_ledger (profile_id, counter_key, "
                        "reservation_id, sent_ms) VALUES ('p1', :k, :r, :t)"
                    ),
                    {"k": key, "r": rid, "t": T0},
                )
        await upgrade(engine, "orchestrator")
        store = SqlFatigueStore(engine)
        assert await store.count("p1", "any", 0, T0 + 1_000) == 2
        assert await store.count("p1", "ch:email", 0, T0 + 1_000) == 1
        assert await store.count("p1", "any", 0, T0 + 60_000) == 1  # p1~b expired unconfirmed

        async with engine.begin() as conn:
            await conn.run_sync(
                lambda sync: command.downgrade(
                    alembic_config("orchestrator", sync), "0001_orchestrator"
                )
            )
            rows = await conn.execute(
                text(
                    "SELECT reservation_id, counter_key FROM orchestrator_ledger "
                    "ORDER BY reservation_id, counter_key"
                )
            )
            assert [tuple(row) for row in rows] == [
                ("p1~a", "any"),
                ("p1~a", "ch:email"),
                ("p1~b", "any"),
            ]
    finally:
        await engine.dispose()
