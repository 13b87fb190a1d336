"""The store's statements on PostgreSQL are planned for each batch's own arguments.

Their array arguments grow and shrink with the batch. A plan PostgreSQL cached while a worker
applied small batches (light load) scanned the whole profiles table for the lock of a large
batch later: bench/profile_apply.py's `burst` measure showed the database working more than
twice as hard per event after light load.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.profile.conftest import effects, make_event, make_store

pytestmark = pytest.mark.postgres


async def test_no_statement_of_the_apply_runs_from_a_cached_generic_plan(pg_url: str) -> None:
    store, _ = await make_store(pg_url)
    try:
        # One connection, so that every batch runs on the same prepared statements.
        async with store.engine.connect() as conn:
            backend = await conn.scalar(text("SELECT pg_backend_pid()"))
        for batch in range(12):
            await store.apply(
                effects(
                    make_event("page", anonymous_id=f"anon-{batch}", name="Home"),
                    make_event(
                        "identify",
                        anonymous_id=f"anon-{batch}",
                        user_id=f"user-{batch}",
                        traits={"email": f"p{batch}@corp.io"},
                    ),
                    # Links this person to the one before: a merge moves rows in every batch.
                    make_event("alias", user_id=f"user-{batch}", previous_id=f"anon-{batch - 1}"),
                )
            )
        async with store.engine.connect() as conn:
            assert await conn.scalar(text("SELECT pg_backend_pid()")) == backend
            custom, generic = (
                await conn.execute(
                    text(
                        "SELECT coalesce(sum(custom_plans), 0), coalesce(sum(generic_plans), 0)"
                        " FROM pg_prepared_statements WHERE cardinality(parameter_types) > 0"
                    )
                )
            ).one()
        # Twelve batches run the apply's statements well past the five custom plans after
        # which PostgreSQL may switch a prepared statement to its generic plan. (A statement
        # without parameters has only the generic plan: those are not counted.)
        assert generic == 0
        assert custom > 12 * 10, custom
    finally:
        await store.engine.dispose()
