"""The broker's watchdog: deadlines on open matters, and escalation to someone who can act.

The broker feeds every decision and receipt it records into the pure engine
(``broker.deadlines.plan``, through ``plan_accepted`` and ``plan_receipt``),
which says which deadlines open and which close; the broker applies that in
its store, a receipt's changes in the transaction that records the receipt.
Deadlines live in the store, never in memory or in message TTLs, so a
restart loses none. A loop escalates what is due (``SqlStore.escalate_due``:
once per due time across broker instances): it seals an ``EscalationNotice``
(metadata only: the matter, the rule, the late step, since when, the child's
pseudonym) from the broker to each agency the rule names, publishes it to
their queues, audits it, and sets the repeat. Answering, or the recipient
acting, closes the deadline.

An escalation's message id is derived from the deadline and its attempt, so
one re-sent after a crash is the same message and the recipient's adapter
keeps it once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from broker.audit.entry import escalation_entry
from broker.deadlines import (
    Accepted,
    DeadlineRules,
    MessageFacts,
    Plan,
    Receipted,
    WorkingCalendar,
    escalation_targets,
    next_due,
    plan,
)
from broker.metrics import Metrics
from broker.records import MessageRecord, StatusEvent
from broker.store import DeadlineRow, SqlStore, StoreUnavailable
from keys.directory import Directory
from keys.envelope import SenderKey, seal
from schemas.audit import AuditEntry
from schemas.content import EscalationNotice
from schemas.envelope import Kind, LegalBasis, Purpose
from schemas.receipts import Answer, ReceiptStatus

_log = structlog.get_logger("broker.watchdog")

#: Namespace of escalation message ids (UUIDv5 of deadline id and attempt).
ESCALATION_NAMESPACE = uuid.UUID("0f4c2a9e-7d1b-4e8a-9c3f-5b6d7e8f9a01")
#: The header basis of the broker's own notices: not sharing between agencies.
ESCALATION_BASIS = LegalBasis(type="legal", ref="backa-escalation")
#: How long an escalation notice stays valid.
NOTICE_TTL = timedelta(days=14)

Publish = Callable[[str, bytes, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Team:
    """Barnets team as the broker knows it for one child (``broker.deadlines.TeamLookup``)."""

    members: tuple[str, ...]
    inviters: tuple[str, ...]
    directory: Directory

    def stodsamordnare(self, child: str) -> str | None:
        """The social services agency that accepted the child's team invitation, newest first."""
        del child
        for agency in self.members:
            kind = self.directory.agency_type(agency)
            if kind is not None and kind.value == "social_services":
                return agency
        return None

    def barnkontakt(self, child: str) -> str | None:
        """The agency that invited the child's team (the barnkontakt's), newest first."""
        del child
        return self.inviters[0] if self.inviters else None


@dataclass
class Watchdog:
    """Opens and closes deadlines from what the broker records, and escalates what is due."""

    store: SqlStore
    directory: Directory
    broker_key: SenderKey
    rules: DeadlineRules
    calendar: WorkingCalendar
    publish: Publish
    clock: Callable[[], datetime]
    instance: str
    interval_s: float = 30.0
    metrics: Metrics | None = None
    #: Demonstrations only: judge deadlines this far ahead of the clock (BACKA_DEMO_TIME_WARP_S).
    time_warp: timedelta = timedelta(0)

    def _facts(
        self, record: MessageRecord, answers: dict[str, Answer], refused: frozenset[str]
    ) -> MessageFacts:
        return MessageFacts(
            kind=Kind(record.kind),
            sender=record.sender,
            recipients=record.recipients,
            child=record.child,
            expires=record.expires,
            answers=answers,
            refused=refused,
        )

    def plan_accepted(self, record: MessageRecord) -> Plan:
        """The deadlines a message's acceptance opens (idempotent: each opens once)."""
        event = Accepted(
            message_id=record.message_id,
            kind=Kind(record.kind),
            sender=record.sender,
            recipients=record.recipients,
            child=record.child,
            at=record.received_at,
            expires=record.expires,
        )
        return plan(
            event,
            rules=self.rules,
            calendar=self.calendar,
            message=self._facts(record, {}, frozenset()),
        )

    def plan_receipt(
        self, record: MessageRecord, event: StatusEvent, timeline: Sequence[StatusEvent]
    ) -> Plan:
        """What a recipient's receipt opens and closes, given the message's ``timeline``.

        ``timeline`` is the message's status events up to and including this
        receipt: the answers and refusals recorded so far decide, for
        example, whether every recipient has now declined.
        """
        if event.agency is None:
            return Plan()
        answers: dict[str, Answer] = {}
        refused: set[str] = set()
        for earlier in timeline:
            if earlier.status == "answered" and earlier.agency and earlier.answer:
                answers[earlier.agency] = Answer(earlier.answer)
            if earlier.status == "rejected" and earlier.agency:
                refused.add(earlier.agency)
        receipted = Receipted(
            message_id=record.message_id,
            agency=event.agency,
            status=ReceiptStatus(event.status),
            at=event.at,
            answer=None if event.answer is None else Answer(event.answer),
        )
        return plan(
            receipted,
            rules=self.rules,
            calendar=self.calendar,
            message=self._facts(record, answers, frozenset(refused)),
        )

    async def escalate_once(self, now: datetime | None = None) -> int:
        """One round: escalate every deadline due at ``now`` (default: the clock); how many."""
        at = now if now is not None else self.clock() + self.time_warp

        async def escalate(row: DeadlineRow) -> tuple[datetime, Sequence[AuditEntry]]:
            return await self._escalate(row, at)

        return await self.store.escalate_due(at, instance=self.instance, escalate=escalate)

    async def observe(self) -> None:
        """Refresh the open-matter gauges (for /metrics)."""
        if self.metrics is None:
            return
        by_rule, earliest = await self.store.open_matter_counts()
        now = self.clock() + self.time_warp
        oldest = (now - earliest).total_seconds() if earliest is not None else 0.0
        self.metrics.set_open_matters(by_rule, oldest)

    async def run(self, stop: asyncio.Event) -> None:
        """Escalate what is due every ``interval_s`` seconds until ``stop`` (between rounds)."""
        while not stop.is_set():
            try:
                count = await self.escalate_once()
                if count:
                    _log.info("escalated", count=count)
                await self.observe()
            except (StoreUnavailable, ConnectionError, OSError) as exc:
                _log.warning("escalation_deferred", cause=type(exc).__name__)
            except Exception:  # noqa: BLE001 - a bug must not stop the watchdog for good
                _log.exception("escalation_failed")
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)

    async def _escalate(
        self, row: DeadlineRow, at: datetime
    ) -> tuple[datetime, Sequence[AuditEntry]]:
        # ``at`` is the round's time (the deadline and its repeat); the notice is
        # dated by the clock. They differ only in tests that move time forward.
        now = self.clock()
        rule = self.rules.by_id(row.rule)
        if rule is None:
            # The rule was removed from the file: stop repeating, keep the matter visible.
            _log.warning("deadline_rule_unknown", rule=row.rule, message_id=row.message_id)
            return at + timedelta(days=365), []
        targets = escalation_targets(
            rule,
            sender=row.sender,
            recipient=row.agency,
            child=row.child,
            team=_Team(row.members, row.inviters, self.directory),
        )
        keys = [self.directory.sealing_key(a, now=now) for a in targets.agencies]
        recipients = [k for k in keys if k is not None]
        if recipients:
            notice = EscalationNotice(
                matter=row.message_id,
                rule=row.rule,
                overdue=rule.overdue,
                since=row.due_at,
                child=row.child,
            )
            message_id = str(uuid.uuid5(ESCALATION_NAMESPACE, f"{row.id}/{row.attempts}"))
            sealed = seal(
                notice.model_dump_json().encode(),
                sender=self.broker_key,
                recipients=recipients,
                kind=Kind.ESCALATION,
                child=row.child,
                basis=ESCALATION_BASIS,
                purpose=Purpose.COORDINATION,
                created=now,
                expires=now + NOTICE_TTL,
                thread=row.message_id,
                in_reply_to=row.message_id,
                message_id=message_id,
            )
            for key in recipients:
                await self.publish(key.agency, sealed.wire, message_id)
        _log.info(
            "escalation",
            message_id=row.message_id,
            rule=row.rule,
            to=[k.agency for k in recipients],
            operators=targets.operators,
            attempt=row.attempts + 1,
        )
        entry = escalation_entry(
            message_id=row.message_id,
            rule=row.rule,
            kind=row.kind,
            child=row.child,
            recipients=[k.agency for k in recipients],
            at=now,
        )
        return next_due(rule, escalated_at=at, calendar=self.calendar), [entry]
