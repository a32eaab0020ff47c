"""Generate tests/vectors/envelope-v1.json: the worked example of docs/PROTOCOL.md.

Run once; the output is committed and checked byte for byte by
tests/test_vectors.py. Every input is fixed (keys from labelled seeds, the
content key, the nonce, the message id, the times) except the HPKE
encapsulation, which ``cryptography`` randomises internally: re-running this
script therefore produces new ``wrapped_key`` values (and so a new header,
ciphertext and signature). The committed file is the reference.

    .venv/bin/python -m tests.vectors.generate > tests/vectors/envelope-v1.json
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

from keys.envelope import seal, signature_input, wrap_info
from keys.material import ed25519_public_bytes
from schemas.common import b64url_decode, b64url_encode
from schemas.envelope import Kind, LegalBasis, Party, Purpose
from tests.support import Agency, det_bytes

CREATED = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
EXPIRES = datetime(2026, 12, 25, 9, 30, tzinfo=UTC)
CONTENT = {
    "summary": "Eleven har hög frånvaro och verkar orolig.",
    "need_areas": [{"area": "trygghet", "description": "Oro hemma enligt eleven."}],
}


def build() -> dict[str, object]:
    """Seal the worked example and record every input and intermediate value."""
    sender = Agency.make("lidingo-skola", "20261125-5c0e1a01")
    recipients = [
        Agency.make("lidingo-soc", "20261125-50c1a102"),
        Agency.make("lidingo-bup", "20261125-b0b0c003"),
    ]
    content = json.dumps(CONTENT, ensure_ascii=False, separators=(",", ":")).encode()
    content_key = det_bytes("vector/content-key", 32)
    nonce = det_bytes("vector/nonce", 12)
    message_id = "019abb2a-6a50-7cc3-9e0f-3a5f7d1e2b4c"
    child = det_bytes("vector/child", 32).hex()
    sealed = seal(
        content,
        sender=sender.sender,
        recipients=[r.sealing for r in recipients],
        kind=Kind.REFERRAL,
        child=child,
        basis=LegalBasis(type="legal", ref="osl-10-28"),
        purpose=Purpose.REFERRAL,
        created=CREATED,
        expires=EXPIRES,
        message_id=message_id,
        content_key=content_key,
        rng=lambda n: nonce[:n],
    )
    protected = b64url_decode(sealed.envelope.protected)
    ciphertext = b64url_decode(sealed.envelope.ciphertext)
    party = Party(agency=sender.agency, kid=sender.kid)
    return {
        "description": "Envelope suite v1 worked example; see docs/PROTOCOL.md",
        "sender": {
            "agency": sender.agency,
            "kid": sender.kid,
            "ed25519_seed_hex": det_bytes(f"{sender.agency}/{sender.kid}/sign", 32).hex(),
            "ed25519_public_b64url": b64url_encode(
                ed25519_public_bytes(sender.signing.public_key())
            ),
        },
        "recipients": [
            {
                "agency": r.agency,
                "kid": r.kid,
                "hpke_private_hex": r.hpke.private_bytes.hex(),
                "hpke_public_b64url": b64url_encode(r.hpke.public_bytes),
                "wrap_info_hex": wrap_info(message_id, party, r.agency, r.kid).hex(),
                "wrapped_key_b64url": sealed.header.recipients[i].wrapped_key,
            }
            for i, r in enumerate(recipients)
        ],
        "message_id": message_id,
        "kind": "referral",
        "child": child,
        "basis": {"type": "legal", "ref": "osl-10-28"},
        "purpose": "referral",
        "created": "2026-11-25T09:30:00Z",
        "expires": "2026-12-25T09:30:00Z",
        "content_key_hex": content_key.hex(),
        "nonce_hex": nonce.hex(),
        "content_utf8": content.decode(),
        "protected_utf8": protected.decode(),
        "ciphertext_hex": ciphertext.hex(),
        "signature_input_hex": signature_input(protected, ciphertext).hex(),
        "signature_b64url": sealed.envelope.signature,
        "digest_hex": sealed.digest,
        "envelope_json": sealed.wire.decode(),
    }


if __name__ == "__main__":
    json.dump(build(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
