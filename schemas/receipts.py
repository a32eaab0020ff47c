"""Signed receipts: the status events of a message, one per signer and step.

A receipt acknowledges one envelope by its digest (non-repudiation: the signer
cannot later claim it acknowledged something else) and reports one step:
accepted or rejected by the broker, delivered and handed over by the
recipient's adapter, read and answered by a person at the recipient, or
expired. Status is the append-only list of these events, never one field
overwritten, because receipts can arrive out of order.

The broker reads every receipt, so a receipt must never carry content: the
business answer is an enum and the decline reason is an enum, never free text.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, NonNegativeInt, model_validator

from schemas._base import WireModel
from schemas.common import (
    AgencyId,
    MessageId,
    PayloadB64,
    Sha256Hex,
    SignatureB64,
    StaffId,
    Timestamp,
)
from schemas.envelope import MAX_RECIPIENTS, Party
from schemas.reasons import ReasonCode


class ReceiptStatus(StrEnum):
    """One step in a message's life, in the order it normally happens."""

    ACCEPTED = "accepted"  # by the broker, after signature and policy checks
    REJECTED = "rejected"  # by the broker or a recipient adapter, with a reason code
    DELIVERED = "delivered"  # the recipient adapter verified and stored it
    HANDED_OVER = "handed_over"  # the recipient's agency system took it
    READ = "read"  # a person at the recipient opened it
    ANSWERED = "answered"  # a person accepted or declined it: the business answer
    EXPIRED = "expired"  # nobody acted before ``expires``

    @property
    def is_transport(self) -> bool:
        """Whether this status is about carrying the message rather than answering it."""
        return self in TRANSPORT_STATUSES


#: Statuses about carrying the message; kept apart from the business answer so
#: that "delivered" is never mistaken for "they will help". ``read`` is
#: transport too: it says the message reached a person, not what they decided.
TRANSPORT_STATUSES: frozenset[ReceiptStatus] = frozenset(
    {
        ReceiptStatus.ACCEPTED,
        ReceiptStatus.REJECTED,
        ReceiptStatus.DELIVERED,
        ReceiptStatus.HANDED_OVER,
        ReceiptStatus.READ,
        ReceiptStatus.EXPIRED,
    }
)

#: Statuses that name a person at the recipient (``staff_id``).
PERSON_STATUSES: frozenset[ReceiptStatus] = frozenset({ReceiptStatus.READ, ReceiptStatus.ANSWERED})


class Answer(StrEnum):
    """The business answer to a referral or an invitation."""

    ACCEPTED = "accepted"
    DECLINED = "declined"


class DeclineReason(StrEnum):
    """Why a recipient declined; a closed list, because the broker reads it."""

    NOT_OUR_REMIT = "not_our_remit"
    NO_CAPACITY = "no_capacity"
    ALREADY_KNOWN = "already_known"
    GUARDIAN_DECLINED = "guardian_declined"
    OTHER = "other"


class Receipt(WireModel):
    """One signed status event for one message, from the broker or a recipient.

    The fields that depend on ``status`` are required exactly when they apply
    and refused otherwise, so that a receipt means one thing only.
    """

    v: Literal[1]
    id: MessageId
    receipt_for: MessageId
    acknowledges: Sha256Hex
    status: ReceiptStatus
    by: Party
    at: Timestamp
    recipients: list[AgencyId] = Field(
        default_factory=list,
        max_length=MAX_RECIPIENTS,
        description="The agencies routed to; required on accepted receipts, refused otherwise.",
    )
    reason: ReasonCode | None = Field(
        default=None, description="Required on rejected receipts, refused otherwise."
    )
    answer: Answer | None = Field(
        default=None, description="Required on answered receipts, refused otherwise."
    )
    decline_reason: DeclineReason | None = Field(
        default=None, description="Required when answer is declined, refused otherwise."
    )
    staff_id: StaffId | None = Field(
        default=None, description="Who read or answered; allowed on read and answered only."
    )
    log_index: NonNegativeInt | None = Field(
        default=None, description="The audit log index; allowed on accepted receipts only."
    )

    @model_validator(mode="after")
    def _coherent(self) -> Receipt:
        status = self.status
        if self.id == self.receipt_for:
            raise ValueError("a receipt cannot acknowledge itself")
        if (status is ReceiptStatus.ACCEPTED) != bool(self.recipients):
            raise ValueError("recipients is required for accepted receipts and refused otherwise")
        if len(set(self.recipients)) != len(self.recipients):
            raise ValueError("a recipient agency is listed twice")
        if self.log_index is not None and status is not ReceiptStatus.ACCEPTED:
            raise ValueError("log_index is only allowed on accepted receipts")
        if (status is ReceiptStatus.REJECTED) != (self.reason is not None):
            raise ValueError("reason is required for rejected receipts and refused otherwise")
        if (status is ReceiptStatus.ANSWERED) != (self.answer is not None):
            raise ValueError("answer is required for answered receipts and refused otherwise")
        if (self.answer is Answer.DECLINED) != (self.decline_reason is not None):
            raise ValueError(
                "decline_reason is required when the answer is declined and refused otherwise"
            )
        if self.staff_id is not None and status not in PERSON_STATUSES:
            raise ValueError("staff_id is only allowed on read and answered receipts")
        return self


class SignedReceipt(WireModel):
    """A receipt's exact payload bytes and its signer's Ed25519 signature."""

    payload: PayloadB64
    signature: SignatureB64
