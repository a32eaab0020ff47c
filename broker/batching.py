"""Group commit: concurrent decisions share one database transaction.

The broker handles many ingress messages at once (the prefetch), and each
must be committed before it is routed and again (as routed) before it is
acked. One transaction per call costs a commit each (SQLite serialises them
on its single writer; PostgreSQL pays a round trip each); measured on this
project's 2-core machine that capped the broker hop near 100 messages per
second. ``GroupCommitStore`` queues the calls that arrive while a commit is
in progress and writes them together in the next one: no timer, no added
latency when idle, and every caller still returns only after its own data is
committed, so "ack only after the durable write" holds unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from broker.records import MessageRecord, Recorded, StatusEvent, Store
from schemas.audit import AuditEntry

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

#: Most calls written in one transaction (bounds statement size and latency).
MAX_BATCH = 256


class BulkStore(Store, Protocol):
    """A store that can also write many decisions, or many routed marks, in one transaction."""

    async def record_decisions(
        self, items: Sequence[tuple[MessageRecord, Sequence[StatusEvent]]]
    ) -> list[Recorded]:
        """``record_decision`` for each item, in order, in one transaction.

        An id that appears twice is created by its first item; the second gets
        ``created=False``, exactly as two separate calls would.
        """
        ...

    async def mark_routed_many(self, marks: Sequence[tuple[str, datetime]]) -> None:
        """``mark_routed`` for each (message id, time), in one transaction."""
        ...


@dataclass
class _Queue(Generic[_Item, _Result]):
    """Calls waiting for the next transaction, and the task that writes them."""

    pending: list[tuple[_Item, asyncio.Future[_Result]]] = field(default_factory=list)
    writer: asyncio.Task[None] | None = None


class GroupCommitStore:
    """A ``Store`` whose decisions and routed marks are committed in shared transactions."""

    def __init__(self, inner: BulkStore, *, max_batch: int = MAX_BATCH) -> None:
        """Wrap ``inner``; reads and receipts go straight through to it."""
        self.inner = inner
        self.max_batch = max_batch
        self._decisions: _Queue[tuple[MessageRecord, Sequence[StatusEvent]], Recorded] = _Queue()
        self._routed: _Queue[tuple[str, datetime], None] = _Queue()

    async def record_decision(
        self, record: MessageRecord, events: Sequence[StatusEvent]
    ) -> Recorded:
        """Queue the decision for the next shared commit and wait for it."""
        return await self._submit(self._decisions, (record, events), self.inner.record_decisions)

    async def mark_routed(self, message_id: str, at: datetime) -> None:
        """Queue the routed mark for the next shared commit and wait for it."""
        await self._submit(self._routed, (message_id, at), self._mark_all)

    async def _mark_all(self, marks: Sequence[tuple[str, datetime]]) -> list[None]:
        await self.inner.mark_routed_many(marks)
        return [None] * len(marks)

    async def get_message(self, message_id: str) -> MessageRecord | None:
        """Read through to the inner store."""
        return await self.inner.get_message(message_id)

    async def append_events(self, events: Sequence[StatusEvent]) -> int:
        """Write through to the inner store."""
        return await self.inner.append_events(events)

    async def append_audit(self, entries: Sequence[AuditEntry]) -> list[int]:
        """Straight through: audit entries of their own are rare (refusals, reads)."""
        return await self.inner.append_audit(entries)

    async def timeline(self, message_id: str) -> list[StatusEvent]:
        """Read through to the inner store."""
        return await self.inner.timeline(message_id)

    async def ping(self) -> None:
        """Ping the inner store."""
        await self.inner.ping()

    async def _submit(
        self,
        queue: _Queue[_Item, _Result],
        item: _Item,
        write: Callable[[Sequence[_Item]], Awaitable[list[_Result]]],
    ) -> _Result:
        future: asyncio.Future[_Result] = asyncio.get_running_loop().create_future()
        queue.pending.append((item, future))
        if queue.writer is None or queue.writer.done():
            queue.writer = asyncio.create_task(self._drain(queue, write))
        return await future

    async def _drain(
        self,
        queue: _Queue[_Item, _Result],
        write: Callable[[Sequence[_Item]], Awaitable[list[_Result]]],
    ) -> None:
        while queue.pending:
            batch = queue.pending[: self.max_batch]
            del queue.pending[: self.max_batch]
            try:
                results = await write([item for item, _ in batch])
            except BaseException as exc:  # every waiter learns what happened to its write
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
