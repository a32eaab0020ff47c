"""Group commit for the broker: concurrent decisions, routed marks and receipts share one
database transaction (``keys.group_commit``).

The broker handles many ingress messages at once (the prefetch), and each
must be committed before it is routed and again (as routed) before it is
acked; each receipt a recipient sends back is committed before it is
relayed. One transaction per call capped the broker hop near 100 messages
per second on this project's 2-core machine. Decisions, routed marks,
receipts and the deadlines they open share one queue, so under load one
commit (and one audit append) serves them all. A batch that fails for one
write's fault is written again write by write (so one bad write fails only
its caller); one that fails because the database is away fails every caller
in it, who hold their messages and retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from broker.errors import Unavailable
from broker.records import BatchWritten, MessageRecord, ReceiptWrite, Recorded, StatusEvent, Store
from keys.group_commit import MAX_BATCH, GroupCommit
from schemas.audit import AuditEntry


class BulkStore(Store, Protocol):
    """A store that can also write decisions, routed marks, receipts and deadlines together."""

    async def write_batch(
        self,
        items: Sequence[tuple[MessageRecord, Sequence[StatusEvent]]],
        marks: Sequence[tuple[str, datetime]],
        receipts: Sequence[ReceiptWrite] = (),
        opens: Sequence[tuple[str, str, str | None, datetime]] = (),
        item_opens: Sequence[Sequence[tuple[str, str, str | None, datetime]]] = (),
    ) -> BatchWritten:
        """Record the decisions, mark the routed, record the receipts and open the
        deadlines (``item_opens[i]`` only if ``items[i]`` created its message), in one
        transaction."""
        ...


@dataclass(frozen=True, slots=True)
class _Decision:
    record: MessageRecord
    events: Sequence[StatusEvent]
    opens: Sequence[tuple[str, str, str | None, datetime]] = ()


@dataclass(frozen=True, slots=True)
class _Mark:
    message_id: str
    at: datetime


#: One call waiting for the next transaction.
_Write = _Decision | _Mark | ReceiptWrite
#: What its caller gets back: a decision's ``Recorded``, a receipt's written flag, or
#: None (a routed mark).
_Result = Recorded | bool | None


class GroupCommitStore:
    """A ``Store`` whose writes on the hot path are committed in shared transactions.

    Decisions (with their deadlines), routed marks and receipts wait in one queue
    and share each commit: under load a transaction records the decisions of
    new messages, marks earlier ones routed and records the receipts for
    still earlier ones, one commit and one audit append for them all.
    """

    def __init__(self, inner: BulkStore, *, max_batch: int = MAX_BATCH) -> None:
        """Wrap ``inner``; reads and rare writes go straight through to it."""
        self.inner = inner
        self._group: GroupCommit[_Write, _Result] = GroupCommit(
            self._write, max_batch=max_batch, isolate=_one_writes_fault
        )

    async def record_decision(
        self,
        record: MessageRecord,
        events: Sequence[StatusEvent],
        opens: Sequence[tuple[str, str, str | None, datetime]] = (),
    ) -> Recorded:
        """Queue the decision (and its deadlines) for the next shared commit and wait for it."""
        recorded = await self._submit(_Decision(record, events, opens))
        assert isinstance(recorded, Recorded)  # noqa: S101 - a decision's future gets its Recorded
        return recorded

    async def mark_routed(self, message_id: str, at: datetime) -> None:
        """Queue the routed mark for the next shared commit and wait for it."""
        await self._submit(_Mark(message_id, at))

    async def record_receipt(self, write: ReceiptWrite) -> bool:
        """Queue the receipt (and its deadline changes) for the next shared commit."""
        return bool(await self._submit(write))

    async def open_deadlines(self, items: Sequence[tuple[str, str, str | None, datetime]]) -> int:
        """Straight through: an accepted message's deadlines open with its decision; this
        is the rare repeat for a redelivered one."""
        return await self.inner.open_deadlines(items)

    async def get_message(self, message_id: str) -> MessageRecord | None:
        """Read through to the inner store."""
        return await self.inner.get_message(message_id)

    async def append_events(self, events: Sequence[StatusEvent]) -> int:
        """Write through to the inner store (broker-vouched events, rare: dead letters)."""
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

    async def _submit(self, write: _Write) -> _Result:
        return await self._group.submit(write)

    async def _write(self, batch: Sequence[_Write]) -> list[_Result]:
        """Write ``batch`` in one transaction; each write's result, in order."""
        decisions: list[tuple[MessageRecord, Sequence[StatusEvent]]] = []
        marks: list[tuple[str, datetime]] = []
        receipts: list[ReceiptWrite] = []
        item_opens: list[Sequence[tuple[str, str, str | None, datetime]]] = []
        for write in batch:
            if isinstance(write, _Decision):
                decisions.append((write.record, write.events))
                item_opens.append(write.opens)
            elif isinstance(write, _Mark):
                marks.append((write.message_id, write.at))
            else:
                receipts.append(write)
        written = await self.inner.write_batch(decisions, marks, receipts, item_opens=item_opens)
        recorded = iter(written.recorded)
        flags = iter(written.receipts)
        results: list[_Result] = []
        for write in batch:
            if isinstance(write, _Decision):
                results.append(next(recorded))
            elif isinstance(write, ReceiptWrite):
                results.append(next(flags))
            else:
                results.append(None)
        return results


def _one_writes_fault(exc: Exception) -> bool:
    """Whether a failed batch may be one write's fault: not when the database is away."""
    return not isinstance(exc, Unavailable | ConnectionError | OSError | TimeoutError)
