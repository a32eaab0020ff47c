"""Group commit: concurrent writes share one database transaction.

The broker and the adapters handle many messages at once (the prefetch), and
each must be committed before it is acked. One transaction per write made
the commit, not the work, the cost per message (SQLite serialises commits on
its one writer and the adapters sync each to disk; PostgreSQL pays a round
trip each). :class:`GroupCommit` queues the writes that arrive while a
transaction is in progress and writes them together in the next one: no
timer, no added latency when idle, and every caller returns only after its
own write is committed, so "ack only after the durable write" holds
unchanged.

Must never: return to a caller before its own write is committed, or let one
failing write fail the others: a batch that fails is written again one write
per transaction (unless the failure is one that would fail each of them
alike, such as the database being away), so that every caller gets the
outcome of its own write.

Pure: asyncio only; the store's write function does the I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Generic, TypeVar

#: Most writes in one transaction (bounds statement size and latency).
MAX_BATCH: Final = 256

W = TypeVar("W")
R = TypeVar("R")

#: Writes every item in one transaction; one result per item, in order.
WriteMany = Callable[[Sequence[W]], Awaitable[Sequence[R]]]


class GroupCommit(Generic[W, R]):
    """Writes queued while a transaction is in progress share the next transaction."""

    def __init__(
        self,
        write: WriteMany[W, R],
        *,
        max_batch: int = MAX_BATCH,
        isolate: Callable[[Exception], bool] = lambda _exc: True,
    ) -> None:
        """Commit with ``write``, at most ``max_batch`` items per transaction.

        A batch that fails with an error for which ``isolate`` is true is
        written again item by item; any other error (the database away) goes
        to every caller in the batch as it is.
        """
        self._write = write
        self.max_batch = max_batch
        self._isolate = isolate
        self._pending: list[tuple[W, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: W) -> R:
        """Queue ``item`` for the next shared transaction; its result once committed.

        Raises what writing ``item`` raised (alone, if its batch failed). A
        caller cancelled while waiting does not cancel the transaction: the
        others in it still get their writes.
        """
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="group-commit")
        return await future

    async def idle(self) -> None:
        """Until every queued write is committed (or has failed)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.wait([self._writer])

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                await self._commit(batch)
        except asyncio.CancelledError as exc:
            # Shutting down: no waiter may wait for a writer that is gone.
            for _, future in self._pending:
                if not future.done():
                    future.set_exception(exc)
            self._pending.clear()
            raise

    async def _commit(self, batch: list[tuple[W, asyncio.Future[R]]]) -> None:
        try:
            results = list(await self._write([item for item, _ in batch]))
        except asyncio.CancelledError as exc:
            _settle_all(batch, exc)
            raise
        except Exception as exc:  # noqa: BLE001 - every waiter learns what happened to its write
            if len(batch) == 1 or not self._isolate(exc):
                _settle_all(batch, exc)
                return
            # One write's fault (a constraint, a bad value) must not fail the
            # others: each is written again in a transaction of its own.
            for index, (item, future) in enumerate(batch):
                try:
                    (result,) = await self._write([item])
                except asyncio.CancelledError as cancelled:
                    _settle_all(batch[index:], cancelled)
                    raise
                except Exception as alone:  # noqa: BLE001 - handed to its own waiter
                    if not future.done():
                        future.set_exception(alone)
                else:
                    if not future.done():
                        future.set_result(result)
            return
        if len(results) != len(batch):
            _settle_all(batch, RuntimeError(f"{len(results)} results for {len(batch)} writes"))
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _settle_all(batch: Sequence[tuple[object, asyncio.Future[R]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
