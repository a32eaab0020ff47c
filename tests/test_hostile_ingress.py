"""Hostile input at the broker's AMQP ingress (issue 9), against the real broker, RabbitMQ and store.

Each attempt is published to ``backa.ingress`` as an agency's own RabbitMQ
user (provisioned permissions, so RabbitMQ vouches for ``user_id``), and for
each the test shows four things: (1) its documented reason code, in a
``rejected`` receipt the broker signs and puts in the publisher's queue
wherever the broker can tell who published; (2) nothing is routed: the
recipient's queue holds only what was legitimately sent; (3) nothing
crashes: a valid message published after it is routed; (4) the attempt is in
the audit log, as a ``rejected`` entry with the same reason.

The signature covers the header bytes, wrapped keys included, and the SHA-256
of the ciphertext (``keys.envelope.signature_input``), so tampering with any
of them is refused by the broker itself. What the broker cannot see is
whether a wrapped key opens for the sender the header names: an envelope
re-signed as another agency's own is routed, and its recipient refuses it
(the last test). A ``user_id`` property naming another agency never reaches
the broker: RabbitMQ refuses it.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import aiormq
import pytest

from broker.audit.log import AuditLog
from broker.audit.ports import MAX_PAGE, AuditFilter
from broker.pipeline import DEFAULT_MAX_BYTES
from broker.topology import INGRESS_EXCHANGE, TYPE_ENVELOPE, TYPE_RECEIPT, agency_queue
from keys.directory import Directory, sign_entry
from keys.envelope import Sealed, encrypt_and_sign, seal, signature_input
from keys.personnummer import parse_identity_number
from keys.signed import verify_receipt
from schemas.audit import AuditEntry, AuditEvent
from schemas.common import b64url_decode, b64url_encode
from schemas.directory import DirectoryBundle, SignedDirectoryEntry
from schemas.envelope import Basis, ConsentBasis, Kind, LegalBasis, Party, Purpose
from schemas.reasons import ReasonCode
from schemas.receipts import SignedReceipt
from tests.adapter_harness import (
    AGENCIES,
    DIRECTORY,
    PASSWORD,
    POLICE,
    SCHOOL,
    SOCIAL,
    VARDCENTRAL,
    Area,
    consent_body,
    example,
    pseudonym_of,
    until,
)
from tests.rabbit import amqp_url_for
from tests.support import ROOT, Agency, signed_directory

pytestmark = [
    pytest.mark.rabbitmq,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
GHOST = Agency.make("hostile-ghost")
#: When the older keys below were revoked (a rotation without overlap): no sealing, no opening.
REVOKED_AT = datetime.now(UTC) - HOUR
ALVA = "20121212-1212"
ALVA_CONSENT = "0193a5c2-7e41-7c1a-9b2e-4f6d8a1c3e50"
OTHER_CHILD = pseudonym_of("20150707-2385")


def _revoked(agency: Agency) -> tuple[Agency, SignedDirectoryEntry]:
    """An older key of ``agency`` and its root-signed entry, revoked at REVOKED_AT."""
    old = Agency.make(agency.agency, "k2025-0001")
    kind = DIRECTORY.agency_type(agency.agency)
    assert kind is not None
    (entry,) = signed_directory([(old, kind)], at=REVOKED_AT - 60 * DAY).entries()
    revoked = entry.model_copy(
        update={"seal_until": REVOKED_AT, "open_until": REVOKED_AT, "issued_at": REVOKED_AT}
    )
    return old, sign_entry(revoked, ROOT)


OLD_POLICE, _OLD_POLICE_ENTRY = _revoked(POLICE)
OLD_SOCIAL, _OLD_SOCIAL_ENTRY = _revoked(SOCIAL)
#: The area's directory and the two revoked keys: what the broker holds after the rotations.
REVOKING_DIRECTORY = Directory(
    DirectoryBundle(
        area=DIRECTORY.area,
        root_key=DIRECTORY.root_key,
        entries=[*DIRECTORY.signed_entries(), _OLD_POLICE_ENTRY, _OLD_SOCIAL_ENTRY],
    ),
    ROOT.public_key(),
)


def _content() -> tuple[bytes, str]:
    """The documented concern report about Alva, and Alva's pseudonym."""
    content = example("canonical-concern_report.json")["content"]
    number = parse_identity_number(
        content["child"]["identity_number"], today=datetime.now(UTC).date()
    )
    content["child"]["identity_number"] = number.normalised
    return json.dumps(content).encode(), pseudonym_of(number.normalised)


def _message(
    sender: Agency = POLICE,
    recipients: tuple[Agency, ...] = (SOCIAL,),
    *,
    created: timedelta = timedelta(0),
    lifetime: timedelta = 7 * DAY,
    message_id: str | None = None,
    content_key: bytes | None = None,
    child: str | None = None,
    basis: Basis | None = None,
) -> Sealed:
    """A sealed message about Alva created ``created`` from now; by default one the policy allows.

    By default the police's concern report to social services under OSL 10
    kap. 28 §; with a consent ``basis``, a referral for the consent's purpose
    (whose content the broker never reads).
    """
    content, alva = _content()
    now = datetime.now(UTC) + created
    basis = LegalBasis(type="legal", ref="osl-10-28") if basis is None else basis
    legal = isinstance(basis, LegalBasis)
    return seal(
        content,
        sender=sender.sender,
        recipients=[r.sealing for r in recipients],
        kind=Kind.CONCERN_REPORT if legal else Kind.REFERRAL,
        child=alva if child is None else child,
        basis=basis,
        purpose=Purpose.CONCERN if legal else Purpose.REFERRAL,
        created=now,
        expires=now + lifetime,
        message_id=message_id,
        content_key=content_key,
    )


def _flip(text: str) -> str:
    """``text`` with one base64url character in the middle changed (still valid base64url)."""
    middle = len(text) // 2
    return text[:middle] + ("B" if text[middle] == "A" else "A") + text[middle + 1 :]


def _rewrap(sealed: Sealed, **members: str) -> bytes:
    """The envelope's wire bytes with some of its three members replaced."""
    return sealed.envelope.model_copy(update=members).model_dump_json().encode()


def _with_header(sealed: Sealed, change: Callable[[dict[str, Any]], None]) -> bytes:
    """The envelope with its protected header edited; ciphertext and signature kept."""
    header = json.loads(b64url_decode(sealed.envelope.protected))
    change(header)
    protected = json.dumps(header, separators=(",", ":")).encode()
    return _rewrap(sealed, protected=b64url_encode(protected))


def _other_child(header: dict[str, Any]) -> None:
    header["child"] = OTHER_CHILD


def _flipped_wrapped_key(header: dict[str, Any]) -> None:
    header["recipients"][0]["wrapped_key"] = _flip(header["recipients"][0]["wrapped_key"])


def _re_signed(sealed: Sealed, by: Agency) -> bytes:
    """The envelope unchanged but for its signature, made with ``by``'s key."""
    signed = signature_input(
        b64url_decode(sealed.envelope.protected), b64url_decode(sealed.envelope.ciphertext)
    )
    return _rewrap(sealed, signature=b64url_encode(by.signing.sign(signed)))


@dataclass(frozen=True)
class Attempt:
    """One hostile publish and the refusal it must get."""

    body: bytes
    publisher: Agency
    reason: ReasonCode
    #: The AMQP message_id; the header's id where the body has one.
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: False: published without the user_id property, so the broker cannot tell who sent it.
    user_id: bool = True
    message_type: str = TYPE_ENVELOPE
    #: Valid envelopes from the police, routed before the attempt.
    earlier: tuple[Sealed, ...] = ()


def _envelope(
    sealed: Sealed,
    reason: ReasonCode,
    publisher: Agency = POLICE,
    *,
    body: bytes | None = None,
    **more: Any,
) -> Attempt:
    """``sealed`` (or ``body`` made from it) published under its header's id."""
    wire = sealed.wire if body is None else body
    return Attempt(wire, publisher, reason, message_id=sealed.header.id, **more)


def _replayed() -> Attempt:
    """Another envelope under the id of one the broker has routed."""
    first = _message()
    second = _message(message_id=first.header.id)
    return _envelope(second, ReasonCode.REPLAYED, earlier=(first,))


def _tampered(reason: ReasonCode, tamper: Callable[[Sealed], bytes]) -> Callable[[], Attempt]:
    """A builder of the valid message with ``tamper`` applied to its wire bytes."""

    def make() -> Attempt:
        sealed = _message()
        return _envelope(sealed, reason, body=tamper(sealed))

    return make


UNKNOWN_KID = "k-unknown-9"
CONSENT = ConsentBasis(type="consent", consent_id=ALVA_CONSENT)
INVALID = ReasonCode.ENVELOPE_INVALID

# Each builder runs inside its test, so that times are taken as the broker sees them.
CASES: list[Any] = [
    pytest.param(lambda: _envelope(_message(), ReasonCode.USER_ID_MISMATCH, SCHOOL), id="forged-user-id-police-envelope-published-by-school"),
    pytest.param(lambda: _envelope(_message(), ReasonCode.USER_ID_MISMATCH, user_id=False), id="no-user-id-property"),
    pytest.param(lambda: _envelope(s := _message(), INVALID, SCHOOL, body=_re_signed(s, SCHOOL)), id="police-envelope-re-signed-by-school"),
    pytest.param(_tampered(INVALID, lambda s: _with_header(s, _other_child)), id="tampered-protected-header"),
    pytest.param(_tampered(INVALID, lambda s: _rewrap(s, ciphertext=_flip(s.envelope.ciphertext))), id="tampered-ciphertext"),
    pytest.param(_tampered(INVALID, lambda s: _with_header(s, _flipped_wrapped_key)), id="tampered-wrapped-key"),
    pytest.param(_tampered(INVALID, lambda s: _rewrap(s, signature=_flip(s.envelope.signature))), id="tampered-signature"),
    pytest.param(_replayed, id="replayed-message-id"),
    pytest.param(lambda: _envelope(_message(created=-3 * DAY, lifetime=DAY), ReasonCode.EXPIRED), id="expired"),
    pytest.param(lambda: _envelope(_message(created=-8 * DAY, lifetime=30 * DAY), ReasonCode.TOO_OLD), id="clock-skew-too-old"),
    pytest.param(lambda: _envelope(_message(created=timedelta(minutes=10)), ReasonCode.FROM_FUTURE), id="clock-skew-from-future"),
    pytest.param(lambda: Attempt(b'{"protected":"' + b"A" * DEFAULT_MAX_BYTES + b'"}', POLICE, ReasonCode.TOO_LARGE), id="oversized-body"),
    pytest.param(lambda: Attempt(b"[" * 100_000 + b"]" * 100_000, POLICE, ReasonCode.SCHEMA_INVALID), id="deeply-nested-json"),
    pytest.param(lambda: Attempt(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, SOCIAL, ReasonCode.SCHEMA_INVALID, message_type=TYPE_RECEIPT), id="deeply-nested-json-as-receipt"),
    pytest.param(lambda: Attempt(b'{"protected":"\xff\xfe","ciphertext":"\xc3\x28","signature":"x"}', POLICE, ReasonCode.BAD_JSON), id="invalid-utf-8"),
    pytest.param(lambda: _envelope(_message(recipients=(GHOST,)), ReasonCode.UNKNOWN_RECIPIENT), id="unknown-recipient"),
    pytest.param(lambda: _envelope(_message(sender=GHOST), INVALID), id="unknown-sender"),
    pytest.param(lambda: _envelope(_message(sender=Agency.make(POLICE.agency, UNKNOWN_KID)), INVALID), id="unknown-sender-key-id"),
    pytest.param(lambda: _envelope(_message(recipients=(Agency.make(SOCIAL.agency, UNKNOWN_KID),)), ReasonCode.RECIPIENT_KEY_UNKNOWN), id="unknown-recipient-key-id"),
    pytest.param(lambda: _envelope(_message(sender=OLD_POLICE), INVALID), id="revoked-sender-key"),
    pytest.param(lambda: _envelope(_message(sender=OLD_POLICE, created=-2 * HOUR), INVALID), id="revoked-sender-key-backdated-before-the-revocation"),
    pytest.param(lambda: _envelope(_message(recipients=(OLD_SOCIAL,)), ReasonCode.RECIPIENT_KEY_UNKNOWN), id="revoked-recipient-key"),
    pytest.param(lambda: _envelope(_message(SCHOOL, basis=CONSENT, child=OTHER_CHILD), ReasonCode.CONSENT_CHILD_MISMATCH, SCHOOL), id="consent-for-another-child"),
]  # fmt: skip


@pytest.fixture
async def broker(area: Area) -> Area:
    """The area's broker, with two revoked keys in its directory and Alva's consent registered."""
    area.service.directory = REVOKING_DIRECTORY
    await area.register(
        consent_body(
            ALVA_CONSENT,
            pseudonym_of(ALVA),
            registrar=VARDCENTRAL,
            parties=[VARDCENTRAL, SCHOOL, SOCIAL],
            purposes=["referral"],
            child_age=14,
            now=datetime.now(UTC),
        ),
        VARDCENTRAL,
    )
    return area


async def _publish(area: Area, attempt: Attempt, *, user_id: str | None) -> None:
    """Publish with a confirm as the attempt's publisher's RabbitMQ user, with ``user_id``."""
    url = amqp_url_for(area.vhost, attempt.publisher.agency, PASSWORD)
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(INGRESS_EXCHANGE, ensure=False)
        message = aio_pika.Message(
            attempt.body,
            type=attempt.message_type,
            user_id=user_id,
            message_id=attempt.message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await exchange.publish(message, routing_key=INGRESS_EXCHANGE)


async def _routed(area: Area, sealed: Sealed) -> None:
    """Publish a valid envelope as the police and wait until the broker has routed it."""
    await area.publish_as(POLICE, sealed.wire, sealed.header.id)

    async def done() -> bool:
        record = await area.store.get_message(sealed.header.id)
        return record is not None and record.routed_at is not None

    await until(done, what=f"message {sealed.header.id} routed")


@dataclass(frozen=True)
class Left:
    """What the agencies' queues hold once the broker has stopped."""

    #: (queue's agency, wire bytes)
    envelopes: Counter[tuple[str, bytes]]
    #: (queue's agency, status, reason, message id) of each receipt, its signature verified
    receipts: Counter[tuple[str, str, str | None, str]]


async def _drain(area: Area) -> Left:
    """Stop the broker (it finishes what is in flight), then empty every agency's queue."""
    await area.service.stop()
    left = Left(Counter(), Counter())
    async with await aio_pika.connect(amqp_url_for(area.vhost)) as connection:
        channel = await connection.channel()
        for agency, _kind in AGENCIES.values():
            queue = await channel.get_queue(agency_queue(agency.agency), ensure=False)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                if message.type == TYPE_ENVELOPE:
                    left.envelopes[agency.agency, message.body] += 1
                    continue
                assert message.type == TYPE_RECEIPT
                receipt = verify_receipt(
                    SignedReceipt.model_validate_json(message.body),
                    keys=DIRECTORY,
                    now=datetime.now(UTC),
                )
                reason = None if receipt.reason is None else receipt.reason.value
                left.receipts[agency.agency, receipt.status.value, reason, receipt.receipt_for] += 1
    return left


async def _audit(area: Area) -> list[AuditEntry]:
    """The whole audit log, read as a security officer would."""
    log = AuditLog(area.store.engine, signer=area.service.broker_key, origin="backa.audit/test")
    page = await log.search(AuditFilter(), after=None, limit=MAX_PAGE, officer="sakerhet-test")
    assert page.next_after is None
    return [logged.entry for logged in page.entries]


@pytest.mark.parametrize("make", CASES)
async def test_hostile_input_is_refused_unrouted_and_audited(
    broker: Area, make: Callable[[], Attempt]
) -> None:
    """The attempt gets its reason code, routes nothing, stops nothing, and is in the audit log."""
    attempt = make()
    for sealed in attempt.earlier:
        await _routed(broker, sealed)
    publisher = attempt.publisher.agency if attempt.user_id else None
    await _publish(broker, attempt, user_id=publisher)
    after = _message()
    await _routed(broker, after)

    left = await _drain(broker)
    legitimate = [*attempt.earlier, after]
    assert left.envelopes == Counter((SOCIAL.agency, s.wire) for s in legitimate)
    expected: Counter[tuple[str, str, str | None, str]] = Counter(
        (POLICE.agency, "accepted", None, s.header.id) for s in legitimate
    )
    if publisher is not None:
        expected[publisher, "rejected", attempt.reason.value, attempt.message_id] += 1
    assert left.receipts == expected

    entries = await _audit(broker)
    refused = [
        (e.message_id, e.sender, e.reason) for e in entries if e.event is AuditEvent.REJECTED
    ]
    assert refused == [(attempt.message_id, publisher, attempt.reason)]
    routed = Counter(
        (e.event, e.message_id)
        for e in entries
        if e.event in (AuditEvent.ACCEPTED, AuditEvent.ROUTED)
    )
    assert routed == Counter(
        (event, s.header.id)
        for s in legitimate
        for event in (AuditEvent.ACCEPTED, AuditEvent.ROUTED)
    )


async def test_a_user_id_property_naming_another_agency_is_refused_by_rabbitmq(
    broker: Area,
) -> None:
    """RabbitMQ closes the channel of a school that sets user_id to the police; the broker never sees it.

    So there is no reason code and no audit entry to show (RabbitMQ logs the
    refusal); nothing is routed, and the broker routes the next valid message.
    """
    attempt = _envelope(_message(), ReasonCode.USER_ID_MISMATCH, SCHOOL)
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="user_id"):
        await _publish(broker, attempt, user_id=POLICE.agency)
    after = _message()
    await _routed(broker, after)
    left = await _drain(broker)
    assert left.envelopes == Counter({(SOCIAL.agency, after.wire): 1})
    assert left.receipts == Counter({(POLICE.agency, "accepted", None, after.header.id): 1})
    assert not [e for e in await _audit(broker) if e.event is AuditEvent.REJECTED]


async def test_an_envelope_re_signed_as_another_agencys_own_is_refused_by_the_recipient(
    broker: Area,
) -> None:
    """The school re-signs the police's envelope as its own: routed, but never opened or handed over.

    Even knowing the content key (it re-encrypts under its own header), the
    school cannot make the police's wrapped key open: HPKE's ``info`` binds the
    sender (PROTOCOL.md §4.3), which the broker cannot check without the
    recipient's private key. So the broker accepts it (signed by the school,
    which published it) and social services' adapter refuses it as
    ``envelope_invalid``; that signed rejection is the audit entry (a
    ``receipt``), and the broker relays it to the school. Had the police's
    original passed this broker first, the copy would be refused as ``replayed``.
    """
    social = await broker.start(SOCIAL)
    content, _alva = _content()
    key = bytes(range(32))
    original = _message(content_key=key)
    forged_header = original.header.model_copy(
        update={"sender": Party(agency=SCHOOL.agency, kid=SCHOOL.kid)}
    )
    forged = encrypt_and_sign(forged_header, content, content_key=key, sender=SCHOOL.sender)
    message_id = forged.header.id
    await broker.publish_as(SCHOOL, forged.wire, message_id)

    async def refused() -> bool:
        events = await broker.store.timeline(message_id)
        return (SOCIAL.agency, "rejected", "envelope_invalid") in {
            (e.agency, e.status, e.reason) for e in events
        }

    await until(refused, what="the recipient's rejection at the broker")
    after = _message()
    await broker.publish_as(POLICE, after.wire, after.header.id)

    async def handed_over() -> bool:
        row = await social.runtime.store.received(after.header.id)
        return row is not None and row.state == "handed_over"

    await until(handed_over, what="the next valid message handed over")
    row = await social.runtime.store.received(message_id)
    assert row is not None
    assert (row.state, row.reason, row.content) == ("rejected", "envelope_invalid", None)
    assert [r.message_id for r in await social.runtime.list_received()] == [after.header.id]

    await broker.stop(SOCIAL)
    left = await _drain(broker)
    assert not left.envelopes
    assert left.receipts == Counter(
        {
            (SCHOOL.agency, "accepted", None, message_id): 1,
            (SCHOOL.agency, "rejected", "envelope_invalid", message_id): 1,
            (POLICE.agency, "accepted", None, after.header.id): 1,
            (POLICE.agency, "delivered", None, after.header.id): 1,
            (POLICE.agency, "handed_over", None, after.header.id): 1,
        }
    )
    about = [e for e in await _audit(broker) if e.message_id == message_id]
    assert [(e.event, e.sender, e.status, e.reason) for e in about] == [
        (AuditEvent.ACCEPTED, SCHOOL.agency, None, None),
        (AuditEvent.ROUTED, SCHOOL.agency, None, None),
        (AuditEvent.RECEIPT, SOCIAL.agency, "rejected", ReasonCode.ENVELOPE_INVALID),
    ]
