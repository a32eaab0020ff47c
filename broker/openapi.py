"""The broker HTTP API's contract: its routes, response models and OpenAPI 3.1 document.

Pure: pydantic models and plain dicts, no aiohttp, so the contract can be
built, exported and checked without a server. ``broker.http`` serves exactly
these routes and serialises exactly these models; :func:`build_openapi`
describes them, with every component schema generated from the models
(pydantic emits JSON Schema 2020-12, which OpenAPI 3.1 uses as it is).

The response models never carry message content, a key other than the public
directory keys, the child pseudonym or a personnummer: a timeline is the
signed header's routing metadata and the status events, nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from broker.records import MessageRecord, Outcome, StatusEvent
from broker.status import RecipientState
from schemas.audit import AuditEntry
from schemas.common import MessageId
from schemas.consent import ConsentRecord, SignedConsent, SignedRevocation
from schemas.directory import DirectoryBundle

__all__ = [
    "API_VERSION",
    "MESSAGE_ID_PATTERN",
    "PATH_DIRECTORY",
    "PATH_HEALTH",
    "PATH_METRICS",
    "PATH_OPENAPI",
    "PATH_READY",
    "PATH_TIMELINE",
    "DirectoryResponse",
    "ErrorDetail",
    "ErrorResponse",
    "EventOut",
    "HealthResponse",
    "MessageOut",
    "ProbeResult",
    "ReadinessResponse",
    "RecipientStateOut",
    "TimelineResponse",
    "build_openapi",
]

API_VERSION: Final = "1.0.0"

PATH_DIRECTORY: Final = "/v1/directory"
PATH_TIMELINE: Final = "/v1/messages/{message_id}"
PATH_HEALTH: Final = "/healthz"
PATH_READY: Final = "/readyz"
PATH_METRICS: Final = "/metrics"
PATH_OPENAPI: Final = "/openapi.json"

#: The same pattern as ``schemas.common.MessageId``: a lower-case UUID.
MESSAGE_ID_PATTERN: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

#: The directory is served as a bundle: the client builds
#: ``keys.directory.Directory(bundle, pinned_root)`` from it and so verifies every
#: entry against the root it pinned, never against ``root_key`` in the response.
DirectoryResponse = DirectoryBundle

ProbeResult = Literal["ok", "failed", "timeout"]


class _Out(BaseModel):
    """Base of the response models: closed and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorDetail(_Out):
    """A stable machine code (see ``broker.errors``) and a sentence for people."""

    code: str
    message: str


class ErrorResponse(_Out):
    """The body of every failing response."""

    error: ErrorDetail


class HealthResponse(_Out):
    """The process is alive; ``time`` is the broker's clock, to spot a skewed client."""

    status: Literal["ok"]
    time: AwareDatetime


class ReadinessResponse(_Out):
    """Whether every dependency answered, and each one's result by name."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, ProbeResult]


class MessageOut(_Out):
    """A message's routing metadata and the broker's decision on it (never its content)."""

    id: MessageId
    kind: str
    sender: str
    recipients: list[str]
    outcome: Outcome
    reason: str | None
    created: AwareDatetime
    expires: AwareDatetime

    @classmethod
    def of(cls, record: MessageRecord) -> MessageOut:
        """The public view of a stored record."""
        return cls(
            id=record.message_id,
            kind=record.kind,
            sender=record.sender,
            recipients=list(record.recipients),
            outcome=record.outcome,
            reason=record.reason,
            created=record.created,
            expires=record.expires,
        )


class EventOut(_Out):
    """One status event; ``agency`` is None for a message-level event (accepted, rejected)."""

    status: str
    agency: str | None
    at: AwareDatetime
    signer: str
    reason: str | None
    answer: str | None
    decline_reason: str | None

    @classmethod
    def of(cls, event: StatusEvent) -> EventOut:
        """The public view of a stored event (no staff id, no receipt id)."""
        return cls(
            status=event.status,
            agency=event.agency,
            at=event.at,
            signer=event.signer,
            reason=event.reason,
            answer=event.answer,
            decline_reason=event.decline_reason,
        )


class RecipientStateOut(_Out):
    """One recipient's derived state: the furthest point its events prove."""

    agency: str
    state: str
    answer: str | None

    @classmethod
    def of(cls, state: RecipientState) -> RecipientStateOut:
        """The public view of a derived state."""
        return cls(agency=state.agency, state=state.state, answer=state.answer)


class TimelineResponse(_Out):
    """A message, its status events oldest first, and each recipient's derived state."""

    message: MessageOut
    events: list[EventOut]
    recipients: list[RecipientStateOut]


class ConsentOut(_Out):
    """A registered consent as its registering agency signed it, and when it was revoked."""

    consent: ConsentRecord
    revoked_at: AwareDatetime | None


class ConsentListResponse(_Out):
    """The consents about one child that the caller's agency is party to."""

    consents: list[ConsentOut]


class ConsentProblemOut(_Out):
    """One reason a consent was refused: a stable code, the field, a sentence to act on."""

    code: str
    field: str
    message: str


class ConsentRefusedDetail(ErrorDetail):
    """The error detail of a refused registration, with every problem found."""

    problems: list[ConsentProblemOut]


class ConsentRefusedResponse(_Out):
    """Body of a 422 from POST /v1/consents."""

    error: ConsentRefusedDetail


PATH_AUDIT_ENTRIES: Final = "/v1/audit/entries"
PATH_AUDIT_ENTRY: Final = "/v1/audit/entries/{index}"
PATH_AUDIT_INCLUSION: Final = "/v1/audit/proofs/inclusion"
PATH_AUDIT_CONSISTENCY: Final = "/v1/audit/proofs/consistency"
PATH_AUDIT_CHECKPOINT: Final = "/v1/audit/checkpoint"
PATH_AUDIT_EXPORT: Final = "/v1/audit/export"

PATH_GAPS: Final = "/v1/gaps"
PATH_GAP_HANDLED: Final = "/v1/gaps/{id}/handled"

PATH_CONSENTS: Final = "/v1/consents"
PATH_REVOKE: Final = "/v1/consents/{consent_id}/revoke"

_CONSENT_MODELS: Final[Sequence[type[BaseModel]]] = (
    ConsentOut,
    ConsentListResponse,
    ConsentRefusedResponse,
    SignedConsent,
    SignedRevocation,
)

_MODELS: Final[Sequence[type[BaseModel]]] = (
    DirectoryResponse,
    ErrorResponse,
    HealthResponse,
    ReadinessResponse,
    TimelineResponse,
)

_REF: Final = "#/components/schemas/{model}"


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_REF.format(model="ErrorResponse"), description)


def _operation(
    operation_id: str,
    summary: str,
    description: str,
    ok: dict[str, Any],
    errors: dict[str, str],
    *,
    tag: str,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    responses["401"] = _error("No verified client certificate reached the application.")
    for status, text in errors.items():
        responses[status] = _error(text)
    responses["500"] = _error("A fault on the broker's side; the detail is in its log only.")
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "tags": [tag],
        "responses": dict(sorted(responses.items())),
    }
    if parameters:
        operation["parameters"] = parameters
    return operation


def _readiness(schema_ref: str) -> dict[str, Any]:
    operation = _operation(
        "getReadiness",
        "Readiness",
        "Runs every readiness probe (database, RabbitMQ) with a timeout and names each "
        "one's result, never an exception text. Any role.",
        _json(schema_ref, "Every probe answered."),
        {},
        tag="operations",
    )
    # Not the error body: a monitor wants to see which probe failed.
    operation["responses"]["503"] = _json(schema_ref, "A probe failed or timed out.")
    operation["responses"] = dict(sorted(operation["responses"].items()))
    return operation


def _body(ref: str, description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ref}}},
    }


def _consent_paths(ref: Callable[[type[BaseModel]], str]) -> dict[str, Any]:
    consent_id = {
        "name": "consent_id",
        "in": "path",
        "required": True,
        "description": "The consent's id (a lower-case UUID).",
        "schema": {"type": "string", "pattern": MESSAGE_ID_PATTERN},
    }
    register = _operation(
        "registerConsent",
        "Register a consent",
        "The body is signed by the registering agency's key and must be sent with that "
        "agency's own adapter certificate. The consent is checked against the policy's "
        "rules (guardians, the child's view and consent by age, validity, parties) and "
        "applies to the very next message.",
        _json(ref(ConsentOut), "Registered (or the same consent registered before)."),
        {
            "400": "Not a signed consent, or the signature could not be verified.",
            "403": "The certificate is not the registering agency's adapter.",
        },
        tag="consents",
    )
    register["requestBody"] = _body(ref(SignedConsent), "The signed consent.")
    register["responses"]["201"] = register["responses"].pop("200")
    register["responses"]["422"] = _json(
        ref(ConsentRefusedResponse), "Refused; every problem with its code and field."
    )
    register["responses"] = dict(sorted(register["responses"].items()))
    revoke = _operation(
        "revokeConsent",
        "Revoke a consent",
        "A signed revocation from an agency that is party to the consent. Takes effect "
        "at once and forward only: messages already routed are stopped at hand-over.",
        _json(ref(ConsentOut), "Revoked."),
        {
            "400": "Not a signed revocation, or its signature could not be verified.",
            "404": "No such consent, or the caller is not party to it.",
        },
        tag="consents",
        parameters=[consent_id],
    )
    revoke["requestBody"] = _body(ref(SignedRevocation), "The signed revocation.")
    listing = _operation(
        "listConsents",
        "The consents about a child",
        "Only the consents the caller's agency is party to.",
        _json(ref(ConsentListResponse), "The consents."),
        {"400": "child is not a 64-character pseudonym."},
        tag="consents",
        parameters=[
            {
                "name": "child",
                "in": "query",
                "required": True,
                "description": "The child's pseudonym.",
                "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            }
        ],
    )
    return {PATH_CONSENTS: {"get": listing, "post": register}, PATH_REVOKE: {"post": revoke}}


def build_openapi(
    *, consents: bool = False, audit: bool = False, gaps: bool = False
) -> dict[str, Any]:
    """The OpenAPI 3.1.0 document of the broker's HTTP API (with the consent and audit routes)."""
    models = [*_MODELS, *(_CONSENT_MODELS if consents else ()), *((AuditEntry,) if audit else ())]
    refs, schema = models_json_schema([(m, "serialization") for m in models], ref_template=_REF)
    components = dict(sorted(schema.get("$defs", {}).items()))

    def ref(model: type[BaseModel]) -> str:
        return str(refs[(model, "serialization")]["$ref"])

    message_id = {
        "name": "message_id",
        "in": "path",
        "required": True,
        "description": "The message id from the envelope's signed header (a lower-case UUID).",
        "schema": {"type": "string", "pattern": MESSAGE_ID_PATTERN},
    }
    paths: dict[str, Any] = {
        PATH_DIRECTORY: {
            "get": _operation(
                "getDirectory",
                "Every signed directory entry of the area",
                "The area's directory as a bundle of root-signed entries. Verify every "
                "entry against the area root you pinned out of band; root_key in the "
                "response only says which root the broker holds. Any role may read it.",
                _json(ref(DirectoryResponse), "The signed directory."),
                {},
                tag="directory",
            )
        },
        PATH_TIMELINE: {
            "get": _operation(
                "getMessageTimeline",
                "A message's status timeline",
                "The message's metadata, its status events and each recipient's derived "
                "state. An adapter may read a message its agency sent or receives; a "
                "recipient that is not the sender sees message-level events and its own "
                "copy only. Security officers and operators may read any message. Anyone "
                "else gets 404, exactly as for an unknown id.",
                _json(ref(TimelineResponse), "The timeline."),
                {
                    "400": "The id is not a lower-case UUID.",
                    "404": "No such message, or not one this certificate may see.",
                    "503": "The store cannot be reached.",
                },
                tag="messages",
                parameters=[message_id],
            )
        },
        PATH_HEALTH: {
            "get": _operation(
                "getHealth",
                "Liveness",
                "The process answers; no dependency is checked. Any role.",
                _json(ref(HealthResponse), "Alive."),
                {},
                tag="operations",
            )
        },
        PATH_READY: {"get": _readiness(ref(ReadinessResponse))},
        PATH_METRICS: {
            "get": _operation(
                "getMetrics",
                "Prometheus metrics",
                "Counters, latency and queue depths in the Prometheus text format. "
                "Operators and security officers only.",
                {
                    "description": "The metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                {"403": "The certificate's role is not operator or security_officer."},
                tag="operations",
            )
        },
        **(_consent_paths(ref) if consents else {}),
        **(_audit_paths(ref(AuditEntry)) if audit else {}),
        **(_gap_paths() if gaps else {}),
        PATH_OPENAPI: {
            "get": _operation(
                "getOpenApi",
                "This document",
                "The OpenAPI 3.1 description of the API. Any role.",
                {
                    "description": "The OpenAPI document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                {},
                tag="operations",
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Backa broker",
            "version": API_VERSION,
            "description": (
                "The HTTP API of the Backa barnet messaging broker. Every request needs a "
                "client certificate from the area CA (mutual TLS); the certificate's SAN "
                "URIs name the holder's role and agency. The broker never sees or serves "
                "message content."
            ),
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "servers": [{"url": "/"}],
        "security": [{"areaMutualTLS": []}],
        "tags": [
            {"name": "directory", "description": "The area's signed directory."},
            {"name": "messages", "description": "Message status."},
            *([{"name": "consents", "description": "The consent registry."}] if consents else []),
            *(
                [{"name": "audit", "description": "The audit log; security officers only."}]
                if audit
                else []
            ),
            *([{"name": "gaps", "description": "Late and nearly late matters."}] if gaps else []),
            {"name": "operations", "description": "Health, readiness, metrics, this document."},
        ],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "areaMutualTLS": {
                    "type": "mutualTLS",
                    "description": (
                        "A client certificate issued by the area CA, carrying "
                        "urn:backa:role:<role> and, for adapters, urn:backa:agency:<id>."
                    ),
                }
            },
        },
    }


_HEX32: Final = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_INDEX: Final = {"type": "integer", "minimum": 0}


def _query(
    name: str, description: str, schema: dict[str, Any], *, required: bool
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": sorted(properties), "properties": properties}


def _inline(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _audit_paths(entry_ref: str) -> dict[str, Any]:
    """The security officer's routes (broker.audit.http); the console is HTML and not here."""
    refused = {"403": "Not a security officer's certificate; the attempt is itself logged."}
    logged = {"$ref": entry_ref}
    entry_out = _object({"index": _INDEX, "leaf_hash": _HEX32, "entry": logged})
    inclusion_out = {
        "type": ["object", "null"],
        "description": "Null when the entry is newer than the latest checkpoint.",
        "properties": {
            "origin": {"type": "string"},
            "size": _INDEX,
            "root": _HEX32,
            "proof": {"type": "array", "items": _HEX32},
            "checkpoint": {"type": "string", "description": "The signed note."},
        },
    }
    search = _operation(
        "searchAudit",
        "Search the audit log",
        "Entries matching every given filter, oldest first, paged with after. The "
        "search itself is logged (officer and query).",
        _inline(
            _object(
                {
                    "entries": {"type": "array", "items": entry_out},
                    "next_after": {"type": ["integer", "null"]},
                    "log_size": _INDEX,
                }
            ),
            "One page of entries.",
        ),
        {"400": "A parameter is malformed, unknown or repeated.", **refused},
        tag="audit",
        parameters=[
            _query("child", "A child's pseudonym.", _HEX32, required=False),
            _query("agency", "The sender or a recipient.", {"type": "string"}, required=False),
            _query("kind", "A message kind.", {"type": "string"}, required=False),
            _query(
                "event",
                "What happened (accepted, rejected, …).",
                {"type": "string"},
                required=False,
            ),
            _query(
                "since",
                "Inclusive, with a UTC offset.",
                {"type": "string", "format": "date-time"},
                required=False,
            ),
            _query(
                "until",
                "Exclusive, with a UTC offset.",
                {"type": "string", "format": "date-time"},
                required=False,
            ),
            _query("after", "Continue after this index.", _INDEX, required=False),
            _query(
                "limit",
                "At most this many (1 to 500).",
                {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                required=False,
            ),
        ],
    )
    one = _operation(
        "getAuditEntry",
        "One audit entry",
        "The entry at an index, with its inclusion proof in the latest checkpoint if asked.",
        _inline(
            {**entry_out, "properties": {**entry_out["properties"], "inclusion": inclusion_out}},
            "The entry.",
        ),
        {"400": "A parameter is malformed.", "404": "No entry at that index.", **refused},
        tag="audit",
        parameters=[
            {
                "name": "index",
                "in": "path",
                "required": True,
                "description": "The entry's index.",
                "schema": _INDEX,
            },
            _query("proof", "1 to add the inclusion proof.", {"enum": ["0", "1"]}, required=False),
        ],
    )
    inclusion = _operation(
        "getInclusionProof",
        "Inclusion proof (RFC 9162 §2.1.3)",
        "Verify with broker.audit.verify_inclusion against a signed checkpoint's root.",
        _inline(
            _object(
                {
                    "origin": {"type": "string"},
                    "index": _INDEX,
                    "size": _INDEX,
                    "leaf_hash": _HEX32,
                    "proof": {"type": "array", "items": _HEX32},
                }
            ),
            "The proof.",
        ),
        {"400": "index must be below size.", "404": "size is beyond the log.", **refused},
        tag="audit",
        parameters=[
            _query("index", "The entry.", _INDEX, required=True),
            _query("size", "The tree size.", _INDEX, required=True),
        ],
    )
    consistency = _operation(
        "getConsistencyProof",
        "Consistency proof (RFC 9162 §2.1.4)",
        "Verify with broker.audit.verify_consistency between two signed checkpoints.",
        _inline(
            _object(
                {
                    "origin": {"type": "string"},
                    "size1": _INDEX,
                    "size2": _INDEX,
                    "proof": {"type": "array", "items": _HEX32},
                }
            ),
            "The proof.",
        ),
        {"400": "size1 must not exceed size2.", "404": "size2 is beyond the log.", **refused},
        tag="audit",
        parameters=[
            _query("size1", "The older size.", _INDEX, required=True),
            _query("size2", "The newer size.", _INDEX, required=True),
        ],
    )
    checkpoint = _operation(
        "getAuditCheckpoint",
        "The latest signed checkpoint",
        "A C2SP signed note (tlog-checkpoint) by the broker key; fresh=1 signs one of the "
        "current size first. docs/AUDIT.md.",
        {
            "description": "The signed note.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        {"400": "A parameter is malformed.", **refused},
        tag="audit",
        parameters=[
            _query(
                "fresh", "1 to sign a new checkpoint first.", {"enum": ["0", "1"]}, required=False
            )
        ],
    )
    export = _operation(
        "exportAudit",
        "Export a range",
        "Entries [start, end) as JSON lines: index, the tree's leaf hash and the entry "
        "(docs/AUDIT.md); check offline with backa audit verify.",
        {
            "description": "One JSON object per line.",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
        {"400": "The range is malformed.", "404": "end is beyond the log.", **refused},
        tag="audit",
        parameters=[
            _query("start", "The first index.", _INDEX, required=True),
            _query("end", "One past the last index.", _INDEX, required=True),
        ],
    )
    return {
        PATH_AUDIT_ENTRIES: {"get": search},
        PATH_AUDIT_ENTRY: {"get": one},
        PATH_AUDIT_INCLUSION: {"get": inclusion},
        PATH_AUDIT_CONSISTENCY: {"get": consistency},
        PATH_AUDIT_CHECKPOINT: {"get": checkpoint},
        PATH_AUDIT_EXPORT: {"get": export},
    }


def _gap_paths() -> dict[str, Any]:
    """The open-gaps view (broker.gaps_http)."""
    matter = _object(
        {
            "id": _INDEX,
            "message_id": {"type": "string", "pattern": MESSAGE_ID_PATTERN},
            "rule": {"type": "string"},
            "kind": {"type": "string"},
            "sender": {"type": "string"},
            "recipient": {"type": ["string", "null"]},
            "child": _HEX32,
            "due_at": {"type": "string", "format": "date-time"},
            "late_seconds": _INDEX,
            "state": {"enum": ["late", "near"]},
            "escalations": _INDEX,
        }
    )
    listing = _operation(
        "listGaps",
        "Open matters past or near their deadline",
        "Most urgent first. An adapter sees the matters its agency sends or receives; "
        "operators and security officers see the area.",
        _inline(
            _object({"matters": {"type": "array", "items": matter}, "at": {"type": "string"}}),
            "The open matters.",
        ),
        {
            "400": "within_hours is not a whole number in range.",
            "403": "Not an adapter, operator or security officer.",
        },
        tag="gaps",
        parameters=[
            _query(
                "within_hours",
                "Also matters due within this many hours (default 24).",
                {"type": "integer", "minimum": 0, "maximum": 720},
                required=False,
            )
        ],
    )
    handled = _operation(
        "handleGap",
        "Close a matter without an answer",
        "A party to the matter (or an operator) closes it for a reason from a closed "
        "list; the decision is audited.",
        _inline(_object({"id": _INDEX, "state": {"enum": ["handled"]}}), "Closed."),
        {
            "400": "The body is not a reason and a staff id.",
            "404": "No such open matter, or not a party to it.",
        },
        tag="gaps",
        parameters=[
            {
                "name": "id",
                "in": "path",
                "required": True,
                "description": "The matter's id.",
                "schema": _INDEX,
            }
        ],
    )
    handled["requestBody"] = {
        "required": True,
        "description": "Why, and who decided.",
        "content": {
            "application/json": {
                "schema": _object(
                    {
                        "reason": {
                            "enum": [
                                "answered_outside_backa",
                                "contact_made",
                                "child_moved",
                                "no_longer_needed",
                                "sent_in_error",
                            ]
                        },
                        "staff_id": {"type": "string"},
                    }
                )
            }
        },
    }
    return {PATH_GAPS: {"get": listing}, PATH_GAP_HANDLED: {"post": handled}}
