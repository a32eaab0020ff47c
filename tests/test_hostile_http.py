"""Hostile clients against the broker's HTTP API and the adapters' agency APIs.

**The broker** is served as it serves itself (``tests.audit_fakes.serve``: the
real app with the officer's audit routes and console, over mutual TLS on
127.0.0.1) with certificates from an area CA made 30 days ago, so that one of
them can have expired. The audit log is the in-memory reader.

* No client certificate, a certificate from another CA, an expired
  certificate from the area CA, and plain HTTP to the TLS port are all refused
  in the TLS handshake, "before aiohttp sees a byte" (broker/http.py). They
  never reach the application, so there is no HTTP status and nothing the
  broker could put in its audit log: the tests assert exactly that (a refused
  connection, no request log line, no audit entry) and that the broker goes on
  serving. The OpenAPI document's 401 is what the identity middleware answers
  if the app is ever served without TLS (tests/test_http.py).
* A valid certificate with the wrong role reaches the application and gets
  403 ``forbidden``, and the attempt is in the audit log: on the security
  officer's audit routes and console as a refused read, appended before the
  refusal (``AuditReader.refused``); elsewhere (/metrics) as an
  ``access_refused`` entry the HTTP layer appends. Never both.

**Each adapter's agency API** (``tests.adapter_harness``: the real broker and
RabbitMQ, one adapter per agency format) gets oversized, deeply nested and
invalid UTF-8 bodies and missing or wrong bearer tokens: each is answered with
its documented status and JSON error (docs/adapters/README.md), the answer
never repeats the personnummer in the body, and nothing reaches the adapter's
outbox, the only thing its publisher sends.
"""

from __future__ import annotations

import asyncio
import io
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from adapters.api import MAX_BODY_BYTES, MAX_NESTING
from keys.ca import (
    Role,
    cert_to_pem,
    client_ssl_context,
    create_ca,
    issue_client_cert,
    issue_server_cert,
    key_to_pem,
)
from keys.setup import AreaLayout
from schemas.audit import AuditEvent
from tests import adapter_harness as harness
from tests.audit_fakes import AREA, OFFICER, SCHOOL, NoMessages, Pki, seeded_reader, serve
from tests.support import Agency
from tests.test_http import _write

TIMEOUT = 10.0
#: How long ago the broker's area was made: long enough for a certificate to have expired.
AGE = timedelta(days=30)


# --- the broker ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """An area CA made 30 days ago with the broker's and two clients' certificates (``pki``),
    and the directories of two client certificates the broker must refuse."""

    pki: Pki
    foreign: Path
    expired: Path

    def client(self, base: Path) -> ssl.SSLContext:
        """A client context presenting the certificate in ``base`` and trusting the area CA."""
        return client_ssl_context(
            cert_file=base / "client.crt",
            key_file=base / "client.key",
            ca_file=self.pki.layout.ca_cert,
            passphrase=None,
        )

    def no_certificate(self) -> ssl.SSLContext:
        """A client context that trusts the area CA but presents no certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(self.pki.layout.ca_cert))
        return context


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """The area's certificates where ``serve`` and ``Pki.client`` find them, all issued 30 days
    ago; a school adapter certificate that expired 9 days ago; one from another CA."""
    root = tmp_path_factory.mktemp("hostile-http")
    now = datetime.now(UTC)
    layout = AreaLayout(root / "keys")
    ca = create_ca(area=AREA, now=now - AGE)
    layout.public.mkdir(parents=True)
    layout.ca_cert.write_bytes(cert_to_pem(ca.cert))
    server = issue_server_cert(ca, hostnames=["localhost"], now=now - AGE)
    layout.broker_dir.mkdir(parents=True)
    (layout.broker_dir / "tls.crt").write_bytes(cert_to_pem(server.cert))
    (layout.broker_dir / "tls.key").write_bytes(key_to_pem(server.key, None))
    officer = issue_client_cert(
        ca, common_name=OFFICER, role=Role.SECURITY_OFFICER, agency=None, area=AREA, now=now - AGE
    )
    _write(layout.officer_dir(OFFICER), officer)
    school = partial(
        issue_client_cert, common_name=SCHOOL, role=Role.ADAPTER, agency=SCHOOL, area=AREA
    )
    _write(layout.agency_dir(SCHOOL), school(ca, now=now - AGE))
    expired = school(ca, now=now - timedelta(days=10), valid_days=1)
    assert expired.cert.not_valid_after_utc < now
    _write(root / "expired", expired)
    _write(root / "foreign", school(create_ca(area=AREA, now=now), now=now))
    return Certificates(
        pki=Pki(layout=layout, extra=root), foreign=root / "foreign", expired=root / "expired"
    )


@dataclass(frozen=True)
class Answer:
    """One response: status, content type and body."""

    status: int
    content_type: str
    text: str


async def _get(url: str, context: ssl.SSLContext | None) -> Answer:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=context if context is not None else False) as response,
    ):
        text = await asyncio.wait_for(response.text(), TIMEOUT)
        return Answer(response.status, response.content_type, text)


def _request_lines(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [line for line in logs if line["event"] == "http_request"]


#: Clients the handshake refuses: (the URL scheme, the client context).
HANDSHAKE_REFUSED = [
    pytest.param("https", Certificates.no_certificate, id="no-certificate"),
    pytest.param("https", lambda c: c.client(c.foreign), id="another-ca"),
    pytest.param("https", lambda c: c.client(c.expired), id="expired"),
    pytest.param("http", lambda _c: None, id="plain-http"),
]


@pytest.mark.parametrize(("scheme", "client"), HANDSHAKE_REFUSED)
async def test_a_peer_without_a_valid_area_certificate_never_reaches_the_broker(
    certificates: Certificates,
    scheme: str,
    client: Callable[[Certificates], ssl.SSLContext | None],
) -> None:
    """The handshake fails: no response, no request line, no audit entry; the broker serves on."""
    reader = seeded_reader()
    size = reader.size
    async with serve(certificates.pki, reader) as url:
        hostile = url.replace("https://", f"{scheme}://") + "/v1/audit/entries"
        with capture_logs() as logs, pytest.raises(aiohttp.ClientConnectionError):
            await asyncio.wait_for(_get(hostile, client(certificates)), TIMEOUT)
        assert _request_lines(logs) == []
        assert (reader.size, reader.refusals, reader.calls) == (size, [], [])
        served = await _get(url + "/healthz", certificates.pki.client(OFFICER))
        assert served.status == 200


#: A valid adapter certificate on routes its role may not use: (path, JSON error?, a log read?).
WRONG_ROLE = [
    pytest.param("/v1/audit/entries", True, True, id="audit-search"),
    pytest.param("/v1/audit/export?start=0&end=6", True, True, id="audit-export"),
    pytest.param("/konsol/", False, True, id="officer-console"),
    pytest.param("/metrics", True, False, id="metrics"),
]


@pytest.mark.parametrize(("path", "json_error", "log_read"), WRONG_ROLE)
async def test_the_wrong_role_is_forbidden_and_audited(
    certificates: Certificates, path: str, json_error: bool, log_read: bool
) -> None:
    """An adapter's certificate gets 403, logged per request and, once, in the audit log."""
    reader = seeded_reader()
    size = reader.size
    store = NoMessages()
    async with serve(certificates.pki, reader, store) as url:
        with capture_logs() as logs:
            answer = await _get(url + path, certificates.pki.client(SCHOOL))
        assert answer.status == 403
        if json_error:
            assert answer.content_type == "application/json"
            assert '"code": "forbidden"' in answer.text
        line = _request_lines(logs)[-1]
        assert (line["status"], line["peer_role"], line["peer_agency"]) == (403, "adapter", SCHOOL)
        assert reader.calls == [], "nothing was read for the refused peer"
        if log_read:
            assert reader.refusals == [(SCHOOL, path)]
            assert reader.size == size + 1
            refused = reader.logged[size].entry
            assert (refused.event, refused.actor) == (AuditEvent.AUDIT_READ, SCHOOL)
            assert refused.query == f"refused {path}"
            assert store.audit == [], "the refused read is logged once, not twice"
        else:
            assert (reader.size, reader.refusals) == (size, [])
            assert [(e.event, e.actor, e.query) for e in store.audit] == [
                (AuditEvent.ACCESS_REFUSED, SCHOOL, f"GET {path}")
            ]
        served = await _get(url + "/healthz", certificates.pki.client(OFFICER))
        assert served.status == 200


# --- the adapters -------------------------------------------------------------------------------

#: One adapter per agency format: school, social services, FHIR (primary care) and police.
ADAPTERS = [
    pytest.param(harness.SCHOOL, id="school"),
    pytest.param(harness.SOCIAL, id="social-services"),
    pytest.param(harness.VARDCENTRAL, id="fhir"),
    pytest.param(harness.POLICE, id="police"),
]
#: A personnummer that every hostile body carries, and that no answer may repeat.
PERSONNUMMER = "20121212-1212"
TOKEN_HEADER = {"Authorization": f"Bearer {harness.TOKEN}"}


def _nested(depth: int) -> bytes:
    return ('{"a":' * depth + f'"{PERSONNUMMER}"' + "}" * depth).encode()


@dataclass(frozen=True)
class Hostile:
    """A hostile POST /v1/messages and the documented answer: a status and an error code,
    or "$" for a 422 that names the whole document."""

    body: bytes
    headers: dict[str, str]
    status: int
    error: str


HOSTILE_REQUESTS = [
    pytest.param(
        Hostile(
            f'{{"note": "{PERSONNUMMER}{"x" * MAX_BODY_BYTES}"}}'.encode(),
            TOKEN_HEADER,
            413,
            "too_large",
        ),
        id="oversized",
    ),
    pytest.param(
        Hostile(b"[" * 100_000, TOKEN_HEADER, 422, "$"), id="nested-beyond-the-json-parser"
    ),
    pytest.param(
        Hostile(_nested(985), TOKEN_HEADER, 422, "$"), id="nested-just-within-the-json-parser"
    ),
    pytest.param(
        Hostile(_nested(MAX_NESTING + 1), TOKEN_HEADER, 422, "$"), id="nested-past-the-limit"
    ),
    pytest.param(
        Hostile(
            f'{{"kind": "referral", "note": "{PERSONNUMMER}\xff"}}'.encode("latin-1"),
            TOKEN_HEADER,
            422,
            "$",
        ),
        id="invalid-utf-8",
    ),
    pytest.param(Hostile(_nested(1), {}, 401, "unauthorized"), id="no-token"),
    pytest.param(
        Hostile(_nested(1), {"Authorization": "Bearer not-the-token"}, 401, "unauthorized"),
        id="wrong-token",
    ),
    pytest.param(
        Hostile(_nested(1), {"Authorization": f"Basic {harness.TOKEN}"}, 401, "unauthorized"),
        id="token-in-another-scheme",
    ),
]


@pytest.mark.rabbitmq
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("hostile", HOSTILE_REQUESTS)
@pytest.mark.parametrize("agency", ADAPTERS)
async def test_hostile_submissions_get_their_documented_error_and_nothing_is_sent(
    area: harness.Area, agency: Agency, hostile: Hostile
) -> None:
    """The documented status and JSON error, no personnummer in it, nothing in the outbox."""
    node = await area.start(agency)
    response = await node.client.post(
        "/v1/messages",
        data=io.BytesIO(hostile.body),  # raw bytes over 1 MiB make aiohttp warn
        headers={**hostile.headers, "Content-Type": "application/json"},
    )
    text = await response.text()
    assert response.status == hostile.status, text
    assert response.content_type == "application/json"
    named = '"$"' if hostile.error == "$" else f'"error": "{hostile.error}"'
    assert named in text
    assert "121212" not in text, "the answer repeats the personnummer"
    assert await node.runtime.list_sent() == []
    health = await node.client.get("/healthz")
    assert health.status == 200
