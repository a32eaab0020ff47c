"""The broker's decision on one ingress message, as a pure function.

``evaluate`` takes the raw AMQP body and the properties RabbitMQ vouches for
(``user_id``) and returns a value: ``Route`` (verified, allowed, to these
recipients), ``Reject`` (with a stable reason code and whom to tell) or
``Relay`` (a verified receipt from a recipient, to record and pass on). It
never acks, logs, stores or publishes: the shell (``broker.service``) maps the
value to those effects, in that order, so that a crash at any point loses
nothing and routes nothing twice.

Order of checks: size → type → parse → signature against the directory →
``user_id`` equals the signed sender → clock window → recipients known with a
valid key → policy. Whether the id was seen before is the store's answer
(the message id is unique there), not this module's.

Every verification failure is ``envelope_invalid`` outward; the precise
reason travels in ``Reject.detail`` for the broker's own log only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from broker.policy import Decision, Policy
from broker.topology import TYPE_ENVELOPE, TYPE_RECEIPT
from keys.directory import Directory
from keys.envelope import Verified, verify
from keys.errors import InvalidEnvelope, ReplayRefused
from keys.replay import ClockWindow, check_window
from keys.signed import InvalidSignedPayload, verify_receipt
from schemas.directory import AgencyType, DirectoryEntry
from schemas.envelope import ProtectedHeader
from schemas.reasons import RECIPIENT_REJECT_REASONS, ReasonCode
from schemas.receipts import Receipt, ReceiptStatus, SignedReceipt

#: Largest AMQP body the broker reads (the envelope of 1 MiB content is ~1.4 MB).
DEFAULT_MAX_BYTES = 2_000_000

#: Statuses a recipient's adapter may vouch for: accepted is the broker's alone; a recipient
#: may reject, for a reason in RECIPIENT_REJECT_REASONS only.
RECIPIENT_STATUSES = frozenset(
    {
        ReceiptStatus.DELIVERED,
        ReceiptStatus.HANDED_OVER,
        ReceiptStatus.READ,
        ReceiptStatus.ANSWERED,
        ReceiptStatus.REJECTED,
    }
)

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class Ingress:
    """One message as taken from the ingress queue."""

    body: bytes
    type: str | None
    user_id: str | None  # validated by RabbitMQ against the connection's user
    message_id: str | None  # the AMQP property; only a hint until the header is verified


@dataclass(frozen=True, slots=True)
class Route:
    """A verified envelope that policy allows: route ``wire`` (unchanged) to ``recipients``."""

    verified: Verified
    decision: Decision
    recipients: tuple[str, ...]
    wire: bytes

    @property
    def header(self) -> ProtectedHeader:
        """The verified header."""
        return self.verified.header


@dataclass(frozen=True, slots=True)
class Reject:
    """A refusal. ``reply_to`` is the agency to send the rejection receipt to, if any.

    ``header`` is set when the envelope verified and its sender is the
    publisher, so the refusal may be stored under its message id; otherwise
    storing it would let anyone block a genuine message's id.
    """

    reason: ReasonCode
    detail: str
    reply_to: str | None
    message_id: str | None
    digest: str
    header: ProtectedHeader | None = None


@dataclass(frozen=True, slots=True)
class Relay:
    """A verified receipt from a recipient: record it and pass it on to the sender."""

    receipt: Receipt
    body: bytes


Evaluation = Route | Reject | Relay


def evaluate(  # noqa: PLR0911 - one early return per check reads as the pipeline it is
    ingress: Ingress,
    *,
    directory: Directory,
    policy: Policy,
    now: datetime,
    window: ClockWindow,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Evaluation:
    """Decide what to do with one ingress message. Pure: same inputs, same answer."""
    reply_to = ingress.user_id if _is_agency(directory, ingress.user_id) else None
    hinted_id = ingress.message_id if is_message_id(ingress.message_id) else None
    body_digest = hashlib.sha256(ingress.body).hexdigest()

    def reject(reason: ReasonCode, detail: str) -> Reject:
        return Reject(reason, detail, reply_to, hinted_id, body_digest)

    if len(ingress.body) > max_bytes:
        return reject(ReasonCode.TOO_LARGE, f"{len(ingress.body)} bytes > {max_bytes}")
    if ingress.type == TYPE_RECEIPT:
        return _evaluate_receipt(ingress, reject, directory=directory, now=now)
    if ingress.type not in (None, TYPE_ENVELOPE):
        return reject(ReasonCode.SCHEMA_INVALID, "unknown AMQP type")
    try:
        verified = verify(ingress.body, keys=directory, now=now)
    except InvalidEnvelope as exc:
        return reject(_parse_reason(ingress.body, exc.detail), exc.detail)
    header = verified.header
    if ingress.user_id != header.sender.agency:
        return Reject(
            ReasonCode.USER_ID_MISMATCH,
            "AMQP user_id is not the signed sender",
            reply_to,
            header.id,
            verified.digest,
        )

    def refuse(reason: ReasonCode, detail: str) -> Reject:
        return Reject(reason, detail, reply_to, header.id, verified.digest, header)

    try:
        check_window(created=header.created, expires=header.expires, now=now, window=window)
    except ReplayRefused as exc:
        return refuse(ReasonCode(exc.reason), str(exc))
    for recipient in header.recipients:
        kind = directory.agency_type(recipient.agency)
        if kind is None or kind is AgencyType.BROKER:
            return refuse(ReasonCode.UNKNOWN_RECIPIENT, f"recipient {recipient.agency}")
        entry = directory.entry(recipient.agency, recipient.kid)
        if not _sealable(entry, created=header.created, now=now):
            return refuse(ReasonCode.RECIPIENT_KEY_UNKNOWN, f"recipient key {recipient.kid}")
    decision = policy.decide(header, directory=directory, now=now)
    if not decision.allowed:
        return refuse(decision.reason or ReasonCode.NO_BASIS, "policy refused")
    return Route(verified, decision, tuple(r.agency for r in header.recipients), ingress.body)


def _evaluate_receipt(
    ingress: Ingress,
    reject: Callable[[ReasonCode, str], Reject],
    *,
    directory: Directory,
    now: datetime,
) -> Evaluation:
    try:
        signed = SignedReceipt.model_validate_json(ingress.body)
    except ValidationError:
        return reject(_parse_reason(ingress.body, "malformed_receipt"), "malformed_receipt")
    try:
        receipt = verify_receipt(signed, keys=directory, now=now)
    except InvalidSignedPayload as exc:
        return reject(ReasonCode.ENVELOPE_INVALID, exc.detail)
    if receipt.by.agency != ingress.user_id:
        return reject(ReasonCode.USER_ID_MISMATCH, "AMQP user_id is not the receipt's signer")
    if receipt.status not in RECIPIENT_STATUSES:
        return reject(ReasonCode.SCHEMA_INVALID, f"a recipient cannot send {receipt.status}")
    if receipt.reason is not None and receipt.reason not in RECIPIENT_REJECT_REASONS:
        return reject(ReasonCode.SCHEMA_INVALID, f"a recipient cannot reject for {receipt.reason}")
    return Relay(receipt, ingress.body)


def _parse_reason(body: bytes, detail: str) -> ReasonCode:
    """bad_json / schema_invalid for malformed input; envelope_invalid for failed checks."""
    if not detail.startswith("malformed"):
        return ReasonCode.ENVELOPE_INVALID
    try:
        json.loads(body)
    except RecursionError:
        # Nested deeper than Python's parser goes (pydantic gave up at 200 levels): no
        # envelope or receipt nests more than a few, so it is not of the schema, and
        # refusing it must not fail the consumer into a poison message.
        return ReasonCode.SCHEMA_INVALID
    except ValueError:
        return ReasonCode.BAD_JSON
    return ReasonCode.SCHEMA_INVALID


def _sealable(entry: DirectoryEntry | None, *, created: datetime, now: datetime) -> bool:
    """True if a message created at ``created`` may be sealed to this key and opened at ``now``.

    PROTOCOL.md §3: a key seals new messages from ``valid_from`` until ``seal_until``
    and opens them until ``open_until``; one revoked by a rotation without overlap
    does neither, so a message sealed to it is refused, not routed.
    """
    if entry is None or entry.encryption_key is None:
        return False
    if created < entry.valid_from:
        return False
    if entry.seal_until is not None and not created < entry.seal_until:
        return False
    return entry.open_until is None or now < entry.open_until


def _is_agency(directory: Directory, agency: str | None) -> bool:
    if agency is None:
        return False
    kind = directory.agency_type(agency)
    return kind is not None and kind is not AgencyType.BROKER


def is_message_id(value: str | None) -> bool:
    """True for a lower-case UUID, the form of every message and receipt id."""
    return value is not None and _UUID.fullmatch(value) is not None
