"""Database fixtures: a fresh, empty SQLite file or PostgreSQL database per test.

``database_url`` runs a test on both backends (ids ``sqlite`` and ``postgres``;
the PostgreSQL one is marked ``postgres``). PostgreSQL is the real server at
BACKA_TEST_PG_URL: each test gets its own database with a random name, created
before and dropped (with force) after, so tests never share state. The fixture
waits until the server answers and fails with a clear message if it does not
(deploy/dev/ensure-postgres.sh starts it). Nothing here ever writes content,
keys or personnummer: test rows are made-up metadata.

Enable with ``pytest_plugins = ["tests.dbs"]`` in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from broker.store import SqlStore, create_store, migrate

PG_URL = os.environ.get("BACKA_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SERVICE_WAIT_S = 60.0

_pg_ready = False


def _libpq_url(url: str) -> str:
    """The URL as asyncpg's ``connect`` takes it (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _wait_for_postgres(url: str) -> None:
    global _pg_ready  # noqa: PLW0603 - waited for once per test session, not per test
    if _pg_ready:
        return
    deadline = time.monotonic() + SERVICE_WAIT_S
    while True:
        try:
            connection = await asyncpg.connect(url, timeout=5)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"PostgreSQL does not answer at {make_url(url).host} after "
                    f"{SERVICE_WAIT_S:.0f} s ({type(exc).__name__}); run "
                    "deploy/dev/ensure-postgres.sh or `make test`, which starts it.",
                    pytrace=False,
                )
            await asyncio.sleep(1)
        else:
            try:
                await connection.fetchval("SELECT 1")
            finally:
                await connection.close()
            _pg_ready = True
            return


async def _admin(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The SQLAlchemy URL of a fresh, empty database: a SQLite file, or a new PostgreSQL one."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'broker.db'}"
        return
    async with fresh_postgres_database() as url:
        yield url


@contextlib.asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database (its SQLAlchemy URL), dropped afterwards."""
    admin = _libpq_url(PG_URL)
    await _wait_for_postgres(admin)
    name = f"backa_test_{uuid.uuid4().hex}"
    await _admin(admin, f'CREATE DATABASE "{name}"')
    try:
        yield (
            make_url(PG_URL)
            .set(drivername="postgresql+asyncpg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        await _admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    """A migrated ``SqlStore`` on ``database_url``, closed afterwards."""
    await migrate(database_url)
    sql_store = create_store(database_url)
    try:
        yield sql_store
    finally:
        await sql_store.close()
