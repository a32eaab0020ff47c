"""Audit entries: their canonical bytes, and the entry for each thing the broker does.

An entry's canonical serialisation (docs/AUDIT.md) is the JSON of the
``schemas.audit.AuditEntry`` model with ``None`` fields left out, keys sorted,
no whitespace, UTF-8 (``keys.directory.canonical_json``). Those exact bytes
are the Merkle leaf: SHA-256(0x00 ‖ bytes). An export carries the entry as a
JSON object, and anyone can rebuild the bytes from it with the same rule.

Pure. Builders take what the broker already stores (ids, agencies, kinds,
the child's pseudonym, basis, rule, reason, digests and times) and nothing
else: there is no field for content or a personnummer, and nothing here
reads one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from broker.records import MessageRecord, Outcome, StatusEvent
from keys.directory import canonical_json
from schemas.audit import AuditEntry, AuditEvent, HandledReason
from schemas.reasons import ReasonCode

__all__ = [
    "canonical_bytes",
    "consent_entry",
    "decision_entry",
    "directory_entry",
    "escalation_entry",
    "handled_entry",
    "parse_canonical",
    "read_entry",
    "receipt_entry",
    "refusal_entry",
    "routed_entry",
]


def canonical_bytes(entry: AuditEntry) -> bytes:
    """The exact bytes of ``entry`` that the Merkle tree hashes."""
    return canonical_json(entry.model_dump(mode="json", exclude_none=True))


def parse_canonical(data: bytes) -> AuditEntry:
    """Read stored canonical bytes back; raises ValueError if they are not canonical."""
    entry = AuditEntry.model_validate_json(data)
    if canonical_bytes(entry) != data:
        raise ValueError("stored audit bytes are not in canonical form")
    return entry


def canonical_from_json(obj: Any) -> bytes:
    """The canonical bytes of an entry given as a JSON object (an export line's ``entry``)."""
    return canonical_json(obj)


def _basis(record: MessageRecord) -> dict[str, str]:
    if record.basis_type == "consent":
        return {"type": "consent", "consent_id": record.basis_ref}
    return {"type": "legal", "ref": record.basis_ref}


def _build(fields: dict[str, Any]) -> AuditEntry:
    # Through JSON so that the strict model checks exactly what is hashed.
    return AuditEntry.model_validate_json(
        json.dumps({k: v for k, v in fields.items() if v is not None}, default=str)
    )


def decision_entry(record: MessageRecord) -> AuditEntry:
    """The broker accepted (with rule and legal reference) or rejected (with reason) a message."""
    accepted = record.outcome is Outcome.ACCEPTED
    return _build(
        {
            "at": record.received_at.isoformat(),
            "event": (AuditEvent.ACCEPTED if accepted else AuditEvent.REJECTED).value,
            "message_id": record.message_id,
            "kind": record.kind,
            "sender": record.sender,
            "recipients": list(record.recipients),
            "child": record.child,
            "basis": _basis(record),
            "rule": record.rule if accepted else None,
            "legal_ref": record.legal_ref if accepted else None,
            "reason": None if accepted else record.reason,
            "digest": record.digest,
        }
    )


def refusal_entry(
    *,
    reason: ReasonCode,
    message_id: str | None,
    publisher: str | None,
    digest: str,
    at: datetime,
) -> AuditEntry:
    """The broker refused input it did not store: who published it (if known) and why.

    ``digest`` is of the bytes as received, so a security officer can match a
    complaint about a lost message to this refusal.
    """
    return _build(
        {
            "at": at.isoformat(),
            "event": AuditEvent.REJECTED.value,
            "message_id": message_id,
            "sender": publisher,
            "reason": reason.value,
            "digest": digest,
        }
    )


def routed_entry(record: MessageRecord, at: datetime) -> AuditEntry:
    """Every recipient's copy was confirmed by RabbitMQ."""
    return _build(
        {
            "at": at.isoformat(),
            "event": AuditEvent.ROUTED.value,
            "message_id": record.message_id,
            "kind": record.kind,
            "sender": record.sender,
            "recipients": list(record.recipients),
            "child": record.child,
            "digest": record.digest,
        }
    )


def receipt_entry(event: StatusEvent, *, record: MessageRecord | None = None) -> AuditEntry:
    """A signed receipt from a recipient, or a status the broker vouches for ("routed" too)."""
    if event.status == AuditEvent.ROUTED.value:
        return _build(
            {
                "at": event.at.isoformat(),
                "event": AuditEvent.ROUTED.value,
                "message_id": event.message_id,
                "sender": event.signer,
                "recipients": [] if event.agency is None else [event.agency],
                "child": None if record is None else record.child,
            }
        )
    return _build(
        {
            "at": event.at.isoformat(),
            "event": AuditEvent.RECEIPT.value,
            "message_id": event.message_id,
            "kind": None if record is None else record.kind,
            "sender": event.signer,
            "recipients": [] if event.agency is None else [event.agency],
            "child": None if record is None else record.child,
            "status": event.status,
            "reason": event.reason,
            "actor": event.staff_id,
        }
    )


def consent_entry(
    *,
    revoked: bool,
    consent_id: str,
    child: str,
    agency: str,
    staff_id: str | None,
    parties: Sequence[str],
    at: datetime,
    digest: str | None = None,
) -> AuditEntry:
    """A consent was registered or revoked, by which agency and person, naming which parties."""
    return _build(
        {
            "at": at.isoformat(),
            "event": (
                AuditEvent.CONSENT_REVOKED if revoked else AuditEvent.CONSENT_REGISTERED
            ).value,
            "message_id": consent_id,
            "sender": agency,
            "recipients": list(parties),
            "child": child,
            "basis": {"type": "consent", "consent_id": consent_id},
            "actor": staff_id,
            "digest": digest,
        }
    )


def escalation_entry(
    *,
    message_id: str,
    rule: str,
    kind: str,
    child: str,
    recipients: Sequence[str],
    at: datetime,
) -> AuditEntry:
    """The watchdog escalated a late matter under ``rule`` to ``recipients``."""
    return _build(
        {
            "at": at.isoformat(),
            "event": AuditEvent.ESCALATION.value,
            "message_id": message_id,
            "kind": kind,
            "recipients": list(recipients),
            "child": child,
            "rule": rule,
        }
    )


def handled_entry(
    *,
    message_id: str,
    rule: str,
    child: str,
    agency: str | None,
    actor: str,
    reason: HandledReason,
    at: datetime,
) -> AuditEntry:
    """A person closed a late matter without answering it, and why (a closed list)."""
    return _build(
        {
            "at": at.isoformat(),
            "event": AuditEvent.DEADLINE_HANDLED.value,
            "message_id": message_id,
            "sender": agency,
            "child": child,
            "rule": rule,
            "actor": actor,
            "handled": reason.value,
        }
    )


def directory_entry(*, agency: str, digest: str, at: datetime) -> AuditEntry:
    """A directory entry (an agency's keys) was added or replaced; ``digest`` of its payload."""
    return _build(
        {
            "at": at.isoformat(),
            "event": AuditEvent.DIRECTORY_CHANGED.value,
            "sender": agency,
            "digest": digest,
        }
    )


def refused_access_entry(*, actor: str, route: str, at: datetime) -> AuditEntry:
    """Someone whose certificate role may not use ``route`` (method and path) tried it."""
    return _build(
        {
            "at": at.isoformat(),
            "event": AuditEvent.ACCESS_REFUSED.value,
            "actor": actor,
            "query": route[:1000],
        }
    )


def read_entry(*, actor: str, query: str, at: datetime) -> AuditEntry:
    """Someone read the audit log (or tried to: the query says so); who, what and when."""
    return _build(
        {
            "at": at.isoformat(),
            "event": AuditEvent.AUDIT_READ.value,
            "actor": actor,
            "query": query[:1000],
        }
    )
