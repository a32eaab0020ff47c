"""What the JSON forms (canonical, school, social services, police) share: pure helpers.

Every JSON form is parsed the same way: the agency's document is translated
field by field into the canonical JSON form (:func:`to_canonical`, driven by a
:data:`FormSpec` that names, for each of the agency's fields, where it goes in
the canonical form), the canonical form is validated once, and every problem
found on the way is named in the agency's own terms (:class:`FormPaths`, the
same spec read backwards). Rendering for the agency reads the spec forwards
(:func:`from_canonical`). One spec per form thus drives parsing, problem paths
and rendering, so the three cannot drift apart.

The Swedish vocabulary that the school, social services and police forms have
in common lives here too (:func:`swedish_content`), so that a concern report
the police write with ``iakttagelser`` reaches social services as
``iakttagelser``.

Must never: do I/O, log, or put a submitted value into a
:class:`~adapters.canonical.FieldProblem`: messages say what is wrong, never
what was sent, and an unknown key that looks like data (a personnummer used as
a key, say) is shown as ``<key>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final, Protocol

from pydantic import AwareDatetime, BaseModel, TypeAdapter, ValidationError

from adapters.canonical import FieldProblem, Received, SentTimeline, recipient_states
from keys.errors import PersonnummerError
from keys.personnummer import parse_identity_number
from schemas.envelope import ConsentBasis, Kind, LegalBasis, Purpose
from schemas.receipts import Answer, DeclineReason, ReceiptStatus

__all__ = [
    "ANSWER_SV",
    "DECLINE_REASON_SV",
    "KIND_SV",
    "PURPOSE_SV",
    "UNKNOWN_FIELD",
    "URGENCY_SV",
    "CanonicalPaths",
    "FormField",
    "FormPaths",
    "FormSpec",
    "Loc",
    "Paths",
    "Problems",
    "content_json",
    "format_loc",
    "from_canonical",
    "iso",
    "latest_status",
    "normalise_child",
    "problems_body",
    "swedish_answer",
    "swedish_basis",
    "swedish_content",
    "swedish_decline_reason",
    "swedish_kind",
    "swedish_purpose",
    "swedish_received_header",
    "to_canonical",
    "validate_json",
]

#: A location in a document: object keys and list indices, outermost first.
Loc = tuple[str | int, ...]

#: The message for a key the form does not have (never echoes the key's value).
UNKNOWN_FIELD: Final = "is not a field of this form"

#: The pydantic error type of a missing field; every other type is about the value.
_MISSING: Final = "missing"

#: Keys shown as they are in a problem path; anything else is shown as ``<key>``.
_SAFE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: More digits than this in a key could be (part of) a personnummer used as a key.
_MAX_DIGITS_IN_KEY = 2

_DATETIME: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


# --- Locations -------------------------------------------------------------------


def _safe_key(key: str) -> str:
    if _SAFE_KEY.fullmatch(key) and sum(char.isdigit() for char in key) <= _MAX_DIGITS_IN_KEY:
        return key
    return "<key>"


def format_loc(loc: Iterable[str | int]) -> str:
    """A location as a problem path: ``behov[0].omrade``; the whole document is ``$``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + _safe_key(part)
    return text or "$"


# --- Problems --------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    """One problem as found: at a canonical location, or already in the form's terms."""

    loc: Loc
    message: str
    error_type: str
    covers: bool = False
    named: FieldProblem | None = None


class Paths(Protocol):
    """Names a problem found in the canonical form by the agency form's own path."""

    def problem(self, loc: Loc, message: str, error_type: str) -> FieldProblem:
        """The problem at canonical ``loc`` as the agency's document names it."""
        ...


class CanonicalPaths:
    """The canonical form names its problems by the canonical path itself."""

    def problem(self, loc: Loc, message: str, error_type: str) -> FieldProblem:
        """The problem at ``loc``, unchanged but for formatting."""
        del error_type  # the canonical form's messages are already in its own terms
        return FieldProblem(loc=format_loc(loc), message=message)


class Problems:
    """Every problem of one submission, collected so that all are reported at once.

    A problem that covers its location hides the vaguer ones found there by
    the canonical validation: a bad personnummer is reported once, as what is
    wrong with it, not again as "should match pattern".
    """

    def __init__(self) -> None:
        self._found: list[_Found] = []

    def __bool__(self) -> bool:
        return bool(self._found)

    def add(
        self, loc: Loc, message: str, *, error_type: str = "invalid", covers: bool = False
    ) -> None:
        """A problem at a canonical location."""
        self._found.append(_Found(loc, message, error_type, covers))

    def add_named(self, problem: FieldProblem, *, covers: Loc | None = None) -> None:
        """A problem already named in the agency form's terms (an unknown key, say)."""
        self._found.append(
            _Found(covers or (), problem.message, "invalid", covers is not None, problem)
        )

    def add_validation(self, error: ValidationError, *, prefix: Loc) -> None:
        """Pydantic's problems under ``prefix``, without the submitted values."""
        for item in error.errors(include_url=False, include_input=False, include_context=False):
            message = str(item["msg"])
            # Pydantic prefixes the schema's own ValueErrors; the reader needs the reason only.
            message = message.removeprefix("Value error, ")
            self.add((*prefix, *item["loc"]), message, error_type=str(item["type"]))

    def named(self, paths: Paths) -> list[FieldProblem]:
        """The problems as the agency's document names them, duplicates dropped."""
        covered = [found.loc for found in self._found if found.covers]
        result: list[FieldProblem] = []
        for found in self._found:
            hidden = found.named is None and not found.covers
            if hidden and any(found.loc[: len(c)] == c for c in covered):
                continue
            problem = found.named or paths.problem(found.loc, found.message, found.error_type)
            if problem not in result:
                result.append(problem)
        return result


def validate_json(
    target: type[BaseModel] | TypeAdapter[Any], value: object, *, loc: Loc, problems: Problems
) -> Any:
    """``value`` (parsed JSON) validated as JSON would be, or ``None`` with its problems added.

    The wire models are strict, and strict Python validation refuses the ISO
    strings and enum values that JSON carries; validating the value's JSON
    text gives exactly the rules a JSON sender is held to.
    """
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        problems.add(loc, "is not JSON data")
        return None
    try:
        if isinstance(target, TypeAdapter):
            return target.validate_json(text, strict=True)
        return target.model_validate_json(text)
    except ValidationError as exc:
        problems.add_validation(exc, prefix=loc)
        return None


def normalise_child(
    content: Mapping[str, Any], *, today: date, problems: Problems
) -> dict[str, Any]:
    """``content`` with ``child.identity_number`` in its normalised 12-digit form.

    Any form keys.personnummer accepts is fine on input; the pseudonym is
    computed from the 12 digits, so every form must end there. A number that
    is not a personnummer or samordningsnummer is one problem, covering the
    pattern error the content model would add.
    """
    result = dict(content)
    child = content.get("child")
    if not isinstance(child, Mapping) or not isinstance(child.get("identity_number"), str):
        return result  # missing or not a string: the content model says so
    try:
        number = parse_identity_number(child["identity_number"], today=today)
    except PersonnummerError as exc:
        # The error text of keys.personnummer never contains the digits given.
        problems.add(
            ("content", "child", "identity_number"),
            f"is not a valid personnummer or samordningsnummer: {exc}",
            covers=True,
        )
        return result
    result["child"] = {**child, "identity_number": number.normalised}
    return result


def problems_body(problems: Sequence[FieldProblem]) -> dict[str, Any]:
    """The ``422`` body every JSON form answers an invalid submission with."""
    count = len(problems)
    return {
        "error": "invalid_submission",
        "message": (
            f"The submission has {count} problem{'' if count == 1 else 's'} "
            "and nothing was stored or sent."
        ),
        "problems": [{"field": p.loc, "problem": p.message} for p in problems],
    }


# --- Form specs ------------------------------------------------------------------


@dataclass(frozen=True)
class FormField:
    """One field of an agency form and where it lives in the canonical JSON form.

    ``to`` is the canonical path relative to the enclosing object (several
    parts when the form flattens a canonical object: the school form's
    ``behov`` is the canonical ``content.needs``); ``inner`` describes the
    fields of an object, or of each object in a list; ``values`` maps the
    form's values to canonical ones (``akut`` to ``urgent``); ``also`` names
    further canonical paths that take the same value.
    """

    to: tuple[str, ...]
    inner: Mapping[str, FormField] | None = None
    values: Mapping[str, str] | None = None
    also: tuple[tuple[str, ...], ...] = ()

    def targets(self) -> tuple[tuple[str, ...], ...]:
        """Every canonical path the field's value goes to."""
        return (self.to, *self.also)


#: An agency form: its field names, each with where it goes in the canonical form.
FormSpec = Mapping[str, FormField]


def _one_of(values: Iterable[str]) -> str:
    return "must be one of: " + ", ".join(values)


def _put(target: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    for part in path[:-1]:
        inner = target.setdefault(part, {})
        if not isinstance(inner, dict):  # only a spec with overlapping fields gets here
            raise TypeError("two fields of a form spec overlap")
        target = inner
    target[path[-1]] = value


_ABSENT: Final = object()


def _get(source: Mapping[str, Any], path: tuple[str, ...]) -> object:
    value: object = source
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def to_canonical(
    spec: FormSpec,
    document: Mapping[str, Any],
    problems: Problems,
    *,
    at: Loc = (),
    canonical_at: Loc = (),
) -> dict[str, Any]:
    """The canonical JSON of ``document`` (one object of an agency form).

    A key the form does not have is a problem, never passed on: a form field
    must not be accepted just because its name happens to be canonical. A
    value outside a field's ``values`` is a problem in the form's own terms.
    Everything else is left to the canonical validation, whose problems
    :class:`FormPaths` names back in the form's terms.
    """
    out: dict[str, Any] = {}
    for key, value in document.items():
        spec_field = spec.get(key)
        if spec_field is None:
            problems.add_named(FieldProblem(format_loc((*at, key)), UNKNOWN_FIELD))
            continue
        converted = _convert(
            spec_field, value, problems, at=(*at, key), canonical_at=(*canonical_at, *spec_field.to)
        )
        for target in spec_field.targets():
            _put(out, target, converted)
    return out


def _convert(
    spec_field: FormField, value: object, problems: Problems, *, at: Loc, canonical_at: Loc
) -> object:
    if spec_field.values is not None and value is not None:
        if isinstance(value, str) and value in spec_field.values:
            return spec_field.values[value]
        problems.add_named(
            FieldProblem(format_loc(at), _one_of(spec_field.values)), covers=canonical_at
        )
        return value
    inner = spec_field.inner
    if inner is None:
        return value
    if isinstance(value, Mapping):
        return to_canonical(inner, value, problems, at=at, canonical_at=canonical_at)
    if isinstance(value, list):
        return [
            to_canonical(inner, item, problems, at=(*at, i), canonical_at=(*canonical_at, i))
            if isinstance(item, Mapping)
            else item
            for i, item in enumerate(value)
        ]
    return value


def from_canonical(spec: FormSpec, canonical: Mapping[str, Any]) -> dict[str, Any]:
    """The agency form's rendering of ``canonical`` (JSON), fields absent there left out."""
    out: dict[str, Any] = {}
    for name, spec_field in spec.items():
        value = _get(canonical, spec_field.to)
        if value is not _ABSENT:
            out[name] = _render(spec_field, value)
    return out


def _render(spec_field: FormField, value: object) -> object:
    if spec_field.values is not None and isinstance(value, str):
        back = {canonical: own for own, canonical in spec_field.values.items()}
        return back.get(value, value)
    inner = spec_field.inner
    if inner is None:
        return value
    if isinstance(value, Mapping):
        return from_canonical(inner, value)
    if isinstance(value, list):
        return [
            from_canonical(inner, item) if isinstance(item, Mapping) else item for item in value
        ]
    return value


class FormPaths:
    """Names canonical problems by an agency form's paths, read from its spec.

    A problem about a value with a ``values`` table names the form's values,
    not the canonical ones; a problem about a whole object (a schema rule
    across fields) has the canonical field names in its message replaced by
    the form's names.
    """

    def __init__(self, spec: FormSpec) -> None:
        self._spec = spec

    def problem(self, loc: Loc, message: str, error_type: str) -> FieldProblem:
        """The problem at canonical ``loc`` as the form names it."""
        path: list[str | int] = []
        spec: FormSpec | None = self._spec
        rest = loc
        leaf: FormField | None = None
        flattened: Loc = ()
        while rest and spec is not None:
            name, match, length = _longest_match(spec, rest)
            if match is None:
                if any(
                    target[: len(rest)] == rest for f in spec.values() for target in f.targets()
                ):
                    flattened = rest  # an object this form flattens into the current level
                else:
                    path.extend(rest)  # no form field: show the canonical remainder
                    spec = None
                rest = ()
                break
            path.append(name)
            rest = rest[length:]
            if rest and isinstance(rest[0], int):
                path.append(rest[0])
                rest = rest[1:]
            if match.inner is None:
                leaf = match
                path.extend(rest)
                spec, rest = None, ()
            else:
                spec = match.inner
        if leaf is not None and leaf.values is not None and error_type != _MISSING:
            message = _one_of(leaf.values)
        elif spec is not None:
            message = _rename_words(spec, flattened, message)
        return FieldProblem(loc=format_loc(path), message=message)


def _longest_match(spec: FormSpec, loc: Loc) -> tuple[str, FormField | None, int]:
    best: tuple[str, FormField | None, int] = ("", None, 0)
    for name, spec_field in spec.items():
        for target in spec_field.targets():
            if len(target) > best[2] and loc[: len(target)] == target:
                best = (name, spec_field, len(target))
    return best


def _rename_words(spec: FormSpec, prefix: Loc, message: str) -> str:
    """``message`` about one object with its canonical names and values put in the form's terms."""
    words: dict[str, str] = {}
    for name, spec_field in spec.items():
        target = spec_field.to
        if len(target) != len(prefix) + 1 or target[: len(prefix)] != prefix:
            continue
        words[target[-1]] = name
        for own, canonical in (spec_field.values or {}).items():
            words[canonical] = f'{name} "{own}"'
    if not words:
        return message
    pattern = re.compile(
        r"\b(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")\b"
    )
    return pattern.sub(lambda m: words[m.group(1)], message)


# --- Rendering -------------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    """A timestamp as the content models write it (ISO 8601, ``Z`` for UTC)."""
    return None if moment is None else str(_DATETIME.dump_python(moment, mode="json"))


def content_json(content: object) -> dict[str, Any]:
    """A content model as JSON data."""
    if isinstance(content, BaseModel):
        return content.model_dump(mode="json")
    if isinstance(content, Mapping):
        return dict(content)
    raise TypeError("content must be a content model")


def latest_status(timeline: SentTimeline) -> dict[str, ReceiptStatus | None]:
    """Each recipient's current state: the furthest point its events prove.

    One rule for every format (``adapters.canonical.recipient_states``): a
    receipt that arrives late never moves a recipient back.
    """
    return recipient_states(timeline)


# --- The Swedish vocabulary of the school, social services and police forms -------

#: The Swedish name of each submittable kind (``typ``, ``arende_typ``).
KIND_SV: Mapping[str, str] = {
    "remiss": Kind.REFERRAL.value,
    "inbjudan": Kind.TEAM_INVITATION.value,
    "svar": Kind.TEAM_RESPONSE.value,
    "orosanmalan": Kind.CONCERN_REPORT.value,
    "planuppdatering": Kind.PLAN_UPDATE.value,
}

#: The Swedish names of the kinds only ever received (rendering only).
_RECEIVED_KIND_SV: Mapping[str, str] = {
    "kvittens": Kind.RECEIPT.value,
    "eskalering": Kind.ESCALATION.value,
}

#: The Swedish name of each purpose (``syfte``).
PURPOSE_SV: Mapping[str, str] = {
    "remiss": Purpose.REFERRAL.value,
    "barnets_team": Purpose.TEAM.value,
    "barnets_plan": Purpose.PLAN.value,
    "oro": Purpose.CONCERN.value,
    "samordning": Purpose.COORDINATION.value,
}

#: How urgent a referral is (``bradskande``).
URGENCY_SV: Mapping[str, str] = {"rutin": "routine", "snart": "soon", "akut": "urgent"}

#: The business answer (``besked``).
ANSWER_SV: Mapping[str, str] = {"ja": Answer.ACCEPTED.value, "nej": Answer.DECLINED.value}

#: Why an answer is no (``skal``).
DECLINE_REASON_SV: Mapping[str, str] = {
    "inte_vart_uppdrag": DeclineReason.NOT_OUR_REMIT.value,
    "ingen_kapacitet": DeclineReason.NO_CAPACITY.value,
    "redan_kand": DeclineReason.ALREADY_KNOWN.value,
    "vardnadshavare_avbojde": DeclineReason.GUARDIAN_DECLINED.value,
    "annat": DeclineReason.OTHER.value,
}

_CHILD: FormSpec = {
    "personnummer": FormField(("identity_number",)),
    "fornamn": FormField(("given_name",)),
    "efternamn": FormField(("family_name",)),
}
_STAFF: FormSpec = {"personal_id": FormField(("staff_id",)), "roll": FormField(("role",))}
_CONTACT: FormSpec = {**_STAFF, "telefon": FormField(("phone",))}
_NEED: FormSpec = {"omrade": FormField(("area",)), "beskrivning": FormField(("description",))}
_GOAL: FormSpec = {
    "omrade": FormField(("area",)),
    "mal": FormField(("goal",)),
    "ansvarig": FormField(("responsible_agency",)),
    "uppfoljning": FormField(("follow_up",)),
}


def swedish_content(kind: Kind, *, child_key: str) -> FormSpec:
    """The Swedish fields of one kind's content, flattened to the top of the document.

    ``child_key`` names the child object: ``elev`` in the school form,
    ``barn`` in the others.
    """
    child = {child_key: FormField(("content", "child"), inner=_CHILD)}
    if kind is Kind.REFERRAL:
        return {
            **child,
            "behov": FormField(("content", "needs"), inner=_NEED),
            "sammanfattning": FormField(("content", "summary")),
            "onskat_stod": FormField(("content", "requested_support")),
            "bradskande": FormField(("content", "urgency"), values=URGENCY_SV),
            "kontakt": FormField(("content", "contact"), inner=_CONTACT),
            "vardnadshavare_informerade": FormField(("content", "guardians_informed")),
            "svar_senast": FormField(("content", "respond_by")),
        }
    if kind is Kind.CONCERN_REPORT:
        return {
            **child,
            "iakttagelser": FormField(("content", "observations")),
            "omraden": FormField(("content", "need_areas")),
            "akut_fara": FormField(("content", "immediate_danger")),
            "anmalare": FormField(("content", "reporter"), inner=_STAFF),
            "vardnadshavare_informerade": FormField(("content", "guardians_informed")),
            "barnet_informerat": FormField(("content", "child_informed")),
        }
    if kind is Kind.TEAM_INVITATION:
        return {
            **child,
            "motestid": FormField(("content", "meeting_at")),
            "plats": FormField(("content", "place")),
            "inbjudna_roller": FormField(("content", "invited_roles")),
            "dagordning": FormField(("content", "agenda")),
            "svar_senast": FormField(("content", "respond_by")),
        }
    if kind is Kind.TEAM_RESPONSE:
        return {
            "besked": FormField(("content", "answer"), values=ANSWER_SV),
            "deltagare": FormField(("content", "attendee"), inner=_STAFF),
            "skal": FormField(("content", "decline_reason"), values=DECLINE_REASON_SV),
            "skal_beskrivning": FormField(("content", "decline_detail")),
        }
    if kind is Kind.PLAN_UPDATE:
        return {
            **child,
            "plan_id": FormField(("content", "plan_id")),
            "version": FormField(("content", "version")),
            "mal": FormField(("content", "goals"), inner=_GOAL),
            "nasta_uppfoljning": FormField(("content", "next_review")),
        }
    return {}


def _swedish(table: Mapping[str, str], value: str | None) -> str | None:
    if value is None:
        return None
    back = {canonical: own for own, canonical in table.items()}
    return back.get(value, value)


def swedish_kind(kind: Kind) -> str:
    """The Swedish name of a kind, for rendering."""
    return _swedish({**KIND_SV, **_RECEIVED_KIND_SV}, kind.value) or kind.value


def swedish_basis(basis: ConsentBasis | LegalBasis) -> dict[str, str]:
    """``{"samtycke": id}`` or ``{"lagrum": code}``."""
    if isinstance(basis, ConsentBasis):
        return {"samtycke": basis.consent_id}
    return {"lagrum": basis.ref}


def swedish_received_header(item: Received, *, kind_key: str) -> dict[str, Any]:
    """The Swedish metadata of a received message; the content's fields follow it.

    The keys are chosen so that none is also a content field: the recipient's
    own answer is ``vart_besked``/``vart_skal``, the content of a team
    response has ``besked``/``skal``.
    """
    return {
        "meddelande_id": item.message_id,
        kind_key: swedish_kind(item.kind),
        "avsandare": item.sender,
        "barn_pseudonym": item.child,
        "grund": swedish_basis(item.basis),
        "syfte": swedish_purpose(item.purpose),
        "trad": item.thread,
        "svar_pa": item.in_reply_to,
        "skapad": iso(item.created),
        "inkom": iso(item.received_at),
        "status": item.state.value,
        "vart_besked": swedish_answer(item.answer),
        "vart_skal": swedish_decline_reason(item.decline_reason),
    }


def swedish_answer(answer: Answer | None) -> str | None:
    """``ja``/``nej``, or ``None``."""
    return _swedish(ANSWER_SV, answer.value if answer else None)


def swedish_decline_reason(reason: DeclineReason | None) -> str | None:
    """The Swedish decline reason, or ``None``."""
    return _swedish(DECLINE_REASON_SV, reason.value if reason else None)


def swedish_purpose(purpose: Purpose) -> str:
    """The Swedish name of a purpose."""
    return _swedish(PURPOSE_SV, purpose.value) or purpose.value
