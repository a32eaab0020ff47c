"""The ``fhir`` mapping: FHIR R4 for primary care (BVC, MVC, vårdcentral, UMO) and BUP.

A health care system sends a referral as a FHIR ``ServiceRequest`` (with the
child as a contained ``Patient`` and, where consent is the basis, a contained
``Consent``) or as a ``Bundle`` that holds those resources as entries; it
reads back the status of what it sent as a ``Bundle`` of ``Task`` resources
(one per recipient), a received referral as a ``Bundle`` with a
``ServiceRequest`` and a ``Task``, and every refusal as an
``OperationOutcome``. docs/adapters/health.md is the profile in prose: each
element, its code system and whether it is required.

The models are ``fhir.resources.R4B`` (FHIR 4.3.0): for ServiceRequest,
Patient, Consent, Organization, Practitioner, Task, Bundle and
OperationOutcome, R4B is the same as R4 (4.0.1), so what is accepted and
produced here is plain R4. The models check structure and data types; this
module checks the required value sets of the codes it reads and what a
referral needs beyond FHIR.

A body with a top-level ``kind`` and no ``resourceType`` is the canonical JSON
form and goes to ``adapters.mappings.canonical_json`` unchanged, so a health
care system can send the kinds FHIR has no resource for here (an orosanmälan,
a team response); received messages of those kinds come back in that form too.

Must never: do I/O, log, or put a submitted value (a personnummer above all)
into a problem; problems name the FHIR element (a FHIRPath) and what is wrong.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final, Literal, TypeVar

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.extension import Extension
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import TypeAdapter, ValidationError

from adapters.canonical import (
    DEFAULT_PURPOSE,
    FieldProblem,
    InvalidSubmission,
    Received,
    SentTimeline,
    Submission,
    recipient_event,
)
from adapters.mappings.canonical_json import CANONICAL_JSON
from keys.errors import PersonnummerError
from keys.personnummer import parse_identity_number
from schemas.common import AgencyId, MessageId
from schemas.content import NEED_AREA_LABELS, NeedArea, Referral, Urgency
from schemas.envelope import MAX_RECIPIENTS, ConsentBasis, Kind, LegalBasis, LegalBasisCode
from schemas.reasons import REASON_TEXT, ReasonCode
from schemas.receipts import Answer, DeclineReason, ReceiptStatus

__all__ = [
    "AGENCY_SYSTEM",
    "CONSENT_SYSTEM",
    "CONTACT_PHONE_URL",
    "CONTACT_ROLE_URL",
    "DECLINE_REASON_SYSTEM",
    "FHIR_R4",
    "GUARDIANS_INFORMED_URL",
    "HSA_ID_SYSTEM",
    "LEGAL_BASIS_URL",
    "MESSAGE_SYSTEM",
    "NEED_AREA_SYSTEM",
    "PERSONNUMMER_SYSTEM",
    "REASON_SYSTEM",
    "RESPOND_BY_URL",
    "SAMORDNINGSNUMMER_SYSTEM",
    "STAFF_SYSTEM",
    "STATUS_SYSTEM",
    "THREAD_SYSTEM",
    "FhirMapping",
    "FhirProblem",
    "IssueCode",
]

# --- Code systems, identifier systems and extensions (docs/adapters/health.md) ---

#: Personnummer (Skatteverket; SKV 704), as Swedish FHIR profiles name it.
PERSONNUMMER_SYSTEM: Final = "urn:oid:1.2.752.129.2.1.3.1"
#: Samordningsnummer (SKV 707).
SAMORDNINGSNUMMER_SYSTEM: Final = "urn:oid:1.2.752.129.2.1.3.3"
#: HSA-id, the staff identifier of Swedish health care (Inera's HSA catalogue).
HSA_ID_SYSTEM: Final = "urn:oid:1.2.752.29.4.19"
#: A Backa agency id (``Organization`` identifier: performer, owner, requester of a Task).
AGENCY_SYSTEM: Final = "urn:backa:agency"
#: A registered Backa consent id (``Consent.identifier``).
CONSENT_SYSTEM: Final = "urn:backa:consent"
#: A Backa message id (``ServiceRequest.identifier``, ``Task.focus.identifier``).
MESSAGE_SYSTEM: Final = "urn:backa:message"
#: A Backa thread id (``ServiceRequest.requisition``).
THREAD_SYSTEM: Final = "urn:backa:thread"
#: A staff id as the agency knows its own staff (``ServiceRequest.requester.identifier``).
STAFF_SYSTEM: Final = "urn:backa:staff"
#: The eight need areas of the behovskompass (``ServiceRequest.reasonCode``).
NEED_AREA_SYSTEM: Final = "urn:backa:need-area"
#: Backa's own status of a message (``Task.businessStatus``).
STATUS_SYSTEM: Final = "urn:backa:status"
#: A Backa reason code for a rejection (``Task.statusReason``).
REASON_SYSTEM: Final = "urn:backa:reason"
#: Why a recipient declined (``Task.statusReason``).
DECLINE_REASON_SYSTEM: Final = "urn:backa:decline-reason"
#: Extension on ServiceRequest: the legal basis code of the policy file (``valueCode``).
LEGAL_BASIS_URL: Final = "urn:backa:legal-basis"
#: Extension on ServiceRequest: whether the guardians know of the referral (``valueBoolean``).
GUARDIANS_INFORMED_URL: Final = "urn:backa:guardians-informed"
#: Extension on ServiceRequest: when the sender needs an answer (``valueDateTime``).
RESPOND_BY_URL: Final = "urn:backa:respond-by"
#: Extension on ServiceRequest.requester: the contact's role (``valueString``).
CONTACT_ROLE_URL: Final = "urn:backa:contact-role"
#: Extension on ServiceRequest.requester: the contact's telephone number (``valueString``).
CONTACT_PHONE_URL: Final = "urn:backa:contact-phone"

_TASK_CODE_SYSTEM: Final = "http://hl7.org/fhir/CodeSystem/task-code"
_CONSENT_SCOPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/consentscope"
_LOINC: Final = "http://loinc.org"

#: FHIR OperationOutcome issue types used: missing, bad value, not FHIR R4.
IssueCode = Literal["required", "invalid", "structure"]


@dataclass(frozen=True)
class FhirProblem(FieldProblem):
    """A field problem that knows its OperationOutcome issue type.

    ``loc`` is a FHIRPath into the submitted resource (``ServiceRequest.subject``,
    ``Bundle.entry[1].resource.identifier[0].value``).
    """

    issue: IssueCode = "invalid"


# --- FHIR R4 required value sets of the codes this module reads ---

_REQUEST_STATUS = frozenset(
    {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
)
_REQUEST_INTENT = frozenset(
    {
        "proposal",
        "plan",
        "directive",
        "order",
        "original-order",
        "reflex-order",
        "filler-order",
        "instance-order",
        "option",
    }
)
_CONSENT_STATE = frozenset(
    {"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}
)
_BUNDLE_TYPE = frozenset(
    {
        "document",
        "message",
        "transaction",
        "transaction-response",
        "batch",
        "batch-response",
        "history",
        "searchset",
        "collection",
    }
)
#: Bundle types that carry a submission; the others are responses or results.
_SUBMITTED_BUNDLE_TYPES = frozenset({"collection", "transaction", "message"})

#: FHIR request priority → Backa urgency. ``asap`` and ``stat`` both mean "act now".
_URGENCY_OF_PRIORITY: dict[str, Urgency] = {
    "routine": Urgency.ROUTINE,
    "urgent": Urgency.SOON,
    "asap": Urgency.URGENT,
    "stat": Urgency.URGENT,
}
_PRIORITY_OF_URGENCY: dict[Urgency, str] = {
    Urgency.ROUTINE: "routine",
    Urgency.SOON: "urgent",
    Urgency.URGENT: "asap",
}

#: Pydantic and fhir.resources error types that mean "this element is missing".
_MISSING_ERRORS = frozenset({"missing", "model_field_validation.missing"})

# A defence in depth: the library's messages are not ours to promise anything
# about, so any run of six or more digits (a birth date, a whole number) goes.
_DIGIT_RUN = re.compile(r"[0-9][0-9+-]{4,}[0-9]")

#: A FHIR element name (``_`` for a primitive's extensions); anything else is shown as ``<key>``.
_ELEMENT_NAME = re.compile(r"_?[A-Za-z][A-Za-z0-9]{0,63}")

_AGENCY_ID: TypeAdapter[str] = TypeAdapter(AgencyId)
_MESSAGE_ID: TypeAdapter[str] = TypeAdapter(MessageId)
_LEGAL_BASIS_CODE: TypeAdapter[str] = TypeAdapter(LegalBasisCode)

#: Samordningsnummer days are the day of birth plus 60 (SKV 707).
_SAMORDNING_FIRST_DAY = 61


def _strip_oid(system: str | None) -> str | None:
    """A system with its ``urn:oid:`` prefix, whichever way it was written."""
    if system is None or system.startswith("urn:"):
        return system
    return f"urn:oid:{system}" if re.fullmatch(r"[0-9]+(\.[0-9]+)+", system) else system


def _clean(message: str) -> str:
    """One line, no long digit runs: safe for a 422 body whatever produced it."""
    return _DIGIT_RUN.sub("<redacted>", " ".join(message.split()))


# --- Where each resource of a submission is, and how references resolve ---

_R = TypeVar("_R", bound=Resource)


@dataclass(frozen=True)
class _Found:
    """A resource of the submission and its FHIRPath; ``top`` is its top-level resource's path."""

    path: str
    resource: Resource
    top: str


@dataclass
class _Document:
    """The resources of one submission, indexed the ways a reference can name them."""

    request: _Found
    service_request: ServiceRequest
    raw_request: dict[str, Any]
    resources: list[_Found] = field(default_factory=list)
    contained: dict[tuple[str, str], _Found] = field(default_factory=dict)
    by_url: dict[str, _Found] = field(default_factory=dict)

    def add_top(self, found: _Found, full_url: str | None) -> None:
        self.resources.append(found)
        if full_url:
            self.by_url[full_url] = found
        if found.resource.id:
            # A relative reference ("Patient/p1") names a Bundle entry by type and id.
            self.by_url.setdefault(
                f"{found.resource.get_resource_type()}/{found.resource.id}", found
            )
        for index, inner in enumerate(getattr(found.resource, "contained", None) or []):
            located = _Found(f"{found.path}.contained[{index}]", inner, found.path)
            self.resources.append(located)
            if inner.id:
                self.contained.setdefault((found.path, inner.id), located)

    def resolve(self, reference: str, source: _Found) -> _Found | None:
        """The resource a literal reference names, within this submission only."""
        if reference.startswith("#"):
            return self.contained.get((source.top, reference[1:]))
        reference = reference.split("/_history/", maxsplit=1)[0]
        found = self.by_url.get(reference)
        if found is not None:
            return found
        # A relative reference also matches an absolute fullUrl that ends in it.
        for url, candidate in self.by_url.items():
            if "://" in url and url.endswith(f"/{reference}"):
                return candidate
        return None

    def of_type(self, kind: type[_R]) -> list[tuple[_Found, _R]]:
        return [
            (found, found.resource) for found in self.resources if isinstance(found.resource, kind)
        ]


# --- Reading a submission ---


class _Reader:
    """Reads a referral out of a valid FHIR document, collecting every problem."""

    def __init__(self, document: _Document, *, today: date) -> None:
        self.doc = document
        self.today = today
        self.problems: list[FieldProblem] = []
        #: Where the Patient the referral is about is, once found.
        self.patient_path: str | None = None
        #: Canonical field (dotted, as pydantic reports it) → the FHIRPath it came from.
        self.where: dict[str, str] = {}

    def required(self, loc: str, message: str) -> None:
        self.problems.append(FhirProblem(loc=loc, message=message, issue="required"))

    def invalid(self, loc: str, message: str) -> None:
        self.problems.append(FhirProblem(loc=loc, message=message, issue="invalid"))

    def structure(self, loc: str, message: str) -> None:
        self.problems.append(FhirProblem(loc=loc, message=message, issue="structure"))

    # -- ServiceRequest header --

    def check_request(self) -> None:
        request = self._request
        base = self.doc.request.path
        if request.status not in _REQUEST_STATUS:
            self.structure(f"{base}.status", "is not a FHIR R4 request-status code")
        elif request.status != "active":
            self.invalid(f"{base}.status", "must be 'active': only an active request is sent")
        if request.intent not in _REQUEST_INTENT:
            self.structure(f"{base}.intent", "is not a FHIR R4 request-intent code")
        elif request.intent != "order":
            self.invalid(f"{base}.intent", "must be 'order': a referral asks the recipient to act")

    @property
    def _request(self) -> ServiceRequest:
        return self.doc.service_request

    # -- The child --

    def child(self) -> dict[str, str]:
        """The child's identity (12 digits) and names from ``ServiceRequest.subject``."""
        base = f"{self.doc.request.path}.subject"
        subject = self._request.subject
        patient: _Found | None = None
        if subject.reference is not None:
            if subject.type not in (None, "Patient"):
                self.invalid(f"{base}.type", "must be 'Patient': a referral is about a child")
                return {}
            patient = self.doc.resolve(subject.reference, self.doc.request)
            if patient is None or not isinstance(patient.resource, Patient):
                self.invalid(
                    f"{base}.reference",
                    "does not resolve to a Patient in the submission: contain the Patient "
                    "('#id') or send it as a Bundle entry",
                )
                return {}
            self.patient_path = patient.path
            identifiers = patient.resource.identifier or []
            where = f"{patient.path}.identifier"
        elif subject.identifier is not None:
            identifiers = [subject.identifier]
            where = f"{base}.identifier"
        else:
            self.required(
                base,
                "names no child: reference a Patient or give the child's personnummer as "
                "subject.identifier",
            )
            return {}
        child: dict[str, str] = {}
        number = self._identity_number(identifiers, where, single=subject.reference is None)
        if number is not None:
            child["identity_number"] = number
        if patient is not None and isinstance(patient.resource, Patient):
            child.update(self._names(patient.resource, patient.path))
        return child

    def _identity_number(
        self, identifiers: Sequence[Identifier], where: str, *, single: bool
    ) -> str | None:
        found: list[tuple[str, str]] = []
        for index, identifier in enumerate(identifiers):
            loc = where if single else f"{where}[{index}]"
            system = _strip_oid(identifier.system)
            if system not in (PERSONNUMMER_SYSTEM, SAMORDNINGSNUMMER_SYSTEM):
                continue
            if not identifier.value:
                self.required(f"{loc}.value", "the personnummer or samordningsnummer is missing")
                continue
            try:
                parsed = parse_identity_number(identifier.value, today=self.today)
            except PersonnummerError as exc:
                what = "samordningsnummer" if system == SAMORDNINGSNUMMER_SYSTEM else "personnummer"
                self.invalid(f"{loc}.value", f"is not a valid {what}: {exc}")
                continue
            if parsed.is_samordningsnummer and system == PERSONNUMMER_SYSTEM:
                self.invalid(
                    f"{loc}.system",
                    "the number is a samordningsnummer (day of birth plus 60): "
                    f"use system {SAMORDNINGSNUMMER_SYSTEM}",
                )
                continue
            if not parsed.is_samordningsnummer and system == SAMORDNINGSNUMMER_SYSTEM:
                self.invalid(
                    f"{loc}.system",
                    f"the number is a personnummer, not a samordningsnummer: "
                    f"use system {PERSONNUMMER_SYSTEM}",
                )
                continue
            found.append((f"{loc}.value", parsed.normalised))
        numbers = {number for _, number in found}
        if len(numbers) > 1:
            self.invalid(where, "names more than one personnummer or samordningsnummer")
            return None
        if found:
            self.where["child.identity_number"] = found[0][0]
            return found[0][1]
        if not any(problem.loc.startswith(where) for problem in self.problems):
            self.required(
                where,
                f"has no personnummer ({PERSONNUMMER_SYSTEM}) or samordningsnummer "
                f"({SAMORDNINGSNUMMER_SYSTEM})",
            )
        return None

    def _names(self, patient: Patient, path: str) -> dict[str, str]:
        names = patient.name or []
        if not names:
            return {}
        index, name = next(
            ((i, n) for i, n in enumerate(names) if n.use == "official"), (0, names[0])
        )
        result: dict[str, str] = {}
        given = [part for part in name.given or [] if part]
        if given:
            result["given_name"] = " ".join(given)
            self.where["child.given_name"] = f"{path}.name[{index}].given"
        if name.family:
            result["family_name"] = name.family
            self.where["child.family_name"] = f"{path}.name[{index}].family"
        return result

    # -- Recipients --

    def recipients(self) -> list[str]:
        base = f"{self.doc.request.path}.performer"
        performers = self._request.performer or []
        if not performers:
            self.required(
                base,
                "names no recipient: give each recipient agency as an Organization with "
                f"identifier system {AGENCY_SYSTEM}",
            )
            return []
        agencies: list[str] = []
        for index, performer in enumerate(performers):
            loc = f"{base}[{index}]"
            agency = self._agency(performer, loc)
            if agency is None:
                continue
            if agency in agencies:
                self.invalid(loc, "names the same agency twice")
                continue
            agencies.append(agency)
        if len(agencies) > MAX_RECIPIENTS:
            self.invalid(base, f"names more than {MAX_RECIPIENTS} recipients")
        return agencies

    def _agency(self, performer: Reference, loc: str) -> str | None:
        if performer.type not in (None, "Organization"):
            self.invalid(f"{loc}.type", "must be 'Organization': recipients are agencies")
            return None
        candidates: list[tuple[str, Identifier]] = []
        if performer.identifier is not None:
            candidates.append((f"{loc}.identifier", performer.identifier))
        if performer.reference is not None:
            found = self.doc.resolve(performer.reference, self.doc.request)
            if found is None or not isinstance(found.resource, Organization):
                self.invalid(
                    f"{loc}.reference",
                    "does not resolve to an Organization in the submission",
                )
                return None
            candidates.extend(
                (f"{found.path}.identifier[{i}]", identifier)
                for i, identifier in enumerate(found.resource.identifier or [])
            )
        for where, identifier in candidates:
            if identifier.system != AGENCY_SYSTEM:
                continue
            try:
                return _AGENCY_ID.validate_python(identifier.value)
            except ValidationError:
                self.invalid(
                    f"{where}.value",
                    "is not a Backa agency id (lower-case letters, digits and hyphens)",
                )
                return None
        self.required(
            f"{loc}.identifier",
            f"names no Backa agency: give an identifier with system {AGENCY_SYSTEM}",
        )
        return None

    # -- Basis --

    def basis(self) -> ConsentBasis | LegalBasis | None:
        base = self.doc.request.path
        consents = self.doc.of_type(Consent)
        legal = self._extensions(self._request.extension, base, LEGAL_BASIS_URL)
        if consents and legal:
            self.invalid(
                legal[0][0],
                "names a legal basis beside a Consent: send one basis, a consent or a legal basis",
            )
        elif len(consents) > 1:
            self.invalid(consents[1][0].path, "is a second Consent: a referral has one basis")
        elif len(legal) > 1:
            self.invalid(legal[1][0], "names a second legal basis: a referral has one basis")
        elif consents:
            return self._consent(*consents[0])
        elif legal:
            return self._legal(*legal[0])
        else:
            self.required(
                base,
                "names no basis: include a Consent (identifier system "
                f"{CONSENT_SYSTEM}) or the extension {LEGAL_BASIS_URL}",
            )
        return None

    def _legal(self, loc: str, extension: Extension) -> LegalBasis | None:
        try:
            code = _LEGAL_BASIS_CODE.validate_python(extension.valueCode)
        except ValidationError:
            self.invalid(
                f"{loc}.valueCode",
                "must be a legal basis code of the area's policy (e.g. 'osl-25-12')",
            )
            return None
        # Whether the code exists and allows this referral is policy: the broker decides.
        return LegalBasis(type="legal", ref=code)

    def _consent(self, found: _Found, consent: Consent) -> ConsentBasis | None:
        ok = True
        if consent.status not in _CONSENT_STATE:
            self.structure(f"{found.path}.status", "is not a FHIR R4 consent-state code")
            ok = False
        elif consent.status != "active":
            self.invalid(f"{found.path}.status", "must be 'active' to be a basis for sharing")
            ok = False
        if consent.patient is not None and consent.patient.reference is not None:
            about = self.doc.resolve(consent.patient.reference, found)
            if (
                about is not None
                and self.patient_path is not None
                and about.path != (self.patient_path)
            ):
                self.invalid(f"{found.path}.patient", "is not the Patient the referral is about")
                ok = False
        ids = [
            (f"{found.path}.identifier[{i}]", identifier)
            for i, identifier in enumerate(consent.identifier or [])
            if identifier.system == CONSENT_SYSTEM
        ]
        if not ids:
            self.required(
                f"{found.path}.identifier",
                f"has no Backa consent id: give an identifier with system {CONSENT_SYSTEM}",
            )
            return None
        if len({identifier.value for _, identifier in ids}) > 1:
            self.invalid(f"{found.path}.identifier", "names more than one Backa consent id")
            return None
        loc, identifier = ids[0]
        try:
            consent_id = _MESSAGE_ID.validate_python(identifier.value)
        except ValidationError:
            self.invalid(
                f"{loc}.value", "is not a Backa consent id (a lower-case UUID, as registered)"
            )
            return None
        return ConsentBasis(type="consent", consent_id=consent_id) if ok else None

    # -- Content --

    def needs(self) -> list[dict[str, Any]]:
        base = f"{self.doc.request.path}.reasonCode"
        needs: list[dict[str, Any]] = []
        seen: set[NeedArea] = set()
        for index, reason in enumerate(self._request.reasonCode or []):
            loc = f"{base}[{index}]"
            codings = [
                (i, c) for i, c in enumerate(reason.coding or []) if c.system == NEED_AREA_SYSTEM
            ]
            if not codings:
                continue  # other reasons (e.g. diagnoses) are not carried: data minimisation
            if len(codings) > 1:
                self.invalid(
                    f"{loc}.coding", "names more than one need area: use one reasonCode each"
                )
                continue
            coding_index, coding = codings[0]
            try:
                area = NeedArea(coding.code or "")
            except ValueError:
                self.invalid(
                    f"{loc}.coding[{coding_index}].code",
                    "is not a need area: " + ", ".join(area.value for area in NeedArea),
                )
                continue
            if area in seen:
                self.invalid(f"{loc}.coding[{coding_index}].code", "names a need area twice")
                continue
            seen.add(area)
            if not reason.text:
                self.required(f"{loc}.text", "describe what was seen in this need area")
                continue
            self.where[f"needs.{len(needs)}.description"] = f"{loc}.text"
            needs.append({"area": area, "description": reason.text})
        if not needs and not any(p.loc.startswith(base) for p in self.problems):
            self.required(
                base,
                f"names no need area: add a reasonCode with a coding in {NEED_AREA_SYSTEM} "
                "and a text",
            )
        return needs

    def texts(self) -> dict[str, Any]:
        request = self._request
        base = self.doc.request.path
        result: dict[str, Any] = {}
        notes = [note.text for note in request.note or [] if note.text]
        if notes:
            # Several notes are one summary: nothing the sender wrote is dropped.
            result["summary"] = "\n\n".join(notes)
            self.where["summary"] = f"{base}.note"
        else:
            self.required(f"{base}.note", "has no summary: give it as note[0].text")
        code = request.code
        display = (
            next((c.display for c in (code.coding or []) if c.display), None) if code else None
        )
        if code is not None and code.text:
            result["requested_support"] = code.text
            self.where["requested_support"] = f"{base}.code.text"
        elif display:
            result["requested_support"] = display
            self.where["requested_support"] = f"{base}.code.coding"
        else:
            self.required(f"{base}.code.text", "say what support is requested of the recipient")
        priority = request.priority or "routine"  # FHIR: missing means normal priority
        if priority in _URGENCY_OF_PRIORITY:
            result["urgency"] = _URGENCY_OF_PRIORITY[priority]
        else:
            self.structure(f"{base}.priority", "is not a FHIR R4 request-priority code")
        return result

    def contact(self) -> dict[str, Any]:
        base = f"{self.doc.request.path}.requester"
        requester = self._request.requester
        if requester is None:
            self.required(
                base,
                "names no contact: give the Practitioner's staff id as requester.identifier "
                f"({STAFF_SYSTEM} or HSA-id) and the extension {CONTACT_ROLE_URL}",
            )
            return {}
        contact: dict[str, Any] = {}
        staff = self._staff_id(requester, base)
        if staff is not None:
            contact["staff_id"] = staff
        roles = self._extensions(requester.extension, base, CONTACT_ROLE_URL)
        if not roles:
            self.required(
                f"{base}.extension",
                f"has no role: add the extension {CONTACT_ROLE_URL} (valueString)",
            )
        elif (role := self._one_string(roles, "role")) is not None:
            contact["role"] = role
            self.where["contact.role"] = f"{roles[0][0]}.valueString"
        phones = self._extensions(requester.extension, base, CONTACT_PHONE_URL)
        if phones and (phone := self._one_string(phones, "telephone number")) is not None:
            contact["phone"] = phone
            self.where["contact.phone"] = f"{phones[0][0]}.valueString"
        return contact

    def _staff_id(self, requester: Reference, base: str) -> str | None:
        if requester.type not in (None, "Practitioner"):
            self.invalid(f"{base}.type", "must be 'Practitioner': the contact is a person")
            return None
        candidates: list[tuple[str, Identifier]] = []
        if requester.identifier is not None:
            candidates.append((f"{base}.identifier", requester.identifier))
        if requester.reference is not None:
            found = self.doc.resolve(requester.reference, self.doc.request)
            if found is None or not isinstance(found.resource, Practitioner):
                self.invalid(
                    f"{base}.reference", "does not resolve to a Practitioner in the submission"
                )
                return None
            candidates.extend(
                (f"{found.path}.identifier[{i}]", identifier)
                for i, identifier in enumerate(found.resource.identifier or [])
            )
        for where, identifier in candidates:
            if _strip_oid(identifier.system) in (STAFF_SYSTEM, HSA_ID_SYSTEM) and identifier.value:
                self.where["contact.staff_id"] = f"{where}.value"
                return identifier.value
        self.required(
            f"{base}.identifier",
            f"names no staff id: give an identifier with system {STAFF_SYSTEM} or "
            f"{HSA_ID_SYSTEM} (HSA-id), never a personnummer",
        )
        return None

    def flags(self) -> dict[str, Any]:
        base = self.doc.request.path
        result: dict[str, Any] = {}
        informed = self._extensions(self._request.extension, base, GUARDIANS_INFORMED_URL)
        raw = self.doc.raw_request.get("extension")
        if not informed:
            self.required(
                f"{base}.extension",
                f"does not say whether the guardians are informed: add the extension "
                f"{GUARDIANS_INFORMED_URL} (valueBoolean)",
            )
        elif len(informed) > 1:
            self.invalid(informed[1][0], "repeats the extension: give it once")
        else:
            loc, _ = informed[0]
            index = int(loc.rsplit("[", 1)[1].rstrip("]"))
            # Read from the JSON itself: the models accept "yes" for a boolean,
            # and whether the guardians know is a fact worth a real true/false.
            value = raw[index].get("valueBoolean") if isinstance(raw, list) else None
            if isinstance(value, bool):
                result["guardians_informed"] = value
            else:
                self.invalid(f"{loc}.valueBoolean", "must be a JSON boolean, true or false")
        respond = self._extensions(self._request.extension, base, RESPOND_BY_URL)
        if len(respond) > 1:
            self.invalid(respond[1][0], "repeats the extension: give it once")
        elif respond:
            loc, extension = respond[0]
            value = extension.valueDateTime
            if isinstance(value, datetime) and value.tzinfo is not None:
                result["respond_by"] = value
                self.where["respond_by"] = f"{loc}.valueDateTime"
            else:
                self.invalid(
                    f"{loc}.valueDateTime", "must be a date and time with a time zone offset"
                )
        return result

    # -- Helpers --

    @staticmethod
    def _extensions(
        extensions: list[Extension] | None, base: str, url: str
    ) -> list[tuple[str, Extension]]:
        return [
            (f"{base}.extension[{index}]", extension)
            for index, extension in enumerate(extensions or [])
            if extension.url == url
        ]

    def _one_string(self, found: list[tuple[str, Extension]], what: str) -> str | None:
        if len(found) > 1:
            self.invalid(found[1][0], "repeats the extension: give it once")
            return None
        loc, extension = found[0]
        if not extension.valueString:
            self.invalid(f"{loc}.valueString", f"give the {what} as valueString")
            return None
        return extension.valueString

    def referral(self, data: dict[str, Any]) -> Referral | None:
        """The Referral, with its own checks (lengths, patterns) mapped back to FHIRPaths."""
        try:
            return Referral.model_validate(data)
        except ValidationError as exc:
            before = len(self.problems)
            for error in exc.errors(include_url=False, include_input=False, include_context=False):
                canonical = ".".join(str(part) for part in error["loc"])
                loc = self._where(canonical)
                if loc is not None:
                    self.invalid(loc, _clean(str(error["msg"])))
            if len(self.problems) == before and not self.problems:
                # Only reached if a check here forgot something the model requires.
                self.invalid(self.doc.request.path, "does not make a complete referral")
            return None

    def _where(self, canonical: str) -> str | None:
        parts = canonical.split(".")
        while parts:
            loc = self.where.get(".".join(parts))
            if loc is not None:
                return loc
            parts.pop()
        return None


def _read_referral(document: _Document, *, today: date) -> Submission:
    reader = _Reader(document, today=today)
    reader.check_request()
    child = reader.child()
    recipients = reader.recipients()
    basis = reader.basis()
    needs = reader.needs()
    data: dict[str, Any] = {"child": child, "needs": needs, **reader.texts()}
    data["contact"] = reader.contact()
    data.update(reader.flags())
    referral = reader.referral(data)
    if reader.problems:
        raise InvalidSubmission(reader.problems)
    assert referral is not None  # noqa: S101 - no problems means a referral
    assert basis is not None  # noqa: S101 - and a basis
    return Submission(
        kind=Kind.REFERRAL,
        content=referral,
        recipients=tuple(recipients),
        basis=basis,
        purpose=DEFAULT_PURPOSE[Kind.REFERRAL],
    )


# --- From JSON to validated FHIR ---


def _key(key: object) -> str:
    """A JSON key as a path segment; a key that is no element name may be data, so it is hidden."""
    return key if isinstance(key, str) and _ELEMENT_NAME.fullmatch(key) else "<key>"


def _fhir_path(root: str, loc: Iterable[int | str]) -> str:
    path = root
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "resource_type":
            path += ".resourceType"
        elif part != "root":  # fhir.resources' own validators report at "root"
            path += f".{_key(part)}"
    return path


def _unknown_resource_types(body: dict[str, Any], root: str) -> list[FieldProblem]:
    """Resource types fhir.resources cannot look up; it fails on them with a KeyError."""
    problems: list[FieldProblem] = []
    stack: list[tuple[str, Any]] = [(root, body)]
    while stack:  # iterative: a deeply nested body must not exhaust the stack
        path, value = stack.pop()
        if isinstance(value, dict):
            if path != root and "resourceType" in value:
                name = value["resourceType"]
                try:
                    known = isinstance(name, str) and get_fhir_model_class(name) is not None
                except ValueError:
                    known = False
                if not known:
                    problems.append(
                        FhirProblem(
                            loc=f"{path}.resourceType",
                            message="is not a FHIR R4 resource type",
                            issue="structure",
                        )
                    )
                    continue
            stack.extend((f"{path}.{_key(key)}", item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))
    return sorted(problems, key=lambda problem: problem.loc)


def _validate(body: dict[str, Any]) -> ServiceRequest | Bundle:
    root = body.get("resourceType")
    model: type[ServiceRequest] | type[Bundle]
    if root == "ServiceRequest":
        model = ServiceRequest
    elif root == "Bundle":
        model = Bundle
    else:
        raise InvalidSubmission(
            [
                FhirProblem(
                    loc="resourceType",
                    message="must be 'ServiceRequest' or 'Bundle' (FHIR R4), or send the "
                    "canonical JSON form with 'kind'",
                    issue="structure",
                )
            ]
        )
    unknown = _unknown_resource_types(body, root)
    if unknown:
        raise InvalidSubmission(unknown)
    problems: list[FieldProblem]
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        problems = [
            FhirProblem(
                loc=_fhir_path(root, error["loc"]),
                message=_clean(str(error["msg"])),
                issue="required" if error["type"] in _MISSING_ERRORS else "structure",
            )
            for error in errors
        ]
    except (KeyError, TypeError):
        # fhir.resources fails this way on shapes its validators do not expect.
        problems = [FhirProblem(loc=root, message="cannot be read as FHIR R4", issue="structure")]
    # Raised outside the except blocks on purpose: pydantic's error text repeats
    # the input, and a chained cause would carry a personnummer into a traceback.
    raise InvalidSubmission(problems)


def _refused(loc: str, message: str, issue: IssueCode) -> InvalidSubmission:
    return InvalidSubmission([FhirProblem(loc=loc, message=message, issue=issue)])


def _document(resource: ServiceRequest | Bundle, body: dict[str, Any]) -> _Document:
    if isinstance(resource, ServiceRequest):
        found = _Found("ServiceRequest", resource, "ServiceRequest")
        document = _Document(request=found, service_request=resource, raw_request=body)
        document.add_top(found, None)
        return document
    return _bundle_document(resource, body)


def _bundle_document(bundle: Bundle, body: dict[str, Any]) -> _Document:
    if bundle.type not in _BUNDLE_TYPE:
        raise _refused("Bundle.type", "is not a FHIR R4 bundle-type code", "structure")
    if bundle.type not in _SUBMITTED_BUNDLE_TYPES:
        raise _refused("Bundle.type", "must be 'collection', 'transaction' or 'message'", "invalid")
    tops = [
        (
            index,
            _Found(
                f"Bundle.entry[{index}].resource", entry.resource, f"Bundle.entry[{index}].resource"
            ),
            entry.fullUrl,
        )
        for index, entry in enumerate(bundle.entry or [])
        if entry.resource is not None
    ]
    requests = [
        (index, found, found.resource)
        for index, found, _ in tops
        if isinstance(found.resource, ServiceRequest)
    ]
    if not requests:
        raise _refused(
            "Bundle.entry", "holds no ServiceRequest: a referral is one ServiceRequest", "required"
        )
    if len(requests) > 1:
        raise _refused(
            requests[1][1].path,
            "is a second ServiceRequest: send one referral per request",
            "invalid",
        )
    index, found, request = requests[0]
    document = _Document(
        request=found, service_request=request, raw_request=body["entry"][index]["resource"]
    )
    for _, top, full_url in tops:
        document.add_top(top, full_url)
    return document


# --- Rendering ---


def _identifier(system: str, value: str) -> dict[str, str]:
    return {"system": system, "value": value}


def _agency_reference(agency: str) -> dict[str, Any]:
    return {"type": "Organization", "identifier": _identifier(AGENCY_SYSTEM, agency)}


def _coded(system: str, code: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": system, "code": code}]}
    if text is not None:
        concept["text"] = text
    return concept


#: FHIR Task.status of a recipient's copy by its Backa status (docs/adapters/health.md).
_TASK_STATUS: dict[ReceiptStatus, str] = {
    ReceiptStatus.ACCEPTED: "requested",  # by the broker: on its way, nobody has it yet
    ReceiptStatus.DELIVERED: "received",
    ReceiptStatus.HANDED_OVER: "received",
    ReceiptStatus.READ: "received",  # a person has it; nobody has decided yet
    ReceiptStatus.REJECTED: "rejected",
    ReceiptStatus.EXPIRED: "cancelled",  # nobody acted before the message expired
}
_TASK_STATUS_OF_ANSWER: dict[Answer, str] = {
    Answer.ACCEPTED: "accepted",
    Answer.DECLINED: "rejected",
}


def _task_status(status: ReceiptStatus | None, answer: Answer | None) -> str:
    """The FHIR Task.status of one recipient's copy."""
    if status is None:
        return "requested"
    if status is ReceiptStatus.ANSWERED:
        return _TASK_STATUS_OF_ANSWER[answer] if answer is not None else "received"
    return _TASK_STATUS[status]


def _status_reason(
    reason: ReasonCode | None, decline_reason: DeclineReason | None
) -> dict[str, Any] | None:
    if decline_reason is not None:
        return _coded(DECLINE_REASON_SYSTEM, decline_reason.value, decline_reason.value)
    if reason is not None:
        return _coded(REASON_SYSTEM, reason.value, REASON_TEXT.get(reason, reason.value))
    return None


def _task_urn(*parts: str) -> str:
    # Deterministic, so the same state renders the same document every time.
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'urn:backa:task:' + '/'.join(parts))}"


def _timeline_task(timeline: SentTimeline, agency: str) -> dict[str, Any]:
    event = recipient_event(timeline, agency)
    status = event.status if event is not None else None
    focus: dict[str, Any] = {"identifier": _identifier(MESSAGE_SYSTEM, timeline.message_id)}
    if timeline.kind is Kind.REFERRAL:
        focus["type"] = "ServiceRequest"
    task: dict[str, Any] = {
        "resourceType": "Task",
        "status": _task_status(status, event.answer if event else None),
        "businessStatus": _coded(
            STATUS_SYSTEM,
            status.value if status is not None else timeline.outbox,
            status.value if status is not None else timeline.outbox,
        ),
        "intent": "order",
        "code": _coded(_TASK_CODE_SYSTEM, "fulfill"),
        "focus": focus,
        "authoredOn": timeline.submitted_at.isoformat(),
        "lastModified": (event.at if event is not None else timeline.submitted_at).isoformat(),
        "owner": _agency_reference(agency),
    }
    if event is not None:
        reason = _status_reason(event.reason, event.decline_reason)
        if reason is not None:
            task["statusReason"] = reason
    return task


def _child_patient(number: str, given: str | None, family: str | None) -> dict[str, Any]:
    # SKV 707: the written day of a samordningsnummer is the day of birth plus 60.
    samordning = int(number[6:8]) >= _SAMORDNING_FIRST_DAY
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "child",
        "identifier": [
            _identifier(SAMORDNINGSNUMMER_SYSTEM if samordning else PERSONNUMMER_SYSTEM, number)
        ],
    }
    name: dict[str, Any] = {}
    if family is not None:
        name["family"] = family
    if given is not None:
        name["given"] = [given]
    if name:
        patient["name"] = [{"use": "official", **name}]
    return patient


def _consent_resource(consent_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": "consent",
        "identifier": [_identifier(CONSENT_SYSTEM, consent_id)],
        "status": "active",
        "scope": _coded(_CONSENT_SCOPE_SYSTEM, "patient-privacy"),
        "category": [_coded(_LOINC, "59284-0")],
        "patient": {"reference": "#child"},
        "policyRule": {"text": "OSL 12 kap. 2 §"},
    }


def _received_request(item: Received, referral: Referral, agency: str | None) -> dict[str, Any]:
    contained = [
        _child_patient(
            referral.child.identity_number, referral.child.given_name, referral.child.family_name
        )
    ]
    extensions: list[dict[str, Any]] = [
        {"url": GUARDIANS_INFORMED_URL, "valueBoolean": referral.guardians_informed}
    ]
    request: dict[str, Any] = {"resourceType": "ServiceRequest"}
    if isinstance(item.basis, ConsentBasis):
        contained.append(_consent_resource(item.basis.consent_id))
        request["supportingInfo"] = [{"reference": "#consent", "type": "Consent"}]
    else:
        extensions.append({"url": LEGAL_BASIS_URL, "valueCode": item.basis.ref})
    if referral.respond_by is not None:
        extensions.append({"url": RESPOND_BY_URL, "valueDateTime": referral.respond_by.isoformat()})
    contact = referral.contact
    contact_extensions: list[dict[str, Any]] = [
        {"url": CONTACT_ROLE_URL, "valueString": contact.role}
    ]
    if contact.phone is not None:
        contact_extensions.append({"url": CONTACT_PHONE_URL, "valueString": contact.phone})
    request.update(
        {
            "contained": contained,
            "extension": extensions,
            "identifier": [_identifier(MESSAGE_SYSTEM, item.message_id)],
            "requisition": _identifier(THREAD_SYSTEM, item.thread),
            "status": "active",
            "intent": "order",
            "priority": _PRIORITY_OF_URGENCY[referral.urgency],
            "code": {"text": referral.requested_support},
            "subject": {"reference": "#child", "type": "Patient"},
            "authoredOn": item.created.isoformat(),
            "requester": {
                "type": "Practitioner",
                "identifier": _identifier(STAFF_SYSTEM, contact.staff_id),
                "extension": contact_extensions,
            },
            "reasonCode": [
                {
                    "coding": [
                        {
                            "system": NEED_AREA_SYSTEM,
                            "code": need.area.value,
                            "display": NEED_AREA_LABELS[need.area],
                        }
                    ],
                    "text": need.description,
                }
                for need in referral.needs
            ],
            "note": [{"text": referral.summary}],
        }
    )
    if agency is not None:
        request["performer"] = [_agency_reference(agency)]
    return request


def _received_task(item: Received, agency: str | None) -> dict[str, Any]:
    task: dict[str, Any] = {
        "resourceType": "Task",
        "status": _task_status(item.state, item.answer),
        "businessStatus": _coded(STATUS_SYSTEM, item.state.value, item.state.value),
        "intent": "order",
        "code": _coded(_TASK_CODE_SYSTEM, "fulfill"),
        "focus": {
            "reference": f"urn:uuid:{item.message_id}",
            "type": "ServiceRequest",
            "identifier": _identifier(MESSAGE_SYSTEM, item.message_id),
        },
        "authoredOn": item.created.isoformat(),
        "lastModified": item.received_at.isoformat(),
        "requester": _agency_reference(item.sender),
    }
    if agency is not None:
        task["owner"] = _agency_reference(agency)
    reason = _status_reason(None, item.decline_reason)
    if reason is not None:
        task["statusReason"] = reason
    return task


def _bundle(entries: list[tuple[str, dict[str, Any]]], identifier: str | None) -> dict[str, Any]:
    """A collection Bundle, checked against the R4B models before it leaves."""
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": url, "resource": resource} for url, resource in entries],
    }
    if identifier is not None:
        bundle["identifier"] = _identifier(MESSAGE_SYSTEM, identifier)
    return Bundle.model_validate(bundle).model_dump(mode="json")


# --- The mapping ---


class FhirMapping:
    """FHIR R4 (R4B models) for health care: ServiceRequest in, Task and OperationOutcome out.

    ``agency`` is this adapter's own agency id; when given, a received
    referral names it as ``performer`` and its Task as ``owner``
    (``Received`` does not carry it).
    """

    name: str = "fhir"

    def __init__(self, *, agency: str | None = None) -> None:
        self.agency = agency

    def parse(self, body: object, *, today: date) -> Submission:
        """The referral in a FHIR ServiceRequest or Bundle, or a canonical JSON submission."""
        if not isinstance(body, dict):
            raise InvalidSubmission(
                [FhirProblem(loc="$", message="must be a JSON object", issue="structure")]
            )
        if "kind" in body and "resourceType" not in body:
            return CANONICAL_JSON.parse(body, today=today)
        resource = _validate(body)
        return _read_referral(_document(resource, body), today=today)

    def render_problems(self, problems: Sequence[FieldProblem]) -> dict[str, Any]:
        """An OperationOutcome with one error issue per problem."""
        issues = [
            {
                "severity": "error",
                "code": _issue_code(problem),
                "diagnostics": _clean(problem.message),
                "expression": [_clean(problem.loc)],
            }
            for problem in problems
        ] or [{"severity": "error", "code": "invalid", "diagnostics": "the submission is invalid"}]
        outcome = OperationOutcome.model_validate(
            {"resourceType": "OperationOutcome", "issue": issues}
        )
        return outcome.model_dump(mode="json")

    def render_timeline(self, timeline: SentTimeline) -> dict[str, Any]:
        """A collection Bundle of one Task per recipient, each from that recipient's events."""
        entries = [
            (_task_urn(timeline.message_id, agency), _timeline_task(timeline, agency))
            for agency in timeline.recipients
        ]
        return _bundle(entries, timeline.message_id)

    def render_received(self, item: Received) -> dict[str, Any]:
        """A received referral as a Bundle (ServiceRequest, Task); other kinds as canonical JSON."""
        if item.kind is not Kind.REFERRAL or not isinstance(item.content, Referral):
            return CANONICAL_JSON.render_received(item)
        entries = [
            (f"urn:uuid:{item.message_id}", _received_request(item, item.content, self.agency)),
            (_task_urn(item.message_id, "received"), _received_task(item, self.agency)),
        ]
        return _bundle(entries, item.message_id)


def _issue_code(problem: FieldProblem) -> IssueCode:
    if isinstance(problem, FhirProblem):
        return problem.issue
    # A problem from another mapping (the canonical JSON form) carries no type;
    # pydantic's own word for a missing field is the one thing worth reading.
    return "required" if problem.message == "Field required" else "invalid"


#: The mapping for primary care (BVC, MVC, vårdcentral, ungdomsmottagning) and BUP.
FHIR_R4 = FhirMapping()
