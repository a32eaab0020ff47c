"""The canonical JSON form: what every adapter accepts for every submittable kind.

::

    {"kind": "referral", "recipients": ["bup-lidingo"],
     "basis": {"type": "consent", "consent_id": "…"} | {"type": "legal", "ref": "osl-10-28"},
     "purpose": "referral",            # optional: DEFAULT_PURPOSE[kind]
     "in_reply_to": "<message id>",    # optional; required for a team_response
     "expires": "2026-12-24T00:00:00Z",# optional
     "content": {…the schemas.content model of the kind…}}

The content is the wire content model itself, except that
``content.child.identity_number`` may be written in any form
keys.personnummer accepts; it is normalised to 12 digits here. The other JSON
forms translate their documents into this one and validate through
:func:`parse_canonical`, so every form is held to exactly the same rules.
Documented field by field in docs/adapters/canonical.md.

Must never: do I/O, log, or put a submitted value into a problem.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import date, datetime
from typing import Annotated, Any, Final

from pydantic import AwareDatetime, Field, TypeAdapter

from adapters.canonical import (
    DEFAULT_PURPOSE,
    SUBMITTABLE,
    FieldProblem,
    InvalidSubmission,
    Received,
    SentTimeline,
    Submission,
)
from adapters.mappings.json_forms_common import (
    UNKNOWN_FIELD,
    CanonicalPaths,
    Paths,
    Problems,
    content_json,
    iso,
    latest_status,
    normalise_child,
    problems_body,
    validate_json,
)
from schemas.common import AgencyId, MessageId
from schemas.envelope import MAX_RECIPIENTS, ConsentBasis, Kind, LegalBasis, Purpose

__all__ = ["CANONICAL_JSON", "CanonicalJsonMapping", "parse_canonical"]

_FIELDS: Final = frozenset(
    {"kind", "recipients", "basis", "purpose", "in_reply_to", "expires", "content"}
)
_RECIPIENTS: TypeAdapter[list[str]] = TypeAdapter(
    Annotated[list[AgencyId], Field(min_length=1, max_length=MAX_RECIPIENTS)]
)
_MESSAGE_ID: TypeAdapter[str] = TypeAdapter(MessageId)
_EXPIRES: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)
_PURPOSE: TypeAdapter[Purpose] = TypeAdapter(Purpose)
_BASES: Final[Mapping[str, type[ConsentBasis] | type[LegalBasis]]] = {
    "consent": ConsentBasis,
    "legal": LegalBasis,
}
_REQUIRED: Final = "Field required"  # pydantic's wording, so that every missing field reads alike


def parse_canonical(
    body: object,
    *,
    today: date,
    kinds: Collection[Kind] = tuple(SUBMITTABLE),
    paths: Paths | None = None,
    problems: Problems | None = None,
) -> Submission:
    """The submission in a canonical JSON ``body``; raises :class:`InvalidSubmission`.

    ``kinds`` narrows what this form may send (the police send concern
    reports only); ``paths`` names problems in a translating form's own terms
    and ``problems`` holds what that form already found, so that one
    :class:`InvalidSubmission` names every problem at once.
    """
    paths = paths or CanonicalPaths()
    problems = problems if problems is not None else Problems()
    if not isinstance(body, Mapping):
        problems.add((), "must be a JSON object", error_type="model_type")
        raise InvalidSubmission(problems.named(paths))

    for key in body:
        if key not in _FIELDS:
            problems.add((str(key),), UNKNOWN_FIELD)
    kind = _kind(body, kinds, problems)
    recipients = _recipients(body, problems)
    basis = _basis(body, problems)
    purpose = _optional(body, "purpose", _PURPOSE, problems)
    in_reply_to = _optional(body, "in_reply_to", _MESSAGE_ID, problems)
    expires = _optional(body, "expires", _EXPIRES, problems)
    content = _content(body, kind, today=today, problems=problems)

    if kind is Kind.TEAM_RESPONSE:
        if body.get("in_reply_to") is None:
            # The same words as a missing invitation_id, so that a form naming
            # both by one field (the school form's svar_pa) reports it once.
            problems.add(("in_reply_to",), _REQUIRED, error_type="missing")
        elif (
            content is not None and in_reply_to is not None and content.invitation_id != in_reply_to
        ):
            problems.add(("content", "invitation_id"), "must be the invitation in_reply_to names")

    if problems or kind is None or content is None or recipients is None or basis is None:
        raise InvalidSubmission(problems.named(paths))
    return Submission(
        kind=kind,
        content=content,
        recipients=tuple(recipients),
        basis=basis,
        purpose=purpose or DEFAULT_PURPOSE[kind],
        in_reply_to=in_reply_to,
        expires=expires,
    )


def _kind(body: Mapping[Any, Any], kinds: Collection[Kind], problems: Problems) -> Kind | None:
    if "kind" not in body:
        problems.add(("kind",), _REQUIRED, error_type="missing")
        return None
    allowed = {kind.value: kind for kind in SUBMITTABLE if kind in kinds}
    value = body["kind"]
    if isinstance(value, str) and value in allowed:
        return allowed[value]
    problems.add(("kind",), "must be one of: " + ", ".join(allowed), error_type="enum")
    return None


def _recipients(body: Mapping[Any, Any], problems: Problems) -> list[str] | None:
    if "recipients" not in body:
        problems.add(("recipients",), _REQUIRED, error_type="missing")
        return None
    recipients: list[str] | None = validate_json(
        _RECIPIENTS, body["recipients"], loc=("recipients",), problems=problems
    )
    if recipients is not None and len(set(recipients)) != len(recipients):
        problems.add(("recipients",), "names the same agency more than once")
        return None
    return recipients


def _basis(body: Mapping[Any, Any], problems: Problems) -> ConsentBasis | LegalBasis | None:
    if "basis" not in body:
        problems.add(("basis",), _REQUIRED, error_type="missing")
        return None
    basis = body["basis"]
    if not isinstance(basis, Mapping):
        problems.add(("basis",), "must be a JSON object", error_type="model_type")
        return None
    model = _BASES.get(basis["type"]) if isinstance(basis.get("type"), str) else None
    if model is None:
        problems.add(("basis", "type"), "must be one of: consent, legal", error_type="enum")
        return None
    parsed: ConsentBasis | LegalBasis | None = validate_json(
        model, basis, loc=("basis",), problems=problems
    )
    return parsed


def _optional(
    body: Mapping[Any, Any], key: str, adapter: TypeAdapter[Any], problems: Problems
) -> Any:
    value = body.get(key)
    if value is None:
        return None
    return validate_json(adapter, value, loc=(key,), problems=problems)


def _content(body: Mapping[Any, Any], kind: Kind | None, *, today: date, problems: Problems) -> Any:
    if "content" not in body:
        problems.add(("content",), _REQUIRED, error_type="missing")
        return None
    content = body["content"]
    if not isinstance(content, Mapping):
        problems.add(("content",), "must be a JSON object", error_type="model_type")
        return None
    if kind is None:
        return None  # without a kind there is no model to hold the content to
    normalised = normalise_child(content, today=today, problems=problems)
    return validate_json(SUBMITTABLE[kind], normalised, loc=("content",), problems=problems)


class CanonicalJsonMapping:
    """The canonical JSON form, both ways (docs/adapters/canonical.md)."""

    name: str = "canonical"

    def parse(self, body: object, *, today: date) -> Submission:
        """The submission in a canonical JSON body; raises :class:`InvalidSubmission`."""
        return parse_canonical(body, today=today)

    def render_received(self, item: Received) -> dict[str, Any]:
        """A received message as JSON: its metadata, its state and its content."""
        return {
            "message_id": item.message_id,
            "kind": item.kind.value,
            "sender": item.sender,
            "child": item.child,
            "basis": item.basis.model_dump(mode="json"),
            "purpose": item.purpose.value,
            "thread": item.thread,
            "in_reply_to": item.in_reply_to,
            "created": iso(item.created),
            "received_at": iso(item.received_at),
            "state": item.state.value,
            "answer": item.answer.value if item.answer else None,
            "decline_reason": item.decline_reason.value if item.decline_reason else None,
            "content": content_json(item.content),
        }

    def render_timeline(self, timeline: SentTimeline) -> dict[str, Any]:
        """A sent message's events, oldest first, and each recipient's latest status."""
        return {
            "message_id": timeline.message_id,
            "kind": timeline.kind.value,
            "recipients": list(timeline.recipients),
            "submitted_at": iso(timeline.submitted_at),
            "outbox": timeline.outbox,
            "events": [
                {
                    "status": event.status.value,
                    "agency": event.agency,
                    "at": iso(event.at),
                    "reason": event.reason.value if event.reason else None,
                    "answer": event.answer.value if event.answer else None,
                    "decline_reason": event.decline_reason.value if event.decline_reason else None,
                    "staff_id": event.staff_id,
                }
                for event in timeline.events
            ],
            "per_recipient": {
                agency: status.value if status else None
                for agency, status in latest_status(timeline).items()
            },
        }

    def render_problems(self, problems: Sequence[FieldProblem]) -> dict[str, Any]:
        """The ``422`` body: a stable error code, one sentence and every problem."""
        return problems_body(problems)

    def render_submission(self, submission: Submission) -> dict[str, Any]:
        """The canonical JSON body that submits ``submission`` (docs examples, tests)."""
        body: dict[str, Any] = {
            "kind": submission.kind.value,
            "recipients": list(submission.recipients),
            "basis": submission.basis.model_dump(mode="json"),
            "purpose": submission.purpose.value,
        }
        if submission.in_reply_to is not None:
            body["in_reply_to"] = submission.in_reply_to
        if submission.expires is not None:
            body["expires"] = iso(submission.expires)
        body["content"] = content_json(submission.content)
        return body


#: The canonical JSON form.
CANONICAL_JSON: Final = CanonicalJsonMapping()
