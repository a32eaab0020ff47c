"""Group commit in the adapter's store: shared transactions, each call its own answer.

Real SQLite files throughout (``synchronous=FULL``, as in production); a
``commit`` listener on the engine counts the transactions.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from adapters.runtime import AdapterRuntime, by_thread
from adapters.store import AdapterStore, AdapterStoreError, IdempotencyConflict
from keys.policy import load_policy
from keys.pseudonym import PseudonymKey
from schemas.directory import AgencyType
from tests.support import T0, Agency, det_bytes, signed_directory

SKOLA = Agency.make("skola")


def uid(n: int, prefix: str = "0000") -> str:
    """A message or receipt id, distinct per (prefix, n)."""
    return f"019abb2a-6a51-7000-{prefix}-{n:012d}"


@dataclass
class Commits:
    """How many transactions the engine committed."""

    count: int = 0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AdapterStore]:
    """A fresh store for agency "skola"."""
    opened = await AdapterStore.open(tmp_path / "adapter.db", "skola")
    yield opened
    await opened.close()


@pytest.fixture
def commits(store: AdapterStore) -> Iterator[Commits]:
    """Counts the store's commits from here on."""
    counter = Commits()

    def on_commit(_conn: Any) -> None:
        counter.count += 1

    sa.event.listen(store.engine.sync_engine, "commit", on_commit)
    yield counter
    sa.event.remove(store.engine.sync_engine, "commit", on_commit)


async def sent_message(store: AdapterStore, message_id: str) -> None:
    """Record ``message_id`` as sent by this adapter (in the outbox, not yet published)."""
    await store.submit(
        message_id=message_id,
        idempotency_key=None,
        request_digest="11" * 32,
        kind="referral",
        recipients=["soc"],
        child="ab" * 32,
        thread=message_id,
        digest="cd" * 32,
        wire=b"{}",
        amqp_type="backa.envelope.v1",
        now=T0,
    )


def receipt(receipt_id: str, message_id: str, **fields: Any) -> dict[str, Any]:
    """``record_event``'s arguments for a ``delivered`` receipt."""
    return {
        "receipt_id": receipt_id,
        "message_id": message_id,
        "status": "delivered",
        "agency": "soc",
        "at": T0,
        **fields,
    }


def received(message_id: str, receipt_id: str, **fields: Any) -> dict[str, Any]:
    """``store_received``'s arguments for a delivered message with its receipt."""
    return {
        "message_id": message_id,
        "sender": "soc",
        "kind": "referral",
        "header": b"{}",
        "digest": "cd" * 32,
        "content": b"content",
        "child_age": 9,
        "state": "delivered",
        "reason": None,
        "receipt": (receipt_id, b"receipt", "backa.receipt.v1"),
        "now": T0,
        **fields,
    }


def file_rows(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the file through a connection of its own: what is committed, nothing else."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


async def due_ids(store: AdapterStore, at: datetime = T0) -> set[str]:
    """The ids of the outbox items due at ``at``."""
    return {item.id for item in await store.due_outbox(at, limit=1000)}


async def test_concurrent_receipts_share_transactions_and_each_gets_its_own_answer(
    store: AdapterStore, commits: Commits
) -> None:
    """Duplicates within the batch, receipts recorded before and unknown messages are False."""
    messages = [uid(n) for n in range(8)]
    for message_id in messages:
        await sent_message(store, message_id)
    assert await store.record_event(**receipt(uid(0, "e000"), messages[0]))
    calls = [receipt(uid(n, "e000"), message_id) for n, message_id in enumerate(messages)]
    expected = [n != 0 for n in range(len(messages))]  # n=0: the id recorded before
    calls.append(receipt(uid(1, "e000"), messages[1]))  # the same id again in this batch
    expected.append(False)
    calls.append(receipt(uid(50, "e000"), uid(50)))  # a message this adapter did not send
    expected.append(False)
    calls.append(receipt(uid(51, "e000"), uid(51)))  # its id, unknown message first …
    expected.append(False)
    calls.append(receipt(uid(51, "e000"), messages[2]))  # … then a sent one: recorded
    expected.append(True)
    commits.count = 0
    results = await asyncio.gather(*(store.record_event(**call) for call in calls))
    assert results == expected
    assert commits.count < len(calls)
    assert [e["receipt_id"] for e in await store.events(messages[2])] == [
        uid(2, "e000"),
        uid(51, "e000"),
    ]
    assert await store.events(uid(50)) == []


async def test_concurrent_received_messages_share_transactions_and_a_duplicate_is_refused(
    store: AdapterStore, commits: Commits
) -> None:
    """Each message is stored once with its receipt; a duplicate gets False and queues nothing."""
    assert await store.store_received(**received(uid(0), uid(0, "r000")))
    calls = [received(uid(n), uid(n, "r000")) for n in range(20)]
    calls.append(received(uid(5), uid(5, "r001")))  # redelivered within the batch
    commits.count = 0
    results = await asyncio.gather(*(store.store_received(**call) for call in calls))
    assert results == [n != 0 for n in range(20)] + [False]
    assert commits.count < len(calls)
    assert await due_ids(store) == {uid(n, "r000") for n in range(20)}
    assert len(await store.due_handovers(T0)) == 20


async def test_settlements_receipts_and_sent_marks_share_one_transaction(
    store: AdapterStore, commits: Commits, tmp_path: Path
) -> None:
    """A hand-over keeps the content, a refusal drops it, a settled message stays settled."""
    for n in range(3):
        assert await store.store_received(**received(uid(n), uid(n, "r000")))
    await store.settle_handover(
        uid(2),
        state="handed_over",
        reason=None,
        receipt=(uid(2, "h000"), b"handed over", "backa.receipt.v1"),
        now=T0,
    )
    later = T0 + timedelta(minutes=1)
    commits.count = 0
    await asyncio.gather(
        store.settle_handover(
            uid(0),
            state="handed_over",
            reason=None,
            receipt=(uid(0, "h000"), b"handed over", "backa.receipt.v1"),
            now=later,
        ),
        store.settle_handover(
            uid(1),
            state="rejected",
            reason="consent_missing",
            receipt=(uid(1, "h000"), b"rejected", "backa.receipt.v1"),
            now=later,
        ),
        store.settle_handover(  # settled before: the state stands
            uid(2),
            state="rejected",
            reason="consent_missing",
            receipt=(uid(2, "h001"), b"rejected", "backa.receipt.v1"),
            now=later,
        ),
        store.queue_receipt(uid(9, "q000"), b"queued", "backa.receipt.v1", later),
        store.queue_receipt(uid(0, "r000"), b"queued again", "backa.receipt.v1", later),
        store.mark_sent(uid(1, "r000"), later),
        store.mark_sent_many([uid(2, "r000"), uid(2, "h000")], later),
    )
    assert commits.count == 1
    rows = {
        row[0]: row[1:]
        for row in file_rows(
            tmp_path / "adapter.db",
            "SELECT message_id, state, reason, content, handed_over_at IS NOT NULL FROM inbox",
        )
    }
    assert rows == {
        uid(0): ("handed_over", None, b"content", 1),
        uid(1): ("rejected", "consent_missing", None, 0),
        uid(2): ("handed_over", None, b"content", 1),
    }
    assert await due_ids(store, later) == {
        uid(0, "r000"),
        uid(0, "h000"),
        uid(1, "h000"),
        uid(2, "h001"),
        uid(9, "q000"),
    }
    (body,) = file_rows(
        tmp_path / "adapter.db", "SELECT body FROM outbox WHERE id = ?", uid(0, "r000")
    )
    assert body == (b"receipt",)  # queued once: the first body stands


async def test_a_failing_write_does_not_lose_the_others(
    store: AdapterStore, commits: Commits
) -> None:
    """The batch is written again one by one: each caller learns what became of its own write."""
    await sent_message(store, uid(0))
    commits.count = 0
    results = await asyncio.gather(
        store.store_received(**received(uid(1), uid(1, "r000"))),
        store.store_received(**received(uid(2), uid(2, "r000"), sender=None)),  # NOT NULL
        store.record_event(**receipt(uid(1, "e000"), uid(0))),
        store.record_event(**receipt(uid(2, "e000"), uid(0), status=None)),  # NOT NULL
        store.mark_sent(uid(0), datetime(2026, 11, 25, 9, 31)),  # noqa: DTZ001 - a naive time
        store.store_received(**received(uid(3), uid(3, "r000"))),
        return_exceptions=True,
    )
    assert results[0] is True
    assert isinstance(results[1], IntegrityError)
    assert results[2] is True
    assert results[3] is False  # refused by the table, as an IntegrityError always was
    assert isinstance(results[4], AdapterStoreError)
    assert results[5] is True
    assert commits.count > 1  # the failed batch, then one transaction per write
    assert {row.message_id for row in await store.due_handovers(T0)} == {uid(1), uid(3)}
    assert [e["receipt_id"] for e in await store.events(uid(0))] == [uid(1, "e000")]
    assert uid(0) in await due_ids(store)


async def test_an_idle_call_commits_at_once(
    store: AdapterStore, commits: Commits, tmp_path: Path
) -> None:
    """With nothing else queued, one call is one transaction, committed when it returns."""
    commits.count = 0
    assert await asyncio.wait_for(store.store_received(**received(uid(1), uid(1, "r000"))), 5)
    assert commits.count == 1
    assert file_rows(tmp_path / "adapter.db", "SELECT message_id FROM inbox") == [(uid(1),)]


async def test_a_cancelled_caller_does_not_cancel_the_transaction(
    store: AdapterStore, tmp_path: Path
) -> None:
    """Its write was queued, so it is committed with the others; the others get their answers."""
    tasks = [
        asyncio.create_task(store.store_received(**received(uid(n), uid(n, "r000"))))
        for n in range(4)
    ]
    await asyncio.sleep(0)  # every call queued
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert [done[0], done[2], done[3]] == [True, True, True]
    await store.close()  # waits for the writer
    reopened = await AdapterStore.open(tmp_path / "adapter.db", "skola")
    try:
        assert len(await reopened.due_handovers(T0)) == 4
    finally:
        await reopened.close()


@dataclass
class FakeConfirms(AdapterRuntime):
    """The runtime with RabbitMQ's confirms played by the test: some items are refused."""

    refuse: frozenset[str] = frozenset()
    database: Path = Path()
    in_flight: int = 0
    most_in_flight: int = 0

    async def _publish(self, item_id: str, amqp_type: str, body: bytes) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            sent_at = file_rows(self.database, "SELECT sent_at FROM outbox WHERE id = ?", item_id)
            assert sent_at == [(None,)], "marked sent before its confirm"
            if item_id in self.refuse:
                raise ConnectionError("refused")
        finally:
            self.in_flight -= 1


async def test_due_items_are_published_together_and_marked_sent_once_confirmed(
    store: AdapterStore, commits: Commits, tmp_path: Path
) -> None:
    """All due items are in flight at once; the confirmed are marked in one transaction."""
    items = [uid(n) for n in range(6)]
    for item in items:
        await sent_message(store, item)
    runtime = FakeConfirms(
        agency_id=SKOLA.agency,
        store=store,
        directory=signed_directory([(SKOLA, AgencyType.SCHOOL)]),
        signer=SKOLA.sender,
        recipient_keys=SKOLA.recipient,
        pseudonym_key=PseudonymKey(det_bytes("pseudonym", 32)),
        policy=load_policy(Path("deploy/policy/sweden.toml")),
        amqp_url="amqp://unused",
        clock=lambda: T0,
        refuse=frozenset(items[4:]),
        database=tmp_path / "adapter.db",
    )
    commits.count = 0
    await runtime._publish_due()  # the outbox step, without its loop
    assert runtime.most_in_flight == len(items)
    assert commits.count == 3  # due_outbox, the sent marks, the deferrals
    for item in items[:4]:
        found = await store.sent_message(item)
        assert found is not None
        assert found.outbox_sent
    assert await due_ids(store) == set()  # the refused ones wait for their backoff
    again = await store.due_outbox(T0 + timedelta(minutes=1))
    assert [(i.id, i.attempts) for i in again] == [(item, 1) for item in items[4:]]


def submission(message_id: str, key: str | None, request_digest: str = "11" * 32) -> dict[str, Any]:
    """``submit``'s arguments for one sealed referral."""
    return {
        "message_id": message_id,
        "idempotency_key": key,
        "request_digest": request_digest,
        "kind": "referral",
        "recipients": ["soc"],
        "child": "ab" * 32,
        "thread": message_id,
        "digest": "cd" * 32,
        "wire": b"{}",
        "amqp_type": "backa.envelope.v1",
        "now": T0,
    }


async def test_concurrent_submissions_share_commits_and_keep_idempotency(
    store: AdapterStore, commits: Commits
) -> None:
    """Twenty submissions at once: few commits; a repeated key gives the first id once.

    The same key with another request is refused for that caller alone: the
    others in its batch are stored all the same.
    """
    calls = [store.submit(**submission(uid(i), f"key-{i}")) for i in range(20)]
    calls.append(store.submit(**submission(uid(100), "key-3")))  # the same request again
    calls.append(store.submit(**submission(uid(101), "key-4", request_digest="22" * 32)))
    calls.append(store.submit(**submission(uid(102), None)))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[:20] == [(uid(i), True) for i in range(20)]
    assert results[20] == (uid(3), False), "a repeat answers with the first message's id"
    assert isinstance(results[21], IdempotencyConflict)
    assert results[22] == (uid(102), True)
    stored = {row.message_id for row in await store.sent_messages(limit=100)}
    assert stored == {uid(i) for i in range(20)} | {uid(102)}
    assert {item.id for item in await store.due_outbox(T0)} == stored
    assert commits.count <= 4, "one or two shared commits, and the two reads above"
    assert await store.submit(**submission(uid(103), "key-5")) == (uid(5), False), "and later"


async def test_threads_are_handed_over_side_by_side_each_in_its_order() -> None:
    """``by_thread``: items of one thread one after another, in order; threads overlap."""
    running = 0
    most = 0
    done: list[str] = []

    async def work(item: str) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01 * (3 - int(item[-1])))  # later items finish sooner if let
        done.append(item)
        running -= 1

    items = [f"{thread}{n}" for n in range(3) for thread in "abcdef"]
    await by_thread(items, lambda item: item[0], work, concurrency=4)
    assert sorted(done) == sorted(items), "every item once"
    for thread in "abcdef":
        assert [i for i in done if i[0] == thread] == [f"{thread}0", f"{thread}1", f"{thread}2"]
    assert most == 4, "four threads at a time, never more"


async def test_a_failed_hand_over_lets_the_other_threads_finish_then_raises() -> None:
    done: list[str] = []

    async def work(item: str) -> None:
        await asyncio.sleep(0)
        if item == "b0":
            raise ConnectionError("the agency system is away")
        done.append(item)

    with pytest.raises(ConnectionError):
        await by_thread(["a0", "b0", "b1", "c0", "a1"], lambda i: i[0], work, concurrency=8)
    assert sorted(done) == ["a0", "a1", "c0"], "b1 waits behind b0; the others are done"
