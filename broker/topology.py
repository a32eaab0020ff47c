"""The RabbitMQ topology of one area, as data (declared by ``broker.amqp``).

Pure: names and arguments only. Every queue is a quorum queue with a delivery
limit and at-least-once dead-lettering (which RabbitMQ allows only with
``overflow=reject-publish``). No per-message TTL anywhere: RabbitMQ expires a
message only when it reaches the head of its queue, so a TTL would not mean
what it says; deadlines live in the broker's store instead (issue #7).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

INGRESS_EXCHANGE: Final = "backa.ingress"
INGRESS_QUEUE: Final = "backa.ingress"
DELIVER_EXCHANGE: Final = "backa.deliver"
CONTROL_EXCHANGE: Final = "backa.control"
DEAD_LETTER_EXCHANGE: Final = "backa.dead"
DEAD_LETTER_QUEUE: Final = "backa.dead"

#: AMQP ``type`` of an envelope on the ingress exchange and in agency queues.
TYPE_ENVELOPE: Final = "backa.envelope.v1"
#: AMQP ``type`` of a signed receipt (from an adapter, or from the broker).
TYPE_RECEIPT: Final = "backa.receipt.v1"
#: AMQP ``type`` of a control broadcast (consent revocation, directory change).
TYPE_CONTROL: Final = "backa.control.v1"

#: Deliveries of one message before RabbitMQ dead-letters it (poison messages).
DELIVERY_LIMIT: Final = 5


def agency_queue(agency: str) -> str:
    """The queue an agency's adapter reads: ``agency.<id>``."""
    return f"agency.{agency}"


def control_queue(agency: str) -> str:
    """The queue of consent notices for one agency: ``agency.<id>.control``.

    Apart from ``agency.<id>`` because a queue is first in, first out: a
    revocation behind a backlog of messages would reach the adapter after
    them. The adapter drains this queue before every hand-over instead, so a
    revocation that the broker has confirmed stops every later hand-over.
    """
    return f"agency.{agency}.control"


def control_routing_key(agency: str) -> str:
    """The routing key on ``backa.deliver`` of an agency's control queue (ids hold no dot)."""
    return f"{agency}.control"


@dataclass(frozen=True)
class Exchange:
    """An exchange to declare: name and type, always durable."""

    name: str
    type: str


@dataclass(frozen=True)
class Queue:
    """A queue to declare and the exchange bindings it gets."""

    name: str
    arguments: dict[str, str | int]
    bindings: tuple[tuple[str, str], ...] = field(default=())  # (exchange, routing key)


def quorum_arguments(*, dead_letter: bool = True) -> dict[str, str | int]:
    """Arguments of every quorum queue of the area (the dead-letter queue itself has none)."""
    arguments: dict[str, str | int] = {"x-queue-type": "quorum"}
    if dead_letter:
        arguments |= {
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    return arguments


EXCHANGES: Final = (
    Exchange(INGRESS_EXCHANGE, "direct"),
    Exchange(DELIVER_EXCHANGE, "direct"),
    Exchange(CONTROL_EXCHANGE, "fanout"),
    Exchange(DEAD_LETTER_EXCHANGE, "fanout"),
)


def queues(agencies: Iterable[str]) -> list[Queue]:
    """Every queue of the area: ingress, dead letters, and two per agency (messages, control)."""
    result = [
        Queue(INGRESS_QUEUE, quorum_arguments(), ((INGRESS_EXCHANGE, INGRESS_QUEUE),)),
        Queue(
            DEAD_LETTER_QUEUE, quorum_arguments(dead_letter=False), ((DEAD_LETTER_EXCHANGE, ""),)
        ),
    ]
    for a in sorted(set(agencies)):
        result.append(Queue(agency_queue(a), quorum_arguments(), ((DELIVER_EXCHANGE, a),)))
        result.append(
            Queue(
                control_queue(a),
                quorum_arguments(),
                ((DELIVER_EXCHANGE, control_routing_key(a)),),
            )
        )
    return result
