"""The agency API's contract: its routes, its body models and its OpenAPI 3.1 document.

Pure: pydantic models and plain dicts, no aiohttp, so the contract can be
built and checked without a server. ``adapters.api`` serves exactly these
routes (the ``PATH_*`` constants), parses the read and answer bodies with
:class:`ReadRequest` and :class:`AnswerRequest`, and serves
:func:`build_openapi` of its own mapping at ``/openapi.json``.

What a submission and a rendering look like depends on the adapter's mapping
(``adapters.mappings``), so there is one document per mapping, with the same
paths and the same component names (``Submission``, ``Problems``,
``InboxItem``, ``SentStatus``) and different schemas behind them:

* The canonical JSON form, the canonical renderings and every wire model in
  them are generated from pydantic models: the content models of
  ``schemas.content``, the bases of ``schemas.envelope``, and the canonical
  submission and renderings modelled here (pydantic emits JSON Schema 2020-12,
  which OpenAPI 3.1 uses as it is).
* The school and police forms, and the Swedish renderings, are derived from
  the form specs the mappings themselves parse and render with
  (``adapters.mappings.json_forms_common.FormSpec``), applied to those
  generated schemas: a form's document cannot drift from its parser.
* FHIR resources are described by their shape (the resource type and the
  elements the ``fhir`` mapping requires or writes); docs/adapters/health.md
  is the profile. The ``fhir.resources`` models give no usable JSON Schema.

Must never: import aiohttp, do I/O, or hold an example with a real personnummer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, RootModel
from pydantic.json_schema import models_json_schema

from adapters.mappings import MAPPING_NAMES
from adapters.mappings.json_forms_common import (
    ANSWER_SV,
    DECLINE_REASON_SV,
    FormField,
    FormSpec,
    swedish_content,
    swedish_kind,
    swedish_purpose,
)
from adapters.mappings.police import REFERENCE as POLICE_REFERENCE
from adapters.mappings.police import SPEC as POLICE_SPEC
from adapters.mappings.school import SPECS as SCHOOL_SPECS
from schemas.common import AgencyId, ChildPseudonym, MessageId, StaffId
from schemas.content import (
    ConcernReport,
    EscalationNotice,
    PlanUpdate,
    Referral,
    TeamInvitation,
    TeamResponse,
)
from schemas.envelope import MAX_RECIPIENTS, Basis, Kind, Purpose
from schemas.reasons import ReasonCode
from schemas.receipts import Answer, DeclineReason, ReceiptStatus

__all__ = [
    "API_VERSION",
    "MESSAGE_ID_PATTERN",
    "PATH_ANSWER",
    "PATH_HEALTH",
    "PATH_INBOX",
    "PATH_INBOX_ITEM",
    "PATH_MESSAGE",
    "PATH_MESSAGES",
    "PATH_OPENAPI",
    "PATH_READ",
    "AnswerRequest",
    "CanonicalSubmission",
    "ErrorResponse",
    "HealthResponse",
    "ProblemsResponse",
    "ReadRequest",
    "ReceivedMessage",
    "SentTimelineOut",
    "SubmitAccepted",
    "build_openapi",
]

API_VERSION: Final = "1.0.0"

PATH_HEALTH: Final = "/healthz"
PATH_OPENAPI: Final = "/openapi.json"
PATH_MESSAGES: Final = "/v1/messages"
PATH_MESSAGE: Final = "/v1/messages/{id}"
PATH_INBOX: Final = "/v1/inbox"
PATH_INBOX_ITEM: Final = "/v1/inbox/{id}"
PATH_READ: Final = "/v1/inbox/{id}/read"
PATH_ANSWER: Final = "/v1/inbox/{id}/answer"

#: The same pattern as ``schemas.common.MessageId``: a lower-case UUID.
MESSAGE_ID_PATTERN: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

#: The longest ``Idempotency-Key`` (``adapters.api`` refuses longer ones).
MAX_IDEMPOTENCY_KEY: Final = 200


# --- Bodies the API itself parses or writes ----------------------------------------------


class _Out(BaseModel):
    """Base of the response models: closed and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorResponse(_Out):
    """The body of every refusal that is not about a submitted field."""

    error: str = Field(
        description="A stable code: unauthorized, unknown_message, answer_conflict, "
        "idempotency_conflict, too_large, store_unavailable."
    )
    message: str = Field(description="A sentence for people; never repeats what was sent.")


class HealthResponse(_Out):
    """Alive, and whether RabbitMQ is connected (submissions are taken either way)."""

    status: Literal["ok"]
    agency: AgencyId
    rabbitmq: Literal["connected", "reconnecting"]


class SubmitAccepted(_Out):
    """The sealed message is in the outbox; ``status_url`` is its ``GET /v1/messages/{id}``."""

    message_id: MessageId
    status_url: str


class ReadRequest(BaseModel):
    """``POST /v1/inbox/{id}/read``: who at the agency opened the message."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # The signed receipt carries it, and takes only a StaffId (a 500 once, found by fuzzing).
    staff_id: StaffId


class AnswerRequest(BaseModel):
    """``POST /v1/inbox/{id}/answer``: who decided, and what.

    ``decline_reason`` is required when declining and refused when accepting.
    """

    model_config = ConfigDict(extra="forbid")

    staff_id: StaffId
    answer: Literal["accepted", "declined"]
    decline_reason: DeclineReason | None = None


class FieldProblemOut(_Out):
    """One bad field, by its path in the agency's own document, and what is wrong with it."""

    field: str = Field(description="A path in the submitted document: elev.personnummer; $.")
    problem: str


class ProblemsResponse(_Out):
    """The ``422`` body of every JSON form: every problem found, nothing stored or sent."""

    error: Literal["invalid_submission"]
    message: str
    problems: list[FieldProblemOut] = Field(min_length=1)


# --- The canonical JSON form (adapters.mappings.canonical_json) --------------------------

_Recipients = Annotated[
    list[AgencyId],
    Field(min_length=1, max_length=MAX_RECIPIENTS, json_schema_extra={"uniqueItems": True}),
]


class _CanonicalBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipients: _Recipients
    basis: Basis
    purpose: Purpose | None = Field(default=None, description="The kind's own purpose if absent.")
    in_reply_to: MessageId | None = Field(
        default=None, description="A message this agency received; the thread is taken from it."
    )
    expires: AwareDatetime | None = Field(
        default=None, description="The adapter's message_ttl_days from now if absent."
    )


class CanonicalReferral(_CanonicalBase):
    """A referral (remiss) in the canonical form."""

    kind: Literal["referral"]
    content: Referral


class CanonicalTeamInvitation(_CanonicalBase):
    """An invitation to Barnets team in the canonical form."""

    kind: Literal["team_invitation"]
    content: TeamInvitation


class CanonicalTeamResponse(_CanonicalBase):
    """An answer to a team invitation: ``in_reply_to`` and ``content.invitation_id`` name it."""

    kind: Literal["team_response"]
    in_reply_to: MessageId  # required here, optional in the other kinds
    content: TeamResponse


class CanonicalConcernReport(_CanonicalBase):
    """An orosanmälan in the canonical form."""

    kind: Literal["concern_report"]
    content: ConcernReport


class CanonicalPlanUpdate(_CanonicalBase):
    """A new version of Barnets plan in the canonical form."""

    kind: Literal["plan_update"]
    content: PlanUpdate


class CanonicalSubmission(
    RootModel[
        Annotated[
            CanonicalReferral
            | CanonicalTeamInvitation
            | CanonicalTeamResponse
            | CanonicalConcernReport
            | CanonicalPlanUpdate,
            Field(discriminator="kind"),
        ]
    ]
):
    """A submission in the canonical JSON form (docs/adapters/canonical.md).

    ``content.child.identity_number`` may be written in any form of a
    personnummer or samordningsnummer (with or without century and separator);
    the adapter normalises it to the 12 digits shown here.
    """


class _ReceivedBase(_Out):
    message_id: MessageId
    sender: AgencyId
    child: ChildPseudonym
    basis: Basis
    purpose: Purpose
    thread: MessageId
    in_reply_to: MessageId | None
    created: AwareDatetime
    received_at: AwareDatetime
    state: ReceiptStatus = Field(description="handed_over, read or answered.")
    answer: Answer | None
    decline_reason: DeclineReason | None


class ReceivedReferral(_ReceivedBase):
    """A received referral, rendered canonically."""

    kind: Literal["referral"]
    content: Referral


class ReceivedTeamInvitation(_ReceivedBase):
    """A received team invitation, rendered canonically."""

    kind: Literal["team_invitation"]
    content: TeamInvitation


class ReceivedTeamResponse(_ReceivedBase):
    """A received team response, rendered canonically."""

    kind: Literal["team_response"]
    content: TeamResponse


class ReceivedConcernReport(_ReceivedBase):
    """A received concern report, rendered canonically."""

    kind: Literal["concern_report"]
    content: ConcernReport


class ReceivedPlanUpdate(_ReceivedBase):
    """A received plan update, rendered canonically."""

    kind: Literal["plan_update"]
    content: PlanUpdate


class ReceivedEscalation(_ReceivedBase):
    """The broker's escalation notice: a tracked message is overdue (metadata only)."""

    kind: Literal["escalation"]
    content: EscalationNotice


_RECEIVED: Final[Mapping[Kind, type[_ReceivedBase]]] = {
    Kind.REFERRAL: ReceivedReferral,
    Kind.TEAM_INVITATION: ReceivedTeamInvitation,
    Kind.TEAM_RESPONSE: ReceivedTeamResponse,
    Kind.CONCERN_REPORT: ReceivedConcernReport,
    Kind.PLAN_UPDATE: ReceivedPlanUpdate,
    Kind.ESCALATION: ReceivedEscalation,
}


class ReceivedMessage(
    RootModel[
        Annotated[
            ReceivedReferral
            | ReceivedTeamInvitation
            | ReceivedTeamResponse
            | ReceivedConcernReport
            | ReceivedPlanUpdate
            | ReceivedEscalation,
            Field(discriminator="kind"),
        ]
    ]
):
    """A received, handed-over message in the canonical rendering: metadata, state, content."""


class TimelineEventOut(_Out):
    """One verified status event of a sent message (the broker's or a recipient's)."""

    status: ReceiptStatus
    agency: AgencyId = Field(description="Who signed it: the broker or a recipient.")
    at: AwareDatetime
    reason: ReasonCode | None
    answer: Answer | None
    decline_reason: DeclineReason | None
    staff_id: StaffId | None


class SentTimelineOut(_Out):
    """A sent message: its events oldest first and each recipient's furthest proven state."""

    message_id: MessageId
    kind: Kind
    recipients: list[AgencyId]
    submitted_at: AwareDatetime
    outbox: Literal["queued", "sent"] = Field(
        description="queued: not yet confirmed by RabbitMQ; sent: confirmed."
    )
    events: list[TimelineEventOut]
    per_recipient: dict[AgencyId, ReceiptStatus | None]


_MODELS: Final[tuple[tuple[type[BaseModel], Literal["validation", "serialization"]], ...]] = (
    (ErrorResponse, "serialization"),
    (HealthResponse, "serialization"),
    (SubmitAccepted, "serialization"),
    (ProblemsResponse, "serialization"),
    (ReceivedMessage, "serialization"),
    (SentTimelineOut, "serialization"),
    (ReadRequest, "validation"),
    (AnswerRequest, "validation"),
    (CanonicalSubmission, "validation"),
)

_REF: Final = "#/components/schemas/{model}"

#: The per-mapping components every operation refers to.
SUBMISSION: Final = "Submission"
PROBLEMS: Final = "Problems"
INBOX_ITEM: Final = "InboxItem"
SENT_STATUS: Final = "SentStatus"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


_NULL: Final = {"type": "null"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, _NULL]}


def _enum(values: Iterable[str]) -> dict[str, Any]:
    return {"type": "string", "enum": sorted(values)}


# --- Agency forms, from the specs the mappings parse and render with ----------------------


class _Schemas:
    """The generated component schemas, read through ``$ref`` (for deriving the forms)."""

    def __init__(self, components: Mapping[str, Any]) -> None:
        self._components = components

    def resolve(self, schema: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
        """The schema behind ``$ref``s and an optional's null, and whether null is allowed."""
        nullable = False
        while True:
            ref = schema.get("$ref")
            if isinstance(ref, str):
                schema = self._components[ref.rsplit("/", 1)[1]]
                continue
            options = schema.get("anyOf") or []
            values = [option for option in options if option != _NULL]
            if len(values) == 1 and len(options) > 1:  # an optional field: a value or null
                nullable, schema = True, values[0]
                continue
            return schema, nullable

    def members(self, schema: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
        """The properties of an object schema (of every object of a union) and those required."""
        resolved, _ = self.resolve(schema)
        union = resolved.get("oneOf") or resolved.get("anyOf")
        if not isinstance(union, list):
            return dict(resolved.get("properties", {})), set(resolved.get("required", ()))
        properties: dict[str, Any] = {}
        required: set[str] | None = None
        for member in union:
            inner, needed = self.members(member)
            properties.update(inner)
            required = needed if required is None else required & needed
        return properties, required or set()

    def at(self, schema: Mapping[str, Any], path: Iterable[str]) -> tuple[Mapping[str, Any], bool]:
        """The schema of the property at ``path`` and whether every step of it is required."""
        required = True
        for part in path:
            properties, needed = self.members(schema)
            required = required and part in needed
            schema = properties[part]
        return schema, required


def _form_object(
    schemas: _Schemas,
    spec: FormSpec,
    canonical: Mapping[str, Any],
    *,
    response: bool,
    optional: Iterable[str] = (),
) -> dict[str, Any]:
    """The JSON Schema of one object of an agency form whose canonical object is ``canonical``.

    In a request a field is required where the canonical field it fills is;
    in a response every field is written (``from_canonical`` renders what the
    content model dumps, which is every field, null included).
    """
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, spec_field in spec.items():
        found = [schemas.at(canonical, target) for target in spec_field.targets()]
        properties[name] = _form_field(schemas, spec_field, found[0][0], response=response)
        if response or (any(needed for _, needed in found) and name not in optional):
            required.append(name)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    union = schemas.resolve(canonical)[0]
    if "oneOf" in union and not response:
        # A union of objects (the basis): the form names exactly one of its members' fields.
        schema |= {"minProperties": 1, "maxProperties": 1}
    return schema


def _form_field(
    schemas: _Schemas, spec_field: FormField, canonical: Mapping[str, Any], *, response: bool
) -> dict[str, Any]:
    target, nullable = schemas.resolve(canonical)
    if spec_field.values is not None:
        schema = _enum(spec_field.values)
    elif spec_field.inner is None:
        return dict(canonical)
    elif target.get("type") == "array":
        schema = {
            "type": "array",
            "items": _form_object(schemas, spec_field.inner, target["items"], response=response),
        }
        schema |= {k: target[k] for k in ("minItems", "maxItems") if k in target}
    else:
        schema = _form_object(schemas, spec_field.inner, canonical, response=response)
    return _nullable(schema) if nullable else schema


def _swedish_basis() -> dict[str, Any]:
    return {
        "oneOf": [
            {
                "type": "object",
                "properties": {"samtycke": {"type": "string", "pattern": MESSAGE_ID_PATTERN}},
                "required": ["samtycke"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"lagrum": {"type": "string"}},
                "required": ["lagrum"],
                "additionalProperties": False,
            },
        ]
    }


def _swedish_header(kind_key: str, kinds: Iterable[Kind]) -> dict[str, Any]:
    """``swedish_received_header``: the Swedish metadata of a received message."""
    message_id = {"type": "string", "pattern": MESSAGE_ID_PATTERN}
    return {
        "meddelande_id": message_id,
        kind_key: _enum(swedish_kind(kind) for kind in kinds),
        "avsandare": {"type": "string"},
        "barn_pseudonym": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "grund": _swedish_basis(),
        "syfte": _enum(swedish_purpose(purpose) for purpose in Purpose),
        "trad": message_id,
        "svar_pa": _nullable(message_id),
        "skapad": {"type": "string", "format": "date-time"},
        "inkom": {"type": "string", "format": "date-time"},
        "status": _enum(status.value for status in ReceiptStatus),
        "vart_besked": _nullable(_enum(ANSWER_SV)),
        "vart_skal": _nullable(_enum(DECLINE_REASON_SV)),
    }


def _closed(properties: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _received_form(
    schemas: _Schemas, kind: Kind, *, kind_key: str, child_key: str, description: str
) -> dict[str, Any]:
    """A received message as a Swedish form renders it: the header, then the content's fields."""
    canonical = _ref(_RECEIVED[kind].__name__)
    header = _swedish_header(kind_key, [kind])
    content = _form_object(
        schemas, swedish_content(kind, child_key=child_key), canonical, response=True
    )
    return _closed({**header, **content["properties"]}, description)


def _school_schemas(schemas: _Schemas) -> dict[str, Any]:
    submissions = []
    for kind, spec in SCHOOL_SPECS.items():
        canonical = _ref(_CANONICAL[kind])
        # A concern report may leave omraden out: nobody is held up by classifying first.
        optional = ("omraden",) if kind is Kind.CONCERN_REPORT else ()
        form = _form_object(schemas, spec, canonical, response=False, optional=optional)
        form["properties"]["typ"] = {"const": swedish_kind(kind)}
        form["description"] = f"A {kind.value} in the elevhälsa form (docs/adapters/school.md)."
        submissions.append(form)
    received = [
        _received_form(
            schemas,
            kind,
            kind_key="typ",
            child_key="elev",
            description=f"A received {kind.value} in the elevhälsa form.",
        )
        for kind in _RECEIVED
        if kind is not Kind.ESCALATION
    ]
    escalation = _closed(
        {**_swedish_header("typ", [Kind.ESCALATION]), "innehall": _ref("EscalationNotice")},
        "The broker's escalation notice: the header and the notice as it is.",
    )
    return {
        SUBMISSION: {
            "description": "The elevhälsa form (with typ), or the canonical JSON form (with kind).",
            "oneOf": [*submissions, _ref("CanonicalSubmission")],
        },
        PROBLEMS: _ref("ProblemsResponse"),
        INBOX_ITEM: {"oneOf": [*received, escalation]},
        SENT_STATUS: _school_timeline(),
    }


def _school_timeline() -> dict[str, Any]:
    """``SchoolFormMapping.render_timeline``: the canonical timeline with Swedish keys."""
    event = _closed(
        {
            "status": _enum(status.value for status in ReceiptStatus),
            "myndighet": {"type": "string"},
            "tid": {"type": "string", "format": "date-time"},
            "orsak": _nullable(_enum(reason.value for reason in ReasonCode)),
            "besked": _nullable(_enum(ANSWER_SV)),
            "skal": _nullable(_enum(DECLINE_REASON_SV)),
            "personal_id": _nullable({"type": "string"}),
        },
        "One verified status event.",
    )
    return _closed(
        {
            "meddelande_id": {"type": "string", "pattern": MESSAGE_ID_PATTERN},
            "typ": _enum(swedish_kind(kind) for kind in Kind),
            "mottagare": {"type": "array", "items": {"type": "string"}},
            "inskickat": {"type": "string", "format": "date-time"},
            "utkorg": _enum(("queued", "sent")),
            "handelser": {"type": "array", "items": event},
            "per_mottagare": {
                "type": "object",
                "additionalProperties": _nullable(_enum(s.value for s in ReceiptStatus)),
            },
        },
        "A sent message's events with Swedish keys; statuses stay the wire values.",
    )


def _police_schemas(schemas: _Schemas) -> dict[str, Any]:
    # typ, lagrum and omraden may be left out: a concern report, OSL 10 kap. 28 §, no areas.
    form = _form_object(
        schemas,
        POLICE_SPEC,
        _ref("CanonicalConcernReport"),
        response=False,
        optional=("typ", "lagrum", "omraden"),
    )
    form["properties"]["anmalan_id"] = {
        "type": "string",
        "pattern": f"^{POLICE_REFERENCE.pattern}$",
        "description": "The police's own reference (a diarienummer); kept by the police only.",
    }
    form["description"] = "A concern report in the police form (docs/adapters/police.md)."
    return {
        SUBMISSION: {
            "description": "The police form, or the canonical JSON form (with kind) of a "
            "concern report: any other kind is refused.",
            "oneOf": [form, _ref("CanonicalConcernReport")],
        },
        PROBLEMS: _ref("ProblemsResponse"),
        INBOX_ITEM: _ref("ReceivedMessage"),
        SENT_STATUS: _ref("SentTimelineOut"),
    }


#: The kinds social services receive as a case, and the field naming the sender's person.
_CASE_KINDS: Final = {Kind.CONCERN_REPORT: "anmalare", Kind.REFERRAL: "kontakt"}


def _social_services_schemas(schemas: _Schemas) -> dict[str, Any]:
    cases = []
    for kind, person_key in _CASE_KINDS.items():
        case = _received_form(
            schemas,
            kind,
            kind_key="arende_typ",
            child_key="barn",
            description=f"A received {kind.value} as a case (docs/adapters/social_services.md).",
        )
        # The case records who reported as one party: the agency and the person together.
        person = case["properties"][person_key]
        person["properties"] = {"myndighet": {"type": "string"}, **person["properties"]}
        person["required"] = ["myndighet", *person["required"]]
        cases.append(case)
    others = [_ref(model.__name__) for kind, model in _RECEIVED.items() if kind not in _CASE_KINDS]
    return {
        SUBMISSION: _ref("CanonicalSubmission"),
        PROBLEMS: _ref("ProblemsResponse"),
        INBOX_ITEM: {"oneOf": [*cases, *others]},
        SENT_STATUS: _ref("SentTimelineOut"),
    }


def _canonical_schemas() -> dict[str, Any]:
    return {
        SUBMISSION: _ref("CanonicalSubmission"),
        PROBLEMS: _ref("ProblemsResponse"),
        INBOX_ITEM: _ref("ReceivedMessage"),
        SENT_STATUS: _ref("SentTimelineOut"),
    }


_CANONICAL: Final[Mapping[Kind, str]] = {
    Kind.REFERRAL: "CanonicalReferral",
    Kind.TEAM_INVITATION: "CanonicalTeamInvitation",
    Kind.TEAM_RESPONSE: "CanonicalTeamResponse",
    Kind.CONCERN_REPORT: "CanonicalConcernReport",
    Kind.PLAN_UPDATE: "CanonicalPlanUpdate",
}


# --- FHIR R4 (adapters.mappings.fhir; the profile is docs/adapters/health.md) -------------

_FHIR_NOTE: Final = "FHIR R4; the profile, element by element, is docs/adapters/health.md."


def _resource(
    resource_type: str, required: list[str], properties: dict[str, Any]
) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"A FHIR {resource_type}. {_FHIR_NOTE}",
        "properties": {"resourceType": {"const": resource_type}, **properties},
        "required": ["resourceType", *required],
    }


_CODEABLE: Final = {
    "type": "object",
    "properties": {
        "coding": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"system": {"type": "string"}, "code": {"type": "string"}},
            },
        },
        "text": {"type": "string"},
    },
}
_IDENTIFIER: Final = {
    "type": "object",
    "properties": {"system": {"type": "string"}, "value": {"type": "string"}},
    "required": ["system", "value"],
}
_TASK_STATUS: Final = ("requested", "received", "accepted", "rejected", "cancelled")


def _fhir_task() -> dict[str, Any]:
    return _resource(
        "Task",
        ["status", "businessStatus", "intent", "code", "focus", "authoredOn", "lastModified"],
        {
            "status": _enum(_TASK_STATUS),
            "businessStatus": _CODEABLE,
            "intent": {"const": "order"},
            "code": _CODEABLE,
            "focus": {"type": "object"},
            "authoredOn": {"type": "string", "format": "date-time"},
            "lastModified": {"type": "string", "format": "date-time"},
            "owner": {"type": "object"},
            "requester": {"type": "object"},
            "statusReason": _CODEABLE,
        },
    )


def _fhir_bundle(resources: list[dict[str, Any]], description: str) -> dict[str, Any]:
    bundle = _resource(
        "Bundle",
        ["type", "entry"],
        {
            "type": {"const": "collection"},
            "identifier": _IDENTIFIER,
            "entry": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "fullUrl": {"type": "string"},
                        "resource": resources[0] if len(resources) == 1 else {"oneOf": resources},
                    },
                    "required": ["fullUrl", "resource"],
                },
            },
        },
    )
    bundle["description"] = f"{description} {_FHIR_NOTE}"
    return bundle


def _fhir_schemas() -> dict[str, Any]:
    service_request = _resource(
        "ServiceRequest",
        ["status", "intent", "subject"],
        {
            "status": {"type": "string"},
            "intent": {"type": "string"},
            "subject": {"type": "object"},
            "contained": {"type": "array", "items": {"type": "object"}},
            "identifier": {"type": "array", "items": _IDENTIFIER},
            "performer": {"type": "array", "items": {"type": "object"}},
        },
    )
    submitted = {
        "type": "object",
        "description": "A referral as a FHIR ServiceRequest (the child a contained Patient, "
        "a consent a contained Consent), or a Bundle holding those resources as entries. "
        + _FHIR_NOTE,
        "properties": {"resourceType": _enum(("ServiceRequest", "Bundle"))},
        "required": ["resourceType"],
    }
    outcome = _resource(
        "OperationOutcome",
        ["issue"],
        {
            "issue": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "severity": {"const": "error"},
                        "code": {"type": "string", "description": "A FHIR IssueType code."},
                        "diagnostics": {"type": "string"},
                        "expression": {
                            "type": "array",
                            "items": {"type": "string", "description": "A FHIRPath."},
                        },
                    },
                    "required": ["severity", "code", "diagnostics"],
                    "additionalProperties": False,
                },
            }
        },
    )
    outcome["additionalProperties"] = False
    others = [_ref(m.__name__) for kind, m in _RECEIVED.items() if kind is not Kind.REFERRAL]
    return {
        SUBMISSION: {
            "description": "A FHIR referral, or the canonical JSON form (with kind and no "
            "resourceType) for the kinds FHIR has no resource for here.",
            "oneOf": [submitted, _ref("CanonicalSubmission")],
        },
        PROBLEMS: outcome,
        INBOX_ITEM: {
            "oneOf": [
                _fhir_bundle(
                    [service_request, _fhir_task()],
                    "A received referral: a Bundle with the ServiceRequest and its Task.",
                ),
                *others,
            ]
        },
        SENT_STATUS: _fhir_bundle(
            [_fhir_task()], "A sent message's status: a Bundle with one Task per recipient."
        ),
    }


# --- The document -----------------------------------------------------------------------

_DOCS: Final[Mapping[str, str]] = {
    "canonical": "docs/adapters/canonical.md",
    "school": "docs/adapters/school.md",
    "social_services": "docs/adapters/social_services.md",
    "fhir": "docs/adapters/health.md",
    "police": "docs/adapters/police.md",
}


def _mapping_schemas(mapping: str, schemas: _Schemas) -> dict[str, Any]:
    if mapping == "school":
        return _school_schemas(schemas)
    if mapping == "police":
        return _police_schemas(schemas)
    if mapping == "social_services":
        return _social_services_schemas(schemas)
    if mapping == "fhir":
        return _fhir_schemas()
    return _canonical_schemas()


def _json(schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("ErrorResponse"), description)


_UNAUTHORIZED: Final = "No valid bearer token: error unauthorized, with WWW-Authenticate."
_STORE: Final = "The adapter's database is unavailable (store_unavailable); retry."
_TOO_LARGE: Final = "The body is over 2,000,000 bytes (too_large)."


def _operation(
    operation_id: str,
    summary: str,
    description: str,
    responses: dict[str, Any],
    *,
    tag: str,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    if not public:
        responses = {"401": _error(_UNAUTHORIZED), "503": _error(_STORE), **responses}
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "tags": [tag],
        "responses": dict(sorted(responses.items())),
    }
    if public:
        operation["security"] = []
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    return operation


def _body(schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _paths() -> dict[str, Any]:
    message_id = {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "A message id (a lower-case UUID).",
        "schema": {"type": "string", "pattern": MESSAGE_ID_PATTERN},
    }
    idempotency_key = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "The same key with the same body gives the same message "
        "(Idempotent-Replayed: true); with another body, 409 idempotency_conflict. "
        f"1 to {MAX_IDEMPOTENCY_KEY} printable characters.",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
    }
    problems = _json(_ref(PROBLEMS), "Every problem found, in the mapping's terms.")
    unknown = _error("No such message at this adapter (unknown_message).")
    item = _json(_ref(INBOX_ITEM), "The message, in the agency's format, as it stands now.")
    accepted = _json(_ref("SubmitAccepted"), "Sealed and in the outbox; sent as soon as it can be.")
    accepted["headers"] = {
        "Location": {"description": "The status URL.", "schema": {"type": "string"}},
        "Idempotent-Replayed": {
            "description": "true when the key was used before with this body.",
            "schema": {"const": "true"},
        },
    }
    listing = {
        "type": "object",
        "properties": {"messages": {"type": "array", "items": _ref(SENT_STATUS)}},
        "required": ["messages"],
        "additionalProperties": False,
    }
    inbox = {**listing, "properties": {"messages": {"type": "array", "items": _ref(INBOX_ITEM)}}}
    return {
        PATH_HEALTH: {
            "get": _operation(
                "getHealth",
                "Liveness",
                "Alive, and whether RabbitMQ is connected; submissions are taken either way. "
                "No token.",
                {"200": _json(_ref("HealthResponse"), "Alive.")},
                tag="operations",
                public=True,
            )
        },
        PATH_OPENAPI: {
            "get": _operation(
                "getOpenApi",
                "This document",
                "The OpenAPI 3.1 description of this adapter's API, for its mapping. No token: "
                "it holds nothing but the contract.",
                {"200": _json({"type": "object"}, "The OpenAPI document.")},
                tag="operations",
                public=True,
            )
        },
        PATH_MESSAGES: {
            "post": _operation(
                "submitMessage",
                "Submit a message",
                "Mapped, validated, sealed and written to the outbox before the answer; "
                "nothing is stored or sent when it is refused.",
                {
                    "202": accepted,
                    "409": _error("The key was used with another body (idempotency_conflict)."),
                    "413": _error(_TOO_LARGE),
                    "422": problems,
                },
                tag="messages",
                parameters=[idempotency_key],
                body=_body(_ref(SUBMISSION), "A message in the agency's format."),
            ),
            "get": _operation(
                "listSent",
                "Everything sent",
                "Every message this agency sent, newest first, each with its status.",
                {"200": _json(listing, "The messages.")},
                tag="messages",
            ),
        },
        PATH_MESSAGE: {
            "get": _operation(
                "getSent",
                "A sent message's status",
                "Its verified status events and each recipient's furthest proven state.",
                {"200": _json(_ref(SENT_STATUS), "The status."), "404": unknown},
                tag="messages",
                parameters=[message_id],
            )
        },
        PATH_INBOX: {
            "get": _operation(
                "listInbox",
                "The inbox",
                "Every received, handed-over message, newest first.",
                {"200": _json(inbox, "The messages.")},
                tag="inbox",
            )
        },
        PATH_INBOX_ITEM: {
            "get": _operation(
                "getReceived",
                "A received message",
                "One handed-over message in the agency's format.",
                {"200": item, "404": unknown},
                tag="inbox",
                parameters=[message_id],
            )
        },
        PATH_READ: {
            "post": _operation(
                "markRead",
                "A person opened it",
                "Sends the signed read receipt, once; again is harmless.",
                {"200": item, "404": unknown, "413": _error(_TOO_LARGE), "422": problems},
                tag="inbox",
                parameters=[message_id],
                body=_body(_ref("ReadRequest"), "Who opened it."),
            )
        },
        PATH_ANSWER: {
            "post": _operation(
                "answerReceived",
                "Accept or decline",
                "Sends the signed answered receipt. Referrals, team invitations and concern "
                "reports can be answered, once.",
                {
                    "200": item,
                    "404": unknown,
                    "409": _error("Already answered, or a kind that is not answered."),
                    "413": _error(_TOO_LARGE),
                    "422": problems,
                },
                tag="inbox",
                parameters=[message_id],
                body=_body(_ref("AnswerRequest"), "Who decided, and what."),
            )
        },
    }


def build_openapi(mapping: str = "canonical") -> dict[str, Any]:
    """The OpenAPI 3.1.0 document of the agency API of an adapter speaking ``mapping``."""
    if mapping not in MAPPING_NAMES:
        raise ValueError(f"no mapping {mapping!r}; choose one of {', '.join(MAPPING_NAMES)}")
    _refs, generated = models_json_schema(_MODELS, ref_template=_REF)
    components: dict[str, Any] = generated.get("$defs", {})
    components |= _mapping_schemas(mapping, _Schemas(components))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"Backa adapter: the agency API ({mapping})",
            "version": API_VERSION,
            "description": (
                "The local HTTP API an agency system uses to send messages through its Backa "
                f"adapter and to read what it received. This adapter speaks the {mapping} "
                f"mapping ({_DOCS[mapping]}); every mapping also takes the canonical JSON "
                "form. Errors are JSON; nothing submitted is ever echoed in one."
            ),
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "servers": [{"url": "/"}],
        "security": [{"agencyBearer": []}],
        "tags": [
            {"name": "messages", "description": "Sending, and the status of what was sent."},
            {"name": "inbox", "description": "Received messages, read and answered."},
            {"name": "operations", "description": "Liveness and this document."},
        ],
        "paths": _paths(),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "agencyBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token per agency system (backa adapter token); the "
                    "adapter's config keeps its SHA-256 under [[systems]].",
                }
            },
        },
    }
