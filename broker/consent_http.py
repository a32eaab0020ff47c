"""HTTP routes of the consent registry (mounted by ``broker.main`` on the broker's app).

``POST /v1/consents`` registers a signed consent, ``POST /v1/consents/{id}/revoke``
revokes one with a signed revocation, ``GET /v1/consents?child=…`` lists the
consents about a child that the caller's agency is party to. Handlers only
parse, call ``ConsentRegistry`` and shape the answer; the registry checks
signatures, parties and the policy's rules.
"""

from __future__ import annotations

import json
import re
from typing import Final

from aiohttp import web

from broker.consents import ConsentRegistry
from broker.errors import BadRequest, NotFound
from broker.http import CLOCK, PEER
from broker.openapi import PATH_CONSENTS, PATH_REVOKE
from broker.pipeline import is_message_id
from keys.policy import ConsentState

REGISTRY: Final = web.AppKey[ConsentRegistry]("consent_registry")
_PSEUDONYM: Final = re.compile(r"^[0-9a-f]{64}$")
#: A signed consent is a few kilobytes; anything much larger is not one.
MAX_BODY: Final = 256 * 1024


def _out(state: ConsentState) -> dict[str, object]:
    return {
        "consent": state.record.model_dump(mode="json"),
        "revoked_at": None if state.revoked_at is None else state.revoked_at.isoformat(),
    }


def _json(data: object, *, status: int = 200) -> web.Response:
    response = web.json_response(data, status=status, dumps=json.dumps)
    response.headers["Cache-Control"] = "no-store"
    return response


async def _body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest("The body is larger than a signed consent can be.")
    body = await request.read()
    if len(body) > MAX_BODY:
        raise BadRequest("The body is larger than a signed consent can be.")
    return body


async def _register(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    state = await registry.register(
        await _body(request), peer=request[PEER], now=request.app[CLOCK]()
    )
    return _json(_out(state), status=201)


async def _revoke(request: web.Request) -> web.Response:
    consent_id = request.match_info["consent_id"]
    if not is_message_id(consent_id):
        raise NotFound("No such consent.")
    registry = request.app[REGISTRY]
    state = await registry.revoke(
        consent_id, await _body(request), peer=request[PEER], now=request.app[CLOCK]()
    )
    return _json(_out(state))


async def _list(request: web.Request) -> web.Response:
    child = request.query.get("child", "")
    if not _PSEUDONYM.fullmatch(child):
        raise BadRequest("Give ?child= as the child's 64-character pseudonym.")
    states = request.app[REGISTRY].for_child(child, peer=request[PEER])
    return _json({"consents": [_out(s) for s in states]})


def add_consent_routes(app: web.Application, registry: ConsentRegistry) -> None:
    """Mount the consent registry's routes on the broker's app."""
    app[REGISTRY] = registry
    app.router.add_post(PATH_CONSENTS, _register)
    app.router.add_post(PATH_REVOKE, _revoke)
    app.router.add_get(PATH_CONSENTS, _list)
