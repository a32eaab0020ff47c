"""The consent registry over HTTP with mutual TLS: register, list, revoke, and the refusals."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.consent_http import add_consent_routes
from broker.consents import ConsentBook, ConsentRegistry
from broker.http import create_app, serve_http
from broker.metrics import Metrics
from broker.store import SqlStore
from keys.area import load_area
from keys.ca import client_ssl_context, server_ssl_context
from keys.policy import load_policy
from keys.setup import AgencyKeys, AreaLayout, init_area, load_agency_keys, load_directory
from keys.signed import sign_consent, sign_revocation
from schemas.consent import ConsentRecord, ConsentRevocation
from tests.support import CHILD

DEMO = Path("deploy/areas/demo.toml")
SCHOOL = "torsviks-skola"
SOCIAL = "lidingo-socialtjanst"
BUP = "bup-lidingo"
POLICY = load_policy(Path("deploy/policy/sweden.toml"))
CONSENT_ID = "019abb2a-6a52-7000-8000-00000000beef"

# The HTTP layer is the subject here; the store runs on both databases elsewhere.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@dataclass
class Served:
    """The registry served over mTLS, and what clients need."""

    url: str
    layout: AreaLayout
    keys: dict[str, AgencyKeys]
    store: SqlStore

    def client(self, agency: str) -> aiohttp.ClientSession:
        """A session presenting ``agency``'s client certificate."""
        context = client_ssl_context(
            cert_file=self.layout.agency_dir(agency) / "client.crt",
            key_file=self.layout.agency_dir(agency) / "client.key",
            ca_file=self.layout.ca_cert,
            passphrase=None,
        )
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo area with insecure test keys (certificates start now: TLS checks the clock)."""
    out = tmp_path_factory.mktemp("consent-http") / "keys"
    init_area(
        load_area(DEMO),
        out,
        passphrase=None,
        insecure=True,
        now=datetime.now(UTC),
        rng=os.urandom,
        scrypt_n=2**10,
    )
    return out


@pytest.fixture
async def served(area: Path, store: SqlStore) -> AsyncIterator[Served]:
    """The broker's app with the consent routes, on a random port."""
    directory = load_directory(area)
    registry = ConsentRegistry(
        store=store, book=ConsentBook(), policy=POLICY, directory=lambda: directory
    )
    app = create_app(
        store=store,
        directory=lambda: directory,
        readiness=[],
        metrics=Metrics(),
        clock=lambda: datetime.now(UTC),
        with_consents=True,
    )
    add_consent_routes(app, registry)
    layout = AreaLayout(area)
    runner = await serve_http(
        app,
        host="127.0.0.1",
        port=0,
        ssl_context=server_ssl_context(
            cert_file=layout.broker_dir / "tls.crt",
            key_file=layout.broker_dir / "tls.key",
            ca_file=layout.ca_cert,
            passphrase=None,
        ),
    )
    port = runner.addresses[0][1]
    keys = {
        a: load_agency_keys(area, a, passphrase=None, allow_insecure=True)
        for a in (SCHOOL, SOCIAL, BUP)
    }
    try:
        yield Served(f"https://localhost:{port}", layout, keys, store)
    finally:
        await runner.cleanup()


def _consent(served: Served, **changes: Any) -> bytes:
    now = datetime.now(UTC)
    school = served.keys[SCHOOL]
    body: dict[str, Any] = {
        "id": CONSENT_ID,
        "child": CHILD,
        "guardians": [{"pseudonym": "cd" * 32, "custodial": True}],
        "joint_custody": False,
        "child_view": {"consented": True, "age": 13, "assessed_mature": False},
        "registered_by": {"agency": SCHOOL, "kid": school.kid, "staff_id": "kurator.lena"},
        "parties": [{"agency": SCHOOL}, {"agency_type": "social_services"}],
        "purposes": ["referral"],
        "valid_from": now.isoformat(),
        "valid_until": (now + timedelta(days=180)).isoformat(),
        "document_digest": "ef" * 32,
        **changes,
    }
    record = ConsentRecord.model_validate_json(json.dumps(body))
    return sign_consent(record, school.sender).model_dump_json().encode()


def _revocation(served: Served, by: str) -> bytes:
    keys = served.keys[by]
    revocation = ConsentRevocation.model_validate_json(
        json.dumps(
            {
                "consent_id": CONSENT_ID,
                "revoked_at": datetime.now(UTC).isoformat(),
                "reason": "guardian_withdrew",
                "by": {"agency": by, "kid": keys.kid, "staff_id": "handl-7"},
            }
        )
    )
    return sign_revocation(revocation, keys.sender).model_dump_json().encode()


async def _post(served: Served, agency: str, path: str, body: bytes) -> tuple[int, Any]:
    async with served.client(agency) as session, session.post(served.url + path, data=body) as r:
        return r.status, await r.json()


async def _get(served: Served, agency: str, path: str) -> tuple[int, Any]:
    async with served.client(agency) as session, session.get(served.url + path) as r:
        return r.status, await r.json()


async def test_register_list_and_revoke(served: Served) -> None:
    """The school registers; parties list it; social services revokes it; the revocation shows."""
    status, body = await _post(served, SCHOOL, "/v1/consents", _consent(served))
    assert status == 201, body
    assert body["consent"]["id"] == CONSENT_ID
    assert body["revoked_at"] is None
    status, listed = await _get(served, SOCIAL, f"/v1/consents?child={CHILD}")
    assert status == 200
    assert [c["consent"]["id"] for c in listed["consents"]] == [CONSENT_ID]
    status, listed = await _get(served, BUP, f"/v1/consents?child={CHILD}")
    assert (status, listed["consents"]) == (200, []), "BUP is not a party and sees nothing"
    other_child = "0" * 64 if CHILD != "0" * 64 else "1" * 64
    status, listed = await _get(served, SOCIAL, f"/v1/consents?child={other_child}")
    assert (status, listed["consents"]) == (200, []), "another child's list holds none of it"
    status, revoked = await _post(
        served, SOCIAL, f"/v1/consents/{CONSENT_ID}/revoke", _revocation(served, SOCIAL)
    )
    assert status == 200, revoked
    assert revoked["revoked_at"] is not None
    status, listed = await _get(served, SOCIAL, f"/v1/consents?child={CHILD}")
    assert [c["revoked_at"] is not None for c in listed["consents"]] == [True], "listed once"
    stored = await served.store.consents(child=CHILD)
    assert stored[0].revoked_at is not None
    assert stored[0].revocation_signature


async def test_only_the_registering_agency_may_register(served: Served) -> None:
    """A consent signed by the school but sent with social services' certificate is refused."""
    status, body = await _post(served, SOCIAL, "/v1/consents", _consent(served))
    assert (status, body["error"]["code"]) == (403, "forbidden")


async def test_a_bad_signature_is_refused(served: Served) -> None:
    """A consent whose payload was changed after signing is refused without detail."""
    signed = json.loads(_consent(served))
    signed["signature"] = (
        signed["signature"][:10]
        + ("B" if signed["signature"][10] == "A" else "A")
        + signed["signature"][11:]
    )
    status, body = await _post(served, SCHOOL, "/v1/consents", json.dumps(signed).encode())
    assert (status, body["error"]["code"]) == (400, "bad_request")


async def test_an_invalid_consent_is_refused_with_actionable_problems(served: Served) -> None:
    """Joint custody with one guardian is refused with a code, a field and a sentence."""
    status, body = await _post(served, SCHOOL, "/v1/consents", _consent(served, joint_custody=True))
    assert status == 422
    assert body["error"]["code"] == "consent_refused"
    problems = body["error"]["problems"]
    assert [p["code"] for p in problems] == ["consent_guardian_missing"]
    assert problems[0]["message"]


async def test_a_non_party_cannot_revoke_or_learn_of_the_consent(served: Served) -> None:
    """BUP's revocation of a consent it is not party to looks like an unknown id."""
    assert (await _post(served, SCHOOL, "/v1/consents", _consent(served)))[0] == 201
    status, body = await _post(
        served, BUP, f"/v1/consents/{CONSENT_ID}/revoke", _revocation(served, BUP)
    )
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert (await served.store.consents(child=CHILD))[0].revoked_at is None


async def test_openapi_documents_every_consent_route(served: Served) -> None:
    """The served OpenAPI document lists the consent routes with their bodies and answers."""
    status, document = await _get(served, SCHOOL, "/openapi.json")
    assert status == 200
    assert set(document["paths"]["/v1/consents"]) == {"get", "post"}
    post = document["paths"]["/v1/consents"]["post"]
    assert {"201", "400", "403", "422"} <= set(post["responses"])
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/SignedConsent"
    )
    assert "post" in document["paths"]["/v1/consents/{consent_id}/revoke"]
    for name in ("ConsentOut", "ConsentRefusedResponse", "SignedRevocation"):
        assert name in document["components"]["schemas"]
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref" and isinstance(v, str))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    missing = {r for r in refs if r.rsplit("/", 1)[-1] not in document["components"]["schemas"]}
    assert not missing
