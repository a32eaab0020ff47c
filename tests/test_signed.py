"""Signed receipts, consents and revocations: what is signed verifies, nothing else."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from keys.signed import (
    InvalidSignedPayload,
    sign_consent,
    sign_receipt,
    sign_revocation,
    verify_consent,
    verify_receipt,
    verify_revocation,
)
from schemas.common import b64url_decode, b64url_encode
from schemas.consent import ConsentRecord, ConsentRevocation, SignedRevocation
from schemas.receipts import Receipt, SignedReceipt
from tests.support import CHILD, T0, Agency, MemoryDirectory

BROKER = Agency.make("lidingo-broker")
SOCIAL = Agency.make("lidingo-soc")
SCHOOL = Agency.make("lidingo-skola")
MALLORY = Agency.make("lidingo-mallory")
DIRECTORY = MemoryDirectory.of(BROKER, SOCIAL, SCHOOL, MALLORY)
MESSAGE = "019abb2a-6a50-7cc3-9e0f-3a5f7d1e2b4c"


def _receipt(**fields: Any) -> Receipt:
    body: dict[str, Any] = {
        "v": 1,
        "id": "019abb2a-6a51-7000-8000-000000000001",
        "receipt_for": MESSAGE,
        "acknowledges": "ab" * 32,
        "status": "delivered",
        "by": {"agency": SOCIAL.agency, "kid": SOCIAL.kid},
        "at": T0.isoformat(),
        **fields,
    }
    return Receipt.model_validate_json(json.dumps(body))


def _consent() -> ConsentRecord:
    body = {
        "id": "019abb2a-6a52-7000-8000-000000000002",
        "child": CHILD,
        "guardians": [{"pseudonym": "cd" * 32, "custodial": True}],
        "joint_custody": False,
        "registered_by": {"agency": SCHOOL.agency, "kid": SCHOOL.kid, "staff_id": "anna.k"},
        "parties": [{"agency": SCHOOL.agency}, {"agency": SOCIAL.agency}],
        "purposes": ["referral"],
        "valid_from": T0.isoformat(),
        "valid_until": (T0 + timedelta(days=365)).isoformat(),
        "document_digest": "ef" * 32,
    }
    return ConsentRecord.model_validate_json(json.dumps(body))


def test_receipt_round_trip() -> None:
    """A receipt signed by the agency in its ``by`` verifies to the same receipt."""
    receipt = _receipt()
    signed = sign_receipt(receipt, SOCIAL.sender)
    assert verify_receipt(signed, keys=DIRECTORY, now=T0) == receipt


def test_broker_accepted_receipt_round_trip() -> None:
    """The broker's own accepted receipt, with recipients and log index, verifies."""
    receipt = _receipt(
        status="accepted",
        by={"agency": BROKER.agency, "kid": BROKER.kid},
        recipients=[SOCIAL.agency],
        log_index=7,
    )
    assert verify_receipt(sign_receipt(receipt, BROKER.sender), keys=DIRECTORY, now=T0) == receipt


def test_signing_as_someone_else_is_refused() -> None:
    """A key cannot sign a receipt that names another agency as its signer."""
    with pytest.raises(ValueError, match="another signer"):
        sign_receipt(_receipt(), MALLORY.sender)


@pytest.mark.parametrize("field", ["payload", "signature"])
def test_any_flipped_byte_fails(field: str) -> None:
    """Changing any byte of the payload or of the signature fails verification."""
    signed = sign_receipt(_receipt(), SOCIAL.sender)
    raw = b64url_decode(getattr(signed, field))
    for index in range(len(raw)):
        mutated = bytearray(raw)
        mutated[index] ^= 0x01
        tampered = signed.model_copy(update={field: b64url_encode(bytes(mutated))})
        with pytest.raises(InvalidSignedPayload):
            verify_receipt(tampered, keys=DIRECTORY, now=T0)


def test_a_forged_signer_fails() -> None:
    """Mallory signs a receipt that names social services: the directory key does not match."""
    receipt = _receipt()
    payload = b64url_decode(sign_receipt(receipt, SOCIAL.sender).payload)
    forged = SignedReceipt(
        payload=b64url_encode(payload),
        signature=b64url_encode(MALLORY.signing.sign(b"backa-receipt-v1\x00" + payload)),
    )
    with pytest.raises(InvalidSignedPayload) as caught:
        verify_receipt(forged, keys=DIRECTORY, now=T0)
    assert caught.value.detail == "bad_signature"
    assert str(caught.value) == "signed object could not be verified"


def test_signatures_are_domain_separated() -> None:
    """A consent signature is not valid for the same bytes read as a revocation."""
    signed = sign_consent(_consent(), SCHOOL.sender)
    assert verify_consent(signed, keys=DIRECTORY, now=T0) == _consent()
    reused = SignedRevocation(payload=signed.payload, signature=signed.signature)
    with pytest.raises(InvalidSignedPayload):
        verify_revocation(reused, keys=DIRECTORY, now=T0)


def test_revocation_round_trip() -> None:
    """A revocation signed by the revoking agency verifies."""
    revocation = ConsentRevocation.model_validate_json(
        json.dumps(
            {
                "consent_id": _consent().id,
                "revoked_at": (T0 + timedelta(days=3)).isoformat(),
                "reason": "guardian_withdrew",
                "by": {"agency": SOCIAL.agency, "kid": SOCIAL.kid, "staff_id": "handl-7"},
            }
        )
    )
    signed = sign_revocation(revocation, SOCIAL.sender)
    assert verify_revocation(signed, keys=DIRECTORY, now=T0) == revocation


def test_unknown_signer_fails() -> None:
    """A receipt from an agency the directory does not know fails."""
    stranger = Agency.make("lidingo-stranger")
    receipt = _receipt(by={"agency": stranger.agency, "kid": stranger.kid})
    with pytest.raises(InvalidSignedPayload) as caught:
        verify_receipt(sign_receipt(receipt, stranger.sender), keys=DIRECTORY, now=T0)
    assert caught.value.detail == "signer_key_unknown_or_not_valid"
