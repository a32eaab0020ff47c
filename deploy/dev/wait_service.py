"""Wait until RabbitMQ or PostgreSQL answers a real protocol handshake.

Usage::

    wait_service.py amqp URL [--timeout S] [--quiet]
    wait_service.py postgres URL [--timeout S] [--quiet]
    wait_service.py is-local URL      # exit 0 when URL points at this machine

A TCP connect is not enough: RabbitMQ accepts connections on 5672 before its
virtual hosts are ready, so this logs in (AMQP) or runs ``SELECT 1`` (SQL).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from urllib.parse import urlsplit

import aio_pika
import asyncpg

_LOCAL = {"127.0.0.1", "localhost", "::1", ""}


async def _amqp(url: str) -> None:
    connection = await aio_pika.connect(url, timeout=5)
    await connection.close()


async def _postgres(url: str) -> None:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        await connection.fetchval("SELECT 1")
    finally:
        await connection.close()


async def _wait(kind: str, url: str, wait_s: float, quiet: bool) -> bool:
    probe = _amqp if kind == "amqp" else _postgres
    deadline = time.monotonic() + wait_s
    last = ""
    while True:
        try:
            await probe(url)
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = f"{type(exc).__name__}: {exc}"
        else:
            return True
        if time.monotonic() >= deadline:
            if not quiet:
                print(f"{kind} at {urlsplit(url).hostname}: {last}", file=sys.stderr)  # noqa: T201
            return False
        await asyncio.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["amqp", "postgres", "is-local"])
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    # aiormq logs every refused connection attempt; the last error is printed once below.
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if args.kind == "is-local":
        return 0 if (urlsplit(args.url).hostname or "") in _LOCAL else 1
    return 0 if asyncio.run(_wait(args.kind, args.url, args.timeout, args.quiet)) else 1


if __name__ == "__main__":
    sys.exit(main())
