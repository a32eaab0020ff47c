"""The adapter's pure decisions: content tied to its header, the policy checked again before hand-over.

The table covers every refusal a recipient adapter can reach from the policy
(revoked, expired consent, missing consent, a deferred condition that does
not hold) with the child's age on both sides of 18, and the property checks
the promise of issue #4 at the recipient: nothing is ever handed over after
its consent was revoked.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.core import (
    Refused,
    age_on,
    check_before_handover,
    check_content,
    receipt_id,
    recipient_receipt,
    verify_notice,
)
from keys.envelope import Sealed, seal
from keys.personnummer import luhn_check_digit, parse_identity_number
from keys.policy import ChildFacts, ConsentState, load_policy
from keys.pseudonym import PseudonymKey, child_pseudonym
from keys.signed import sign_consent, sign_revocation, verify_receipt
from schemas.consent import ConsentRecord, ConsentRevocation
from schemas.directory import AgencyType
from schemas.envelope import ConsentBasis, Kind, LegalBasis, Purpose
from schemas.reasons import ReasonCode
from schemas.receipts import Answer, DeclineReason, ReceiptStatus
from tests.support import T0, Agency, signed_directory

SCHOOL = Agency.make("core-skola")
SOCIAL = Agency.make("core-soc")
VC = Agency.make("core-vc")
BROKER = Agency.make("core-broker")
DIRECTORY = signed_directory(
    [
        (SCHOOL, AgencyType.SCHOOL),
        (SOCIAL, AgencyType.SOCIAL_SERVICES),
        (VC, AgencyType.PRIMARY_CARE),
        (BROKER, AgencyType.BROKER),
    ],
    at=T0 - timedelta(days=30),
)
POLICY = load_policy(Path("deploy/policy/sweden.toml"))
KEY = PseudonymKey(b"k" * 32)
CONSENT_ID = "019abb2a-6a52-7000-8000-00000000c0de"


def _number(born: date) -> str:
    nine = born.strftime("%y%m%d") + "238"
    return born.strftime("%Y%m%d") + "238" + str(luhn_check_digit(nine))


def _child(age: int) -> str:
    """A valid personnummer of a child who turns ``age`` today (T0) or is older by a day."""
    born = T0.date().replace(year=T0.year - age) - timedelta(days=1)
    return _number(born)


def _pseudonym(number: str) -> str:
    return child_pseudonym(parse_identity_number(number, today=T0.date()), KEY)


def _referral_content(number: str) -> bytes:
    return json.dumps(
        {
            "child": {"identity_number": number},
            "needs": [{"area": "trygghet", "description": "Oro."}],
            "summary": "Sammanfattning.",
            "requested_support": "Stöd.",
            "urgency": "routine",
            "contact": {"staff_id": "kurator.lind", "role": "kurator"},
            "guardians_informed": True,
        }
    ).encode()


def _sealed(
    number: str,
    *,
    sender: Agency = VC,
    basis: ConsentBasis | LegalBasis | None = None,
    kind: Kind = Kind.REFERRAL,
    header_child: str | None = None,
    content: bytes | None = None,
) -> Sealed:
    return seal(
        content if content is not None else _referral_content(number),
        sender=sender.sender,
        recipients=[SOCIAL.sealing],
        kind=kind,
        child=header_child or _pseudonym(number),
        basis=basis or LegalBasis(type="legal", ref="osl-25-12"),
        purpose=Purpose.REFERRAL,
        created=T0,
        expires=T0 + timedelta(days=30),
    )


def _consent(number: str, *, until: datetime = T0 + timedelta(days=90)) -> ConsentRecord:
    return ConsentRecord.model_validate_json(
        json.dumps(
            {
                "id": CONSENT_ID,
                "child": _pseudonym(number),
                "guardians": [{"pseudonym": "cd" * 32, "custodial": True}],
                "joint_custody": False,
                "child_view": {"consented": True, "age": 13, "assessed_mature": False},
                "registered_by": {"agency": VC.agency, "kid": VC.kid, "staff_id": "bvc.ssk"},
                "parties": [{"agency": VC.agency}, {"agency": SOCIAL.agency}],
                "purposes": ["referral"],
                "valid_from": (T0 - timedelta(days=1)).isoformat(),
                "valid_until": until.isoformat(),
                "document_digest": "ef" * 32,
            }
        )
    )


def test_age_counts_whole_years() -> None:
    """A child is 17 until the morning of its 18th birthday."""
    assert age_on(date(2008, 11, 25), date(2026, 11, 24)) == 17
    assert age_on(date(2008, 11, 25), date(2026, 11, 25)) == 18


def test_content_gives_the_childs_age() -> None:
    """Opened content that names the header's child gives the facts the deferred conditions need."""
    number = _child(9)
    sealed = _sealed(number)
    checked = check_content(
        sealed.header, _referral_content(number), pseudonym_key=KEY, today=T0.date()
    )
    assert checked.facts == ChildFacts(age=9)


@pytest.mark.parametrize(
    ("content", "header_child", "reason"),
    [
        pytest.param(b'{"child": 1}', None, ReasonCode.SCHEMA_INVALID, id="content-does-not-fit-kind"),
        pytest.param(None, "ab" * 32, ReasonCode.CONSENT_CHILD_MISMATCH, id="content-names-another-child"),
    ],
)  # fmt: skip
def test_content_that_does_not_fit_its_header_is_refused(
    content: bytes | None, header_child: str | None, reason: ReasonCode
) -> None:
    """A sender cannot route under one child's pseudonym while writing about another."""
    number = _child(9)
    sealed = _sealed(number, header_child=header_child)
    with pytest.raises(Refused) as caught:
        check_content(
            sealed.header,
            content if content is not None else _referral_content(number),
            pseudonym_key=KEY,
            today=T0.date(),
        )
    assert caught.value.reason is reason


REVOKED_AT = T0 + timedelta(hours=1)

CASES = [
    # (id, age, basis, consents, now, expected refusal or None, one-line reason)
    (
        "legal-minor",
        17,
        "legal",
        {},
        T0,
        None,
        "OSL 25:12 allows health → social services for a 17-year-old",
    ),
    (
        "legal-adult",
        18,
        "legal",
        {},
        T0,
        ReasonCode.CONDITION_NOT_MET,
        "the same rule refuses once the child is 18",
    ),
    (
        "consent-valid",
        12,
        "consent",
        {"state": "valid"},
        T0,
        None,
        "a valid consent naming both parties",
    ),
    (
        "consent-revoked-before",
        12,
        "consent",
        {"state": "revoked"},
        REVOKED_AT,
        ReasonCode.CONSENT_REVOKED,
        "revoked at hand-over time, inclusive",
    ),
    (
        "consent-revoked-after",
        12,
        "consent",
        {"state": "revoked"},
        REVOKED_AT - timedelta(microseconds=1),
        None,
        "a revocation takes effect forward only",
    ),
    (
        "consent-expired",
        15,
        "consent",
        {"state": "expires"},
        T0 + timedelta(days=2),
        ReasonCode.CONSENT_EXPIRED,
        "valid_until has passed",
    ),
    (
        "consent-unknown",
        12,
        "consent",
        {},
        T0,
        ReasonCode.CONSENT_MISSING,
        "the adapter never saw the consent: fail closed",
    ),
    (
        "message-expired",
        12,
        "legal",
        {},
        T0 + timedelta(days=30),
        ReasonCode.EXPIRED,
        "past the header's expires",
    ),
]


@pytest.mark.parametrize(
    ("age", "basis", "consents", "now", "expected"),
    [pytest.param(*case[1:6], id=case[0]) for case in CASES],
)
def test_check_before_handover(
    age: int,
    basis: str,
    consents: dict[str, str],
    now: datetime,
    expected: ReasonCode | None,
) -> None:
    """The recipient's second check refuses exactly what the table says."""
    number = _child(age)
    header_basis = (
        ConsentBasis(type="consent", consent_id=CONSENT_ID)
        if basis == "consent"
        else LegalBasis(type="legal", ref="osl-25-12")
    )
    sealed = _sealed(number, basis=header_basis)
    states = {}
    if consents:
        until = (
            T0 + timedelta(days=1) if consents["state"] == "expires" else T0 + timedelta(days=90)
        )
        revoked = REVOKED_AT if consents["state"] == "revoked" else None
        states[CONSENT_ID] = ConsentState(_consent(number, until=until), revoked_at=revoked)
    facts = ChildFacts(
        age=age_on(parse_identity_number(number, today=now.date()).birth_date, now.date())
    )
    if expected is None:
        check_before_handover(
            sealed.header, facts, directory=DIRECTORY, consents=states, policy=POLICY, now=now
        )
        return
    with pytest.raises(Refused) as caught:
        check_before_handover(
            sealed.header, facts, directory=DIRECTORY, consents=states, policy=POLICY, now=now
        )
    assert caught.value.reason is expected


def test_a_deferred_condition_without_facts_fails_closed() -> None:
    """Content that names no child cannot satisfy a condition on the child's age."""
    sealed = _sealed(_child(10))
    with pytest.raises(Refused) as caught:
        check_before_handover(
            sealed.header, None, directory=DIRECTORY, consents={}, policy=POLICY, now=T0
        )
    assert caught.value.reason is ReasonCode.CONDITION_NOT_MET


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    revoked_after_s=st.integers(min_value=-86_400, max_value=86_400),
    handover_after_s=st.integers(min_value=0, max_value=86_400),
    age=st.integers(min_value=0, max_value=17),
)
def test_nothing_is_handed_over_after_its_consent_was_revoked(
    revoked_after_s: int, handover_after_s: int, age: int
) -> None:
    """For any revocation time and hand-over time: after the revocation, hand-over is refused."""
    number = _child(age)
    sealed = _sealed(number, basis=ConsentBasis(type="consent", consent_id=CONSENT_ID))
    revoked_at = T0 + timedelta(seconds=revoked_after_s)
    now = T0 + timedelta(seconds=handover_after_s)
    states = {CONSENT_ID: ConsentState(_consent(number), revoked_at=revoked_at)}
    try:
        check_before_handover(
            sealed.header,
            ChildFacts(age=age),
            directory=DIRECTORY,
            consents=states,
            policy=POLICY,
            now=now,
        )
        refusal = None
    except Refused as exc:
        refusal = exc.reason
    assert refusal is (None if now < revoked_at else ReasonCode.CONSENT_REVOKED)


def test_receipts_have_one_id_per_message_agency_and_step() -> None:
    """The same receipt signed twice (after a crash) has the same id; the broker can de-duplicate."""
    message_id = "019abb2a-6a51-7000-8000-000000000001"
    first = recipient_receipt(
        ReceiptStatus.ANSWERED,
        message_id=message_id,
        digest="ab" * 32,
        signer=SOCIAL.sender,
        at=T0,
        answer=Answer.DECLINED,
        decline_reason=DeclineReason.NO_CAPACITY,
        staff_id="handl-7",
    )
    receipt = verify_receipt(first, keys=DIRECTORY, now=T0)
    assert receipt.id == receipt_id(message_id, SOCIAL.agency, ReceiptStatus.ANSWERED)
    assert (receipt.answer, receipt.decline_reason, receipt.staff_id) == (
        Answer.DECLINED,
        DeclineReason.NO_CAPACITY,
        "handl-7",
    )
    assert receipt_id(message_id, SOCIAL.agency, ReceiptStatus.READ) != receipt.id


def test_a_recipient_cannot_refuse_for_a_brokers_reason() -> None:
    """Refused only carries the reasons a recipient may send (the broker relays no others)."""
    with pytest.raises(ValueError, match="cannot refuse"):
        Refused(ReasonCode.DELIVERY_LIMIT, "x")


def _notice(revocation_by: Agency | None, *, revoked_at: datetime = REVOKED_AT) -> bytes:
    number = _child(12)
    consent = sign_consent(_consent(number), VC.sender)
    revocation = None
    if revocation_by is not None:
        revocation = sign_revocation(
            ConsentRevocation.model_validate_json(
                json.dumps(
                    {
                        "consent_id": CONSENT_ID,
                        "revoked_at": revoked_at.isoformat(),
                        "reason": "guardian_withdrew",
                        "by": {
                            "agency": revocation_by.agency,
                            "kid": revocation_by.kid,
                            "staff_id": "handl-7",
                        },
                    }
                )
            ),
            revocation_by.sender,
        ).model_dump()
    return json.dumps(
        {
            "event": "consent_revoked" if revocation else "consent_registered",
            "consent_id": CONSENT_ID,
            "revoked_at": (T0 + timedelta(days=9)).isoformat(),  # the broker's word: not used
            "consent": consent.model_dump(),
            "revocation": revocation,
        }
    ).encode()


def test_a_notice_takes_the_revocation_time_the_revoker_signed() -> None:
    """The adapter believes the revoking agency's signature, not the broker's field."""
    notice = verify_notice(_notice(SOCIAL), directory=DIRECTORY, now=T0 + timedelta(hours=2))
    assert notice.state.revoked_at == REVOKED_AT
    assert verify_notice(_notice(None), directory=DIRECTORY, now=T0).state.revoked_at is None


def test_a_revocation_dated_in_the_future_takes_effect_at_once() -> None:
    """A skewed revoker clock cannot keep a revoked consent alive until its date."""
    later = T0 + timedelta(days=3)
    notice = verify_notice(
        _notice(SOCIAL, revoked_at=later), directory=DIRECTORY, now=T0 + timedelta(hours=2)
    )
    assert notice.state.revoked_at == T0 + timedelta(hours=2)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"{}", id="no-consent"),
        pytest.param(
            _notice(SOCIAL).replace(b'"payload": "', b'"payload": "AAAA'), id="forged-payload"
        ),
    ],
)
def test_a_bad_notice_is_refused(body: bytes) -> None:
    """A notice whose signed parts do not verify changes nothing."""
    with pytest.raises(ValueError, match=r"."):
        verify_notice(body, directory=DIRECTORY, now=T0 + timedelta(hours=2))


def _escalation_notice(child: str) -> bytes:
    return json.dumps(
        {
            "matter": "019abb2a-6a51-7000-8000-000000000001",
            "rule": "referral.not-answered",
            "overdue": "answer",
            "since": T0.isoformat(),
            "child": child,
        }
    ).encode()


def _escalation(sender: Agency, *, content_child: str, header_child: str) -> Sealed:
    return seal(
        _escalation_notice(content_child),
        sender=sender.sender,
        recipients=[SOCIAL.sealing],
        kind=Kind.ESCALATION,
        child=header_child,
        basis=LegalBasis(type="legal", ref="backa-escalation"),
        purpose=Purpose.COORDINATION,
        created=T0,
        expires=T0 + timedelta(days=1),
    )


@pytest.mark.parametrize(
    ("sender", "content_child", "reason"),
    [
        pytest.param(BROKER, "ab" * 32, None, id="from-the-broker"),
        pytest.param(SCHOOL, "ab" * 32, ReasonCode.SCHEMA_INVALID, id="an-agency-cannot-escalate"),
        pytest.param(
            BROKER, "cd" * 32, ReasonCode.CONSENT_CHILD_MISMATCH, id="about-another-child"
        ),
    ],
)
def test_an_escalation_is_handed_over_only_from_the_broker(
    sender: Agency, content_child: str, reason: ReasonCode | None
) -> None:
    """The broker's notice needs no basis (metadata it holds); anyone else's is refused."""
    sealed = _escalation(sender, content_child=content_child, header_child="ab" * 32)
    refusal = None
    try:
        checked = check_content(
            sealed.header, _escalation_notice(content_child), pseudonym_key=KEY, today=T0.date()
        )
        check_before_handover(
            sealed.header,
            checked.facts,
            directory=DIRECTORY,
            consents={},
            policy=POLICY,
            now=T0 + timedelta(days=3),  # even past expires: a late notice is still shown
        )
    except Refused as exc:
        refusal = exc.reason
    assert refusal is reason
