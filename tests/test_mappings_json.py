"""The JSON forms (adapters.mappings: canonical, school, social services, police).

Every valid submission here is an example file from docs/adapters/examples,
so what the docs show is what the tests send; invalid ones are those files
with one thing or several changed.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.canonical import (
    DEFAULT_PURPOSE,
    FieldProblem,
    InvalidSubmission,
    Mapping,
    Received,
    SentTimeline,
    Submission,
    SubmittedContent,
    TimelineEvent,
)
from adapters.mappings.canonical_json import CANONICAL_JSON
from adapters.mappings.police import CONCERN_REPORT_BASIS, POLICE_JSON
from adapters.mappings.school import SCHOOL_FORM
from adapters.mappings.social_services import SOCIAL_SERVICES_JSON
from keys.personnummer import luhn_check_digit
from schemas.content import (
    ChildIdentity,
    ConcernReport,
    Contact,
    EscalationNotice,
    Need,
    NeedArea,
    Overdue,
    PlanGoal,
    PlanUpdate,
    Referral,
    StaffRole,
    TeamInvitation,
    TeamResponse,
    Urgency,
)
from schemas.envelope import ConsentBasis, Kind, LegalBasis, Purpose
from schemas.reasons import ReasonCode
from schemas.receipts import Answer, DeclineReason, ReceiptStatus

TODAY = date(2026, 11, 25)
EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "adapters" / "examples"
#: The example files of these forms (other forms keep theirs in the same folder).
PREFIXES = ("canonical-", "school-", "social_services-", "police-")

CONSENT = "0193a5c2-7e41-7c1a-9b2e-4f6d8a1c3e50"
PLAN_CONSENT = "0193a5c4-0b1d-7e2f-8a3b-9c4d5e6f7a81"
INVITATION = "0193a5d0-1f2b-7a9c-8e3d-5b6a7c8d9e01"
ALVA = "201212121212"
NORA = "201403152380"
LEO = "201806114573"
MID = "0193a600-0000-7000-8000-000000000001"
THREAD = "0193a600-0000-7000-8000-000000000002"
PSEUDONYM = "3f" * 32
CREATED = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
RECEIVED_AT = datetime(2026, 11, 25, 9, 30, 2, tzinfo=UTC)

#: Every mapping of this module; typed as the protocol, so mypy checks that each is one.
MAPPINGS: list[Mapping] = [CANONICAL_JSON, SCHOOL_FORM, SOCIAL_SERVICES_JSON, POLICE_JSON]


def _example(name: str) -> dict[str, Any]:
    data = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _problems(mapping: Mapping, body: object) -> list[FieldProblem]:
    with pytest.raises(InvalidSubmission) as caught:
        mapping.parse(body, today=TODAY)
    return list(caught.value.problems)


def _attr(value: object, path: str) -> object:
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else getattr(value, part)
    return value


_DELETE = object()


def _set(body: Any, path: tuple[str | int, ...], value: object) -> None:
    for part in path[:-1]:
        body = body[part]
    if value is _DELETE:
        del body[path[-1]]
    else:
        body[path[-1]] = value


def _changed(example: str, *changes: tuple[tuple[str | int, ...], object]) -> dict[str, Any]:
    body = _example(example)
    for path, value in changes:
        _set(body, path, value)
    return body


# --- Valid examples ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mapping", "name"),
    [
        pytest.param(CANONICAL_JSON, "canonical", id="canonical"),
        pytest.param(SCHOOL_FORM, "school", id="school"),
        pytest.param(SOCIAL_SERVICES_JSON, "social_services", id="social_services"),
        pytest.param(POLICE_JSON, "police", id="police"),
    ],
)
def test_each_mapping_is_named_as_configured(mapping: Mapping, name: str) -> None:
    """Each mapping carries the short name that config and docs use for it."""
    assert mapping.name == name


def _consent(consent_id: str = CONSENT) -> ConsentBasis:
    return ConsentBasis(type="consent", consent_id=consent_id)


def _legal(ref: str) -> LegalBasis:
    return LegalBasis(type="legal", ref=ref)


#: example, its form, (kind, recipients, basis, purpose) and content fields by attribute path.
EXPECTED = [
    pytest.param("school-referral", SCHOOL_FORM,
                 (Kind.REFERRAL, ("bup-lidingo", "lidingo-socialtjanst"), _consent(), Purpose.REFERRAL),
                 {"child.identity_number": ALVA, "child.given_name": "Alva", "needs.0.area": NeedArea.TRYGGHET,
                  "needs.1.area": NeedArea.HALSA, "urgency": Urgency.SOON, "contact.staff_id": "kurator.lind",
                  "contact.phone": "+46 8 123 456 78", "guardians_informed": True,
                  "respond_by": datetime(2026, 12, 9, 15, 0, tzinfo=UTC)},
                 id="school-referral"),
    pytest.param("school-concern_report", SCHOOL_FORM,
                 (Kind.CONCERN_REPORT, ("lidingo-socialtjanst",), _legal("osl-10-28"), Purpose.CONCERN),
                 {"child.identity_number": ALVA, "need_areas": [NeedArea.OMSORG, NeedArea.TRYGGHET],
                  "immediate_danger": False, "reporter.role": "rektor", "guardians_informed": False,
                  "child_informed": True},
                 id="school-concern_report"),
    pytest.param("school-team_invitation", SCHOOL_FORM,
                 (Kind.TEAM_INVITATION, ("lidingo-socialtjanst", "lidingo-vardcentral"), _consent(), Purpose.TEAM),
                 {"child.identity_number": ALVA, "child.family_name": None,
                  "invited_roles": ["stödsamordnare", "barnkontakt"],
                  "meeting_at": datetime(2026, 12, 10, 12, 0, tzinfo=UTC)},
                 id="school-team_invitation"),
    pytest.param("school-team_response", SCHOOL_FORM,
                 (Kind.TEAM_RESPONSE, ("lidingo-socialtjanst",), _consent(), Purpose.TEAM),
                 {"invitation_id": INVITATION, "answer": Answer.ACCEPTED, "attendee.staff_id": "kurator.lind",
                  "decline_reason": None},
                 id="school-team_response"),
    pytest.param("school-plan_update", SCHOOL_FORM,
                 (Kind.PLAN_UPDATE, ("lidingo-socialtjanst", "lidingo-vardcentral"), _consent(PLAN_CONSENT), Purpose.PLAN),
                 {"child.identity_number": LEO, "version": 3, "goals.0.responsible_agency": "kappala-forskola",
                  "goals.1.follow_up": date(2027, 1, 20), "next_review": date(2027, 3, 1)},
                 id="school-plan_update"),
    pytest.param("canonical-referral", CANONICAL_JSON,
                 (Kind.REFERRAL, ("bup-lidingo", "lidingo-socialtjanst"), _consent(), Purpose.REFERRAL),
                 {"child.identity_number": ALVA, "urgency": Urgency.SOON, "needs.0.area": NeedArea.TRYGGHET},
                 id="canonical-referral"),
    pytest.param("canonical-concern_report", CANONICAL_JSON,
                 (Kind.CONCERN_REPORT, ("lidingo-socialtjanst",), _legal("osl-10-28"), Purpose.CONCERN),
                 {"child.identity_number": ALVA, "immediate_danger": False},
                 id="canonical-concern_report"),
    pytest.param("canonical-team_invitation", CANONICAL_JSON,
                 (Kind.TEAM_INVITATION, ("lidingo-socialtjanst", "lidingo-vardcentral"), _consent(), Purpose.TEAM),
                 {"child.identity_number": ALVA, "place": "Torsviks skola, elevhälsans rum (plan 2)"},
                 id="canonical-team_invitation"),
    pytest.param("canonical-team_response", CANONICAL_JSON,
                 (Kind.TEAM_RESPONSE, ("lidingo-socialtjanst",), _consent(), Purpose.TEAM),
                 {"invitation_id": INVITATION, "answer": Answer.ACCEPTED},
                 id="canonical-team_response"),
    pytest.param("canonical-plan_update", CANONICAL_JSON,
                 (Kind.PLAN_UPDATE, ("lidingo-socialtjanst", "lidingo-vardcentral"), _consent(PLAN_CONSENT), Purpose.PLAN),
                 {"child.identity_number": LEO, "goals.0.area": NeedArea.UTVECKLING},
                 id="canonical-plan_update"),
    pytest.param("social_services-team_invitation", SOCIAL_SERVICES_JSON,
                 (Kind.TEAM_INVITATION, ("torsviks-skola", "lidingo-vardcentral", "bup-lidingo"), _consent(), Purpose.TEAM),
                 {"child.identity_number": ALVA, "invited_roles": ["kurator", "barnkontakt", "behandlare BUP"],
                  "respond_by": datetime(2026, 12, 4, 11, 0, tzinfo=UTC)},
                 id="social_services-team_invitation"),
    pytest.param("social_services-plan_update", SOCIAL_SERVICES_JSON,
                 (Kind.PLAN_UPDATE, ("torsviks-skola", "lidingo-vardcentral", "bup-lidingo"), _consent(), Purpose.PLAN),
                 {"child.identity_number": ALVA, "version": 1, "goals.1.responsible_agency": "bup-lidingo"},
                 id="social_services-plan_update"),
    pytest.param("social_services-referral", SOCIAL_SERVICES_JSON,
                 (Kind.REFERRAL, ("bup-lidingo",), _legal("osl-26-9"), Purpose.REFERRAL),
                 {"child.identity_number": NORA, "contact.role": "socialsekreterare"},
                 id="social_services-referral"),
    pytest.param("social_services-concern_report", SOCIAL_SERVICES_JSON,
                 (Kind.CONCERN_REPORT, ("polisen-lidingo",), _legal("osl-10-21"), Purpose.CONCERN),
                 {"child.identity_number": ALVA, "reporter.role": "stödsamordnare"},
                 id="social_services-concern_report"),
    pytest.param("police-concern_report", POLICE_JSON,
                 (Kind.CONCERN_REPORT, ("lidingo-socialtjanst",), _legal("osl-10-28"), Purpose.CONCERN),
                 {"child.identity_number": NORA, "child.family_name": "Provsson",
                  "need_areas": [NeedArea.TRYGGHET, NeedArea.OMSORG], "immediate_danger": False,
                  "reporter.staff_id": "pa-40213", "guardians_informed": True, "child_informed": True},
                 id="police-concern_report"),
]  # fmt: skip


@pytest.mark.parametrize(("example", "mapping", "envelope", "fields"), EXPECTED)
def test_a_documented_example_maps_to_its_submission(
    example: str,
    mapping: Mapping,
    envelope: tuple[Kind, tuple[str, ...], ConsentBasis | LegalBasis, Purpose],
    fields: dict[str, object],
) -> None:
    """Each example in the docs becomes the submission its form documents."""
    submission = mapping.parse(_example(example), today=TODAY)
    got = (submission.kind, submission.recipients, submission.basis, submission.purpose)
    assert got == envelope
    assert {path: _attr(submission.content, path) for path in fields} == fields


def test_every_example_file_is_tested() -> None:
    """No example file of these forms in docs/adapters/examples goes unchecked."""
    tested = {param.values[0] for param in EXPECTED}
    files = {path.stem for path in EXAMPLES.glob("*.json") if path.name.startswith(PREFIXES)}
    assert files == tested


@pytest.mark.parametrize(
    "kind", ["referral", "concern_report", "team_invitation", "team_response", "plan_update"]
)
def test_the_school_form_and_the_canonical_form_of_one_message_agree(kind: str) -> None:
    """The school example and the canonical example of a kind are the same submission."""
    school = SCHOOL_FORM.parse(_example(f"school-{kind}"), today=TODAY)
    assert school == CANONICAL_JSON.parse(_example(f"canonical-{kind}"), today=TODAY)


@pytest.mark.parametrize(
    ("mapping", "example"),
    [
        pytest.param(SCHOOL_FORM, "canonical-team_response", id="school"),
        pytest.param(SOCIAL_SERVICES_JSON, "canonical-referral", id="social_services"),
        pytest.param(POLICE_JSON, "canonical-concern_report", id="police"),
    ],
)
def test_a_body_with_kind_is_taken_as_the_canonical_form(mapping: Mapping, example: str) -> None:
    """Every form accepts the canonical form, recognised by its ``kind`` key."""
    body = _example(example)
    assert mapping.parse(body, today=TODAY) == CANONICAL_JSON.parse(body, today=TODAY)


#: Where each form keeps the child's number, in the example of that form.
NUMBER_FIELDS = [
    pytest.param(CANONICAL_JSON, "canonical-referral", ("content", "child", "identity_number"), id="canonical"),
    pytest.param(SCHOOL_FORM, "school-referral", ("elev", "personnummer"), id="school"),
    pytest.param(SOCIAL_SERVICES_JSON, "social_services-referral", ("content", "child", "identity_number"), id="social_services"),
    pytest.param(POLICE_JSON, "police-concern_report", ("barn", "personnummer"), id="police"),
]  # fmt: skip

WRITTEN_NUMBERS = [
    pytest.param("121212-1212", ALVA, id="10-dash"),
    pytest.param("1212121212", ALVA, id="10-bare"),
    pytest.param("20121212-1212", ALVA, id="12-dash"),
    pytest.param(ALVA, ALVA, id="12-bare"),
    pytest.param("  121212-1212 ", ALVA, id="padded"),
    pytest.param("121272-1219", "201212721219", id="samordningsnummer"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "normalised"), WRITTEN_NUMBERS)
@pytest.mark.parametrize(("mapping", "example", "where"), NUMBER_FIELDS)
def test_every_written_form_of_a_number_is_normalised(
    mapping: Mapping, example: str, where: tuple[str, ...], text: str, normalised: str
) -> None:
    """A personnummer or samordningsnummer in any accepted form reaches the content as 12 digits."""
    body = _example(example)
    _set(body, where, text)
    content = mapping.parse(body, today=TODAY).content
    assert isinstance(content, Referral | ConcernReport)
    assert content.child.identity_number == normalised


def test_the_police_form_defaults_its_legal_basis_and_need_areas() -> None:
    """Without lagrum a police report rests on the concern-report basis; without omraden it names none."""
    body = _example("police-concern_report")
    del body["lagrum"], body["omraden"], body["anmalan_id"]
    submission = POLICE_JSON.parse(body, today=TODAY)
    # The code of rule osl-10-28.concern-report in deploy/policy/sweden.toml.
    assert CONCERN_REPORT_BASIS == "osl-10-28"
    assert submission.basis == _legal(CONCERN_REPORT_BASIS)
    assert isinstance(submission.content, ConcernReport)
    assert submission.content.need_areas == []


def test_the_school_form_lets_a_concern_report_name_no_need_area() -> None:
    """A school's concern report without omraden is sent, naming no need area."""
    body = _example("school-concern_report")
    del body["omraden"]
    content = SCHOOL_FORM.parse(body, today=TODAY).content
    assert isinstance(content, ConcernReport)
    assert content.need_areas == []


# --- Invalid submissions ------------------------------------------------------------

#: A form, a body with problems, and the path of every problem in the form's own terms.
BAD = [
    pytest.param(SCHOOL_FORM,
                 _changed("school-referral",
                          (("elev", "personnummer"), "121212-1213"), (("behov", 0, "omrade"), "mod"),
                          (("bradskande",), "urgent"), (("summary",), "a canonical name is no school field"),
                          (("sammanfattning",), _DELETE), (("kontakt", "telefon"), "ring mig")),
                 {"elev.personnummer", "behov[0].omrade", "bradskande", "summary", "sammanfattning",
                  "kontakt.telefon"},
                 id="school-referral-many"),
    pytest.param(SCHOOL_FORM, _changed("school-referral", (("behov", 1, "omrade"), "trygghet")), {"$"},
                 id="school-referral-need-twice"),
    pytest.param(SCHOOL_FORM, _changed("school-referral", (("grund",), {"samtycke": CONSENT, "lagrum": "osl-10-28"})),
                 {"grund"}, id="school-both-bases"),
    pytest.param(SCHOOL_FORM, _changed("school-referral", (("grund",), {})), {"grund"}, id="school-no-basis"),
    pytest.param(SCHOOL_FORM, _changed("school-referral", (("grund",), {"samtycke": "ja"})),
                 {"grund.samtycke"}, id="school-bad-consent-id"),
    pytest.param(SCHOOL_FORM, _changed("school-referral", (("typ",), "referral")), {"typ"},
                 id="school-canonical-typ"),
    pytest.param(SCHOOL_FORM, _changed("school-referral", (("typ",), _DELETE), (("syfte",), "fika")),
                 {"typ", "syfte"}, id="school-no-typ"),
    pytest.param(SCHOOL_FORM, {}, {"typ", "mottagare", "grund"}, id="school-empty"),
    pytest.param(SCHOOL_FORM, ["remiss"], {"$"}, id="school-not-an-object"),
    pytest.param(SCHOOL_FORM,
                 _changed("school-team_invitation",
                          (("svar_senast",), "2026-12-11T08:00:00+01:00"), (("mottagare",), [])),
                 {"$", "mottagare"}, id="school-invitation-answer-after-meeting"),
    pytest.param(SCHOOL_FORM, _changed("school-team_response", (("besked",), "nej")), {"$"},
                 id="school-declined-with-attendee"),
    pytest.param(SCHOOL_FORM,
                 _changed("school-team_response", (("svar_pa",), _DELETE), (("skal",), "orkar_inte")),
                 {"svar_pa", "skal"}, id="school-response-without-invitation"),
    pytest.param(SCHOOL_FORM,
                 _changed("school-plan_update", (("mal", 1, "ansvarig"), "Lidingö VC"), (("version",), 0),
                          (("mal", 0, "uppfoljning"), "snart")),
                 {"mal[1].ansvarig", "version", "mal[0].uppfoljning"}, id="school-plan_update"),
    pytest.param(CANONICAL_JSON,
                 _changed("canonical-referral",
                          (("recipients",), ["bup-lidingo", "bup-lidingo"]),
                          (("basis",), {"type": "samtycke", "consent_id": CONSENT}),
                          (("purpose",), "curiosity"), (("expires",), "2026-12-24T00:00:00"),
                          (("content", "child", "identity_number"), "121312-1212"),
                          (("content", "needs", 0, "area"), 3), (("priority",), "high")),
                 {"recipients", "basis.type", "purpose", "expires", "content.child.identity_number",
                  "content.needs[0].area", "priority"},
                 id="canonical-many"),
    pytest.param(CANONICAL_JSON, _changed("canonical-referral", (("kind",), "receipt")), {"kind"},
                 id="canonical-receipt"),
    pytest.param(CANONICAL_JSON, _changed("canonical-referral", (("content",), "see attachment")), {"content"},
                 id="canonical-content-not-an-object"),
    pytest.param(CANONICAL_JSON, {}, {"kind", "recipients", "basis", "content"}, id="canonical-empty"),
    pytest.param(CANONICAL_JSON, _changed("canonical-team_response", (("in_reply_to",), _DELETE)),
                 {"in_reply_to"}, id="canonical-response-without-in_reply_to"),
    pytest.param(CANONICAL_JSON,
                 _changed("canonical-team_response", (("in_reply_to",), "0193a5d0-1f2b-7a9c-8e3d-5b6a7c8d9e02")),
                 {"content.invitation_id"}, id="canonical-response-to-another-invitation"),
    pytest.param(SOCIAL_SERVICES_JSON,
                 _changed("social_services-team_invitation",
                          (("content", "invited_roles"), []), (("basis",), "consent")),
                 {"content.invited_roles", "basis"}, id="social_services-invitation"),
    pytest.param(POLICE_JSON,
                 _changed("police-concern_report",
                          (("typ",), "remiss"), (("lagrum",), "OSL 10:28"), (("anmalan_id",), ""),
                          (("barn", "personnummer"), "14031523801"), (("akut_fara",), "ja"),
                          (("omraden",), ["trygghet", "otrygghet"]), (("anmalare",), _DELETE)),
                 {"typ", "lagrum", "anmalan_id", "barn.personnummer", "akut_fara", "omraden[1]", "anmalare"},
                 id="police-many"),
    pytest.param(POLICE_JSON, _example("canonical-referral"), {"kind"}, id="police-canonical-referral"),
    pytest.param(POLICE_JSON, _changed("police-concern_report", (("kind",), "concern_report")),
                 {"mottagare", "lagrum", "anmalan_id", "barn", "iakttagelser", "omraden", "akut_fara", "anmalare",
                  "vardnadshavare_informerade", "barnet_informerat", "recipients", "basis", "content"},
                 id="police-half-canonical"),
]  # fmt: skip


@pytest.mark.parametrize(("mapping", "body", "fields"), BAD)
def test_an_invalid_submission_names_every_bad_field_in_its_own_terms(
    mapping: Mapping, body: object, fields: set[str]
) -> None:
    """All problems come back at once, each at the path the agency's document uses."""
    problems = _problems(mapping, copy.deepcopy(body))
    assert {problem.loc for problem in problems} == fields
    assert all(problem.message for problem in problems)


def test_a_problem_is_told_in_the_form_s_own_words() -> None:
    """A rule across fields names the school form's fields and values; so does a value problem."""
    declined = _problems(SCHOOL_FORM, _changed("school-team_response", (("besked",), "nej")))
    assert declined == [
        FieldProblem("$", 'deltagare is required when besked "ja" and refused when besked "nej"')
    ]
    twice = _problems(
        SCHOOL_FORM, _changed("school-referral", (("behov", 1, "omrade"), "trygghet"))
    )
    assert twice == [FieldProblem("$", "behov lists the same value twice")]
    urgency = _problems(SCHOOL_FORM, _changed("school-referral", (("bradskande",), None)))
    assert urgency == [FieldProblem("bradskande", "must be one of: rutin, snart, akut")]


REFUSED_NUMBERS = [
    pytest.param("121212-1213", id="check-digit"),
    pytest.param("20121212-1213", id="check-digit-12"),
    pytest.param("121312-1212", id="month-13"),
    pytest.param("121232-1212", id="day-32"),
    pytest.param("14031523801", id="eleven-digits"),
    pytest.param("270101-1234", id="born-next-year"),
]  # fmt: skip


@pytest.mark.parametrize("number", REFUSED_NUMBERS)
@pytest.mark.parametrize(("mapping", "example", "where"), NUMBER_FIELDS)
def test_no_problem_repeats_the_personnummer(
    mapping: Mapping, example: str, where: tuple[str, ...], number: str
) -> None:
    """Neither a problem nor the 422 body holds three digits in a row of a refused number."""
    body = _example(example)
    _set(body, where, number)
    body[number] = "a number used as a key is data too"
    problems = _problems(mapping, body)
    assert {p.loc for p in problems} == {".".join(where), "<key>"}
    text = json.dumps(mapping.render_problems(problems))
    digits = re.sub(r"\D", "", number)
    runs = {digits[i : i + 3] for i in range(len(digits) - 2)}
    assert not [run for run in runs if run in text]


# --- Rendering ----------------------------------------------------------------------

CANONICAL_RECEIVED_KEYS = {
    "message_id", "kind", "sender", "child", "basis", "purpose", "thread", "in_reply_to",
    "created", "received_at", "state", "answer", "decline_reason", "content",
}  # fmt: skip
SWEDISH_HEADER_KEYS = {
    "meddelande_id", "avsandare", "barn_pseudonym", "grund", "syfte", "trad", "svar_pa",
    "skapad", "inkom", "status", "vart_besked", "vart_skal",
}  # fmt: skip
SCHOOL_CONTENT_KEYS = {
    Kind.REFERRAL: {"elev", "behov", "sammanfattning", "onskat_stod", "bradskande", "kontakt",
                    "vardnadshavare_informerade", "svar_senast"},
    Kind.CONCERN_REPORT: {"elev", "iakttagelser", "omraden", "akut_fara", "anmalare",
                          "vardnadshavare_informerade", "barnet_informerat"},
    Kind.TEAM_INVITATION: {"elev", "motestid", "plats", "inbjudna_roller", "dagordning", "svar_senast"},
    Kind.TEAM_RESPONSE: {"besked", "deltagare", "skal", "skal_beskrivning"},
    Kind.PLAN_UPDATE: {"elev", "plan_id", "version", "mal", "nasta_uppfoljning"},
    Kind.ESCALATION: {"innehall"},
}  # fmt: skip
CANONICAL_TIMELINE_KEYS = {
    "message_id", "kind", "recipients", "submitted_at", "outbox", "events", "per_recipient",
}  # fmt: skip
CANONICAL_EVENT_KEYS = {"status", "agency", "at", "reason", "answer", "decline_reason", "staff_id"}
SCHOOL_TIMELINE_KEYS = {
    "meddelande_id", "typ", "mottagare", "inskickat", "utkorg", "handelser", "per_mottagare",
}  # fmt: skip
SCHOOL_EVENT_KEYS = {"status", "myndighet", "tid", "orsak", "besked", "skal", "personal_id"}
RENDERED_KINDS = [
    Kind.REFERRAL, Kind.CONCERN_REPORT, Kind.TEAM_INVITATION, Kind.TEAM_RESPONSE,
    Kind.PLAN_UPDATE, Kind.ESCALATION,
]  # fmt: skip

ESCALATION = EscalationNotice(
    matter=MID,
    rule="referral.answer",
    overdue=Overdue.ANSWER,
    since=datetime(2026, 12, 9, 15, 0, tzinfo=UTC),
    child=PSEUDONYM,
)


def _content_of(kind: Kind) -> object:
    if kind is Kind.ESCALATION:
        return ESCALATION
    return CANONICAL_JSON.parse(_example(f"canonical-{kind.value}"), today=TODAY).content


def _received(kind: Kind, **changes: Any) -> Received:
    fields: dict[str, Any] = {
        "message_id": MID,
        "kind": kind,
        "sender": "torsviks-skola",
        "child": PSEUDONYM,
        "basis": _consent(),
        "purpose": DEFAULT_PURPOSE.get(kind, Purpose.COORDINATION),
        "thread": THREAD,
        "in_reply_to": None,
        "created": CREATED,
        "received_at": RECEIVED_AT,
        "content": _content_of(kind),
        "state": ReceiptStatus.HANDED_OVER,
    }
    return Received(**(fields | changes))


def _school_keys(kind: Kind) -> set[str]:
    return SWEDISH_HEADER_KEYS | {"typ"} | SCHOOL_CONTENT_KEYS[kind]


def _social_services_keys(kind: Kind) -> set[str]:
    if kind not in (Kind.CONCERN_REPORT, Kind.REFERRAL):
        return CANONICAL_RECEIVED_KEYS
    content = {"barn" if key == "elev" else key for key in SCHOOL_CONTENT_KEYS[kind]}
    return SWEDISH_HEADER_KEYS | {"arende_typ"} | content


def _canonical_keys(kind: Kind) -> set[str]:
    del kind
    return CANONICAL_RECEIVED_KEYS


@pytest.mark.parametrize("kind", RENDERED_KINDS, ids=str)
@pytest.mark.parametrize(
    ("mapping", "keys"),
    [
        pytest.param(CANONICAL_JSON, _canonical_keys, id="canonical"),
        pytest.param(SCHOOL_FORM, _school_keys, id="school"),
        pytest.param(SOCIAL_SERVICES_JSON, _social_services_keys, id="social_services"),
        pytest.param(POLICE_JSON, _canonical_keys, id="police"),
    ],
)
def test_a_received_message_is_rendered_with_the_documented_keys(
    mapping: Mapping, keys: Callable[[Kind], set[str]], kind: Kind
) -> None:
    """Each form renders every kind it may receive with exactly the keys its docs list, as JSON."""
    rendered = mapping.render_received(_received(kind))
    assert set(rendered) == keys(kind)
    assert json.loads(json.dumps(rendered)) == rendered


def test_the_canonical_rendering_holds_the_content_as_json() -> None:
    """The canonical rendering carries metadata and state as wire values and the content as JSON."""
    item = _received(
        Kind.REFERRAL,
        state=ReceiptStatus.ANSWERED,
        answer=Answer.DECLINED,
        decline_reason=DeclineReason.NO_CAPACITY,
    )
    rendered = CANONICAL_JSON.render_received(item)
    content = _content_of(Kind.REFERRAL)
    assert isinstance(content, Referral)
    assert rendered["content"] == json.loads(content.model_dump_json())
    assert rendered["content"]["child"]["identity_number"] == ALVA
    answered = (rendered["state"], rendered["answer"], rendered["decline_reason"])
    assert answered == ("answered", "declined", "no_capacity")
    assert rendered["created"] == "2026-11-25T09:30:00Z"
    assert rendered["received_at"] == "2026-11-25T09:30:02Z"
    assert rendered["basis"] == {"type": "consent", "consent_id": CONSENT}


def test_the_school_rendering_reads_like_the_school_form() -> None:
    """A received referral comes in the school form's own fields and values."""
    item = _received(
        Kind.REFERRAL,
        state=ReceiptStatus.ANSWERED,
        answer=Answer.DECLINED,
        decline_reason=DeclineReason.NO_CAPACITY,
    )
    rendered = SCHOOL_FORM.render_received(item)
    example = _example("school-referral")
    for key in ("behov", "sammanfattning", "onskat_stod", "bradskande", "kontakt"):
        assert rendered[key] == example[key]
    assert rendered["elev"] == {"personnummer": ALVA, "fornamn": "Alva", "efternamn": "Exempelsson"}
    assert (rendered["typ"], rendered["syfte"]) == ("remiss", "remiss")
    assert rendered["grund"] == {"samtycke": CONSENT}
    answered = (rendered["status"], rendered["vart_besked"], rendered["vart_skal"])
    assert answered == ("answered", "nej", "ingen_kapacitet")
    escalation = SCHOOL_FORM.render_received(_received(Kind.ESCALATION))
    assert escalation["typ"] == "eskalering"
    assert escalation["innehall"]["overdue"] == "answer"


def test_social_services_receive_a_concern_report_as_a_case() -> None:
    """A police concern report reaches the case system as an orosanmälan, the reporter one party."""
    report = POLICE_JSON.parse(_example("police-concern_report"), today=TODAY)
    item = _received(
        Kind.CONCERN_REPORT,
        sender="polisen-lidingo",
        content=report.content,
        basis=report.basis,
        purpose=report.purpose,
    )
    case = SOCIAL_SERVICES_JSON.render_received(item)
    assert (case["arende_typ"], case["inkom"]) == ("orosanmalan", "2026-11-25T09:30:02Z")
    assert case["barn"] == {"personnummer": NORA, "fornamn": "Nora", "efternamn": "Provsson"}
    assert case["anmalare"] == {
        "myndighet": "polisen-lidingo",
        "personal_id": "pa-40213",
        "roll": "polisassistent",
    }
    assert (case["akut_fara"], case["grund"], case["syfte"]) == (
        False,
        {"lagrum": "osl-10-28"},
        "oro",
    )
    referral = SOCIAL_SERVICES_JSON.render_received(_received(Kind.REFERRAL))
    assert referral["arende_typ"] == "remiss"
    assert referral["kontakt"]["myndighet"] == "torsviks-skola"


def _timeline(*events: TimelineEvent) -> SentTimeline:
    return SentTimeline(
        message_id=MID,
        kind=Kind.REFERRAL,
        recipients=("bup-lidingo", "lidingo-socialtjanst"),
        submitted_at=CREATED,
        outbox="sent",
        events=events,
    )


ACCEPTED = TimelineEvent(
    status=ReceiptStatus.ACCEPTED, agency="broker", at=CREATED + timedelta(seconds=1)
)
DELIVERED = TimelineEvent(
    status=ReceiptStatus.DELIVERED, agency="bup-lidingo", at=CREATED + timedelta(seconds=2)
)
ANSWERED = TimelineEvent(
    status=ReceiptStatus.ANSWERED,
    agency="bup-lidingo",
    at=CREATED + timedelta(days=2),
    answer=Answer.DECLINED,
    decline_reason=DeclineReason.NOT_OUR_REMIT,
    staff_id="dr.holm",
)
REJECTED = TimelineEvent(
    status=ReceiptStatus.REJECTED,
    agency="broker",
    at=CREATED + timedelta(seconds=1),
    reason=ReasonCode.CONSENT_MISSING,
)

TIMELINES = [
    pytest.param((), {"bup-lidingo": None, "lidingo-socialtjanst": None}, id="queued"),
    pytest.param((ACCEPTED,), {"bup-lidingo": "accepted", "lidingo-socialtjanst": "accepted"}, id="accepted"),
    pytest.param((ACCEPTED, DELIVERED, ANSWERED), {"bup-lidingo": "answered", "lidingo-socialtjanst": "accepted"}, id="answered"),
    pytest.param((REJECTED,), {"bup-lidingo": "rejected", "lidingo-socialtjanst": "rejected"}, id="rejected"),
    pytest.param((ANSWERED, ACCEPTED, DELIVERED), {"bup-lidingo": "answered", "lidingo-socialtjanst": "accepted"}, id="out-of-order"),
]  # fmt: skip


@pytest.mark.parametrize(("events", "per_recipient"), TIMELINES)
def test_a_timeline_gives_each_recipient_its_latest_status(
    events: tuple[TimelineEvent, ...], per_recipient: dict[str, str | None]
) -> None:
    """The furthest step a recipient's events prove wins, whatever order they arrived in."""
    timeline = _timeline(*events)
    canonical = CANONICAL_JSON.render_timeline(timeline)
    school = SCHOOL_FORM.render_timeline(timeline)
    assert set(canonical) == CANONICAL_TIMELINE_KEYS
    assert set(school) == SCHOOL_TIMELINE_KEYS
    assert canonical["per_recipient"] == school["per_mottagare"] == per_recipient
    assert all(set(event) == CANONICAL_EVENT_KEYS for event in canonical["events"])
    assert all(set(event) == SCHOOL_EVENT_KEYS for event in school["handelser"])
    for mapping in (SOCIAL_SERVICES_JSON, POLICE_JSON):
        assert mapping.render_timeline(timeline) == canonical


def test_timeline_events_carry_answers_and_reasons() -> None:
    """An answered event carries its answer, reason and person; a rejection its reason code."""
    canonical = CANONICAL_JSON.render_timeline(_timeline(ACCEPTED, DELIVERED, ANSWERED))
    assert canonical["events"][-1] == {
        "status": "answered",
        "agency": "bup-lidingo",
        "at": "2026-11-27T09:30:00Z",
        "reason": None,
        "answer": "declined",
        "decline_reason": "not_our_remit",
        "staff_id": "dr.holm",
    }
    school = SCHOOL_FORM.render_timeline(_timeline(ACCEPTED, DELIVERED, ANSWERED))
    assert school["handelser"][-1] == {
        "status": "answered",
        "myndighet": "bup-lidingo",
        "tid": "2026-11-27T09:30:00Z",
        "orsak": None,
        "besked": "nej",
        "skal": "inte_vart_uppdrag",
        "personal_id": "dr.holm",
    }
    assert (school["typ"], school["utkorg"]) == ("remiss", "sent")
    assert school["inskickat"] == "2026-11-25T09:30:00Z"
    rejected = CANONICAL_JSON.render_timeline(_timeline(REJECTED))
    assert rejected["events"][0]["reason"] == "consent_missing"


@pytest.mark.parametrize("mapping", MAPPINGS, ids=lambda m: m.name)
def test_the_422_body_lists_every_problem_under_one_sentence(mapping: Mapping) -> None:
    """Every form answers an invalid submission with the same documented 422 shape."""
    problems = [FieldProblem("a", "is wrong"), FieldProblem("b[0].c", "Field required")]
    assert mapping.render_problems(problems) == {
        "error": "invalid_submission",
        "message": "The submission has 2 problems and nothing was stored or sent.",
        "problems": [
            {"field": "a", "problem": "is wrong"},
            {"field": "b[0].c", "problem": "Field required"},
        ],
    }
    one = mapping.render_problems(problems[:1])["message"]
    assert one == "The submission has 1 problem and nothing was stored or sent."


# --- Round trips --------------------------------------------------------------------

_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5))])
# hypothesis takes naive bounds and puts the drawn zone on the result itself.
_MOMENTS = st.datetimes(
    min_value=datetime(2020, 1, 1),  # noqa: DTZ001 - a naive bound, see above
    max_value=datetime(2035, 1, 1),  # noqa: DTZ001 - a naive bound, see above
    timezones=_ZONES,
)
_DATES = st.dates(min_value=date(2020, 1, 1), max_value=date(2035, 1, 1))
_TEXT = st.text(min_size=1, max_size=40)
_IDS = st.uuids().map(str)
_AGENCIES = st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}", fullmatch=True)
_STAFF = st.from_regex(r"[A-Za-z0-9._@-]{1,20}", fullmatch=True)
_PHONES = st.from_regex(r"\+?[0-9][0-9 -]{4,20}", fullmatch=True)
_ROLES = st.text(min_size=1, max_size=30)
_LEGAL = st.from_regex(r"[a-z0-9][a-z0-9._-]{1,20}", fullmatch=True)


@st.composite
def _identity_numbers(draw: st.DrawFn) -> str:
    """A child's number, normalised: a personnummer or a samordningsnummer (day + 60)."""
    born = draw(st.dates(min_value=date(2008, 11, 26), max_value=TODAY))
    day = born.day + (60 if draw(st.booleans()) else 0)
    nine = f"{born:%y%m}{day:02d}{draw(st.integers(0, 999)):03d}"
    return f"{born.year}{nine[2:]}{luhn_check_digit(nine)}"


_CHILDREN = st.builds(
    ChildIdentity,
    identity_number=_identity_numbers(),
    given_name=st.none() | _TEXT,
    family_name=st.none() | _TEXT,
)
_STAFF_ROLES = st.builds(StaffRole, staff_id=_STAFF, role=_ROLES)


@st.composite
def _referrals(draw: st.DrawFn) -> Referral:
    areas = draw(st.lists(st.sampled_from(NeedArea), min_size=1, max_size=8, unique=True))
    return Referral(
        child=draw(_CHILDREN),
        needs=[Need(area=area, description=draw(_TEXT)) for area in areas],
        summary=draw(_TEXT),
        requested_support=draw(_TEXT),
        urgency=draw(st.sampled_from(Urgency)),
        contact=Contact(staff_id=draw(_STAFF), role=draw(_ROLES), phone=draw(st.none() | _PHONES)),
        guardians_informed=draw(st.booleans()),
        respond_by=draw(st.none() | _MOMENTS),
    )


@st.composite
def _invitations(draw: st.DrawFn) -> TeamInvitation:
    meeting = draw(_MOMENTS)
    ahead = draw(st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=30)))
    return TeamInvitation(
        child=draw(_CHILDREN),
        meeting_at=meeting,
        place=draw(_TEXT),
        invited_roles=draw(st.lists(_ROLES, min_size=1, max_size=4, unique=True)),
        agenda=draw(_TEXT),
        respond_by=meeting - ahead,
    )


@st.composite
def _responses(draw: st.DrawFn) -> TeamResponse:
    if draw(st.booleans()):
        return TeamResponse(
            invitation_id=draw(_IDS), answer=Answer.ACCEPTED, attendee=draw(_STAFF_ROLES)
        )
    return TeamResponse(
        invitation_id=draw(_IDS),
        answer=Answer.DECLINED,
        decline_reason=draw(st.sampled_from(DeclineReason)),
        decline_detail=draw(st.none() | _TEXT),
    )


@st.composite
def _concern_reports(draw: st.DrawFn) -> ConcernReport:
    return ConcernReport(
        child=draw(_CHILDREN),
        observations=draw(_TEXT),
        need_areas=draw(st.lists(st.sampled_from(NeedArea), max_size=8, unique=True)),
        immediate_danger=draw(st.booleans()),
        reporter=draw(_STAFF_ROLES),
        guardians_informed=draw(st.booleans()),
        child_informed=draw(st.booleans()),
    )


_GOALS = st.builds(
    PlanGoal,
    area=st.sampled_from(NeedArea),
    goal=_TEXT,
    responsible_agency=_AGENCIES,
    follow_up=_DATES,
)


@st.composite
def _plan_updates(draw: st.DrawFn) -> PlanUpdate:
    return PlanUpdate(
        child=draw(_CHILDREN),
        plan_id=draw(_IDS),
        version=draw(st.integers(1, 1_000_000)),
        goals=draw(st.lists(_GOALS, min_size=1, max_size=4)),
        next_review=draw(_DATES),
    )


_CONTENTS: dict[Kind, st.SearchStrategy[SubmittedContent]] = {
    Kind.REFERRAL: _referrals(),
    Kind.TEAM_INVITATION: _invitations(),
    Kind.TEAM_RESPONSE: _responses(),
    Kind.CONCERN_REPORT: _concern_reports(),
    Kind.PLAN_UPDATE: _plan_updates(),
}
_LEGAL_BASES = st.builds(LegalBasis, type=st.just("legal"), ref=_LEGAL)
_CONSENTS = st.builds(ConsentBasis, type=st.just("consent"), consent_id=_IDS)


@st.composite
def _submissions(draw: st.DrawFn) -> Submission:
    """Any valid submission of any submittable kind."""
    kind = draw(st.sampled_from(list(_CONTENTS)))
    content = draw(_CONTENTS[kind])
    in_reply_to = content.invitation_id if isinstance(content, TeamResponse) else None
    return Submission(
        kind=kind,
        content=content,
        recipients=tuple(draw(st.lists(_AGENCIES, min_size=1, max_size=5, unique=True))),
        basis=draw(_LEGAL_BASES | _CONSENTS),
        purpose=draw(st.sampled_from(Purpose)),
        in_reply_to=in_reply_to or draw(st.none() | _IDS),
        expires=draw(st.none() | _MOMENTS),
    )


@st.composite
def _police_reports(draw: st.DrawFn) -> Submission:
    """Any concern report the police form can hold: legal basis, purpose concern, no reply."""
    return Submission(
        kind=Kind.CONCERN_REPORT,
        content=draw(_concern_reports()),
        recipients=tuple(draw(st.lists(_AGENCIES, min_size=1, max_size=3, unique=True))),
        basis=draw(_LEGAL_BASES),
        purpose=Purpose.CONCERN,
        expires=draw(st.none() | _MOMENTS),
    )


def _over_the_wire(body: dict[str, Any]) -> object:
    return json.loads(json.dumps(body))


@settings(max_examples=150, deadline=None)
@given(submission=_submissions())
def test_the_canonical_form_round_trips(submission: Submission) -> None:
    """Parsing the canonical JSON of any valid submission gives that submission back."""
    body = _over_the_wire(CANONICAL_JSON.render_submission(submission))
    assert CANONICAL_JSON.parse(body, today=TODAY) == submission


@settings(max_examples=100, deadline=None)
@given(submission=_submissions())
def test_the_school_form_round_trips(submission: Submission) -> None:
    """The school form holds every submission, and parsing it gives the same submission back."""
    body = _over_the_wire(SCHOOL_FORM.render_submission(submission))
    assert SCHOOL_FORM.parse(body, today=TODAY) == submission


@settings(max_examples=60, deadline=None)
@given(submission=_police_reports())
def test_the_police_form_round_trips(submission: Submission) -> None:
    """A concern report on a legal basis survives the police form unchanged."""
    body = _over_the_wire(POLICE_JSON.render_submission(submission))
    assert POLICE_JSON.parse(body, today=TODAY) == submission


@settings(max_examples=60, deadline=None)
@given(number=_identity_numbers(), digits=st.sampled_from([10, 12]), dash=st.booleans())
def test_any_written_form_normalises_to_the_same_twelve_digits(
    number: str, digits: int, dash: bool
) -> None:
    """However a child's number is written, the canonical form carries the same 12 digits on."""
    written = number[-digits:]
    if dash:
        written = f"{written[:-4]}-{written[-4:]}"
    body = _example("canonical-concern_report")
    body["content"]["child"]["identity_number"] = written
    content = CANONICAL_JSON.parse(body, today=TODAY).content
    assert isinstance(content, ConcernReport)
    assert content.child.identity_number == number
