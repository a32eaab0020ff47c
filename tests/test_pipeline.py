"""The broker's pure decision on one ingress message, case by case."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.pipeline import Ingress, Reject, Relay, Route, evaluate
from broker.policy import ExplicitPolicy, PolicyFileError
from broker.topology import TYPE_ENVELOPE, TYPE_RECEIPT
from keys.envelope import Sealed, seal
from keys.replay import DEFAULT_WINDOW
from keys.signed import sign_receipt
from schemas.directory import AgencyType
from schemas.envelope import Kind, LegalBasis, Purpose
from schemas.reasons import ReasonCode
from schemas.receipts import Receipt
from tests.support import CHILD, T0, Agency, signed_directory

SCHOOL = Agency.make("test-skola")
SOCIAL = Agency.make("test-soc")
BUP = Agency.make("test-bup")
POLICE = Agency.make("test-polis")
BROKER = Agency.make("test-broker")
GHOST = Agency.make("test-ghost")
DIRECTORY = signed_directory(
    [
        (SCHOOL, AgencyType.SCHOOL),
        (SOCIAL, AgencyType.SOCIAL_SERVICES),
        (BUP, AgencyType.BUP),
        (POLICE, AgencyType.POLICE),
        (BROKER, AgencyType.BROKER),
    ],
    at=T0 - timedelta(days=60),
)
POLICY = ExplicitPolicy.from_toml(
    Path("deploy/policy/explicit.toml").read_text(encoding="utf-8"), source="explicit.toml"
)


def _seal(
    sender: Agency = SCHOOL,
    recipients: tuple[Agency, ...] = (SOCIAL,),
    *,
    kind: Kind = Kind.REFERRAL,
    created: datetime = T0,
    expires: timedelta = timedelta(days=30),
) -> Sealed:
    return seal(
        b'{"opaque": "content"}',
        sender=sender.sender,
        recipients=[r.sealing for r in recipients],
        kind=kind,
        child=CHILD,
        basis=LegalBasis(type="legal", ref="osl-10-28"),
        purpose=Purpose.REFERRAL,
        created=created,
        expires=created + expires,
    )


def _run(body: bytes, user_id: str | None, *, type_: str | None = TYPE_ENVELOPE) -> object:
    return evaluate(
        Ingress(body=body, type=type_, user_id=user_id, message_id=None),
        directory=DIRECTORY,
        policy=POLICY,
        now=T0,
        window=DEFAULT_WINDOW,
        max_bytes=100_000,
    )


def test_routes_to_one_recipient() -> None:
    """A verified, allowed referral is routed unchanged to its one recipient."""
    sealed = _seal()
    result = _run(sealed.wire, SCHOOL.agency)
    assert isinstance(result, Route)
    assert result.recipients == (SOCIAL.agency,)
    assert result.wire == sealed.wire
    assert result.decision.rule == "dev.referral"
    assert result.verified.digest == sealed.digest


def test_routes_to_several_recipients() -> None:
    """One envelope to social services and BUP is routed to both."""
    result = _run(_seal(recipients=(SOCIAL, BUP)).wire, SCHOOL.agency)
    assert isinstance(result, Route)
    assert result.recipients == (SOCIAL.agency, BUP.agency)


def _reason(result: object) -> ReasonCode:
    assert isinstance(result, Reject), result
    return result.reason


@pytest.mark.parametrize(
    ("make", "user_id", "reason"),
    [
        pytest.param(lambda: _seal().wire, POLICE.agency, ReasonCode.USER_ID_MISMATCH, id="forged-user-id"),
        pytest.param(lambda: _seal().wire, None, ReasonCode.USER_ID_MISMATCH, id="no-user-id"),
        pytest.param(lambda: _seal(sender=GHOST).wire, GHOST.agency, ReasonCode.ENVELOPE_INVALID, id="unknown-sender"),
        pytest.param(lambda: _seal(recipients=(GHOST,)).wire, SCHOOL.agency, ReasonCode.UNKNOWN_RECIPIENT, id="unknown-recipient"),
        pytest.param(lambda: _seal(recipients=(Agency.make("test-soc", "k-other-1"),)).wire, SCHOOL.agency, ReasonCode.RECIPIENT_KEY_UNKNOWN, id="unknown-recipient-key"),
        pytest.param(lambda: _seal(recipients=(BROKER,)).wire, SCHOOL.agency, ReasonCode.UNKNOWN_RECIPIENT, id="broker-as-recipient"),
        pytest.param(lambda: _seal(created=T0 - timedelta(days=2), expires=timedelta(days=1)).wire, SCHOOL.agency, ReasonCode.EXPIRED, id="expired"),
        pytest.param(lambda: _seal(created=T0 - timedelta(days=8), expires=timedelta(days=30)).wire, SCHOOL.agency, ReasonCode.TOO_OLD, id="too-old"),
        pytest.param(lambda: _seal(created=T0 + timedelta(hours=1)).wire, SCHOOL.agency, ReasonCode.FROM_FUTURE, id="from-future"),
        pytest.param(lambda: _seal(recipients=(POLICE,)).wire, SCHOOL.agency, ReasonCode.NO_BASIS, id="policy-refuses"),
        pytest.param(lambda: _seal(SOCIAL, (SCHOOL,), kind=Kind.CONCERN_REPORT).wire, SOCIAL.agency, ReasonCode.NO_BASIS, id="concern-report-not-to-school"),
        pytest.param(lambda: b"{not json", SCHOOL.agency, ReasonCode.BAD_JSON, id="malformed-json"),
        pytest.param(lambda: b'{"protected": 1}', SCHOOL.agency, ReasonCode.SCHEMA_INVALID, id="schema-invalid"),
        pytest.param(lambda: b"x" * 100_001, SCHOOL.agency, ReasonCode.TOO_LARGE, id="oversized"),
    ],
)  # fmt: skip
def test_refusals(make: Any, user_id: str | None, reason: ReasonCode) -> None:
    """Each bad message is refused with its stable reason code, never an exception."""
    assert _reason(_run(make(), user_id)) == reason


def test_bad_signature_is_opaque_with_detail_for_the_log() -> None:
    """A flipped ciphertext byte is envelope_invalid outward, bad_signature in the detail."""
    envelope = json.loads(_seal().wire)
    signature = envelope["signature"]
    envelope["signature"] = signature[:10] + ("B" if signature[10] == "A" else "A") + signature[11:]
    result = _run(json.dumps(envelope).encode(), SCHOOL.agency)
    assert isinstance(result, Reject)
    assert result.reason is ReasonCode.ENVELOPE_INVALID
    assert result.detail == "bad_signature"
    assert result.header is None, "an unverified header must never be stored"


def test_forged_user_id_is_answered_to_the_publisher_and_not_stored() -> None:
    """The rejection goes to the real publisher, and the header is not kept under its id."""
    result = _run(_seal().wire, POLICE.agency)
    assert isinstance(result, Reject)
    assert result.reply_to == POLICE.agency
    assert result.header is None


def test_policy_refusal_keeps_the_verified_header() -> None:
    """A verified envelope refused by policy carries its header so the refusal is stored."""
    sealed = _seal(recipients=(POLICE,))
    result = _run(sealed.wire, SCHOOL.agency)
    assert isinstance(result, Reject)
    assert result.header == sealed.header
    assert result.reply_to == SCHOOL.agency
    assert result.message_id == sealed.header.id


def test_unknown_amqp_type_is_refused() -> None:
    """A message of a type the broker does not know is schema_invalid."""
    assert _reason(_run(_seal().wire, SCHOOL.agency, type_="something.else")) == (
        ReasonCode.SCHEMA_INVALID
    )


def _receipt(by: Agency, status: str = "delivered", reason: str = "expired") -> bytes:
    receipt = Receipt.model_validate_json(
        json.dumps(
            {
                "v": 1,
                "id": "019abb2a-6a51-7000-8000-000000000001",
                "receipt_for": "019abb2a-6a50-7cc3-9e0f-3a5f7d1e2b4c",
                "acknowledges": "ab" * 32,
                "status": status,
                "by": {"agency": by.agency, "kid": by.kid},
                "at": T0.isoformat(),
                **({"reason": reason} if status == "rejected" else {}),
                **({"recipients": [by.agency]} if status == "accepted" else {}),
            }
        )
    )
    return sign_receipt(receipt, by.sender).model_dump_json().encode()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_receipt(SOCIAL), id="delivered"),
        pytest.param(
            _receipt(SOCIAL, "rejected", "consent_revoked"), id="rejected-before-hand-over"
        ),
    ],
)
def test_a_recipients_receipt_is_relayed(body: bytes) -> None:
    """A receipt signed by its publisher is a Relay with the exact body, a recipient's rejection too."""
    result = _run(body, SOCIAL.agency, type_=TYPE_RECEIPT)
    assert isinstance(result, Relay)
    assert result.body == body
    assert result.receipt.by.agency == SOCIAL.agency


@pytest.mark.parametrize(
    ("body", "user_id", "reason"),
    [
        pytest.param(_receipt(SOCIAL), BUP.agency, ReasonCode.USER_ID_MISMATCH, id="published-by-another"),
        pytest.param(_receipt(SOCIAL, "accepted"), SOCIAL.agency, ReasonCode.SCHEMA_INVALID, id="broker-status"),
        pytest.param(_receipt(SOCIAL, "rejected", "delivery_limit"), SOCIAL.agency, ReasonCode.SCHEMA_INVALID, id="broker-only-reason"),
        pytest.param(_receipt(GHOST), GHOST.agency, ReasonCode.ENVELOPE_INVALID, id="unknown-signer"),
        pytest.param(b"[]", SOCIAL.agency, ReasonCode.SCHEMA_INVALID, id="not-a-receipt"),
    ],
)  # fmt: skip
def test_receipt_refusals(body: bytes, user_id: str, reason: ReasonCode) -> None:
    """Receipts are verified like envelopes: signer, publisher and status."""
    assert _reason(_run(body, user_id, type_=TYPE_RECEIPT)) == reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('[[allow]]\nid = "a"\nkinds = ["referal"]\nsenders = ["school"]\nrecipients = ["bup"]\n', "allow[0] (id 'a').kinds.0", id="bad-kind"),
        pytest.param('[[allow]]\nid = "a"\nkinds = ["referral"]\nsenders = ["school"]\n', "allow[0] (id 'a').recipients", id="missing-field"),
        pytest.param("[[allow]\n", "not valid TOML", id="bad-toml"),
        pytest.param('[[allow]]\nid = "a"\nkinds = ["referral"]\nsenders = ["school"]\nrecipients = ["bup"]\n' * 2, "two rules share an id", id="duplicate-id"),
    ],
)  # fmt: skip
def test_policy_file_errors_name_the_rule_and_field(text: str, message: str) -> None:
    """A broken allow-list stops start-up with an error naming the rule and field."""
    with pytest.raises(PolicyFileError, match=re.escape(message)):
        ExplicitPolicy.from_toml(text, source="x.toml")
