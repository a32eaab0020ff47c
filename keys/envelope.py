"""Envelope seal, verify and open: end-to-end encryption between agencies.

Pure functions: keys, the time and the randomness are arguments (the HPKE
encapsulation inside ``cryptography`` draws its own randomness, the one part
that cannot be injected). The format is specified in docs/PROTOCOL.md:

* one fresh 256-bit content key; the content is AES-256-GCM encrypted under it
  with the exact protected header bytes as associated data;
* the content key is wrapped once per recipient with HPKE base mode
  (ML-KEM-768+X25519, HKDF-SHA256, AES-256-GCM) and an ``info`` string that
  binds the message id, the sender and its key id, and the recipient and its
  key id — so a recipient that strips the signature and re-signs as itself
  cannot make the content open as if it came from it;
* the sender signs a domain-separated string of the protected bytes and the
  SHA-256 of the ciphertext with Ed25519.

``verify`` is what the broker may do (signature and header, no private key);
``open_envelope`` is what a recipient does. Every failure of either is one
``InvalidEnvelope`` with a fixed message; the precise reason goes to the log
and to the exception's ``detail`` attribute for the caller's own log line,
never to the peer.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hpke import MLKEM768X25519PrivateKey
from pydantic import ValidationError

from keys.errors import InvalidEnvelope
from keys.lookup import KeyLookup, SealingKey
from keys.material import HPKE_SUITE
from schemas.common import MAX_CONTENT_BYTES, b64url_decode, b64url_encode
from schemas.envelope import (
    ENVELOPE_VERSION,
    Basis,
    Envelope,
    Kind,
    Party,
    ProtectedHeader,
    Purpose,
    Recipient,
    Suite,
)

_log = structlog.get_logger("keys.envelope")

#: Domain separation for the sender's signature (docs/PROTOCOL.md §Signature).
SIGNATURE_DOMAIN = b"backa-envelope-v1\x00"
#: Domain separation for the HPKE ``info`` of each wrapped key.
WRAP_INFO_DOMAIN = b"backa-wrap-v1\x00"

CONTENT_KEY_LEN = 32
NONCE_LEN = 12

Rng = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class SenderKey:
    """The sending agency's current signing key."""

    agency: str
    kid: str
    private_key: Ed25519PrivateKey = field(repr=False)


@dataclass(frozen=True, slots=True)
class OpeningKey:
    """One of a recipient's HPKE private keys, usable for opening until ``open_until``."""

    private_key: MLKEM768X25519PrivateKey = field(repr=False)
    open_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class RecipientKeys:
    """A recipient agency's HPKE private keys by key id (current and still-overlapping)."""

    agency: str
    keys: Mapping[str, OpeningKey] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Verified:
    """An envelope whose signature and header checked out against the directory."""

    header: ProtectedHeader
    protected: bytes
    ciphertext: bytes
    digest: str  # SHA-256 hex of the signature input: what receipts acknowledge


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified envelope and its decrypted content."""

    verified: Verified
    content: bytes = field(repr=False)

    @property
    def header(self) -> ProtectedHeader:
        """The verified protected header."""
        return self.verified.header


def uuid7(now: datetime, rng: Rng) -> str:
    """A UUIDv7 (RFC 9562) from a millisecond timestamp and 74 random bits."""
    millis = int(now.timestamp() * 1000)
    rand = int.from_bytes(rng(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _lp(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def wrap_info(message_id: str, sender: Party, recipient_agency: str, recipient_kid: str) -> bytes:
    """The HPKE ``info`` that binds one wrapped key to its message, sender and recipient."""
    parts = (message_id, sender.agency, sender.kid, recipient_agency, recipient_kid)
    return WRAP_INFO_DOMAIN + b"".join(_lp(p.encode("utf-8")) for p in parts)


def signature_input(protected: bytes, ciphertext: bytes) -> bytes:
    """The exact bytes the sender signs: domain, protected header, ciphertext digest."""
    return (
        SIGNATURE_DOMAIN
        + struct.pack(">I", len(protected))
        + protected
        + hashlib.sha256(ciphertext).digest()
    )


@dataclass(frozen=True, slots=True)
class Sealed:
    """A sealed envelope, its parsed header and its wire bytes."""

    envelope: Envelope
    header: ProtectedHeader
    wire: bytes
    digest: str


def seal(
    content: bytes,
    *,
    sender: SenderKey,
    recipients: Sequence[SealingKey],
    kind: Kind,
    child: str,
    basis: Basis,
    purpose: Purpose,
    created: datetime,
    expires: datetime,
    thread: str | None = None,
    in_reply_to: str | None = None,
    message_id: str | None = None,
    rng: Rng = os.urandom,
    content_key: bytes | None = None,
) -> Sealed:
    """Encrypt ``content`` once for every recipient and sign it as ``sender``.

    ``rng`` supplies the message id's random bits, the content key and the
    nonce; ``content_key`` and ``message_id`` may be fixed for test vectors.
    Raises ValueError for a caller mistake (too large, no recipients, bad field).
    """
    if len(content) > MAX_CONTENT_BYTES:
        raise ValueError(f"content is {len(content)} bytes; the limit is {MAX_CONTENT_BYTES}")
    if not recipients:
        raise ValueError("an envelope needs at least one recipient")
    msg_id = message_id if message_id is not None else uuid7(created, rng)
    cek = content_key if content_key is not None else rng(CONTENT_KEY_LEN)
    if len(cek) != CONTENT_KEY_LEN:
        raise ValueError("the content key must be 32 bytes")
    nonce = rng(NONCE_LEN)
    party = Party(agency=sender.agency, kid=sender.kid)
    wrapped = [
        Recipient(
            agency=r.agency,
            kid=r.kid,
            wrapped_key=b64url_encode(
                HPKE_SUITE.encrypt(
                    cek, r.public_key, info=wrap_info(msg_id, party, r.agency, r.kid)
                )
            ),
        )
        for r in recipients
    ]
    try:
        header = ProtectedHeader(
            v=ENVELOPE_VERSION,
            suite=Suite.V1,
            id=msg_id,
            kind=kind,
            sender=party,
            recipients=wrapped,
            child=child,
            basis=basis,
            purpose=purpose,
            thread=thread if thread is not None else msg_id,
            in_reply_to=in_reply_to,
            created=created,
            expires=expires,
            iv=b64url_encode(nonce),
        )
    except ValidationError as exc:
        raise ValueError(f"invalid envelope header: {exc}") from exc
    return encrypt_and_sign(header, content, content_key=cek, sender=sender)


def encrypt_and_sign(
    header: ProtectedHeader, content: bytes, *, content_key: bytes, sender: SenderKey
) -> Sealed:
    """Serialise the header, encrypt the content under it and sign both.

    The second half of ``seal``, public so that the fixed test vectors can be
    rebuilt byte for byte from recorded wrapped keys (HPKE encapsulation is
    randomised and cannot be replayed).
    """
    if (header.sender.agency, header.sender.kid) != (sender.agency, sender.kid):
        raise ValueError("the header's sender is not the signing key's agency and key id")
    protected = header.model_dump_json().encode("utf-8")
    ciphertext = AESGCM(content_key).encrypt(b64url_decode(header.iv), content, protected)
    signed = signature_input(protected, ciphertext)
    envelope = Envelope(
        protected=b64url_encode(protected),
        ciphertext=b64url_encode(ciphertext),
        signature=b64url_encode(sender.private_key.sign(signed)),
    )
    return Sealed(
        envelope=envelope,
        header=header,
        wire=envelope.model_dump_json().encode("utf-8"),
        digest=hashlib.sha256(signed).hexdigest(),
    )


def _refuse(reason: str, message_id: str | None = None) -> InvalidEnvelope:
    _log.warning("envelope_refused", reason=reason, message_id=message_id)
    return InvalidEnvelope(reason)


def parse_envelope(data: bytes | Envelope) -> Envelope:
    """Parse wire bytes into an Envelope; any malformation is InvalidEnvelope."""
    if isinstance(data, Envelope):
        return data
    try:
        return Envelope.model_validate_json(data)
    except ValidationError:
        raise _refuse("malformed_envelope") from None


def verify(data: bytes | Envelope, *, keys: KeyLookup, now: datetime) -> Verified:
    """Check the header and the sender's signature; needs no private key.

    This is all the broker may do with an envelope. Freshness and replay are
    checked separately (``keys.replay``), since they need state.
    """
    envelope = parse_envelope(data)
    try:
        protected = b64url_decode(envelope.protected)
        ciphertext = b64url_decode(envelope.ciphertext)
    except ValueError:
        raise _refuse("malformed_envelope") from None
    try:
        header = ProtectedHeader.model_validate_json(protected)
    except ValidationError:
        raise _refuse("malformed_header") from None
    signing_key = keys.signing_key(
        header.sender.agency, header.sender.kid, created=header.created, now=now
    )
    if signing_key is None:
        raise _refuse("sender_key_unknown_or_not_valid", header.id)
    signed = signature_input(protected, ciphertext)
    try:
        signing_key.verify(b64url_decode(envelope.signature), signed)
    except InvalidSignature:
        raise _refuse("bad_signature", header.id) from None
    return Verified(
        header=header,
        protected=protected,
        ciphertext=ciphertext,
        digest=hashlib.sha256(signed).hexdigest(),
    )


def open_envelope(
    data: bytes | Envelope, *, keys: KeyLookup, recipient: RecipientKeys, now: datetime
) -> Opened:
    """Verify, then unwrap the content key with one of the recipient's keys and decrypt."""
    verified = verify(data, keys=keys, now=now)
    header = verified.header
    for entry in header.recipients:
        if entry.agency != recipient.agency:
            continue
        key = recipient.keys.get(entry.kid)
        if key is None:
            raise _refuse("recipient_kid_not_held", header.id)
        if key.open_until is not None and now >= key.open_until:
            raise _refuse("recipient_key_past_overlap", header.id)
        info = wrap_info(header.id, header.sender, entry.agency, entry.kid)
        try:
            cek = HPKE_SUITE.decrypt(b64url_decode(entry.wrapped_key), key.private_key, info=info)
            content = AESGCM(cek).decrypt(
                b64url_decode(header.iv), verified.ciphertext, verified.protected
            )
        except (InvalidTag, ValueError):
            # ValueError: a wrapped key of the wrong length or a bad encapsulation.
            raise _refuse("decrypt_failed", header.id) from None
        if len(cek) != CONTENT_KEY_LEN:
            raise _refuse("content_key_length", header.id)
        return Opened(verified=verified, content=content)
    raise _refuse("not_a_recipient", header.id)
