"""An envelope crosses the real RabbitMQ unchanged and opens at the recipient."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from keys.envelope import open_envelope, seal
from schemas.envelope import Kind, LegalBasis, Purpose
from tests.support import CHILD, EXPIRES, T0, Agency, MemoryDirectory

pytestmark = pytest.mark.rabbitmq


async def test_sealed_envelope_survives_a_quorum_queue(
    amqp: aio_pika.abc.AbstractRobustConnection, unique_name: str
) -> None:
    """Publish with confirms to a quorum queue, consume with manual ack, open: same content."""
    school, social = Agency.make("lidingo-skola"), Agency.make("lidingo-soc")
    directory = MemoryDirectory.of(school, social)
    content = '{"summary": "Behöver stöd i skolan"}'.encode()
    sealed = seal(
        content,
        sender=school.sender,
        recipients=[social.sealing],
        kind=Kind.CONCERN_REPORT,
        child=CHILD,
        basis=LegalBasis(type="legal", ref="osl-10-28"),
        purpose=Purpose.CONCERN,
        created=T0,
        expires=EXPIRES,
    )
    channel = await amqp.channel(publisher_confirms=True)
    queue = await channel.declare_queue(
        unique_name, durable=True, arguments={"x-queue-type": "quorum"}
    )
    try:
        await channel.default_exchange.publish(
            aio_pika.Message(
                sealed.wire,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=sealed.header.id,
                content_type="application/json",
            ),
            routing_key=unique_name,
        )
        received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            received.set_result(message.body)
            await message.ack()

        await queue.consume(on_message)
        body = await asyncio.wait_for(received, timeout=10)
        assert body == sealed.wire
        opened = open_envelope(body, keys=directory, recipient=social.recipient, now=T0)
        assert opened.content == content
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await channel.close()
