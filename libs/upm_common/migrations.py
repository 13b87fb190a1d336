"""Alembic migrations, one script folder and one version table per component.

Each component (the event log and each service) owns its tables and migrates them on its own;
`upgrade(url, component)` runs one, `upgrade_all(url)` runs every component in order.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, MetaData, pool
from sqlalchemy.ext.asyncio import AsyncEngine

from upm_common.db import create_engine

COMPONENT_PACKAGES = {
    "eventlog": "upm_common.eventlog",
    "ingest": "upm_ingest",
    "profile": "upm_profile",
    "segment": "upm_segment",
    "orchestrator": "upm_orchestrator",
}


def script_location(component: str) -> Path:
    """The migrations/ folder of a component's package."""
    try:
        package = COMPONENT_PACKAGES[component]
    except KeyError:
        raise ValueError(f"unknown migration component {component!r}") from None
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {package} of component {component!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "migrations"


def available_components() -> list[str]:
    """The components whose migrations exist in this installation, in dependency order."""
    found = []
    for component in COMPONENT_PACKAGES:
        try:
            if (script_location(component) / "env.py").exists():
                found.append(component)
        except ValueError:
            continue
    return found


def alembic_config(component: str, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location(component)))
    config.attributes["component"] = component
    if connection is not None:
        config.attributes["connection"] = connection
    return config


async def upgrade(engine_or_url: AsyncEngine | str, component: str, revision: str = "head") -> None:
    """Bring one component's tables to `revision`."""
    await _run(
        engine_or_url, lambda conn: command.upgrade(alembic_config(component, conn), revision)
    )


async def upgrade_all(engine_or_url: AsyncEngine | str) -> list[str]:
    """Bring every installed component to head; returns the components migrated."""
    components = available_components()
    for component in components:
        await upgrade(engine_or_url, component)
    return components


async def _run(engine_or_url: AsyncEngine | str, action: Any) -> None:
    owned = isinstance(engine_or_url, str)
    engine = create_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    try:
        async with engine.begin() as conn:
            await conn.run_sync(action)
    finally:
        if owned:
            await engine.dispose()


def run_env(*, target_metadata: MetaData, component: str) -> None:
    """The body of every component's migrations/env.py."""
    version_table = f"alembic_version_{component}"
    connection: Connection | None = context.config.attributes.get("connection")
    if connection is None:
        # Run from the alembic command line: `sqlalchemy.url` comes from the ini or -x url=...
        from sqlalchemy import create_engine as create_sync_engine

        url = context.get_x_argument(as_dictionary=True).get(
            "url"
        ) or context.config.get_main_option("sqlalchemy.url")
        if not url:
            raise SystemExit("give the database with -x url=... (a synchronous driver URL)")
        engine = create_sync_engine(url, poolclass=pool.NullPool)
        with engine.begin() as conn:
            _configure_and_run(conn, target_metadata, version_table)
        return
    _configure_and_run(connection, target_metadata, version_table)


def _configure_and_run(connection: Connection, metadata: MetaData, version_table: str) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=version_table,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
