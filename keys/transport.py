"""Connections to the area's RabbitMQ: one node, or whichever node of a cluster answers.

Both the broker and the adapters take their RabbitMQ as a setting that may
name several nodes of one cluster: AMQP URLs separated by commas or
whitespace (``amqp://u:p@mq1:5672/backa,amqp://u:p@mq2:5672/backa``). The
connection goes to the first node that answers. When that connection is lost
(the node stopped, the network failed) it is re-established to the next node
in the list, round the list for as long as it takes; aio-pika's robust
connection then reopens the channels and restores the consumers, exactly as
after a reconnect to a single node. Quorum queues live on every node of the
cluster, so any node serves every queue.

aio-pika's ``connect_robust`` knows one URL only (aio-pika issue 141). This
module overrides the one step of its reconnection that opens the transport,
so that each attempt walks the list; ``tests/test_transport.py`` pins that
behaviour against the installed aio-pika, so an upgrade that moves the step
fails a test rather than silently losing the failover.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aio_pika.robust_connection import RobustConnection
from yarl import URL

_log = structlog.get_logger("keys.transport")

#: What separates the nodes' URLs in one setting.
_SEPARATOR = re.compile(r"[,\s]+")
#: The step of RobustConnection that opens a transport, by its mangled name.
_CONNECT_TRANSPORT = "_RobustConnection__connect_transport"


class AmqpUrlError(ValueError):
    """A RabbitMQ setting that is not a list of amqp:// or amqps:// URLs."""


def split_urls(setting: str) -> list[str]:
    """The nodes' URLs in ``setting``; AmqpUrlError if there is none or one is not AMQP."""
    urls = [part for part in _SEPARATOR.split(setting.strip()) if part]
    if not urls:
        raise AmqpUrlError("no RabbitMQ URL given")
    for index, url in enumerate(urls, start=1):
        if not url.startswith(("amqp://", "amqps://")):
            raise AmqpUrlError(
                f"RabbitMQ URL number {index} does not start with amqp:// or amqps://"
            )
    return urls


def with_credentials(setting: str, user: str, password: str) -> str:
    """``setting`` with ``user`` and ``password`` in every node's URL (replacing any there)."""
    result = []
    for url in split_urls(setting):
        scheme, rest = url.split("://", 1)
        host = rest.split("@", 1)[-1]
        result.append(f"{scheme}://{user}:{password}@{host}")
    return ",".join(result)


def describe(setting: str) -> str:
    """The nodes of ``setting`` as host:port, without users or passwords (for logs)."""
    return ",".join(f"{URL(url).host}:{URL(url).port}" for url in split_urls(setting))


class FailoverConnection(RobustConnection):
    """A robust connection that opens each transport to the next node that answers."""

    def __init__(self, urls: Sequence[str], **kwargs: Any) -> None:
        """``urls``: the nodes in the order to try; ``kwargs`` as for aio-pika's connection."""
        self._urls = [URL(url) for url in urls]
        self._current = -1
        super().__init__(self._urls[0], **kwargs)

    @property
    def node(self) -> str:
        """The node this connection is (or was last) open to, as host:port."""
        return f"{self.url.host}:{self.url.port}"

    async def _RobustConnection__connect_transport(self) -> None:  # noqa: N802 - overrides by name
        """Try every node once, starting after the one used last; raise the last failure."""
        parent = getattr(RobustConnection, _CONNECT_TRANSPORT)
        failure: BaseException | None = None
        for _ in self._urls:
            self._current = (self._current + 1) % len(self._urls)
            self.url = self._urls[self._current]
            try:
                await parent(self)
            except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                _log.warning("rabbitmq_node_unavailable", node=self.node, cause=type(exc).__name__)
                failure = exc
                continue
            _log.info("rabbitmq_node_connected", node=self.node)
            return
        if failure is not None:
            raise failure


if not hasattr(RobustConnection, _CONNECT_TRANSPORT):  # pragma: no cover - an aio-pika upgrade
    raise ImportError(
        f"aio-pika {aio_pika.__version__} has no {_CONNECT_TRANSPORT}: "
        "keys.transport must be adapted to it before cluster failover works"
    )


async def connect(setting: str, *, connect_timeout: float = 10.0) -> AbstractRobustConnection:
    """A robust connection to the first node of ``setting`` that answers.

    The first connection must succeed with some node: if none answers, the
    last node's error is raised (as aio-pika's ``connect_robust`` does for one).
    """
    connection = FailoverConnection(split_urls(setting))
    await connection.connect(timeout=connect_timeout)
    return connection
