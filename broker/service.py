"""The broker's AMQP shell: consume ingress, apply the pure pipeline, store, route, ack.

For every ingress message, in this order and no other: ``evaluate`` (pure) →
record the decision in the store (the message id is unique there) → publish
to each recipient with publisher confirms → mark routed → publish the signed
receipt to the sender → ack. The ack is the last thing and happens in one
place (``_settle``); a crash anywhere before it means RabbitMQ delivers the
message again, and the store's record makes the second pass route nothing
that was already routed.

Failures of the store or of RabbitMQ are transient: the message is held and
retried with backoff, never acked and never dead-lettered for it. Anything
else (a bug) is a nack with requeue, so that RabbitMQ's delivery limit
eventually dead-letters a poison message; the dead-letter consumer answers it
with a ``delivery_limit`` rejection.

After a connection loss the robust connection reopens the channels and
restores the consumer; messages that were in flight on the old channel cannot
be acked any more and RabbitMQ delivers them again (aio-pika issues 563, 636:
``connect_robust`` alone does not re-publish unconfirmed messages; here the
redelivery plus the idempotent store does that job).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Protocol

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
)

from broker import receipts
from broker.amqp import connect, declare_topology
from broker.audit.entry import refusal_entry
from broker.deadlines import Plan
from broker.metrics import Metrics
from broker.pipeline import Ingress, Reject, Relay, Route, evaluate, is_message_id
from broker.policy import Policy
from broker.records import MessageRecord, Outcome, ReceiptWrite, StatusEvent, Store
from broker.store import ConsentRow, StoreUnavailable
from broker.topology import (
    CONTROL_EXCHANGE,
    DEAD_LETTER_QUEUE,
    DELIVER_EXCHANGE,
    INGRESS_QUEUE,
    TYPE_CONTROL,
    TYPE_ENVELOPE,
    TYPE_RECEIPT,
    agency_queue,
    control_routing_key,
    queues,
)
from keys.directory import Directory
from keys.envelope import SenderKey
from keys.failpoints import failpoint
from keys.replay import DEFAULT_WINDOW, ClockWindow
from schemas.envelope import ProtectedHeader
from schemas.reasons import ReasonCode
from schemas.receipts import SignedReceipt

_log = structlog.get_logger("broker.service")

#: Exceptions that mean "RabbitMQ or the store is away for now": hold and retry.
TRANSIENT: tuple[type[BaseException], ...] = (
    StoreUnavailable,
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    # A channel used while the robust connection reopens it: aio-pika raises this
    # RuntimeError, not an AMQPError. After a reconnect aio-pika reopens the channels
    # one at a time, in no fixed order: the consumer's may deliver before the
    # publisher's is open again. A nack would send the message round again, each
    # time counting toward its delivery limit (then dead-lettered, never routed).
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    asyncio.TimeoutError,
)

#: Accepted messages' records kept for their receipts: most receipts come within
#: minutes of routing; an older one (or one at another broker instance) is read.
RECORDS_KEPT = 8_192


class Action(Enum):
    """What to tell RabbitMQ about one ingress message."""

    ACK = "ack"
    REQUEUE = "requeue"  # a bug: let the delivery limit dead-letter it eventually
    ABANDON = "abandon"  # the channel is gone: RabbitMQ will deliver it again


class DeadlineHooks(Protocol):
    """What the service asks the watchdog (``broker.watchdog.Watchdog``)."""

    def plan_accepted(self, record: MessageRecord) -> Plan:
        """The deadlines a message's acceptance opens."""
        ...

    def plan_receipt(
        self, record: MessageRecord, event: StatusEvent, timeline: Sequence[StatusEvent]
    ) -> Plan:
        """What a recipient's receipt opens and closes, given the message's timeline."""
        ...


def utc_now() -> datetime:
    """The wall clock, timezone-aware (the default clock of the service)."""
    return datetime.now(UTC)


@dataclass
class BrokerService:
    """Consumes ``backa.ingress`` and ``backa.dead``; routes, records and answers."""

    amqp_url: str
    store: Store
    directory: Directory
    broker_key: SenderKey
    policy: Policy
    metrics: Metrics
    clock: Callable[[], datetime] = utc_now
    window: ClockWindow = DEFAULT_WINDOW
    prefetch: int = 64
    max_bytes: int = 2_000_000
    shutdown_grace_s: float = 20.0
    _connection: AbstractRobustConnection | None = field(default=None, init=False)
    _publisher: AbstractRobustChannel | None = field(default=None, init=False)
    _deliver: AbstractRobustExchange | None = field(default=None, init=False)
    _control: AbstractRobustExchange | None = field(default=None, init=False)
    _consumers: list[tuple[AbstractQueue, str]] = field(default_factory=list, init=False)
    _inflight: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _stopping: bool = field(default=False, init=False)
    _depth_task: asyncio.Task[None] | None = field(default=None, init=False)
    _renew_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _renewed_at: float = field(default=0.0, init=False)
    #: Records of messages accepted lately, newest last (``_remember``).
    _records: OrderedDict[str, MessageRecord] = field(default_factory=OrderedDict, init=False)
    #: Opens and closes deadlines from what is recorded (broker.watchdog), if watching.
    watchdog: DeadlineHooks | None = None
    #: Called with each notice on the control exchange (consent changes from any instance).
    on_control: Callable[[bytes], Awaitable[None]] | None = None

    async def start(self) -> None:
        """Connect, declare the topology and start consuming."""
        self._connection = await connect(self.amqp_url)
        self._publisher = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        agencies = [a for a in self.directory.agencies() if a != self.directory.broker_agency()]
        await declare_topology(self._publisher, agencies)
        consumer = await self._connection.channel()
        await consumer.set_qos(prefetch_count=self.prefetch)
        # Declared (not merely looked up), so that the robust channel re-declares
        # them and restores their consumers after a reconnect.
        arguments = {q.name: q.arguments for q in queues(agencies)}
        ingress = await consumer.declare_queue(
            INGRESS_QUEUE, durable=True, arguments=arguments[INGRESS_QUEUE]
        )
        dead = await consumer.declare_queue(
            DEAD_LETTER_QUEUE, durable=True, arguments=arguments[DEAD_LETTER_QUEUE]
        )
        self._deliver = await self._publisher.declare_exchange(
            DELIVER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        self._control = await self._publisher.declare_exchange(
            CONTROL_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
        )
        self._consumers = [
            (ingress, await ingress.consume(self._spawn(self._on_ingress), no_ack=False)),
            (dead, await dead.consume(self._spawn(self._on_dead_letter), no_ack=False)),
        ]
        if self.on_control is not None:
            # Each instance hears every consent change, its own included (idempotent).
            control = await consumer.declare_queue(exclusive=True, auto_delete=True)
            await control.bind(CONTROL_EXCHANGE)
            self._consumers.append(
                (control, await control.consume(self._spawn(self._on_control), no_ack=False))
            )
        self._depth_task = asyncio.create_task(self._watch_depth(), name="queue-depth")
        _log.info("broker_started", agencies=len(agencies), prefetch=self.prefetch)

    async def stop(self) -> None:
        """Stop taking messages, finish those in flight (up to the grace period), close.

        Idempotent: a second call does nothing.
        """
        if self._stopping:
            return
        self._stopping = True
        for queue, tag in self._consumers:
            with suppress(*TRANSIENT):
                await queue.cancel(tag)
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=self.shutdown_grace_s)
            for task in pending:
                task.cancel()
        if self._depth_task is not None:
            self._depth_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._depth_task
        if self._connection is not None:
            await self._connection.close()
        _log.info("broker_stopped")

    async def ping(self) -> None:
        """Readiness probe: raise unless the AMQP connection is open."""
        if self._connection is None or self._connection.is_closed:
            raise ConnectionError("AMQP connection is not open")

    # --- consuming ------------------------------------------------------------------------

    def _spawn(
        self, handler: Callable[[AbstractIncomingMessage], asyncio.Future[None] | object]
    ) -> Callable[[AbstractIncomingMessage], asyncio.Future[None]]:
        """Wrap a handler so shutdown can wait for every message in flight."""

        async def run(message: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._inflight.add(task)
            try:
                await handler(message)  # type: ignore[misc]
            finally:
                if task is not None:
                    self._inflight.discard(task)

        return run  # type: ignore[return-value]

    async def _on_ingress(self, message: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        structlog.contextvars.bind_contextvars(amqp_message_id=message.message_id)
        try:
            action, summary = await self._with_retries(message, self._handle_ingress)
            await self._settle(message, action)
        finally:
            elapsed = time.perf_counter() - started
            structlog.contextvars.unbind_contextvars("amqp_message_id")
        kind, outcome, extra = summary
        self.metrics.observe_message(kind, outcome, elapsed)
        _log.info(
            "ingress_message",
            kind=kind,
            outcome=outcome,
            action=action.value,
            duration_ms=round(elapsed * 1000, 2),
            **extra,
        )

    async def _with_retries(
        self,
        message: AbstractIncomingMessage,
        handle: Callable[[AbstractIncomingMessage], asyncio.Future[Summary] | object],
    ) -> tuple[Action, Summary]:
        delay = 0.1
        while True:
            try:
                summary: Summary = await handle(message)  # type: ignore[misc]
            except TRANSIENT as exc:
                if self._stopping or _channel_gone(message):
                    return Action.ABANDON, ("unknown", "abandoned", {"cause": type(exc).__name__})
                _log.warning(
                    "transient_failure",
                    cause=type(exc).__name__,
                    detail=_frame_name(exc),
                    retry_in_s=delay,
                )
                if isinstance(exc, aio_pika.exceptions.DeliveryError):
                    await self._renew_publisher()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:  # noqa: BLE001 - a bug: requeue so the delivery limit catches it
                _log.exception("message_failed")
                return Action.REQUEUE, ("unknown", "failed", {})
            else:
                return Action.ACK, summary

    async def _renew_publisher(self) -> None:
        """Publish on a new channel from now on (after RabbitMQ refused a publish).

        After a cluster node stopped, RabbitMQ 3.10 was seen (tests/test_cluster.py)
        to refuse publishes on the broker's channel for minutes on end, long after
        the quorum queues had new leaders; a channel keeps per-queue state of its
        own, so a refused publish gets a new channel for every later one. The
        state is 3.10.8's ``rabbit_fifo_client``: a channel's first publish to a
        quorum queue asks the leader the queue's record names; while that is a
        stopped node (no new leader elected yet) the answer ``{badrpc, nodedown}``
        becomes ``reject_publish`` (basic.nack) and the state is kept, so every
        later publish on that channel is refused the same way. The adapters
        renew their publishing channel the same way (adapters/runtime.py).
        """
        async with self._renew_lock:
            if time.monotonic() - self._renewed_at < 1.0 or self._connection is None:
                return  # another task renewed it just now
            old = self._publisher
            try:
                publisher = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                deliver = await publisher.declare_exchange(
                    DELIVER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
                )
                control = await publisher.declare_exchange(
                    CONTROL_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
                )
            except TRANSIENT as exc:
                # RabbitMQ went away meanwhile: the robust connection reopens the old one.
                _log.warning("publisher_channel_renewal_failed", cause=type(exc).__name__)
                return
            self._deliver, self._control = deliver, control
            self._publisher = publisher
            self._renewed_at = time.monotonic()
            _log.warning("publisher_channel_renewed")
            if old is not None:
                with suppress(*TRANSIENT, RuntimeError):
                    await old.close()

    async def _settle(self, message: AbstractIncomingMessage, action: Action) -> None:
        """The one place where an ingress or dead-letter message is acked or nacked."""
        if action is Action.ABANDON or _channel_gone(message):
            return
        with suppress(*TRANSIENT):
            if action is Action.ACK:
                failpoint("broker.before_ack")
                await message.ack()
            else:
                await message.nack(requeue=True)

    # --- the pipeline's outcomes ------------------------------------------------------------

    async def _handle_ingress(self, message: AbstractIncomingMessage) -> Summary:
        now = self.clock()
        evaluation = evaluate(
            Ingress(
                body=message.body,
                type=message.type,
                user_id=message.user_id,
                message_id=message.message_id,
            ),
            directory=self.directory,
            policy=self.policy,
            now=now,
            window=self.window,
            max_bytes=self.max_bytes,
        )
        if isinstance(evaluation, Route):
            return await self._route(evaluation, now)
        if isinstance(evaluation, Relay):
            return await self._relay(evaluation, now, message.user_id)
        return await self._reject(evaluation, now)

    async def _route(self, route: Route, now: datetime) -> Summary:
        header = route.header
        record = _record(
            header,
            digest=route.verified.digest,
            received_at=now,
            outcome=Outcome.ACCEPTED,
            rule=route.decision.rule,
            legal_ref=route.decision.legal_ref,
        )
        accepted = self._broker_event(header.id, None, "accepted", now)
        # Its deadlines open in the transaction that records the decision.
        recorded = await self.store.record_decision(record, [accepted], self._deadlines_of(record))
        failpoint("broker.after_record")
        stored = recorded.record
        summary_extra: dict[str, object] = {"message_id": header.id, "sender": header.sender.agency}
        if not recorded.created and stored.digest != record.digest:
            # Same id, other bytes: a replay or a forgery; the stored message stands.
            reject = Reject(
                ReasonCode.REPLAYED,
                "message id already used by another envelope",
                header.sender.agency,
                header.id,
                route.verified.digest,
            )
            return await self._reject(reject, now)
        if stored.outcome is Outcome.REJECTED:
            await self._send_receipt(
                stored.sender,
                receipts.rejected(
                    message_id=stored.message_id,
                    digest=stored.digest,
                    reason=ReasonCode(stored.reason or ReasonCode.INTERNAL_ERROR),
                    broker=self.broker_key,
                    at=now,
                ),
            )
            return header.kind.value, "rejected", {**summary_extra, "redelivered": True}
        self._remember(stored)  # accepted: a rejected one was answered above
        if not recorded.created:
            # Decided before (a redelivery): open what it opens, should the watchdog have
            # been off then. Idempotent: each deadline opens once.
            await self.store.open_deadlines(self._deadlines_of(stored))
        if stored.routed_at is None:
            await asyncio.gather(
                *(self._publish_envelope(route, agency) for agency in stored.recipients)
            )
            failpoint("broker.after_route")
            await self.store.mark_routed(header.id, now)
        await self._send_receipt(
            stored.sender,
            receipts.accepted(
                message_id=stored.message_id,
                digest=stored.digest,
                recipients=stored.recipients,
                broker=self.broker_key,
                at=now,
                log_index=stored.log_index,
            ),
        )
        extra: dict[str, object] = {
            **summary_extra,
            "recipients": len(stored.recipients),
            "rule": stored.rule,
        }
        if not recorded.created:
            extra["redelivered"] = True
        return header.kind.value, "accepted", extra

    def _broker_event(
        self,
        message_id: str,
        agency: str | None,
        status: str,
        now: datetime,
        reason: str | None = None,
    ) -> StatusEvent:
        """A status event the broker itself vouches for (accepted, rejected, dead-lettered)."""
        return StatusEvent(
            message_id=message_id,
            agency=agency,
            status=status,
            at=now,
            recorded_at=now,
            signer=self.broker_key.agency,
            reason=reason,
        )

    async def publish_envelope(self, agency: str, body: bytes, message_id: str) -> None:
        """Put an envelope the broker itself sealed (an escalation) in ``agency``'s queue."""
        await self._publish(agency, body, message_type=TYPE_ENVELOPE, message_id=message_id)

    async def _publish_envelope(self, route: Route, agency: str) -> None:
        await self._publish(
            agency,
            route.wire,
            message_type=TYPE_ENVELOPE,
            message_id=route.header.id,
        )

    async def _reject(self, reject: Reject, now: datetime) -> Summary:
        self.metrics.observe_rejection(reject.reason.value)
        kind = reject.header.kind.value if reject.header is not None else "unknown"
        extra: dict[str, object] = {
            "message_id": reject.message_id,
            "reason": reject.reason.value,
            "detail": reject.detail,
        }
        if reject.header is not None:
            header = reject.header
            record = _record(
                header,
                digest=reject.digest,
                received_at=now,
                outcome=Outcome.REJECTED,
                reason=reject.reason.value,
            )
            event = self._broker_event(header.id, None, "rejected", now, reject.reason.value)
            recorded = await self.store.record_decision(record, [event])
            if not recorded.created and recorded.record.digest == reject.digest:
                # Decided before: answer with what was decided then.
                stored = recorded.record
                if stored.outcome is Outcome.ACCEPTED:
                    extra["note"] = "already accepted"
        else:
            # Not stored (it did not verify, or is not the publisher's to store),
            # but a refusal is a decision: the audit log names it all the same.
            await self.store.append_audit(
                [
                    refusal_entry(
                        reason=reject.reason,
                        message_id=reject.message_id,
                        publisher=reject.reply_to,
                        digest=reject.digest,
                        at=now,
                    )
                ]
            )
        if reject.reply_to is not None and reject.message_id is not None:
            await self._send_receipt(
                reject.reply_to,
                receipts.rejected(
                    message_id=reject.message_id,
                    digest=reject.digest,
                    reason=reject.reason,
                    broker=self.broker_key,
                    at=now,
                ),
            )
        else:
            extra["unanswered"] = True
        return kind, "rejected", extra

    def _deadlines_of(self, record: MessageRecord) -> list[tuple[str, str, str | None, datetime]]:
        """The deadlines an accepted message opens (none without a watchdog)."""
        if self.watchdog is None:
            return []
        return [
            (d.message_id, d.rule, d.agency, d.due_at)
            for d in self.watchdog.plan_accepted(record).open
        ]

    def _remember(self, record: MessageRecord) -> None:
        """Keep an accepted message's record for the receipts that will come for it."""
        self._records[record.message_id] = record
        self._records.move_to_end(record.message_id)
        while len(self._records) > RECORDS_KEPT:
            self._records.popitem(last=False)

    async def _relay(self, relay: Relay, now: datetime, publisher: str | None) -> Summary:
        receipt = relay.receipt
        # What a receipt is checked against (outcome, recipients, digest, sender) never
        # changes once decided: a record kept since routing is as good as a read.
        stored = self._records.get(receipt.receipt_for)
        if stored is None:
            stored = await self.store.get_message(receipt.receipt_for)
        reason: ReasonCode | None = None
        if stored is None or stored.outcome is not Outcome.ACCEPTED:
            reason = ReasonCode.UNKNOWN_MESSAGE
        elif receipt.by.agency not in stored.recipients or receipt.acknowledges != stored.digest:
            reason = ReasonCode.RECEIPT_MISMATCH
        if reason is not None:
            reject = Reject(
                reason,
                "receipt refused",
                publisher,
                receipt.id,
                receipt.acknowledges,
            )
            return await self._reject(reject, now)
        assert stored is not None  # noqa: S101 - narrowed by the checks above
        event = StatusEvent(
            message_id=receipt.receipt_for,
            agency=receipt.by.agency,
            status=receipt.status.value,
            at=receipt.at,
            recorded_at=now,
            signer=receipt.by.agency,
            receipt_id=receipt.id,
            reason=receipt.reason.value if receipt.reason else None,
            answer=receipt.answer.value if receipt.answer else None,
            decline_reason=(receipt.decline_reason.value if receipt.decline_reason else None),
            staff_id=receipt.staff_id,
        )
        planner = None
        if self.watchdog is not None:
            planner = functools.partial(self.watchdog.plan_receipt, stored, event)
        # The event, its audit entry and the deadlines it opens and closes commit together.
        await self.store.record_receipt(ReceiptWrite(stored, event, planner))
        # Relayed unchanged, signature and all: the sender verifies the recipient itself.
        await self._publish(
            stored.sender, relay.body, message_type=TYPE_RECEIPT, message_id=receipt.id
        )
        self.metrics.observe_receipt(receipt.status.value)
        return (
            "receipt",
            receipt.status.value,
            {
                "message_id": receipt.receipt_for,
                "receipt_id": receipt.id,
                "by": receipt.by.agency,
            },
        )

    async def _send_receipt(self, agency: str, signed: SignedReceipt) -> None:
        await self._publish(
            agency,
            signed.model_dump_json().encode(),
            message_type=TYPE_RECEIPT,
            message_id=None,
        )

    async def _publish(
        self, routing_key: str, body: bytes, *, message_type: str, message_id: str | None
    ) -> None:
        if self._deliver is None:
            raise ConnectionError("the broker is not started")
        await self._deliver.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                type=message_type,
                message_id=message_id,
                app_id="backa-broker",
            ),
            routing_key=routing_key,
            mandatory=True,
        )

    # --- consent broadcasts -------------------------------------------------------------------

    async def _on_control(self, message: AbstractIncomingMessage) -> None:
        action, _summary = await self._with_retries(message, self._handle_control)
        await self._settle(message, action)

    async def _handle_control(self, message: AbstractIncomingMessage) -> Summary:
        if self.on_control is not None and message.type == TYPE_CONTROL:
            await self.on_control(message.body)
        return "control", "applied", {}

    async def broadcast_consent(self, event: str, row: ConsentRow, parties: Sequence[str]) -> None:
        """Tell the consent's parties (their control queues) and other broker instances.

        The signed consent and, once revoked, the signed revocation travel with
        the notice, so an adapter verifies the revoker's signature itself and
        need not trust the broker's word. Only parties are told: other agencies
        have no need to know that a consent about this child exists.
        """
        body = json.dumps(
            {
                "event": f"consent_{event}",
                "consent_id": row.consent_id,
                "child": row.child,
                "revoked_at": None if row.revoked_at is None else row.revoked_at.isoformat(),
                "consent": {"payload": row.payload, "signature": row.signature},
                "revocation": (
                    None
                    if row.revocation_payload is None
                    else {"payload": row.revocation_payload, "signature": row.revocation_signature}
                ),
            },
            sort_keys=True,
        ).encode()
        if self._control is None:
            raise ConnectionError("the broker is not started")
        message_id = receipts.receipt_id(row.consent_id, f"consent_{event}")
        await self._control.publish(
            aio_pika.Message(
                body,
                type=TYPE_CONTROL,
                message_id=message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/json",
                app_id="backa-broker",
            ),
            routing_key="",
            mandatory=False,  # no broker instance listening is not an error
        )
        # To each party's control queue, not its message queue: a revocation must
        # not wait behind the messages it is meant to stop (topology.control_queue).
        await asyncio.gather(
            *(
                self._publish(
                    control_routing_key(agency),
                    body,
                    message_type=TYPE_CONTROL,
                    message_id=message_id,
                )
                for agency in parties
            )
        )

    # --- dead letters -----------------------------------------------------------------------

    async def _on_dead_letter(self, message: AbstractIncomingMessage) -> None:
        action, _summary = await self._with_retries(message, self._handle_dead_letter)
        await self._settle(message, action)

    async def _handle_dead_letter(self, message: AbstractIncomingMessage) -> Summary:
        now = self.clock()
        source = _death_queue(message)
        self.metrics.observe_rejection(ReasonCode.DELIVERY_LIMIT.value)
        _log.error(
            "dead_lettered",
            queue=source,
            amqp_message_id=message.message_id,
            publisher=message.user_id,
        )
        message_id = message.message_id
        if source == INGRESS_QUEUE and message.user_id and message_id:
            if self.directory.agency_type(message.user_id) is not None:
                await self._reject(
                    Reject(
                        ReasonCode.DELIVERY_LIMIT,
                        "dead-lettered from ingress",
                        message.user_id,
                        message_id if is_message_id(message_id) else None,
                        hashlib.sha256(message.body).hexdigest(),
                    ),
                    now,
                )
        elif source is not None and source.startswith("agency.") and message_id:
            agency = source.removeprefix("agency.")
            stored = await self.store.get_message(message_id)
            if stored is not None:
                await self.store.append_events(
                    [
                        self._broker_event(
                            message_id, agency, "rejected", now, ReasonCode.DELIVERY_LIMIT.value
                        )
                    ]
                )
        return "dead_letter", "recorded", {"queue": source}

    async def _watch_depth(self) -> None:
        """Refresh the queue-depth gauges every few seconds (for /metrics)."""
        while True:
            if self._publisher is not None and not self._publisher.is_closed:
                queues = [INGRESS_QUEUE, DEAD_LETTER_QUEUE] + [
                    agency_queue(a)
                    for a in self.directory.agencies()
                    if a != self.directory.broker_agency()
                ]
                for name in queues:
                    with suppress(*TRANSIENT):
                        declared = await self._publisher.declare_queue(name, passive=True)
                        count = declared.declaration_result.message_count
                        self.metrics.set_queue_depth(name, count or 0)
            await asyncio.sleep(5)


Summary = tuple[str, str, dict[str, object]]


def _record(
    header: ProtectedHeader,
    *,
    digest: str,
    received_at: datetime,
    outcome: Outcome,
    reason: str | None = None,
    rule: str | None = None,
    legal_ref: str | None = None,
) -> MessageRecord:
    """What the store keeps of a message: its verified header's metadata and the decision."""
    basis = header.basis
    return MessageRecord(
        message_id=header.id,
        digest=digest,
        kind=header.kind.value,
        sender=header.sender.agency,
        sender_kid=header.sender.kid,
        child=header.child,
        basis_type=basis.type,
        basis_ref=basis.consent_id if basis.type == "consent" else basis.ref,
        purpose=header.purpose.value,
        thread=header.thread,
        in_reply_to=header.in_reply_to,
        created=header.created,
        expires=header.expires,
        received_at=received_at,
        outcome=outcome,
        reason=reason,
        rule=rule,
        legal_ref=legal_ref,
        recipients=tuple(r.agency for r in header.recipients),
    )


def _channel_gone(message: AbstractIncomingMessage) -> bool:
    channel = message.channel
    return bool(getattr(channel, "is_closed", False))


def _death_queue(message: AbstractIncomingMessage) -> str | None:
    deaths = (message.headers or {}).get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        queue = deaths[0].get("queue")
        return queue if isinstance(queue, str) else None
    first = (message.headers or {}).get("x-first-death-queue")
    return first if isinstance(first, str) else None


def _frame_name(exc: BaseException) -> str:
    """What RabbitMQ answered a refused publish with (Basic.Nack, Basic.Return …), else ''."""
    frame = getattr(exc, "frame", None)
    if frame is None:
        return ""
    text = getattr(frame, "reply_text", None)
    return f"{type(frame).__name__}{f': {text}' if text else ''}"
