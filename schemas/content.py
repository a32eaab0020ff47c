"""The plaintext content of each message kind: what the envelope encrypts.

Only the sending and receiving adapters ever see these models; the broker
routes on the protected header and must never parse content (the escalation
notice, which the broker itself writes, is metadata only for that reason).
Content may hold free text about a child, so every string and list is
bounded and nothing here is ever logged.

Which agency may send what to whom is policy, not shape: these models check
only that one message is coherent in itself.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from schemas._base import WireModel
from schemas.common import (
    MAX_CONTENT_BYTES,
    AgencyId,
    ChildPseudonym,
    LongText,
    MessageId,
    ShortText,
    StaffId,
    Timestamp,
)
from schemas.envelope import Kind
from schemas.receipts import Answer, DeclineReason


class NeedArea(StrEnum):
    """The eight areas of the behovskompass (cf. GIRFEC's SHANARRI), as ASCII ids."""

    TRYGGHET = "trygghet"
    TILLHORIGHET = "tillhorighet"
    OMSORG = "omsorg"
    FRITID = "fritid"
    HALSA = "halsa"
    UTVECKLING = "utveckling"
    RESPEKTERAS = "respekteras"
    ANSVAR = "ansvar"


#: The Swedish label of each need area, for display only: ids stay ASCII on the
#: wire so that no integrator has to get Unicode normalisation right.
NEED_AREA_LABELS: dict[NeedArea, str] = {
    NeedArea.TRYGGHET: "Trygghet",
    NeedArea.TILLHORIGHET: "Tillhörighet",
    NeedArea.OMSORG: "Omsorg",
    NeedArea.FRITID: "Fritid",
    NeedArea.HALSA: "Hälsa",
    NeedArea.UTVECKLING: "Utveckling",
    NeedArea.RESPEKTERAS: "Respekteras",
    NeedArea.ANSVAR: "Ansvar",
}


class Urgency(StrEnum):
    """How soon the sender needs the recipient to act."""

    ROUTINE = "routine"
    SOON = "soon"
    URGENT = "urgent"


class Overdue(StrEnum):
    """Which step of a tracked message is late, for an escalation notice."""

    DELIVERY = "delivery"  # no delivered receipt from a recipient adapter
    HANDOVER = "handover"  # delivered, but the agency system has not taken it
    READ = "read"  # handed over, but nobody has opened it
    ANSWER = "answer"  # opened, but nobody has accepted or declined


#: A role in Barnets team as the agencies name it (e.g. "stödsamordnare",
#: "barnkontakt", "kurator"): free text, because roles differ between areas.
Role = Annotated[str, StringConstraints(min_length=1, max_length=64)]

#: A policy or watchdog rule id as named in the policy file.
RuleId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{1,63}$")]

#: A telephone number as people write it: digits, spaces, hyphens, a leading plus.
Phone = Annotated[str, StringConstraints(pattern=r"^\+?[0-9][0-9 -]{4,30}$")]

#: Most roles one invitation may name.
MAX_INVITED_ROLES = 16

#: Most goals one version of Barnets plan may hold.
MAX_PLAN_GOALS = 64


def _unique(values: list[NeedArea] | list[str], what: str) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} lists the same value twice")


class StaffRole(WireModel):
    """A named professional and the role they act in."""

    staff_id: StaffId
    role: Role


class Contact(WireModel):
    """Who at the sender the recipient should contact about a referral."""

    staff_id: StaffId
    role: Role
    phone: Phone | None = None


#: A personnummer or samordningsnummer normalised to 12 digits (keys.personnummer).
IdentityNumberText = Annotated[str, StringConstraints(pattern=r"^[0-9]{12}$")]


class ChildIdentity(WireModel):
    """Who the child is, for the recipient's own records.

    Only inside the encrypted content: the broker sees the pseudonym in the
    header and never this. A receiving adapter recomputes the pseudonym from
    ``identity_number`` and refuses content whose pseudonym differs from the
    signed header's ``child`` (docs/PROTOCOL.md §6), so a sender cannot route a
    message under one child's consent while it concerns another child.
    """

    identity_number: IdentityNumberText
    given_name: ShortText | None = None
    family_name: ShortText | None = None


class Need(WireModel):
    """One need area of the behovskompass and what the sender has seen in it."""

    area: NeedArea
    description: LongText


class Referral(WireModel):
    """A request that another agency take part in supporting the child."""

    child: ChildIdentity
    needs: list[Need] = Field(min_length=1, max_length=len(NeedArea))
    summary: LongText
    requested_support: LongText
    urgency: Urgency
    contact: Contact
    guardians_informed: bool
    respond_by: Timestamp | None = None

    @model_validator(mode="after")
    def _coherent(self) -> Referral:
        _unique([need.area for need in self.needs], "needs")
        return self


class TeamInvitation(WireModel):
    """An invitation to a meeting of Barnets team."""

    child: ChildIdentity
    meeting_at: Timestamp
    place: ShortText
    invited_roles: list[Role] = Field(min_length=1, max_length=MAX_INVITED_ROLES)
    agenda: LongText
    respond_by: Timestamp

    @model_validator(mode="after")
    def _coherent(self) -> TeamInvitation:
        if self.respond_by >= self.meeting_at:
            raise ValueError("respond_by must be before meeting_at")
        _unique(self.invited_roles, "invited_roles")
        return self


class TeamResponse(WireModel):
    """An agency's answer to a team invitation.

    Who attends is named when the answer is accepted; why not is given when it
    is declined, as the same closed reason list receipts use, with optional
    free text (this is encrypted content, unlike a receipt).
    """

    invitation_id: MessageId
    answer: Answer
    attendee: StaffRole | None = Field(
        default=None, description="Who attends; required when accepted, refused when declined."
    )
    decline_reason: DeclineReason | None = Field(
        default=None, description="Required when declined, refused when accepted."
    )
    decline_detail: LongText | None = Field(
        default=None, description="Optional free text when declined, refused when accepted."
    )

    @model_validator(mode="after")
    def _coherent(self) -> TeamResponse:
        accepted = self.answer is Answer.ACCEPTED
        if accepted != (self.attendee is not None):
            raise ValueError("attendee is required when accepted and refused when declined")
        if accepted and (self.decline_reason is not None or self.decline_detail is not None):
            raise ValueError("decline_reason and decline_detail are refused when accepted")
        if not accepted and self.decline_reason is None:
            raise ValueError("decline_reason is required when declined")
        return self


class ConcernReport(WireModel):
    """An orosanmälan to social services (SoL 14 kap. 1 §, OSL 10 kap. 28 §).

    ``need_areas`` may be empty: a reporter must never be held up by having to
    classify a concern before reporting it.
    """

    child: ChildIdentity
    observations: LongText
    need_areas: list[NeedArea] = Field(max_length=len(NeedArea))
    immediate_danger: bool
    reporter: StaffRole
    guardians_informed: bool
    child_informed: bool

    @model_validator(mode="after")
    def _coherent(self) -> ConcernReport:
        _unique(self.need_areas, "need_areas")
        return self


class PlanGoal(WireModel):
    """One goal of Barnets plan, its need area, who answers for it and when it is followed up."""

    area: NeedArea
    goal: LongText
    responsible_agency: AgencyId
    follow_up: dt.date


class PlanUpdate(WireModel):
    """A new version of Barnets plan, sent to everyone in the child's team."""

    child: ChildIdentity
    plan_id: MessageId
    version: int = Field(ge=1, le=1_000_000)
    goals: list[PlanGoal] = Field(min_length=1, max_length=MAX_PLAN_GOALS)
    next_review: dt.date


class EscalationNotice(WireModel):
    """The watchdog's notice that a tracked message is overdue.

    The broker writes this itself and never sees content, so it holds ids,
    a rule, a step and a time only.
    """

    matter: MessageId
    rule: RuleId
    overdue: Overdue
    since: Timestamp
    child: ChildPseudonym


#: The content model of each kind. Receipts are absent: they travel as signed
#: receipt objects that the broker reads, not as encrypted content.
CONTENT_MODELS: dict[Kind, type[WireModel]] = {
    Kind.REFERRAL: Referral,
    Kind.TEAM_INVITATION: TeamInvitation,
    Kind.TEAM_RESPONSE: TeamResponse,
    Kind.CONCERN_REPORT: ConcernReport,
    Kind.PLAN_UPDATE: PlanUpdate,
    Kind.ESCALATION: EscalationNotice,
}


def parse_content(kind: Kind, data: bytes) -> WireModel:
    """Strictly parse decrypted content bytes as the model of ``kind``.

    Raises pydantic's ``ValidationError`` unchanged when the JSON does not fit,
    and a plain ``ValueError`` (its base class) when the data is over
    ``MAX_CONTENT_BYTES`` or the kind has no content model.
    """
    model = CONTENT_MODELS.get(kind)
    if model is None:
        raise ValueError(f"kind {kind.value!r} has no content model")
    if len(data) > MAX_CONTENT_BYTES:
        raise ValueError("content is larger than MAX_CONTENT_BYTES")
    return model.model_validate_json(data)
