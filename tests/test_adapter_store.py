"""The adapter's SQLite store: what it promises survives, once, and belongs to one agency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.store import AdapterStore, AdapterStoreError, IdempotencyConflict
from tests.support import T0

MESSAGE = "019abb2a-6a51-7000-8000-000000000001"
OTHER = "019abb2a-6a51-7000-8000-000000000002"
RECEIPT = "019abb2a-6a51-7000-8000-0000000000a1"


async def _submit(
    store: AdapterStore, message_id: str, key: str | None, digest: str
) -> tuple[str, bool]:
    return await store.submit(
        message_id=message_id,
        idempotency_key=key,
        request_digest=digest,
        kind="referral",
        recipients=["soc"],
        child="ab" * 32,
        thread=message_id,
        digest="cd" * 32,
        wire=b"{}",
        amqp_type="backa.envelope.v1",
        now=T0,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AdapterStore]:
    """A fresh store for agency "skola"."""
    opened = await AdapterStore.open(tmp_path / "adapter.db", "skola")
    yield opened
    await opened.close()


async def test_an_idempotency_key_gives_the_first_message(store: AdapterStore) -> None:
    """The same key and request twice is one message; the key with another request is refused."""
    assert await _submit(store, MESSAGE, "k1", "11" * 32) == (MESSAGE, True)
    assert await _submit(store, OTHER, "k1", "11" * 32) == (MESSAGE, False)
    with pytest.raises(IdempotencyConflict):
        await _submit(store, OTHER, "k1", "22" * 32)
    assert [r.message_id for r in await store.sent_messages()] == [MESSAGE]


async def test_the_outbox_retries_with_backoff_until_confirmed(store: AdapterStore) -> None:
    """A deferred item is not due until its time; a sent one is never due again."""
    await _submit(store, MESSAGE, None, "11" * 32)
    (item,) = await store.due_outbox(T0)
    await store.defer(item.id, T0 + timedelta(seconds=4))
    assert await store.due_outbox(T0 + timedelta(seconds=3)) == []
    (again,) = await store.due_outbox(T0 + timedelta(seconds=4))
    assert again.attempts == 1
    await store.mark_sent(again.id, T0 + timedelta(seconds=5))
    assert await store.due_outbox(T0 + timedelta(days=1)) == []
    (sent,) = await store.sent_messages()
    assert sent.outbox_sent


async def test_a_received_message_is_stored_once_with_its_receipt(store: AdapterStore) -> None:
    """A redelivered message is a duplicate: no second row, no second receipt."""
    args: dict[str, Any] = {
        "message_id": MESSAGE,
        "sender": "soc",
        "kind": "referral",
        "header": b"{}",
        "digest": "cd" * 32,
        "content": b"{}",
        "child_age": 9,
        "state": "delivered",
        "reason": None,
        "receipt": (RECEIPT, b"receipt", "backa.receipt.v1"),
        "now": T0,
    }
    assert await store.store_received(**args)
    assert not await store.store_received(**args)
    assert [i.id for i in await store.due_outbox(T0)] == [RECEIPT]
    (due,) = await store.due_handovers(T0)
    assert due.child_age == 9


async def test_a_revocation_is_never_undone(store: AdapterStore) -> None:
    """A registration notice arriving after the revocation does not bring the consent back."""
    await store.put_consent("c1", notice=b"registered", revoked=False)
    await store.put_consent("c1", notice=b"revoked", revoked=True)
    await store.put_consent("c1", notice=b"registered again", revoked=False)
    assert await store.consent_notices() == [b"revoked"]


async def test_a_file_of_another_agency_is_refused(tmp_path: Path) -> None:
    """Two adapters must never share a store: the file remembers whose it is."""
    first = await AdapterStore.open(tmp_path / "a.db", "skola")
    await first.close()
    with pytest.raises(AdapterStoreError, match="another agency"):
        await AdapterStore.open(tmp_path / "a.db", "bup")
