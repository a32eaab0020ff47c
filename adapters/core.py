"""The adapter's decisions, as pure functions: open, check again, answer.

What a recipient adapter decides about an envelope it verified and opened:
the content must fit its kind and name the child the signed header names
(docs/PROTOCOL.md §6), and before hand-over the policy is checked again with
what only the adapter knows: the consents as they stand now (a revocation
broadcast after routing stops the message here) and the child's age from
the personnummer, for the conditions the broker had to defer
(``keys.policy.decide``). Refusals are reason codes that go back to the
sender in a signed ``rejected`` receipt.

Also here: the recipient's receipts (deterministic ids, so one sent twice is
one receipt) and the verification of consent notices.

Must never: do I/O, log, or look at a clock; the caller passes ``now``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pydantic import ValidationError

from keys.directory import Directory
from keys.envelope import SenderKey
from keys.errors import PersonnummerError
from keys.personnummer import parse_identity_number
from keys.policy import ChildFacts, ConsentState, decide
from keys.pseudonym import PseudonymKey, child_pseudonym
from keys.signed import InvalidSignedPayload, sign_receipt, verify_consent, verify_revocation
from schemas.consent import SignedConsent, SignedRevocation
from schemas.content import ChildIdentity, parse_content
from schemas.envelope import Kind, ProtectedHeader
from schemas.policy import PolicyFile
from schemas.reasons import RECIPIENT_REJECT_REASONS, ReasonCode
from schemas.receipts import Answer, DeclineReason, Receipt, ReceiptStatus, SignedReceipt

#: Namespace of recipient receipt ids (UUIDv5); fixed forever, part of the protocol.
RECIPIENT_RECEIPT_NAMESPACE = uuid.UUID("3f0c6d52-2b0e-4c59-8f3e-6a1d9b7e4c21")


class Refused(Exception):  # noqa: N818 - a verdict, not a fault
    """The message must not be handed over; ``reason`` goes back to the sender."""

    def __init__(self, reason: ReasonCode, detail: str) -> None:
        if reason not in RECIPIENT_REJECT_REASONS:
            raise ValueError(f"a recipient cannot refuse for {reason}")
        self.reason = reason
        self.detail = detail  # for the adapter's own log; never sent
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class Checked:
    """Opened content that fits its kind and its header; what the adapter stores."""

    content: Any  # the content model of the header's kind
    facts: ChildFacts | None  # None when the content names no child (a team response)


def age_on(birth: date, today: date) -> int:
    """Whole years from ``birth`` to ``today`` (a child born on 29 Feb ages on 1 Mar)."""
    years = today.year - birth.year
    return years - ((today.month, today.day) < (birth.month, birth.day))


def check_content(
    header: ProtectedHeader, content: bytes, *, pseudonym_key: PseudonymKey, today: date
) -> Checked:
    """Parse the decrypted content and tie it to the header's child; raises :class:`Refused`."""
    try:
        model = parse_content(header.kind, content)
    except ValueError:  # pydantic's ValidationError is a ValueError
        raise Refused(ReasonCode.SCHEMA_INVALID, "content does not fit its kind") from None
    child = getattr(model, "child", None)
    if isinstance(child, str) and child != header.child:
        # An escalation names the child by pseudonym: it must be the header's.
        raise Refused(ReasonCode.CONSENT_CHILD_MISMATCH, "content child is not the header child")
    if not isinstance(child, ChildIdentity):
        return Checked(content=model, facts=None)
    try:
        number = parse_identity_number(child.identity_number, today=today)
    except PersonnummerError:
        raise Refused(ReasonCode.SCHEMA_INVALID, "content names no valid identity number") from None
    # PROTOCOL.md §6: the sender must not route under one child's consent while
    # writing about another.
    if child_pseudonym(number, pseudonym_key) != header.child:
        raise Refused(ReasonCode.CONSENT_CHILD_MISMATCH, "content child is not the header child")
    return Checked(content=model, facts=ChildFacts(age=age_on(number.birth_date, today)))


def check_before_handover(
    header: ProtectedHeader,
    facts: ChildFacts | None,
    *,
    directory: Directory,
    consents: Mapping[str, ConsentState],
    policy: PolicyFile,
    now: datetime,
) -> None:
    """Raise :class:`Refused` unless the message may be handed over at ``now``.

    The same engine as the broker's, with the consents as this adapter holds
    them (a revocation notice arrives in the queue ahead of anything routed
    after it) and the child's facts, so the deferred conditions are checked.
    A condition that needs facts this content cannot give fails closed.
    """
    if header.kind is Kind.ESCALATION:
        # The broker's own notice about a late matter: metadata it already holds,
        # not sharing between agencies, so no consent or legal basis applies.
        # Only the broker may send one; an expired one is still worth showing.
        if header.sender.agency != directory.broker_agency():
            raise Refused(ReasonCode.SCHEMA_INVALID, "an escalation from someone not the broker")
        return
    if now >= header.expires:
        raise Refused(ReasonCode.EXPIRED, "past expires before hand-over")
    decision = decide(
        header, directory=directory, consents=consents, policy=policy, now=now, child=facts
    )
    if not decision.allowed:
        reason = decision.reason or ReasonCode.CONSENT_MISSING
        if reason not in RECIPIENT_REJECT_REASONS:
            # The broker allowed it, so a different refusal here means the policy
            # or directory changed in between: the nearest reason the sender can act on.
            reason = ReasonCode.CONDITION_NOT_MET
        raise Refused(reason, f"policy refused before hand-over: {decision.reason}")
    if decision.deferred:
        raise Refused(ReasonCode.CONDITION_NOT_MET, "a deferred condition needs child facts")


def receipt_id(message_id: str, agency: str, status: ReceiptStatus) -> str:
    """The deterministic id of a recipient's receipt: one per message, agency and step."""
    return str(uuid.uuid5(RECIPIENT_RECEIPT_NAMESPACE, f"{message_id}/{agency}/{status.value}"))


def recipient_receipt(
    status: ReceiptStatus,
    *,
    message_id: str,
    digest: str,
    signer: SenderKey,
    at: datetime,
    reason: ReasonCode | None = None,
    answer: Answer | None = None,
    decline_reason: DeclineReason | None = None,
    staff_id: str | None = None,
) -> SignedReceipt:
    """A signed receipt from this adapter for one received message."""
    fields: dict[str, object] = {
        "v": 1,
        "id": receipt_id(message_id, signer.agency, status),
        "receipt_for": message_id,
        "acknowledges": digest,
        "status": status.value,
        "by": {"agency": signer.agency, "kid": signer.kid},
        "at": at.isoformat(),
    }
    optional = {
        "reason": reason.value if reason else None,
        "answer": answer.value if answer else None,
        "decline_reason": decline_reason.value if decline_reason else None,
        "staff_id": staff_id,
    }
    fields |= {k: v for k, v in optional.items() if v is not None}
    # Through JSON so that the strict model checks exactly what goes on the wire.
    return sign_receipt(Receipt.model_validate_json(json.dumps(fields)), signer)


@dataclass(frozen=True, slots=True)
class ConsentNotice:
    """A verified consent notice: the consent and, if revoked, when (as the revoker signed)."""

    state: ConsentState


def verify_notice(body: bytes, *, directory: Directory, now: datetime) -> ConsentNotice:
    """Verify a consent notice's signed consent and revocation; raises ValueError if bad.

    The broker's word (``revoked_at`` in the notice) is not trusted: the time
    comes from the revocation the revoking agency signed, and never later than
    ``now`` (a revocation takes effect at once).
    """
    try:
        notice = json.loads(body)
        signed = SignedConsent.model_validate(notice["consent"])
        record = verify_consent(signed, keys=directory, now=now)
        revoked_at = None
        if notice.get("revocation") is not None:
            revocation = verify_revocation(
                SignedRevocation.model_validate(notice["revocation"]), keys=directory, now=now
            )
            if revocation.consent_id != record.id:
                raise ValueError("the revocation names another consent")
            # Effective at once and forward only, as at the broker: a revocation dated
            # in the future (a skewed clock) must not let messages through meanwhile.
            revoked_at = min(revocation.revoked_at, now)
    except (KeyError, TypeError, ValidationError, InvalidSignedPayload) as exc:
        raise ValueError(f"consent notice refused: {type(exc).__name__}") from exc
    return ConsentNotice(state=ConsentState(record=record, revoked_at=revoked_at))
