"""A whole area in one test process: the real broker, real adapters, the real RabbitMQ.

Each agency's adapter (``AdapterRuntime`` behind its own agency API) connects
as that agency's RabbitMQ user with the permissions ``backa broker provision``
gives (publish to ``backa.ingress``, read its two queues, declare nothing),
so RabbitMQ vouches for every ``user_id``. The broker applies
``deploy/policy/sweden.toml`` over a consent registry. Agency systems are
played by an aiohttp test client with a bearer token, speaking the formats of
docs/adapters (the documented examples, with the demo's agency ids replaced
by this run's).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aiohttp.test_utils import TestClient, TestServer

from adapters.api import create_api
from adapters.config import AdapterConfig, AgencySystem, token_digest
from adapters.mappings import mapping_for
from adapters.runtime import AdapterRuntime
from adapters.store import AdapterStore
from adapters.web import LocalAccount, StaffAuth, hash_password, setup_web
from broker.batching import GroupCommitStore
from broker.consents import ConsentBook, ConsentPolicy, ConsentRegistry
from broker.deadlines import WorkingCalendar, load_deadline_rules
from broker.definitions import agency_permission
from broker.metrics import Metrics
from broker.provision import RabbitmqctlRunner
from broker.service import BrokerService
from broker.store import SqlStore
from broker.topology import agency_queue, control_queue
from broker.watchdog import Watchdog
from keys.ca import PeerIdentity, Role
from keys.personnummer import parse_identity_number
from keys.policy import load_policy
from keys.pseudonym import PseudonymKey, child_pseudonym
from keys.signed import sign_consent, sign_revocation
from schemas.consent import ConsentRecord, ConsentRevocation
from schemas.directory import AgencyType
from tests.rabbit import amqp_url_for
from tests.support import Agency, signed_directory

SUFFIX = secrets.token_hex(3)
#: The demo area's agency ids (as in docs/adapters/examples) → this run's agencies.
AGENCIES: dict[str, tuple[Agency, AgencyType]] = {
    "torsviks-skola": (Agency.make(f"e2e-skola-{SUFFIX}"), AgencyType.SCHOOL),
    "lidingo-socialtjanst": (Agency.make(f"e2e-soc-{SUFFIX}"), AgencyType.SOCIAL_SERVICES),
    "lidingo-vardcentral": (Agency.make(f"e2e-vc-{SUFFIX}"), AgencyType.PRIMARY_CARE),
    "bup-lidingo": (Agency.make(f"e2e-bup-{SUFFIX}"), AgencyType.BUP),
    "polisen-lidingo": (Agency.make(f"e2e-polis-{SUFFIX}"), AgencyType.POLICE),
}
SCHOOL, SOCIAL, VARDCENTRAL, BUP, POLICE = (a for a, _ in AGENCIES.values())
BROKER = Agency.make(f"e2e-broker-{SUFFIX}")
NOW = datetime.now(UTC)
DIRECTORY = signed_directory(
    [*AGENCIES.values(), (BROKER, AgencyType.BROKER)], at=NOW - timedelta(days=60)
)
POLICY = load_policy(Path("deploy/policy/sweden.toml"))
DEADLINES = load_deadline_rules(Path("deploy/policy/deadlines.toml"))
PSEUDONYM_KEY = PseudonymKey(secrets.token_bytes(32))
PASSWORD = secrets.token_urlsafe(12)
TOKEN = secrets.token_urlsafe(16)
STAFF_PASSWORD = "test-lösenord-1"
EXAMPLES = Path("docs/adapters/examples")
WAIT_S = 30.0


def example(name: str, **replace: str) -> dict[str, Any]:
    """A documented example request with the demo ids replaced by this run's (and ``replace``)."""
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    for demo_id, (agency, _kind) in AGENCIES.items():
        text = text.replace(f'"{demo_id}"', f'"{agency.agency}"')
    for old, new in replace.items():
        text = text.replace(old, new)
    data: dict[str, Any] = json.loads(text)
    return data


def pseudonym_of(number: str) -> str:
    """The child pseudonym the adapters compute for ``number``."""
    return child_pseudonym(parse_identity_number(number, today=NOW.date()), PSEUDONYM_KEY)


def adapter_peer(agency: Agency) -> PeerIdentity:
    """The mTLS identity of an agency's adapter, as the broker's HTTP layer would see it."""
    return PeerIdentity(
        role=Role.ADAPTER, agency=agency.agency, common_name=agency.agency, serial=1
    )


def consent_body(
    consent_id: str,
    child: str,
    *,
    registrar: Agency,
    parties: list[Agency],
    purposes: list[str],
    child_age: int,
    now: datetime,
) -> bytes:
    """A signed consent registration, as the registering adapter would send it."""
    record = ConsentRecord.model_validate_json(
        json.dumps(
            {
                "id": consent_id,
                "child": child,
                "guardians": [
                    {"pseudonym": "cd" * 32, "custodial": True},
                    {"pseudonym": "ce" * 32, "custodial": True},
                ],
                "joint_custody": True,
                "child_view": {
                    "consented": True,
                    "age": child_age,
                    "assessed_mature": child_age >= 15,  # the policy's age of maturity
                },
                "registered_by": {
                    "agency": registrar.agency,
                    "kid": registrar.kid,
                    "staff_id": "bvc.sjukskoterska",
                },
                "parties": [{"agency": p.agency} for p in parties],
                "purposes": purposes,
                "valid_from": now.isoformat(),
                "valid_until": (now + timedelta(days=180)).isoformat(),
                "document_digest": "ef" * 32,
            }
        )
    )
    return sign_consent(record, registrar.sender).model_dump_json().encode()


def revocation_body(consent_id: str, *, by: Agency, now: datetime) -> bytes:
    """A signed revocation of ``consent_id`` by a party."""
    revocation = ConsentRevocation.model_validate_json(
        json.dumps(
            {
                "consent_id": consent_id,
                "revoked_at": now.isoformat(),
                "reason": "guardian_withdrew",
                "by": {"agency": by.agency, "kid": by.kid, "staff_id": "handl-7"},
            }
        )
    )
    return sign_revocation(revocation, by.sender).model_dump_json().encode()


@pytest.fixture(scope="module")
def area_users(rabbitmqctl: RabbitmqctlRunner, scratch_vhost: str) -> Iterator[str]:
    """Each test agency as a RabbitMQ user with exactly the provisioned agency permissions."""
    for agency, _kind in AGENCIES.values():
        permission = agency_permission(agency.agency)
        rabbitmqctl.run(["add_user", agency.agency], stdin=PASSWORD + "\n")
        rabbitmqctl.run(
            [
                "set_permissions",
                "-p",
                scratch_vhost,
                agency.agency,
                permission.configure,
                permission.write,
                permission.read,
            ]
        )
    try:
        yield scratch_vhost
    finally:
        for agency, _kind in AGENCIES.values():
            rabbitmqctl.run(["delete_user", agency.agency])


@dataclass
class Node:
    """One agency's running adapter and the agency system's HTTP client for it."""

    agency: Agency
    runtime: AdapterRuntime
    client: TestClient[Any, Any]
    config: AdapterConfig

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """An API call with the agency system's token; (status, JSON body)."""
        response = await self.client.request(
            method,
            path,
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})},
        )
        return response.status, await response.json()

    async def submit(self, body: Any, key: str | None = None) -> str:
        """Submit and expect ``202``; the message id."""
        status, answer = await self.call(
            "POST", "/v1/messages", body, {"Idempotency-Key": key} if key else None
        )
        assert status == 202, answer
        return str(answer["message_id"])

    async def timeline(self, message_id: str) -> list[tuple[str, str, str | None]]:
        """The sent message's events as (status, agency, reason or answer)."""
        result = await self.runtime.timeline(message_id)
        return [
            (
                e.status.value,
                e.agency,
                (e.reason.value if e.reason else None) or (e.answer.value if e.answer else None),
            )
            for e in result.events
        ]


@dataclass
class Area:
    """The broker and the adapters started so far."""

    vhost: str
    tmp: Path
    service: BrokerService
    registry: ConsentRegistry
    store: SqlStore
    watchdog: Watchdog
    nodes: dict[str, Node] = field(default_factory=dict)

    async def start(
        self,
        agency: Agency,
        *,
        handover: str = "inbox",
        webhook_url: str | None = None,
        runtime_factory: Callable[..., AdapterRuntime] = AdapterRuntime,
        connect: bool = True,
    ) -> Node:
        """Start ``agency``'s adapter (its SQLite file survives a stop) and wait until it consumes."""
        kind = DIRECTORY.agency_type(agency.agency)
        assert kind is not None
        mapping = mapping_for(kind, agency=agency.agency)
        config = AdapterConfig.model_validate(
            {
                "agency": agency.agency,
                "area_dir": str(self.tmp),
                "database": str(self.tmp / f"{agency.agency}.db"),
                "systems": [{"name": "agency-system", "token_sha256": token_digest(TOKEN)}],
                "handover": {"mode": handover, "webhook_url": webhook_url},
            }
        )
        assert config.systems == [
            AgencySystem(name="agency-system", token_sha256=token_digest(TOKEN))
        ]
        store = await AdapterStore.open(config.database, agency.agency)
        runtime = runtime_factory(
            agency_id=agency.agency,
            store=store,
            directory=DIRECTORY,
            signer=agency.sender,
            recipient_keys=agency.recipient,
            pseudonym_key=PSEUDONYM_KEY,
            policy=POLICY,
            # connect=False: a wrong password, so RabbitMQ refuses it (the adapter keeps retrying).
            amqp_url=amqp_url_for(self.vhost, agency.agency, PASSWORD if connect else "wrong"),
            handover_mode=handover,
            webhook_url=webhook_url,
            webhook_render=mapping.render_received,
            poll_s=0.2,
        )
        app = create_api(runtime, mapping, config, clock=lambda: datetime.now(UTC))
        setup_web(
            app,
            runtime,
            StaffAuth(
                secret=secrets.token_bytes(32),
                accounts={
                    "stodsamordnare.eva": LocalAccount(
                        "stodsamordnare.eva", "Eva Stöd", hash_password(STAFF_PASSWORD)
                    )
                },
                cookie_secure=False,
            ),
        )
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        await runtime.start()
        if connect:
            await runtime.wait_connected()
        node = Node(agency=agency, runtime=runtime, client=client, config=config)
        self.nodes[agency.agency] = node
        return node

    async def stop(self, agency: Agency) -> None:
        """Stop ``agency``'s adapter (SIGTERM-like: finish the step, close)."""
        node = self.nodes.pop(agency.agency)
        await node.client.close()
        await node.runtime.stop()
        await node.runtime.store.close()

    async def publish_as(self, agency: Agency, wire: bytes, message_id: str) -> None:
        """Publish an envelope to backa.ingress as ``agency``'s RabbitMQ user, bypassing its adapter."""
        connection = await aio_pika.connect(amqp_url_for(self.vhost, agency.agency, PASSWORD))
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange("backa.ingress", ensure=False)
            await exchange.publish(
                aio_pika.Message(
                    wire,
                    type="backa.envelope.v1",
                    user_id=agency.agency,
                    message_id=message_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key="backa.ingress",
            )
        finally:
            await connection.close()

    async def register(self, body: bytes, registrar: Agency) -> None:
        """Register a consent through the broker's registry (what POST /v1/consents does)."""
        await self.registry.register(body, peer=adapter_peer(registrar), now=datetime.now(UTC))

    async def revoke(self, consent_id: str, by: Agency) -> None:
        """Revoke a consent through the registry; returns once every party's queue has the notice."""
        await self.registry.revoke(
            consent_id,
            revocation_body(consent_id, by=by, now=datetime.now(UTC)),
            peer=adapter_peer(by),
            now=datetime.now(UTC),
        )


async def until(
    probe: Callable[[], Awaitable[Any]], *, within_s: float = WAIT_S, what: str = "condition"
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        value = await probe()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def area(area_users: str, store: SqlStore, tmp_path: Path) -> AsyncIterator[Area]:
    """A started broker over a consent registry, on emptied queues; adapters start on demand."""
    book = ConsentBook()
    service = BrokerService(
        amqp_url=amqp_url_for(area_users),
        store=GroupCommitStore(store),
        directory=DIRECTORY,
        broker_key=BROKER.sender,
        policy=ConsentPolicy(policy=POLICY, book=book),
        metrics=Metrics(),
        shutdown_grace_s=5,
    )
    # The shipped rules; tests move time by calling escalate_once(now=…), never by sleeping.
    watchdog = Watchdog(
        store=store,
        directory=DIRECTORY,
        broker_key=BROKER.sender,
        rules=DEADLINES,
        calendar=WorkingCalendar(DEADLINES.calendar),
        publish=service.publish_envelope,
        clock=lambda: datetime.now(UTC),
        instance="test-broker",
    )
    service.watchdog = watchdog
    await service.start()
    registry = ConsentRegistry(
        store=store,
        book=book,
        policy=POLICY,
        directory=lambda: DIRECTORY,
        broadcast=service.broadcast_consent,
    )
    admin = await aio_pika.connect(amqp_url_for(area_users))
    channel = await admin.channel()
    for agency, _kind in AGENCIES.values():
        for name in (agency_queue(agency.agency), control_queue(agency.agency)):
            await (await channel.get_queue(name, ensure=False)).purge()
    await admin.close()
    running = Area(
        vhost=area_users,
        tmp=tmp_path,
        service=service,
        registry=registry,
        store=store,
        watchdog=watchdog,
    )
    try:
        yield running
    finally:
        for agency in [n.agency for n in running.nodes.values()]:
            await running.stop(agency)
        await service.stop()
