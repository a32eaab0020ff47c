"""An area's RabbitMQ definitions and access rules, as data (pure: no I/O, no RabbitMQ).

:func:`render_definitions` turns the topology of :mod:`broker.topology` into a
RabbitMQ definitions document, the JSON that ``rabbitmqctl import_definitions``
and the ``load_definitions`` setting accept: the vhost, its exchanges, its
quorum queues with their arguments and its bindings, exactly what
``broker.amqp.declare_topology`` declares (a test imports one and then
declares over it, so the two cannot drift apart).

Who may do what (:func:`agency_permission`, :func:`broker_permission`) is
data here too, so that ``backa broker provision`` sets exactly the rules a
reviewer reads in the document under its ``"backa"`` key.

Why the document has no ``users`` and no ``permissions`` section: RabbitMQ
imports a user with its password hash, and importing a user without one, or
with an empty one, over an existing user *clears that user's password*
(checked on 3.10); with ``load_definitions`` every node re-imports the file
at each boot, so a users section would lock every adapter out on each
restart. RabbitMQ imports permissions only for users that exist (the whole
import fails with ``no_such_user`` otherwise). So users, their passwords and
their permissions are made by ``backa broker provision``, which alone holds
the passwords, and the ``"backa"`` key, which RabbitMQ ignores, lists the
permissions for review.

This module must never hold a password or a password hash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from broker.topology import EXCHANGES, INGRESS_EXCHANGE, agency_queue, queues

__all__ = [
    "BROKER_USER",
    "DEFAULT_VHOST",
    "Permission",
    "agency_permission",
    "broker_permission",
    "check_vhost",
    "permissions",
    "render_definitions",
    "render_definitions_json",
]

#: The vhost of an area. One area per RabbitMQ cluster (users are cluster-wide
#: and named by agency id), so the name need not carry the area; a vhost of its
#: own keeps the area apart from whatever else uses ``/`` (the default guest
#: user, other applications) and lets an area be removed with one command.
DEFAULT_VHOST: Final = "backa"

#: The RabbitMQ user the broker service connects as.
BROKER_USER: Final = "backa-broker"

# Every name the broker declares or binds: the area's own exchanges and queues,
# the agency queues, and the exclusive queues broker instances bind to the control
# exchange, named by the server ("amq.gen-…") or, on a robust channel, by aio-pika
# itself ("amq_<uuid hex>", so that it can declare the same queue again after a
# reconnect; found by the demo, the first run with provisioned permissions). Read
# is needed on agency queues too: declaring a queue with a dead-letter exchange
# needs read on the queue.
_BROKER_NAMES: Final = r"^(backa\..*|agency\..*|amq\.gen-.*|amq_[0-9a-f]{32})$"
# RabbitMQ keeps names as AMQP short strings: at most 255 bytes.
_MAX_VHOST_LEN: Final = 255


@dataclass(frozen=True, slots=True)
class Permission:
    """One user's permissions on the area's vhost: three regular expressions (PCRE)."""

    user: str
    configure: str
    write: str
    read: str


def agency_permission(agency: str) -> Permission:
    """An agency may publish to the ingress exchange and read its own two queues, nothing else.

    No configure: an adapter declares nothing (it checks the queue passively,
    which RabbitMQ does not authorise). Write covers the ingress exchange only,
    not the default exchange, so an adapter cannot reach a queue directly.
    """
    return Permission(
        user=agency,
        configure="^$",
        write=f"^{re.escape(INGRESS_EXCHANGE)}$",
        read=f"^{re.escape(agency_queue(agency))}(\\.control)?$",
    )


def broker_permission(user: str = BROKER_USER) -> Permission:
    """The broker declares, binds, publishes to and reads every name of the area."""
    return Permission(user=user, configure=_BROKER_NAMES, write=_BROKER_NAMES, read=_BROKER_NAMES)


def permissions(agencies: Iterable[str], *, broker_user: str = BROKER_USER) -> list[Permission]:
    """Every permission of the area's vhost: the broker's first, then one per agency by id."""
    return [broker_permission(broker_user), *(agency_permission(a) for a in sorted(set(agencies)))]


def check_vhost(vhost: str) -> str:
    """``vhost`` if it is a name this project uses as a vhost; ValueError otherwise.

    Printable, and not starting with ``-`` (rabbitmqctl would read it as an option).
    """
    if (
        not vhost
        or vhost.startswith("-")
        or not vhost.isprintable()
        or len(vhost.encode("utf-8")) > _MAX_VHOST_LEN
    ):
        raise ValueError(f"{vhost!r} is not a usable RabbitMQ vhost name")
    return vhost


def render_definitions(
    *, vhost: str, agencies: Iterable[str], broker_user: str = BROKER_USER
) -> dict[str, Any]:
    """The RabbitMQ definitions document of an area: vhost, exchanges, queues, bindings.

    Users and permissions are not RabbitMQ sections of it (see the module
    docstring); the permissions that ``backa broker provision`` sets are
    listed under the ``"backa"`` key, which RabbitMQ ignores on import.
    """
    check_vhost(vhost)
    ids = sorted(set(agencies))
    area_queues = queues(ids)
    return {
        "backa": {
            "about": (
                "RabbitMQ definitions of a Backa barnet area, made by "
                "'backa broker definitions'. Users, passwords and permissions are not "
                "imported from this file: 'backa broker provision' makes them. The "
                "permissions below are what it sets, listed for review."
            ),
            "broker_user": broker_user,
            "permissions": [
                {
                    "user": p.user,
                    "vhost": vhost,
                    "configure": p.configure,
                    "write": p.write,
                    "read": p.read,
                }
                for p in permissions(ids, broker_user=broker_user)
            ],
        },
        "vhosts": [{"name": vhost}],
        "exchanges": [
            {
                "name": e.name,
                "vhost": vhost,
                "type": e.type,
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
            for e in EXCHANGES
        ],
        "queues": [
            {
                "name": q.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": dict(q.arguments),
            }
            for q in area_queues
        ],
        "bindings": [
            {
                "source": exchange,
                "vhost": vhost,
                "destination": q.name,
                "destination_type": "queue",
                "routing_key": routing_key,
                "arguments": {},
            }
            for q in area_queues
            for exchange, routing_key in q.bindings
        ],
    }


def render_definitions_json(
    *, vhost: str, agencies: Iterable[str], broker_user: str = BROKER_USER
) -> str:
    """:func:`render_definitions` as the text of a definitions file (stable, newline at end)."""
    document = render_definitions(vhost=vhost, agencies=agencies, broker_user=broker_user)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
