"""The broker's HTTP API over real mutual TLS on 127.0.0.1: identity, routes, errors, logs.

The area is made by ``keys.setup.init_area`` from deploy/areas/demo.toml, so
the server and client certificates, the CA and the signed directory are the
real layout. The store is a small in-memory implementation of
``broker.records.Store``; the SQL store is tested end to end elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from structlog.testing import capture_logs

from broker.audit.http import add_audit_routes
from broker.audit.ports import AuditReader
from broker.errors import Unavailable
from broker.gaps_http import add_gap_routes
from broker.http import create_app, serve_http
from broker.metrics import Metrics
from broker.openapi import build_openapi
from broker.records import MessageRecord, Outcome, ReceiptWrite, Recorded, StatusEvent
from broker.store import SqlStore
from keys.area import load_area
from keys.ca import (
    Issued,
    Role,
    cert_to_pem,
    client_ssl_context,
    create_ca,
    issue_client_cert,
    key_to_pem,
    load_cert_pem,
    load_key_pem,
    server_ssl_context,
)
from keys.directory import Directory, load_bundle, verify_entry
from keys.material import ed25519_public_from_bytes
from keys.setup import AreaLayout, init_area
from schemas.audit import AuditEntry, AuditEvent
from schemas.common import b64url_decode
from schemas.directory import DirectoryBundle

DEMO = Path(__file__).resolve().parent.parent / "deploy" / "areas" / "demo.toml"
AREA = "lidingo-demo"
SENDER = "torsviks-skola"
SOCIAL = "lidingo-socialtjanst"
BUP = "bup-lidingo"
POLICE = "polisen-lidingo"
OFFICER = "sakerhet-lidingo"
FAST_N = 2**4  # scrypt cost for throwaway test keys
TIMEOUT = 10.0
READINESS_TIMEOUT = 0.2
CLOCK_NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
T0 = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
MESSAGE_ID = "019abb2a-6a50-7cc3-9e0f-3a5f7d1e2b4c"
UNKNOWN_ID = "019abb2a-6a50-7cc3-9e0f-000000000000"
PSEUDONYM = "ab" * 32


# --- an in-memory Store ---------------------------------------------------------------------


@dataclass
class MemoryStore:
    """``broker.records.Store`` over dicts, remembering every call it saw."""

    messages: dict[str, MessageRecord] = field(default_factory=dict)
    events: list[StatusEvent] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)

    async def record_decision(
        self,
        record: MessageRecord,
        events: Sequence[StatusEvent],
        opens: Sequence[tuple[str, str, str | None, datetime]] = (),
    ) -> Recorded:
        """Insert unless the id exists (no deadlines are kept here)."""
        self.calls.append("record_decision")
        stored = self.messages.get(record.message_id)
        if stored is not None:
            return Recorded(record=stored, created=False)
        self.messages[record.message_id] = record
        self.events.extend(events)
        return Recorded(record=record, created=True)

    async def get_message(self, message_id: str) -> MessageRecord | None:
        """The record, or None."""
        self.calls.append("get_message")
        return self.messages.get(message_id)

    async def mark_routed(self, message_id: str, at: datetime) -> None:
        """Set routed_at (records are frozen, so replace it)."""
        self.calls.append("mark_routed")
        record = self.messages[message_id]
        self.messages[message_id] = MessageRecord(
            **{
                name: getattr(record, name)
                for name in MessageRecord.__slots__
                if name != "routed_at"
            },
            routed_at=at,
        )

    async def append_events(self, events: Sequence[StatusEvent]) -> int:
        """Append, skipping receipt ids already stored."""
        self.calls.append("append_events")
        seen = {e.receipt_id for e in self.events if e.receipt_id is not None}
        written = 0
        for event in events:
            if event.receipt_id is not None and event.receipt_id in seen:
                continue
            self.events.append(event)
            if event.receipt_id is not None:
                seen.add(event.receipt_id)
            written += 1
        return written

    async def record_receipt(self, write: ReceiptWrite) -> bool:
        """Append the receipt's event (once per receipt id); no deadlines are kept here."""
        return await self.append_events([write.event]) == 1

    async def open_deadlines(self, items: Sequence[tuple[str, str, str | None, datetime]]) -> int:
        """No deadlines are kept here."""
        return 0

    async def timeline(self, message_id: str) -> list[StatusEvent]:
        """Events of one message by ``at``, then insertion."""
        self.calls.append("timeline")
        return sorted((e for e in self.events if e.message_id == message_id), key=lambda e: e.at)

    async def append_audit(self, entries: Sequence[AuditEntry]) -> list[int]:
        """Kept in a list: the HTTP layer never reads them back."""
        self.audit.extend(entries)
        return list(range(len(self.audit) - len(entries), len(self.audit)))

    async def ping(self) -> None:
        """Always reachable."""
        self.calls.append("ping")


class BrokenStore(MemoryStore):
    """A store whose reads fail with a text that must never reach a client."""

    async def get_message(self, message_id: str) -> MessageRecord | None:
        """Fail like a driver that puts its URL in the message."""
        raise RuntimeError("could not connect to postgresql://broker:hunter2@db/backa")


class AwayStore(MemoryStore):
    """A store that translated its driver's failure at its boundary, as SqlStore does."""

    async def get_message(self, message_id: str) -> MessageRecord | None:
        """Raise the broker's Unavailable, chained to the foreign error."""
        raise Unavailable() from ConnectionError("postgresql://broker:hunter2@db/backa refused")


def _record() -> MessageRecord:
    return MessageRecord(
        message_id=MESSAGE_ID,
        digest="0" * 64,
        kind="referral",
        sender=SENDER,
        sender_kid="20261125-00000001",
        child=PSEUDONYM,
        basis_type="legal",
        basis_ref="osl-10-28",
        purpose="referral",
        thread=MESSAGE_ID,
        in_reply_to=None,
        created=T0,
        expires=T0 + timedelta(days=14),
        received_at=T0 + timedelta(seconds=1),
        outcome=Outcome.ACCEPTED,
        reason=None,
        rule="osl-10-28-concern",
        legal_ref="OSL 10 kap. 28 §",
        recipients=(SOCIAL, BUP),
    )


def _event(status: str, agency: str | None, minutes: int, **extra: Any) -> StatusEvent:
    return StatusEvent(
        message_id=MESSAGE_ID,
        agency=agency,
        status=status,
        at=T0 + timedelta(minutes=minutes),
        recorded_at=T0 + timedelta(minutes=minutes, seconds=1),
        signer=agency or "broker",
        **extra,
    )


async def _seed(store: MemoryStore) -> None:
    """One referral to two recipients; social services' read receipt overtakes its delivery."""
    await store.record_decision(_record(), [_event("accepted", None, 0)])
    await store.append_events(
        [
            _event("read", SOCIAL, 5, receipt_id="r-soc-read", staff_id="anna.s"),
            _event("delivered", SOCIAL, 2, receipt_id="r-soc-delivered"),
            _event("delivered", BUP, 3, receipt_id="r-bup-delivered"),
        ]
    )
    store.calls.clear()


# --- the area and its certificates ----------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """Paths of every party's certificate and key, and the pinned root of the directory."""

    layout: AreaLayout
    extra: Path

    @property
    def ca_file(self) -> Path:
        """The area CA certificate."""
        return self.layout.ca_cert

    def client(self, name: str) -> ssl.SSLContext:
        """A client context for a named party, trusting only the area CA."""
        if name in {SENDER, SOCIAL, BUP, POLICE}:
            base = self.layout.agency_dir(name)
        elif name == OFFICER:
            base = self.layout.officer_dir(name)
        else:
            base = self.extra / name
        return client_ssl_context(
            cert_file=base / "client.crt",
            key_file=base / "client.key",
            ca_file=self.ca_file,
            passphrase=None,
        )

    def server(self) -> ssl.SSLContext:
        """The broker's server context from the area layout."""
        return server_ssl_context(
            cert_file=self.layout.broker_dir / "tls.crt",
            key_file=self.layout.broker_dir / "tls.key",
            ca_file=self.ca_file,
            passphrase=None,
        )

    def bundle(self) -> Directory:
        """The area's directory, verified against the root pinned in public/root.pub."""
        return Directory(load_bundle(self.layout.directory_file), self.root_public())

    def root_public(self) -> Ed25519PublicKey:
        """The pinned area root public key."""
        text = self.layout.root_pub.read_text(encoding="ascii").strip()
        return ed25519_public_from_bytes(b64url_decode(text))


def _write(base: Path, issued: Issued) -> None:
    base.mkdir(parents=True)
    (base / "client.crt").write_bytes(cert_to_pem(issued.cert))
    (base / "client.key").write_bytes(key_to_pem(issued.key, None))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The demo area with insecure test keys, plus an operator, a broker and a foreign cert."""
    root = tmp_path_factory.mktemp("http")
    # Certificates are checked against the real clock by TLS, so they start now.
    now = datetime.now(UTC)
    out = root / "keys"
    init_area(
        load_area(DEMO),
        out,
        passphrase=None,
        insecure=True,
        now=now,
        rng=random.Random(7).randbytes,
        scrypt_n=FAST_N,
    )
    layout = AreaLayout(out)
    area_ca = Issued(
        key=load_key_pem(layout.ca_key.read_bytes(), None),
        cert=load_cert_pem(layout.ca_cert.read_bytes()),
    )
    extra = root / "extra"
    _write(
        extra / "operator",
        issue_client_cert(
            area_ca, common_name="op.olle", role=Role.OPERATOR, agency=None, area=AREA, now=now
        ),
    )
    _write(
        extra / "broker",
        issue_client_cert(
            area_ca, common_name="broker-2", role=Role.BROKER, agency=None, area=AREA, now=now
        ),
    )
    foreign_ca = create_ca(area=AREA, now=now)
    _write(
        extra / "foreign",
        issue_client_cert(
            foreign_ca, common_name=SENDER, role=Role.ADAPTER, agency=SENDER, area=AREA, now=now
        ),
    )
    return Pki(layout=layout, extra=extra)


# --- a running server -----------------------------------------------------------------------


@dataclass
class Running:
    """A broker HTTP server on 127.0.0.1 and what it was built with."""

    url: str
    pki: Pki
    store: MemoryStore
    metrics: Metrics
    failing: set[str]

    async def get(
        self, who: str | ssl.SSLContext, path: str, *, method: str = "GET"
    ) -> tuple[int, str, dict[str, str]]:
        """Request ``path`` as ``who``; the status, body text and headers."""
        context = self.pki.client(who) if isinstance(who, str) else who
        async with aiohttp.ClientSession() as session:
            request = session.request(method, self.url + path, ssl=context)
            async with request as response:
                text = await asyncio.wait_for(response.text(), TIMEOUT)
                return response.status, text, dict(response.headers)

    async def json(self, who: str, path: str) -> tuple[int, Any]:
        """Request ``path`` as ``who``; the status and JSON body."""
        status, text, _headers = await asyncio.wait_for(self.get(who, path), TIMEOUT)
        return status, json.loads(text)


def _probe(name: str, failing: set[str]) -> Callable[[], Awaitable[None]]:
    async def probe() -> None:
        if name in failing:
            raise ConnectionError("amqp://backa:hunter2@rabbit:5672/ refused")

    return probe


async def _hang() -> None:
    await asyncio.Event().wait()


@pytest.fixture
async def running(pki: Pki) -> AsyncIterator[Running]:
    """The app served by serve_http with the area's real server context."""
    store = MemoryStore()
    await _seed(store)
    metrics = Metrics()
    failing: set[str] = set()
    served = pki.bundle()
    app = create_app(
        store=store,
        directory=lambda: served,
        readiness=[("rabbitmq", _probe("rabbitmq", failing)), ("store", store.ping)],
        metrics=metrics,
        clock=lambda: CLOCK_NOW,
        readiness_timeout=READINESS_TIMEOUT,
    )
    runner = await asyncio.wait_for(
        serve_http(app, host="127.0.0.1", port=0, ssl_context=pki.server()), TIMEOUT
    )
    try:
        port = runner.addresses[0][1]
        yield Running(
            url=f"https://127.0.0.1:{port}", pki=pki, store=store, metrics=metrics, failing=failing
        )
    finally:
        await asyncio.wait_for(runner.cleanup(), TIMEOUT)


# --- message timelines ----------------------------------------------------------------------


def _states(body: dict[str, Any]) -> dict[str, str]:
    return {r["agency"]: r["state"] for r in body["recipients"]}


async def test_sender_reads_the_whole_timeline(running: Running) -> None:
    """The sender sees metadata, every event oldest first and each recipient's derived state."""
    status, body = await running.json(SENDER, f"/v1/messages/{MESSAGE_ID}")
    assert status == 200
    assert body["message"] == {
        "id": MESSAGE_ID,
        "kind": "referral",
        "sender": SENDER,
        "recipients": [SOCIAL, BUP],
        "outcome": "accepted",
        "reason": None,
        "created": "2026-11-25T09:30:00Z",
        "expires": "2026-12-09T09:30:00Z",
    }
    assert [(e["status"], e["agency"]) for e in body["events"]] == [
        ("accepted", None),
        ("delivered", SOCIAL),
        ("delivered", BUP),
        ("read", SOCIAL),
    ]
    assert set(body["events"][0]) == {
        "status",
        "agency",
        "at",
        "signer",
        "reason",
        "answer",
        "decline_reason",
    }
    # read overtook delivered on the wire; the furthest proven point wins.
    assert _states(body) == {SOCIAL: "read", BUP: "delivered"}


async def test_recipient_sees_its_own_copy_only(running: Running) -> None:
    """A recipient sees message-level events and its own, with its state "read"."""
    status, body = await running.json(SOCIAL, f"/v1/messages/{MESSAGE_ID}")
    assert status == 200
    assert {e["agency"] for e in body["events"]} == {None, SOCIAL}
    assert _states(body) == {SOCIAL: "read"}
    assert body["message"]["recipients"] == [SOCIAL, BUP]


async def test_timeline_carries_no_pseudonym_or_staff_id(running: Running) -> None:
    """Neither the child pseudonym nor a staff id nor a receipt id leaves the broker."""
    _status, text, headers = await running.get(SENDER, f"/v1/messages/{MESSAGE_ID}")
    assert PSEUDONYM not in text
    assert "anna.s" not in text
    assert "r-soc-read" not in text
    assert headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("who", [POLICE, "broker"], ids=["third-agency", "broker-role"])
async def test_others_get_the_same_404_as_an_unknown_id(running: Running, who: str) -> None:
    """An agency that is neither sender nor recipient cannot tell the message exists."""
    status, body = await running.json(who, f"/v1/messages/{MESSAGE_ID}")
    unknown_status, unknown_body = await running.json(who, f"/v1/messages/{UNKNOWN_ID}")
    assert (status, body) == (unknown_status, unknown_body) == (404, unknown_body)
    assert body["error"]["code"] == "not_found"


@pytest.mark.parametrize("who", [OFFICER, "operator"], ids=["security-officer", "operator"])
async def test_officers_read_any_timeline(running: Running, who: str) -> None:
    """Security officers and operators see every recipient of any message."""
    status, body = await running.json(who, f"/v1/messages/{MESSAGE_ID}")
    assert status == 200
    assert _states(body) == {SOCIAL: "read", BUP: "delivered"}


async def test_unknown_id_is_404(running: Running) -> None:
    """A well-formed id that the store does not hold is not_found."""
    status, body = await running.json(SENDER, f"/v1/messages/{UNKNOWN_ID}")
    assert status == 404
    assert body["error"]["code"] == "not_found"


@pytest.mark.parametrize("bad_id", ["not-a-uuid", MESSAGE_ID.upper(), MESSAGE_ID + "0", "%27%3B--"])
async def test_malformed_id_is_400_before_the_store(running: Running, bad_id: str) -> None:
    """An id that is not a lower-case UUID is bad_request and never reaches the store."""
    status, body = await running.json(SENDER, f"/v1/messages/{bad_id}")
    assert status == 400
    assert body["error"]["code"] == "bad_request"
    assert running.store.calls == []


@pytest.mark.parametrize(
    ("store", "status", "code"),
    [(BrokenStore(), 500, "internal_error"), (AwayStore(), 503, "unavailable")],
    ids=["foreign-exception", "translated-unavailable"],
)
async def test_store_failure_reveals_no_detail(
    pki: Pki, store: MemoryStore, status: int, code: str
) -> None:
    """A foreign failure is an opaque 500, a translated one its own code; no URL or password."""
    app = create_app(
        store=store,
        directory=pki.bundle,
        readiness=[],
        metrics=Metrics(),
        clock=lambda: CLOCK_NOW,
    )
    runner = await serve_http(app, host="127.0.0.1", port=0, ssl_context=pki.server())
    try:
        url = f"https://127.0.0.1:{runner.addresses[0][1]}/v1/messages/{MESSAGE_ID}"
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, ssl=pki.client(SENDER)) as response,
        ):
            text = await asyncio.wait_for(response.text(), TIMEOUT)
            assert response.status == status
    finally:
        await asyncio.wait_for(runner.cleanup(), TIMEOUT)
    assert json.loads(text)["error"]["code"] == code
    assert "hunter2" not in text
    assert "postgresql" not in text


# --- transport identity ---------------------------------------------------------------------


def _without_certificate(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(pki.ca_file))
    return context


# A refused handshake is an alert under TLS 1.2 (ClientConnectorSSLError) and, under
# TLS 1.3, the server hanging up once the client thinks it is done (ServerDisconnectedError);
# both are ClientConnectionError. The middleware's 401 would be a response instead.
TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.mark.parametrize("tls_max", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
async def test_client_without_certificate_never_reaches_a_handler(
    running: Running, tls_max: ssl.TLSVersion
) -> None:
    """The handshake refuses a client with no certificate: no handler, no store call, no log."""
    context = _without_certificate(running.pki)
    context.maximum_version = tls_max
    with capture_logs() as logs, pytest.raises(aiohttp.ClientConnectionError):
        await asyncio.wait_for(running.get(context, f"/v1/messages/{MESSAGE_ID}"), TIMEOUT)
    assert running.store.calls == []
    assert [e for e in logs if e["event"] == "http_request"] == []


@pytest.mark.parametrize("tls_max", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
async def test_client_from_another_ca_is_refused(running: Running, tls_max: ssl.TLSVersion) -> None:
    """A certificate from another CA, even naming a real agency, fails the handshake."""
    context = running.pki.client("foreign")
    context.maximum_version = tls_max
    with capture_logs() as logs, pytest.raises(aiohttp.ClientConnectionError):
        await asyncio.wait_for(running.get(context, f"/v1/messages/{MESSAGE_ID}"), TIMEOUT)
    assert running.store.calls == []
    assert [e for e in logs if e["event"] == "http_request"] == []


async def test_served_without_tls_every_request_is_401(pki: Pki) -> None:
    """If the app is ever served in clear, the identity middleware refuses every request."""
    store = MemoryStore()
    app = create_app(
        store=store, directory=pki.bundle, readiness=[], metrics=Metrics(), clock=lambda: CLOCK_NOW
    )
    async with TestClient(TestServer(app)) as client:
        for path in ("/healthz", f"/v1/messages/{MESSAGE_ID}", "/no/such/route"):
            response = await client.get(path)
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "unauthenticated"
    assert store.calls == []


async def test_serve_http_refuses_a_context_without_client_certificates(pki: Pki) -> None:
    """serve_http will not start with a context that does not require a client certificate."""
    context = pki.server()
    context.verify_mode = ssl.CERT_OPTIONAL
    app = create_app(
        store=MemoryStore(),
        directory=pki.bundle,
        readiness=[],
        metrics=Metrics(),
        clock=lambda: CLOCK_NOW,
    )
    with pytest.raises(ValueError, match="client certs"):
        await serve_http(app, host="127.0.0.1", port=0, ssl_context=context)


# --- health, readiness, metrics -------------------------------------------------------------


async def test_healthz_answers_with_the_broker_clock(running: Running) -> None:
    """GET /healthz checks nothing and tells the time, for a client to spot skew."""
    status, body = await running.json(SOCIAL, "/healthz")
    assert (status, body) == (200, {"status": "ok", "time": "2026-11-25T10:00:00Z"})
    assert running.store.calls == []


async def test_readyz_is_200_when_every_probe_answers(running: Running) -> None:
    """Every probe runs and each is named "ok"."""
    status, body = await running.json("operator", "/readyz")
    assert status == 200
    assert body == {"status": "ready", "checks": {"rabbitmq": "ok", "store": "ok"}}
    assert running.store.calls == ["ping"]


async def test_readyz_is_503_naming_the_failed_probe(running: Running) -> None:
    """A raising probe makes /readyz 503 with its name, never its exception text."""
    running.failing.add("rabbitmq")
    status, text, _headers = await running.get("operator", "/readyz")
    assert status == 503
    assert json.loads(text) == {
        "status": "unavailable",
        "checks": {"rabbitmq": "failed", "store": "ok"},
    }
    assert "hunter2" not in text


async def test_readyz_times_out_a_hanging_probe(pki: Pki) -> None:
    """A probe that never returns is cut at the readiness timeout and named "timeout"."""
    app = create_app(
        store=MemoryStore(),
        directory=pki.bundle,
        readiness=[("rabbitmq", _hang)],
        metrics=Metrics(),
        clock=lambda: CLOCK_NOW,
        readiness_timeout=READINESS_TIMEOUT,
    )
    runner = await serve_http(app, host="127.0.0.1", port=0, ssl_context=pki.server())
    try:
        url = f"https://127.0.0.1:{runner.addresses[0][1]}/readyz"
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, ssl=pki.client("operator")) as response,
        ):
            body = await asyncio.wait_for(response.json(), TIMEOUT)
            assert response.status == 503
    finally:
        await asyncio.wait_for(runner.cleanup(), TIMEOUT)
    assert body["checks"] == {"rabbitmq": "timeout"}


def test_duplicate_probe_names_are_refused() -> None:
    """Two probes with one name could hide a failure, so create_app refuses them."""

    async def ok() -> None:
        return None

    with pytest.raises(ValueError, match="unique"):
        create_app(
            store=MemoryStore(),
            directory=lambda: pytest.fail("not called"),
            readiness=[("store", ok), ("store", ok)],
            metrics=Metrics(),
            clock=lambda: CLOCK_NOW,
        )


async def test_metrics_render_counters_for_operators(running: Running) -> None:
    """Operators read the Prometheus text with the counters the service observed."""
    running.metrics.observe_message("referral", "accepted", 0.004)
    running.metrics.observe_rejection("no_basis")
    running.metrics.observe_receipt("read")
    running.metrics.set_queue_depth(f"agency.{SOCIAL}", 3)
    status, text, headers = await running.get("operator", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'backa_messages_total{kind="referral",outcome="accepted"} 1.0' in text
    assert 'backa_rejections_total{reason="no_basis"} 1.0' in text
    assert 'backa_receipts_total{status="read"} 1.0' in text
    assert f'backa_queue_depth{{queue="agency.{SOCIAL}"}} 3.0' in text
    assert 'backa_message_seconds_bucket{le="0.005"} 1.0' in text


@pytest.mark.parametrize(
    ("who", "actor"),
    [(SENDER, SENDER), ("broker", "broker-2")],  # the certificate's common name
    ids=["adapter", "broker-role"],
)
async def test_metrics_are_forbidden_to_other_roles(running: Running, who: str, actor: str) -> None:
    """Adapters and other roles get 403 forbidden on /metrics, and the attempt is audited."""
    status, body = await running.json(who, "/metrics?x=1")
    assert status == 403
    assert body["error"]["code"] == "forbidden"
    assert [(e.event, e.actor, e.query) for e in running.store.audit] == [
        (AuditEvent.ACCESS_REFUSED, actor, "GET /metrics?x=1")
    ]


async def test_a_refusal_the_store_cannot_audit_is_still_a_refusal(running: Running) -> None:
    """With the audit append failing, the answer stays 403 and the failure is logged loudly."""

    async def away(entries: Sequence[AuditEntry]) -> list[int]:
        raise ConnectionError("database away")

    running.store.append_audit = away  # type: ignore[method-assign] # this one call fails
    with capture_logs() as logs:
        status, body = await running.json(SENDER, "/metrics")
    assert (status, body["error"]["code"]) == (403, "forbidden")
    assert "access_refusal_not_audited" in [line["event"] for line in logs]


def test_each_metrics_object_counts_apart() -> None:
    """Two Metrics never share a registry, so apps and tests do not clash."""
    first, second = Metrics(), Metrics()
    first.observe_message("referral", "accepted", 0.01)
    assert b'outcome="accepted"} 1.0' in first.render()
    assert b'outcome="accepted"}' not in second.render()


# --- errors, routes, logs -------------------------------------------------------------------


async def test_unknown_route_and_method_get_json_errors(running: Running) -> None:
    """aiohttp's own 404 and 405 come back in the error body shape, with Allow on 405."""
    status, text, _headers = await running.get(SENDER, "/v1/nothing")
    assert status == 404
    assert json.loads(text)["error"]["code"] == "not_found"
    status, text, headers = await running.get(SENDER, "/healthz", method="POST")
    assert status == 405
    assert json.loads(text)["error"]["code"] == "method_not_allowed"
    assert "GET" in headers["Allow"]


async def test_one_canonical_log_line_per_request(running: Running) -> None:
    """Each request logs one line: method, route template, status, duration and peer."""
    with capture_logs() as logs:
        await running.get(SOCIAL, f"/v1/messages/{MESSAGE_ID}")
    lines = [e for e in logs if e["event"] == "http_request"]
    assert len(lines) == 1
    line = lines[0]
    assert {k: line[k] for k in ("method", "route", "status", "peer_role", "peer_agency")} == {
        "method": "GET",
        "route": "/v1/messages/{message_id}",
        "status": 200,
        "peer_role": "adapter",
        "peer_agency": SOCIAL,
    }
    assert isinstance(line["duration_ms"], float)
    assert set(line) <= {
        "event",
        "log_level",
        "method",
        "route",
        "status",
        "duration_ms",
        "peer_role",
        "peer_agency",
        "peer_cn",
    }


# --- the contract -----------------------------------------------------------------------------


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    return []


async def test_openapi_document_is_3_1_and_self_contained(running: Running) -> None:
    """GET /openapi.json is OpenAPI 3.1.0 over mutualTLS and every $ref resolves inside it."""
    status, document = await running.json(SENDER, "/openapi.json")
    assert status == 200
    assert document == json.loads(json.dumps(build_openapi()))
    assert document["openapi"] == "3.1.0"
    schemes = document["components"]["securitySchemes"]
    assert [s["type"] for s in schemes.values()] == ["mutualTLS"]
    refs = _refs(document)
    assert refs
    for ref in refs:
        _resolve(document, ref)
    assert set(document["paths"]) == {
        "/v1/directory",
        "/v1/messages/{message_id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    }


def test_openapi_documents_every_audit_and_gap_route(pki: Pki) -> None:
    """With the audit and gap routes mounted, served and documented routes agree; refs resolve."""
    app = create_app(
        store=MemoryStore(),
        directory=pki.bundle,
        readiness=[],
        metrics=Metrics(),
        clock=lambda: CLOCK_NOW,
        with_audit=True,
        with_gaps=True,
    )
    add_audit_routes(app, cast("AuditReader", object()), origin="backa.audit/test")
    add_gap_routes(app, cast("SqlStore", object()))
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (method, path)
        for path, operations in build_openapi(audit=True, gaps=True)["paths"].items()
        for method in operations
    }
    assert served == documented
    document = build_openapi(consents=True, audit=True, gaps=True)
    for ref in _refs(document):
        _resolve(document, ref)  # every $ref of the full document resolves inside it


def test_openapi_paths_match_the_app_routes(pki: Pki) -> None:
    """Every route the app serves is documented, and nothing else is."""
    app = create_app(
        store=MemoryStore(),
        directory=pki.bundle,
        readiness=[],
        metrics=Metrics(),
        clock=lambda: CLOCK_NOW,
    )
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (method, path)
        for path, operations in build_openapi()["paths"].items()
        for method in operations
    }
    assert served == documented


# --- the directory ----------------------------------------------------------------------------


async def test_directory_entries_verify_against_the_pinned_root(running: Running) -> None:
    """Every served entry verifies with verify_entry against root.pub, never the response's."""
    status, body = await running.json(SENDER, "/v1/directory")
    assert status == 200
    bundle = DirectoryBundle.model_validate_json(json.dumps(body))
    pinned = running.pki.root_public()
    entries = [verify_entry(signed, pinned) for signed in bundle.entries]
    expected = {a.id for a in load_area(DEMO).agency} | {"broker"}
    assert {e.agency for e in entries} == expected
    assert bundle.area == AREA
    # A client builds its own verified directory from the response and its pin.
    assert Directory(bundle, pinned).agencies() == sorted(expected)


def test_directory_serves_each_entry_once(pki: Pki) -> None:
    """An entry the bundle holds twice is served once, exactly as the root signed it."""
    bundle = load_bundle(pki.layout.directory_file)
    duplicated = DirectoryBundle(
        area=bundle.area, root_key=bundle.root_key, entries=[*bundle.entries, *bundle.entries]
    )
    served = Directory(duplicated, pki.root_public())
    assert len(served.signed_entries()) == len(bundle.entries)
    assert set(served.signed_entries()) <= set(bundle.entries)
