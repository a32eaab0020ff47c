"""keys.transport: one setting naming several RabbitMQ nodes, and failover between them.

The failover tests use the real RabbitMQ twice over: once through a TCP proxy
the test can cut or kill (a node that fails), once directly (a node that
stays). The cluster itself is exercised by tests/test_cluster.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aio_pika
import pytest
from pydantic import SecretStr, ValidationError

from broker.settings import BrokerSettings
from keys import transport
from keys.transport import AmqpUrlError, FailoverConnection, split_urls, with_credentials
from tests.rabbit import AMQP_URL
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.rabbitmq

_TARGET = urlsplit(AMQP_URL)
#: A port nothing listens on (the discard port; refused on this machine).
DEAD = "amqp://guest:guest@127.0.0.1:9/"


def test_a_setting_names_one_node_or_several() -> None:
    assert split_urls("amqp://a:b@mq1:5672/backa") == ["amqp://a:b@mq1:5672/backa"]
    assert split_urls(" amqp://mq1/x, amqps://mq2:5671/x\namqp://mq3/x ") == [
        "amqp://mq1/x",
        "amqps://mq2:5671/x",
        "amqp://mq3/x",
    ]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "no RabbitMQ URL given"),
        (" , ", "no RabbitMQ URL given"),
        ("amqp://mq1/x,http://mq2/x", "RabbitMQ URL number 2 does not start with amqp://"),
    ],
)
def test_a_bad_setting_says_which_url(setting: str, message: str) -> None:
    with pytest.raises(AmqpUrlError, match=message):
        split_urls(setting)


def test_credentials_go_into_every_nodes_url() -> None:
    setting = "amqps://old:pw@mq1:5671/backa,amqps://mq2:5671/backa"
    assert with_credentials(setting, "skola", "s3cret") == (
        "amqps://skola:s3cret@mq1:5671/backa,amqps://skola:s3cret@mq2:5671/backa"
    )
    assert transport.describe(setting) == "mq1:5671,mq2:5671"


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy(_TARGET.hostname or "127.0.0.1", _TARGET.port or 5672).start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def _round_trip(connection: aio_pika.abc.AbstractRobustConnection) -> bytes:
    """Publish one message to a fresh exclusive queue and read it back."""
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    await channel.default_exchange.publish(aio_pika.Message(b"ping"), routing_key=queue.name)
    message = await queue.get(timeout=5)
    await message.ack()
    await channel.close()
    return message.body


async def test_the_first_node_that_answers_is_used() -> None:
    connection = await transport.connect(f"{DEAD},{AMQP_URL}", connect_timeout=5)
    try:
        assert isinstance(connection, FailoverConnection)
        assert connection.node == f"{_TARGET.hostname}:{_TARGET.port or 5672}"
        assert await _round_trip(connection) == b"ping"
    finally:
        await connection.close()


async def test_no_node_answering_fails_at_once() -> None:
    with pytest.raises(ConnectionError):
        await transport.connect(f"{DEAD},amqp://guest:guest@127.0.0.1:1/", connect_timeout=5)


async def test_a_lost_node_fails_over_to_the_next_and_the_consumer_comes_back(
    proxy: TcpProxy, unique_name: str
) -> None:
    """Node one (the proxy) dies; the connection moves to node two and consuming resumes."""
    direct = f"{_TARGET.hostname}:{_TARGET.port or 5672}"
    connection = await transport.connect(f"{proxy.url()},{AMQP_URL}", connect_timeout=5)
    assert isinstance(connection, FailoverConnection)
    try:
        assert connection.node == f"127.0.0.1:{proxy.port}"
        channel = await connection.channel()
        queue = await channel.declare_queue(unique_name, durable=True)
        seen: list[bytes] = []

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            seen.append(message.body)
            await message.ack()

        await queue.consume(on_message)
        await channel.default_exchange.publish(aio_pika.Message(b"before"), routing_key=queue.name)
        await _until(lambda: seen == [b"before"])

        await proxy.close()  # node one is gone: its port refuses from now on
        await _until(lambda: connection.node == direct and connection.connected.is_set())
        publisher = await connection.channel()
        await publisher.default_exchange.publish(aio_pika.Message(b"after"), routing_key=queue.name)
        await _until(lambda: seen == [b"before", b"after"])
        await publisher.queue_delete(queue.name)
    finally:
        await connection.close()


async def _until(condition: object, timeout_s: float = 20.0) -> None:
    assert callable(condition)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("the condition did not hold in time")
        await asyncio.sleep(0.05)


def test_the_broker_setting_takes_a_clusters_nodes_and_names_a_bad_one() -> None:
    nodes = "amqp://u:p@mq1:5672/backa,amqp://u:p@mq2:5672/backa"
    assert BrokerSettings(amqp_url=SecretStr(nodes)).amqp_url.get_secret_value() == nodes
    with pytest.raises(ValidationError, match="BACKA_AMQP_URL: RabbitMQ URL number 2"):
        BrokerSettings(amqp_url=SecretStr("amqp://mq1/backa,mq2:5672"))
