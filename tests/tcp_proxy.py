"""A TCP proxy in the test process, to cut a real connection at a moment the test chooses.

It forwards every byte between a client and a real server (RabbitMQ, here).
``cut()`` closes every connection through it at once, as a failed network
would; ``close()`` also stops listening, so reconnecting through it fails
the way a dead host does (connection refused) until ``reopen()``.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from dataclasses import dataclass, field


@dataclass
class TcpProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to ``target_host``:``target_port``."""

    target_host: str
    target_port: int
    port: int = 0
    connections: int = 0
    _server: asyncio.Server | None = field(default=None, init=False)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set, init=False)
    _pipes: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    @property
    def open_connections(self) -> int:
        """Connections through the proxy now."""
        return len(self._writers) // 2

    async def start(self) -> TcpProxy:
        """Start listening (on the same port again after ``close``)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, scheme: str = "amqp", credentials: str = "guest:guest", path: str = "/") -> str:
        """The URL that reaches the target through this proxy."""
        return f"{scheme}://{credentials}@127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()
        self._writers.discard(sink)

    async def cut(self) -> None:
        """Close every connection through the proxy, both ways, now."""
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()
        self._writers.clear()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.sleep(0)

    async def close(self) -> None:
        """Cut every connection and stop listening (a dead host: connection refused)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self.cut()
        if server is not None:
            await server.wait_closed()

    async def reopen(self) -> None:
        """Listen again on the same port."""
        await self.start()
