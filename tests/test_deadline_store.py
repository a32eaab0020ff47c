"""Deadlines in the real store: opened once, closed by acting, escalated exactly once per due time,
also with several broker instances on one PostgreSQL and across a restart."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from broker.audit.entry import read_entry
from broker.records import MessageRecord, Outcome
from broker.store import DeadlineRow, SqlStore, create_store
from schemas.audit import AuditEntry
from tests.support import T0


def _record(**changes: Any) -> MessageRecord:
    record = MessageRecord(
        message_id=str(uuid.uuid4()),
        digest="d" * 64,
        kind="referral",
        sender="skola-backa",
        sender_kid="k1",
        child="c" * 64,
        basis_type="legal",
        basis_ref="osl-10-28",
        purpose="referral",
        thread=str(uuid.uuid4()),
        in_reply_to=None,
        created=T0,
        expires=T0 + timedelta(days=30),
        received_at=T0,
        outcome=Outcome.ACCEPTED,
        reason=None,
        rule="osl-10-28.concern-report",
        legal_ref="OSL 10 kap. 28 §",
        recipients=("soc-backa", "bup-vast"),
    )
    return replace(record, **changes)


async def _messages(store: SqlStore, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        record = _record()
        await store.record_decision(record, [])
        ids.append(record.message_id)
    return ids


async def test_a_deadline_opens_once_and_closes_when_someone_acts(store: SqlStore) -> None:
    """Opening the same deadline twice is one; closing it makes it never due."""
    (mid,) = await _messages(store, 1)
    items = [(mid, "referral.not-answered", "soc-backa", T0 + timedelta(days=1))]
    assert await store.open_deadlines(items) == 1
    assert await store.open_deadlines(items) == 0, "a redelivered message opens nothing twice"
    assert await store.open_deadlines([(mid, "referral.declined-by-all", None, T0)]) == 1
    assert await store.open_deadlines([(mid, "referral.declined-by-all", None, T0)]) == 0
    assert len(await store.open_matters()) == 2
    assert await store.close_deadlines(mid, ["referral.not-answered"], "soc-backa", T0) == 1
    assert [m.rule for m in await store.open_matters(agency="soc-backa")] == [
        "referral.declined-by-all"
    ]


async def test_open_matters_filter_by_party_and_due_time_and_count_per_rule(
    store: SqlStore,
) -> None:
    """The gaps view's filters and the watchdog's gauges, computed in the query."""
    first, second = await _messages(store, 2)
    other = _record(sender="vc-backa", recipients=("bvc-backa",))
    await store.record_decision(other, [])
    await store.open_deadlines(
        [
            (first, "referral.not-answered", "soc-backa", T0 + timedelta(hours=2)),
            (second, "referral.not-answered", "bup-vast", T0 + timedelta(hours=30)),
            (second, "delivery", "soc-backa", T0 + timedelta(hours=1)),
            (other.message_id, "delivery", "bvc-backa", T0 + timedelta(hours=5)),
        ]
    )
    await store.close_deadlines(second, ["delivery"], "soc-backa", T0)

    def seen(rows: Sequence[DeadlineRow]) -> list[tuple[str, str | None]]:
        return [(m.message_id, m.agency) for m in rows]

    assert seen(await store.open_matters(due_by=T0 + timedelta(hours=24))) == [
        (first, "soc-backa"),
        (other.message_id, "bvc-backa"),
    ]
    assert seen(await store.open_matters(agency="skola-backa")) == [
        (first, "soc-backa"),
        (second, "bup-vast"),
    ], "the sender sees its matters"
    assert seen(await store.open_matters(agency="bvc-backa")) == [(other.message_id, "bvc-backa")]
    assert await store.open_matters(agency="polis-syd") == []
    assert await store.open_matter_counts() == (
        {"referral.not-answered": 2, "delivery": 1},
        T0 + timedelta(hours=2),
    )


async def test_no_open_matter_counts_nothing(store: SqlStore) -> None:
    assert await store.open_matter_counts() == ({}, None)


async def test_a_deadline_fires_at_its_time_not_a_microsecond_before(store: SqlStore) -> None:
    """escalate_due takes nothing early; at the due time it escalates and moves to the repeat."""
    (mid,) = await _messages(store, 1)
    due = T0 + timedelta(hours=4)
    await store.open_deadlines([(mid, "delivery", "soc-backa", due)])
    seen: list[DeadlineRow] = []

    async def escalate(row: DeadlineRow) -> tuple[datetime, Sequence[AuditEntry]]:
        seen.append(row)
        return row.due_at + timedelta(hours=24), [read_entry(actor="watchdog", query="x", at=T0)]

    early = due - timedelta(microseconds=1)
    assert await store.escalate_due(early, instance="a", escalate=escalate) == 0
    assert await store.escalate_due(due, instance="a", escalate=escalate) == 1
    assert await store.escalate_due(due, instance="a", escalate=escalate) == 0, "not twice"
    assert [(r.message_id, r.agency, r.attempts) for r in seen] == [(mid, "soc-backa", 0)]
    assert seen[0].recipients == ("soc-backa", "bup-vast")
    (matter,) = await store.open_matters()
    assert (matter.due_at, matter.attempts) == (due + timedelta(hours=24), 1)


async def test_a_failed_escalation_stays_due(store: SqlStore) -> None:
    """If sending fails (RabbitMQ away, a crash), nothing is recorded and it is due again."""
    (mid,) = await _messages(store, 1)
    await store.open_deadlines([(mid, "delivery", "soc-backa", T0)])

    async def broken(row: DeadlineRow) -> tuple[datetime, Sequence[AuditEntry]]:
        raise ConnectionError("RabbitMQ is away")

    with pytest.raises(ConnectionError):
        await store.escalate_due(T0, instance="a", escalate=broken)
    (matter,) = await store.open_matters()
    assert (matter.due_at, matter.attempts) == (T0, 0)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_instances_escalate_each_deadline_once(
    store: SqlStore, database_url: str
) -> None:
    """Two broker instances on one PostgreSQL race for 20 due deadlines: each escalates once."""
    ids = await _messages(store, 20)
    await store.open_deadlines([(mid, "delivery", "soc-backa", T0) for mid in ids])
    other = create_store(database_url)
    counts: Counter[str] = Counter()

    async def escalate(row: DeadlineRow) -> tuple[datetime, Sequence[AuditEntry]]:
        counts[row.message_id] += 1
        await asyncio.sleep(0.01)  # hold the row while the other instance looks
        return T0 + timedelta(days=1), []

    try:
        done = await asyncio.gather(
            store.escalate_due(T0, instance="a", escalate=escalate),
            other.escalate_due(T0, instance="b", escalate=escalate),
        )
    finally:
        await other.close()
    assert sum(done) == 20
    assert counts == Counter(dict.fromkeys(ids, 1))
    assert min(done) > 0, "both instances took part: the test proves the lock, not luck"
