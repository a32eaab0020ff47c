"""The FHIR R4 mapping for health care (adapters.mappings.fhir), on the documented examples."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task

from adapters.canonical import (
    FieldProblem,
    InvalidSubmission,
    Mapping,
    Received,
    SentTimeline,
    Submission,
    TimelineEvent,
)
from adapters.mappings.canonical_json import CANONICAL_JSON
from adapters.mappings.fhir import FHIR_R4, FhirMapping, FhirProblem
from keys.personnummer import luhn_check_digit
from schemas.content import (
    ChildIdentity,
    ConcernReport,
    Contact,
    Need,
    NeedArea,
    Referral,
    StaffRole,
    Urgency,
)
from schemas.envelope import ConsentBasis, Kind, LegalBasis, Purpose
from schemas.reasons import ReasonCode
from schemas.receipts import Answer, DeclineReason, ReceiptStatus

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "adapters" / "examples"
DOCS = ROOT / "docs" / "adapters" / "health.md"
TODAY = date(2026, 11, 25)

CONSENT = "health-servicerequest-consent"
BUNDLE = "health-bundle-legal-basis"
SAMORDNING = "health-servicerequest-samordningsnummer"


def _with_check(nine: str) -> str:
    """Nine digits and their Luhn check digit: a well-formed number (keys.personnummer)."""
    return nine + str(luhn_check_digit(nine))


#: The children of the examples, normalised to 12 digits.
ELSA = "20" + _with_check("220314238")  # written "20220314-2381" in the example
OSKAR = "20" + _with_check("150707238")
AMIRA = "20" + _with_check("100564127")  # samordningsnummer: day 04 + 60

CONSENT_ID = "c305ab5a-a45a-4ee6-bfc4-901bd3a6c730"
MESSAGE_ID = "0193b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b"
CREATED = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def _example(name: str) -> dict[str, Any]:
    """A documented example request, read fresh so that a case may change it."""
    body: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    return body


def _problems(body: object) -> tuple[FieldProblem, ...]:
    """The problems the mapping names for ``body``, which must be refused."""
    with pytest.raises(InvalidSubmission) as caught:
        FHIR_R4.parse(body, today=TODAY)
    return caught.value.problems


def _issues(body: object) -> list[dict[str, Any]]:
    """The OperationOutcome issues of a refused ``body``."""
    outcome = FHIR_R4.render_problems(_problems(body))
    issues: list[dict[str, Any]] = outcome["issue"]
    return issues


# --- Valid requests ---------------------------------------------------------------


def test_the_mapping_satisfies_the_protocol() -> None:
    """FHIR_R4 is a Mapping named "fhir"."""
    mapping: Mapping = FHIR_R4
    assert mapping.name == "fhir"


@pytest.mark.parametrize(
    ("name", "identity", "recipients", "basis", "urgency", "areas"),
    [
        pytest.param(
            CONSENT,
            ELSA,
            ("bup-lidingo",),
            ConsentBasis(type="consent", consent_id=CONSENT_ID),
            Urgency.ROUTINE,
            [NeedArea.UTVECKLING, NeedArea.HALSA],
            id="servicerequest-contained-consent",
        ),
        pytest.param(
            BUNDLE,
            OSKAR,
            ("lidingo-socialtjanst",),
            LegalBasis(type="legal", ref="osl-25-12"),
            Urgency.SOON,
            [NeedArea.OMSORG, NeedArea.TRYGGHET],
            id="bundle-legal-basis",
        ),
        pytest.param(
            SAMORDNING,
            AMIRA,
            ("lidingo-socialtjanst",),
            LegalBasis(type="legal", ref="osl-25-12"),
            Urgency.URGENT,
            [NeedArea.TRYGGHET],
            id="samordningsnummer",
        ),
    ],
)
def test_examples_become_the_expected_submission(  # noqa: PLR0917 - one parameter per column
    name: str,
    identity: str,
    recipients: tuple[str, ...],
    basis: ConsentBasis | LegalBasis,
    urgency: Urgency,
    areas: list[NeedArea],
) -> None:
    """Each documented example is a referral with its child, recipients, basis, urgency and needs."""
    submission = FHIR_R4.parse(_example(name), today=TODAY)
    assert submission.kind is Kind.REFERRAL
    assert submission.purpose is Purpose.REFERRAL
    assert submission.recipients == recipients
    assert submission.basis == basis
    referral = submission.content
    assert isinstance(referral, Referral)
    assert referral.child.identity_number == identity
    assert referral.urgency is urgency
    assert [need.area for need in referral.needs] == areas


def test_the_consent_example_carries_every_field() -> None:
    """The standalone example fills names, texts, the contact and guardians_informed as documented."""
    referral = FHIR_R4.parse(_example(CONSENT), today=TODAY).content
    assert referral == Referral(
        child=ChildIdentity(identity_number=ELSA, given_name="Elsa", family_name="Lind"),
        needs=[
            Need(
                area=NeedArea.UTVECKLING,
                description="Talar få ord för sin ålder och söker sällan ögonkontakt vid "
                "4-årsbesöket.",
            ),
            Need(
                area=NeedArea.HALSA,
                description="Sover oroligt; föräldrarna beskriver långa utbrott flera gånger "
                "om dagen.",
            ),
        ],
        summary="Vårdnadshavarna har samtyckt till att BUP kontaktas och vill ha stöd.",
        requested_support="Bedömning av språkutveckling och samspel; BVC fortsätter sina besök.",
        urgency=Urgency.ROUTINE,
        contact=Contact(
            staff_id="SE2321000016-7F3K", role="BVC-sjuksköterska", phone="08-123 456 78"
        ),
        guardians_informed=True,
    )


def test_the_bundle_example_resolves_references_and_reads_respond_by() -> None:
    """Entries are found by urn:uuid fullUrl and by relative reference; respond-by is read."""
    referral = FHIR_R4.parse(_example(BUNDLE), today=TODAY).content
    assert isinstance(referral, Referral)
    assert referral.contact == Contact(staff_id="maria.ek", role="psykolog")
    assert referral.guardians_informed is False
    assert referral.respond_by == datetime.fromisoformat("2026-12-02T16:00:00+01:00")


@pytest.mark.parametrize(
    ("priority", "urgency"),
    [
        pytest.param("routine", Urgency.ROUTINE, id="routine"),
        pytest.param("urgent", Urgency.SOON, id="urgent-is-soon"),
        pytest.param("asap", Urgency.URGENT, id="asap"),
        pytest.param("stat", Urgency.URGENT, id="stat"),
        pytest.param(None, Urgency.ROUTINE, id="absent-is-routine"),
    ],
)
def test_priority_maps_to_urgency(priority: str | None, urgency: Urgency) -> None:
    """ServiceRequest.priority maps to Backa urgency; a missing priority means routine."""
    body = _example(CONSENT)
    body.pop("priority")
    if priority is not None:
        body["priority"] = priority
    referral = FHIR_R4.parse(body, today=TODAY).content
    assert isinstance(referral, Referral)
    assert referral.urgency is urgency


@pytest.mark.parametrize(
    "system",
    [
        pytest.param("urn:oid:1.2.752.129.2.1.3.1", id="urn-oid"),
        pytest.param("1.2.752.129.2.1.3.1", id="bare-oid"),
    ],
)
def test_subject_may_name_the_child_by_identifier(system: str) -> None:
    """A subject given as a logical identifier reference names the child without a Patient."""
    body = _example(SAMORDNING)
    body.pop("contained")
    body["subject"] = {"identifier": {"system": system, "value": OSKAR[2:8] + "-" + OSKAR[8:]}}
    referral = FHIR_R4.parse(body, today=TODAY).content
    assert isinstance(referral, Referral)
    assert referral.child == ChildIdentity(identity_number=OSKAR)


def test_a_message_bundle_and_a_collection_are_accepted() -> None:
    """Bundle types message and collection carry a referral as well as transaction does."""
    for kind in ("message", "collection"):
        body = _example(BUNDLE)
        body["type"] = kind
        assert FHIR_R4.parse(body, today=TODAY).recipients == ("lidingo-socialtjanst",)


def test_other_reason_codes_are_not_carried() -> None:
    """A reasonCode without a need-area coding (a diagnosis) is left out, not refused."""
    body = _example(CONSENT)
    body["reasonCode"].append(
        {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "F80.1"}]}
    )
    referral = FHIR_R4.parse(body, today=TODAY).content
    assert isinstance(referral, Referral)
    assert len(referral.needs) == 2


def test_canonical_json_is_passed_to_the_canonical_mapping() -> None:
    """A body with "kind" and no resourceType is the canonical JSON form, parsed as such."""
    submission = FHIR_R4.parse(_example(CONSENT), today=TODAY)
    body = CANONICAL_JSON.render_submission(submission)
    assert FHIR_R4.parse(body, today=TODAY) == submission


def test_canonical_json_problems_render_as_an_operation_outcome() -> None:
    """A canonical JSON body's problems come back as a FHIR OperationOutcome too."""
    with pytest.raises(InvalidSubmission) as caught:
        FHIR_R4.parse({"kind": "referral"}, today=TODAY)
    outcome = FHIR_R4.render_problems(caught.value.problems)
    OperationOutcome.model_validate(outcome)
    assert {issue["code"] for issue in outcome["issue"]} == {"required"}


# --- Invalid FHIR -------------------------------------------------------------------


def _set(path: list[str | int], value: object) -> Callable[[dict[str, Any]], None]:
    """A change that sets one element of the example."""

    def change(body: dict[str, Any]) -> None:
        target: Any = body
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return change


def _drop(path: list[str | int]) -> Callable[[dict[str, Any]], None]:
    """A change that removes one element of the example."""

    def change(body: dict[str, Any]) -> None:
        target: Any = body
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]

    return change


@pytest.mark.parametrize(
    ("name", "change", "loc"),
    [
        pytest.param(CONSENT, _set(["priority"], 3), "ServiceRequest.priority", id="wrong-type"),
        pytest.param(CONSENT, _set(["remiss"], "x"), "ServiceRequest.remiss", id="unknown-element"),
        pytest.param(
            CONSENT,
            _set(["authoredOn"], "25/11/2026"),
            "ServiceRequest.authoredOn",
            id="bad-datetime",
        ),
        pytest.param(
            CONSENT,
            _set(["contained", 0, "birthDate"], "2022-13-14"),
            "ServiceRequest.contained[0].birthDate",
            id="contained-bad-date",
        ),
        pytest.param(
            CONSENT,
            _set(["contained", 1, "resourceType"], "Samtycke"),
            "ServiceRequest.contained[1].resourceType",
            id="unknown-resource-type",
        ),
        pytest.param(
            CONSENT,
            _set(["status"], "skickad"),
            "ServiceRequest.status",
            id="status-not-a-code",
        ),
        pytest.param(
            CONSENT, _set(["intent"], "remiss"), "ServiceRequest.intent", id="intent-not-a-code"
        ),
        pytest.param(
            CONSENT, _set(["priority"], "high"), "ServiceRequest.priority", id="priority-not-a-code"
        ),
        pytest.param(
            CONSENT,
            _set(["contained", 1, "status"], "given"),
            "ServiceRequest.contained[1].status",
            id="consent-state-not-a-code",
        ),
        pytest.param(
            CONSENT, _set(["resourceType"], "Referral"), "resourceType", id="not-a-servicerequest"
        ),
        pytest.param(
            BUNDLE,
            _set(["entry", 1, "resource", "gender"], 1),
            "Bundle.entry[1].resource.gender",
            id="bundle-entry-wrong-type",
        ),
        pytest.param(BUNDLE, _set(["type"], "bunt"), "Bundle.type", id="bundle-type-not-a-code"),
    ],
)
def test_invalid_fhir_is_a_structure_issue(
    name: str, change: Callable[[dict[str, Any]], None], loc: str
) -> None:
    """A body that is not valid FHIR R4 is refused with a structure issue at its FHIRPath."""
    body = _example(name)
    change(body)
    issues = _issues(body)
    assert [(issue["code"], issue["expression"]) for issue in issues] == [("structure", [loc])]


def test_a_body_that_is_not_an_object_is_refused() -> None:
    """A JSON array or string is not a FHIR resource."""
    assert [issue["code"] for issue in _issues(["ServiceRequest"])] == ["structure"]


def test_a_deeply_nested_body_is_refused_without_a_crash() -> None:
    """Nesting far deeper than any resource is an InvalidSubmission, not a RecursionError."""
    body = _example(CONSENT)
    deep: dict[str, Any] = {}
    body["contained"][0]["extension"] = [{"url": "x", "extension": [deep]}]
    for _ in range(2000):
        deep["x"] = {}
        deep = deep["x"]
    assert all(issue["code"] == "structure" for issue in _issues(body))


# --- Valid FHIR that is not a complete referral ------------------------------------


def _no_basis(body: dict[str, Any]) -> None:
    """Remove the consent and its reference, leaving no basis at all."""
    del body["contained"][1]
    del body["supportingInfo"]


def _both_bases(body: dict[str, Any]) -> None:
    """Add a legal basis beside the consent."""
    body["extension"].append({"url": "urn:backa:legal-basis", "valueCode": "osl-25-12"})


def _number(value: str, system: str = "urn:oid:1.2.752.129.2.1.3.1") -> Any:
    """Give the example's child this number under this system."""
    return _set(["contained", 0, "identifier"], [{"system": system, "value": value}])


@pytest.mark.parametrize(
    ("name", "change", "loc", "code"),
    [
        pytest.param(
            CONSENT, _drop(["subject"]), "ServiceRequest.subject", "required", id="no-subject"
        ),
        pytest.param(
            CONSENT,
            _set(["subject"], {"display": "Elsa"}),
            "ServiceRequest.subject",
            "required",
            id="subject-display-only",
        ),
        pytest.param(
            CONSENT,
            _set(["subject"], {"reference": "Patient/123"}),
            "ServiceRequest.subject.reference",
            "invalid",
            id="subject-not-in-submission",
        ),
        pytest.param(
            CONSENT,
            _set(["subject"], {"reference": "#consent"}),
            "ServiceRequest.subject.reference",
            "invalid",
            id="subject-not-a-patient",
        ),
        pytest.param(
            BUNDLE,
            _set(
                ["entry", 0, "resource", "subject", "reference"],
                "urn:uuid:7da20d62-c2b1-4729-9204-357618eab4ad",
            ),
            "Bundle.entry[0].resource.subject.reference",
            "invalid",
            id="bundle-subject-unresolved",
        ),
        pytest.param(
            CONSENT,
            _drop(["contained", 0, "identifier"]),
            "ServiceRequest.contained[0].identifier",
            "required",
            id="no-personnummer",
        ),
        pytest.param(
            CONSENT,
            _number("123", system="urn:oid:1.2.752.129.2.1.6"),
            "ServiceRequest.contained[0].identifier",
            "required",
            id="only-another-identifier",
        ),
        pytest.param(
            CONSENT,
            _number(ELSA[:-1] + str((int(ELSA[-1]) + 1) % 10)),
            "ServiceRequest.contained[0].identifier[0].value",
            "invalid",
            id="bad-check-digit",
        ),
        pytest.param(
            CONSENT,
            _number(AMIRA),
            "ServiceRequest.contained[0].identifier[0].system",
            "invalid",
            id="samordningsnummer-under-personnummer",
        ),
        pytest.param(
            CONSENT,
            _number(ELSA, system="urn:oid:1.2.752.129.2.1.3.3"),
            "ServiceRequest.contained[0].identifier[0].system",
            "invalid",
            id="personnummer-under-samordningsnummer",
        ),
        pytest.param(
            CONSENT, _drop(["performer"]), "ServiceRequest.performer", "required", id="no-performer"
        ),
        pytest.param(
            CONSENT,
            _set(["performer"], [{"display": "BUP"}]),
            "ServiceRequest.performer[0].identifier",
            "required",
            id="performer-without-agency",
        ),
        pytest.param(
            CONSENT,
            _set(["performer", 0, "identifier", "value"], "BUP Lidingö"),
            "ServiceRequest.performer[0].identifier.value",
            "invalid",
            id="performer-bad-agency-id",
        ),
        pytest.param(
            CONSENT,
            _set(["performer", 0, "type"], "Practitioner"),
            "ServiceRequest.performer[0].type",
            "invalid",
            id="performer-not-an-organization",
        ),
        pytest.param(
            CONSENT,
            lambda body: body["performer"].append(copy.deepcopy(body["performer"][0])),
            "ServiceRequest.performer[1]",
            "invalid",
            id="performer-twice",
        ),
        pytest.param(CONSENT, _no_basis, "ServiceRequest", "required", id="no-basis"),
        pytest.param(
            CONSENT, _both_bases, "ServiceRequest.extension[1]", "invalid", id="two-bases"
        ),
        pytest.param(
            CONSENT,
            _drop(["contained", 1, "identifier"]),
            "ServiceRequest.contained[1].identifier",
            "required",
            id="consent-without-id",
        ),
        pytest.param(
            CONSENT,
            _set(["contained", 1, "identifier", 0, "value"], "samtycke-12"),
            "ServiceRequest.contained[1].identifier[0].value",
            "invalid",
            id="consent-id-not-a-uuid",
        ),
        pytest.param(
            CONSENT,
            _set(["contained", 1, "status"], "inactive"),
            "ServiceRequest.contained[1].status",
            "invalid",
            id="consent-inactive",
        ),
        pytest.param(
            BUNDLE,
            _set(["entry", 0, "resource", "extension", 0, "valueCode"], "OSL 25:12"),
            "Bundle.entry[0].resource.extension[0].valueCode",
            "invalid",
            id="legal-basis-bad-code",
        ),
        pytest.param(
            CONSENT, _drop(["reasonCode"]), "ServiceRequest.reasonCode", "required", id="no-need"
        ),
        pytest.param(
            CONSENT,
            _set(["reasonCode", 0, "coding", 0, "code"], "skola"),
            "ServiceRequest.reasonCode[0].coding[0].code",
            "invalid",
            id="unknown-need-area",
        ),
        pytest.param(
            CONSENT,
            _set(["reasonCode", 1, "coding", 0, "code"], "utveckling"),
            "ServiceRequest.reasonCode[1].coding[0].code",
            "invalid",
            id="need-area-twice",
        ),
        pytest.param(
            CONSENT,
            _drop(["reasonCode", 0, "text"]),
            "ServiceRequest.reasonCode[0].text",
            "required",
            id="need-without-text",
        ),
        pytest.param(CONSENT, _drop(["note"]), "ServiceRequest.note", "required", id="no-summary"),
        pytest.param(
            CONSENT,
            _drop(["code"]),
            "ServiceRequest.code.text",
            "required",
            id="no-requested-support",
        ),
        pytest.param(
            CONSENT, _drop(["requester"]), "ServiceRequest.requester", "required", id="no-requester"
        ),
        pytest.param(
            CONSENT,
            _drop(["requester", "identifier"]),
            "ServiceRequest.requester.identifier",
            "required",
            id="requester-without-staff-id",
        ),
        pytest.param(
            CONSENT,
            _set(["requester", "identifier", "system"], "urn:oid:1.2.752.129.2.1.3.1"),
            "ServiceRequest.requester.identifier",
            "required",
            id="requester-personnummer-is-no-staff-id",
        ),
        pytest.param(
            CONSENT,
            _drop(["requester", "extension"]),
            "ServiceRequest.requester.extension",
            "required",
            id="requester-without-role",
        ),
        pytest.param(
            CONSENT,
            _set(["requester", "extension", 1, "valueString"], "ring mig"),
            "ServiceRequest.requester.extension[1].valueString",
            "invalid",
            id="requester-bad-phone",
        ),
        pytest.param(
            CONSENT,
            _drop(["extension"]),
            "ServiceRequest.extension",
            "required",
            id="no-guardians-informed",
        ),
        pytest.param(
            CONSENT,
            _set(["extension", 0, "valueBoolean"], "yes"),
            "ServiceRequest.extension[0].valueBoolean",
            "invalid",
            id="guardians-informed-not-a-boolean",
        ),
        pytest.param(
            BUNDLE,
            _set(["entry", 0, "resource", "extension", 2, "valueDateTime"], "2026-12-02"),
            "Bundle.entry[0].resource.extension[2].valueDateTime",
            "invalid",
            id="respond-by-without-time",
        ),
        pytest.param(
            CONSENT, _set(["status"], "draft"), "ServiceRequest.status", "invalid", id="draft"
        ),
        pytest.param(
            CONSENT, _set(["intent"], "proposal"), "ServiceRequest.intent", "invalid", id="proposal"
        ),
        pytest.param(
            CONSENT,
            _set(["note", 0, "text"], "x" * 10_001),
            "ServiceRequest.note",
            "invalid",
            id="summary-too-long",
        ),
        pytest.param(
            BUNDLE, _set(["type"], "searchset"), "Bundle.type", "invalid", id="bundle-searchset"
        ),
        pytest.param(
            BUNDLE, _drop(["entry", 0]), "Bundle.entry", "required", id="bundle-without-request"
        ),
        pytest.param(
            BUNDLE,
            lambda body: body["entry"].append(copy.deepcopy(body["entry"][0])),
            "Bundle.entry[4].resource",
            "invalid",
            id="bundle-two-requests",
        ),
    ],
)
def test_incomplete_referrals_name_the_problem(
    name: str, change: Callable[[dict[str, Any]], None], loc: str, code: str
) -> None:
    """Valid FHIR that lacks or misstates what a referral needs is refused at that element."""
    body = _example(name)
    change(body)
    issues = _issues(body)
    assert [(issue["code"], issue["expression"]) for issue in issues] == [(code, [loc])]


def test_every_problem_is_named_at_once() -> None:
    """Missing performer, basis, needs and contact are four problems in one refusal."""
    body = _example(CONSENT)
    for key in ("performer", "reasonCode", "requester", "supportingInfo"):
        del body[key]
    del body["contained"][1]
    problems = _problems(body)
    assert [problem.loc for problem in problems] == [
        "ServiceRequest.performer",
        "ServiceRequest",
        "ServiceRequest.reasonCode",
        "ServiceRequest.requester",
    ]
    assert all(isinstance(problem, FhirProblem) for problem in problems)


@pytest.mark.parametrize(
    "written",
    [
        pytest.param(ELSA, id="12-digits"),
        pytest.param(ELSA[2:8] + "-" + ELSA[8:], id="10-digits-dash"),
        pytest.param(ELSA[2:8] + "-" + ELSA[8:11] + "0", id="bad-check-digit"),
        pytest.param(ELSA[:6] + "3" + ELSA[7:], id="bad-day"),
        pytest.param(ELSA + "1", id="too-long"),
    ],
)
def test_no_problem_repeats_the_personnummer(written: str) -> None:
    """Wherever the number is put and whatever is wrong, no problem shows it or its digits."""
    digits = re.sub(r"[^0-9]", "", written)
    changes: list[Callable[[dict[str, Any]], None]] = [
        _number(written),
        _number(written, system="urn:oid:1.2.752.129.2.1.3.3"),
        _number(written, system="1.2.752.129.2.1.3.1"),
        _set(["contained", 0, "birthDate"], written),
        _set(["contained", 0, "identifier", 0, "value"], int(digits)),
        _set(["contained", 0, written], "x"),
        _set(["subject", "reference"], "#" + written),
        _set(
            ["subject"], {"identifier": {"system": "urn:oid:1.2.752.129.2.1.3.3", "value": written}}
        ),
        _set(["contained", 1, "identifier", 0, "value"], written),
        _set(["performer", 0, "identifier", "value"], written + "?"),
    ]
    problems: list[FieldProblem] = []
    for change in changes:
        body = _example(CONSENT)
        change(body)
        del body["note"]  # so that a valid number, too, ends in a refusal
        problems += _problems(body)
    rendered = json.dumps(FHIR_R4.render_problems(problems))
    for shown in (rendered, *(p.message for p in problems), *(p.loc for p in problems)):
        assert digits not in re.sub(r"[^0-9]", "", shown)
        assert digits[2:8] not in shown
        assert digits[-4:] not in shown


def test_a_refusal_does_not_chain_the_validation_error() -> None:
    """The pydantic error repeats the input, so it is not the cause of the refusal either."""
    body = _example(CONSENT)
    body["contained"][0]["birthDate"] = ELSA
    with pytest.raises(InvalidSubmission) as caught:
        FHIR_R4.parse(body, today=TODAY)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


# --- OperationOutcome -----------------------------------------------------------------


def test_render_problems_is_an_operation_outcome() -> None:
    """Each problem is one error issue with its code, its message and its FHIRPath."""
    problems = [
        FhirProblem(loc="ServiceRequest.subject", message="names no child", issue="required"),
        FhirProblem(loc="ServiceRequest.priority", message="is not a code", issue="structure"),
        FieldProblem(loc="content.summary", message="Field required"),
        FieldProblem(loc="recipients", message="names the same agency more than once"),
    ]
    outcome = FHIR_R4.render_problems(problems)
    OperationOutcome.model_validate(outcome)
    assert outcome == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "required",
                "diagnostics": "names no child",
                "expression": ["ServiceRequest.subject"],
            },
            {
                "severity": "error",
                "code": "structure",
                "diagnostics": "is not a code",
                "expression": ["ServiceRequest.priority"],
            },
            {
                "severity": "error",
                "code": "required",
                "diagnostics": "Field required",
                "expression": ["content.summary"],
            },
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": "names the same agency more than once",
                "expression": ["recipients"],
            },
        ],
    }


# --- Timeline as Tasks ------------------------------------------------------------------

BUP = "bup-lidingo"
SOC = "lidingo-socialtjanst"
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def _at(minutes: int) -> datetime:
    """A time ``minutes`` after the submission."""
    return T0 + timedelta(minutes=minutes)


def _event(
    status: ReceiptStatus, agency: str = BUP, minutes: int = 1, **more: Any
) -> TimelineEvent:
    """One status event."""
    return TimelineEvent(status=status, agency=agency, at=_at(minutes), **more)


ACCEPTED = _event(ReceiptStatus.ACCEPTED, agency="broker")
DELIVERED = _event(ReceiptStatus.DELIVERED, minutes=2)
HANDED_OVER = _event(ReceiptStatus.HANDED_OVER, minutes=3)
READ = _event(ReceiptStatus.READ, minutes=4, staff_id="bup.sekr")


@pytest.mark.parametrize(
    ("events", "status", "business", "reason"),
    [
        pytest.param((), "requested", "sent", None, id="nothing-yet"),
        pytest.param((ACCEPTED,), "requested", "accepted", None, id="accepted-by-broker"),
        pytest.param((ACCEPTED, DELIVERED), "received", "delivered", None, id="delivered"),
        pytest.param(
            (ACCEPTED, DELIVERED, HANDED_OVER), "received", "handed_over", None, id="handed-over"
        ),
        pytest.param((ACCEPTED, DELIVERED, HANDED_OVER, READ), "received", "read", None, id="read"),
        pytest.param(
            (ACCEPTED, READ, DELIVERED), "received", "read", None, id="read-arrives-first"
        ),
        pytest.param(
            (
                ACCEPTED,
                DELIVERED,
                READ,
                _event(ReceiptStatus.ANSWERED, minutes=9, answer=Answer.ACCEPTED, staff_id="x"),
            ),
            "accepted",
            "answered",
            None,
            id="answered-accepted",
        ),
        pytest.param(
            (
                ACCEPTED,
                DELIVERED,
                READ,
                _event(
                    ReceiptStatus.ANSWERED,
                    minutes=9,
                    answer=Answer.DECLINED,
                    decline_reason=DeclineReason.NO_CAPACITY,
                ),
            ),
            "rejected",
            "answered",
            ("urn:backa:decline-reason", "no_capacity"),
            id="answered-declined",
        ),
        pytest.param(
            (
                ACCEPTED,
                _event(ReceiptStatus.REJECTED, minutes=2, reason=ReasonCode.CONSENT_REVOKED),
            ),
            "rejected",
            "rejected",
            ("urn:backa:reason", "consent_revoked"),
            id="rejected-by-recipient",
        ),
        pytest.param(
            (_event(ReceiptStatus.REJECTED, agency="broker", reason=ReasonCode.CONSENT_MISSING),),
            "rejected",
            "rejected",
            ("urn:backa:reason", "consent_missing"),
            id="rejected-by-broker",
        ),
        pytest.param(
            (
                ACCEPTED,
                DELIVERED,
                _event(ReceiptStatus.EXPIRED, minutes=60, reason=ReasonCode.NOT_OPENED),
            ),
            "cancelled",
            "expired",
            ("urn:backa:reason", "not_opened"),
            id="expired",
        ),
        pytest.param(
            (ACCEPTED, _event(ReceiptStatus.READ, agency=SOC, minutes=5)),
            "requested",
            "accepted",
            None,
            id="another-recipient-read-it",
        ),
    ],
)
def test_timeline_task_status(
    events: tuple[TimelineEvent, ...], status: str, business: str, reason: tuple[str, str] | None
) -> None:
    """A recipient's Task.status, businessStatus and statusReason follow its events (the docs' table)."""
    timeline = SentTimeline(
        message_id=MESSAGE_ID,
        kind=Kind.REFERRAL,
        recipients=(BUP, SOC),
        submitted_at=T0,
        outbox="sent",
        events=events,
    )
    bundle = FHIR_R4.render_timeline(timeline)
    Bundle.model_validate(bundle)
    tasks = [entry["resource"] for entry in bundle["entry"]]
    assert [task["owner"]["identifier"]["value"] for task in tasks] == [BUP, SOC]
    task = tasks[0]
    Task.model_validate(task)
    assert task["status"] == status
    assert task["intent"] == "order"
    assert task["businessStatus"]["coding"][0]["code"] == business
    assert task["focus"] == {
        "type": "ServiceRequest",
        "identifier": {"system": "urn:backa:message", "value": MESSAGE_ID},
    }
    shown = task.get("statusReason")
    got = (shown["coding"][0]["system"], shown["coding"][0]["code"]) if shown else None
    assert got == reason
    assert datetime.fromisoformat(task["lastModified"]) in {T0, *(event.at for event in events)}


def test_a_broker_refusal_rejects_every_recipient() -> None:
    """A rejected event signed by the broker is about the message, so every Task is rejected."""
    refusal = _event(ReceiptStatus.REJECTED, agency="broker", reason=ReasonCode.NO_BASIS)
    timeline = SentTimeline(MESSAGE_ID, Kind.REFERRAL, (BUP, SOC), T0, "sent", (refusal,))
    bundle = FHIR_R4.render_timeline(timeline)
    assert [entry["resource"]["status"] for entry in bundle["entry"]] == ["rejected", "rejected"]
    assert bundle["identifier"] == {"system": "urn:backa:message", "value": MESSAGE_ID}


def test_a_queued_message_is_requested() -> None:
    """Before RabbitMQ confirms, the Task is requested and its business status is queued."""
    timeline = SentTimeline(MESSAGE_ID, Kind.CONCERN_REPORT, (SOC,), T0, "queued", ())
    task = FHIR_R4.render_timeline(timeline)["entry"][0]["resource"]
    assert (task["status"], task["businessStatus"]["coding"][0]["code"]) == ("requested", "queued")
    assert "type" not in task["focus"]  # only a referral is a ServiceRequest
    assert datetime.fromisoformat(task["lastModified"]) == T0


def test_timeline_rendering_is_deterministic() -> None:
    """The same timeline renders the same Bundle, entry ids included."""
    timeline = SentTimeline(MESSAGE_ID, Kind.REFERRAL, (BUP,), T0, "sent", (ACCEPTED, DELIVERED))
    assert FHIR_R4.render_timeline(timeline) == FHIR_R4.render_timeline(timeline)


# --- Received referrals -------------------------------------------------------------------


def _received(content: Any, **more: Any) -> Received:
    """A received message from the vårdcentral with this content."""
    fields: dict[str, Any] = {
        "message_id": MESSAGE_ID,
        "kind": Kind.REFERRAL,
        "sender": "lidingo-vardcentral",
        "child": "ab" * 32,
        "basis": ConsentBasis(type="consent", consent_id=CONSENT_ID),
        "purpose": Purpose.REFERRAL,
        "thread": MESSAGE_ID,
        "in_reply_to": None,
        "created": CREATED,
        "received_at": CREATED + timedelta(minutes=1),
        "content": content,
        "state": ReceiptStatus.HANDED_OVER,
    }
    fields.update(more)
    return Received(**fields)


def _referral(name: str = CONSENT) -> Referral:
    """The referral of a documented example."""
    referral = FHIR_R4.parse(_example(name), today=TODAY).content
    assert isinstance(referral, Referral)
    return referral


def _resources(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The resources of a Bundle by resource type."""
    return {entry["resource"]["resourceType"]: entry["resource"] for entry in bundle["entry"]}


def test_a_received_referral_is_a_valid_bundle() -> None:
    """A received referral renders as a collection Bundle of a ServiceRequest and a Task."""
    bundle = FhirMapping(agency=BUP).render_received(_received(_referral()))
    Bundle.model_validate(bundle)
    assert bundle["type"] == "collection"
    resources = _resources(bundle)
    request = resources["ServiceRequest"]
    ServiceRequest.model_validate(request)
    assert request["identifier"] == [{"system": "urn:backa:message", "value": MESSAGE_ID}]
    assert (request["status"], request["intent"], request["priority"]) == (
        "active",
        "order",
        "routine",
    )
    assert request["performer"] == [
        {"type": "Organization", "identifier": {"system": "urn:backa:agency", "value": BUP}}
    ]
    patient = request["contained"][0]
    assert patient["identifier"] == [{"system": "urn:oid:1.2.752.129.2.1.3.1", "value": ELSA}]
    assert patient["name"] == [{"use": "official", "family": "Lind", "given": ["Elsa"]}]
    assert [reason["coding"][0]["code"] for reason in request["reasonCode"]] == [
        "utveckling",
        "halsa",
    ]
    task = resources["Task"]
    Task.model_validate(task)
    assert task["status"] == "received"
    assert task["focus"]["reference"] == f"urn:uuid:{MESSAGE_ID}"
    assert task["requester"]["identifier"]["value"] == "lidingo-vardcentral"
    assert task["owner"]["identifier"]["value"] == BUP


@pytest.mark.parametrize("name", [CONSENT, BUNDLE, SAMORDNING])
def test_a_received_referral_reads_back_as_the_same_referral(name: str) -> None:
    """The rendered ServiceRequest, sent back in, is the referral that was received."""
    referral = _referral(name)
    basis = FHIR_R4.parse(_example(name), today=TODAY).basis
    bundle = FhirMapping(agency=BUP).render_received(_received(referral, basis=basis))
    request = _resources(bundle)["ServiceRequest"]
    again = FHIR_R4.parse(request, today=TODAY)
    assert again.content == referral
    assert again.basis == basis
    assert again.recipients == (BUP,)


def test_a_received_samordningsnummer_keeps_its_system() -> None:
    """A samordningsnummer is rendered under the samordningsnummer OID."""
    bundle = FHIR_R4.render_received(_received(_referral(SAMORDNING)))
    patient = _resources(bundle)["ServiceRequest"]["contained"][0]
    assert patient["identifier"][0]["system"] == "urn:oid:1.2.752.129.2.1.3.3"


@pytest.mark.parametrize(
    ("state", "answer", "decline", "status"),
    [
        pytest.param(ReceiptStatus.DELIVERED, None, None, "received", id="delivered"),
        pytest.param(ReceiptStatus.READ, None, None, "received", id="read"),
        pytest.param(ReceiptStatus.ANSWERED, Answer.ACCEPTED, None, "accepted", id="accepted"),
        pytest.param(
            ReceiptStatus.ANSWERED,
            Answer.DECLINED,
            DeclineReason.NOT_OUR_REMIT,
            "rejected",
            id="declined",
        ),
    ],
)
def test_a_received_referral_task_follows_its_state(
    state: ReceiptStatus, answer: Answer | None, decline: DeclineReason | None, status: str
) -> None:
    """The received referral's Task has the status of the table, with the decline reason."""
    item = _received(_referral(), state=state, answer=answer, decline_reason=decline)
    task = _resources(FHIR_R4.render_received(item))["Task"]
    Task.model_validate(task)
    assert task["status"] == status
    assert "owner" not in task  # FHIR_R4 itself does not know which agency it serves
    if decline is not None:
        assert task["statusReason"]["coding"][0]["code"] == decline.value


def test_other_received_kinds_are_canonical_json() -> None:
    """A received concern report is rendered as the canonical JSON form renders it."""
    report = ConcernReport(
        child=ChildIdentity(identity_number=OSKAR),
        observations="Blåmärken på armarna.",
        need_areas=[NeedArea.TRYGGHET],
        immediate_danger=False,
        reporter=StaffRole(staff_id="maria.ek", role="psykolog"),
        guardians_informed=False,
        child_informed=True,
    )
    item = _received(report, kind=Kind.CONCERN_REPORT, purpose=Purpose.CONCERN)
    assert FHIR_R4.render_received(item) == CANONICAL_JSON.render_received(item)


# --- The documentation ------------------------------------------------------------------


def test_the_documented_examples_are_the_example_files() -> None:
    """docs/adapters/health.md shows each example file exactly, so the tests send what is documented."""
    text = DOCS.read_text(encoding="utf-8")
    blocks = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, flags=re.S)]
    for path in sorted(EXAMPLES.glob("health-*.json")):
        assert json.loads(path.read_text(encoding="utf-8")) in blocks, path.name
        assert path.name in text


def test_submission_equality_is_by_value() -> None:
    """Parsing the same example twice gives equal submissions (nothing random in parsing)."""
    first: Submission = FHIR_R4.parse(_example(BUNDLE), today=TODAY)
    assert first == FHIR_R4.parse(_example(BUNDLE), today=TODAY)
