"""The consent and legal-basis engine (``keys.policy.decide``) against deploy/policy/sweden.toml.

One table allows a case under each rule of the Swedish policy and refuses a
case with each reason code; the boundaries of validity and revocation are
checked to the microsecond; a hypothesis property checks that whatever
``decide`` allows is backed by a consent or a rule, and that it never raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keys.policy import (
    ChildFacts,
    ConsentState,
    PolicyDecision,
    consent_allows_party,
    decide,
    load_policy,
)
from schemas.consent import (
    AgencyRef,
    AgencyTypeRef,
    ChildView,
    ConsentRecord,
    Guardian,
    PartyRef,
    Registrar,
)
from schemas.directory import AgencyType
from schemas.envelope import (
    Basis,
    ConsentBasis,
    Kind,
    LegalBasis,
    Party,
    ProtectedHeader,
    Purpose,
    Recipient,
    Suite,
)
from schemas.policy import CONSENT_BASIS, Condition, PolicyFile, PolicyRule
from schemas.reasons import ReasonCode
from tests.support import CHILD, EXPIRES, T0, Agency, signed_directory

REPO = Path(__file__).resolve().parents[1]
SWEDEN = load_policy(REPO / "deploy" / "policy" / "sweden.toml")

#: One agency of every type, plus a second social services and the broker.
AGENCY_TYPES: dict[str, AgencyType] = {
    "test-forskola": AgencyType.PRESCHOOL,
    "test-skola": AgencyType.SCHOOL,
    "test-soc": AgencyType.SOCIAL_SERVICES,
    "test-soc-norr": AgencyType.SOCIAL_SERVICES,
    "test-bvc": AgencyType.CHILD_HEALTH,
    "test-mvc": AgencyType.MATERNAL_CARE,
    "test-umo": AgencyType.YOUTH_CLINIC,
    "test-vc": AgencyType.PRIMARY_CARE,
    "test-bup": AgencyType.BUP,
    "test-hab": AgencyType.HABILITATION,
    "test-polis": AgencyType.POLICE,
    "test-broker": AgencyType.BROKER,
}
DIRECTORY = signed_directory([(Agency.make(a), t) for a, t in AGENCY_TYPES.items()])
#: A well-formed agency id that the directory does not know.
UNKNOWN = "test-okand"

CONSENT_ID = "019abb2a-6a52-7000-8000-00000000c0de"
OTHER_CONSENT_ID = "019abb2a-6a52-7000-8000-00000000beef"
OTHER_CHILD = "ab" * 32
MESSAGE_ID = "019abb2a-6a50-7cc3-9e0f-3a5f7d1e2b4c"
KID = "k2026-0001"
US = timedelta(microseconds=1)


def header(
    sender: str = "test-skola",
    recipients: Sequence[str] = ("test-soc",),
    *,
    kind: Kind = Kind.REFERRAL,
    basis: Basis | None = None,
    purpose: Purpose = Purpose.REFERRAL,
    child: str = CHILD,
) -> ProtectedHeader:
    """A protected header as the broker sees it (dummy key material: policy never reads it)."""
    return ProtectedHeader(
        v=1,
        suite=Suite.V1,
        id=MESSAGE_ID,
        kind=kind,
        sender=Party(agency=sender, kid=KID),
        recipients=[Recipient(agency=a, kid=KID, wrapped_key="AAAA") for a in recipients],
        child=child,
        basis=basis if basis is not None else ConsentBasis(type="consent", consent_id=CONSENT_ID),
        purpose=purpose,
        thread=MESSAGE_ID,
        created=T0,
        expires=EXPIRES,
        iv="AAAAAAAAAAAAAAAA",
    )


def legal(ref: str) -> LegalBasis:
    """A legal basis by its code."""
    return LegalBasis(type="legal", ref=ref)


def consent(
    *,
    parties: Sequence[PartyRef] = (AgencyRef(agency="test-skola"), AgencyRef(agency="test-soc")),
    purposes: Sequence[Purpose] = (Purpose.REFERRAL, Purpose.TEAM),
    valid_from: datetime = T0 - timedelta(days=1),
    valid_until: datetime = T0 + timedelta(days=365),
    child: str = CHILD,
    consent_id: str = CONSENT_ID,
) -> ConsentRecord:
    """A registered consent: one custodial guardian, a consenting child of 13."""
    return ConsentRecord(
        id=consent_id,
        child=child,
        guardians=[Guardian(pseudonym="cd" * 32, custodial=True)],
        joint_custody=False,
        child_view=ChildView(consented=True, age=13, assessed_mature=False),
        registered_by=Registrar(agency="test-skola", kid=KID, staff_id="kurator.lena"),
        parties=list(parties),
        purposes=list(purposes),
        valid_from=valid_from,
        valid_until=valid_until,
        document_digest="ef" * 32,
    )


def book(
    record: ConsentRecord | None = None, revoked_at: datetime | None = None
) -> dict[str, ConsentState]:
    """A consent book holding one consent (the default one unless given)."""
    record = record if record is not None else consent()
    return {record.id: ConsentState(record=record, revoked_at=revoked_at)}


def rule(rule_id: str, policy: PolicyFile = SWEDEN) -> PolicyRule:
    """The rule of ``policy`` with this id."""
    return next(r for r in policy.rules if r.id == rule_id)


def allowed(
    rule_id: str, *, consent_id: str | None = None, deferred: tuple[Condition, ...] = ()
) -> PolicyDecision:
    """The decision that allows under ``rule_id`` of the Swedish policy."""
    return PolicyDecision(
        allowed=True,
        rule=rule_id,
        legal_ref=rule(rule_id).legal_ref,
        consent_id=consent_id,
        deferred=deferred,
    )


def refused(reason: ReasonCode) -> PolicyDecision:
    """The decision that refuses with ``reason``."""
    return PolicyDecision(allowed=False, reason=reason)


def policy_of(*rules: Mapping[str, Any]) -> PolicyFile:
    """A policy with the Swedish consent section and the given rules."""
    return PolicyFile.model_validate(
        {
            "version": "test",
            "jurisdiction": "SE",
            "consent": SWEDEN.consent.model_dump(),
            "rule": [{"legal_ref": "test", "description": "test", **r} for r in rules],
        }
    )


BOOK = book()
AGE_5 = ChildFacts(age=5)
BY_CONSENT = allowed("consent.sharing", consent_id=CONSENT_ID)

# (header, consent book, child facts, expected decision, why)
DECISIONS = [
    # --- each rule of sweden.toml allows its case --------------------------------------------
    pytest.param(header(), BOOK, None, BY_CONSENT,
                 "school to social services under the guardians' consent", id="allow-consent"),
    pytest.param(header("test-forskola", kind=Kind.CONCERN_REPORT, basis=legal("osl-10-28"), purpose=Purpose.CONCERN), BOOK, AGE_5,
                 allowed("osl-10-28.concern-report"), "preschool reports concern to social services", id="allow-osl-10-28"),
    pytest.param(header("test-polis", kind=Kind.CONCERN_REPORT, basis=legal("osl-10-28"), purpose=Purpose.CONCERN), BOOK, AGE_5,
                 allowed("osl-10-28.concern-report"), "the police have the duty to report concern too", id="allow-osl-10-28-police"),
    pytest.param(header("test-bvc", kind=Kind.REFERRAL, basis=legal("osl-25-12")), BOOK, AGE_5,
                 allowed("osl-25-12.health-to-social"), "BVC refers a minor to social services", id="allow-osl-25-12"),
    pytest.param(header("test-soc", ["test-bup"], kind=Kind.TEAM_INVITATION, basis=legal("osl-26-9"), purpose=Purpose.TEAM), BOOK, AGE_5,
                 allowed("osl-26-9.social-to-health"), "social services invites BUP for a minor", id="allow-osl-26-9"),
    pytest.param(header("test-skola", ["test-polis"], kind=Kind.CONCERN_REPORT, basis=legal("osl-10-21"), purpose=Purpose.CONCERN), BOOK, AGE_5,
                 allowed("osl-10-21.crime-to-police"), "school reports suspected crime against a child to the police", id="allow-osl-10-21"),
    # --- consent parties by agency id and by agency type ------------------------------------
    pytest.param(header(), book(consent(parties=[AgencyTypeRef(agency_type=AgencyType.SCHOOL), AgencyTypeRef(agency_type=AgencyType.SOCIAL_SERVICES)])), None, BY_CONSENT,
                 "parties named by type cover every agency of that type", id="allow-party-by-type"),
    pytest.param(header("test-skola", ["test-soc", "test-bup"]), book(consent(parties=[AgencyRef(agency="test-skola"), AgencyRef(agency="test-soc"), AgencyTypeRef(agency_type=AgencyType.BUP)])), None, BY_CONSENT,
                 "ids and types mix in one consent", id="allow-party-mixed"),
    # --- no_basis -----------------------------------------------------------------------------
    pytest.param(header(UNKNOWN), BOOK, None, refused(ReasonCode.NO_BASIS),
                 "a sender the directory does not know has no basis", id="no-basis-unknown-sender"),
    pytest.param(header(recipients=["test-soc", UNKNOWN]), BOOK, None, refused(ReasonCode.NO_BASIS),
                 "one unknown recipient refuses the whole message", id="no-basis-unknown-recipient"),
    pytest.param(header(recipients=["test-broker"]), BOOK, None, refused(ReasonCode.NO_BASIS),
                 "the broker never receives information about a child", id="no-basis-broker-recipient"),
    pytest.param(header("test-broker"), BOOK, None, refused(ReasonCode.NO_BASIS),
                 "the broker never shares information about a child", id="no-basis-broker-sender"),
    pytest.param(header(basis=legal("osl-99-1")), BOOK, AGE_5, refused(ReasonCode.NO_BASIS),
                 "a legal basis no rule names", id="no-basis-unknown-legal"),
    pytest.param(header(basis=legal("consent")), BOOK, AGE_5, refused(ReasonCode.NO_BASIS),
                 "a legal basis spelled 'consent' does not reach the consent rules", id="no-basis-legal-named-consent"),
    # --- consent refusals, in the engine's order ---------------------------------------------
    pytest.param(header(basis=ConsentBasis(type="consent", consent_id=OTHER_CONSENT_ID)), BOOK, None, refused(ReasonCode.CONSENT_MISSING),
                 "the named consent is not registered", id="consent-missing"),
    pytest.param(header(), {CONSENT_ID: ConsentState(consent(consent_id=OTHER_CONSENT_ID))}, None, refused(ReasonCode.CONSENT_MISSING),
                 "a book whose key and record disagree is not trusted", id="consent-missing-corrupt-book"),
    pytest.param(header(child=OTHER_CHILD), BOOK, None, refused(ReasonCode.CONSENT_CHILD_MISMATCH),
                 "the consent is about another child", id="consent-child-mismatch"),
    pytest.param(header(), book(revoked_at=T0 - timedelta(hours=1)), None, refused(ReasonCode.CONSENT_REVOKED),
                 "revoked an hour ago", id="consent-revoked"),
    pytest.param(header(), book(consent(valid_from=T0 + timedelta(days=1))), None, refused(ReasonCode.CONSENT_NOT_YET_VALID),
                 "the consent begins tomorrow", id="consent-not-yet-valid"),
    pytest.param(header(), book(consent(valid_from=T0 - timedelta(days=30), valid_until=T0 - timedelta(days=1))), None, refused(ReasonCode.CONSENT_EXPIRED),
                 "the consent ended yesterday", id="consent-expired"),
    pytest.param(header(recipients=["test-soc", "test-bup"]), BOOK, None, refused(ReasonCode.CONSENT_SCOPE_PARTY),
                 "BUP is not a party of the consent", id="consent-scope-party-recipient"),
    pytest.param(header("test-forskola"), BOOK, None, refused(ReasonCode.CONSENT_SCOPE_PARTY),
                 "the preschool is not a party of the consent", id="consent-scope-party-sender"),
    pytest.param(header("test-skola", ["test-soc-norr"]), BOOK, None, refused(ReasonCode.CONSENT_SCOPE_PARTY),
                 "a party by id covers that agency, not others of its type", id="consent-scope-party-same-type"),
    pytest.param(header(purpose=Purpose.CONCERN), BOOK, None, refused(ReasonCode.CONSENT_SCOPE_PURPOSE),
                 "the consent does not name the concern purpose", id="consent-scope-purpose"),
    pytest.param(header(kind=Kind.RECEIPT), BOOK, None, refused(ReasonCode.BASIS_NOT_ALLOWED_FOR_KIND),
                 "no consent rule carries receipts as content", id="consent-kind-not-allowed"),
    # --- legal basis refusals ----------------------------------------------------------------
    pytest.param(header("test-soc", ["test-bup"], kind=Kind.CONCERN_REPORT, basis=legal("osl-26-9")), BOOK, AGE_5, refused(ReasonCode.BASIS_NOT_ALLOWED_FOR_KIND),
                 "OSL 26:9 does not carry concern reports", id="kind-not-allowed"),
    pytest.param(header("test-soc-norr", ["test-soc"], kind=Kind.CONCERN_REPORT, basis=legal("osl-10-28")), BOOK, AGE_5, refused(ReasonCode.SENDER_TYPE_NOT_ALLOWED),
                 "social services does not report concern to itself", id="sender-not-allowed-social"),
    pytest.param(header("test-skola", ["test-soc"], kind=Kind.REFERRAL, basis=legal("osl-25-12")), BOOK, AGE_5, refused(ReasonCode.SENDER_TYPE_NOT_ALLOWED),
                 "OSL 25:12 is health care's, not the school's", id="sender-not-allowed-school"),
    pytest.param(header("test-skola", ["test-forskola"], kind=Kind.CONCERN_REPORT, basis=legal("osl-10-28")), BOOK, AGE_5, refused(ReasonCode.RECIPIENT_TYPE_NOT_ALLOWED),
                 "concern is reported to social services only", id="recipient-not-allowed"),
    pytest.param(header("test-bvc", ["test-soc", "test-skola"], kind=Kind.REFERRAL, basis=legal("osl-25-12")), BOOK, AGE_5, refused(ReasonCode.RECIPIENT_TYPE_NOT_ALLOWED),
                 "every recipient must be allowed, not just one", id="recipient-not-allowed-one-of-two"),
    pytest.param(header("test-bvc", kind=Kind.REFERRAL, basis=legal("osl-25-12")), BOOK, ChildFacts(age=18), refused(ReasonCode.CONDITION_NOT_MET),
                 "OSL 25:12 covers minors only", id="condition-not-met"),
]  # fmt: skip


@pytest.mark.parametrize(("hdr", "consents", "child", "expected", "why"), DECISIONS)
def test_decide(
    hdr: ProtectedHeader,
    consents: Mapping[str, ConsentState],
    child: ChildFacts | None,
    expected: PolicyDecision,
    why: str,
) -> None:
    """Each case is allowed under its rule or refused with its reason code."""
    assert (
        decide(hdr, directory=DIRECTORY, consents=consents, policy=SWEDEN, now=T0, child=child)
        == expected
    ), why


def test_every_rule_and_refusal_code_is_in_the_table() -> None:
    """The table allows under every rule of sweden.toml and refuses with every policy code."""
    expected = [p.values[3] for p in DECISIONS if isinstance(p.values[3], PolicyDecision)]
    assert len(expected) == len(DECISIONS)
    assert {d.rule for d in expected if d.allowed} == {r.id for r in SWEDEN.rules}
    assert {d.reason for d in expected if not d.allowed} >= {
        ReasonCode.NO_BASIS,
        ReasonCode.CONSENT_MISSING,
        ReasonCode.CONSENT_CHILD_MISMATCH,
        ReasonCode.CONSENT_REVOKED,
        ReasonCode.CONSENT_NOT_YET_VALID,
        ReasonCode.CONSENT_EXPIRED,
        ReasonCode.CONSENT_SCOPE_PARTY,
        ReasonCode.CONSENT_SCOPE_PURPOSE,
        ReasonCode.BASIS_NOT_ALLOWED_FOR_KIND,
        ReasonCode.SENDER_TYPE_NOT_ALLOWED,
        ReasonCode.RECIPIENT_TYPE_NOT_ALLOWED,
        ReasonCode.CONDITION_NOT_MET,
    }


# --- boundaries ------------------------------------------------------------------------------

VALID_FROM = T0 - timedelta(days=10)
VALID_UNTIL = T0 + timedelta(days=10)
REVOKED_AT = T0 + timedelta(days=3)


@pytest.mark.parametrize(
    ("now", "revoked_at", "expected", "why"),
    [
        pytest.param(VALID_FROM - US, None, refused(ReasonCode.CONSENT_NOT_YET_VALID), "a microsecond before valid_from", id="before-valid-from"),
        pytest.param(VALID_FROM, None, BY_CONSENT, "valid_from is inclusive", id="at-valid-from"),
        pytest.param(VALID_UNTIL - US, None, BY_CONSENT, "a microsecond before valid_until", id="before-valid-until"),
        pytest.param(VALID_UNTIL, None, refused(ReasonCode.CONSENT_EXPIRED), "valid_until is exclusive", id="at-valid-until"),
        pytest.param(REVOKED_AT - US, REVOKED_AT, BY_CONSENT, "a microsecond before the revocation", id="before-revocation"),
        pytest.param(REVOKED_AT, REVOKED_AT, refused(ReasonCode.CONSENT_REVOKED), "the revocation takes effect at revoked_at", id="at-revocation"),
        pytest.param(VALID_UNTIL, REVOKED_AT, refused(ReasonCode.CONSENT_REVOKED), "revoked and expired reads as revoked", id="revoked-and-expired"),
        pytest.param(VALID_FROM - US, VALID_FROM - timedelta(days=1), refused(ReasonCode.CONSENT_REVOKED), "revoked before it began", id="revoked-before-valid"),
    ],
)  # fmt: skip
def test_validity_and_revocation_boundaries(
    now: datetime, revoked_at: datetime | None, expected: PolicyDecision, why: str
) -> None:
    """valid_from is inclusive, valid_until exclusive, and a revocation counts from revoked_at."""
    consents = book(consent(valid_from=VALID_FROM, valid_until=VALID_UNTIL), revoked_at=revoked_at)
    assert (
        decide(header(), directory=DIRECTORY, consents=consents, policy=SWEDEN, now=now) == expected
    ), why


# --- conditions ------------------------------------------------------------------------------

LEGAL_CASES = {
    "osl-10-28.concern-report": header("test-skola", kind=Kind.CONCERN_REPORT, basis=legal("osl-10-28")),
    "osl-25-12.health-to-social": header("test-bup", kind=Kind.PLAN_UPDATE, basis=legal("osl-25-12")),
    "osl-26-9.social-to-health": header("test-soc", ["test-bvc", "test-mvc"], kind=Kind.REFERRAL, basis=legal("osl-26-9")),
    "osl-10-21.crime-to-police": header("test-bvc", ["test-polis"], kind=Kind.CONCERN_REPORT, basis=legal("osl-10-21")),
}  # fmt: skip
UNDER_18 = (Condition.CHILD_UNDER_18,)


@pytest.mark.parametrize("rule_id", sorted(LEGAL_CASES))
@pytest.mark.parametrize(
    ("child", "deferred", "reason", "why"),
    [
        pytest.param(ChildFacts(age=17), (), None, "a child of 17 is a minor", id="age-17"),
        pytest.param(ChildFacts(age=18), (), ReasonCode.CONDITION_NOT_MET, "at 18 the child is an adult", id="age-18"),
        pytest.param(None, UNDER_18, None, "the broker cannot know the age and defers the check", id="no-facts"),
    ],
)  # fmt: skip
def test_legal_bases_are_for_minors(
    rule_id: str,
    child: ChildFacts | None,
    deferred: tuple[Condition, ...],
    reason: ReasonCode | None,
    why: str,
) -> None:
    """Each legal basis allows for a child under 18, refuses at 18, and defers without facts."""
    decision = decide(
        LEGAL_CASES[rule_id], directory=DIRECTORY, consents={}, policy=SWEDEN, now=T0, child=child
    )
    expected = refused(reason) if reason is not None else allowed(rule_id, deferred=deferred)
    assert decision == expected, why


def test_a_covering_rule_without_conditions_is_preferred_to_deferring() -> None:
    """Without child facts, a rule that needs none wins over an earlier one that would defer."""
    policy = policy_of(
        {"id": "minors", "basis": "test-basis", "kinds": ["referral"], "senders": ["school"], "recipients": ["social_services"], "conditions": ["child_under_18"]},
        {"id": "anyone", "basis": "test-basis", "kinds": ["referral"], "senders": ["school"], "recipients": ["social_services"]},
    )  # fmt: skip
    decision = decide(
        header(basis=legal("test-basis")), directory=DIRECTORY, consents={}, policy=policy, now=T0
    )
    assert (decision.allowed, decision.rule, decision.deferred) == (True, "anyone", ())


def test_a_failed_condition_falls_through_to_a_later_rule() -> None:
    """With child facts, a rule whose condition fails gives way to a later rule that covers."""
    policy = policy_of(
        {"id": "minors", "basis": "test-basis", "kinds": ["referral"], "senders": ["school"], "recipients": ["social_services"], "conditions": ["child_under_18"]},
        {"id": "anyone", "basis": "test-basis", "kinds": ["referral"], "senders": ["school"], "recipients": ["social_services"]},
    )  # fmt: skip
    decision = decide(
        header(basis=legal("test-basis")),
        directory=DIRECTORY,
        consents={},
        policy=policy,
        now=T0,
        child=ChildFacts(age=19),
    )
    assert (decision.allowed, decision.rule) == (True, "anyone")


def test_consent_rules_honour_conditions_too() -> None:
    """A consent rule with a condition defers it without facts and refuses an adult with them."""
    policy = policy_of(
        {"id": "consent.minors", "basis": CONSENT_BASIS, "kinds": ["referral"], "senders": ["school"], "recipients": ["social_services"], "conditions": ["child_under_18"]},
    )  # fmt: skip
    deferred = decide(header(), directory=DIRECTORY, consents=BOOK, policy=policy, now=T0)
    adult = decide(
        header(),
        directory=DIRECTORY,
        consents=BOOK,
        policy=policy,
        now=T0,
        child=ChildFacts(age=18),
    )
    assert (deferred.allowed, deferred.deferred, deferred.consent_id) == (
        True,
        UNDER_18,
        CONSENT_ID,
    )
    assert adult == refused(ReasonCode.CONDITION_NOT_MET)


# --- the most specific failure ---------------------------------------------------------------

KIND_MISS = {
    "id": "kind-miss",
    "basis": "test-basis",
    "kinds": ["plan_update"],
    "senders": ["school"],
    "recipients": ["social_services"],
}
SENDER_MISS = {
    "id": "sender-miss",
    "basis": "test-basis",
    "kinds": ["referral"],
    "senders": ["bup"],
    "recipients": ["social_services"],
}
RECIPIENT_MISS = {
    "id": "recipient-miss",
    "basis": "test-basis",
    "kinds": ["referral"],
    "senders": ["school"],
    "recipients": ["police"],
}
PURPOSE_MISS = {
    "id": "purpose-miss",
    "basis": "test-basis",
    "kinds": ["referral"],
    "senders": ["school"],
    "recipients": ["social_services"],
    "purposes": ["plan"],
}


@pytest.mark.parametrize(
    ("rules", "reason", "why"),
    [
        pytest.param([KIND_MISS, SENDER_MISS], ReasonCode.SENDER_TYPE_NOT_ALLOWED, "a rule with the right kind says more", id="sender-over-kind"),
        pytest.param([SENDER_MISS, KIND_MISS], ReasonCode.SENDER_TYPE_NOT_ALLOWED, "file order does not matter", id="sender-over-kind-reversed"),
        pytest.param([SENDER_MISS, RECIPIENT_MISS, KIND_MISS], ReasonCode.RECIPIENT_TYPE_NOT_ALLOWED, "kind and sender right, recipient wrong", id="recipient-over-sender"),
        pytest.param([PURPOSE_MISS, RECIPIENT_MISS], ReasonCode.BASIS_NOT_ALLOWED_FOR_PURPOSE, "only the purpose is wrong", id="purpose-over-recipient"),
        pytest.param([KIND_MISS], ReasonCode.BASIS_NOT_ALLOWED_FOR_KIND, "one rule, wrong kind", id="kind-only"),
    ],
)  # fmt: skip
def test_refusal_names_the_most_specific_failure(
    rules: list[dict[str, Any]], reason: ReasonCode, why: str
) -> None:
    """When no rule covers, the refusal names the check that the closest rule failed."""
    decision = decide(
        header(basis=legal("test-basis")),
        directory=DIRECTORY,
        consents={},
        policy=policy_of(*rules),
        now=T0,
    )
    assert decision == refused(reason), why


def test_consent_rule_purposes_refuse_with_consent_scope_purpose() -> None:
    """A consent rule that lists purposes refuses others as out of the consent's scope."""
    policy = policy_of({**PURPOSE_MISS, "basis": CONSENT_BASIS})
    decision = decide(header(), directory=DIRECTORY, consents=BOOK, policy=policy, now=T0)
    assert decision == refused(ReasonCode.CONSENT_SCOPE_PURPOSE)


def test_a_policy_without_consent_rules_allows_no_consent() -> None:
    """A valid consent is not enough: some rule must allow sharing under consent."""
    policy = policy_of(SENDER_MISS)
    decision = decide(header(), directory=DIRECTORY, consents=BOOK, policy=policy, now=T0)
    assert decision == refused(ReasonCode.NO_BASIS)


def test_naive_now_is_a_programming_error() -> None:
    """A naive ``now`` raises instead of comparing against aware times."""
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(
            header(), directory=DIRECTORY, consents=BOOK, policy=SWEDEN, now=T0.replace(tzinfo=None)
        )


@pytest.mark.parametrize(
    ("agency", "expected", "why"),
    [
        pytest.param("test-skola", True, "named by id", id="by-id"),
        pytest.param("test-bup", True, "named by type", id="by-type"),
        pytest.param("test-soc", False, "neither its id nor its type is named", id="not-named"),
        pytest.param(UNKNOWN, False, "unknown to the directory", id="unknown"),
        pytest.param("test-broker", False, "the broker is never a party", id="broker"),
    ],
)  # fmt: skip
def test_consent_allows_party(agency: str, expected: bool, why: str) -> None:
    """A party is covered by its agency id or by its agency type, and only if the directory knows it."""
    record = consent(
        parties=[
            AgencyRef(agency="test-skola"),
            AgencyTypeRef(agency_type=AgencyType.BUP),
            AgencyTypeRef(agency_type=AgencyType.BROKER),
            AgencyRef(agency=UNKNOWN),
        ]
    )
    assert consent_allows_party(record, agency, DIRECTORY) is expected, why


# --- property --------------------------------------------------------------------------------

SHARING_IDS = [a for a, t in AGENCY_TYPES.items() if t is not AgencyType.BROKER]
ALL_IDS = [*AGENCY_TYPES, UNKNOWN]
SHARING_TYPES = [t for t in AgencyType if t is not AgencyType.BROKER]
BASES = [CONSENT_BASIS, "osl-10-28", "osl-25-12", "osl-26-9", "osl-10-21", "test-basis"]


def _subset(values: Sequence[Any], *, min_size: int = 1) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.sampled_from(values), min_size=min_size, max_size=len(values), unique=True)


@st.composite
def random_rules(draw: st.DrawFn) -> PolicyRule:
    """A rule over random kinds, types, purposes and conditions."""
    return PolicyRule.model_validate(
        {
            "id": f"random-{draw(st.integers(0, 10_000))}",
            "basis": draw(st.sampled_from(BASES)),
            "kinds": draw(_subset(list(Kind))),
            "senders": draw(_subset(SHARING_TYPES)),
            "recipients": draw(_subset(SHARING_TYPES)),
            "purposes": draw(st.none() | _subset(list(Purpose))),
            "conditions": draw(_subset(list(Condition), min_size=0)),
            "legal_ref": "test",
            "description": "test",
        }
    )


@st.composite
def policies(draw: st.DrawFn) -> PolicyFile:
    """A subset of the Swedish rules, perhaps with random rules mixed in."""
    rules = draw(
        st.lists(
            st.sampled_from(SWEDEN.rules) | st.sampled_from(SWEDEN.rules) | random_rules(),
            max_size=6,
            unique_by=lambda r: r.id,
        )
    )
    sharing = rule("consent.sharing")
    if sharing not in rules and draw(st.booleans()):
        rules.insert(draw(st.integers(0, len(rules))), sharing)
    return SWEDEN.model_copy(update={"rules": rules})


OFFSETS = st.integers(-40, 40).map(lambda d: timedelta(days=d))
#: Mostly agencies that may share, now and then one the directory does not know or the broker.
AGENCIES = st.sampled_from(SHARING_IDS) | st.sampled_from(SHARING_IDS) | st.sampled_from(ALL_IDS)


def _of_types(types: Sequence[AgencyType]) -> list[str]:
    return [a for a, t in AGENCY_TYPES.items() if t in types]


@st.composite
def parties(draw: st.DrawFn, agencies: Sequence[str]) -> list[PartyRef]:
    """Two or more distinct parties: often the message's own agencies, by id or type, plus others."""
    by_id: st.SearchStrategy[PartyRef] = AGENCIES.map(lambda a: AgencyRef(agency=a))
    by_type: st.SearchStrategy[PartyRef] = st.sampled_from(list(AgencyType)).map(
        lambda t: AgencyTypeRef(agency_type=t)
    )
    named: list[PartyRef] = []
    if draw(st.sampled_from([True, True, False])):
        for agency in agencies:
            if draw(st.booleans()) or agency not in AGENCY_TYPES:
                named.append(AgencyRef(agency=agency))
            else:
                named.append(AgencyTypeRef(agency_type=AGENCY_TYPES[agency]))
    extra = draw(st.lists(by_id | by_type, min_size=2, max_size=4, unique=True))
    unique = list(dict.fromkeys([*named, *extra]))
    return unique[: len(unique) if draw(st.booleans()) else max(2, len(unique) - 1)]


@st.composite
def headers(draw: st.DrawFn, policy: PolicyFile) -> ProtectedHeader:
    """A header: often shaped after one of the policy's rules, otherwise at random."""
    target = draw(st.none() | st.sampled_from(policy.rules)) if policy.rules else None
    senders = ALL_IDS if target is None else _of_types(target.senders)
    sender = draw(AGENCIES if target is None else st.sampled_from(senders))
    choice = draw(st.sampled_from([SHARING_IDS, ALL_IDS]))
    pool = [a for a in (choice if target is None else _of_types(target.recipients)) if a != sender]
    if not pool:
        pool = [a for a in choice if a != sender]
    recipients = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
    # Now and then one more recipient, perhaps of a type the rule does not allow.
    others = [a for a in SHARING_IDS if a != sender and a not in recipients]
    if draw(st.booleans()) and others:
        recipients.append(draw(st.sampled_from(others)))
    if target is not None and draw(st.booleans()):
        kind = draw(st.sampled_from(target.kinds))
        purpose = draw(st.sampled_from(target.purposes or list(Purpose)))
    else:
        kind = draw(st.sampled_from(list(Kind)))
        purpose = draw(st.sampled_from(list(Purpose)))
    consent_basis = st.sampled_from([CONSENT_ID, CONSENT_ID, CONSENT_ID, OTHER_CONSENT_ID]).map(
        lambda c: ConsentBasis(type="consent", consent_id=c)
    )
    legal_basis = st.sampled_from([*BASES, "osl-99-1"]).map(legal)
    if target is None:
        basis: Basis = draw(consent_basis | legal_basis)
    elif target.basis == CONSENT_BASIS:
        basis = draw(consent_basis)
    else:
        basis = draw(st.just(legal(target.basis)) | legal_basis)
    child = draw(st.sampled_from([CHILD, CHILD, CHILD, OTHER_CHILD]))
    return header(sender, recipients, kind=kind, basis=basis, purpose=purpose, child=child)


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[ProtectedHeader, dict[str, ConsentState], PolicyFile, datetime, ChildFacts | None]:
    """A random policy, a header, a consent book, a moment and perhaps the child's facts."""
    policy = draw(policies())
    hdr = draw(headers(policy))
    valid_from = T0 + draw(st.integers(-30, 3).map(lambda d: timedelta(days=d)))
    valid_until = valid_from + draw(st.integers(1, 60).map(lambda d: timedelta(days=d)))
    purposes = draw(_subset(list(Purpose)))
    if draw(st.sampled_from([True, True, False])) and hdr.purpose not in purposes:
        purposes.append(hdr.purpose)
    record = consent(
        parties=draw(parties([hdr.sender.agency, *(r.agency for r in hdr.recipients)])),
        purposes=purposes,
        valid_from=valid_from,
        valid_until=valid_until,
        child=draw(st.sampled_from([CHILD, CHILD, CHILD, OTHER_CHILD])),
    )
    revoked_at = draw(st.none() | st.none() | OFFSETS.map(lambda d: T0 + d))
    consents = {record.id: ConsentState(record=record, revoked_at=revoked_at)}
    # Land on the boundaries often: exactly at them, or a microsecond to either side.
    edges = [valid_from, valid_until, *([revoked_at] if revoked_at else [])]
    now = draw(
        st.sampled_from(edges) | st.integers(-5, 5).map(lambda d: T0 + timedelta(days=d))
    ) + draw(st.sampled_from([-US, timedelta(0), US]))
    child = draw(st.none() | st.integers(0, 25).map(lambda age: ChildFacts(age=age)))
    return hdr, consents, policy, now, child


def _covered_by_party(record: ConsentRecord, agency: str) -> bool:
    """Independent oracle: the agency is named by id, or its (sharing) type is named."""
    agency_type = AGENCY_TYPES.get(agency)
    if agency_type is None or agency_type is AgencyType.BROKER:
        return False
    return any(
        (isinstance(p, AgencyRef) and p.agency == agency)
        or (isinstance(p, AgencyTypeRef) and p.agency_type is agency_type)
        for p in record.parties
    )


def _oracle_allows(
    hdr: ProtectedHeader,
    consents: Mapping[str, ConsentState],
    policy: PolicyFile,
    now: datetime,
    child: ChildFacts | None,
) -> bool:
    """Independent oracle: is there any ground that allows this message?"""
    agencies = [hdr.sender.agency, *(r.agency for r in hdr.recipients)]
    if any(AGENCY_TYPES.get(a) in {None, AgencyType.BROKER} for a in agencies):
        return False
    if isinstance(hdr.basis, LegalBasis):
        return any(
            r.basis == hdr.basis.ref != CONSENT_BASIS and _rule_covers(r, hdr, child)
            for r in policy.rules
        )
    state = consents.get(hdr.basis.consent_id)
    if state is None:
        return False
    record = state.record
    return (
        record.id == hdr.basis.consent_id
        and record.child == hdr.child
        and (state.revoked_at is None or now < state.revoked_at)
        and record.valid_from <= now < record.valid_until
        and all(_covered_by_party(record, a) for a in agencies)
        and hdr.purpose in record.purposes
        and any(r.basis == CONSENT_BASIS and _rule_covers(r, hdr, child) for r in policy.rules)
    )


def _rule_covers(rule: PolicyRule, hdr: ProtectedHeader, child: ChildFacts | None) -> bool:
    """Independent oracle: kind, sender type, every recipient type, purpose and conditions."""
    sender_type = AGENCY_TYPES[hdr.sender.agency]
    return (
        hdr.kind in rule.kinds
        and sender_type in rule.senders
        and all(AGENCY_TYPES[r.agency] in rule.recipients for r in hdr.recipients)
        and (rule.purposes is None or hdr.purpose in rule.purposes)
        and (child is None or Condition.CHILD_UNDER_18 not in rule.conditions or child.age < 18)
    )


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_decide_allows_exactly_what_a_consent_or_a_rule_backs(
    scenario: tuple[
        ProtectedHeader, dict[str, ConsentState], PolicyFile, datetime, ChildFacts | None
    ],
) -> None:
    """Allowed exactly when a live consent covers every party and the purpose, or a legal rule does; never raises."""
    hdr, consents, policy, now, child = scenario
    decision = decide(
        hdr, directory=DIRECTORY, consents=consents, policy=policy, now=now, child=child
    )
    assert decision.allowed is _oracle_allows(hdr, consents, policy, now, child)
    if not decision.allowed:
        assert decision.reason is not None
        assert decision.rule is None
        return
    assert decision.reason is None
    allowing = rule(str(decision.rule), policy)
    assert decision.legal_ref == allowing.legal_ref
    assert _rule_covers(allowing, hdr, child)
    assert decision.deferred == (tuple(allowing.conditions) if child is None else ())
    if isinstance(hdr.basis, ConsentBasis):
        assert allowing.basis == CONSENT_BASIS
        assert decision.consent_id == hdr.basis.consent_id
        state = consents[hdr.basis.consent_id]
        record = state.record
        assert record.child == hdr.child
        assert state.revoked_at is None or now < state.revoked_at
        assert record.valid_from <= now < record.valid_until
        assert all(
            _covered_by_party(record, a)
            for a in [hdr.sender.agency, *(r.agency for r in hdr.recipients)]
        )
        assert hdr.purpose in record.purposes
    else:
        assert allowing.basis == hdr.basis.ref != CONSENT_BASIS
        assert decision.consent_id is None
