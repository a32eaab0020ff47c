"""Group commit: concurrent decisions share transactions and each caller gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from broker.audit.log import log_size
from broker.batching import GroupCommitStore
from broker.records import MessageRecord, Outcome, Recorded, StatusEvent
from broker.store import SqlStore
from tests.support import CHILD, T0


def _record(index: int) -> MessageRecord:
    return MessageRecord(
        message_id=f"019abb2a-6a50-7000-8000-{index:012x}",
        digest=f"{index:064x}",
        kind="referral",
        sender="skola",
        sender_kid="k2026",
        child=CHILD,
        basis_type="legal",
        basis_ref="osl-10-28",
        purpose="referral",
        thread=f"019abb2a-6a50-7000-8000-{index:012x}",
        in_reply_to=None,
        created=T0,
        expires=T0 + timedelta(days=30),
        received_at=T0,
        outcome=Outcome.ACCEPTED,
        reason=None,
        rule="dev.referral",
        legal_ref=None,
        recipients=("soc", "bup"),
    )


def _accepted(record: MessageRecord) -> StatusEvent:
    return StatusEvent(record.message_id, None, "accepted", T0, T0, "broker")


class _Counting(SqlStore):
    """The real SQL store, counting the transactions the group commit opens and their writes."""

    def __init__(self, inner: SqlStore) -> None:
        self.__dict__.update(inner.__dict__)
        self.batches: list[int] = []
        self.shapes: list[tuple[int, int]] = []

    async def write_batch(
        self,
        items: Sequence[tuple[MessageRecord, Sequence[StatusEvent]]],
        marks: Sequence[tuple[str, datetime]],
    ) -> list[Recorded]:
        self.batches.append(len(items))
        self.shapes.append((len(items), len(marks)))
        return await super().write_batch(items, marks)


async def test_concurrent_decisions_share_transactions(store: SqlStore) -> None:
    """200 concurrent decisions take far fewer than 200 transactions, and each is stored."""
    counting = _Counting(store)
    grouped = GroupCommitStore(counting)
    records = [_record(i) for i in range(200)]
    results = await asyncio.gather(*(grouped.record_decision(r, [_accepted(r)]) for r in records))
    assert all(result.created for result in results)
    assert [result.record.message_id for result in results] == [r.message_id for r in records]
    assert sum(counting.batches) == 200
    assert len(counting.batches) < 20, counting.batches
    for record in records[::37]:
        stored = await store.get_message(record.message_id)
        assert stored is not None
        assert stored.recipients == ("soc", "bup")
        assert [e.status for e in await store.timeline(record.message_id)] == ["accepted"]


async def test_the_same_id_twice_in_one_batch_is_created_once(store: SqlStore) -> None:
    """A redelivery racing its original is decided once; the second caller sees the first."""
    grouped = GroupCommitStore(store)
    record = _record(1)
    other = replace(record, digest="f" * 64)
    first, second = await asyncio.gather(
        grouped.record_decision(record, [_accepted(record)]),
        grouped.record_decision(other, [_accepted(other)]),
    )
    assert (first.created, second.created) == (True, False)
    assert second.record.digest == record.digest
    assert len(await store.timeline(record.message_id)) == 1


async def test_routed_marks_are_grouped_and_kept(store: SqlStore) -> None:
    """Concurrent routed marks are all written; the first time stands."""
    grouped = GroupCommitStore(store)
    records = [_record(i) for i in range(30)]
    await asyncio.gather(*(grouped.record_decision(r, [_accepted(r)]) for r in records))
    at = T0 + timedelta(seconds=5)
    await asyncio.gather(*(grouped.mark_routed(r.message_id, at) for r in records))
    await grouped.mark_routed(records[0].message_id, at + timedelta(hours=1))
    for record in records:
        stored = await store.get_message(record.message_id)
        assert stored is not None
        assert stored.routed_at == at


async def test_decisions_and_routed_marks_share_a_commit(store: SqlStore) -> None:
    """Marks of earlier messages and decisions of new ones arriving together take one commit.

    Each is stored as if written alone: the new messages unrouted with their
    decision logged, the earlier ones routed, and both audited in one tree.
    """
    counting = _Counting(store)
    grouped = GroupCommitStore(counting)
    earlier = [_record(i) for i in range(10)]
    await asyncio.gather(*(grouped.record_decision(r, [_accepted(r)]) for r in earlier))
    counting.shapes.clear()
    at = T0 + timedelta(seconds=5)
    later = [_record(i) for i in range(10, 20)]
    written = await asyncio.gather(
        *(grouped.mark_routed(r.message_id, at) for r in earlier),
        *(grouped.record_decision(r, [_accepted(r)]) for r in later),
    )
    assert counting.shapes == [(10, 10)]
    decided = [w for w in written if isinstance(w, Recorded)]
    assert [d.record.message_id for d in decided] == [r.message_id for r in later]
    indices = set()
    for record in earlier:
        stored = await store.get_message(record.message_id)
        assert stored is not None
        assert stored.routed_at == at
    for recorded in decided:
        stored = await store.get_message(recorded.record.message_id)
        assert stored is not None
        assert stored.routed_at is None
        assert stored.log_index == recorded.record.log_index is not None
        indices.add(stored.log_index)
    assert len(indices) == 10
    async with store.engine.connect() as conn:
        assert await log_size(conn) == 10 + 10 + 10  # earlier decisions, routed marks, new ones


class _Failing:
    """A bulk store whose every write fails."""

    async def write_batch(
        self,
        items: Sequence[tuple[MessageRecord, Sequence[StatusEvent]]],
        marks: Sequence[tuple[str, datetime]],
    ) -> list[Recorded]:
        await asyncio.sleep(0)
        raise ConnectionError("database away")


async def test_a_failed_commit_fails_every_caller_in_it() -> None:
    """No caller of a failed batch believes its decision was stored."""
    grouped = GroupCommitStore(_Failing())  # type: ignore[arg-type] # only write_batch is used
    records = [_record(i) for i in range(10)]
    results = await asyncio.gather(
        *(grouped.record_decision(r, []) for r in records), return_exceptions=True
    )
    assert all(isinstance(result, ConnectionError) for result in results)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_cancelled_caller_does_not_break_the_batch(store: SqlStore) -> None:
    """A caller that gives up while its batch is written leaves the others unaffected."""
    grouped = GroupCommitStore(store)
    records = [_record(i) for i in range(20)]
    tasks = [asyncio.create_task(grouped.record_decision(r, [_accepted(r)])) for r in records]
    await asyncio.sleep(0)
    tasks[3].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[3], asyncio.CancelledError)
    assert all(isinstance(d, Recorded) for i, d in enumerate(done) if i != 3)
