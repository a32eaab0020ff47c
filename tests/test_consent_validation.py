"""Consent registration (``keys.policy.validate_consent``) and the policy file itself.

The table registers consents that are valid and consents that each break one
rule of deploy/policy/sweden.toml's ``[consent]`` section or of OSL 12 kap.
2-3 §§ as the policy reads them; the policy file tests load sweden.toml and
break it in the ways a reviewer might, expecting an error that names the
rule by index and id and the field.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keys.errors import KeysError
from keys.policy import (
    BACKDATE_TOLERANCE,
    PolicyError,
    load_policy,
    parse_policy,
    validate_consent,
)
from schemas.consent import ConsentRecord
from schemas.directory import AgencyType
from schemas.reasons import ReasonCode
from tests.support import CHILD, T0, Agency, signed_directory

REPO = Path(__file__).resolve().parents[1]
SWEDEN_PATH = REPO / "deploy" / "policy" / "sweden.toml"
SWEDEN_TEXT = SWEDEN_PATH.read_text(encoding="utf-8")
SWEDEN = load_policy(SWEDEN_PATH)

DIRECTORY = signed_directory(
    [
        (Agency.make("test-skola"), AgencyType.SCHOOL),
        (Agency.make("test-soc"), AgencyType.SOCIAL_SERVICES),
        (Agency.make("test-bup"), AgencyType.BUP),
        (Agency.make("test-broker"), AgencyType.BROKER),
    ]
)

MOTHER = {"pseudonym": "c1" * 32, "custodial": True}
FATHER = {"pseudonym": "c2" * 32, "custodial": True}
NON_CUSTODIAL = {"pseudonym": "c3" * 32, "custodial": False}
DAY = timedelta(days=1)
US = timedelta(microseconds=1)


def record(**changes: Any) -> ConsentRecord:
    """A consent that is valid at T0, with ``changes`` applied to its JSON body."""
    body: dict[str, Any] = {
        "id": "019abb2a-6a52-7000-8000-00000000c0de",
        "child": CHILD,
        "guardians": [MOTHER],
        "joint_custody": False,
        "child_view": {"consented": False, "age": 8, "assessed_mature": False},
        "registered_by": {"agency": "test-skola", "kid": "k2026-0001", "staff_id": "kurator.lena"},
        "parties": [{"agency": "test-skola"}, {"agency": "test-soc"}],
        "purposes": ["referral", "team"],
        "valid_from": T0,
        "valid_until": T0 + timedelta(days=365),
        "document_digest": "ef" * 32,
        **changes,
    }
    return ConsentRecord.model_validate_json(json.dumps(body, default=datetime.isoformat))


def view(age: int, *, consented: bool, mature: bool = False) -> dict[str, Any]:
    """The child's view as recorded in a consent."""
    return {"consented": consented, "age": age, "assessed_mature": mature}


GUARDIAN = ReasonCode.CONSENT_GUARDIAN_MISSING
CHILD_VIEW = ReasonCode.CONSENT_CHILD_VIEW_MISSING
CHILD_CONSENT = ReasonCode.CONSENT_CHILD_CONSENT_MISSING
VALIDITY = ReasonCode.CONSENT_VALIDITY_INVALID
PARTY = ReasonCode.CONSENT_UNKNOWN_PARTY

# (consent, expected (code, field) problems, why)
CASES = [
    pytest.param(record(), [], "one custodial guardian, a young child, a year from now", id="valid-single-guardian"),
    pytest.param(record(guardians=[MOTHER, FATHER], joint_custody=True), [], "both guardians in joint custody consent", id="valid-joint-custody"),
    pytest.param(record(joint_custody=True), [(GUARDIAN, "guardians")], "joint custody needs both guardians", id="joint-custody-one-guardian"),
    pytest.param(record(guardians=[MOTHER, NON_CUSTODIAL], joint_custody=True), [(GUARDIAN, "guardians")], "a guardian without custody does not count", id="joint-custody-one-custodial"),
    pytest.param(record(guardians=[NON_CUSTODIAL]), [(GUARDIAN, "guardians")], "at least one custodial guardian always", id="no-custodial-guardian"),
    pytest.param(record(child_view=None), [(CHILD_VIEW, "child_view")], "the child's view must be recorded, whatever the age", id="no-child-view"),
    pytest.param(record(child_view=view(12, consented=False)), [], "at 12 the guardians' consent suffices unless the child is mature", id="age-12-not-consenting"),
    pytest.param(record(child_view=view(12, consented=True)), [], "at 12 the child may consent too", id="age-12-consenting"),
    pytest.param(record(child_view=view(12, consented=False, mature=True)), [(CHILD_CONSENT, "child_view.consented")], "a mature 12-year-old's refusal counts", id="age-12-mature-declines"),
    pytest.param(record(child_view=view(11, consented=False, mature=True)), [], "below 12 the policy does not weigh a refusal", id="age-11-mature-declines"),
    pytest.param(record(child_view=view(14, consented=True, mature=True)), [], "a mature 14-year-old who consents", id="age-14-mature-consents"),
    pytest.param(record(child_view=view(15, consented=False)), [(CHILD_CONSENT, "child_view.consented")], "from 15 the child's own consent is required", id="age-15-not-consenting"),
    pytest.param(record(child_view=view(15, consented=True)), [], "a 15-year-old who consents", id="age-15-consenting"),
    pytest.param(record(child_view=view(17, consented=False, mature=True)), [(CHILD_CONSENT, "child_view.consented")], "a 17-year-old who declines", id="age-17-not-consenting"),
    pytest.param(record(child_view=view(17, consented=True)), [], "a 17-year-old who consents", id="age-17-consenting"),
    pytest.param(record(valid_from=T0 - 12 * timedelta(hours=1), valid_until=T0 - timedelta(hours=1)), [(VALIDITY, "valid_until")], "a validity that has already ended", id="validity-in-the-past"),
    pytest.param(record(valid_from=T0 - DAY, valid_until=T0), [(VALIDITY, "valid_until")], "a validity that ends at the moment of registration", id="validity-ends-now"),
    pytest.param(record(valid_until=T0 + timedelta(days=731)), [(VALIDITY, "valid_until")], "longer than the policy's 730 days", id="validity-too-long"),
    pytest.param(record(valid_until=T0 + timedelta(days=730)), [], "exactly the policy's 730 days", id="validity-at-max"),
    pytest.param(record(valid_from=T0 - BACKDATE_TOLERANCE - US), [(VALIDITY, "valid_from")], "a consent cannot be backdated", id="backdated"),
    pytest.param(record(valid_from=T0 - BACKDATE_TOLERANCE), [], "a paper consent signed yesterday may be registered today", id="backdated-within-tolerance"),
    pytest.param(record(valid_from=T0 + 7 * DAY), [], "a consent may begin later", id="begins-next-week"),
    pytest.param(record(parties=[{"agency": "test-skola"}, {"agency": "test-okand"}]), [(PARTY, "parties[1].agency")], "an agency id the directory does not know", id="unknown-agency-party"),
    pytest.param(record(parties=[{"agency": "test-skola"}, {"agency_type": "youth_clinic"}]), [], "any agency of a type, even none in the area yet", id="agency-type-party"),
    pytest.param(record(parties=[{"agency": "test-skola"}, {"agency": "test-broker"}]), [(PARTY, "parties[1]")], "the broker by id is no party", id="broker-party-by-id"),
    pytest.param(record(parties=[{"agency_type": "broker"}, {"agency": "test-bup"}]), [(PARTY, "parties[0]")], "the broker by type is no party", id="broker-party-by-type"),
    pytest.param(
        record(guardians=[NON_CUSTODIAL], child_view=None, valid_until=T0 + timedelta(days=1000), parties=[{"agency": "test-x1"}, {"agency": "test-x2"}]),
        [(GUARDIAN, "guardians"), (CHILD_VIEW, "child_view"), (VALIDITY, "valid_until"), (PARTY, "parties[0].agency"), (PARTY, "parties[1].agency")],
        "every problem is reported at once, so it can be fixed in one go",
        id="many-problems",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("consent", "expected", "why"), CASES)
def test_validate_consent(
    consent: ConsentRecord, expected: list[tuple[ReasonCode, str]], why: str
) -> None:
    """Each consent gets exactly the problems (code and field) the policy gives it."""
    problems = validate_consent(consent, directory=DIRECTORY, policy=SWEDEN, now=T0)
    assert [(p.code, p.field) for p in problems] == expected, why


@pytest.mark.parametrize(("consent", "expected", "why"), CASES)
def test_problem_messages_are_sentences(
    consent: ConsentRecord, expected: list[tuple[ReasonCode, str]], why: str
) -> None:
    """Every problem message is one English sentence that says what to do."""
    del expected, why
    for problem in validate_consent(consent, directory=DIRECTORY, policy=SWEDEN, now=T0):
        assert problem.message[0].isupper()
        assert problem.message.endswith(".")
        assert problem.message.count(". ") == 0
        assert ";" in problem.message  # what is wrong; what to do


def test_the_ages_come_from_the_policy_file() -> None:
    """Lowering child_consent_required_from_age in the policy makes a 13-year-old's consent required."""
    stricter = SWEDEN.model_copy(
        update={
            "consent": SWEDEN.consent.model_copy(update={"child_consent_required_from_age": 13})
        }
    )
    consent = record(child_view=view(13, consented=False))
    assert validate_consent(consent, directory=DIRECTORY, policy=SWEDEN, now=T0) == []
    problems = validate_consent(consent, directory=DIRECTORY, policy=stricter, now=T0)
    assert [p.code for p in problems] == [CHILD_CONSENT]
    assert "from age 13" in problems[0].message


def test_naive_now_is_a_programming_error() -> None:
    """A naive ``now`` raises instead of comparing against aware times."""
    with pytest.raises(ValueError, match="timezone-aware"):
        validate_consent(record(), directory=DIRECTORY, policy=SWEDEN, now=T0.replace(tzinfo=None))


# --- the policy file -------------------------------------------------------------------------


def test_sweden_toml_loads_with_its_five_rules() -> None:
    """sweden.toml parses, with the ages and validity of its [consent] section and five rules."""
    assert SWEDEN.jurisdiction == "SE"
    assert (
        SWEDEN.consent.child_view_from_age,
        SWEDEN.consent.child_consent_required_from_age,
        SWEDEN.consent.max_validity_days,
    ) == (12, 15, 730)
    assert [(r.id, r.basis) for r in SWEDEN.rules] == [
        ("consent.sharing", "consent"),
        ("osl-10-28.concern-report", "osl-10-28"),
        ("osl-25-12.health-to-social", "osl-25-12"),
        ("osl-26-9.social-to-health", "osl-26-9"),
        ("osl-10-21.crime-to-police", "osl-10-21"),
    ]
    assert all(r.legal_ref.startswith("OSL ") and r.description.strip() for r in SWEDEN.rules)


def test_no_rule_lets_social_services_report_concern_to_itself_or_the_police_to_themselves() -> (
    None
):
    """The concern-report rule excludes social services as sender; the crime rule excludes the police."""
    by_id = {r.id: r for r in SWEDEN.rules}
    assert AgencyType.SOCIAL_SERVICES not in by_id["osl-10-28.concern-report"].senders
    assert AgencyType.POLICE in by_id["osl-10-28.concern-report"].senders
    assert AgencyType.POLICE not in by_id["osl-10-21.crime-to-police"].senders


def _break(old: str, new: str) -> str:
    """sweden.toml with exactly one occurrence of ``old`` replaced by ``new``."""
    assert SWEDEN_TEXT.count(old) == 1, old
    return SWEDEN_TEXT.replace(old, new)


RULE_28 = "rule[1] (id 'osl-10-28.concern-report')"
RULE_25 = "rule[2] (id 'osl-25-12.health-to-social')"
RULE_26 = "rule[3] (id 'osl-26-9.social-to-health')"
RULE_21 = "rule[4] (id 'osl-10-21.crime-to-police')"

# (broken text, what the error must say, why)
BROKEN = [
    pytest.param(_break('kinds = ["concern_report"]\nsenders = ["preschool", "school", "child_health"', 'kinds = ["orosanmalan"]\nsenders = ["preschool", "school", "child_health"'),
                 [f"{RULE_28}.kinds[0]", "'orosanmalan'"], "an unknown kind", id="unknown-kind"),
    pytest.param(_break('recipients = ["police"]', 'recipients = ["polis"]'),
                 [f"{RULE_21}.recipients[0]", "'polis'"], "an unknown agency type", id="unknown-agency-type"),
    pytest.param(_break('senders = ["social_services"]', 'senders = ["broker"]'),
                 [f"{RULE_26}.senders[0]", "broker"], "the broker as a sender", id="broker-sender"),
    pytest.param(_break('recipients = ["social_services"]\nconditions = ["child_under_18"]\nlegal_ref = "OSL 25', 'recipients = ["social_services", "broker"]\nconditions = ["child_under_18"]\nlegal_ref = "OSL 25'),
                 [f"{RULE_25}.recipients[1]", "broker"], "the broker as a recipient", id="broker-recipient"),
    pytest.param(_break('id = "osl-26-9.social-to-health"', 'id = "osl-25-12.health-to-social"'),
                 [f"{RULE_26.replace('osl-26-9.social-to-health', 'osl-25-12.health-to-social')}.id", "rule[2]"], "two rules with one id", id="duplicate-id"),
    pytest.param(_break('legal_ref = "OSL 26 kap. 9 §"\n', ""),
                 [f"{RULE_26}.legal_ref", "Field required"], "a rule without its legal reference", id="missing-legal-ref"),
    pytest.param(_break('conditions = ["child_under_18"]\nlegal_ref = "OSL 10 kap. 21', 'conditions = ["child_over_18"]\nlegal_ref = "OSL 10 kap. 21'),
                 [f"{RULE_21}.conditions[0]", "'child_over_18'"], "an unknown condition", id="unknown-condition"),
    pytest.param(_break('basis = "osl-10-21"', 'basis = "OSL 10:21"'),
                 [f"{RULE_21}.basis", "pattern"], "a basis that is not a legal basis code", id="bad-basis"),
    pytest.param(_break('id = "osl-10-21.crime-to-police"', 'id = "osl-10-21.crime-to-police"\nnote = "x"'),
                 [f"{RULE_21}.note", "Extra inputs"], "a misspelled or unknown field", id="extra-field"),
    pytest.param(_break('senders = ["social_services"]', 'senders = ["social_services", "social_services"]'),
                 [f"{RULE_26}.senders", "twice"], "a repeated agency type", id="repeated-sender"),
    pytest.param(_break('senders = ["social_services"]', "senders = []"),
                 [f"{RULE_26}.senders", "at least 1"], "a rule no one may send under", id="empty-senders"),
    pytest.param(_break("child_view_from_age = 12", "child_view_from_age = 16"),
                 ["consent.child_view_from_age", "child_consent_required_from_age"], "the child's view counted after its consent is required", id="ages-inverted"),
    pytest.param(_break("child_view_from_age = 12", 'child_view_from_age = "12"'),
                 ["consent.child_view_from_age", "integer"], "an age as a string", id="age-as-string"),
    pytest.param(_break("max_validity_days = 730", "max_validity_days = 0"),
                 ["consent.max_validity_days", "greater than or equal to 1"], "no validity at all", id="zero-validity"),
    pytest.param(SWEDEN_TEXT + "\n[[rule]\n", ["not valid TOML"], "a TOML syntax error", id="bad-toml"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "says", "why"), BROKEN)
def test_a_broken_policy_names_the_file_the_rule_and_the_field(
    text: str, says: list[str], why: str
) -> None:
    """A broken policy is refused with PolicyError naming the file, the rule's index and id, and the field."""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="sweden.toml")
    message = str(caught.value)
    assert message.startswith("sweden.toml: "), message
    for part in says:
        assert part in message, f"{why}: {message}"


def test_policy_error_is_a_keys_error_with_a_stable_code() -> None:
    """PolicyError sits in the keys error tree with the code policy_invalid."""
    assert issubclass(PolicyError, KeysError)
    assert PolicyError.code == "policy_invalid"


def test_a_missing_policy_file_names_the_path(tmp_path: Path) -> None:
    """load_policy refuses a file it cannot read, naming the path."""
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(PolicyError, match=r"nowhere\.toml"):
        load_policy(missing)
