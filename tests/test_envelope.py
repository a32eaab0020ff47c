"""Envelope properties: what seals opens, and nothing else does."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keys.envelope import (
    Sealed,
    open_envelope,
    seal,
    signature_input,
    verify,
)
from keys.errors import InvalidEnvelope, ReplayRefused
from keys.replay import MemorySeenIds, ReplayGuard
from schemas.common import MAX_CONTENT_BYTES, b64url_decode, b64url_encode
from schemas.envelope import ConsentBasis, Envelope, Kind, LegalBasis, Purpose
from tests.support import CHILD, EXPIRES, T0, Agency, MemoryDirectory

SENDER = Agency.make("lidingo-skola")
POOL = [Agency.make(f"agency-{i}") for i in range(8)]
OUTSIDER = Agency.make("lidingo-outsider")
MALLORY = Agency.make("lidingo-mallory")
DIRECTORY = MemoryDirectory.of(SENDER, OUTSIDER, MALLORY, *POOL)
BASIS = LegalBasis(type="legal", ref="osl-10-28")


def _seal(content: bytes, recipients: list[Agency], sender: Agency = SENDER) -> Sealed:
    return seal(
        content,
        sender=sender.sender,
        recipients=[r.sealing for r in recipients],
        kind=Kind.REFERRAL,
        child=CHILD,
        basis=BASIS,
        purpose=Purpose.REFERRAL,
        created=T0,
        expires=EXPIRES,
    )


def _resign(envelope: Envelope, protected: bytes, signer: Agency) -> bytes:
    ciphertext = b64url_decode(envelope.ciphertext)
    signature = signer.signing.sign(signature_input(protected, ciphertext))
    return json.dumps(
        {
            "protected": b64url_encode(protected),
            "ciphertext": envelope.ciphertext,
            "signature": b64url_encode(signature),
        }
    ).encode()


def _flip(data: bytes, index: int, bit: int) -> bytes:
    mutable = bytearray(data)
    mutable[index % len(mutable)] ^= 1 << bit
    return bytes(mutable)


@settings(max_examples=40, deadline=None)
@given(content=st.binary(max_size=4096), count=st.integers(min_value=1, max_value=8))
def test_every_recipient_opens_what_was_sealed(content: bytes, count: int) -> None:
    """open(seal(x)) == x for each of 1-8 recipients, and the header says who sent it."""
    sealed = _seal(content, POOL[:count])
    for recipient in POOL[:count]:
        opened = open_envelope(sealed.wire, keys=DIRECTORY, recipient=recipient.recipient, now=T0)
        assert opened.content == content
        assert opened.header.sender.agency == SENDER.agency
        assert opened.verified.digest == sealed.digest


@settings(max_examples=60, deadline=None)
@given(index=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_in_the_protected_header_fails(index: int, bit: int) -> None:
    """A changed byte anywhere in the protected header bytes fails verification."""
    sealed = _seal(b"content", POOL[:2])
    protected = _flip(b64url_decode(sealed.envelope.protected), index, bit)
    tampered = sealed.envelope.model_copy(update={"protected": b64url_encode(protected)})
    with pytest.raises(InvalidEnvelope):
        verify(tampered.model_dump_json().encode(), keys=DIRECTORY, now=T0)


@settings(max_examples=60, deadline=None)
@given(index=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_in_the_ciphertext_fails(index: int, bit: int) -> None:
    """A changed ciphertext byte fails the signature, and fails AES-GCM if re-signed."""
    sealed = _seal(b"some content that matters", POOL[:1])
    ciphertext = _flip(b64url_decode(sealed.envelope.ciphertext), index, bit)
    tampered = sealed.envelope.model_copy(update={"ciphertext": b64url_encode(ciphertext)})
    with pytest.raises(InvalidEnvelope) as caught:
        open_envelope(
            tampered.model_dump_json().encode(),
            keys=DIRECTORY,
            recipient=POOL[0].recipient,
            now=T0,
        )
    assert caught.value.detail == "bad_signature"
    # The sender itself re-signing a tampered ciphertext still cannot pass the GCM tag.
    resigned = _resign(tampered, b64url_decode(sealed.envelope.protected), SENDER)
    with pytest.raises(InvalidEnvelope) as caught:
        open_envelope(resigned, keys=DIRECTORY, recipient=POOL[0].recipient, now=T0)
    assert caught.value.detail == "decrypt_failed"


@settings(max_examples=60, deadline=None)
@given(index=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_in_a_wrapped_key_fails(index: int, bit: int) -> None:
    """A changed wrapped key fails to unwrap even when the header is validly re-signed."""
    sealed = _seal(b"content", POOL[:2])
    header = json.loads(b64url_decode(sealed.envelope.protected))
    wrapped = b64url_decode(header["recipients"][0]["wrapped_key"])
    header["recipients"][0]["wrapped_key"] = b64url_encode(_flip(wrapped, index, bit))
    resigned = _resign(sealed.envelope, json.dumps(header).encode(), SENDER)
    with pytest.raises(InvalidEnvelope) as caught:
        open_envelope(resigned, keys=DIRECTORY, recipient=POOL[0].recipient, now=T0)
    assert caught.value.detail == "decrypt_failed"
    # The other recipient's key unwraps, but the content is bound to the original
    # header bytes (AES-GCM associated data), so it does not decrypt either.
    with pytest.raises(InvalidEnvelope) as caught:
        open_envelope(resigned, keys=DIRECTORY, recipient=POOL[1].recipient, now=T0)
    assert caught.value.detail == "decrypt_failed"


@settings(max_examples=60, deadline=None)
@given(index=st.integers(min_value=0, max_value=63), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_in_the_signature_fails(index: int, bit: int) -> None:
    """A changed signature byte fails verification."""
    sealed = _seal(b"content", POOL[:1])
    signature = _flip(b64url_decode(sealed.envelope.signature), index, bit)
    tampered = sealed.envelope.model_copy(update={"signature": b64url_encode(signature)})
    with pytest.raises(InvalidEnvelope) as caught:
        verify(tampered.model_dump_json().encode(), keys=DIRECTORY, now=T0)
    assert caught.value.detail == "bad_signature"


def test_a_recipient_not_listed_cannot_open() -> None:
    """An agency that is not among the recipients cannot open, even with a valid envelope."""
    sealed = _seal(b"for the listed ones only", POOL[:3])
    with pytest.raises(InvalidEnvelope) as caught:
        open_envelope(sealed.wire, keys=DIRECTORY, recipient=OUTSIDER.recipient, now=T0)
    assert caught.value.detail == "not_a_recipient"


def test_an_outsider_claiming_a_listed_agency_cannot_unwrap() -> None:
    """The outsider's own private key under a listed agency's name does not unwrap."""
    sealed = _seal(b"for the listed ones only", POOL[:1])
    impostor = Agency(
        agency=POOL[0].agency, kid=POOL[0].kid, signing=OUTSIDER.signing, hpke=OUTSIDER.hpke
    )
    with pytest.raises(InvalidEnvelope) as caught:
        open_envelope(sealed.wire, keys=DIRECTORY, recipient=impostor.recipient, now=T0)
    assert caught.value.detail == "decrypt_failed"


def test_an_envelope_resigned_by_another_agency_fails_to_open() -> None:
    """Mallory re-labels herself as sender and re-signs: signature verifies, unwrap fails."""
    sealed = _seal(b"from the school", [POOL[0], MALLORY])
    header = json.loads(b64url_decode(sealed.envelope.protected))
    header["sender"] = {"agency": MALLORY.agency, "kid": MALLORY.kid}
    header["recipients"] = [r for r in header["recipients"] if r["agency"] != MALLORY.agency]
    resigned = _resign(sealed.envelope, json.dumps(header).encode(), MALLORY)
    verified = verify(resigned, keys=DIRECTORY, now=T0)
    assert verified.header.sender.agency == MALLORY.agency
    with pytest.raises(InvalidEnvelope) as caught:
        open_envelope(resigned, keys=DIRECTORY, recipient=POOL[0].recipient, now=T0)
    assert caught.value.detail == "decrypt_failed"


def test_a_signature_by_the_wrong_key_fails() -> None:
    """Mallory re-signs without changing the sender: the sender's key does not verify it."""
    sealed = _seal(b"from the school", POOL[:1])
    resigned = _resign(sealed.envelope, b64url_decode(sealed.envelope.protected), MALLORY)
    with pytest.raises(InvalidEnvelope) as caught:
        verify(resigned, keys=DIRECTORY, now=T0)
    assert caught.value.detail == "bad_signature"


def test_an_unknown_sender_fails() -> None:
    """A sender the directory does not know fails verification."""
    stranger = Agency.make("lidingo-stranger")
    sealed = _seal(b"hello", POOL[:1], sender=stranger)
    with pytest.raises(InvalidEnvelope) as caught:
        verify(sealed.wire, keys=DIRECTORY, now=T0)
    assert caught.value.detail == "sender_key_unknown_or_not_valid"


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"protected":"","ciphertext":"","signature":""}', id="empty-fields"),
        pytest.param(
            b'{"protected":"e30","ciphertext":"AAAAAAAAAAAAAAAAAAAAAA","signature":"'
            + b"A" * 86
            + b'"}',
            id="empty-header",
        ),
        pytest.param(b'{"protected":"e30","ciphertext":"x","signature":"y","extra":1}', id="extra"),
    ],
)
def test_malformed_wire_input_is_one_opaque_error(wire: bytes) -> None:
    """Garbage of any shape gives InvalidEnvelope with the same outward message."""
    with pytest.raises(InvalidEnvelope) as caught:
        verify(wire, keys=DIRECTORY, now=T0)
    assert str(caught.value) == "envelope could not be verified or opened"


def test_outward_message_never_carries_the_reason() -> None:
    """Different failure reasons produce byte-identical outward messages."""
    sealed = _seal(b"x", POOL[:1])
    messages = set()
    for wire, recipient in [
        (b"garbage", POOL[0]),
        (sealed.wire, OUTSIDER),
        (_resign(sealed.envelope, b64url_decode(sealed.envelope.protected), MALLORY), POOL[0]),
    ]:
        with pytest.raises(InvalidEnvelope) as caught:
            open_envelope(wire, keys=DIRECTORY, recipient=recipient.recipient, now=T0)
        messages.add(str(caught.value))
    assert len(messages) == 1


def test_consent_basis_and_reply_fields_survive_the_round_trip() -> None:
    """Thread, in-reply-to and a consent basis are carried in the signed header."""
    first = _seal(b"a", POOL[:1])
    reply = seal(
        b"b",
        sender=POOL[0].sender,
        recipients=[SENDER.sealing],
        kind=Kind.TEAM_RESPONSE,
        child=CHILD,
        basis=ConsentBasis(type="consent", consent_id=first.header.id),
        purpose=Purpose.TEAM,
        created=T0 + timedelta(minutes=1),
        expires=EXPIRES,
        thread=first.header.thread,
        in_reply_to=first.header.id,
    )
    opened = open_envelope(reply.wire, keys=DIRECTORY, recipient=SENDER.recipient, now=T0)
    assert opened.header.in_reply_to == first.header.id
    assert opened.header.thread == first.header.id
    assert opened.header.basis == ConsentBasis(type="consent", consent_id=first.header.id)


def test_sealing_refuses_oversized_content_and_empty_recipients() -> None:
    """Caller mistakes are ValueErrors with a message, not a broken envelope."""
    with pytest.raises(ValueError, match="limit"):
        _seal(b"x" * (MAX_CONTENT_BYTES + 1), POOL[:1])
    with pytest.raises(ValueError, match="at least one recipient"):
        _seal(b"x", [])
    with pytest.raises(ValueError, match="own recipient"):
        _seal(b"x", [SENDER])


def test_message_ids_are_uuid7_and_unique() -> None:
    """Each seal mints a fresh UUIDv7 whose timestamp is the creation time."""
    ids = {_seal(b"x", POOL[:1]).header.id for _ in range(50)}
    assert len(ids) == 50
    for message_id in ids:
        assert message_id[14] == "7"
        assert int(message_id.replace("-", "")[:12], 16) == int(T0.timestamp() * 1000)


@settings(max_examples=30, deadline=None)
@given(order=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=20))
def test_replays_are_refused(order: list[int]) -> None:
    """Delivering envelopes in any order with repeats accepts each message id exactly once."""
    envelopes = [_seal(f"message {i}".encode(), POOL[:1]).wire for i in range(5)]
    guard = ReplayGuard(MemorySeenIds(clock=lambda: T0))
    accepted: list[int] = []
    for index in order:
        header = verify(envelopes[index], keys=DIRECTORY, now=T0).header
        if index in accepted:
            with pytest.raises(ReplayRefused) as caught:
                guard.check_and_remember(
                    header.id, created=header.created, expires=header.expires, now=T0
                )
            assert caught.value.reason == "replayed"
        else:
            guard.check_and_remember(
                header.id, created=header.created, expires=header.expires, now=T0
            )
            accepted.append(index)
    assert sorted(accepted) == sorted(set(order))


def test_a_stale_envelope_is_refused_even_when_unseen() -> None:
    """An envelope older than the clock window is refused although its id is new."""
    header = _seal(b"old", POOL[:1]).header
    guard = ReplayGuard(MemorySeenIds(clock=lambda: T0))
    with pytest.raises(ReplayRefused) as caught:
        guard.check_and_remember(
            header.id, created=header.created, expires=header.expires, now=T0 + timedelta(days=8)
        )
    assert caught.value.reason == "too_old"
