"""Alembic environment of the broker's store: upgrades SQLite or PostgreSQL over the async drivers.

Run by ``broker.store.migrate`` in a worker thread with no event loop, so it
starts its own with ``asyncio.run``; it also works from the ``alembic`` command
line with ``sqlalchemy.url`` set. The URL comes from ``config.attributes["url"]``
first. On PostgreSQL the upgrade holds a transaction-level advisory lock, so
several broker instances starting at once migrate one after the other. It
must never log the URL: it may carry a password.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection

from broker.store import METADATA, MIGRATION_LOCK_KEY, build_engine


def _url() -> str:
    url = context.config.attributes.get("url") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: set config.attributes['url'] or sqlalchemy.url")
    return str(url)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=METADATA,
        # SQLite alters a table by copying it; later revisions need batch mode there.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        context.run_migrations()


async def _run_online(url: str) -> None:
    engine = build_engine(url, pooled=False)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=METADATA, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online(_url()))
