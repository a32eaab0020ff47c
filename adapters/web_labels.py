"""Swedish words for what the web inbox shows, and the small view decisions behind them.

Pure: no I/O, no HTTP, no clock. The codes on the wire stay English and ASCII
(``schemas``); only what a person at an agency reads is Swedish, so every enum
the inbox displays has a complete label table here, checked by the tests.

Must never: take a decision that belongs to the runtime. Which kinds can be
answered is mirrored here only to decide whether to *show* a form; the port
refuses an answer it cannot send whatever the page offered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from adapters.canonical import Received, SentTimeline, TimelineEvent
from schemas.content import Overdue, Urgency
from schemas.envelope import ConsentBasis, Kind, LegalBasis, Purpose
from schemas.reasons import ReasonCode
from schemas.receipts import Answer, DeclineReason, ReceiptStatus

__all__ = [
    "ANSWERABLE_KINDS",
    "ANSWER_LABELS",
    "DECLINE_REASON_LABELS",
    "KIND_LABELS",
    "OUTBOX_LABELS",
    "OVERDUE_LABELS",
    "PURPOSE_LABELS",
    "REASON_LABELS",
    "STATUS_LABELS",
    "URGENCY_LABELS",
    "RecipientStatus",
    "basis_label",
    "event_label",
    "format_personnummer",
    "is_answerable",
    "received_state_label",
    "recipient_statuses",
    "yes_no",
]

#: Swedish typography joins a status and its answer with a spaced en dash.
_DASH = " \u2013 "

#: What each kind is called at a Swedish agency.
KIND_LABELS: Mapping[Kind, str] = MappingProxyType(
    {
        Kind.REFERRAL: "Remiss",
        Kind.TEAM_INVITATION: "Inbjudan till Barnets team",
        Kind.TEAM_RESPONSE: "Svar på inbjudan",
        Kind.CONCERN_REPORT: "Orosanmälan",
        Kind.PLAN_UPDATE: "Barnets plan",
        Kind.RECEIPT: "Kvittens",
        Kind.ESCALATION: "Eskalering",
    }
)

#: Each receipt status in a timeline. ``accepted`` is the broker's acceptance
#: of the message, not the recipient's answer: the wording keeps them apart.
STATUS_LABELS: Mapping[ReceiptStatus, str] = MappingProxyType(
    {
        ReceiptStatus.ACCEPTED: "Godkänd av förmedlingen",
        ReceiptStatus.REJECTED: "Avvisad",
        ReceiptStatus.DELIVERED: "Levererad",
        ReceiptStatus.HANDED_OVER: "Överlämnad",
        ReceiptStatus.READ: "Läst",
        ReceiptStatus.ANSWERED: "Besvarad",
        ReceiptStatus.EXPIRED: "Utgången",
    }
)

#: The business answer, as an adjective after "Besvarad" and an en dash.
ANSWER_LABELS: Mapping[Answer, str] = MappingProxyType(
    {Answer.ACCEPTED: "accepterad", Answer.DECLINED: "avböjd"}
)

#: Why a recipient declined; the list a person picks from.
DECLINE_REASON_LABELS: Mapping[DeclineReason, str] = MappingProxyType(
    {
        DeclineReason.NOT_OUR_REMIT: "Ingår inte i vårt uppdrag",
        DeclineReason.NO_CAPACITY: "Vi har inte möjlighet just nu",
        DeclineReason.ALREADY_KNOWN: "Barnet är redan aktuellt hos oss",
        DeclineReason.GUARDIAN_DECLINED: "Vårdnadshavare har sagt nej",
        DeclineReason.OTHER: "Annat skäl",
    }
)

#: How soon the sender of a referral needs an answer.
URGENCY_LABELS: Mapping[Urgency, str] = MappingProxyType(
    {Urgency.ROUTINE: "Normal", Urgency.SOON: "Snart", Urgency.URGENT: "Brådskande"}
)

#: Which step of a tracked message an escalation is about.
OVERDUE_LABELS: Mapping[Overdue, str] = MappingProxyType(
    {
        Overdue.DELIVERY: "Inte levererad till mottagaren",
        Overdue.HANDOVER: "Inte överlämnad till mottagarens verksamhetssystem",
        Overdue.READ: "Inte öppnad av någon hos mottagaren",
        Overdue.ANSWER: "Inte besvarad",
    }
)

#: What the sharing is for.
PURPOSE_LABELS: Mapping[Purpose, str] = MappingProxyType(
    {
        Purpose.REFERRAL: "Remiss",
        Purpose.TEAM: "Barnets team",
        Purpose.PLAN: "Barnets plan",
        Purpose.CONCERN: "Oro för barnet",
        Purpose.COORDINATION: "Samordning",
    }
)

#: The adapter's own state of a sent message before any receipt arrived.
OUTBOX_LABELS: Mapping[str, str] = MappingProxyType({"queued": "I kö", "sent": "Skickad"})

#: A short Swedish sentence per reason code; the code itself is shown beside it,
#: because it is what a support case or an integrator refers to.
REASON_LABELS: Mapping[ReasonCode, str] = MappingProxyType(
    {
        ReasonCode.ENVELOPE_INVALID: "Meddelandet kunde inte verifieras eller dekrypteras",
        ReasonCode.TOO_LARGE: "Meddelandet är för stort",
        ReasonCode.BAD_JSON: "Meddelandet är inte giltig JSON",
        ReasonCode.SCHEMA_INVALID: "Meddelandet följer inte formatet",
        ReasonCode.UNKNOWN_SENDER: "Avsändaren finns inte i katalogen",
        ReasonCode.SENDER_KEY_INVALID: "Avsändarens nyckel gäller inte",
        ReasonCode.USER_ID_MISMATCH: "Anslutningen tillhör en annan verksamhet än avsändaren",
        ReasonCode.REPLAYED: "Meddelandet har redan tagits emot",
        ReasonCode.TOO_OLD: "Meddelandet är för gammalt",
        ReasonCode.FROM_FUTURE: "Meddelandets tid ligger i framtiden",
        ReasonCode.EXPIRED: "Meddelandet gick ut innan det kunde levereras",
        ReasonCode.UNKNOWN_RECIPIENT: "En mottagare finns inte i katalogen",
        ReasonCode.RECIPIENT_KEY_UNKNOWN: "En mottagares nyckel gäller inte",
        ReasonCode.NO_BASIS: "Varken samtycke eller rättslig grund angavs",
        ReasonCode.CONSENT_MISSING: "Samtycket är inte registrerat",
        ReasonCode.CONSENT_EXPIRED: "Samtycket har gått ut",
        ReasonCode.CONSENT_NOT_YET_VALID: "Samtycket gäller inte ännu",
        ReasonCode.CONSENT_REVOKED: "Samtycket har återkallats",
        ReasonCode.CONSENT_SCOPE_PARTY: "Samtycket omfattar inte avsändaren eller mottagaren",
        ReasonCode.CONSENT_SCOPE_PURPOSE: "Samtycket omfattar inte detta ändamål",
        ReasonCode.CONSENT_CHILD_MISMATCH: "Samtycket gäller ett annat barn",
        ReasonCode.BASIS_NOT_ALLOWED_FOR_KIND: (
            "Den rättsliga grunden tillåter inte denna typ av meddelande"
        ),
        ReasonCode.RECIPIENT_TYPE_NOT_ALLOWED: (
            "Den rättsliga grunden tillåter inte denna typ av mottagare"
        ),
        ReasonCode.SENDER_TYPE_NOT_ALLOWED: (
            "Den rättsliga grunden tillåter inte denna typ av avsändare"
        ),
        ReasonCode.CONDITION_NOT_MET: "Ett villkor för den rättsliga grunden är inte uppfyllt",
        ReasonCode.BASIS_NOT_ALLOWED_FOR_PURPOSE: (
            "Den rättsliga grunden tillåter inte detta ändamål"
        ),
        ReasonCode.DELIVERY_LIMIT: "Mottagaren kunde inte ta emot meddelandet",
        ReasonCode.UNDELIVERABLE: "Meddelandet kunde inte levereras till någon mottagare",
        ReasonCode.NOT_OPENED: "Ingen hos mottagaren öppnade meddelandet i tid",
        ReasonCode.POLICY_UNAVAILABLE: "Delningsreglerna kunde inte kontrolleras",
        ReasonCode.INTERNAL_ERROR: "Fel hos förmedlingen",
        ReasonCode.UNKNOWN_MESSAGE: "Kvittensen gäller ett okänt meddelande",
        ReasonCode.RECEIPT_MISMATCH: "Kvittensen stämmer inte med meddelandet",
        ReasonCode.CONSENT_GUARDIAN_MISSING: "Alla vårdnadshavare har inte samtyckt",
        ReasonCode.CONSENT_CHILD_VIEW_MISSING: "Barnets egen inställning är inte dokumenterad",
        ReasonCode.CONSENT_CHILD_CONSENT_MISSING: "Barnets eget samtycke saknas",
        ReasonCode.CONSENT_VALIDITY_INVALID: "Samtyckets giltighetstid är felaktig",
        ReasonCode.CONSENT_UNKNOWN_PARTY: "En part i samtycket finns inte i katalogen",
    }
)

#: Kinds a person at the recipient accepts or declines. Escalations and plan
#: updates are information only; a team response is itself an answer.
ANSWERABLE_KINDS: frozenset[Kind] = frozenset(
    {Kind.REFERRAL, Kind.TEAM_INVITATION, Kind.CONCERN_REPORT}
)

# Which step of a recipient's copy is furthest along: receipts can arrive out
# of order, so "latest" means the furthest step, not the last one to arrive.
_STEP: Mapping[ReceiptStatus, int] = MappingProxyType(
    {
        ReceiptStatus.ACCEPTED: 0,
        ReceiptStatus.DELIVERED: 1,
        ReceiptStatus.HANDED_OVER: 2,
        ReceiptStatus.READ: 3,
        ReceiptStatus.EXPIRED: 4,
        ReceiptStatus.ANSWERED: 5,
        ReceiptStatus.REJECTED: 6,
    }
)


def is_answerable(item: Received) -> bool:
    """Whether the message page offers the accept/decline form for ``item``."""
    return item.kind in ANSWERABLE_KINDS and item.state in (
        ReceiptStatus.HANDED_OVER,
        ReceiptStatus.READ,
    )


def received_state_label(item: Received) -> str:
    """The recipient-side state of a received message, e.g. "Besvarad", en dash, "avböjd"."""
    if item.state is ReceiptStatus.ANSWERED and item.answer is not None:
        return f"{STATUS_LABELS[item.state]}{_DASH}{ANSWER_LABELS[item.answer]}"
    return STATUS_LABELS[item.state]


def event_label(event: TimelineEvent) -> str:
    """One timeline event's status, with the answer when it is one."""
    if event.status is ReceiptStatus.ANSWERED and event.answer is not None:
        return f"{STATUS_LABELS[event.status]}{_DASH}{ANSWER_LABELS[event.answer]}"
    return STATUS_LABELS[event.status]


@dataclass(frozen=True)
class RecipientStatus:
    """Where one recipient's copy of a sent message has got to, for the "Skickat" list."""

    agency: str
    label: str
    event: TimelineEvent | None


def recipient_statuses(timeline: SentTimeline) -> list[RecipientStatus]:
    """The furthest step of each recipient, in the order the recipients were named.

    A recipient without events of its own takes the message-level event the
    broker signed (accepted or rejected) or, before any receipt, the outbox state.
    """
    recipients = set(timeline.recipients)
    message_level = [e for e in timeline.events if e.agency not in recipients]
    result: list[RecipientStatus] = []
    for agency in timeline.recipients:
        own = [e for e in timeline.events if e.agency == agency]
        candidates = own or message_level
        if not candidates:
            label = OUTBOX_LABELS.get(timeline.outbox, timeline.outbox)
            result.append(RecipientStatus(agency=agency, label=label, event=None))
            continue
        furthest = max(candidates, key=lambda e: (_STEP[e.status], e.at))
        result.append(RecipientStatus(agency=agency, label=event_label(furthest), event=furthest))
    return result


def basis_label(basis: ConsentBasis | LegalBasis) -> str:
    """The basis for sharing, as a person at the recipient reads it."""
    if isinstance(basis, ConsentBasis):
        return f"Samtycke ({basis.consent_id})"
    return f"Rättslig grund ({basis.ref})"


def format_personnummer(number: str) -> str:
    """``201311252386`` → ``20131125-2386``, the way Swedish staff write it."""
    if len(number) == 12 and number.isdigit():  # noqa: PLR2004 - the 12-digit form
        return f"{number[:8]}-{number[8:]}"
    return number


def yes_no(value: bool) -> str:
    """``Ja`` or ``Nej``."""
    return "Ja" if value else "Nej"


def lateness(seconds: int) -> str:
    """How late, in Swedish words a person reads at a glance ("3 dagar", "5 timmar")."""
    days, rest = divmod(max(0, seconds), 86_400)
    if days:
        return f"{days} dag" if days == 1 else f"{days} dagar"
    hours = rest // 3600
    if hours:
        return f"{hours} timme" if hours == 1 else f"{hours} timmar"
    return "under en timme"
