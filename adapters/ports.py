"""What the web inbox and the agency API need from the adapter's runtime: a Protocol.

The runtime (``adapters.runtime``) implements :class:`InboxPort` over its
SQLite store and RabbitMQ; the web inbox (``adapters.web``) only calls these
methods, so that what a person does in the browser and what an agency system
does over the API go through the same code and send the same receipts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from adapters.canonical import Received, SentTimeline
from schemas.receipts import Answer, DeclineReason


class UnknownMessageError(LookupError):
    """No received (or sent) message with that id at this adapter."""

    code = "unknown_message"
    http_status = 404


class AnswerConflictError(ValueError):
    """The message cannot be answered now (already answered, or never handed over)."""

    code = "answer_conflict"
    http_status = 409


@dataclass(frozen=True)
class Staff:
    """A person at the agency, as the web inbox knows them."""

    staff_id: str
    display_name: str


class InboxPort(Protocol):
    """The runtime's operations on received and sent messages."""

    @property
    def agency(self) -> str:
        """This adapter's agency id."""
        ...

    async def list_received(self) -> list[Received]:
        """Every handed-over message, newest first."""
        ...

    async def get_received(self, message_id: str) -> Received:
        """One received message; raises :class:`UnknownMessageError`."""
        ...

    async def mark_read(self, message_id: str, staff_id: str) -> Received:
        """Record that a person opened it and send the signed ``read`` receipt (once)."""
        ...

    async def answer(
        self,
        message_id: str,
        staff_id: str,
        answer: Answer,
        decline_reason: DeclineReason | None,
    ) -> Received:
        """Send the signed ``answered`` receipt; raises :class:`AnswerConflictError` if answered."""
        ...

    async def list_sent(self) -> list[SentTimeline]:
        """Every message this agency sent, newest first, with its timeline."""
        ...

    async def gaps(self) -> list[Gap] | None:
        """This agency's late and nearly late matters, or None when the broker's view is away."""
        ...


@dataclass(frozen=True)
class Gap:
    """A matter past or near its deadline, as the broker's gaps view (``GET /v1/gaps``) names it."""

    message_id: str
    rule: str
    kind: str
    sender: str
    recipient: str | None
    due_at: datetime
    late_seconds: int
    state: str  # "late" or "near"
    escalations: int
