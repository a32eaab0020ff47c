"""The broker's AMQP shell: connect to RabbitMQ and declare the area's topology.

The topology itself is data in :mod:`broker.topology`; this module only speaks
aio-pika. Every aio-pika, aiormq and socket error is translated here, at the
boundary, into the broker's error tree (:mod:`broker.errors`)::

    class                    code                    http  meaning
    Unavailable              unavailable             503   (broker.errors)
    └── BrokerAmqpError      amqp_unavailable        503   RabbitMQ unreachable, login
        │                                                  refused, channel closed
        └── TopologyConflict amqp_topology_conflict  500   an exchange or queue exists
                                                           with other arguments

A conflict is not an outage: RabbitMQ refuses to change a queue's arguments in
place (``PRECONDITION_FAILED``), so an operator has to migrate the queue; the
broker must not start half-declared.

As everywhere in :mod:`broker.errors`, an error's message may reach a client
and so never quotes a foreign exception; what aio-pika said is in ``detail``,
for the log and the operator's terminal. Neither ever holds a password: URLs
go through :func:`redact_url`, and foreign text through a scrubber for
``scheme://user:password@``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiormq.exceptions import AMQPError, ChannelInvalidStateError, ChannelPreconditionFailed

from broker.errors import Unavailable
from broker.topology import EXCHANGES, queues
from keys import transport
from keys.transport import AmqpUrlError

__all__ = [
    "BrokerAmqpError",
    "TopologyConflict",
    "connect",
    "declare_topology",
    "redact_url",
]

#: Seconds to wait for any one declaration before calling RabbitMQ unavailable.
DECLARE_TIMEOUT_S: Final = 30.0

_REDACTED: Final = "***"
_SECRET_QUERY = re.compile(r"pass|secret|token|key", re.IGNORECASE)
# userinfo with a password inside any URL-looking text: scheme://user:password@
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)
_MAX_DETAIL = 300

# What aio-pika can raise on a dead socket, a closed channel or a slow server.
_AMQP_FAILURES: Final = (AMQPError, ChannelInvalidStateError, OSError, TimeoutError)


class BrokerAmqpError(Unavailable):
    """RabbitMQ could not be reached or did not do what the broker asked."""

    code: ClassVar[str] = "amqp_unavailable"
    http_status: ClassVar[int] = 503
    default_message: ClassVar[str] = "RabbitMQ cannot be reached right now; try again later."

    def __init__(self, message: str | None = None, *, detail: str = "") -> None:
        """``message`` is safe to show anyone; ``detail`` is what aio-pika said, for the log."""
        super().__init__(message)
        #: The foreign error, password-scrubbed: for the log and the operator, never a client.
        self.detail = detail


class TopologyConflict(BrokerAmqpError):  # noqa: N818 - a state of RabbitMQ, not a fault here
    """An exchange or queue already exists with other arguments than the topology's."""

    code = "amqp_topology_conflict"
    http_status = 500
    default_message = "RabbitMQ holds an exchange or queue that differs from the topology."


def redact_url(url: str) -> str:
    """``url`` with its password (and any password-like query value) replaced by ``***``.

    A URL that cannot be parsed is not echoed at all: it might hold a password
    in a place this function does not understand.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{_REDACTED}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_QUERY.search(k) for k, _ in pairs):
            query = urlencode(
                [(k, _REDACTED if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*"
            )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _scrub(text: str) -> str:
    return _URL_PASSWORD.sub(rf"\g<head>:{_REDACTED}@", text)


def _describe(exc: BaseException) -> str:
    """A short, password-free description of a foreign exception."""
    detail = _scrub(str(exc) or repr(exc)).replace("\n", " ")
    if len(detail) > _MAX_DETAIL:
        detail = detail[:_MAX_DETAIL] + "…"
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


async def connect(url: str, *, connect_timeout: float = 10.0) -> AbstractRobustConnection:
    """A robust connection to the RabbitMQ at ``url`` (it reconnects after a failure).

    ``url`` may name several nodes of a cluster (:mod:`keys.transport`): the
    connection goes to the first that answers and fails over to the others.
    The first connection must succeed: if no node answers at start-up, this
    raises :class:`BrokerAmqpError` naming the URLs without their passwords.
    """
    try:
        return await transport.connect(url, connect_timeout=connect_timeout)
    except (*_AMQP_FAILURES, AmqpUrlError) as exc:
        shown = ",".join(redact_url(u) for u in re.split(r"[,\s]+", url.strip()) if u)
        raise BrokerAmqpError(
            f"cannot connect to RabbitMQ at {shown}", detail=_describe(exc)
        ) from exc


async def declare_topology(channel: AbstractChannel, agencies: Iterable[str]) -> None:
    """Declare every exchange, queue and binding of the area; declaring twice is harmless.

    Exchanges and queues are durable; each queue gets the arguments of
    :func:`broker.topology.queues`. RabbitMQ accepts a declaration that
    matches what exists and refuses one that does not: that refusal is a
    :class:`TopologyConflict`, and it closes ``channel``. Each declaration
    waits at most ``DECLARE_TIMEOUT_S`` seconds.
    """
    timeout = DECLARE_TIMEOUT_S
    try:
        declared: dict[str, AbstractExchange] = {}
        for exchange in EXCHANGES:
            declared[exchange.name] = await channel.declare_exchange(
                exchange.name, exchange.type, durable=True, timeout=timeout
            )
        for spec in queues(agencies):
            queue = await channel.declare_queue(
                spec.name, durable=True, arguments=dict(spec.arguments), timeout=timeout
            )
            for exchange_name, routing_key in spec.bindings:
                await queue.bind(declared[exchange_name], routing_key=routing_key, timeout=timeout)
    except ChannelPreconditionFailed as exc:
        raise TopologyConflict(
            "RabbitMQ refused the area's topology: an exchange or queue already exists "
            "with other arguments; migrate it before starting the broker",
            detail=_describe(exc),
        ) from exc
    except _AMQP_FAILURES as exc:
        raise BrokerAmqpError(
            "declaring the area's topology failed", detail=_describe(exc)
        ) from exc
