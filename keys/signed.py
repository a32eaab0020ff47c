"""Signed payloads: receipts, consents and revocations (docs/PROTOCOL.md §7).

A signed object travels as ``{"payload": b64u, "signature": b64u}``: the
signer serialises the model once as canonical JSON and signs a
domain-separated string of those bytes with Ed25519; a verifier checks the
signature over the bytes it received before it trusts anything in them. The
signer (agency and key id) is named inside the payload, so the directory alone
tells which key must have signed.

Every failure to verify is one ``InvalidSignedPayload`` with a fixed message;
the precise reason is logged and kept in ``detail`` for the caller's own log.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import structlog
from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, ValidationError

from keys.directory import canonical_json
from keys.envelope import SenderKey
from keys.errors import KeysError
from keys.lookup import KeyLookup
from schemas.common import b64url_decode, b64url_encode
from schemas.consent import ConsentRecord, ConsentRevocation, SignedConsent, SignedRevocation
from schemas.receipts import Receipt, SignedReceipt

_log = structlog.get_logger("keys.signed")

RECEIPT_DOMAIN = b"backa-receipt-v1\x00"
CONSENT_DOMAIN = b"backa-consent-v1\x00"
REVOCATION_DOMAIN = b"backa-consent-revocation-v1\x00"

_Model = TypeVar("_Model", bound=BaseModel)
_Signed = SignedReceipt | SignedConsent | SignedRevocation


class InvalidSignedPayload(KeysError):  # noqa: N818 - named like InvalidEnvelope
    """A signed receipt, consent or revocation failed to verify. Carries no detail outward."""

    code = "signature_invalid"
    http_status = 400

    def __init__(self, detail: str = "unspecified") -> None:
        super().__init__("signed object could not be verified")
        #: The precise reason, for this process's own log only.
        self.detail = detail


def _sign(model: BaseModel, domain: bytes, signer: SenderKey) -> tuple[str, str]:
    payload = canonical_json(model.model_dump(mode="json"))
    return b64url_encode(payload), b64url_encode(signer.private_key.sign(domain + payload))


def _verify(
    signed: _Signed,
    model: type[_Model],
    domain: bytes,
    signer_of: Callable[[_Model], tuple[str, str, datetime]],
    *,
    keys: KeyLookup,
    now: datetime,
) -> _Model:
    payload = b64url_decode(signed.payload)
    try:
        value = model.model_validate_json(payload)
    except ValidationError:
        raise _refuse("malformed_payload") from None
    agency, kid, at = signer_of(value)
    public = keys.signing_key(agency, kid, created=at, now=now)
    if public is None:
        raise _refuse("signer_key_unknown_or_not_valid")
    try:
        public.verify(b64url_decode(signed.signature), domain + payload)
    except InvalidSignature:
        raise _refuse("bad_signature") from None
    return value


def _refuse(reason: str) -> InvalidSignedPayload:
    _log.warning("signed_payload_refused", reason=reason)
    return InvalidSignedPayload(reason)


def _check_signer(agency: str, kid: str, signer: SenderKey) -> None:
    if (agency, kid) != (signer.agency, signer.kid):
        raise ValueError("the payload names another signer than the key that would sign it")


def sign_receipt(receipt: Receipt, signer: SenderKey) -> SignedReceipt:
    """Sign a receipt as the agency (or broker) named in its ``by``."""
    _check_signer(receipt.by.agency, receipt.by.kid, signer)
    payload, signature = _sign(receipt, RECEIPT_DOMAIN, signer)
    return SignedReceipt(payload=payload, signature=signature)


def verify_receipt(signed: SignedReceipt, *, keys: KeyLookup, now: datetime) -> Receipt:
    """Verify a receipt against the directory key named in its ``by``, valid at ``at``."""
    return _verify(
        signed,
        Receipt,
        RECEIPT_DOMAIN,
        lambda r: (r.by.agency, r.by.kid, r.at),
        keys=keys,
        now=now,
    )


def sign_consent(consent: ConsentRecord, signer: SenderKey) -> SignedConsent:
    """Sign a consent record as the registering agency."""
    _check_signer(consent.registered_by.agency, consent.registered_by.kid, signer)
    payload, signature = _sign(consent, CONSENT_DOMAIN, signer)
    return SignedConsent(payload=payload, signature=signature)


def verify_consent(signed: SignedConsent, *, keys: KeyLookup, now: datetime) -> ConsentRecord:
    """Verify a consent record against the registering agency's key."""
    return _verify(
        signed,
        ConsentRecord,
        CONSENT_DOMAIN,
        lambda c: (c.registered_by.agency, c.registered_by.kid, now),
        keys=keys,
        now=now,
    )


def sign_revocation(revocation: ConsentRevocation, signer: SenderKey) -> SignedRevocation:
    """Sign a consent revocation as the revoking agency."""
    _check_signer(revocation.by.agency, revocation.by.kid, signer)
    payload, signature = _sign(revocation, REVOCATION_DOMAIN, signer)
    return SignedRevocation(payload=payload, signature=signature)


def verify_revocation(
    signed: SignedRevocation, *, keys: KeyLookup, now: datetime
) -> ConsentRevocation:
    """Verify a consent revocation against the revoking agency's key."""
    return _verify(
        signed,
        ConsentRevocation,
        REVOCATION_DOMAIN,
        lambda r: (r.by.agency, r.by.kid, r.revoked_at),
        keys=keys,
        now=now,
    )
