"""The consent and legal-basis engine: may this message go, and may this consent be registered?

Both the broker (when it accepts a message) and the recipient adapter (again
before it hands the message over) run :func:`decide`, so it lives here, below
both of them; the rules themselves are data (``schemas.policy``, read from a
file such as ``deploy/policy/sweden.toml``) that a lawyer can review.

Pure: no I/O except :func:`load_policy` reading the file; time is an argument
and every comparison is between timezone-aware datetimes. It must never fail
open: anything unknown (an agency missing from the directory, a consent not
in the book, a basis no rule names) is a refusal with a stable reason code,
never an exception and never an allowance.

How :func:`decide` reads a header
---------------------------------

1. The sender and every recipient must be agencies in the directory, and none
   the broker; otherwise ``no_basis``.
2. Under a consent (OSL 12 kap. 2 §), in this order: the consent is
   registered (``consent_missing``), about this child
   (``consent_child_mismatch``), not revoked at ``now`` (``consent_revoked``;
   a revocation takes effect at ``revoked_at`` inclusive), already valid
   (``consent_not_yet_valid``; ``valid_from`` inclusive), still valid
   (``consent_expired``; ``valid_until`` exclusive), names the sender and
   every recipient as parties, by agency id or by agency type
   (``consent_scope_party``) and names the purpose
   (``consent_scope_purpose``). Then a rule with basis ``consent`` must cover
   the message, as below; a policy without such a rule gives ``no_basis``.
3. Under a legal basis, the candidate rules are those whose basis is the
   header's code (never the ``consent`` rules); none gives ``no_basis``.
4. A rule *covers* a message when it lists the kind, the sender's type, the
   type of every recipient and (if it lists purposes) the purpose. When no
   candidate covers, the refusal names the check that the *most specific*
   candidate failed: each candidate is checked in the order kind, sender,
   recipients, purpose, and the candidate that got furthest wins (the first
   such in file order). A rule that allows the kind but not the sender says
   more about why the message was refused than one that does not even allow
   the kind, so the sender learns what to change. The codes are
   ``basis_not_allowed_for_kind``, ``sender_type_not_allowed``,
   ``recipient_type_not_allowed`` and, for the purpose,
   ``consent_scope_purpose`` under a consent or
   ``basis_not_allowed_for_purpose`` under a legal basis.
5. Of the covering rules, the first whose conditions are known to hold wins.
   Without child facts (the broker, which sees only a pseudonym) a condition
   cannot be checked: the first covering rule then wins with its conditions
   in ``deferred``, and the recipient adapter, which knows the child's age,
   runs :func:`decide` again with :class:`ChildFacts` before hand-over. With
   child facts, a condition that does not hold on every covering rule gives
   ``condition_not_met``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

from pydantic import ValidationError

from keys.errors import KeysError
from schemas.consent import AgencyRef, AgencyTypeRef, ConsentRecord
from schemas.directory import AgencyType
from schemas.envelope import ConsentBasis, Kind, ProtectedHeader, Purpose
from schemas.policy import (
    CONSENT_BASIS,
    Condition,
    ConsentSection,
    PolicyFile,
    PolicyRule,
)
from schemas.reasons import ReasonCode

__all__ = [
    "BACKDATE_TOLERANCE",
    "CONSENT_BASIS",
    "AgencyTypes",
    "ChildFacts",
    "Condition",
    "ConsentProblem",
    "ConsentSection",
    "ConsentState",
    "PolicyDecision",
    "PolicyError",
    "PolicyFile",
    "PolicyRule",
    "consent_allows_party",
    "decide",
    "load_policy",
    "parse_policy",
    "validate_consent",
]

#: How far before its registration a consent's validity may begin. A consent
#: waives secrecy from the moment it is given, never for sharing that already
#: happened, so it cannot be backdated; one day allows for a paper consent
#: signed the day before it is registered and for clocks that disagree.
BACKDATE_TOLERANCE: Final = timedelta(days=1)

#: Age of majority: custody, and with it the guardians' say, ends at 18 (FB 6 kap. 2 §).
_MAJORITY = 18


class PolicyError(KeysError):
    """The policy file is invalid; the message names the file, the rule and the field.

    An operator's fault found at start-up: the broker and the adapters refuse
    to start rather than run without rules.
    """

    code = "policy_invalid"
    http_status = 500


# --- the file ------------------------------------------------------------------------------


def parse_policy(text: str, *, source: str) -> PolicyFile:
    """Parse a policy file's TOML text; ``source`` names it in every error."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return PolicyFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(data, dict(err)) for err in exc.errors())
        raise PolicyError(f"{source}: {problems}") from exc


def load_policy(path: Path) -> PolicyFile:
    """Read and parse the policy file at ``path`` (the engine's only I/O)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc}") from exc
    return parse_policy(text, source=str(path))


def _problem(data: Mapping[str, Any], err: Mapping[str, Any]) -> str:
    """One validation error as ``rule[2] (id 'x').senders[0]: <message> (got 'y')``."""
    ctx = err.get("ctx") or {}
    # Our own validators' messages read better without pydantic's "Value error, " prefix.
    message = (
        str(ctx["error"]) if err.get("type") == "value_error" and "error" in ctx else err["msg"]
    )
    loc: tuple[int | str, ...] = tuple(err.get("loc", ()))
    got = err.get("input")
    if isinstance(got, str | int | float | bool) and err.get("type") != "value_error":
        message += f" (got {got!r})"
    if not loc:
        return message
    return f"{rule_location(data, loc)}: {message}"


def rule_location(data: Mapping[str, Any], loc: tuple[int | str, ...]) -> str:
    """A location in a rules file (``[[rule]]`` tables) as a person reads it.

    Names a rule by its index and its id: ``rule[2] (id 'x').senders[0]``.
    Shared by every rules file (the policy, the deadlines).
    """
    text = ""
    for position, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
            if position == 1 and loc[0] == "rule":
                text += f" (id {_rule_id(data, part)!r})"
        else:
            text += f".{part}" if text else str(part)
    return text


def _rule_id(data: Mapping[str, Any], index: int) -> str:
    rules = data.get("rule")
    if isinstance(rules, list) and index < len(rules) and isinstance(rules[index], dict):
        rule_id = rules[index].get("id")
        if isinstance(rule_id, str):
            return rule_id
    return "?"


# --- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentState:
    """A registered consent and, once revoked, when the revocation took effect."""

    record: ConsentRecord
    revoked_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.revoked_at is not None:
            _require_aware(self.revoked_at, "revoked_at")


@dataclass(frozen=True, slots=True)
class ChildFacts:
    """What is known about the child from its personnummer; only the adapters know it."""

    age: int

    def __post_init__(self) -> None:
        if self.age < 0:
            raise ValueError("a child's age cannot be negative")


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """Allowed (with the rule, its legal reference and the consent used) or refused (with a reason).

    ``deferred`` lists the allowing rule's conditions that could not be
    checked without child facts; whoever holds the facts must check them again.
    """

    allowed: bool
    reason: ReasonCode | None = None
    rule: str | None = None
    legal_ref: str | None = None
    consent_id: str | None = None
    deferred: tuple[Condition, ...] = ()


class AgencyTypes(Protocol):
    """What the engine needs of the directory: an agency's type, or None if unknown."""

    def agency_type(self, agency: str) -> AgencyType | None:
        """The type of ``agency``, or None if the directory does not know it."""
        ...


def _refuse(reason: ReasonCode) -> PolicyDecision:
    return PolicyDecision(allowed=False, reason=reason)


#: How each condition is checked once the child's facts are known.
_CONDITION_HOLDS: Final[dict[Condition, Callable[[ChildFacts], bool]]] = {
    Condition.CHILD_UNDER_18: lambda child: child.age < _MAJORITY,
}

#: The refusal for the check each stage of rule matching failed (see the module docstring).
_LEGAL_MISSES: Final = (
    ReasonCode.BASIS_NOT_ALLOWED_FOR_KIND,
    ReasonCode.SENDER_TYPE_NOT_ALLOWED,
    ReasonCode.RECIPIENT_TYPE_NOT_ALLOWED,
    ReasonCode.BASIS_NOT_ALLOWED_FOR_PURPOSE,
)
_CONSENT_MISSES: Final = (*_LEGAL_MISSES[:3], ReasonCode.CONSENT_SCOPE_PURPOSE)


def decide(
    header: ProtectedHeader,
    *,
    directory: AgencyTypes,
    consents: Mapping[str, ConsentState],
    policy: PolicyFile,
    now: datetime,
    child: ChildFacts | None = None,
) -> PolicyDecision:
    """The decision for ``header`` at ``now``; every refusal carries a reason code.

    Raises only ValueError for a naive ``now`` (a programming error); for any
    well-formed header it returns a decision.
    """
    _require_aware(now, "now")
    sender_type = _sharing_type(directory, header.sender.agency)
    recipient_types = [_sharing_type(directory, r.agency) for r in header.recipients]
    if sender_type is None or any(t is None for t in recipient_types):
        return _refuse(ReasonCode.NO_BASIS)
    types = [t for t in recipient_types if t is not None]
    basis = header.basis
    if isinstance(basis, ConsentBasis):
        return _decide_consent(
            header,
            consent_id=basis.consent_id,
            sender_type=sender_type,
            recipient_types=types,
            directory=directory,
            consents=consents,
            policy=policy,
            now=now,
            child=child,
        )
    rules = [r for r in policy.rules if r.basis == basis.ref and r.basis != CONSENT_BASIS]
    if not rules:
        return _refuse(ReasonCode.NO_BASIS)
    return _apply_rules(
        rules,
        header,
        sender_type=sender_type,
        recipient_types=types,
        child=child,
        misses=_LEGAL_MISSES,
        consent_id=None,
    )


def _decide_consent(  # noqa: PLR0911 - one return per documented refusal, in order
    header: ProtectedHeader,
    *,
    consent_id: str,
    sender_type: AgencyType,
    recipient_types: list[AgencyType],
    directory: AgencyTypes,
    consents: Mapping[str, ConsentState],
    policy: PolicyFile,
    now: datetime,
    child: ChildFacts | None,
) -> PolicyDecision:
    state = consents.get(consent_id)
    # A book whose key and record disagree is corrupt: refuse rather than guess.
    if state is None or state.record.id != consent_id:
        return _refuse(ReasonCode.CONSENT_MISSING)
    record = state.record
    if record.child != header.child:
        return _refuse(ReasonCode.CONSENT_CHILD_MISMATCH)
    # Revocation has effect forward from revoked_at, which is itself included.
    if state.revoked_at is not None and now >= state.revoked_at:
        return _refuse(ReasonCode.CONSENT_REVOKED)
    if now < record.valid_from:
        return _refuse(ReasonCode.CONSENT_NOT_YET_VALID)
    if now >= record.valid_until:
        return _refuse(ReasonCode.CONSENT_EXPIRED)
    agencies = [header.sender.agency, *(r.agency for r in header.recipients)]
    if not all(consent_allows_party(record, agency, directory) for agency in agencies):
        return _refuse(ReasonCode.CONSENT_SCOPE_PARTY)
    if header.purpose not in record.purposes:
        return _refuse(ReasonCode.CONSENT_SCOPE_PURPOSE)
    rules = [r for r in policy.rules if r.basis == CONSENT_BASIS]
    if not rules:
        return _refuse(ReasonCode.NO_BASIS)
    return _apply_rules(
        rules,
        header,
        sender_type=sender_type,
        recipient_types=recipient_types,
        child=child,
        misses=_CONSENT_MISSES,
        consent_id=record.id,
    )


def _apply_rules(
    rules: Sequence[PolicyRule],
    header: ProtectedHeader,
    *,
    sender_type: AgencyType,
    recipient_types: list[AgencyType],
    child: ChildFacts | None,
    misses: Sequence[ReasonCode],
    consent_id: str | None,
) -> PolicyDecision:
    covering: list[PolicyRule] = []
    furthest = -1
    for rule in rules:
        stage = _first_miss(rule, header.kind, header.purpose, sender_type, recipient_types)
        if stage is None:
            covering.append(rule)
        elif stage > furthest:
            furthest = stage
    if not covering:
        return _refuse(misses[furthest])
    deferring: PolicyRule | None = None
    for rule in covering:
        if not rule.conditions:
            return _allow(rule, consent_id, ())
        if child is None:
            deferring = deferring or rule
        elif all(_CONDITION_HOLDS[c](child) for c in rule.conditions):
            return _allow(rule, consent_id, ())
    if deferring is not None:
        return _allow(deferring, consent_id, tuple(deferring.conditions))
    return _refuse(ReasonCode.CONDITION_NOT_MET)


def _first_miss(
    rule: PolicyRule,
    kind: Kind,
    purpose: Purpose,
    sender_type: AgencyType,
    recipient_types: list[AgencyType],
) -> int | None:
    """Which check ``rule`` fails first (an index into the misses), or None if it covers."""
    if kind not in rule.kinds:
        return 0
    if sender_type not in rule.senders:
        return 1
    if any(t not in rule.recipients for t in recipient_types):
        return 2
    if rule.purposes is not None and purpose not in rule.purposes:
        return 3
    return None


def _allow(
    rule: PolicyRule, consent_id: str | None, deferred: tuple[Condition, ...]
) -> PolicyDecision:
    return PolicyDecision(
        allowed=True,
        rule=rule.id,
        legal_ref=rule.legal_ref,
        consent_id=consent_id,
        deferred=deferred,
    )


def _sharing_type(directory: AgencyTypes, agency: str) -> AgencyType | None:
    """The agency's type if it is an agency that may share; None for unknown or the broker."""
    agency_type = directory.agency_type(agency)
    return None if agency_type is AgencyType.BROKER else agency_type


def consent_allows_party(record: ConsentRecord, agency: str, directory: AgencyTypes) -> bool:
    """Whether the consent names ``agency``, by its id or by its type (never the broker)."""
    agency_type = _sharing_type(directory, agency)
    if agency_type is None:
        return False
    for party in record.parties:
        if isinstance(party, AgencyRef) and party.agency == agency:
            return True
        if isinstance(party, AgencyTypeRef) and party.agency_type is agency_type:
            return True
    return False


# --- consent registration ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentProblem:
    """Why a consent cannot be registered: a stable code, the field, and what to do."""

    code: ReasonCode
    field: str
    message: str


def validate_consent(
    record: ConsentRecord, *, directory: AgencyTypes, policy: PolicyFile, now: datetime
) -> list[ConsentProblem]:
    """Every reason the consent cannot be registered at ``now``; an empty list means valid.

    The schema has already checked the record's shape; this checks that the
    right people consented (every custodial guardian, the child by age and
    maturity, OSL 12 kap. 3 §), that the validity is current, within the
    policy's limit and not backdated (see ``BACKDATE_TOLERANCE``), and that
    every party named by agency id is an agency of the area.
    """
    _require_aware(now, "now")
    return [
        *_guardian_problems(record),
        *_child_problems(record, policy.consent),
        *_validity_problems(record, policy.consent, now),
        *_party_problems(record, directory),
    ]


def _guardian_problems(record: ConsentRecord) -> list[ConsentProblem]:
    custodial = sum(1 for g in record.guardians if g.custodial)
    if custodial == 0:
        return [
            ConsentProblem(
                ReasonCode.CONSENT_GUARDIAN_MISSING,
                "guardians",
                "No guardian with custody has consented; record the consent of every "
                "guardian who has custody of the child.",
            )
        ]
    # Under joint custody the guardians decide together (FB 6 kap. 13 §): one is not enough.
    if record.joint_custody and custodial < 2:  # noqa: PLR2004 - two parents in joint custody
        return [
            ConsentProblem(
                ReasonCode.CONSENT_GUARDIAN_MISSING,
                "guardians",
                "The child is in joint custody but only one custodial guardian has consented; "
                "record the consent of both guardians.",
            )
        ]
    return []


def _child_problems(record: ConsentRecord, section: ConsentSection) -> list[ConsentProblem]:
    view = record.child_view
    if view is None:
        return [
            ConsentProblem(
                ReasonCode.CONSENT_CHILD_VIEW_MISSING,
                "child_view",
                "The child's view is not recorded; record the child's age, whether the child "
                "is assessed as mature, and whether the child consents.",
            )
        ]
    if view.consented:
        return []
    # OSL 12 kap. 3 §: the older and more mature the child, the more its own will counts.
    if view.age >= section.child_consent_required_from_age:
        return [
            ConsentProblem(
                ReasonCode.CONSENT_CHILD_CONSENT_MISSING,
                "child_view.consented",
                f"The child is {view.age}, and from age {section.child_consent_required_from_age} "
                "the child's own consent is required; obtain it, or share under a legal basis "
                "if one applies.",
            )
        ]
    if view.age >= section.child_view_from_age and view.assessed_mature:
        return [
            ConsentProblem(
                ReasonCode.CONSENT_CHILD_CONSENT_MISSING,
                "child_view.consented",
                f"The child is {view.age} and assessed as mature, and has not consented, so "
                "the guardians' consent alone is not enough; obtain the child's consent, or "
                "share under a legal basis if one applies.",
            )
        ]
    return []


def _validity_problems(
    record: ConsentRecord, section: ConsentSection, now: datetime
) -> list[ConsentProblem]:
    problems = []
    if record.valid_until <= now:
        problems.append(
            ConsentProblem(
                ReasonCode.CONSENT_VALIDITY_INVALID,
                "valid_until",
                "The consent's validity has already ended; register it with an end in the future.",
            )
        )
    if record.valid_until - record.valid_from > timedelta(days=section.max_validity_days):
        problems.append(
            ConsentProblem(
                ReasonCode.CONSENT_VALIDITY_INVALID,
                "valid_until",
                f"The consent is valid for longer than {section.max_validity_days} days; "
                "shorten it, and ask for a new consent when it ends.",
            )
        )
    if record.valid_from < now - BACKDATE_TOLERANCE:
        problems.append(
            ConsentProblem(
                ReasonCode.CONSENT_VALIDITY_INVALID,
                "valid_from",
                "The consent begins more than a day before it is registered, and a consent "
                "cannot be backdated; let it begin when it was given.",
            )
        )
    return problems


def _party_problems(record: ConsentRecord, directory: AgencyTypes) -> list[ConsentProblem]:
    problems = []
    for index, party in enumerate(record.parties):
        if isinstance(party, AgencyRef):
            agency_type = directory.agency_type(party.agency)
            if agency_type is None:
                problems.append(
                    ConsentProblem(
                        ReasonCode.CONSENT_UNKNOWN_PARTY,
                        f"parties[{index}].agency",
                        f"Agency {party.agency!r} is not in the area directory; check the "
                        "agency id, or name the party by agency type.",
                    )
                )
                continue
        else:
            agency_type = party.agency_type
        if agency_type is AgencyType.BROKER:
            problems.append(
                ConsentProblem(
                    ReasonCode.CONSENT_UNKNOWN_PARTY,
                    f"parties[{index}]",
                    "The broker only carries messages and cannot be a party to a consent; "
                    "name the agencies that share.",
                )
            )
    return problems


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
