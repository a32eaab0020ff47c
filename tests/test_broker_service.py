"""The broker service end to end, on the real RabbitMQ and both real databases.

Each sending agency publishes as its own RabbitMQ user (so RabbitMQ vouches
for ``user_id``), the broker runs ``BrokerService`` on a scratch vhost with a
migrated ``SqlStore``, and the tests read the agencies' queues.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from broker.batching import GroupCommitStore
from broker.metrics import Metrics
from broker.policy import ExplicitPolicy
from broker.provision import RabbitmqctlRunner
from broker.records import MessageRecord, Outcome, ReceiptWrite, Recorded, StatusEvent, Store
from broker.service import BrokerService
from broker.store import SqlStore
from broker.topology import (
    INGRESS_EXCHANGE,
    INGRESS_QUEUE,
    TYPE_ENVELOPE,
    TYPE_RECEIPT,
    agency_queue,
    control_queue,
)
from keys.envelope import Sealed, seal
from keys.signed import sign_receipt, verify_receipt
from schemas.directory import AgencyType
from schemas.envelope import Kind, LegalBasis, Purpose
from schemas.receipts import Receipt, SignedReceipt
from tests.rabbit import amqp_url_for
from tests.support import CHILD, Agency, signed_directory

pytestmark = pytest.mark.rabbitmq

SUFFIX = secrets.token_hex(3)
SCHOOL = Agency.make(f"svc-skola-{SUFFIX}")
SOCIAL = Agency.make(f"svc-soc-{SUFFIX}")
BUP = Agency.make(f"svc-bup-{SUFFIX}")
POLICE = Agency.make(f"svc-polis-{SUFFIX}")
BROKER = Agency.make(f"svc-broker-{SUFFIX}")
GHOST = Agency.make(f"svc-ghost-{SUFFIX}")
AGENCIES = [SCHOOL, SOCIAL, BUP, POLICE]
NOW = datetime.now(UTC)
DIRECTORY = signed_directory(
    [
        (SCHOOL, AgencyType.SCHOOL),
        (SOCIAL, AgencyType.SOCIAL_SERVICES),
        (BUP, AgencyType.BUP),
        (POLICE, AgencyType.POLICE),
        (BROKER, AgencyType.BROKER),
    ],
    at=NOW - timedelta(days=60),
)
POLICY = ExplicitPolicy.from_toml(Path("deploy/policy/explicit.toml").read_text(encoding="utf-8"))
PASSWORD = secrets.token_urlsafe(12)
MAX_BYTES = 50_000
WAIT_S = 20.0


@pytest.fixture(scope="module")
def agency_users(rabbitmqctl: RabbitmqctlRunner, scratch_vhost: str) -> Iterator[str]:
    """A RabbitMQ user per test agency on the scratch vhost; removed afterwards."""
    for agency in AGENCIES:
        rabbitmqctl.run(["add_user", agency.agency], stdin=PASSWORD + "\n")
        rabbitmqctl.run(["set_permissions", "-p", scratch_vhost, agency.agency, "^$", ".*", ".*"])
    try:
        yield scratch_vhost
    finally:
        for agency in AGENCIES:
            rabbitmqctl.run(["delete_user", agency.agency])


@dataclass
class Harness:
    """The running broker, its store, and the agencies' view of RabbitMQ."""

    vhost: str
    store: Store
    service: BrokerService
    admin: aio_pika.abc.AbstractConnection
    agencies: dict[str, aio_pika.abc.AbstractConnection] = field(default_factory=dict)

    async def publish(
        self,
        as_agency: Agency,
        body: bytes,
        *,
        message_type: str = TYPE_ENVELOPE,
        message_id: str | None = None,
    ) -> None:
        """Publish to backa.ingress as ``as_agency``'s RabbitMQ user, with a confirm."""
        connection = self.agencies.get(as_agency.agency)
        if connection is None:
            connection = await aio_pika.connect(
                amqp_url_for(self.vhost, as_agency.agency, PASSWORD)
            )
            self.agencies[as_agency.agency] = connection
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(INGRESS_EXCHANGE, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                body,
                type=message_type,
                user_id=as_agency.agency,
                message_id=message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=INGRESS_QUEUE,
        )
        await channel.close()

    async def take(
        self, agency: Agency, count: int = 1, *, control: bool = False
    ) -> list[tuple[str | None, bytes]]:
        """The next ``count`` messages in ``agency``'s queue (or control queue), acked."""
        channel = await self.admin.channel()
        name = control_queue(agency.agency) if control else agency_queue(agency.agency)
        queue = await channel.get_queue(name, ensure=False)
        taken: list[tuple[str | None, bytes]] = []
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while len(taken) < count:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                assert asyncio.get_running_loop().time() < deadline, (
                    f"only {len(taken)} of {count} messages reached {agency.agency}"
                )
                await asyncio.sleep(0.05)
                continue
            taken.append((message.type, message.body))
        await channel.close()
        return taken

    async def depth(self, agency: Agency, *, control: bool = False) -> int:
        """How many messages wait in ``agency``'s queue (or control queue) now."""
        channel = await self.admin.channel()
        name = control_queue(agency.agency) if control else agency_queue(agency.agency)
        queue = await channel.declare_queue(name, passive=True)
        await channel.close()
        return queue.declaration_result.message_count or 0

    async def receipt(self, agency: Agency) -> Receipt:
        """The next message for ``agency``, which must be a receipt the directory verifies."""
        ((kind, body),) = await self.take(agency)
        assert kind == TYPE_RECEIPT
        signed = SignedReceipt.model_validate_json(body)
        return verify_receipt(signed, keys=DIRECTORY, now=datetime.now(UTC))


async def _start(vhost: str, store: Store) -> BrokerService:
    service = BrokerService(
        amqp_url=amqp_url_for(vhost),
        store=store,
        directory=DIRECTORY,
        broker_key=BROKER.sender,
        policy=POLICY,
        metrics=Metrics(),
        max_bytes=MAX_BYTES,
        shutdown_grace_s=5,
    )
    await service.start()
    return service


@pytest.fixture
async def harness(agency_users: str, store: SqlStore) -> AsyncIterator[Harness]:
    """A started broker on a fresh database, with every agency queue emptied first."""
    service = await _start(agency_users, GroupCommitStore(store))
    admin = await aio_pika.connect(amqp_url_for(agency_users))
    channel = await admin.channel()
    for agency in AGENCIES:
        for name in (agency_queue(agency.agency), control_queue(agency.agency)):
            await (await channel.get_queue(name, ensure=False)).purge()
    await channel.close()
    running = Harness(vhost=agency_users, store=store, service=service, admin=admin)
    try:
        yield running
    finally:
        await running.service.stop()
        for connection in running.agencies.values():
            await connection.close()
        await admin.close()


def _seal(
    sender: Agency = SCHOOL,
    recipients: tuple[Agency, ...] = (SOCIAL,),
    *,
    created: datetime | None = None,
    expires: timedelta = timedelta(days=30),
    message_id: str | None = None,
    content: bytes = b'{"opaque": true}',
) -> Sealed:
    created = created or datetime.now(UTC)
    return seal(
        content,
        sender=sender.sender,
        recipients=[r.sealing for r in recipients],
        kind=Kind.REFERRAL,
        child=CHILD,
        basis=LegalBasis(type="legal", ref="osl-10-28"),
        purpose=Purpose.REFERRAL,
        created=created,
        expires=created + expires,
        message_id=message_id,
    )


async def test_routes_to_one_recipient_and_answers_accepted(harness: Harness) -> None:
    """The envelope reaches the recipient unchanged; the sender gets a signed accepted receipt."""
    sealed = _seal()
    await harness.publish(SCHOOL, sealed.wire, message_id=sealed.header.id)
    ((kind, body),) = await harness.take(SOCIAL)
    assert (kind, body) == (TYPE_ENVELOPE, sealed.wire)
    receipt = await harness.receipt(SCHOOL)
    assert receipt.status == "accepted"
    assert receipt.receipt_for == sealed.header.id
    assert receipt.acknowledges == sealed.digest
    assert receipt.recipients == [SOCIAL.agency]
    record = await harness.store.get_message(sealed.header.id)
    assert record is not None
    assert record.outcome is Outcome.ACCEPTED
    assert record.routed_at is not None
    assert receipt.log_index is not None
    assert receipt.log_index == record.log_index, "the receipt names the decision's audit entry"
    timeline = await harness.store.timeline(sealed.header.id)
    assert timeline[0].status == "accepted"


async def test_routes_to_several_recipients(harness: Harness) -> None:
    """One envelope to social services and BUP reaches both queues once."""
    sealed = _seal(recipients=(SOCIAL, BUP))
    await harness.publish(SCHOOL, sealed.wire, message_id=sealed.header.id)
    assert await harness.take(SOCIAL) == [(TYPE_ENVELOPE, sealed.wire)]
    assert await harness.take(BUP) == [(TYPE_ENVELOPE, sealed.wire)]
    receipt = await harness.receipt(SCHOOL)
    assert sorted(receipt.recipients) == sorted([SOCIAL.agency, BUP.agency])


@pytest.mark.parametrize(
    ("make", "publisher", "reason"),
    [
        pytest.param(lambda: _seal(sender=BUP), SCHOOL, "user_id_mismatch", id="forged-user-id"),
        pytest.param(lambda: _seal(recipients=(GHOST,)), SCHOOL, "unknown_recipient", id="unknown-recipient"),
        pytest.param(lambda: _seal(created=NOW - timedelta(days=3), expires=timedelta(days=1)), SCHOOL, "expired", id="expired"),
        pytest.param(lambda: _seal(recipients=(POLICE,)), SCHOOL, "no_basis", id="no-basis"),
    ],
)  # fmt: skip
async def test_refused_envelopes_are_answered_and_not_routed(
    harness: Harness, make: Any, publisher: Agency, reason: str
) -> None:
    """Each refusal goes back to the publisher as a signed rejection; nothing is routed."""
    sealed = make()
    await harness.publish(publisher, sealed.wire, message_id=sealed.header.id)
    receipt = await harness.receipt(publisher)
    assert (receipt.status, receipt.reason) == ("rejected", reason)
    for agency in (SOCIAL, BUP, POLICE):
        assert await harness.depth(agency) == 0


async def test_forged_user_id_is_not_stored_under_the_genuine_id(harness: Harness) -> None:
    """BUP's envelope replayed by the school is refused, and BUP's own send still goes through."""
    sealed = _seal(sender=BUP, recipients=(SOCIAL,))
    await harness.publish(SCHOOL, sealed.wire, message_id=sealed.header.id)
    assert (await harness.receipt(SCHOOL)).reason == "user_id_mismatch"
    assert await harness.store.get_message(sealed.header.id) is None
    await harness.publish(BUP, sealed.wire, message_id=sealed.header.id)
    assert (await harness.receipt(BUP)).status == "accepted"
    assert await harness.take(SOCIAL) == [(TYPE_ENVELOPE, sealed.wire)]


async def test_bad_signature_is_refused_opaquely(harness: Harness) -> None:
    """A tampered signature is refused as envelope_invalid, whatever the detail."""
    sealed = _seal()
    envelope = json.loads(sealed.wire)
    signature = envelope["signature"]
    envelope["signature"] = signature[:10] + ("B" if signature[10] == "A" else "A") + signature[11:]
    await harness.publish(SCHOOL, json.dumps(envelope).encode(), message_id=sealed.header.id)
    receipt = await harness.receipt(SCHOOL)
    assert (receipt.status, receipt.reason) == ("rejected", "envelope_invalid")
    assert await harness.store.get_message(sealed.header.id) is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"{this is not json", "bad_json", id="malformed-json"),
        pytest.param(b'{"protected": "x"}', "schema_invalid", id="schema-invalid"),
        pytest.param(b"[" + b"1," * MAX_BYTES + b"1]", "too_large", id="oversized"),
    ],
)
async def test_bad_input_is_a_rejection_not_a_crash(
    harness: Harness, body: bytes, reason: str
) -> None:
    """Malformed or oversized bodies get a rejection receipt and the broker carries on."""
    message_id = "019abb2a-6a50-7cc3-9e0f-" + secrets.token_hex(6)
    await harness.publish(SCHOOL, body, message_id=message_id)
    receipt = await harness.receipt(SCHOOL)
    assert (receipt.status, receipt.reason, receipt.receipt_for) == (
        "rejected",
        reason,
        message_id,
    )
    sealed = _seal()
    await harness.publish(SCHOOL, sealed.wire, message_id=sealed.header.id)
    assert await harness.take(SOCIAL) == [(TYPE_ENVELOPE, sealed.wire)]


async def test_a_replay_is_not_routed_twice(harness: Harness) -> None:
    """The same envelope published twice is routed once and acknowledged twice alike."""
    sealed = _seal()
    await harness.publish(SCHOOL, sealed.wire, message_id=sealed.header.id)
    first = await harness.receipt(SCHOOL)
    await harness.publish(SCHOOL, sealed.wire, message_id=sealed.header.id)
    second = await harness.receipt(SCHOOL)
    assert first.id == second.id, "the receipt of a replay is the same receipt"
    assert await harness.depth(SOCIAL) == 1


async def test_another_envelope_under_a_used_id_is_refused(harness: Harness) -> None:
    """A different envelope reusing a routed message id is refused as replayed."""
    sealed = _seal()
    await harness.publish(SCHOOL, sealed.wire, message_id=sealed.header.id)
    assert (await harness.receipt(SCHOOL)).status == "accepted"
    other = _seal(message_id=sealed.header.id, content=b'{"other": true}')
    await harness.publish(SCHOOL, other.wire, message_id=sealed.header.id)
    assert (await harness.receipt(SCHOOL)).reason == "replayed"
    assert await harness.take(SOCIAL) == [(TYPE_ENVELOPE, sealed.wire)]
    assert await harness.depth(SOCIAL) == 0


def _recipient_receipt(by: Agency, sealed: Sealed, status: str = "delivered") -> bytes:
    receipt = Receipt.model_validate_json(
        json.dumps(
            {
                "v": 1,
                "id": f"019abb2a-6a51-7000-8000-{secrets.token_hex(6)}",
                "receipt_for": sealed.header.id,
                "acknowledges": sealed.digest,
                "status": status,
                "by": {"agency": by.agency, "kid": by.kid},
                "at": datetime.now(UTC).isoformat(),
            }
        )
    )
    return sign_receipt(receipt, by.sender).model_dump_json().encode()


async def test_recipient_receipts_are_recorded_and_relayed(harness: Harness) -> None:
    """Delivered and read receipts reach the sender unchanged, in whatever order they come."""
    sealed = _seal()
    await harness.publish(SCHOOL, sealed.wire, message_id=sealed.header.id)
    await harness.take(SOCIAL)
    assert (await harness.receipt(SCHOOL)).status == "accepted"
    read = _recipient_receipt(SOCIAL, sealed, "read")
    delivered = _recipient_receipt(SOCIAL, sealed, "delivered")
    for body in (read, delivered):  # out of order on purpose
        await harness.publish(SOCIAL, body, message_type=TYPE_RECEIPT)
    relayed = await harness.take(SCHOOL, 2)
    assert sorted(b for _, b in relayed) == sorted([read, delivered])
    statuses = [e.status for e in await harness.store.timeline(sealed.header.id)]
    assert set(statuses) >= {"accepted", "read", "delivered"}


async def test_a_receipt_from_a_non_recipient_is_refused(harness: Harness) -> None:
    """BUP cannot acknowledge a message that was sent to social services."""
    sealed = _seal()
    await harness.publish(SCHOOL, sealed.wire, message_id=sealed.header.id)
    await harness.receipt(SCHOOL)
    await harness.publish(BUP, _recipient_receipt(BUP, sealed), message_type=TYPE_RECEIPT)
    assert (await harness.receipt(BUP)).reason == "receipt_mismatch"
    assert [e.status for e in await harness.store.timeline(sealed.header.id)] == ["accepted"]


class _CrashAfterCommit:
    """Wraps the real store; the first ``mark_routed`` commits and then the task dies."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.crashed = asyncio.Event()

    async def record_decision(
        self, record: MessageRecord, events: Any, opens: Any = ()
    ) -> Recorded:
        return await self.inner.record_decision(record, events, opens)

    async def get_message(self, message_id: str) -> MessageRecord | None:
        return await self.inner.get_message(message_id)

    async def mark_routed(self, message_id: str, at: datetime) -> None:
        await self.inner.mark_routed(message_id, at)
        if not self.crashed.is_set():
            self.crashed.set()
            raise asyncio.CancelledError  # the consumer task dies between commit and ack

    async def append_events(self, events: Any) -> int:
        return await self.inner.append_events(events)

    async def record_receipt(self, write: ReceiptWrite) -> bool:
        return await self.inner.record_receipt(write)

    async def open_deadlines(self, items: Any) -> int:
        return await self.inner.open_deadlines(items)

    async def timeline(self, message_id: str) -> list[StatusEvent]:
        return await self.inner.timeline(message_id)

    async def append_audit(self, entries: Any) -> list[int]:
        return await self.inner.append_audit(entries)

    async def ping(self) -> None:
        await self.inner.ping()


async def test_redelivery_after_a_crash_between_commit_and_ack_routes_nothing_twice(
    agency_users: str, store: SqlStore
) -> None:
    """Kill the consumer task after the store commit: the redelivered message is not re-routed."""
    crashing = _CrashAfterCommit(store)
    admin = await aio_pika.connect(amqp_url_for(agency_users))
    channel = await admin.channel()
    for agency in AGENCIES:
        await (await channel.get_queue(agency_queue(agency.agency), ensure=False)).purge()
    first = await _start(agency_users, crashing)
    harness = Harness(vhost=agency_users, store=store, service=first, admin=admin)
    try:
        sealed = _seal()
        await harness.publish(SCHOOL, sealed.wire, message_id=sealed.header.id)
        await asyncio.wait_for(crashing.crashed.wait(), WAIT_S)
        await first.stop()  # closes the channel: the unacked message goes back to the queue
        assert await harness.depth(SOCIAL) == 1, "the envelope was routed before the crash"
        harness.service = await _start(agency_users, store)
        assert (await harness.receipt(SCHOOL)).status == "accepted"
        assert await harness.depth(SOCIAL) == 1, "the redelivery must not route again"
        ingress = await channel.declare_queue(INGRESS_QUEUE, passive=True)
        assert ingress.declaration_result.message_count == 0
    finally:
        await harness.service.stop()
        for connection in harness.agencies.values():
            await connection.close()
        await admin.close()


class _PoisonStore(_CrashAfterCommit):
    """Fails every decision about one message id, as a bug would."""

    def __init__(self, inner: Store, poison: str) -> None:
        super().__init__(inner)
        self.poison = poison
        self.crashed.set()
        self.attempts = 0

    async def record_decision(
        self, record: MessageRecord, events: Any, opens: Any = ()
    ) -> Recorded:
        if record.message_id == self.poison:
            self.attempts += 1
            raise RuntimeError("a bug that fails this message every time")
        return await self.inner.record_decision(record, events, opens)


async def test_a_poison_message_is_dead_lettered_and_answered(
    agency_users: str, store: SqlStore
) -> None:
    """A message that fails every time is dead-lettered after the delivery limit and answered."""
    sealed = _seal()
    poisoned = _PoisonStore(store, sealed.header.id)
    admin = await aio_pika.connect(amqp_url_for(agency_users))
    channel = await admin.channel()
    for agency in AGENCIES:
        await (await channel.get_queue(agency_queue(agency.agency), ensure=False)).purge()
    await channel.close()
    service = await _start(agency_users, poisoned)
    harness = Harness(vhost=agency_users, store=store, service=service, admin=admin)
    try:
        await harness.publish(SCHOOL, sealed.wire, message_id=sealed.header.id)
        receipt = await harness.receipt(SCHOOL)
        assert (receipt.status, receipt.reason) == ("rejected", "delivery_limit")
        assert poisoned.attempts >= 5
        assert await harness.depth(SOCIAL) == 0
    finally:
        await service.stop()
        for connection in harness.agencies.values():
            await connection.close()
        await admin.close()


async def _publish_until_confirmed(
    connection: aio_pika.abc.AbstractRobustConnection, sealed: Sealed
) -> int:
    """Publish as the school until RabbitMQ confirms; return how many attempts it took."""
    attempts = 0
    while True:
        attempts += 1
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(INGRESS_EXCHANGE, ensure=False)
            await exchange.publish(
                aio_pika.Message(
                    sealed.wire,
                    type=TYPE_ENVELOPE,
                    user_id=SCHOOL.agency,
                    message_id=sealed.header.id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=INGRESS_QUEUE,
                timeout=10,
            )
            await channel.close()
        except (aio_pika.exceptions.AMQPError, ConnectionError, TimeoutError, RuntimeError):
            await asyncio.sleep(0.5)  # RabbitMQ is away: the adapter's outbox would retry
        else:
            return attempts


async def _wait_until_routed(store: Store, message_ids: set[str], within_s: float) -> None:
    """Poll the store until every id is recorded as routed."""
    deadline = asyncio.get_running_loop().time() + within_s
    pending = set(message_ids)
    while pending:
        assert asyncio.get_running_loop().time() < deadline, f"{len(pending)} never routed"
        for message_id in list(pending):
            record = await store.get_message(message_id)
            if record is not None and record.routed_at is not None:
                pending.discard(message_id)
        await asyncio.sleep(0.2)


async def _drain(vhost: str, agency: Agency, idle_s: float = 3.0) -> list[bytes]:
    """Every body waiting in ``agency``'s queue, until it stays empty for ``idle_s``."""
    bodies: list[bytes] = []
    reader = await aio_pika.connect(amqp_url_for(vhost))
    async with reader:
        channel = await reader.channel()
        queue = await channel.get_queue(agency_queue(agency.agency), ensure=False)
        idle_since = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - idle_since < idle_s:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            bodies.append(message.body)
            idle_since = asyncio.get_running_loop().time()
    return bodies


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_rabbitmq_restart_mid_stream_loses_nothing_and_routes_once(
    harness: Harness, rabbitmqctl: RabbitmqctlRunner
) -> None:
    """Restart RabbitMQ (stop_app/start_app) mid-stream: every message is routed once, none lost."""
    total = 300
    messages = [_seal() for _ in range(total)]
    by_wire = {m.wire: m.header.id for m in messages}
    publisher = await aio_pika.connect_robust(
        amqp_url_for(harness.vhost, SCHOOL.agency, PASSWORD), reconnect_interval=1
    )
    a_third_in = asyncio.Event()
    confirmed = 0

    async def restart() -> None:
        await a_third_in.wait()
        await asyncio.to_thread(rabbitmqctl.run, ["stop_app"])
        await asyncio.sleep(2)
        await asyncio.to_thread(rabbitmqctl.run, ["start_app"])

    restarter = asyncio.create_task(restart())
    limit = asyncio.Semaphore(20)
    retries = 0

    async def send(sealed: Sealed) -> None:
        nonlocal confirmed, retries
        async with limit:
            retries += await _publish_until_confirmed(publisher, sealed) - 1
        confirmed += 1
        if confirmed >= total // 3:
            a_third_in.set()

    await asyncio.wait_for(asyncio.gather(*(send(m) for m in messages)), timeout=180)
    await asyncio.wait_for(restarter, timeout=60)
    await publisher.close()
    # The store's view: every message decided once and marked routed.
    await _wait_until_routed(harness.store, {m.header.id for m in messages}, within_s=120)
    # The recipient's view: every message arrived; repeats are what adapters de-duplicate.
    received = [by_wire[body] for body in await _drain(harness.vhost, SOCIAL)]
    lost = {m.header.id for m in messages} - set(received)
    duplicates = len(received) - len(set(received))
    print(  # noqa: T201 - the counts are the point of this test
        f"sent {total}, publisher retries {retries}, received {len(received)}, "
        f"duplicates {duplicates} (adapters de-duplicate by id), lost {len(lost)}"
    )
    assert not lost
