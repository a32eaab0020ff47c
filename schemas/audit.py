"""Entries of the append-only audit log (an RFC 9162 Merkle tree).

Every decision of the broker is one entry: a message accepted, rejected or
routed, a receipt, a consent registered or revoked, a directory or key change,
an escalation, and every look into the audit itself. Security officers review
these entries and extract them per child; the entry's exact bytes are a leaf
of the Merkle tree, so an entry, once written, is never changed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

from pydantic import Field, StringConstraints, model_validator

from schemas._base import WireModel
from schemas.common import (
    AgencyId,
    ChildPseudonym,
    MessageId,
    Sha256Hex,
    ShortText,
    StaffId,
    Timestamp,
)
from schemas.content import RuleId
from schemas.envelope import MAX_RECIPIENTS, Basis, Kind
from schemas.reasons import ReasonCode
from schemas.receipts import ReceiptStatus


class AuditEvent(StrEnum):
    """What happened, one value per kind of decision the broker logs."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ROUTED = "routed"
    RECEIPT = "receipt"
    DEAD_LETTERED = "dead_lettered"
    CONSENT_REGISTERED = "consent_registered"
    CONSENT_REVOKED = "consent_revoked"
    DIRECTORY_CHANGED = "directory_changed"
    KEY_CHANGED = "key_changed"
    ESCALATION = "escalation"
    # Someone closed a late matter without answering it (the reason says why).
    DEADLINE_HANDLED = "deadline_handled"
    # Patient data law asks for a log of who looked at the log itself.
    AUDIT_READ = "audit_read"
    # A certificate whose role may not use an HTTP route tried it (the query names the route).
    ACCESS_REFUSED = "access_refused"


class HandledReason(StrEnum):
    """Why a person closed a late matter instead of answering it; a closed list (metadata only)."""

    ANSWERED_OUTSIDE_BACKA = "answered_outside_backa"  # by phone, in a meeting, on paper
    CONTACT_MADE = "contact_made"  # the agencies spoke; the message needs no answer
    CHILD_MOVED = "child_moved"  # the child left the area
    NO_LONGER_NEEDED = "no_longer_needed"  # the need the message was about has passed
    SENT_IN_ERROR = "sent_in_error"


#: An audit query as the security officer issued it (filters, not content).
AuditQuery = Annotated[str, StringConstraints(min_length=1, max_length=1_000)]


#: The events that say who (``actor``) asked for what (``query``).
_ACTOR_AND_QUERY: Final = frozenset({AuditEvent.AUDIT_READ, AuditEvent.ACCESS_REFUSED})


class AuditEntry(WireModel):
    """One audit log entry: metadata of one decision, never content.

    No field may ever hold message content or a personnummer: the child is
    named by pseudonym only, staff by their agency's staff id, and the
    message by id and digest. The audit log outlives every message and is
    read by more people than any message, so it must reveal nothing a
    message's recipients alone may see.
    """

    at: Timestamp
    event: AuditEvent
    message_id: MessageId | None = None
    kind: Kind | None = None
    sender: AgencyId | None = None
    recipients: list[AgencyId] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    child: ChildPseudonym | None = None
    basis: Basis | None = None
    rule: RuleId | None = None
    legal_ref: ShortText | None = None
    reason: ReasonCode | None = None
    status: ReceiptStatus | None = None
    digest: Sha256Hex | None = None
    actor: StaffId | None = None
    query: AuditQuery | None = None
    handled: HandledReason | None = Field(
        default=None, description="Required on deadline_handled entries, refused otherwise."
    )

    @model_validator(mode="after")
    def _coherent(self) -> AuditEntry:
        # An entry that cannot answer "why" or "who" fails the log review it
        # exists for, so the defining field of each such event is required.
        if self.event is AuditEvent.REJECTED and self.reason is None:
            raise ValueError("a rejected entry must name its reason")
        if self.event is AuditEvent.RECEIPT and self.status is None:
            raise ValueError("a receipt entry must name its status")
        if self.event in _ACTOR_AND_QUERY and self.actor is None:
            raise ValueError(f"an {self.event.value} entry must name its actor")
        if self.query is not None and self.event not in _ACTOR_AND_QUERY:
            raise ValueError("query is only allowed on audit_read and access_refused entries")
        if (self.event is AuditEvent.DEADLINE_HANDLED) != (self.handled is not None):
            raise ValueError("handled is required on deadline_handled entries, refused otherwise")
        return self
