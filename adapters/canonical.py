"""The seam between an agency's own format and the wire contract: pure data only.

A mapping (``adapters.mappings``) turns what an agency system submits into a
:class:`Submission` and turns what the adapter holds (:class:`Received`,
:class:`SentTimeline`) back into the agency's format. The runtime does
everything else: it computes the child pseudonym from the identity number in
the content, seals, publishes, and keeps the outbox and inbox.

Must never: do I/O, log, or put a submitted value (a personnummer above all)
into a :class:`FieldProblem`: problems name the field and what is wrong with it,
and go back to the agency system in a ``422`` body.
"""

from __future__ import annotations

from collections.abc import Mapping as AbstractMapping
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from schemas.content import ConcernReport, PlanUpdate, Referral, TeamInvitation, TeamResponse
from schemas.envelope import ConsentBasis, Kind, LegalBasis, Purpose
from schemas.reasons import ReasonCode
from schemas.receipts import Answer, DeclineReason, ReceiptStatus

#: The content an agency system may submit (escalations are the broker's own).
SubmittedContent = Referral | TeamInvitation | TeamResponse | ConcernReport | PlanUpdate

#: The kinds an agency system may submit, each with its content model.
SUBMITTABLE: dict[Kind, type[SubmittedContent]] = {
    Kind.REFERRAL: Referral,
    Kind.TEAM_INVITATION: TeamInvitation,
    Kind.TEAM_RESPONSE: TeamResponse,
    Kind.CONCERN_REPORT: ConcernReport,
    Kind.PLAN_UPDATE: PlanUpdate,
}

#: The purpose a kind is sent for unless the submission names another.
DEFAULT_PURPOSE: dict[Kind, Purpose] = {
    Kind.REFERRAL: Purpose.REFERRAL,
    Kind.TEAM_INVITATION: Purpose.TEAM,
    Kind.TEAM_RESPONSE: Purpose.TEAM,
    Kind.CONCERN_REPORT: Purpose.CONCERN,
    Kind.PLAN_UPDATE: Purpose.PLAN,
}


@dataclass(frozen=True)
class FieldProblem:
    """One bad field: where it is in the submitted document and what is wrong.

    ``loc`` is a dotted path in the agency's own document (``elev.personnummer``,
    ``ServiceRequest.subject``); ``message`` says what to change and never
    repeats the submitted value.
    """

    loc: str
    message: str


class InvalidSubmission(ValueError):  # noqa: N818 - reads as what it is, like InvalidEnvelope
    """A submission that cannot become a message; nothing has been stored or sent."""

    code = "invalid_submission"
    http_status = 422

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        if not problems:
            raise ValueError("an invalid submission names at least one problem")
        self.problems = tuple(problems)
        super().__init__(f"{len(self.problems)} problem(s) in the submission")


@dataclass(frozen=True)
class Submission:
    """One message an agency system wants sent, in canonical form.

    ``in_reply_to`` names a received message (a team response names the
    invitation); the runtime then takes the thread and the child from it.
    """

    kind: Kind
    content: SubmittedContent
    recipients: tuple[str, ...]
    basis: ConsentBasis | LegalBasis
    purpose: Purpose
    in_reply_to: str | None = None
    expires: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.content, SUBMITTABLE[self.kind]):
            raise TypeError(f"content of a {self.kind.value} must be {SUBMITTABLE[self.kind]}")
        if not self.recipients or len(set(self.recipients)) != len(self.recipients):
            raise ValueError("recipients must be non-empty and distinct")
        if self.kind is Kind.TEAM_RESPONSE and self.in_reply_to is None:
            raise ValueError("a team response names the invitation in in_reply_to")


@dataclass(frozen=True)
class Received:
    """A message the adapter verified, opened and stored, as the agency sees it."""

    message_id: str
    kind: Kind
    sender: str
    child: str
    basis: ConsentBasis | LegalBasis
    purpose: Purpose
    thread: str
    in_reply_to: str | None
    created: datetime
    received_at: datetime
    content: Any  # the content model of ``kind`` (schemas.content)
    #: The latest step on the recipient's side: delivered, handed_over, read, answered, rejected.
    state: ReceiptStatus
    answer: Answer | None = None
    decline_reason: DeclineReason | None = None


@dataclass(frozen=True)
class TimelineEvent:
    """One signed status event for a sent message, as the sender's adapter verified it."""

    status: ReceiptStatus
    agency: str
    at: datetime
    reason: ReasonCode | None = None
    answer: Answer | None = None
    decline_reason: DeclineReason | None = None
    staff_id: str | None = None


@dataclass(frozen=True)
class SentTimeline:
    """Everything the adapter knows about one message it sent, oldest event first.

    ``outbox`` is the adapter's own state: ``queued`` (accepted from the agency
    system, not yet confirmed by RabbitMQ) or ``sent``.
    """

    message_id: str
    kind: Kind
    recipients: tuple[str, ...]
    submitted_at: datetime
    outbox: str
    events: tuple[TimelineEvent, ...]


#: Progress of one recipient's copy, in order; each step implies those before it.
_PROGRESS: tuple[ReceiptStatus, ...] = (
    ReceiptStatus.ACCEPTED,
    ReceiptStatus.DELIVERED,
    ReceiptStatus.HANDED_OVER,
    ReceiptStatus.READ,
    ReceiptStatus.ANSWERED,
)
_TERMINAL = (ReceiptStatus.REJECTED, ReceiptStatus.EXPIRED)


def recipient_event(timeline: SentTimeline, agency: str) -> TimelineEvent | None:
    """The event that decides one recipient's state: the furthest point the events prove.

    Receipts arrive out of order, so the last to arrive is not the state (as in
    ``broker.status``). Events signed by someone other than a recipient (the
    broker) are about the message as a whole: a refusal there refuses every copy.
    """
    mine = [event for event in timeline.events if event.agency == agency]
    message_level = [e for e in timeline.events if e.agency not in timeline.recipients]
    for event in message_level:
        if event.status is ReceiptStatus.REJECTED:
            return event
    for event in mine:
        if event.status in _TERMINAL:
            return event
    answered = [event for event in mine if event.status is ReceiptStatus.ANSWERED]
    if answered:
        return answered[-1]
    for event in message_level:
        if event.status is ReceiptStatus.EXPIRED:
            return event
    progress = [event for event in (*message_level, *mine) if event.status in _PROGRESS]
    if not progress:
        return None
    return max(progress, key=lambda event: (_PROGRESS.index(event.status), event.at))


def recipient_states(timeline: SentTimeline) -> dict[str, ReceiptStatus | None]:
    """Each recipient's current state (None: nothing known yet), by :func:`recipient_event`."""
    states: dict[str, ReceiptStatus | None] = {}
    for agency in timeline.recipients:
        event = recipient_event(timeline, agency)
        states[agency] = None if event is None else event.status
    return states


class Mapping(Protocol):
    """One agency type's format, both ways; pure."""

    #: A short name used in config and docs (``school``, ``social_services``, ``fhir``, ``police``).
    name: str

    def parse(self, body: object, *, today: date) -> Submission:
        """The submission in ``body`` (parsed JSON); raises :class:`InvalidSubmission`."""
        ...

    def render_received(self, item: Received) -> dict[str, Any]:
        """A received message in the agency's format."""
        ...

    def render_timeline(self, timeline: SentTimeline) -> dict[str, Any]:
        """The status of a sent message in the agency's format."""
        ...

    def render_problems(self, problems: Sequence[FieldProblem]) -> dict[str, Any]:
        """The ``422`` body for an invalid submission."""
        ...


def problems_from_validation(
    error: ValidationError, *, prefix: str = "", rename: AbstractMapping[str, str] | None = None
) -> list[FieldProblem]:
    """Field problems from a pydantic error, without the submitted values.

    ``rename`` maps a canonical top-level field to the name the agency's
    document uses for it, so the problem points at what the agency sent.
    """
    problems: list[FieldProblem] = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        parts = [str(part) for part in item["loc"]]
        if parts and rename is not None:
            parts[0] = rename.get(parts[0], parts[0])
        loc = ".".join(([prefix] if prefix else []) + parts) or (prefix or "$")
        problems.append(FieldProblem(loc=loc, message=str(item["msg"])))
    return problems


def today_of(now: datetime) -> date:
    """The calendar date the identity-number checks use (Swedish law counts in local dates)."""
    return now.date()
