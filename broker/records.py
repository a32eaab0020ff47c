"""What the broker stores, as plain values, and the store protocol (the seam to SQL).

Pure: dataclasses and a ``typing.Protocol``. ``broker.store.SqlStore``
implements the protocol over SQLAlchemy Core (SQLite or PostgreSQL); tests of
the pure core may use an in-memory one. Nothing here ever holds content, a
key or a personnummer: a message record is its signed header's metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from broker.deadlines import Plan
from schemas.audit import AuditEntry


class Outcome(StrEnum):
    """The broker's decision on an ingress message."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One message's header metadata and the broker's decision on it."""

    message_id: str
    digest: str  # SHA-256 hex of the signature input (keys.envelope.Verified.digest)
    kind: str
    sender: str
    sender_kid: str
    child: str  # pseudonym
    basis_type: str  # "consent" or "legal"
    basis_ref: str  # consent id or legal basis code
    purpose: str
    thread: str
    in_reply_to: str | None
    created: datetime
    expires: datetime
    received_at: datetime
    outcome: Outcome
    reason: str | None  # ReasonCode value when rejected
    rule: str | None  # policy rule id when accepted
    legal_ref: str | None  # the legal reference of that rule
    recipients: tuple[str, ...]  # agency ids the message is (to be) routed to
    routed_at: datetime | None = None  # set once every recipient publish was confirmed
    log_index: int | None = None  # the index of the decision's audit entry, once logged


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """One entry of a message's append-only status list.

    ``agency`` is the recipient the event concerns, or None for message-level
    events (the broker's accepted / rejected). ``receipt_id`` de-duplicates
    signed receipts: the same receipt recorded twice is one event.
    """

    message_id: str
    agency: str | None
    status: str  # ReceiptStatus value, or "routed"
    at: datetime  # when it happened, as the signer says
    recorded_at: datetime  # when the broker recorded it
    signer: str  # agency id (or the broker's id) that vouches for it
    receipt_id: str | None = None
    reason: str | None = None
    answer: str | None = None
    decline_reason: str | None = None
    staff_id: str | None = None


#: What a receipt does to the deadlines, given its message's timeline up to and including it.
ReceiptPlanner = Callable[[Sequence[StatusEvent]], Plan]


@dataclass(frozen=True, slots=True)
class ReceiptWrite:
    """A recipient's verified receipt to record, with the message it is for.

    ``record`` is the message as stored (the receipt was checked against it);
    ``deadlines``, if given, says which deadlines the receipt opens and closes,
    applied in the transaction that records it.
    """

    record: MessageRecord
    event: StatusEvent
    deadlines: ReceiptPlanner | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """Result of ``record_decision``: the stored record, and whether this call created it."""

    record: MessageRecord
    created: bool


@dataclass(frozen=True, slots=True)
class BatchWritten:
    """What one group-commit transaction (``SqlStore.write_batch``) did."""

    recorded: list[Recorded]  # one per decision, in order
    receipts: list[bool]  # one per receipt, in order: written (False: its id was stored)
    opened: int  # deadlines opened


class Store(Protocol):
    """Durable broker state. Every method commits before it returns."""

    async def record_decision(
        self,
        record: MessageRecord,
        events: Sequence[StatusEvent],
        opens: Sequence[tuple[str, str, str | None, datetime]] = (),
    ) -> Recorded:
        """Insert the message and its first events, unless its id exists.

        If a message with this id is already stored, nothing is written and
        the stored record is returned with ``created=False``: the id is unique,
        so a redelivered or replayed message is never decided twice. ``opens``
        are the deadlines ``(message id, rule, agency or None, due at)`` its
        acceptance opens, opened with it only if this call created it.
        """
        ...

    async def get_message(self, message_id: str) -> MessageRecord | None:
        """The stored record of a message, or None."""
        ...

    async def mark_routed(self, message_id: str, at: datetime) -> None:
        """Record that every recipient publish of the message was confirmed."""
        ...

    async def append_events(self, events: Sequence[StatusEvent]) -> int:
        """Append status events; one whose receipt id is already stored is skipped.

        Returns the number of events actually written.
        """
        ...

    async def record_receipt(self, write: ReceiptWrite) -> bool:
        """Record a recipient's receipt, audited, and apply its deadline changes, together.

        False if its receipt id is already stored (the event is not written
        again, the deadline changes are applied again: they are idempotent).
        """
        ...

    async def open_deadlines(self, items: Sequence[tuple[str, str, str | None, datetime]]) -> int:
        """Open deadlines ``(message id, rule, agency or None, due at)``; a stored one stays.

        Returns how many were new (a redelivered message opens nothing twice).
        """
        ...

    async def timeline(self, message_id: str) -> list[StatusEvent]:
        """Every status event of a message, oldest first (by ``at``, then insertion)."""
        ...

    async def append_audit(self, entries: Sequence[AuditEntry]) -> list[int]:
        """Append audit entries that go with no other write; their log indices.

        Decisions, routing, receipts and consents are audited by the store in
        the transaction that writes them; this is for the rest (refusals of
        input that is not stored, dead letters, reads of the audit itself).
        """
        ...

    async def ping(self) -> None:
        """Raise if the database cannot be reached."""
        ...
