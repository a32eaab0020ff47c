"""The worked example of docs/PROTOCOL.md, checked byte for byte.

Everything is rebuilt from the recorded inputs and compared exactly; the only
recorded (not recomputed) values are the HPKE wrapped keys, because HPKE
encapsulation is randomised: for those the test checks that each recipient's
fixed private key unwraps them to the fixed content key.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from keys.envelope import (
    OpeningKey,
    RecipientKeys,
    SenderKey,
    encrypt_and_sign,
    open_envelope,
    signature_input,
    wrap_info,
)
from keys.material import (
    HPKE_SUITE,
    ed25519_from_seed,
    ed25519_public_bytes,
    hpke_keypair_from_private_bytes,
)
from schemas.common import b64url_decode, b64url_encode
from schemas.envelope import Kind, LegalBasis, Party, ProtectedHeader, Purpose, Recipient, Suite
from tests.support import MemoryDirectory

VECTOR: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "envelope-v1.json").read_text(encoding="utf-8")
)
NOW = datetime.fromisoformat(VECTOR["created"])


def _sender() -> SenderKey:
    seed = bytes.fromhex(VECTOR["sender"]["ed25519_seed_hex"])
    return SenderKey(
        agency=VECTOR["sender"]["agency"],
        kid=VECTOR["sender"]["kid"],
        private_key=ed25519_from_seed(seed),
    )


def _header() -> ProtectedHeader:
    return ProtectedHeader(
        v=1,
        suite=Suite.V1,
        id=VECTOR["message_id"],
        kind=Kind(VECTOR["kind"]),
        sender=Party(agency=VECTOR["sender"]["agency"], kid=VECTOR["sender"]["kid"]),
        recipients=[
            Recipient(agency=r["agency"], kid=r["kid"], wrapped_key=r["wrapped_key_b64url"])
            for r in VECTOR["recipients"]
        ],
        child=VECTOR["child"],
        basis=LegalBasis(**VECTOR["basis"]),
        purpose=Purpose(VECTOR["purpose"]),
        thread=VECTOR["message_id"],
        created=datetime.fromisoformat(VECTOR["created"]),
        expires=datetime.fromisoformat(VECTOR["expires"]),
        iv=b64url_encode(bytes.fromhex(VECTOR["nonce_hex"])),
    )


def test_public_key_derives_from_the_seed() -> None:
    """The sender's Ed25519 public key is the one derived from the recorded seed."""
    public = ed25519_public_bytes(_sender().private_key.public_key())
    assert b64url_encode(public) == VECTOR["sender"]["ed25519_public_b64url"]


@pytest.mark.parametrize("index", [0, 1], ids=["social-services", "bup"])
def test_recipient_public_key_and_wrap_info(index: int) -> None:
    """Each recipient's public encoding and HPKE info are exactly as documented."""
    recorded = VECTOR["recipients"][index]
    pair = hpke_keypair_from_private_bytes(bytes.fromhex(recorded["hpke_private_hex"]))
    assert b64url_encode(pair.public_bytes) == recorded["hpke_public_b64url"]
    info = wrap_info(
        VECTOR["message_id"],
        Party(agency=VECTOR["sender"]["agency"], kid=VECTOR["sender"]["kid"]),
        recorded["agency"],
        recorded["kid"],
    )
    assert info.hex() == recorded["wrap_info_hex"]
    content_key = HPKE_SUITE.decrypt(
        b64url_decode(recorded["wrapped_key_b64url"]), pair.private_key, info=info
    )
    assert content_key.hex() == VECTOR["content_key_hex"]


def test_header_ciphertext_signature_and_envelope_are_byte_exact() -> None:
    """Rebuilding from the inputs gives the recorded bytes at every step."""
    sealed = encrypt_and_sign(
        _header(),
        VECTOR["content_utf8"].encode(),
        content_key=bytes.fromhex(VECTOR["content_key_hex"]),
        sender=_sender(),
    )
    protected = b64url_decode(sealed.envelope.protected)
    ciphertext = b64url_decode(sealed.envelope.ciphertext)
    assert protected.decode() == VECTOR["protected_utf8"]
    assert ciphertext.hex() == VECTOR["ciphertext_hex"]
    assert signature_input(protected, ciphertext).hex() == VECTOR["signature_input_hex"]
    assert sealed.envelope.signature == VECTOR["signature_b64url"]
    assert sealed.digest == VECTOR["digest_hex"]
    assert sealed.digest == hashlib.sha256(bytes.fromhex(VECTOR["signature_input_hex"])).hexdigest()
    assert sealed.wire.decode() == VECTOR["envelope_json"]


@pytest.mark.parametrize("index", [0, 1], ids=["social-services", "bup"])
def test_recorded_envelope_opens_for_each_recipient(index: int) -> None:
    """The recorded envelope verifies and opens to the recorded content."""
    recorded = VECTOR["recipients"][index]
    pair = hpke_keypair_from_private_bytes(bytes.fromhex(recorded["hpke_private_hex"]))
    directory = MemoryDirectory()
    sender = _sender()
    directory.signing[(sender.agency, sender.kid)] = sender.private_key.public_key()
    opened = open_envelope(
        VECTOR["envelope_json"].encode(),
        keys=directory,
        recipient=RecipientKeys(
            agency=recorded["agency"], keys={recorded["kid"]: OpeningKey(pair.private_key)}
        ),
        now=NOW,
    )
    assert opened.content.decode() == VECTOR["content_utf8"]
    assert opened.verified.digest == VECTOR["digest_hex"]


def test_hpke_private_encoding_is_the_x_wing_seed() -> None:
    """Our 32-byte HPKE private key expands exactly as X-Wing's (IETF draft vector)."""
    vector = json.loads(
        (Path(__file__).parent / "vectors" / "xwing-draft-08.json").read_text(encoding="utf-8")
    )
    pair = hpke_keypair_from_private_bytes(bytes.fromhex(vector["sk_seed_hex"]))
    assert pair.public_bytes.hex() == vector["pk_hex"]
