"""Session fixtures for the real services the integration tests name.

RabbitMQ and PostgreSQL are real in every test that uses these fixtures: the
fixture waits until the service answers a real handshake (``make test`` starts
them first, see deploy/dev/ensure-*.sh) and fails with a clear message if it
does not. Each test gets its own random queue names.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

pytest_plugins = [
    "tests.rabbit",
    "tests.dbs",
    "tests.browser",
    "tests.adapter_harness",
    "tests.demo_run",
]

AMQP_URL = os.environ.get("BACKA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
SERVICE_WAIT_S = 60.0


async def _wait_for_amqp(url: str) -> None:
    deadline = time.monotonic() + SERVICE_WAIT_S
    while True:
        try:
            connection = await aio_pika.connect(url, timeout=5)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"RabbitMQ does not answer at {url} after {SERVICE_WAIT_S:.0f} s ({exc!r}); "
                    "run deploy/dev/ensure-rabbitmq.sh or `make test`, which starts it.",
                    pytrace=False,
                )
            await asyncio.sleep(1)
        else:
            await connection.close()
            return


@pytest.fixture
async def amqp() -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    """A real connection to the RabbitMQ at BACKA_AMQP_URL."""
    await _wait_for_amqp(AMQP_URL)
    connection = await aio_pika.connect_robust(AMQP_URL)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def unique_name() -> str:
    """A random name for a queue or exchange, so tests never share state."""
    return f"test.{uuid.uuid4().hex[:12]}"
