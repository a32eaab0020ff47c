"""Group commit: concurrent decisions share transactions and each caller gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from broker.audit.log import log_size
from broker.batching import GroupCommitStore
from broker.deadlines import CloseDeadline, OpenDeadline, Plan
from broker.records import BatchWritten, MessageRecord, Outcome, ReceiptWrite, Recorded, StatusEvent
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
        self.receipts: list[int] = []

    async def write_batch(
        self,
        items: Sequence[tuple[MessageRecord, Sequence[StatusEvent]]],
        marks: Sequence[tuple[str, datetime]],
        receipts: Sequence[ReceiptWrite] = (),
        opens: Sequence[tuple[str, str, str | None, datetime]] = (),
        item_opens: Sequence[Sequence[tuple[str, str, str | None, datetime]]] = (),
    ) -> BatchWritten:
        self.batches.append(len(items))
        self.shapes.append((len(items), len(marks)))
        self.receipts.append(len(receipts))
        return await super().write_batch(items, marks, receipts, opens, item_opens)


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
    """A bulk store whose every write fails, as when the database is away."""

    def __init__(self) -> None:
        self.attempts = 0

    async def write_batch(
        self,
        items: Sequence[tuple[MessageRecord, Sequence[StatusEvent]]],
        marks: Sequence[tuple[str, datetime]],
        receipts: Sequence[ReceiptWrite] = (),
        opens: Sequence[tuple[str, str, str | None, datetime]] = (),
        item_opens: Sequence[Sequence[tuple[str, str, str | None, datetime]]] = (),
    ) -> BatchWritten:
        self.attempts += 1
        await asyncio.sleep(0)
        raise ConnectionError("database away")


async def test_a_failed_commit_fails_every_caller_in_it() -> None:
    """No caller of a failed batch believes its decision was stored; the database being
    away is not one write's fault, so the batch is not tried again write by write."""
    failing = _Failing()
    grouped = GroupCommitStore(failing)  # type: ignore[arg-type] # only write_batch is used
    records = [_record(i) for i in range(10)]
    results = await asyncio.gather(
        *(grouped.record_decision(r, []) for r in records), return_exceptions=True
    )
    assert all(isinstance(result, ConnectionError) for result in results)
    assert failing.attempts == 1


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


def _receipt(record: MessageRecord, agency: str, status: str, receipt_id: str) -> StatusEvent:
    return StatusEvent(
        record.message_id,
        agency,
        status,
        T0 + timedelta(minutes=1),
        T0 + timedelta(minutes=1),
        agency,
        receipt_id=receipt_id,
    )


async def test_concurrent_receipts_share_commits_and_each_is_audited_once(
    store: SqlStore,
) -> None:
    """Receipts arriving together take few transactions; a repeated receipt id is one event."""
    counting = _Counting(store)
    grouped = GroupCommitStore(counting)
    records = [_record(i) for i in range(10)]
    await asyncio.gather(*(grouped.record_decision(r, [_accepted(r)]) for r in records))
    async with store.engine.connect() as conn:
        before = await log_size(conn)
    writes = [
        ReceiptWrite(r, _receipt(r, agency, "delivered", f"{agency}-{i}"))
        for i, r in enumerate(records)
        for agency in ("soc", "bup")
    ]
    repeat = ReceiptWrite(records[0], writes[0].event)
    written = await asyncio.gather(*(grouped.record_receipt(w) for w in [*writes, repeat]))
    assert written == [True] * 20 + [False], "the first of two equal receipts is the one written"
    assert sum(counting.receipts) == 21
    assert 1 <= len([n for n in counting.receipts if n]) < 5, counting.receipts
    async with store.engine.connect() as conn:
        assert await log_size(conn) == before + 20
    for record in records:
        timeline = await store.timeline(record.message_id)
        assert [(e.status, e.agency) for e in timeline] == [
            ("accepted", None),
            ("delivered", "soc"),
            ("delivered", "bup"),
        ]
    assert await grouped.record_receipt(repeat) is False, "and again later: still one"


async def test_each_receipt_plans_from_the_timeline_up_to_itself(store: SqlStore) -> None:
    """Two receipts for one message in one batch: each planner sees what one-by-one would.

    The first opens a deadline and the second closes it: applied in their
    order, the deadline ends closed. A repeat of the first, later, is not
    written again and opens nothing again (the deadline stays closed).
    """
    counting = _Counting(store)
    grouped = GroupCommitStore(counting)
    record = _record(1)
    await grouped.record_decision(record, [_accepted(record)])
    seen: list[list[str]] = []
    due = T0 + timedelta(days=1)

    def opens(timeline: Sequence[StatusEvent]) -> Plan:
        seen.append([e.status for e in timeline])
        return Plan(open=(OpenDeadline("answer", record.message_id, "soc", due),))

    def closes(timeline: Sequence[StatusEvent]) -> Plan:
        seen.append([e.status for e in timeline])
        return Plan(close=(CloseDeadline("answer", record.message_id, "soc"),))

    counting.receipts.clear()
    delivered = ReceiptWrite(record, _receipt(record, "soc", "delivered", "r-1"), opens)
    answered = ReceiptWrite(record, _receipt(record, "soc", "answered", "r-2"), closes)
    written = await asyncio.gather(
        grouped.record_receipt(delivered), grouped.record_receipt(answered)
    )
    assert list(written) == [True, True]
    assert counting.receipts == [2], "both in one transaction"
    assert seen == [["accepted", "delivered"], ["accepted", "delivered", "answered"]]
    assert await store.open_matters() == []
    assert await grouped.record_receipt(delivered) is False
    assert await store.open_matters() == [], "a closed deadline is not opened again"
    assert seen[-1] == ["accepted", "delivered", "answered"]


async def test_a_receipt_opens_its_deadlines_in_its_own_transaction(store: SqlStore) -> None:
    """Recorded alone, a receipt's deadline is open once it returns; opening is idempotent."""
    grouped = GroupCommitStore(store)
    record = _record(2)
    await grouped.record_decision(record, [_accepted(record)])
    due = T0 + timedelta(days=2)

    def opens(_timeline: Sequence[StatusEvent]) -> Plan:
        return Plan(open=(OpenDeadline("answer", record.message_id, "bup", due),))

    write = ReceiptWrite(record, _receipt(record, "bup", "delivered", "r-3"), opens)
    assert await grouped.record_receipt(write) is True
    assert await grouped.open_deadlines([(record.message_id, "delivery", None, due)]) == 1
    assert await grouped.open_deadlines([(record.message_id, "delivery", None, due)]) == 0
    assert sorted((m.rule, m.agency, m.due_at) for m in await store.open_matters()) == [
        ("answer", "bup", due),
        ("delivery", None, due),
    ]


async def test_a_receipt_for_another_message_is_refused_before_any_write(
    store: SqlStore,
) -> None:
    record = _record(3)
    other = _record(4)
    await store.record_decision(record, [_accepted(record)])
    with pytest.raises(ValueError, match="belong"):
        await store.record_receipt(ReceiptWrite(record, _receipt(other, "soc", "read", "r-4")))
    assert len(await store.timeline(record.message_id)) == 1


async def test_receipts_touching_distinct_deadlines_apply_them_all_together(
    store: SqlStore,
) -> None:
    """Ten receipts, each closing its message's delivery deadline and opening an answer one."""
    grouped = GroupCommitStore(store)
    records = [_record(i) for i in range(20, 30)]
    await asyncio.gather(*(grouped.record_decision(r, [_accepted(r)]) for r in records))
    due = T0 + timedelta(days=3)
    await grouped.open_deadlines([(r.message_id, "delivery", "soc", due) for r in records])

    def planner(record: MessageRecord) -> Callable[[Sequence[StatusEvent]], Plan]:
        def plan(_timeline: Sequence[StatusEvent]) -> Plan:
            return Plan(
                open=(OpenDeadline("answer", record.message_id, "soc", due),),
                close=(CloseDeadline("delivery", record.message_id, "soc"),),
            )

        return plan

    writes = [
        ReceiptWrite(r, _receipt(r, "soc", "delivered", f"d-{i}"), planner(r))
        for i, r in enumerate(records)
    ]
    assert await asyncio.gather(*(grouped.record_receipt(w) for w in writes)) == [True] * 10
    matters = await store.open_matters()
    assert sorted((m.message_id, m.rule) for m in matters) == sorted(
        (r.message_id, "answer") for r in records
    )


async def test_a_decision_opens_its_deadlines_only_if_it_created_the_message(
    store: SqlStore,
) -> None:
    """The first of two decisions on one id opens its deadline; the replay with other
    bytes, in the same batch or later, opens none of its own."""
    grouped = GroupCommitStore(store)
    record = _record(40)
    forged = replace(record, digest="f" * 64, recipients=("polis",))
    due = T0 + timedelta(days=1)
    first, second = await asyncio.gather(
        grouped.record_decision(
            record, [_accepted(record)], [(record.message_id, "d", "soc", due)]
        ),
        grouped.record_decision(forged, [], [(record.message_id, "d", "polis", due)]),
    )
    assert (first.created, second.created) == (True, False)
    await grouped.record_decision(forged, [], [(record.message_id, "d2", "polis", due)])
    assert [(m.rule, m.agency) for m in await store.open_matters()] == [("d", "soc")]


async def test_one_bad_write_fails_only_its_caller(store: SqlStore) -> None:
    """A decision the store refuses (a recipient listed twice) fails alone; its batch's
    other decisions are written all the same."""
    grouped = GroupCommitStore(store)
    good = [_record(i) for i in range(50, 55)]
    bad = replace(_record(55), recipients=("soc", "soc"))
    results = await asyncio.gather(
        *(grouped.record_decision(r, [_accepted(r)]) for r in [*good[:2], bad, *good[2:]]),
        return_exceptions=True,
    )
    assert isinstance(results[2], ValueError)
    assert [r.created for r in results if isinstance(r, Recorded)] == [True] * 5
    for record in good:
        assert await store.get_message(record.message_id) is not None
    assert await store.get_message(bad.message_id) is None
