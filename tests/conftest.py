"""Fixtures that find real PostgreSQL and Redis for the tests.

Each is looked for in this order: UPM_TEST_DATABASE_URL / UPM_TEST_REDIS_URL; the usual local
port; a throw-away container through testcontainers where a Docker engine runs. When none is
found the test is skipped on a developer machine, and fails in CI (CI=true): CI must never pass
by skipping what it did not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.engine import make_url

LOCAL_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _missing(what: str) -> None:
    message = f"{what} is not reachable (set UPM_TEST_{what.upper()}_URL)"
    if _in_ci():
        pytest.fail(message + "; CI must not skip it", pytrace=False)
    pytest.skip(message)


def _port_open(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket()) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _docker_available() -> bool:
    return os.path.exists("/var/run/docker.sock") or bool(os.environ.get("DOCKER_HOST"))


def _asyncpg_url(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """An asyncpg SQLAlchemy URL of a PostgreSQL server we may create databases on."""
    url = os.environ.get("UPM_TEST_DATABASE_URL")
    if url:
        yield _asyncpg_url(url)
        return
    if _port_open("127.0.0.1", 5432):
        yield LOCAL_POSTGRES
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver="asyncpg") as container:
            yield container.get_connection_url()
        return
    _missing("database")


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    url = os.environ.get("UPM_TEST_REDIS_URL")
    if url:
        yield url
        return
    if _port_open("127.0.0.1", 6379):
        yield LOCAL_REDIS
        return
    if _docker_available():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7-alpine") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
        return
    _missing("redis")


def _admin(server_url: str, sql: str) -> None:
    """Run one administrative statement (CREATE / DROP DATABASE) outside any test loop."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _admin_async(server_url, sql)).result()


async def _admin_async(server_url: str, sql: str) -> None:
    import asyncpg

    parsed = make_url(server_url)
    conn = await asyncpg.connect(
        host=parsed.host,
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database or "postgres",
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"upm_test_{uuid.uuid4().hex[:16]}"
    _admin(postgres_server_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """A fresh SQLite database file for one test."""
    return f"sqlite+aiosqlite:///{tmp_path}/upm.db"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """A Redis URL whose keys this test may use; the test's keys are deleted afterwards.

    Tests share one Redis: use `redis_prefix` in every key name, so tests running at the same
    time (several processes, several developers) never see each other's keys.
    """
    yield redis_server_url


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    from redis.asyncio import Redis

    from upm_common.redis import delete_matching

    prefix = f"upmtest:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = Redis.from_url(redis_url)
    try:
        await delete_matching(client, f"*{prefix}*")
    finally:
        await client.aclose()


@pytest.fixture(scope="session", autouse=True)
def _route_logs_through_stdlib() -> None:
    """Send structlog through the standard library, so `caplog` sees what services log."""
    from upm_common.logging import configure_logging

    configure_logging("console", "info")
