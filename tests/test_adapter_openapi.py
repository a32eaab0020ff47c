"""The agency API's OpenAPI documents (adapters.openapi): valid, complete, and true to the API.

One document per mapping. Each is checked against the OpenAPI 3.1 meta-schema
(schemathesis's validator) with every component a valid JSON Schema 2020-12
and every ``$ref`` resolving inside the document; its operations are exactly
the routes ``create_api`` registers. Then a whole area runs (the real broker,
the real adapters and RabbitMQ, tests.adapter_harness) until every kind of
message sits in some inbox, and every route of every adapter answers, through
each of the five mappings in turn, with a status, a content type and a body
that the document of that mapping allows. The fuzzing is
tests/test_fuzz_adapter_api.py.
"""

from __future__ import annotations

import io
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final, cast

import jsonschema_rs
import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from adapters.api import MAX_BODY_BYTES, create_api
from adapters.canonical import SUBMITTABLE
from adapters.config import AdapterConfig, token_digest
from adapters.mappings import MAPPING_NAMES, mapping_for
from adapters.openapi import PATH_OPENAPI, build_openapi
from adapters.runtime import AdapterRuntime
from schemas.content import CONTENT_MODELS
from schemas.directory import AgencyType
from tests.adapter_harness import (
    BUP,
    DIRECTORY,
    POLICE,
    SCHOOL,
    SOCIAL,
    TOKEN,
    VARDCENTRAL,
    Area,
    Node,
    consent_body,
    example,
    pseudonym_of,
    until,
)

ALVA_CONSENT = "0193a5c2-7e41-7c1a-9b2e-4f6d8a1c3e50"
ALVA = "20121212-1212"
#: Past every shipped deadline of a referral, so the watchdog escalates.
LATER = timedelta(days=40)
DOCUMENTS = {name: build_openapi(name) for name in MAPPING_NAMES}


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _pointer(document: dict[str, Any], ref: str) -> object:
    assert ref.startswith("#/"), ref
    node: object = document
    for part in ref[2:].split("/"):
        assert isinstance(node, dict), ref
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


@pytest.mark.parametrize("mapping", MAPPING_NAMES)
def test_each_document_is_valid_openapi_3_1(mapping: str) -> None:
    """OpenAPI 3.1.0 by its meta-schema; each component valid JSON Schema; every $ref resolves."""
    document = DOCUMENTS[mapping]
    assert document["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(document).validate()
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
    refs = set(_refs(document))
    assert refs
    for ref in refs:
        _pointer(document, ref)
    assert json.loads(json.dumps(document)) == document, "plain JSON data"


@pytest.mark.parametrize("mapping", MAPPING_NAMES)
def test_each_document_has_exactly_the_routes_the_app_serves(mapping: str) -> None:
    """Every (method, path) create_api registers is an operation, and nothing else is."""
    app = _app(cast("AdapterRuntime", object()), mapping)
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (method, path)
        for path, operations in DOCUMENTS[mapping]["paths"].items()
        for method in operations
    }
    assert served == documented


def test_the_documents_cover_every_kind_and_refuse_an_unknown_mapping() -> None:
    """Every submittable kind is in the canonical submission, every content kind in the inbox."""
    schemas = DOCUMENTS["canonical"]["components"]["schemas"]
    submittable = schemas["CanonicalSubmission"]["discriminator"]["mapping"]
    assert set(submittable) == {kind.value for kind in SUBMITTABLE}
    received = schemas["ReceivedMessage"]["discriminator"]["mapping"]
    assert set(received) == {kind.value for kind in CONTENT_MODELS}
    with pytest.raises(ValueError, match="no mapping"):
        build_openapi("xml")


def test_the_bearer_scheme_guards_every_v1_route_and_nothing_else() -> None:
    """/v1/ needs the bearer token (401 documented); /healthz and /openapi.json need none."""
    document = DOCUMENTS["canonical"]
    assert document["security"] == [{"agencyBearer": []}]
    scheme = document["components"]["securitySchemes"]["agencyBearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path.startswith("/v1/"):
                assert "security" not in operation, path
                assert "401" in operation["responses"], path
            else:
                assert operation["security"] == [], path


def test_the_document_module_is_pure() -> None:
    """adapters.openapi loads no HTTP, AMQP or database library, even indirectly."""
    code = (
        "import sys, adapters.openapi; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'aiohttp', 'aio_pika', 'aiormq', 'sqlalchemy', 'asyncpg', 'aiosqlite', 'requests'}))"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed program
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stdout


# --- Real answers, checked against the documents ----------------------------------------


def _config(agency: str) -> AdapterConfig:
    return AdapterConfig.model_validate(
        {
            "agency": agency,
            "area_dir": ".",
            "database": "unused.db",
            "systems": [{"name": "agency-system", "token_sha256": token_digest(TOKEN)}],
        }
    )


def _app(runtime: AdapterRuntime, mapping: str, agency: str = "skolan") -> web.Application:
    kind = DIRECTORY.agency_type(agency) or AgencyType.SCHOOL
    return create_api(
        runtime,
        mapping_for(kind, mapping, agency=agency),
        _config(agency),
        clock=lambda: datetime.now(UTC),
    )


def _validator(schema: dict[str, Any], document: dict[str, Any]) -> jsonschema_rs.Validator:
    return jsonschema_rs.validator_for(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": document["components"],
        },
        validate_formats=True,
    )


@dataclass
class Checked:
    """What was checked against a document: (mapping, method, path template, status) each."""

    seen: set[tuple[str, str, str, int]] = field(default_factory=set)


@dataclass
class View:
    """One adapter's runtime served through one mapping, with that mapping's document."""

    mapping: str
    client: TestClient[Any, Any]
    checked: Checked

    @property
    def document(self) -> dict[str, Any]:
        """The document of this mapping."""
        return DOCUMENTS[self.mapping]

    async def call(
        self,
        method: str,
        template: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: bool = True,
    ) -> tuple[int, Any]:
        """Call the route and check the answer against the document; (status, JSON body)."""
        sent = {"Authorization": f"Bearer {TOKEN}"} if token else {}
        # A stream, as aiohttp asks for a large body (raw bytes would warn).
        data = io.BytesIO(body) if body is not None else None
        response = await self.client.request(
            method, path, data=data, headers={**sent, **(headers or {})}
        )
        text = await response.text()
        operation = self.document["paths"][template][method.lower()]
        documented = operation["responses"]
        assert str(response.status) in documented, (self.mapping, method, path, response.status)
        assert response.content_type == "application/json", (method, path)
        answer = json.loads(text)
        schema = documented[str(response.status)]["content"]["application/json"]["schema"]
        errors = [
            f"{error.instance_path}: {error.message}"
            for error in _validator(schema, self.document).iter_errors(answer)
        ]
        assert not errors, (self.mapping, method, path, response.status, errors[:5])
        self.checked.seen.add((self.mapping, method.lower(), template, response.status))
        return response.status, answer


async def _inbox(node: Node) -> list[dict[str, Any]]:
    status, body = await node.call("GET", "/v1/inbox")
    assert status == 200, body
    return list(body["messages"])


async def _holds(node: Node, count: int) -> bool:
    return len(await _inbox(node)) >= count


async def _seed(area: Area) -> dict[str, Node]:
    """Every kind in some inbox: referral, invitation, response, concern, plan, escalation."""
    nodes = {a.agency: await area.start(a) for a in (SCHOOL, SOCIAL, VARDCENTRAL, BUP, POLICE)}
    school, social, vc, bup, police = nodes.values()
    await area.register(
        consent_body(
            ALVA_CONSENT,
            pseudonym_of(ALVA),
            registrar=VARDCENTRAL,
            parties=[VARDCENTRAL, SOCIAL, SCHOOL, BUP],
            purposes=["referral", "team", "plan"],
            child_age=14,
            now=datetime.now(UTC),
        ),
        VARDCENTRAL,
    )
    # VC invites the stödsamordnare, who accepts: the broker then knows whom to escalate to.
    invitation = example("canonical-team_invitation.json")
    invitation["recipients"] = [SOCIAL.agency]
    first = await vc.submit(invitation)
    await until(partial(_holds, social, 1), what="the invitation at social services")
    status, _ = await social.call(
        "POST",
        f"/v1/inbox/{first}/answer",
        {"staff_id": "stodsamordnare.eva", "answer": "accepted"},
    )
    assert status == 200
    await school.submit(example("school-referral.json"))
    await police.submit(example("police-concern_report.json"))
    await social.submit(example("social_services-concern_report.json"))
    team = await social.submit(example("social_services-team_invitation.json"))
    await until(partial(_holds, school, 1), what="the team invitation at the school")
    # The documented response names the documented invitation; this one answers the real one.
    await school.submit(
        example("school-team_response.json", **{"0193a5d0-1f2b-7a9c-8e3d-5b6a7c8d9e01": team})
    )
    await social.submit(example("social_services-plan_update.json"))
    await until(partial(_holds, social, 4), what="four messages at social services")
    await until(partial(_holds, school, 2), what="invitation and plan at the school")
    await until(partial(_holds, police, 1), what="the concern report at the police")
    await until(partial(_holds, bup, 3), what="referral, invitation and plan at BUP")
    assert await area.watchdog.escalate_once(datetime.now(UTC) + LATER) >= 1
    await until(partial(_holds, social, 5), what="the escalation at social services")
    return nodes


async def _view(node: Node, mapping: str, checked: Checked) -> View:
    """``node``'s runtime served through ``mapping``, on a port of its own."""
    app = _app(node.runtime, mapping, node.agency.agency)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return View(mapping, client, checked)


def _message_id(rendered: dict[str, Any]) -> str:
    """The message id of a rendering: canonical, Swedish, or a FHIR Bundle's identifier."""
    found = rendered.get("message_id") or rendered.get("meddelande_id")
    return str(found or rendered["identifier"]["value"])


async def _every_route(view: View, *, submit: bool) -> None:
    """Every route and every answer it can give, through ``view``; ``submit`` a real message too."""
    await view.call("GET", "/healthz", "/healthz", token=False)
    _, document = await view.call("GET", PATH_OPENAPI, PATH_OPENAPI, token=False)
    assert document == view.document
    _, sent = await view.call("GET", "/v1/messages", "/v1/messages")
    for message_id in map(_message_id, sent["messages"]):
        await view.call("GET", "/v1/messages/{id}", f"/v1/messages/{message_id}")
    _, inbox = await view.call("GET", "/v1/inbox", "/v1/inbox")
    reader = json.dumps({"staff_id": "handlaggare.omar"}).encode()
    answer = json.dumps(
        {"staff_id": "handlaggare.omar", "answer": "declined", "decline_reason": "other"}
    ).encode()
    for message_id in map(_message_id, inbox["messages"]):
        await view.call("GET", "/v1/inbox/{id}", f"/v1/inbox/{message_id}")
        await view.call("POST", "/v1/inbox/{id}/read", f"/v1/inbox/{message_id}/read", body=reader)
        # The first mapping answers (200), the others find it answered, or not answerable (409).
        await view.call(
            "POST", "/v1/inbox/{id}/answer", f"/v1/inbox/{message_id}/answer", body=answer
        )
    unknown = "00000000-0000-4000-8000-000000000000"
    for template in ("/v1/messages/{id}", "/v1/inbox/{id}"):
        await view.call("GET", template, template.replace("{id}", unknown))
    await view.call("POST", "/v1/inbox/{id}/read", f"/v1/inbox/{unknown}/read", body=reader)
    await view.call("POST", "/v1/inbox/{id}/read", f"/v1/inbox/{unknown}/read", body=b"{}")
    await view.call(
        "POST", "/v1/inbox/{id}/answer", f"/v1/inbox/{unknown}/answer", body=b'{"answer": 1}'
    )
    await view.call("GET", "/v1/inbox", "/v1/inbox", token=False)
    for body in (b"{}", b"[", b'{"kind": "referral"}', b'{"resourceType": "Bundle"}'):
        await view.call("POST", "/v1/messages", "/v1/messages", body=body)
    await view.call("POST", "/v1/messages", "/v1/messages", body=b" " * (MAX_BODY_BYTES + 1))
    if submit:
        report = example("canonical-concern_report.json")
        key = {"Idempotency-Key": secrets.token_hex(8)}
        for _ in range(2):  # the second time, the same key with another body: 409
            await view.call(
                "POST",
                "/v1/messages",
                "/v1/messages",
                body=json.dumps(report).encode(),
                headers=key,
            )
            report["content"]["observations"] += " Mer."


#: Answers each mapping's document must have been checked with (method, path, status).
EXPECTED: Final = [
    ("post", "/v1/messages", 202),
    ("post", "/v1/messages", 409),
    ("post", "/v1/messages", 413),
    ("post", "/v1/messages", 422),
    ("get", "/v1/messages/{id}", 200),
    ("get", "/v1/messages/{id}", 404),
    ("get", "/v1/inbox/{id}", 200),
    ("get", "/v1/inbox/{id}", 404),
    ("post", "/v1/inbox/{id}/read", 200),
    ("post", "/v1/inbox/{id}/read", 404),
    ("post", "/v1/inbox/{id}/read", 422),
    ("post", "/v1/inbox/{id}/answer", 200),
    ("post", "/v1/inbox/{id}/answer", 409),
    ("post", "/v1/inbox/{id}/answer", 422),
    ("get", "/v1/inbox", 401),
]


@pytest.mark.rabbitmq
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_every_answer_of_every_adapter_fits_its_document(area: Area) -> None:
    """Every route through every mapping, on real messages of every kind: each answer documented."""
    nodes = await _seed(area)
    checked = Checked()
    for turn, (agency, node) in enumerate(nodes.items()):
        # Each mapping is the first to answer at one adapter (200); the others then get 409.
        mappings = MAPPING_NAMES[turn:] + MAPPING_NAMES[:turn]
        for mapping in mappings:
            view = await _view(node, mapping, checked)
            try:
                # The police send a concern report through each mapping: 202, then 409.
                await _every_route(view, submit=agency == POLICE.agency)
            finally:
                await view.client.close()
    for mapping in MAPPING_NAMES:
        mine = {(method, path, status) for m, method, path, status in checked.seen if m == mapping}
        assert [e for e in EXPECTED if e not in mine] == [], mapping
