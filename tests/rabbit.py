"""Fixtures for tests that need a corner of the real RabbitMQ to themselves: a scratch vhost.

A pytest plugin: load it with ``pytest_plugins = ["tests.rabbit"]`` in the
root conftest, or ``-p tests.rabbit`` on the command line. Names that
RabbitMQ keeps per vhost (exchanges, queues, permissions) are isolated by a
vhost with a random name; users are cluster-wide, so a test that makes users
gives them random names and deletes them itself.

``rabbitmqctl`` must work where the tests run (root, or RabbitMQ's Erlang
cookie), or ``BACKA_RABBITMQCTL`` must name a command that does; each call
takes most of a second, so fixtures here make as few as they can.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Final
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import pytest

from broker.provision import RabbitmqctlError, RabbitmqctlRunner

__all__ = [
    "ADMIN_PASSWORD",
    "ADMIN_USER",
    "AMQP_URL",
    "amqp_url_for",
    "rabbitmqctl",
    "random_vhost",
    "scratch_amqp",
    "scratch_vhost",
    "scratch_vhost_named",
]

#: The RabbitMQ the tests use (the same variable and default as tests/conftest.py).
AMQP_URL: Final = os.environ.get("BACKA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
_PARTS = urlsplit(AMQP_URL)
#: The administrator of BACKA_AMQP_URL (guest by default): gets full rights on each scratch vhost.
ADMIN_USER: Final = _PARTS.username or "guest"
ADMIN_PASSWORD: Final = _PARTS.password or "guest"

_HOW_TO_START = (
    "run deploy/dev/ensure-rabbitmq.sh (or `make test`), and run the tests as root or "
    "with RabbitMQ's Erlang cookie, or set BACKA_RABBITMQCTL to a command that works"
)


def amqp_url_for(vhost: str, user: str = ADMIN_USER, password: str = ADMIN_PASSWORD) -> str:
    """The URL of BACKA_AMQP_URL's server for ``vhost`` as ``user``, every part URL-encoded."""
    host = _PARTS.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = _PARTS.port or (5671 if _PARTS.scheme == "amqps" else 5672)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}"
    return urlunsplit((_PARTS.scheme, netloc, "/" + quote(vhost, safe=""), _PARTS.query, ""))


def random_vhost() -> str:
    """A vhost name no other test (or test run) uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


@contextmanager
def scratch_vhost_named(runner: RabbitmqctlRunner, vhost: str) -> Iterator[str]:
    """Create ``vhost`` with full rights for the administrator; delete it (and all in it) after."""
    try:
        runner.run(["add_vhost", vhost])
        runner.run(["set_permissions", "-p", vhost, ADMIN_USER, ".*", ".*", ".*"])
    except RabbitmqctlError as exc:
        pytest.fail(f"cannot create scratch vhost {vhost!r}: {exc}; {_HOW_TO_START}", pytrace=False)
    try:
        yield vhost
    finally:
        runner.run(["delete_vhost", vhost])


@pytest.fixture(scope="session")
def rabbitmqctl() -> RabbitmqctlRunner:
    """The real ``rabbitmqctl`` (or the command in BACKA_RABBITMQCTL)."""
    return RabbitmqctlRunner(timeout=60.0)


@pytest.fixture(scope="module")
def scratch_vhost(rabbitmqctl: RabbitmqctlRunner) -> Iterator[str]:
    """A vhost of this test module's own, with full rights for the administrator; deleted after."""
    with scratch_vhost_named(rabbitmqctl, random_vhost()) as vhost:
        yield vhost


@pytest.fixture
async def scratch_amqp(scratch_vhost: str) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    """A connection to the scratch vhost as the administrator, closed after the test."""
    connection = await aio_pika.connect(amqp_url_for(scratch_vhost), timeout=10)
    try:
        yield connection
    finally:
        await connection.close()
