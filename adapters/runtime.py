"""The adapter's shell: outbox publisher, inbox consumer, hand-over, receipts.

Sending: a submission is mapped (``adapters.mappings``), sealed and written to
the outbox in one transaction before the agency system gets its ``202``; a
publisher task sends what is due, all at once, with publisher confirms
(``user_id`` set, so RabbitMQ vouches for the sender) and marks each item sent
only once confirmed, with backoff when RabbitMQ is away, across restarts.

Receiving, for every message in ``agency.<id>``, in this order and no other:
verify against the pinned area root's directory → open → check the content
(``adapters.core``) → store it with its ``delivered`` receipt (or its
``rejected`` receipt) in one transaction → ack. The store is the de-duplication
(the message id is its key), so a message delivered again after a crash
between store and ack is acked and nothing more. Hand-over runs apart from
the consumer: drain the control queue (consent notices), check the policy
again (``adapters.core.check_before_handover``), then hand over (webhook or
inbox) and queue ``handed_over``, or refuse and queue ``rejected``.

Receipts for what this agency sent are verified against the directory
(the recipient's own signature; the broker relays them unchanged) and kept as
the message's timeline.

Must never: log content or a personnummer, ack before the store has it, or
hand over without the check.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import aio_pika
import aiohttp
import aiormq
import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from pydantic import ValidationError

from adapters.canonical import (
    FieldProblem,
    InvalidSubmission,
    Received,
    SentTimeline,
    Submission,
    TimelineEvent,
)
from adapters.core import (
    Checked,
    Refused,
    check_before_handover,
    check_content,
    recipient_receipt,
    verify_notice,
)
from adapters.ports import AnswerConflictError, Gap, UnknownMessageError
from adapters.store import AdapterStore, AdapterStoreError, InboxRow
from keys import transport
from keys.directory import Directory
from keys.envelope import (
    RecipientKeys,
    SenderKey,
    open_envelope,
    parse_envelope,
    seal,
    signature_input,
)
from keys.errors import InvalidEnvelope, PersonnummerError
from keys.failpoints import failpoint
from keys.personnummer import parse_identity_number
from keys.policy import ChildFacts, ConsentState
from keys.pseudonym import PseudonymKey, child_pseudonym
from keys.signed import InvalidSignedPayload, verify_receipt
from schemas.common import b64url_decode
from schemas.content import TeamInvitation, parse_content
from schemas.envelope import Kind, ProtectedHeader
from schemas.policy import PolicyFile
from schemas.reasons import ReasonCode
from schemas.receipts import Answer, DeclineReason, ReceiptStatus, SignedReceipt

_log = structlog.get_logger("adapters.runtime")

#: The wire protocol's names (docs/PROTOCOL.md §8); the adapter never imports ``broker``.
INGRESS_EXCHANGE: Final = "backa.ingress"
INGRESS_ROUTING_KEY: Final = "backa.ingress"
TYPE_ENVELOPE: Final = "backa.envelope.v1"
TYPE_RECEIPT: Final = "backa.receipt.v1"
TYPE_CONTROL: Final = "backa.control.v1"

#: Longest wait between two attempts at publishing or handing over.
MAX_BACKOFF_S: Final = 60.0
#: Shortest time between two renewals of the publishing channel.
RENEW_INTERVAL_S: Final = 1.0
#: Threads handed over at once (each thread's messages one after another).
HANDOVER_CONCURRENCY: Final = 16

T = TypeVar("T")

TRANSIENT: tuple[type[Exception], ...] = (
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    # A channel used while the robust connection reopens it (after a node was lost):
    # aio-pika raises this RuntimeError, not an AMQPError.
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    asyncio.TimeoutError,
)

#: Failures to connect: retried with backoff, while the HTTP API keeps taking submissions.
CONNECT_ERRORS: tuple[type[Exception], ...] = (*TRANSIENT, OSError)
#: Failures that leave a message unstored: RabbitMQ delivers it again later.
HOLD: tuple[type[Exception], ...] = (AdapterStoreError, *TRANSIENT)


def utc_now() -> datetime:
    """The wall clock, timezone-aware."""
    return datetime.now(UTC)


def backoff(attempts: int, rng: Callable[[], float] = random.random) -> timedelta:
    """Exponential backoff with jitter: 1 s, 2 s, 4 s … up to a minute."""
    base = min(MAX_BACKOFF_S, 2.0 ** min(attempts, 10))
    return timedelta(seconds=base * (0.5 + rng() / 2))


def agency_queue(agency: str) -> str:
    """The agency's message queue (docs/PROTOCOL.md §8)."""
    return f"agency.{agency}"


def control_queue(agency: str) -> str:
    """The agency's consent-notice queue (docs/PROTOCOL.md §8)."""
    return f"agency.{agency}.control"


class NotReady(ConnectionError):  # noqa: N818 - a state, raised only inside the shell
    """RabbitMQ is not connected yet."""


@dataclass
class AdapterRuntime:
    """One agency's adapter: implements ``adapters.ports.InboxPort`` and runs the queues."""

    agency_id: str
    store: AdapterStore
    directory: Directory
    signer: SenderKey
    recipient_keys: RecipientKeys
    pseudonym_key: PseudonymKey
    policy: PolicyFile
    amqp_url: str
    message_ttl: timedelta = timedelta(days=30)
    handover_mode: str = "inbox"
    webhook_url: str | None = None
    webhook_render: Callable[[Received], dict[str, Any]] | None = None
    webhook_timeout_s: float = 10.0
    clock: Callable[[], datetime] = utc_now
    #: Reads the broker's gaps view for this agency (adapters.broker_client), if configured.
    gap_source: Callable[[], Awaitable[list[Gap]]] | None = None
    poll_s: float = 1.0
    prefetch: int = 32
    _consents: dict[str, ConsentState] = field(default_factory=dict, init=False)
    _connection: AbstractRobustConnection | None = field(default=None, init=False)
    _channel: AbstractRobustChannel | None = field(default=None, init=False)
    #: The channel the outbox publishes on, apart from the consumer's (see _renew_publisher).
    _publisher: AbstractRobustChannel | None = field(default=None, init=False)
    _renewed_at: float = field(default=0.0, init=False)
    _control: AbstractQueue | None = field(default=None, init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    _wake_outbox: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _wake_handover: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _control_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _http: aiohttp.ClientSession | None = field(default=None, init=False)
    _stopping: bool = field(default=False, init=False)
    _consumer: tuple[AbstractQueue, str] | None = field(default=None, init=False)
    _inflight: set[asyncio.Task[Any]] = field(default_factory=set, init=False)

    # --- life cycle -----------------------------------------------------------------------

    @property
    def agency(self) -> str:
        """This adapter's agency id."""
        return self.agency_id

    @property
    def connected(self) -> bool:
        """Whether RabbitMQ is connected now."""
        return self._connection is not None and not self._connection.is_closed

    async def start(self) -> None:
        """Load the consent book and start the tasks; RabbitMQ may still be away."""
        for body in await self.store.consent_notices():
            self._apply_notice(body, log=False)
        if self.handover_mode == "webhook":
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.webhook_timeout_s)
            )
        self._tasks = [
            asyncio.create_task(self._connect_loop(), name="adapter-connect"),
            asyncio.create_task(self._outbox_loop(), name="adapter-outbox"),
            asyncio.create_task(self._handover_loop(), name="adapter-handover"),
        ]
        _log.info("adapter_started", agency=self.agency_id, handover=self.handover_mode)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking messages, finish the current step, close connections. Idempotent.

        The loops stop at their next safe point (never inside a transaction);
        only a step that outlasts ``grace_s`` is cancelled.
        """
        if self._stopping:
            return
        self._stopping = True
        self._wake_outbox.set()
        self._wake_handover.set()
        if self._consumer is not None:
            queue, tag = self._consumer
            with suppress(*TRANSIENT):
                await queue.cancel(tag)  # no new deliveries
        if self._inflight:
            # Let a message being stored finish: cancelling it mid-transaction would
            # leave its connection to the garbage collector.
            await asyncio.wait(set(self._inflight), timeout=grace_s)
        if self._connection is not None:
            with suppress(*TRANSIENT):
                await self._connection.close()  # unacked deliveries return to the queue
        loops = [t for t in self._tasks if t.get_name() != "adapter-connect"]
        for task in self._tasks:
            if task not in loops:
                task.cancel()
        if loops:
            _done, late = await asyncio.wait(loops, timeout=grace_s)
            for task in late:
                task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._http is not None:
            await self._http.close()
        _log.info("adapter_stopped", agency=self.agency_id)

    async def wait_connected(self, timeout_s: float = 30.0) -> None:
        """Until RabbitMQ is connected and consuming (for tests and start-up reports)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not (self.connected and self._control is not None):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the adapter did not connect to RabbitMQ")
            await asyncio.sleep(0.05)

    async def _connect_loop(self) -> None:
        attempts = 0
        while self._connection is None:
            try:
                connection = await transport.connect(self.amqp_url, connect_timeout=10)
            except CONNECT_ERRORS as exc:
                delay = backoff(attempts).total_seconds()
                attempts += 1
                _log.warning("rabbitmq_unavailable", cause=type(exc).__name__, retry_in_s=delay)
                await asyncio.sleep(delay)
                continue
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=self.prefetch)
            # Passive: an adapter may not declare (docs/PROTOCOL.md §8).
            queue = await channel.get_queue(agency_queue(self.agency_id), ensure=True)
            self._control = await channel.get_queue(control_queue(self.agency_id), ensure=True)
            # Publishing has a channel of its own, so that a refused publish can get a
            # new one without touching the consumer's unacknowledged deliveries.
            self._publisher = await connection.channel(publisher_confirms=True)
            self._channel = channel
            self._connection = connection
            self._consumer = (queue, await queue.consume(self._on_message))
            _log.info("rabbitmq_connected", agency=self.agency_id)
            self._wake_outbox.set()
            self._wake_handover.set()

    # --- sending --------------------------------------------------------------------------

    async def submit(
        self, submission: Submission, *, idempotency_key: str | None, request: bytes
    ) -> tuple[str, bool]:
        """Seal a mapped submission into the outbox; ``(message id, created)``.

        Raises :class:`InvalidSubmission` for what only the adapter can check
        (an unknown recipient, a reply to nothing), before anything is stored.
        """
        now = self.clock()
        child, thread = await self._child_and_thread(submission, now)
        recipients = []
        problems = []
        for index, agency in enumerate(submission.recipients):
            key = self.directory.sealing_key(agency, now=now)
            if key is None or agency == self.agency_id:
                problems.append(
                    FieldProblem(
                        f"recipients.{index}",
                        "not an agency of this area with a current key"
                        if key is None
                        else "an agency cannot send to itself",
                    )
                )
            else:
                recipients.append(key)
        if problems:
            raise InvalidSubmission(problems)
        expires = submission.expires or _default_expiry(submission, now, self.message_ttl)
        if expires <= now:
            raise InvalidSubmission([FieldProblem("expires", "must be in the future")])
        sealed = seal(
            submission.content.model_dump_json().encode(),
            sender=self.signer,
            recipients=recipients,
            kind=submission.kind,
            child=child,
            basis=submission.basis,
            purpose=submission.purpose,
            created=now,
            expires=expires,
            thread=thread,
            in_reply_to=submission.in_reply_to,
        )
        message_id, created = await self.store.submit(
            message_id=sealed.header.id,
            idempotency_key=idempotency_key,
            request_digest=hashlib.sha256(request).hexdigest(),
            kind=submission.kind.value,
            recipients=list(submission.recipients),
            child=child,
            thread=sealed.header.thread,
            digest=sealed.digest,
            wire=sealed.wire,
            amqp_type=TYPE_ENVELOPE,
            now=now,
        )
        if created:
            _log.info(
                "submitted",
                message_id=message_id,
                kind=submission.kind.value,
                recipients=list(submission.recipients),
            )
            self._wake_outbox.set()
        return message_id, created

    async def _child_and_thread(
        self, submission: Submission, now: datetime
    ) -> tuple[str, str | None]:
        replied = None
        if submission.in_reply_to is not None:
            replied = await self.store.received(submission.in_reply_to)
            if replied is None:
                raise InvalidSubmission(
                    [FieldProblem("in_reply_to", "names no message received by this agency")]
                )
        child = getattr(submission.content, "child", None)
        if child is None:
            if replied is None:
                raise InvalidSubmission([FieldProblem("in_reply_to", "is required for this kind")])
            header = ProtectedHeader.model_validate_json(replied.header)
            return header.child, header.thread
        try:
            number = parse_identity_number(child.identity_number, today=now.date())
        except PersonnummerError:
            raise InvalidSubmission(
                [FieldProblem("content.child.identity_number", "is not a valid personnummer")]
            ) from None
        thread = None
        if replied is not None:
            thread = ProtectedHeader.model_validate_json(replied.header).thread
        return child_pseudonym(number, self.pseudonym_key), thread

    async def _outbox_loop(self) -> None:
        while not self._stopping:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake_outbox.wait(), timeout=self.poll_s)
            self._wake_outbox.clear()
            if not self.connected:
                continue
            try:
                await self._publish_due()
            except AdapterStoreError:
                _log.exception("outbox_store_failed")
            except Exception:  # noqa: BLE001 - a bug must not stop sending for good
                _log.exception("outbox_failed")

    async def _publish_due(self) -> None:
        """Publish what is due, all at once, and mark the confirmed items sent together.

        The items are independent messages and the channel confirms each, so
        they are published concurrently rather than one confirm at a time. An
        item is marked sent only once confirmed; one that failed is deferred
        with its own backoff, and after any failure the loop waits for its next
        wake-up instead of trying the next due items at once.
        """
        while items := await self.store.due_outbox(self.clock()):
            outcomes = await asyncio.gather(
                *(self._publish(item.id, item.type, item.body) for item in items),
                return_exceptions=True,
            )
            confirmed = [item.id for item, out in zip(items, outcomes, strict=True) if out is None]
            await self.store.mark_sent_many(confirmed, self.clock())
            failed = [
                (item, out)
                for item, out in zip(items, outcomes, strict=True)
                if isinstance(out, BaseException)
            ]
            if not failed:
                continue
            deferred = [(item, exc) for item, exc in failed if isinstance(exc, TRANSIENT)]
            now = self.clock()
            until = {item.id: now + backoff(item.attempts) for item, _exc in deferred}
            await self.store.defer_many(list(until.items()))
            for item, exc in deferred:
                _log.warning(
                    "publish_deferred",
                    id=item.id,
                    cause=type(exc).__name__,
                    detail=_frame_name(exc),
                    until=until[item.id],
                )
            if any(isinstance(exc, aiormq.exceptions.DeliveryError) for _item, exc in deferred):
                await self._renew_publisher()
            for _item, error in failed:
                if not isinstance(error, TRANSIENT):
                    raise error  # a bug: the outbox loop logs it; the item stays due
            return

    async def _renew_publisher(self) -> None:
        """Publish on a new channel from now on: RabbitMQ refused a publish on this one.

        RabbitMQ 3.10 keeps, per channel and quorum queue, a client of the queue
        that knows where its leader is. A channel whose first publish to the queue
        comes while the queue's record still names a stopped node as its leader
        (a node stopped, no new leader elected yet) asks that node, is refused
        (``basic.nack``) and refuses every later publish the same way for as long
        as the channel lives: ``rabbit_fifo_client:enqueue/3`` answers
        ``{badrpc, nodedown}`` with ``reject_publish`` and keeps its state.
        tests/test_cluster.py saw the police adapter refused for minutes after
        failing over. A new channel starts from the queue's current record.
        """
        connection = self._connection
        now = time.monotonic()
        if connection is None or connection.is_closed or now - self._renewed_at < RENEW_INTERVAL_S:
            return
        self._renewed_at = now
        old = self._publisher
        try:
            publisher = await connection.channel(publisher_confirms=True)
        except CONNECT_ERRORS as exc:
            # RabbitMQ is away again: the robust connection reopens the old channel.
            _log.warning("publisher_channel_renewal_failed", cause=type(exc).__name__)
            return
        self._publisher = publisher
        _log.warning("publisher_channel_renewed", agency=self.agency_id)
        if old is not None:
            with suppress(*TRANSIENT, RuntimeError):
                await old.close()

    async def _publish(self, item_id: str, amqp_type: str, body: bytes) -> None:
        channel = self._publisher
        if channel is None or channel.is_closed:
            raise NotReady("no channel")
        exchange = await channel.get_exchange(INGRESS_EXCHANGE, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                body,
                type=amqp_type,
                message_id=item_id,
                user_id=self.agency_id,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                app_id="backa-adapter",
            ),
            routing_key=INGRESS_ROUTING_KEY,
            timeout=30,
        )

    # --- receiving ------------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        if self._stopping:
            return  # not acked: RabbitMQ delivers it again after the connection closes
        try:
            if message.type == TYPE_RECEIPT:
                await self._receive_receipt(message.body)
            elif message.type == TYPE_CONTROL:
                await self._keep_notice(message.body)
            else:
                await self._receive_envelope(message.body)
        except HOLD as exc:
            # Not stored: RabbitMQ must deliver it again.
            _log.warning("receive_deferred", cause=type(exc).__name__)
            with suppress(*TRANSIENT):
                await message.nack(requeue=True)
            await asyncio.sleep(1.0)
            return
        except Exception:  # noqa: BLE001 - a bug: requeue so the delivery limit catches it
            _log.exception("receive_failed", amqp_message_id=message.message_id)
            with suppress(*TRANSIENT):
                await message.nack(requeue=True)  # the delivery limit dead-letters a poison one
            return
        with suppress(*TRANSIENT):
            await message.ack()

    async def _receive_envelope(self, body: bytes) -> None:
        now = self.clock()
        try:
            opened = open_envelope(
                body, keys=self.directory, recipient=self.recipient_keys, now=now
            )
        except InvalidEnvelope as exc:
            await self._refuse_unopened(body, str(exc), now)
            return
        header = opened.header
        structlog.contextvars.bind_contextvars(message_id=header.id)
        try:
            try:
                checked: Checked | None = check_content(
                    header, opened.content, pseudonym_key=self.pseudonym_key, today=now.date()
                )
                refusal: Refused | None = None
            except Refused as exc:
                checked, refusal = None, exc
            status = ReceiptStatus.DELIVERED if refusal is None else ReceiptStatus.REJECTED
            receipt = recipient_receipt(
                status,
                message_id=header.id,
                digest=opened.verified.digest,
                signer=self.signer,
                at=now,
                reason=None if refusal is None else refusal.reason,
            )
            stored = await self.store.store_received(
                message_id=header.id,
                sender=header.sender.agency,
                kind=header.kind.value,
                header=opened.verified.protected,
                digest=opened.verified.digest,
                content=None if checked is None else opened.content,
                child_age=None if checked is None or checked.facts is None else checked.facts.age,
                state="delivered" if refusal is None else "rejected",
                reason=None if refusal is None else refusal.reason.value,
                receipt=(_receipt_row(receipt)),
                now=now,
            )
            failpoint("adapter.after_store")
            if not stored:
                _log.info("duplicate_suppressed", sender=header.sender.agency)
                return
            if refusal is not None:
                _log.warning("message_refused", reason=refusal.reason.value, detail=refusal.detail)
            else:
                _log.info("delivered", sender=header.sender.agency, kind=header.kind.value)
                self._wake_handover.set()
            self._wake_outbox.set()
        finally:
            structlog.contextvars.unbind_contextvars("message_id")

    async def _refuse_unopened(self, body: bytes, detail: str, now: datetime) -> None:
        """Answer a message that failed to verify or open, when it names itself well enough."""
        try:
            envelope = parse_envelope(body)
            protected = b64url_decode(envelope.protected)
            header = ProtectedHeader.model_validate_json(protected)
            digest = hashlib.sha256(
                signature_input(protected, b64url_decode(envelope.ciphertext))
            ).hexdigest()
        except (InvalidEnvelope, ValueError, ValidationError):
            _log.warning("unreadable_message_dropped", detail=detail)
            return
        receipt = recipient_receipt(
            ReceiptStatus.REJECTED,
            message_id=header.id,
            digest=digest,
            signer=self.signer,
            at=now,
            reason=ReasonCode.ENVELOPE_INVALID,
        )
        await self.store.store_received(
            message_id=header.id,
            sender=header.sender.agency,
            kind=header.kind.value,
            header=protected,
            digest=digest,
            content=None,
            child_age=None,
            state="rejected",
            reason=ReasonCode.ENVELOPE_INVALID.value,
            receipt=_receipt_row(receipt),
            now=now,
        )
        _log.warning("envelope_refused", message_id=header.id, detail=detail)
        self._wake_outbox.set()

    async def _receive_receipt(self, body: bytes) -> None:
        try:
            receipt = verify_receipt(
                SignedReceipt.model_validate_json(body), keys=self.directory, now=self.clock()
            )
        except (ValidationError, InvalidSignedPayload) as exc:
            _log.warning("receipt_dropped", cause=type(exc).__name__)
            return
        recorded = await self.store.record_event(
            receipt_id=receipt.id,
            message_id=receipt.receipt_for,
            status=receipt.status.value,
            agency=receipt.by.agency,
            at=receipt.at,
            reason=receipt.reason.value if receipt.reason else None,
            answer=receipt.answer.value if receipt.answer else None,
            decline_reason=receipt.decline_reason.value if receipt.decline_reason else None,
            staff_id=receipt.staff_id,
        )
        _log.info(
            "receipt",
            message_id=receipt.receipt_for,
            status=receipt.status.value,
            by=receipt.by.agency,
            recorded=recorded,
        )

    # --- consents -------------------------------------------------------------------------

    def _apply_notice(self, body: bytes, *, log: bool = True) -> tuple[str, bool] | None:
        try:
            notice = verify_notice(body, directory=self.directory, now=self.clock())
        except ValueError as exc:
            if log:
                _log.warning("consent_notice_dropped", cause=str(exc))
            return None
        consent_id = notice.state.record.id
        known = self._consents.get(consent_id)
        if known is not None and known.revoked_at is not None:
            return consent_id, True  # forward only
        self._consents[consent_id] = notice.state
        return consent_id, notice.state.revoked_at is not None

    async def _keep_notice(self, body: bytes) -> None:
        applied = self._apply_notice(body)
        if applied is None:
            return
        consent_id, revoked = applied
        await self.store.put_consent(consent_id, notice=body, revoked=revoked)
        _log.info("consent_notice", consent_id=consent_id, revoked=revoked)

    async def drain_control(self) -> int:
        """Apply every consent notice waiting in the control queue; how many were applied.

        Run before each hand-over: a revocation the broker has confirmed is in
        this queue, so no hand-over after it can miss it.
        """
        queue = self._control
        if queue is None:
            raise NotReady("control queue not open")
        count = 0
        async with self._control_lock:
            while (message := await queue.get(no_ack=False, fail=False, timeout=10)) is not None:
                await self._keep_notice(message.body)
                await message.ack()
                count += 1
        return count

    @property
    def consents(self) -> Mapping[str, ConsentState]:
        """The consents this adapter knows, by id (read-only view)."""
        return dict(self._consents)

    # --- hand-over ------------------------------------------------------------------------

    async def _handover_loop(self) -> None:
        while not self._stopping:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake_handover.wait(), timeout=self.poll_s)
            self._wake_handover.clear()
            if self._control is None:
                continue
            try:
                await self._hand_over_due()
            except HOLD as exc:
                _log.warning("handover_deferred", cause=type(exc).__name__)
            except Exception:  # noqa: BLE001 - a bug must not stop hand-over for good
                _log.exception("handover_failed")

    async def _hand_over_due(self) -> None:
        """Hand over what is due: threads side by side, each thread's messages in turn.

        Hand-overs of different threads overlap (the webhook round trips, and
        their settlements share commits); within a thread, the agency system
        gets the messages in the order they were received. After all of a
        round's hand-overs have ended, the first failure is raised.
        """
        while rows := await self.store.due_handovers(self.clock()):
            await self.drain_control()
            await by_thread(rows, _thread_of, self._hand_over, HANDOVER_CONCURRENCY)

    async def _hand_over(self, row: InboxRow) -> None:
        now = self.clock()
        header = ProtectedHeader.model_validate_json(row.header)
        facts = None if row.child_age is None else ChildFacts(age=row.child_age)
        try:
            check_before_handover(
                header,
                facts,
                directory=self.directory,
                consents=self._consents,
                policy=self.policy,
                now=now,
            )
        except Refused as exc:
            receipt = recipient_receipt(
                ReceiptStatus.REJECTED,
                message_id=row.message_id,
                digest=row.digest,
                signer=self.signer,
                at=now,
                reason=exc.reason,
            )
            await self.store.settle_handover(
                row.message_id,
                state="rejected",
                reason=exc.reason.value,
                receipt=_receipt_row(receipt),
                now=now,
            )
            _log.warning(
                "handover_refused",
                message_id=row.message_id,
                reason=exc.reason.value,
                detail=exc.detail,
            )
            self._wake_outbox.set()
            return
        if self.handover_mode == "webhook" and not await self._post_webhook(row):
            await self.store.retry_handover(row.message_id, now + backoff(row.handover_attempts))
            return
        receipt = recipient_receipt(
            ReceiptStatus.HANDED_OVER,
            message_id=row.message_id,
            digest=row.digest,
            signer=self.signer,
            at=self.clock(),
        )
        await self.store.settle_handover(
            row.message_id, state="handed_over", reason=None, receipt=_receipt_row(receipt), now=now
        )
        _log.info("handed_over", message_id=row.message_id, mode=self.handover_mode)
        self._wake_outbox.set()

    async def _post_webhook(self, row: InboxRow) -> bool:
        if self._http is None or self.webhook_url is None or self.webhook_render is None:
            raise RuntimeError("webhook hand-over without a webhook configured")
        document = self.webhook_render(self._received(row))
        try:
            async with self._http.post(
                self.webhook_url,
                json=document,
                headers={"Idempotency-Key": row.message_id},
            ) as response:
                ok = 200 <= response.status < 300  # noqa: PLR2004 - HTTP success range
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            _log.warning("webhook_failed", message_id=row.message_id, cause=type(exc).__name__)
            return False
        if not ok:
            _log.warning("webhook_refused", message_id=row.message_id, status=status)
        return ok

    # --- the port: what people and agency systems do with received messages ---------------

    def _received(self, row: InboxRow) -> Received:
        header = ProtectedHeader.model_validate_json(row.header)
        content = None if row.content is None else parse_content(header.kind, row.content)
        return Received(
            message_id=row.message_id,
            kind=header.kind,
            sender=header.sender.agency,
            child=header.child,
            basis=header.basis,
            purpose=header.purpose,
            thread=header.thread,
            in_reply_to=header.in_reply_to,
            created=header.created,
            received_at=row.received_at,
            content=content,
            state=ReceiptStatus(row.state) if row.state != "delivered" else ReceiptStatus.DELIVERED,
            answer=None if row.answer is None else Answer(row.answer),
            decline_reason=None
            if row.decline_reason is None
            else DeclineReason(row.decline_reason),
        )

    async def list_received(self) -> list[Received]:
        """Every handed-over message, newest first."""
        rows = await self.store.received_list(["handed_over", "read", "answered"])
        return [self._received(r) for r in rows]

    async def get_received(self, message_id: str) -> Received:
        """One handed-over message; raises UnknownMessageError otherwise."""
        row = await self.store.received(message_id)
        if row is None or row.state not in ("handed_over", "read", "answered"):
            raise UnknownMessageError(message_id)
        return self._received(row)

    async def mark_read(self, message_id: str, staff_id: str) -> Received:
        """Record that a person opened it; sends ``read`` once."""
        row = await self.store.received(message_id)
        if row is None or row.state not in ("handed_over", "read", "answered"):
            raise UnknownMessageError(message_id)
        if row.state == "handed_over":
            now = self.clock()
            receipt = recipient_receipt(
                ReceiptStatus.READ,
                message_id=message_id,
                digest=row.digest,
                signer=self.signer,
                at=now,
                staff_id=staff_id,
            )
            if await self.store.mark_read(message_id, staff_id, _receipt_row(receipt), now):
                _log.info("read", message_id=message_id, staff_id=staff_id)
                self._wake_outbox.set()
        return await self.get_received(message_id)

    async def answer(
        self,
        message_id: str,
        staff_id: str,
        answer: Answer,
        decline_reason: DeclineReason | None,
    ) -> Received:
        """Send the business answer; AnswerConflictError if answered already."""
        row = await self.store.received(message_id)
        if row is None or row.state not in ("handed_over", "read", "answered"):
            raise UnknownMessageError(message_id)
        if row.kind not in (
            Kind.REFERRAL.value,
            Kind.TEAM_INVITATION.value,
            Kind.CONCERN_REPORT.value,
        ):
            raise AnswerConflictError(f"a {row.kind} is not answered")
        if (answer is Answer.DECLINED) != (decline_reason is not None):
            raise ValueError("a decline needs a reason, an acceptance has none")
        now = self.clock()
        receipt = recipient_receipt(
            ReceiptStatus.ANSWERED,
            message_id=message_id,
            digest=row.digest,
            signer=self.signer,
            at=now,
            answer=answer,
            decline_reason=decline_reason,
            staff_id=staff_id,
        )
        if not await self.store.mark_answered(
            message_id,
            staff_id=staff_id,
            answer=answer.value,
            decline_reason=None if decline_reason is None else decline_reason.value,
            receipt=_receipt_row(receipt),
            now=now,
        ):
            raise AnswerConflictError("already answered")
        _log.info("answered", message_id=message_id, answer=answer.value, staff_id=staff_id)
        self._wake_outbox.set()
        return await self.get_received(message_id)

    async def timeline(self, message_id: str) -> SentTimeline:
        """What this adapter knows about one message it sent."""
        row = await self.store.sent_message(message_id)
        if row is None:
            raise UnknownMessageError(message_id)
        events = tuple(
            TimelineEvent(
                status=ReceiptStatus(e["status"]),
                agency=e["agency"],
                at=e["at"],
                reason=None if e["reason"] is None else ReasonCode(e["reason"]),
                answer=None if e["answer"] is None else Answer(e["answer"]),
                decline_reason=(
                    None if e["decline_reason"] is None else DeclineReason(e["decline_reason"])
                ),
                staff_id=e["staff_id"],
            )
            for e in await self.store.events(message_id)
        )
        return SentTimeline(
            message_id=row.message_id,
            kind=Kind(row.kind),
            recipients=row.recipients,
            submitted_at=row.submitted_at,
            outbox="sent" if row.outbox_sent else "queued",
            events=events,
        )

    async def list_sent(self) -> list[SentTimeline]:
        """Every message this agency sent, newest first, with its timeline."""
        return [await self.timeline(r.message_id) for r in await self.store.sent_messages()]

    async def gaps(self) -> list[Gap] | None:
        """Late and nearly late matters, most urgent first; None if the broker's view is away."""
        if self.gap_source is None:
            return None
        try:
            found = await self.gap_source()
        except ConnectionError:
            return None
        return sorted(found, key=lambda g: (-g.late_seconds, g.due_at))


def _default_expiry(submission: Submission, now: datetime, ttl: timedelta) -> datetime:
    """When a message stops mattering, unless the submission says.

    A team invitation matters until its meeting: the broker cannot read the
    meeting time (it is encrypted), so the header's ``expires`` carries it and
    the broker's deadline "not answered before the meeting" can be computed.
    """
    if isinstance(submission.content, TeamInvitation) and submission.content.meeting_at > now:
        return submission.content.meeting_at
    return now + ttl


def _frame_name(exc: BaseException) -> str:
    """What RabbitMQ answered a refused publish with (Basic.Nack, Basic.Return …), else ''."""
    frame = getattr(exc, "frame", None)
    if frame is None:
        return ""
    text = getattr(frame, "reply_text", None)
    return f"{type(frame).__name__}{f': {text}' if text else ''}"


def _receipt_row(signed: SignedReceipt) -> tuple[str, bytes, str]:
    receipt_id = json.loads(b64url_decode(signed.payload))["id"]
    return str(receipt_id), signed.model_dump_json().encode(), TYPE_RECEIPT


def _thread_of(row: InboxRow) -> str:
    """The thread a received message belongs to (its header was verified when stored)."""
    try:
        thread = json.loads(row.header).get("thread")
    except (ValueError, AttributeError):
        thread = None
    return thread if isinstance(thread, str) else row.message_id


async def by_thread(
    items: Sequence[T],
    thread_of: Callable[[T], str],
    work: Callable[[T], Awaitable[object]],
    concurrency: int,
) -> None:
    """``work`` on every item: threads side by side, at most ``concurrency`` at once,
    each thread's items one after another in the order given.

    Every thread runs to its end (or its first failure); then the first
    failure, if any, is raised.
    """
    threads: dict[str, list[T]] = {}
    for item in items:
        threads.setdefault(thread_of(item), []).append(item)
    limit = asyncio.Semaphore(concurrency)

    async def run(thread: list[T]) -> None:
        async with limit:
            for item in thread:
                await work(item)

    outcomes = await asyncio.gather(*(run(t) for t in threads.values()), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
