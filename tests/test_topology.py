"""The area's topology on the real RabbitMQ: declared by the broker, and as a definitions file.

Run with ``-p tests.rabbit`` until the root conftest loads that plugin.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import aio_pika
import pytest
from aiormq.exceptions import ChannelPreconditionFailed

from broker.amqp import BrokerAmqpError, TopologyConflict, connect, declare_topology, redact_url
from broker.definitions import DEFAULT_VHOST, render_definitions, render_definitions_json
from broker.provision import RabbitmqctlRunner
from broker.topology import (
    DEAD_LETTER_QUEUE,
    DELIVER_EXCHANGE,
    DELIVERY_LIMIT,
    agency_queue,
    queues,
)
from keys.area import load_area
from tests.rabbit import amqp_url_for, random_vhost, scratch_vhost_named

ROOT = Path(__file__).resolve().parent.parent
DEMO_AREA = ROOT / "deploy" / "areas" / "demo.toml"
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
REGENERATE = (
    ".venv/bin/backa broker definitions --area deploy/areas/demo.toml "
    "--out deploy/rabbitmq/definitions.json"
)
AGENCIES = ["torsviks-skola", "lidingo-socialtjanst"]


def _queue_listing(runner: RabbitmqctlRunner, vhost: str) -> dict[str, dict[str, object]]:
    rows = json.loads(
        runner.run(
            ["list_queues", "-p", vhost, "name", "type", "arguments", "--formatter", "json", "-q"]
        )
    )
    return {row["name"]: row for row in rows}


def _arguments(listed: object) -> dict[str, object]:
    # rabbitmqctl lists queue arguments as [["x-queue-type", "longstr", "quorum"], ...].
    assert isinstance(listed, list)
    return {str(row[0]): row[-1] for row in listed}


@pytest.mark.rabbitmq
async def test_declare_twice_makes_quorum_queues_with_the_topology_arguments(
    scratch_amqp: aio_pika.abc.AbstractConnection,
    scratch_vhost: str,
    rabbitmqctl: RabbitmqctlRunner,
) -> None:
    """Declaring twice succeeds and leaves every queue a quorum queue with its arguments."""
    channel = await scratch_amqp.channel()
    await declare_topology(channel, AGENCIES)
    await declare_topology(channel, AGENCIES)
    await channel.close()
    listed = _queue_listing(rabbitmqctl, scratch_vhost)
    for spec in queues(AGENCIES):
        assert listed[spec.name]["type"] == "quorum", spec.name
        assert _arguments(listed[spec.name]["arguments"]) == spec.arguments, spec.name


@pytest.mark.rabbitmq
async def test_redeclare_with_another_delivery_limit_is_refused(
    scratch_amqp: aio_pika.abc.AbstractConnection,
) -> None:
    """A re-declaration with the same arguments passes; another delivery limit is refused."""
    channel = await scratch_amqp.channel()
    await declare_topology(channel, AGENCIES)
    spec = next(q for q in queues(AGENCIES) if q.name == agency_queue(AGENCIES[0]))
    await channel.declare_queue(spec.name, durable=True, arguments=dict(spec.arguments))
    with pytest.raises(ChannelPreconditionFailed, match="x-delivery-limit"):
        await channel.declare_queue(
            spec.name,
            durable=True,
            arguments={**spec.arguments, "x-delivery-limit": DELIVERY_LIMIT + 1},
        )


@pytest.mark.rabbitmq
async def test_existing_queue_with_other_arguments_is_a_topology_conflict(
    scratch_amqp: aio_pika.abc.AbstractConnection,
) -> None:
    """A classic queue where the topology wants a quorum queue makes TopologyConflict."""
    agency = f"t{uuid.uuid4().hex[:8]}"
    channel = await scratch_amqp.channel()
    await channel.declare_queue(agency_queue(agency), durable=True)
    try:
        with pytest.raises(TopologyConflict) as caught:
            await declare_topology(channel, [agency])
        assert caught.value.code == "amqp_topology_conflict"
        assert "PRECONDITION_FAILED" in caught.value.detail
        assert "PRECONDITION_FAILED" not in caught.value.message
    finally:
        cleanup = await scratch_amqp.channel()
        await cleanup.queue_delete(agency_queue(agency))
        await cleanup.close()


@pytest.mark.rabbitmq
async def test_rejected_message_is_dead_lettered_after_the_delivery_limit(
    scratch_amqp: aio_pika.abc.AbstractConnection,
) -> None:
    """A message requeued more than DELIVERY_LIMIT times lands in backa.dead, once."""
    agency = f"t{uuid.uuid4().hex[:8]}"
    message_id = uuid.uuid4().hex
    channel = await scratch_amqp.channel(publisher_confirms=True)
    await declare_topology(channel, [agency])
    loop = asyncio.get_running_loop()
    dead: asyncio.Future[aio_pika.abc.AbstractIncomingMessage] = loop.create_future()
    deliveries = 0

    async def requeue(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal deliveries
        deliveries += 1
        await message.reject(requeue=True)

    async def on_dead(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        if message.message_id == message_id and not dead.done():
            dead.set_result(message)

    agency_q = await channel.get_queue(agency_queue(agency))
    dead_q = await channel.get_queue(DEAD_LETTER_QUEUE)
    try:
        await dead_q.consume(on_dead)
        await agency_q.consume(requeue)
        exchange = await channel.get_exchange(DELIVER_EXCHANGE)
        await exchange.publish(
            aio_pika.Message(
                b"poison", message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            ),
            routing_key=agency,
        )
        message = await asyncio.wait_for(dead, timeout=20)
        assert deliveries == DELIVERY_LIMIT + 1
        assert message.body == b"poison"
        assert message.headers.get("x-first-death-reason") == "delivery_limit"
        assert message.headers.get("x-first-death-queue") == agency_queue(agency)
    finally:
        await agency_q.delete(if_unused=False, if_empty=False)
        await channel.close()


@pytest.mark.rabbitmq
async def test_connect_error_names_the_url_without_its_password(scratch_vhost: str) -> None:
    """A refused login is BrokerAmqpError (503) and its message holds no password."""
    url = amqp_url_for(scratch_vhost, user="nobody-here", password="s3cret-Wrong")
    with pytest.raises(BrokerAmqpError) as caught:
        await connect(url, connect_timeout=5)
    assert caught.value.code == "amqp_unavailable"
    assert caught.value.http_status == 503
    assert "s3cret-Wrong" not in f"{caught.value} {caught.value.detail}"
    assert "nobody-here:***@" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://u:pw@host:5672/v", "amqp://u:***@host:5672/v"),
        ("amqps://u:p%40ss@host/%2F", "amqps://u:***@host/%2F"),
        ("amqp://u:p@ss@host/", "amqp://u:***@host/"),
        ("amqp://host/", "amqp://host/"),
        ("amqp://u@host/", "amqp://u@host/"),
        ("amqp://host/?heartbeat=5&password=x", "amqp://host/?heartbeat=5&password=***"),
        ("amqp://u:pw@[::1/", "<unparseable URL>"),
    ],
    ids=["plain", "encoded", "at-in-password", "no-user", "no-password", "query", "broken"],
)
def test_redact_url(url: str, expected: str) -> None:
    """redact_url hides the password and password-like query values, and nothing else."""
    assert redact_url(url) == expected


def test_committed_definitions_match_the_demo_area() -> None:
    """deploy/rabbitmq/definitions.json is what render_definitions makes for the demo area."""
    agencies = [a.id for a in load_area(DEMO_AREA).agency]
    expected = render_definitions_json(vhost=DEFAULT_VHOST, agencies=agencies)
    committed = DEFINITIONS.read_text(encoding="utf-8") if DEFINITIONS.exists() else ""
    assert committed == expected, f"{DEFINITIONS} is stale; regenerate it with: {REGENERATE}"


def test_definitions_hold_no_users_and_no_passwords() -> None:
    """The document imports no users or permissions, so an import never resets a password."""
    document = render_definitions(vhost="v", agencies=AGENCIES)
    assert "users" not in document
    assert "permissions" not in document
    assert not [key for key in _keys(document) if "password" in key]


def _keys(value: object) -> list[str]:
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in (k, *_keys(v))]
    if isinstance(value, list):
        return [k for item in value for k in _keys(item)]
    return []


@pytest.mark.rabbitmq
async def test_rabbitmq_imports_the_definitions_and_the_broker_agrees(
    rabbitmqctl: RabbitmqctlRunner,
) -> None:
    """import_definitions accepts the document, and declare_topology then finds it equivalent."""
    with scratch_vhost_named(rabbitmqctl, random_vhost()) as vhost:
        document = render_definitions_json(vhost=vhost, agencies=AGENCIES)
        # Safe on a shared RabbitMQ: the document names only this scratch vhost and no users.
        # On standard input: rabbitmqctl may run as the rabbitmq user, who cannot read tmp_path.
        rabbitmqctl.run(["import_definitions"], stdin=document)
        connection = await aio_pika.connect(amqp_url_for(vhost), timeout=10)
        try:
            # RabbitMQ 3.10 imports asynchronously; wait until the last queue is there.
            await asyncio.wait_for(_queue_exists(connection, agency_queue(AGENCIES[-1])), 20)
            channel = await connection.channel()
            await declare_topology(channel, AGENCIES)
            await channel.close()
        finally:
            await connection.close()
        listed = _queue_listing(rabbitmqctl, vhost)
        assert sorted(listed) == sorted(q.name for q in queues(AGENCIES))
        assert {row["type"] for row in listed.values()} == {"quorum"}


async def _queue_exists(connection: aio_pika.abc.AbstractConnection, name: str) -> None:
    while True:
        channel = await connection.channel()
        try:
            await channel.get_queue(name, ensure=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            await asyncio.sleep(0.2)
        else:
            await channel.close()
            return
