"""Database engines and the column types every service's tables use.

One database holds every service's tables (prefixed by owner). SQLite is the embedded default;
PostgreSQL (asyncpg) is the engine at scale. Both go through SQLAlchemy's asyncio engine.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, event, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator, TypeEngine

SQLITE_BUSY_TIMEOUT_MS = 30_000


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored in UTC.

    PostgreSQL keeps it as timestamptz. SQLite has no time zones, so the value is stored as naive
    UTC text; every value is normalised the same way, so text order is time order.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: upm stores only aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JsonType: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")
"""JSON documents: JSONB on PostgreSQL (indexable), JSON text on SQLite."""


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    """An asyncio engine for `url`; SQLite is set up for one writer at a time across tasks."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )
        _configure_sqlite(engine)
        return engine
    return create_async_engine(
        url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    # Every transaction starts with BEGIN IMMEDIATE: SQLite then queues writers on the busy
    # timeout instead of failing a read transaction that later tries to write (SQLITE_BUSY).
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


_PER_CALL_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"


async def driver_connection(conn: AsyncConnection, *, plan_for_arguments: bool = False) -> Any:
    """The driver's own connection under `conn` (asyncpg on PostgreSQL), inside the
    transaction of `conn`: hot paths send array statements and COPY straight to it.

    With `plan_for_arguments`, the rest of the transaction's statements are planned for the
    arguments of each call. For tables that grow from nearly empty within seconds (queues, a
    worker's own tables) and for statements whose arrays follow the batch: a cached generic
    plan made while they were small compares every row with every id of an array argument, and
    stays that slow once they are large. Planning each call costs a few milliseconds. When the
    transaction has not begun yet, that one statement begins it."""
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    if getattr(raw.dbapi_connection, "_transaction", True) is None:
        # SQLAlchemy's asyncpg adapter begins its transaction on the first statement it runs.
        await conn.execute(text(_PER_CALL_PLANS if plan_for_arguments else "SELECT 1"))
    elif plan_for_arguments:
        await driver.execute(_PER_CALL_PLANS)
    return driver
