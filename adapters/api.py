"""The agency-facing HTTP API of an adapter (aiohttp), bound to localhost by default.

Routes (bearer token per agency system, ``systems`` in the config):

* ``POST /v1/messages`` — submit in the agency's format (``Idempotency-Key``
  header optional): ``202`` with the message id once it is in the outbox;
  ``422`` naming each bad field, with nothing stored or sent.
* ``GET /v1/messages`` and ``GET /v1/messages/{id}`` — what was sent and its
  status timeline.
* ``GET /v1/inbox``, ``GET /v1/inbox/{id}`` — received, handed-over messages.
* ``POST /v1/inbox/{id}/read`` and ``POST /v1/inbox/{id}/answer`` — a person
  opened it / accepted or declined it (sends the signed receipt).
* ``GET /healthz`` — liveness, and whether RabbitMQ is connected (no token).
* ``GET /openapi.json`` — the OpenAPI 3.1 document of this API for the adapter's
  mapping (``adapters.openapi``; no token: it holds the contract and nothing else).

Handlers are thin: parse, call the mapping and the runtime, map the result.
Errors are JSON ``{"error": code, "message": sentence}``; nothing submitted is
ever echoed in an error or a log line. A body over :data:`MAX_BODY_BYTES` is
``413 too_large``; one that is not JSON, or nests deeper than :data:`MAX_NESTING`
levels, is a ``422`` naming ``$``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from adapters.canonical import FieldProblem, InvalidSubmission, Mapping, problems_from_validation
from adapters.config import AdapterConfig
from adapters.openapi import (
    MAX_IDEMPOTENCY_KEY,
    PATH_ANSWER,
    PATH_HEALTH,
    PATH_INBOX,
    PATH_INBOX_ITEM,
    PATH_MESSAGE,
    PATH_MESSAGES,
    PATH_OPENAPI,
    PATH_READ,
    AnswerRequest,
    ReadRequest,
    build_openapi,
)
from adapters.ports import AnswerConflictError, UnknownMessageError
from adapters.runtime import AdapterRuntime
from adapters.store import AdapterStoreError, IdempotencyConflict
from schemas.receipts import Answer

RUNTIME: Final = web.AppKey[AdapterRuntime]("runtime")
MAPPING: Final = web.AppKey[Mapping]("mapping")
CONFIG: Final = web.AppKey[AdapterConfig]("config")
CLOCK: Final = web.AppKey[Callable[[], datetime]]("clock")
#: The OpenAPI document of this API for the app's mapping, serialised once.
OPENAPI: Final = web.AppKey[bytes]("openapi")
#: The name of the agency system whose token the request carried (for the log line).
SYSTEM: Final = web.RequestKey[str]("agency_system")

#: Largest request body: the envelope limit with room for a format's overhead.
MAX_BODY_BYTES: Final = 2_000_000
#: Deepest nesting of objects and arrays a submission may have; the agency formats need
#: about ten levels. Deeper documents would exhaust the stack of the recursive code
#: (json, pydantic) that validates them, so they are refused before any mapping runs.
MAX_NESTING: Final = 64

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


@web.middleware
async def _bearer(  # noqa: PLR0911 - one return per mapped error, all mapped in this one place
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    system = request.app[CONFIG].system_for(token) if scheme.lower() == "bearer" else None
    if system is None:
        return _error(
            401,
            "unauthorized",
            "a valid bearer token for this adapter is required",
            **{"WWW-Authenticate": 'Bearer realm="backa-adapter"'},
        )
    request[SYSTEM] = system
    structlog.contextvars.bind_contextvars(agency_system=system)
    try:
        return await handler(request)
    except UnknownMessageError:
        return _error(404, "unknown_message", "no such message at this adapter")
    except AnswerConflictError as exc:
        return _error(409, "answer_conflict", str(exc))
    except AdapterStoreError:
        return _error(503, "store_unavailable", "the adapter's database is unavailable; retry")
    except web.HTTPRequestEntityTooLarge:
        # aiohttp's own 413 is plain text; the agency system gets the documented JSON error.
        return _error(413, "too_large", f"the body is larger than {MAX_BODY_BYTES} bytes")


def _containers(node: object) -> list[object]:
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    return [child for child in children if isinstance(child, dict | list)]


def _nested_too_deeply(document: object) -> bool:
    """Whether ``document`` nests objects and arrays deeper than :data:`MAX_NESTING`.

    Walked level by level, not recursively: it must not fail the way it guards against.
    """
    level: list[object] = [document] if isinstance(document, dict | list) else []
    for _ in range(MAX_NESTING):
        level = [child for node in level for child in _containers(node)]
    return bool(level)


def _document(body: bytes) -> object:
    """The JSON document of a submission; InvalidSubmission naming ``$`` if there is none."""
    too_deep = f"nests objects and arrays deeper than {MAX_NESTING} levels"
    try:
        document = json.loads(body)
    except ValueError:
        problem = "the body is not valid JSON"
    except RecursionError:  # json.loads recurses once per level: the stack ran out first
        problem = too_deep
    else:
        if not _nested_too_deeply(document):
            return document
        problem = too_deep
    raise InvalidSubmission([FieldProblem("$", problem)])


def _problems(request: web.Request, problems: list[FieldProblem]) -> web.Response:
    return web.json_response(request.app[MAPPING].render_problems(problems), status=422)


async def submit(request: web.Request) -> web.StreamResponse:
    """Map, validate, seal and queue one submission."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()):
        return _problems(
            request,
            [
                FieldProblem(
                    "Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"
                )
            ],
        )
    body = await request.read()
    runtime = request.app[RUNTIME]
    try:
        document = _document(body)
        submission = request.app[MAPPING].parse(document, today=request.app[CLOCK]().date())
        message_id, created = await runtime.submit(submission, idempotency_key=key, request=body)
    except InvalidSubmission as exc:
        return _problems(request, list(exc.problems))
    except IdempotencyConflict as exc:
        return _error(409, exc.code, str(exc))
    headers = {"Location": f"/v1/messages/{message_id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return web.json_response(
        {"message_id": message_id, "status_url": f"/v1/messages/{message_id}"},
        status=202,
        headers=headers,
    )


async def list_sent(request: web.Request) -> web.StreamResponse:
    """Everything this agency sent, newest first."""
    mapping = request.app[MAPPING]
    sent = await request.app[RUNTIME].list_sent()
    return web.json_response({"messages": [mapping.render_timeline(t) for t in sent]})


async def sent_status(request: web.Request) -> web.StreamResponse:
    """The status timeline of one sent message."""
    timeline = await request.app[RUNTIME].timeline(request.match_info["id"])
    return web.json_response(request.app[MAPPING].render_timeline(timeline))


async def list_inbox(request: web.Request) -> web.StreamResponse:
    """Every handed-over message, newest first."""
    mapping = request.app[MAPPING]
    received = await request.app[RUNTIME].list_received()
    return web.json_response({"messages": [mapping.render_received(r) for r in received]})


async def get_inbox(request: web.Request) -> web.StreamResponse:
    """One handed-over message in the agency's format."""
    item = await request.app[RUNTIME].get_received(request.match_info["id"])
    return web.json_response(request.app[MAPPING].render_received(item))


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        raise InvalidSubmission(problems_from_validation(exc)) from None


async def mark_read(request: web.Request) -> web.StreamResponse:
    """A person at the agency opened the message: the signed ``read`` receipt goes back."""
    try:
        body = await _body(request, ReadRequest)
    except InvalidSubmission as exc:
        return _problems(request, list(exc.problems))
    item = await request.app[RUNTIME].mark_read(request.match_info["id"], body.staff_id)
    return web.json_response(request.app[MAPPING].render_received(item))


async def answer(request: web.Request) -> web.StreamResponse:
    """A person accepted or declined (with a reason): the signed ``answered`` receipt goes back."""
    try:
        body = await _body(request, AnswerRequest)
    except InvalidSubmission as exc:
        return _problems(request, list(exc.problems))
    choice = Answer(body.answer)
    if (choice is Answer.DECLINED) != (body.decline_reason is not None):
        return _problems(
            request,
            [
                FieldProblem(
                    "decline_reason", "is required when declining and refused when accepting"
                )
            ],
        )
    item = await request.app[RUNTIME].answer(
        request.match_info["id"], body.staff_id, choice, body.decline_reason
    )
    return web.json_response(request.app[MAPPING].render_received(item))


async def healthz(request: web.Request) -> web.StreamResponse:
    """Alive; says whether RabbitMQ is connected (submissions are taken either way)."""
    runtime = request.app[RUNTIME]
    return web.json_response(
        {
            "status": "ok",
            "agency": runtime.agency,
            "rabbitmq": "connected" if runtime.connected else "reconnecting",
        }
    )


@functools.cache
def _openapi_document(mapping: str) -> bytes:
    return json.dumps(build_openapi(mapping)).encode()


async def openapi(request: web.Request) -> web.StreamResponse:
    """The OpenAPI document of this API (no token: the contract, nothing about any message)."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


def create_api(
    runtime: AdapterRuntime,
    mapping: Mapping,
    config: AdapterConfig,
    *,
    clock: Callable[[], datetime],
) -> web.Application:
    """The agency API; the web inbox is added by ``adapters.main`` when enabled."""
    app = web.Application(middlewares=[_bearer], client_max_size=MAX_BODY_BYTES)
    app[RUNTIME] = runtime
    app[MAPPING] = mapping
    app[CONFIG] = config
    app[CLOCK] = clock
    app[OPENAPI] = _openapi_document(mapping.name)
    app.router.add_get(PATH_HEALTH, healthz)
    app.router.add_get(PATH_OPENAPI, openapi)
    app.router.add_post(PATH_MESSAGES, submit)
    app.router.add_get(PATH_MESSAGES, list_sent)
    app.router.add_get(PATH_MESSAGE, sent_status)
    app.router.add_get(PATH_INBOX, list_inbox)
    app.router.add_get(PATH_INBOX_ITEM, get_inbox)
    app.router.add_post(PATH_READ, mark_read)
    app.router.add_post(PATH_ANSWER, answer)
    return app
