"""The wire contract refuses everything it does not define.

Every example here is JSON text, parsed with ``model_validate_json`` exactly as
a message from the network would be: the models are strict, so Python values
would test a different path than the one production takes.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas import b64url_encode
from schemas.common import MAX_CONTENT_BYTES
from schemas.content import (
    CONTENT_MODELS,
    NEED_AREA_LABELS,
    ChildIdentity,
    NeedArea,
    parse_content,
)
from schemas.envelope import Kind, ProtectedHeader
from schemas.export import MODELS
from schemas.reasons import REASON_TEXT, ReasonCode
from schemas.receipts import TRANSPORT_STATUSES, ReceiptStatus

MID = "01234567-89ab-7def-8123-456789abcdef"
MID2 = "01234567-89ab-7def-8123-456789abcde0"
MID3 = "01234567-89ab-7def-8123-456789abcde1"
CHILD = "3f" * 32
GUARDIAN1 = "4a" * 32
GUARDIAN2 = "5b" * 32
DIGEST = "ab" * 32
SIG = b64url_encode(bytes(64))
ED_PUB = b64url_encode(bytes(32))
HPKE_PUB = b64url_encode(bytes(1184 + 32))

HEADER: dict[str, Any] = {
    "v": 1,
    "suite": "backa-v1-mlkem768x25519-hkdfsha256-a256gcm-ed25519",
    "id": MID,
    "kind": "referral",
    "sender": {"agency": "skola", "kid": "k2026"},
    "recipients": [{"agency": "soc", "kid": "k2026", "wrapped_key": "AAAA"}],
    "child": CHILD,
    "basis": {"type": "legal", "ref": "osl-10-28"},
    "purpose": "concern",
    "thread": MID2,
    "created": "2026-11-25T10:00:00Z",
    "expires": "2026-12-25T10:00:00+01:00",
    "iv": "AAAAAAAAAAAAAAAA",
}

DIRECTORY_ENTRY: dict[str, Any] = {
    "area": "orebro-lan",
    "agency": "skola",
    "name": "Örebro grundskola",
    "agency_type": "school",
    "municipality": "Örebro",
    "kid": "k2026",
    "signing_key": ED_PUB,
    "encryption_key": HPKE_PUB,
    "valid_from": "2026-01-01T00:00:00Z",
    "issued_at": "2025-12-20T09:00:00Z",
}

SIGNED_DIRECTORY_ENTRY: dict[str, Any] = {
    "payload": b64url_encode(json.dumps(DIRECTORY_ENTRY).encode()),
    "signature": SIG,
}

RECEIPT: dict[str, Any] = {
    "v": 1,
    "id": MID3,
    "receipt_for": MID,
    "acknowledges": DIGEST,
    "status": "accepted",
    "by": {"agency": "broker", "kid": "b2026"},
    "at": "2026-11-25T10:00:01Z",
    "recipients": ["soc"],
    "log_index": 41,
}

CONSENT: dict[str, Any] = {
    "id": MID,
    "child": CHILD,
    "guardians": [
        {"pseudonym": GUARDIAN1, "custodial": True},
        {"pseudonym": GUARDIAN2, "custodial": True},
    ],
    "joint_custody": True,
    "child_view": {"consented": True, "age": 13, "assessed_mature": True},
    "registered_by": {"agency": "skola", "kid": "k2026", "staff_id": "anna.k"},
    "parties": [{"agency": "skola"}, {"agency": "soc"}, {"agency_type": "bup"}],
    "purposes": ["team", "plan"],
    "valid_from": "2026-11-01T00:00:00+01:00",
    "valid_until": "2027-11-01T00:00:00+01:00",
    "document_digest": DIGEST,
}

REVOCATION: dict[str, Any] = {
    "consent_id": MID,
    "revoked_at": "2027-02-01T08:30:00+01:00",
    "reason": "guardian_withdrew",
    "by": {"agency": "soc", "kid": "k2026", "staff_id": "handlaggare-7"},
}

#: One valid example of every exported model, keyed as in ``schemas.export.MODELS``.
EXAMPLES: dict[str, dict[str, Any]] = {
    "protected_header": HEADER,
    "envelope": {
        "protected": b64url_encode(json.dumps(HEADER).encode()),
        "ciphertext": b64url_encode(bytes(48)),
        "signature": SIG,
    },
    "directory_entry": DIRECTORY_ENTRY,
    "signed_directory_entry": SIGNED_DIRECTORY_ENTRY,
    "directory_bundle": {
        "area": "orebro-lan",
        "root_key": ED_PUB,
        "entries": [SIGNED_DIRECTORY_ENTRY],
    },
    "referral": {
        "child": {"identity_number": "201212121212", "given_name": "Alva"},
        "needs": [
            {"area": "trygghet", "description": "Verkar rädd inför hemgång."},
            {"area": "halsa", "description": "Ofta trött och hungrig på morgonen."},
        ],
        "summary": "Eleven har varit frånvarande och verkar orolig.",
        "requested_support": "Samtal med familjen och kontakt med elevhälsan.",
        "urgency": "soon",
        "contact": {"staff_id": "anna.k", "role": "kurator", "phone": "+46 19 123 45"},
        "guardians_informed": True,
        "respond_by": "2026-12-05T16:00:00+01:00",
    },
    "team_invitation": {
        "child": {"identity_number": "201212121212", "given_name": "Alva"},
        "meeting_at": "2026-12-10T13:00:00+01:00",
        "place": "Skolans konferensrum",
        "invited_roles": ["stödsamordnare", "barnkontakt", "kurator"],
        "agenda": "Barnets plan: nuläge och nästa steg.",
        "respond_by": "2026-12-08T12:00:00+01:00",
    },
    "team_response": {
        "invitation_id": MID,
        "answer": "accepted",
        "attendee": {"staff_id": "per.s", "role": "socialsekreterare"},
    },
    "concern_report": {
        "child": {"identity_number": "201212121212", "given_name": "Alva"},
        "observations": "Blåmärken på armarna vid två tillfällen.",
        "need_areas": ["trygghet", "omsorg"],
        "immediate_danger": False,
        "reporter": {"staff_id": "anna.k", "role": "lärare"},
        "guardians_informed": False,
        "child_informed": True,
    },
    "plan_update": {
        "child": {"identity_number": "201212121212", "given_name": "Alva"},
        "plan_id": MID,
        "version": 2,
        "goals": [
            {
                "area": "utveckling",
                "goal": "Regelbunden närvaro i skolan.",
                "responsible_agency": "skola",
                "follow_up": "2027-01-15",
            }
        ],
        "next_review": "2027-02-01",
    },
    "escalation_notice": {
        "matter": MID,
        "rule": "referral-answer-14d",
        "overdue": "answer",
        "since": "2026-12-05T16:00:00+01:00",
        "child": CHILD,
    },
    "receipt": RECEIPT,
    "signed_receipt": {"payload": b64url_encode(json.dumps(RECEIPT).encode()), "signature": SIG},
    "consent_record": CONSENT,
    "consent_revocation": REVOCATION,
    "signed_consent": {"payload": b64url_encode(json.dumps(CONSENT).encode()), "signature": SIG},
    "signed_revocation": {
        "payload": b64url_encode(json.dumps(REVOCATION).encode()),
        "signature": SIG,
    },
    "audit_entry": {
        "at": "2026-11-25T10:00:01Z",
        "event": "accepted",
        "message_id": MID,
        "kind": "referral",
        "sender": "skola",
        "recipients": ["soc"],
        "child": CHILD,
        "basis": {"type": "consent", "consent_id": MID2},
        "rule": "consent-team",
        "legal_ref": "OSL 12 kap. 2 §",
        "digest": DIGEST,
    },
}

#: Which example each content kind's model has.
CONTENT_EXAMPLES: dict[Kind, str] = {
    Kind.REFERRAL: "referral",
    Kind.TEAM_INVITATION: "team_invitation",
    Kind.TEAM_RESPONSE: "team_response",
    Kind.CONCERN_REPORT: "concern_report",
    Kind.PLAN_UPDATE: "plan_update",
    Kind.ESCALATION: "escalation_notice",
}

_DELETE = object()

#: Where a value sits in a JSON document, as pydantic reports an error's ``loc``.
Loc = tuple[str | int, ...]


def _with(doc: dict[str, Any], path: Loc, value: object) -> dict[str, Any]:
    """A deep copy of ``doc`` with ``value`` at ``path`` (or that key removed)."""
    result = copy.deepcopy(doc)
    parent: Any = result
    for step in path[:-1]:
        parent = parent[step]
    if value is _DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return result


def _parse(name: str, doc: dict[str, Any]) -> BaseModel:
    return MODELS[name].model_validate_json(json.dumps(doc))


def _round_trips(name: str, doc: dict[str, Any]) -> bool:
    """The document parses, and the parsed model survives its own JSON unchanged."""
    parsed = _parse(name, doc)
    return MODELS[name].model_validate_json(parsed.model_dump_json()) == parsed


def _errors(name: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        _parse(name, doc)
    return [dict(error) for error in info.value.errors()]


def assert_refused_by_validator(name: str, doc: dict[str, Any], message: str) -> None:
    errors = _errors(name, doc)
    assert any(message in error["msg"] for error in errors), errors


# --- every model ---------------------------------------------------------------


def test_every_exported_model_has_an_example() -> None:
    """Each model named for JSON Schema export has a valid example in this file."""
    assert set(EXAMPLES) == set(MODELS)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_valid_example_parses_and_round_trips(name: str) -> None:
    """A valid JSON example parses, and its own JSON output parses back to an equal value."""
    model = _parse(name, EXAMPLES[name])
    assert type(model).model_validate_json(model.model_dump_json()) == model


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_unknown_top_level_field_is_refused(name: str) -> None:
    """A field the contract does not define is refused, not ignored."""
    errors = _errors(name, _with(EXAMPLES[name], ("unexpected",), 1))
    assert [e["type"] for e in errors] == ["extra_forbidden"]


@pytest.mark.parametrize(
    ("name", "path"),
    [
        pytest.param("protected_header", ("sender",), id="header-sender"),
        pytest.param("protected_header", ("recipients", 0), id="header-recipient"),
        pytest.param("referral", ("contact",), id="referral-contact"),
        pytest.param("referral", ("needs", 0), id="referral-need"),
        pytest.param("team_response", ("attendee",), id="team-response-attendee"),
        pytest.param("plan_update", ("goals", 0), id="plan-goal"),
        pytest.param("receipt", ("by",), id="receipt-by"),
        pytest.param("consent_record", ("child_view",), id="consent-child-view"),
        pytest.param("consent_record", ("guardians", 0), id="consent-guardian"),
        pytest.param("consent_revocation", ("by",), id="revocation-by"),
    ],
)
def test_unknown_nested_field_is_refused(name: str, path: Loc) -> None:
    """Nested objects are as closed as the top level."""
    doc = copy.deepcopy(EXAMPLES[name])
    target: Any = doc
    for step in path:
        target = target[step]
    target["unexpected"] = True
    errors = _errors(name, doc)
    assert [e["type"] for e in errors] == ["extra_forbidden"]


def test_the_protected_header_is_frozen() -> None:
    """A parsed model is a value: assigning to a field fails."""
    header = ProtectedHeader.model_validate_json(json.dumps(HEADER))
    with pytest.raises(ValidationError):
        header.kind = Kind.PLAN_UPDATE  # type: ignore[misc]  # the refusal is what is tested


# --- datetimes -----------------------------------------------------------------

NAIVE = "2026-11-25T10:00:00"


@pytest.mark.parametrize(
    ("name", "path"),
    [
        pytest.param("protected_header", ("created",), id="header-created"),
        pytest.param("protected_header", ("expires",), id="header-expires"),
        pytest.param("directory_entry", ("valid_from",), id="directory-valid-from"),
        pytest.param("referral", ("respond_by",), id="referral-respond-by"),
        pytest.param("team_invitation", ("meeting_at",), id="invitation-meeting-at"),
        pytest.param("escalation_notice", ("since",), id="escalation-since"),
        pytest.param("receipt", ("at",), id="receipt-at"),
        pytest.param("consent_record", ("valid_from",), id="consent-valid-from"),
        pytest.param("consent_revocation", ("revoked_at",), id="revocation-revoked-at"),
        pytest.param("audit_entry", ("at",), id="audit-at"),
    ],
)
def test_naive_datetime_is_refused(name: str, path: Loc) -> None:
    """A datetime without a timezone is refused wherever a timestamp is expected."""
    errors = _errors(name, _with(EXAMPLES[name], path, NAIVE))
    assert any(e["type"] == "timezone_aware" and tuple(e["loc"]) == path for e in errors)


def test_epoch_number_is_refused_as_a_timestamp() -> None:
    """A number where a timestamp belongs is refused: strict mode parses only text."""
    errors = _errors("receipt", _with(RECEIPT, ("at",), 1_764_064_800))
    assert [tuple(e["loc"]) for e in errors] == [("at",)]


# --- strictness ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path", "value"),
    [
        pytest.param("plan_update", ("version",), "2", id="int-as-string"),
        pytest.param("plan_update", ("version",), 2.5, id="int-as-float"),
        pytest.param("plan_update", ("version",), 0, id="version-zero"),
        pytest.param("referral", ("guardians_informed",), 1, id="bool-as-int"),
        pytest.param("referral", ("guardians_informed",), "true", id="bool-as-string"),
        pytest.param("referral", ("urgency",), "asap", id="unknown-enum-value"),
        pytest.param("referral", ("needs", 0, "area"), "Hälsa", id="label-not-id"),
        pytest.param("protected_header", ("id",), MID + "\n", id="id-trailing-newline"),
        pytest.param("protected_header", ("id",), MID.upper(), id="id-upper-case"),
        pytest.param("receipt", ("log_index",), -1, id="negative-log-index"),
        pytest.param("consent_record", ("child_view", "age"), 18, id="child-age-18"),
        pytest.param("signed_receipt", ("signature",), SIG[:-2] + "==", id="padded-b64"),
        pytest.param("plan_update", ("next_review",), "2027-02-01T00:00:00Z", id="date-as-dt"),
    ],
)
def test_loose_value_is_refused(name: str, path: Loc, value: object) -> None:
    """Values that a lax parser would coerce or accept are refused at their field."""
    errors = _errors(name, _with(EXAMPLES[name], path, value))
    assert [tuple(e["loc"]) for e in errors] == [path]


@pytest.mark.parametrize(
    ("name", "path"),
    [
        pytest.param("referral", ("summary",), id="referral-summary"),
        pytest.param("team_invitation", ("place",), id="invitation-place"),
        pytest.param("team_response", ("invitation_id",), id="team-response-invitation"),
        pytest.param("receipt", ("acknowledges",), id="receipt-acknowledges"),
        pytest.param("consent_record", ("document_digest",), id="consent-digest"),
        pytest.param("audit_entry", ("event",), id="audit-event"),
    ],
)
def test_missing_required_field_is_refused(name: str, path: Loc) -> None:
    """A required field may not be left out."""
    errors = _errors(name, _with(EXAMPLES[name], path, _DELETE))
    assert ("missing", path) in [(e["type"], tuple(e["loc"])) for e in errors]


# --- bounds --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path", "value"),
    [
        pytest.param("referral", ("summary",), "x" * 10_001, id="referral-summary"),
        pytest.param("referral", ("needs", 0, "description"), "x" * 10_001, id="need-text"),
        pytest.param("referral", ("contact", "role"), "x" * 65, id="contact-role"),
        pytest.param("referral", ("contact", "phone"), "1" * 40, id="contact-phone"),
        pytest.param("referral", ("contact", "staff_id"), "s" * 65, id="contact-staff-id"),
        pytest.param("team_invitation", ("place",), "x" * 201, id="invitation-place"),
        pytest.param("team_invitation", ("invited_roles", 0), "x" * 65, id="invited-role"),
        pytest.param("team_invitation", ("agenda",), "x" * 10_001, id="invitation-agenda"),
        pytest.param("concern_report", ("observations",), "x" * 10_001, id="observations"),
        pytest.param("plan_update", ("goals", 0, "goal"), "x" * 10_001, id="plan-goal"),
        pytest.param("escalation_notice", ("rule",), "r" * 65, id="escalation-rule"),
        pytest.param("directory_entry", ("name",), "x" * 201, id="directory-name"),
        pytest.param("audit_entry", ("legal_ref",), "x" * 201, id="audit-legal-ref"),
        pytest.param("audit_entry", ("rule",), "r" * 65, id="audit-rule"),
        pytest.param("referral", ("summary",), "", id="empty-summary"),
        pytest.param("team_invitation", ("place",), "", id="empty-place"),
    ],
)
def test_string_out_of_bounds_is_refused(name: str, path: Loc, value: str) -> None:
    """Strings over (or under) their limit are refused at their field."""
    errors = _errors(name, _with(EXAMPLES[name], path, value))
    assert [tuple(e["loc"]) for e in errors] == [path]


def test_overlong_audit_query_is_refused() -> None:
    """An audit query over 1,000 characters is refused."""
    doc = {"at": "2026-11-25T10:00:00Z", "event": "audit_read", "actor": "officer-1"}
    assert _round_trips("audit_entry", _with(doc, ("query",), "q" * 1_000))
    errors = _errors("audit_entry", _with(doc, ("query",), "q" * 1_001))
    assert [tuple(e["loc"]) for e in errors] == [("query",)]


def _recipient(i: int) -> dict[str, str]:
    return {"agency": f"agency-{i}", "kid": "k2026", "wrapped_key": "AAAA"}


_NINE_NEEDS = [{"area": area, "description": "x"} for area in [*NeedArea, "halsa"]]
_GOAL = EXAMPLES["plan_update"]["goals"][0]
_GUARDIANS = [{"pseudonym": f"{i:064x}", "custodial": True} for i in range(5)]
_SIX_PURPOSES = ["team", "plan", "referral", "concern", "coordination", "team"]
_AGENCIES = [f"agency-{i}" for i in range(33)]


@pytest.mark.parametrize(
    ("name", "path", "value"),
    [
        pytest.param(
            "protected_header",
            ("recipients",),
            [_recipient(i) for i in range(33)],
            id="header-recipients",
        ),
        pytest.param("referral", ("needs",), _NINE_NEEDS, id="referral-needs"),
        pytest.param(
            "team_invitation",
            ("invited_roles",),
            [f"roll-{i}" for i in range(17)],
            id="invited-roles",
        ),
        pytest.param("concern_report", ("need_areas",), [*NeedArea, "halsa"], id="concern-areas"),
        pytest.param("plan_update", ("goals",), [_GOAL] * 65, id="plan-goals"),
        pytest.param("receipt", ("recipients",), _AGENCIES, id="receipt-recipients"),
        pytest.param("consent_record", ("guardians",), _GUARDIANS, id="consent-guardians"),
        pytest.param(
            "consent_record",
            ("parties",),
            [{"agency": agency} for agency in _AGENCIES],
            id="consent-parties",
        ),
        pytest.param("consent_record", ("purposes",), _SIX_PURPOSES, id="consent-purposes"),
        pytest.param("audit_entry", ("recipients",), _AGENCIES, id="audit-recipients"),
    ],
)
def test_overlong_list_is_refused(name: str, path: Loc, value: list[Any]) -> None:
    """Lists over their limit are refused before their items are even looked at."""
    errors = _errors(name, _with(EXAMPLES[name], path, value))
    assert [(e["type"], tuple(e["loc"])) for e in errors] == [("too_long", path)]


@pytest.mark.parametrize(
    ("name", "path", "value"),
    [
        pytest.param("protected_header", ("recipients",), [], id="header-recipients"),
        pytest.param("referral", ("needs",), [], id="referral-needs"),
        pytest.param("team_invitation", ("invited_roles",), [], id="invited-roles"),
        pytest.param("plan_update", ("goals",), [], id="plan-goals"),
        pytest.param("consent_record", ("guardians",), [], id="consent-guardians"),
        pytest.param("consent_record", ("parties",), [{"agency": "skola"}], id="consent-one-party"),
        pytest.param("consent_record", ("purposes",), [], id="consent-purposes"),
    ],
)
def test_too_short_list_is_refused(name: str, path: Loc, value: list[Any]) -> None:
    """Lists that must name something refuse to be empty (or, for parties, one-sided)."""
    errors = _errors(name, _with(EXAMPLES[name], path, value))
    assert [(e["type"], tuple(e["loc"])) for e in errors] == [("too_short", path)]


def test_content_over_the_size_limit_is_refused_before_parsing() -> None:
    """Content bytes over MAX_CONTENT_BYTES are refused with a plain ValueError."""
    data = b" " * (MAX_CONTENT_BYTES + 1)
    with pytest.raises(ValueError, match="MAX_CONTENT_BYTES") as info:
        parse_content(Kind.REFERRAL, data)
    assert not isinstance(info.value, ValidationError)


# --- the protected header ------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {"expires": "2026-11-25T10:00:00Z"}, "expires must be after created", id="expires-equal"
        ),
        pytest.param(
            {"expires": "2026-11-25T10:30:00+01:00"},
            "expires must be after created",
            id="expires-earlier-in-another-zone",
        ),
        pytest.param(
            {"recipients": [_recipient(1), {**_recipient(1), "kid": "k2027"}]},
            "a recipient agency is listed twice",
            id="duplicate-recipient-agency",
        ),
        pytest.param(
            {"recipients": [_recipient(1), {**_recipient(2), "agency": "skola"}]},
            "the sender cannot be its own recipient",
            id="sender-as-recipient",
        ),
    ],
)
def test_incoherent_header_is_refused(changes: dict[str, Any], message: str) -> None:
    """The header's own validators refuse what no honest sender would sign."""
    assert_refused_by_validator("protected_header", {**HEADER, **changes}, message)


def test_header_recipient_lookup_matches_agency_and_key_id() -> None:
    """A recipient is found only by its agency together with its key id."""
    header = ProtectedHeader.model_validate_json(json.dumps(HEADER))
    assert header.recipient("soc", "k2026") is not None
    assert header.recipient("soc", "k2027") is None
    assert header.recipient("skola", "k2026") is None


# --- receipts ------------------------------------------------------------------

_RECEIPT_BASE: dict[str, Any] = {
    key: RECEIPT[key] for key in ("v", "id", "receipt_for", "acknowledges", "at")
}
_BROKER = {"agency": "broker", "kid": "b2026"}
_RECIPIENT = {"agency": "soc", "kid": "k2026"}


def _receipt(**fields: object) -> dict[str, Any]:
    return {**_RECEIPT_BASE, "by": _RECIPIENT, **fields}


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(_receipt(status="accepted", by=_BROKER, recipients=["soc"]), id="accepted"),
        pytest.param(
            _receipt(status="accepted", by=_BROKER, recipients=["soc", "bup"], log_index=0),
            id="accepted-with-log-index",
        ),
        pytest.param(
            _receipt(status="rejected", by=_BROKER, reason="consent_revoked"), id="rejected"
        ),
        pytest.param(_receipt(status="rejected", reason="envelope_invalid"), id="rejected-by-rcpt"),
        pytest.param(_receipt(status="delivered"), id="delivered"),
        pytest.param(_receipt(status="handed_over"), id="handed-over"),
        pytest.param(_receipt(status="read"), id="read-anonymous"),
        pytest.param(_receipt(status="read", staff_id="per.s"), id="read-by-person"),
        pytest.param(
            _receipt(status="answered", answer="accepted", staff_id="per.s"), id="answered-yes"
        ),
        pytest.param(
            _receipt(status="answered", answer="declined", decline_reason="no_capacity"),
            id="answered-no",
        ),
        pytest.param(_receipt(status="expired", by=_BROKER), id="expired"),
    ],
)
def test_coherent_receipt_parses(doc: dict[str, Any]) -> None:
    """Each status with exactly the fields it needs is a valid receipt."""
    assert _round_trips("receipt", doc)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        pytest.param(
            _receipt(status="accepted", by=_BROKER),
            "recipients is required",
            id="accepted-no-rcpts",
        ),
        pytest.param(
            _receipt(status="delivered", recipients=["soc"]),
            "recipients is required",
            id="recipients-on-delivered",
        ),
        pytest.param(
            _receipt(status="accepted", by=_BROKER, recipients=["soc", "soc"]),
            "listed twice",
            id="duplicate-recipients",
        ),
        pytest.param(
            _receipt(status="delivered", log_index=3), "log_index", id="log-index-on-delivered"
        ),
        pytest.param(_receipt(status="rejected"), "reason is required", id="rejected-no-reason"),
        pytest.param(
            _receipt(status="delivered", reason="internal_error"),
            "reason is required",
            id="reason-on-delivered",
        ),
        pytest.param(_receipt(status="answered"), "answer is required", id="answered-no-answer"),
        pytest.param(
            _receipt(status="read", answer="accepted"), "answer is required", id="answer-on-read"
        ),
        pytest.param(
            _receipt(status="answered", answer="declined"),
            "decline_reason is required",
            id="declined-no-reason",
        ),
        pytest.param(
            _receipt(status="answered", answer="accepted", decline_reason="other"),
            "decline_reason is required",
            id="decline-reason-on-accepted",
        ),
        pytest.param(
            _receipt(status="delivered", decline_reason="other"),
            "decline_reason is required",
            id="decline-reason-without-answer",
        ),
        pytest.param(
            _receipt(status="delivered", staff_id="per.s"), "staff_id", id="staff-on-delivered"
        ),
        pytest.param(
            _receipt(status="delivered", receipt_for=RECEIPT["id"]),
            "cannot acknowledge itself",
            id="self-receipt",
        ),
    ],
)
def test_incoherent_receipt_is_refused(doc: dict[str, Any], message: str) -> None:
    """A field that does not belong to the status, or is missing for it, is refused."""
    assert_refused_by_validator("receipt", doc, message)


def test_receipt_refuses_free_text_decline() -> None:
    """A decline reason outside the closed list is refused: the broker must never read prose."""
    doc = _receipt(status="answered", answer="declined", decline_reason="Vi har inte tid.")
    errors = _errors("receipt", doc)
    assert [tuple(e["loc"]) for e in errors] == [("decline_reason",)]


def test_only_answered_is_a_business_status() -> None:
    """Every status but the business answer is a transport status."""
    assert {s for s in ReceiptStatus if not s.is_transport} == {ReceiptStatus.ANSWERED}
    assert frozenset(s for s in ReceiptStatus if s.is_transport) == TRANSPORT_STATUSES


# --- team invitations and responses --------------------------------------------

_ATTENDEE = {"staff_id": "per.s", "role": "socialsekreterare"}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        pytest.param(
            {"answer": "accepted"},
            "attendee is required when accepted",
            id="accepted-without-attendee",
        ),
        pytest.param(
            {"answer": "accepted", "attendee": _ATTENDEE, "decline_reason": "other"},
            "refused when accepted",
            id="accepted-with-decline-reason",
        ),
        pytest.param(
            {"answer": "accepted", "attendee": _ATTENDEE, "decline_detail": "Nej."},
            "refused when accepted",
            id="accepted-with-decline-detail",
        ),
        pytest.param({"answer": "declined"}, "decline_reason is required", id="declined-bare"),
        pytest.param(
            {"answer": "declined", "decline_detail": "Ingen tid."},
            "decline_reason is required",
            id="declined-detail-only",
        ),
        pytest.param(
            {"answer": "declined", "decline_reason": "no_capacity", "attendee": _ATTENDEE},
            "attendee is required when accepted",
            id="declined-with-attendee",
        ),
    ],
)
def test_incoherent_team_response_is_refused(doc: dict[str, Any], message: str) -> None:
    """An acceptance names who comes; a decline says why; neither carries the other's fields."""
    assert_refused_by_validator("team_response", {"invitation_id": MID, **doc}, message)


def test_declined_team_response_parses() -> None:
    """A decline with a closed reason and optional free text is valid content."""
    doc = {
        "invitation_id": MID,
        "answer": "declined",
        "decline_reason": "other",
        "decline_detail": "Familjen har flyttat från kommunen.",
    }
    assert _round_trips("team_response", doc)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {"respond_by": "2026-12-10T13:00:00+01:00"},
            "respond_by must be before meeting_at",
            id="respond-at-meeting",
        ),
        pytest.param(
            {"respond_by": "2026-12-10T12:30:00Z"},
            "respond_by must be before meeting_at",
            id="respond-after-meeting-in-utc",
        ),
        pytest.param(
            {"invited_roles": ["kurator", "kurator"]},
            "invited_roles lists the same value twice",
            id="duplicate-role",
        ),
    ],
)
def test_incoherent_team_invitation_is_refused(changes: dict[str, Any], message: str) -> None:
    """An invitation must leave time to answer before the meeting and name each role once."""
    assert_refused_by_validator(
        "team_invitation", {**EXAMPLES["team_invitation"], **changes}, message
    )


# --- referrals, concern reports ------------------------------------------------


def test_referral_refuses_a_need_area_twice() -> None:
    """Each need area is described once per referral."""
    needs = [{"area": "halsa", "description": "a"}, {"area": "halsa", "description": "b"}]
    doc = _with(EXAMPLES["referral"], ("needs",), needs)
    assert_refused_by_validator("referral", doc, "needs lists the same value twice")


def test_referral_without_optional_fields_parses() -> None:
    """A referral needs no phone number and no answer deadline."""
    doc = _with(EXAMPLES["referral"], ("respond_by",), _DELETE)
    assert _round_trips("referral", _with(doc, ("contact", "phone"), _DELETE))


def test_concern_report_may_leave_need_areas_empty() -> None:
    """A reporter is never held up by having to classify a concern first."""
    assert _round_trips("concern_report", _with(EXAMPLES["concern_report"], ("need_areas",), []))


def test_concern_report_refuses_a_need_area_twice() -> None:
    """Need areas of a concern report are a set."""
    doc = _with(EXAMPLES["concern_report"], ("need_areas",), ["omsorg", "omsorg"])
    assert_refused_by_validator("concern_report", doc, "need_areas lists the same value twice")


def test_need_areas_are_ascii_with_swedish_labels() -> None:
    """Every need area has an ASCII id and a Swedish label, and there are eight."""
    assert len(NeedArea) == 8
    assert set(NEED_AREA_LABELS) == set(NeedArea)
    assert all(area.value.isascii() for area in NeedArea)
    assert NEED_AREA_LABELS[NeedArea.TILLHORIGHET] == "Tillhörighet"
    assert NEED_AREA_LABELS[NeedArea.HALSA] == "Hälsa"


# --- content dispatch ----------------------------------------------------------


def test_every_kind_but_receipt_has_a_content_model() -> None:
    """Receipts travel as signed receipts; every other kind has encrypted content."""
    assert set(CONTENT_MODELS) == set(Kind) - {Kind.RECEIPT}
    assert set(CONTENT_EXAMPLES) == set(CONTENT_MODELS)


@pytest.mark.parametrize("kind", sorted(CONTENT_EXAMPLES), ids=str)
def test_parse_content_uses_the_model_of_the_kind(kind: Kind) -> None:
    """Content bytes parse as the model that belongs to the header's kind."""
    data = json.dumps(EXAMPLES[CONTENT_EXAMPLES[kind]]).encode()
    assert isinstance(parse_content(kind, data), CONTENT_MODELS[kind])


def test_parse_content_refuses_content_of_another_kind() -> None:
    """A referral's content is not a valid concern report."""
    data = json.dumps(EXAMPLES["referral"]).encode()
    with pytest.raises(ValidationError):
        parse_content(Kind.CONCERN_REPORT, data)


def test_parse_content_raises_validation_error_for_bad_json() -> None:
    """Bytes that are not JSON raise pydantic's ValidationError unchanged."""
    with pytest.raises(ValidationError) as info:
        parse_content(Kind.REFERRAL, b"{not json")
    assert info.value.errors()[0]["type"] == "json_invalid"


def test_parse_content_refuses_receipt_kind() -> None:
    """Receipts have no content model, so parsing content as one is an error."""
    with pytest.raises(ValueError, match="no content model"):
        parse_content(Kind.RECEIPT, b"{}")


# --- consents ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {"valid_until": CONSENT["valid_from"]},
            "valid_until must be after valid_from",
            id="empty-validity",
        ),
        pytest.param(
            {"guardians": [{"pseudonym": GUARDIAN1, "custodial": True}] * 2},
            "a guardian is listed twice",
            id="duplicate-guardian",
        ),
        pytest.param(
            {"guardians": [{"pseudonym": CHILD, "custodial": True}]},
            "the child cannot be its own guardian",
            id="child-as-guardian",
        ),
        pytest.param(
            {"parties": [{"agency": "soc"}, {"agency": "soc"}]},
            "a party is listed twice",
            id="duplicate-agency",
        ),
        pytest.param(
            {"parties": [{"agency_type": "bup"}, {"agency_type": "bup"}]},
            "a party is listed twice",
            id="duplicate-agency-type",
        ),
        pytest.param(
            {"purposes": ["team", "team"]}, "a purpose is listed twice", id="duplicate-purpose"
        ),
    ],
)
def test_incoherent_consent_is_refused(changes: dict[str, Any], message: str) -> None:
    """A consent must be coherent in itself; who must consent is left to policy."""
    assert_refused_by_validator("consent_record", {**CONSENT, **changes}, message)


@pytest.mark.parametrize(
    "party",
    [
        pytest.param({}, id="empty"),
        pytest.param({"agency": "soc", "agency_type": "social_services"}, id="both-keys"),
        pytest.param({"agency_type": "kommunen"}, id="unknown-agency-type"),
        pytest.param({"name": "soc"}, id="unknown-key"),
        pytest.param("soc", id="bare-string"),
    ],
)
def test_consent_party_is_one_agency_or_one_agency_type(party: object) -> None:
    """A party is exactly {"agency": id} or {"agency_type": type}, nothing else."""
    doc = _with(CONSENT, ("parties", 0), party)
    errors = _errors("consent_record", doc)
    assert all(tuple(e["loc"])[:2] == ("parties", 0) for e in errors), errors


def test_consent_leaves_who_must_consent_to_policy() -> None:
    """A consent from one custodial guardian under joint custody still parses: that is policy."""
    doc = {**CONSENT, "guardians": [{"pseudonym": GUARDIAN1, "custodial": True}]}
    assert _round_trips("consent_record", _with(doc, ("child_view",), _DELETE))


# --- audit ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        pytest.param({"event": "rejected"}, "must name its reason", id="rejected-no-reason"),
        pytest.param({"event": "receipt"}, "must name its status", id="receipt-no-status"),
        pytest.param({"event": "audit_read"}, "must name its actor", id="audit-read-no-actor"),
        pytest.param(
            {"event": "accepted", "query": "child=ab"}, "query is only allowed", id="stray-query"
        ),
    ],
)
def test_incoherent_audit_entry_is_refused(doc: dict[str, Any], message: str) -> None:
    """An audit entry answers the why or who its event is about."""
    assert_refused_by_validator("audit_entry", {"at": "2026-11-25T10:00:00Z", **doc}, message)


# --- reason codes --------------------------------------------------------------

#: Codes that agency systems already branch on; none may disappear or be renamed.
PUBLISHED_REASON_CODES = {
    "envelope_invalid", "too_large", "bad_json", "schema_invalid", "unknown_sender",
    "sender_key_invalid", "user_id_mismatch", "replayed", "too_old", "from_future", "expired",
    "unknown_recipient", "recipient_key_unknown", "no_basis", "consent_missing",
    "consent_expired", "consent_not_yet_valid", "consent_revoked", "consent_scope_party",
    "consent_scope_purpose", "consent_child_mismatch", "basis_not_allowed_for_kind",
    "recipient_type_not_allowed", "sender_type_not_allowed", "condition_not_met",
    "delivery_limit", "undeliverable", "not_opened", "policy_unavailable", "internal_error",
    "unknown_message", "receipt_mismatch", "basis_not_allowed_for_purpose",
    "consent_guardian_missing", "consent_child_view_missing", "consent_child_consent_missing",
    "consent_validity_invalid", "consent_unknown_party",
}  # fmt: skip


def test_published_reason_codes_are_all_still_defined() -> None:
    """No published reason code has been removed or renamed."""
    assert {code.value for code in ReasonCode} >= PUBLISHED_REASON_CODES


@pytest.mark.parametrize("code", list(ReasonCode), ids=str)
def test_every_reason_code_has_one_sentence_of_text(code: ReasonCode) -> None:
    """Each reason code has an English sentence a person can act on."""
    text = REASON_TEXT[code]
    assert text[0].isupper()
    assert text.endswith(".")
    assert text.count(". ") == 0
    assert text.isascii()


def test_reason_text_has_no_orphan_entries() -> None:
    """Every text belongs to a defined reason code."""
    assert set(REASON_TEXT) == set(ReasonCode)


@pytest.mark.parametrize(
    "number",
    [
        pytest.param("1212121212", id="ten-digits"),
        pytest.param("20121212-1212", id="separator"),
        pytest.param("2012121212a2", id="letter"),
    ],
)
def test_child_identity_must_be_a_normalised_twelve_digit_number(number: str) -> None:
    """Content carries the identity number only in its normalised 12-digit form."""
    with pytest.raises(ValidationError):
        ChildIdentity.model_validate_json(json.dumps({"identity_number": number}))
