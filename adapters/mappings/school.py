"""The elevhälsa form: how a school's or preschool's student health team writes and reads messages.

A flat JSON document with Swedish field names, one per message, its type in
``typ``::

    {"typ": "remiss", "mottagare": ["bup-lidingo"], "grund": {"samtycke": "…"},
     "elev": {"personnummer": "121212-1212", "fornamn": "…", "efternamn": "…"},
     "behov": [{"omrade": "trygghet", "beskrivning": "…"}], "sammanfattning": "…",
     "onskat_stod": "…", "bradskande": "snart",
     "kontakt": {"personal_id": "…", "roll": "kurator", "telefon": "…"},
     "vardnadshavare_informerade": true, "svar_senast": "2026-12-15T16:00:00+01:00"}

The types are ``remiss``, ``orosanmalan``, ``inbjudan``, ``svar`` (to a team
invitation) and ``planuppdatering``; a body with a ``kind`` key is taken as
the canonical form instead. Problems name this form's own paths
(``elev.personnummer``, ``behov[0].omrade``). Received messages and timelines
are rendered with Swedish keys too; every field is documented in
docs/adapters/school.md.

Must never: do I/O, log, or put a submitted value into a problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Final

from adapters.canonical import (
    SUBMITTABLE,
    FieldProblem,
    InvalidSubmission,
    Received,
    SentTimeline,
    Submission,
)
from adapters.mappings.canonical_json import CANONICAL_JSON, parse_canonical
from adapters.mappings.json_forms_common import (
    KIND_SV,
    PURPOSE_SV,
    FormField,
    FormPaths,
    FormSpec,
    Problems,
    content_json,
    format_loc,
    from_canonical,
    iso,
    latest_status,
    problems_body,
    swedish_answer,
    swedish_content,
    swedish_decline_reason,
    swedish_kind,
    swedish_received_header,
    to_canonical,
)
from schemas.envelope import Kind

__all__ = ["SCHOOL_FORM", "SchoolFormMapping"]

#: The child is a pupil here; preschools use the same form.
_CHILD_KEY: Final = "elev"

_ENVELOPE: FormSpec = {
    "typ": FormField(("kind",), values=KIND_SV),
    "mottagare": FormField(("recipients",)),
    "grund": FormField(
        ("basis",),
        inner={"samtycke": FormField(("consent_id",)), "lagrum": FormField(("ref",))},
    ),
    "syfte": FormField(("purpose",), values=PURPOSE_SV),
    "svar_pa": FormField(("in_reply_to",)),
    "giltig_till": FormField(("expires",)),
}

# A team response names its invitation once, in svar_pa: the content's
# invitation_id is the same id, so the form does not ask for it twice.
_RESPONSE_ENVELOPE: FormSpec = {
    **_ENVELOPE,
    "svar_pa": FormField(("in_reply_to",), also=(("content", "invitation_id"),)),
}

#: Each kind's form fields (also read by ``adapters.openapi`` for the agency API's schema).
SPECS: Mapping[Kind, FormSpec] = {
    kind: {
        **(_RESPONSE_ENVELOPE if kind is Kind.TEAM_RESPONSE else _ENVELOPE),
        **swedish_content(kind, child_key=_CHILD_KEY),
    }
    for kind in SUBMITTABLE
}

# Used when typ is missing or unknown: every field of every type is known, so
# the one real problem (typ) is not buried under "is not a field" for the rest.
_ANY_KIND: FormSpec = {
    **{name: spec_field for spec in SPECS.values() for name, spec_field in spec.items()},
    **_ENVELOPE,
}


class SchoolFormMapping:
    """The elevhälsa form of schools and preschools (docs/adapters/school.md)."""

    name: str = "school"

    def parse(self, body: object, *, today: date) -> Submission:
        """The submission in an elevhälsa form, or in the canonical form if it has ``kind``."""
        if isinstance(body, Mapping) and "kind" in body:
            return CANONICAL_JSON.parse(body, today=today)
        if not isinstance(body, Mapping):
            raise InvalidSubmission([FieldProblem(format_loc(()), "must be a JSON object")])
        typ = body.get("typ")
        kind = Kind(KIND_SV[typ]) if isinstance(typ, str) and typ in KIND_SV else None
        spec = SPECS[kind] if kind is not None else _ANY_KIND
        problems = Problems()
        canonical = to_canonical(spec, body, problems)
        _complete_basis(canonical, problems)
        content = canonical.setdefault("content", {})
        if kind is Kind.CONCERN_REPORT:
            # A reporter must never be held up by having to classify a concern first.
            content.setdefault("need_areas", [])
        return parse_canonical(canonical, today=today, paths=FormPaths(spec), problems=problems)

    def render_received(self, item: Received) -> dict[str, Any]:
        """A received message: Swedish metadata, then its content in this form's fields."""
        header = swedish_received_header(item, kind_key="typ")
        content = content_json(item.content)
        spec = swedish_content(item.kind, child_key=_CHILD_KEY)
        if not spec:  # an escalation notice: metadata the broker wrote, no form of its own
            return {**header, "innehall": content}
        return {**header, **from_canonical(spec, {"content": content})}

    def render_timeline(self, timeline: SentTimeline) -> dict[str, Any]:
        """A sent message's events with Swedish keys; statuses stay the wire values."""
        return {
            "meddelande_id": timeline.message_id,
            "typ": swedish_kind(timeline.kind),
            "mottagare": list(timeline.recipients),
            "inskickat": iso(timeline.submitted_at),
            "utkorg": timeline.outbox,
            "handelser": [
                {
                    "status": event.status.value,
                    "myndighet": event.agency,
                    "tid": iso(event.at),
                    "orsak": event.reason.value if event.reason else None,
                    "besked": swedish_answer(event.answer),
                    "skal": swedish_decline_reason(event.decline_reason),
                    "personal_id": event.staff_id,
                }
                for event in timeline.events
            ],
            "per_mottagare": {
                agency: status.value if status else None
                for agency, status in latest_status(timeline).items()
            },
        }

    def render_problems(self, problems: Sequence[FieldProblem]) -> dict[str, Any]:
        """The ``422`` body, the same shape as every JSON form's; paths are this form's."""
        return problems_body(problems)

    def render_submission(self, submission: Submission) -> dict[str, Any]:
        """The elevhälsa form that submits ``submission`` (docs examples, tests)."""
        return from_canonical(SPECS[submission.kind], CANONICAL_JSON.render_submission(submission))


def _complete_basis(canonical: dict[str, Any], problems: Problems) -> None:
    """Give ``grund`` its canonical ``type``: a consent or a legal basis, never both."""
    basis = canonical.get("basis")
    if not isinstance(basis, dict):
        return  # missing or not an object: the canonical check names it as grund
    consent, legal = "consent_id" in basis, "ref" in basis
    if consent == legal:
        problems.add_named(
            FieldProblem("grund", "must name exactly one of samtycke or lagrum"), covers=("basis",)
        )
        return
    basis["type"] = "consent" if consent else "legal"


#: The elevhälsa form, for agency types school and preschool.
SCHOOL_FORM: Final = SchoolFormMapping()
