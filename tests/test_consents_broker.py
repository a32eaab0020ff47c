"""Consent and legal basis enforced by the running broker, on the real RabbitMQ and databases.

Register a consent, send under it, revoke it, send again: the second send is
refused with ``consent_revoked``, and the parties get the signed revocation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from broker.batching import GroupCommitStore
from broker.consents import ConsentBook, ConsentPolicy, ConsentRegistry
from broker.metrics import Metrics
from broker.service import BrokerService
from broker.store import SqlStore
from broker.topology import TYPE_CONTROL, agency_queue, control_queue
from keys.ca import PeerIdentity, Role
from keys.envelope import Sealed, seal
from keys.policy import load_policy
from keys.signed import sign_consent, sign_revocation
from schemas.consent import ConsentRecord, ConsentRevocation
from schemas.envelope import ConsentBasis, Kind, LegalBasis, Purpose
from tests.rabbit import amqp_url_for
from tests.support import CHILD, Agency
from tests.test_broker_service import (
    AGENCIES,
    BROKER,
    BUP,
    DIRECTORY,
    POLICE,
    SCHOOL,
    SOCIAL,
    Harness,
    agency_users,  # noqa: F401 - a fixture this module uses too
)

pytestmark = pytest.mark.rabbitmq

POLICY = load_policy(Path("deploy/policy/sweden.toml"))
CONSENT_ID = "019abb2a-6a52-7000-8000-00000000c0de"


def _peer(agency: Agency) -> PeerIdentity:
    return PeerIdentity(
        role=Role.ADAPTER, agency=agency.agency, common_name=agency.agency, serial=1
    )


def _consent(now: datetime) -> bytes:
    record = ConsentRecord.model_validate_json(
        json.dumps(
            {
                "id": CONSENT_ID,
                "child": CHILD,
                "guardians": [{"pseudonym": "cd" * 32, "custodial": True}],
                "joint_custody": False,
                "child_view": {"consented": True, "age": 13, "assessed_mature": False},
                "registered_by": {
                    "agency": SCHOOL.agency,
                    "kid": SCHOOL.kid,
                    "staff_id": "kurator.lena",
                },
                "parties": [{"agency": SCHOOL.agency}, {"agency": SOCIAL.agency}],
                "purposes": ["referral"],
                "valid_from": now.isoformat(),
                "valid_until": (now + timedelta(days=180)).isoformat(),
                "document_digest": "ef" * 32,
            }
        )
    )
    return sign_consent(record, SCHOOL.sender).model_dump_json().encode()


def _revocation(now: datetime) -> bytes:
    revocation = ConsentRevocation.model_validate_json(
        json.dumps(
            {
                "consent_id": CONSENT_ID,
                "revoked_at": now.isoformat(),
                "reason": "guardian_withdrew",
                "by": {"agency": SOCIAL.agency, "kid": SOCIAL.kid, "staff_id": "handl-7"},
            }
        )
    )
    return sign_revocation(revocation, SOCIAL.sender).model_dump_json().encode()


def _referral(recipients: tuple[Agency, ...] = (SOCIAL,)) -> Sealed:
    now = datetime.now(UTC)
    return seal(
        b'{"opaque": true}',
        sender=SCHOOL.sender,
        recipients=[r.sealing for r in recipients],
        kind=Kind.REFERRAL,
        child=CHILD,
        basis=ConsentBasis(type="consent", consent_id=CONSENT_ID),
        purpose=Purpose.REFERRAL,
        created=now,
        expires=now + timedelta(days=30),
    )


@pytest.fixture
async def consented(
    agency_users: str,  # noqa: F811 - the imported fixture, by name
    store: SqlStore,
) -> AsyncIterator[tuple[Harness, ConsentRegistry]]:
    """A broker applying sweden.toml over a consent book, with its registry."""
    book = ConsentBook()
    service = BrokerService(
        amqp_url=amqp_url_for(agency_users),
        store=GroupCommitStore(store),
        directory=DIRECTORY,
        broker_key=BROKER.sender,
        policy=ConsentPolicy(policy=POLICY, book=book),
        metrics=Metrics(),
        shutdown_grace_s=5,
    )
    await service.start()
    registry = ConsentRegistry(
        store=store,
        book=book,
        policy=POLICY,
        directory=lambda: DIRECTORY,
        broadcast=service.broadcast_consent,
    )
    admin = await aio_pika.connect(amqp_url_for(agency_users))
    channel = await admin.channel()
    for agency in AGENCIES:
        for name in (agency_queue(agency.agency), control_queue(agency.agency)):
            await (await channel.get_queue(name, ensure=False)).purge()
    await channel.close()
    harness = Harness(vhost=agency_users, store=store, service=service, admin=admin)
    try:
        yield harness, registry
    finally:
        await service.stop()
        for connection in harness.agencies.values():
            await connection.close()
        await admin.close()


async def test_register_send_revoke_send_again(consented: tuple[Harness, ConsentRegistry]) -> None:
    """Under a registered consent the referral goes; after revocation the next one is refused."""
    harness, registry = consented
    await registry.register(_consent(datetime.now(UTC)), peer=_peer(SCHOOL), now=datetime.now(UTC))
    ((kind, _body),) = await harness.take(SCHOOL, control=True)
    assert kind == TYPE_CONTROL, "the registering party is told of the registration"
    await harness.take(SOCIAL, control=True)  # and so is the other party

    first = _referral()
    await harness.publish(SCHOOL, first.wire, message_id=first.header.id)
    assert (await harness.receipt(SCHOOL)).status == "accepted"
    assert [b for _, b in await harness.take(SOCIAL)] == [first.wire]

    await registry.revoke(
        CONSENT_ID, _revocation(datetime.now(UTC)), peer=_peer(SOCIAL), now=datetime.now(UTC)
    )
    for party in (SCHOOL, SOCIAL):
        ((kind, body),) = await harness.take(party, control=True)
        notice = json.loads(body)
        assert (kind, notice["event"], notice["consent_id"]) == (
            TYPE_CONTROL,
            "consent_revoked",
            CONSENT_ID,
        )
        assert notice["revocation"]["signature"], "the signed revocation travels with the notice"
    assert await harness.depth(BUP, control=True) == 0, "agencies outside the consent are not told"

    second = _referral()
    await harness.publish(SCHOOL, second.wire, message_id=second.header.id)
    receipt = await harness.receipt(SCHOOL)
    assert (receipt.status, receipt.reason) == ("rejected", "consent_revoked")
    assert await harness.depth(SOCIAL) == 0


async def test_a_recipient_outside_the_consent_is_refused(
    consented: tuple[Harness, ConsentRegistry],
) -> None:
    """BUP is not a party to the consent: a referral to it is refused with its reason."""
    harness, registry = consented
    await registry.register(_consent(datetime.now(UTC)), peer=_peer(SCHOOL), now=datetime.now(UTC))
    await harness.take(SCHOOL, control=True)
    sealed = _referral((SOCIAL, BUP))
    await harness.publish(SCHOOL, sealed.wire, message_id=sealed.header.id)
    receipt = await harness.receipt(SCHOOL)
    assert (receipt.status, receipt.reason) == ("rejected", "consent_scope_party")
    assert await harness.depth(BUP) == 0


async def test_a_concern_report_by_legal_basis_needs_no_consent(
    consented: tuple[Harness, ConsentRegistry],
) -> None:
    """The police report concern to social services under OSL 10 kap. 28 § without consent."""
    harness, _registry = consented
    now = datetime.now(UTC)
    sealed = seal(
        b'{"opaque": true}',
        sender=POLICE.sender,
        recipients=[SOCIAL.sealing],
        kind=Kind.CONCERN_REPORT,
        child=CHILD,
        basis=LegalBasis(type="legal", ref="osl-10-28"),
        purpose=Purpose.CONCERN,
        created=now,
        expires=now + timedelta(days=30),
    )
    await harness.publish(POLICE, sealed.wire, message_id=sealed.header.id)
    receipt = await harness.receipt(POLICE)
    assert receipt.status == "accepted"
    record = await harness.store.get_message(sealed.header.id)
    assert record is not None
    assert record.rule == "osl-10-28.concern-report"
    assert record.legal_ref is not None
    assert "10 kap. 28" in record.legal_ref


async def test_a_revocation_reaches_every_broker_instance(
    consented: tuple[Harness, ConsentRegistry],
    store: SqlStore,
    agency_users: str,  # noqa: F811 - the imported fixture, by name
) -> None:
    """A consent revoked through one instance is refused by another one, via the control exchange."""
    harness, registry_a = consented
    book_b = ConsentBook()
    registry_b = ConsentRegistry(
        store=store, book=book_b, policy=POLICY, directory=lambda: DIRECTORY
    )

    async def apply(body: bytes) -> None:
        await registry_b.apply_notice(body, now=datetime.now(UTC))

    instance_b = BrokerService(
        amqp_url=amqp_url_for(agency_users),
        store=GroupCommitStore(store),
        directory=DIRECTORY,
        broker_key=BROKER.sender,
        policy=ConsentPolicy(policy=POLICY, book=book_b),
        metrics=Metrics(),
        shutdown_grace_s=5,
        on_control=apply,
    )
    await instance_b.start()
    try:
        await registry_a.register(
            _consent(datetime.now(UTC)), peer=_peer(SCHOOL), now=datetime.now(UTC)
        )
        await _until(lambda: CONSENT_ID in book_b.states)
        await registry_a.revoke(
            CONSENT_ID, _revocation(datetime.now(UTC)), peer=_peer(SOCIAL), now=datetime.now(UTC)
        )
        await _until(lambda: book_b.states[CONSENT_ID].revoked_at is not None)
        await harness.service.stop()  # only instance B consumes now
        sealed = _referral()
        await harness.publish(SCHOOL, sealed.wire, message_id=sealed.header.id)
        notices = await harness.take(SCHOOL, 2, control=True)
        assert [kind for kind, _ in notices] == [TYPE_CONTROL, TYPE_CONTROL]
        receipt = await harness.receipt(SCHOOL)
        assert (receipt.status, receipt.reason) == ("rejected", "consent_revoked")
    finally:
        await instance_b.stop()


async def _until(condition: Any, within_s: float = 10.0) -> None:
    """Wait until ``condition()`` holds; the notice arrives on another consumer's task."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the notice never arrived"
        await asyncio.sleep(0.02)
