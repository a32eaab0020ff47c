"""Identifier and value types shared by the whole wire contract.

Every string has a pattern or a length limit, so that a hostile peer cannot
make any component hold unbounded data, and every datetime is timezone-aware.
"""

from __future__ import annotations

import binascii
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, StringConstraints

#: An agency id within an area: lower-case letters, digits and hyphens.
AgencyId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]

#: An area id (one Backa barnet collaboration area).
AreaId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]

#: A key id: names one key pair of one agency; rotation adds a new one.
KeyId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{4,64}$")]

#: A message id: a lower-case UUID (the broker and adapters mint UUIDv7).
MessageId = Annotated[
    str,
    StringConstraints(
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
    ),
]

#: A child pseudonym: HMAC-SHA256 under the area pseudonym key, lower-case hex.
ChildPseudonym = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]

#: A staff id as the agency knows its own staff (never a personnummer).
StaffId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._@-]{1,64}$")]

#: A SHA-256 digest in lower-case hex.
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]

#: Timezone-aware datetime; naive datetimes are refused.
Timestamp = AwareDatetime


def _valid_b64url(value: str) -> str:
    try:
        b64url_decode(value)
    except ValueError as exc:
        raise ValueError("not valid unpadded base64url") from exc
    return value


_URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_URL_TO_STD = bytes.maketrans(b"-_", b"+/")
_STD_TO_URL = bytes.maketrans(b"+/", b"-_")
#: Bits of the last character that carry no data, by ``len(text) % 4``.
_UNUSED_BITS = {2: 0b1111, 3: 0b11}


def b64url_encode(data: bytes) -> str:
    """Encode bytes as unpadded base64url (RFC 4648 §5), as in JOSE."""
    return binascii.b2a_base64(data, newline=False).translate(_STD_TO_URL).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url; refuse padding, other alphabets and junk bits.

    One value has exactly one text: non-zero unused bits in the last character
    are refused, so an attacker cannot vary the bytes of a signed structure
    without changing what it decodes to.
    """
    remainder = len(text) % 4
    if remainder == 1:
        raise ValueError("base64url has an impossible length")
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("base64url must be ASCII") from None
    if b"=" in raw or b"+" in raw or b"/" in raw:
        raise ValueError("not unpadded base64url")
    try:
        data = binascii.a2b_base64(
            raw.translate(_URL_TO_STD) + b"=" * (-remainder % 4), strict_mode=True
        )
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc
    if remainder and _URL_ALPHABET.index(text[-1]) & _UNUSED_BITS[remainder]:
        raise ValueError("non-canonical base64url")
    return data


_B64URL = StringConstraints(pattern=r"^[A-Za-z0-9_-]*$")

#: An Ed25519 public key (32 bytes), base64url.
Ed25519PublicB64 = Annotated[
    str, _B64URL, StringConstraints(min_length=43, max_length=43), AfterValidator(_valid_b64url)
]

#: An Ed25519 signature (64 bytes), base64url.
SignatureB64 = Annotated[
    str, _B64URL, StringConstraints(min_length=86, max_length=86), AfterValidator(_valid_b64url)
]

#: An HPKE ML-KEM-768+X25519 public key (1184 + 32 bytes), base64url.
HpkePublicB64 = Annotated[
    str, _B64URL, StringConstraints(min_length=1622, max_length=1622), AfterValidator(_valid_b64url)
]

#: An HPKE-wrapped content key (encapsulation + sealed key), base64url.
WrappedKeyB64 = Annotated[
    str, _B64URL, StringConstraints(min_length=1, max_length=2048), AfterValidator(_valid_b64url)
]

#: A 96-bit AES-GCM nonce, base64url.
NonceB64 = Annotated[
    str, _B64URL, StringConstraints(min_length=16, max_length=16), AfterValidator(_valid_b64url)
]

#: The protected header bytes of an envelope, base64url (at most 64 KiB of text).
# The two large envelope fields are checked by pattern and length only here:
# keys.envelope.verify decodes them (strictly, canonical form only) exactly once,
# and decoding every large field twice showed up in the broker's profile.
ProtectedB64 = Annotated[str, _B64URL, StringConstraints(min_length=1, max_length=65_536)]

#: Envelope ciphertext, base64url; content is at most MAX_CONTENT_BYTES.
CiphertextB64 = Annotated[str, _B64URL, StringConstraints(min_length=22, max_length=1_400_000)]

#: A signed payload (directory entry, consent, receipt body), base64url.
PayloadB64 = Annotated[
    str, _B64URL, StringConstraints(min_length=1, max_length=65_536), AfterValidator(_valid_b64url)
]

#: Largest plaintext content an envelope may carry (1 MiB).
MAX_CONTENT_BYTES = 1_048_576


#: A short free-text line (a title, a place, a name).
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200)]

#: A longer free-text field (a description, a reason).
LongText = Annotated[str, StringConstraints(min_length=1, max_length=10_000)]
