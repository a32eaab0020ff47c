"""The broker's HTTP API over mutual TLS: directory, message status, health, metrics.

Every request arrives over TLS with a client certificate from the area CA; the
server context (``keys.ca.server_ssl_context``, ``CERT_REQUIRED``) refuses any
other peer during the handshake, before aiohttp sees a byte, and
:func:`serve_http` refuses a context that would not. Inside, a middleware
reads the verified certificate's role and agency into a
:class:`~keys.ca.PeerIdentity` on the request; a request that somehow arrives
without one (the app served without TLS by mistake) is refused with 401.

Routes and who may use them (roles from ``urn:backa:role:<role>``)::

    GET /v1/directory            any role    the area's signed directory entries
    GET /v1/messages/{id}        adapter of the sender or a recipient, security_officer,
                                 operator; anyone else 404, exactly as for an unknown id
    GET /healthz                 any role    alive; no dependency checked
    GET /readyz                  any role    every readiness probe, 200 or 503
    GET /metrics                 operator, security_officer; others 403
    GET /openapi.json            any role    the contract (broker.openapi)

A recipient that is not the sender sees the message-level events and its own
copy's events and state, not the other recipients' (need to know: one
agency's answer to a referral is not another recipient's business). The
sender, security officers and operators see every recipient.

Metrics are for operators and security officers only: queue depths and
rejection counts per agency queue say how much an agency sends and receives.
Health endpoints need a certificate too, because TLS does: a load balancer or
Prometheus gets an operator certificate.

This module must never put a body, message content, a key, a personnummer or
a foreign exception's text in a response or in the canonical log line (one
per request: method, route template, status, duration, peer role and agency).
Errors follow ``broker.errors``; anything else is ``internal_error`` with the
detail in the log only.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Final, Protocol

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel

from broker.audit.entry import refused_access_entry
from broker.errors import (
    BadRequest,
    BrokerError,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    NotFound,
    Unauthenticated,
)
from broker.metrics import Metrics
from broker.openapi import (
    MESSAGE_ID_PATTERN,
    PATH_DIRECTORY,
    PATH_HEALTH,
    PATH_METRICS,
    PATH_OPENAPI,
    PATH_READY,
    PATH_TIMELINE,
    DirectoryResponse,
    EventOut,
    HealthResponse,
    MessageOut,
    ProbeResult,
    ReadinessResponse,
    RecipientStateOut,
    TimelineResponse,
    build_openapi,
)
from broker.records import MessageRecord, StatusEvent, Store
from broker.status import RecipientState, derive
from keys.ca import CertificateRoleError, PeerIdentity, Role, peer_identity_from_der
from schemas.directory import SignedDirectoryEntry

__all__ = [
    "CLOCK",
    "DIRECTORY",
    "METRICS",
    "PEER",
    "READINESS",
    "READINESS_TIMEOUT",
    "STORE",
    "Probe",
    "ServedDirectory",
    "create_app",
    "serve_http",
]

_log = structlog.get_logger("broker.http")

#: A readiness probe: returns when its dependency answers, raises otherwise.
Probe = Callable[[], Awaitable[None]]


class ServedDirectory(Protocol):
    """What GET /v1/directory needs: the area, the pinned root and the signed entries."""

    @property
    def area(self) -> str:
        """The area id."""
        ...

    @property
    def root_key(self) -> str:
        """The pinned area root public key, base64url."""
        ...

    def signed_entries(self) -> Sequence[SignedDirectoryEntry]:
        """Every winning entry in its root-signed form, as the root signed it."""
        ...


STORE: Final = web.AppKey[Store]("store")
DIRECTORY: Final = web.AppKey[Callable[[], ServedDirectory]]("directory")
READINESS: Final = web.AppKey[tuple[tuple[str, Probe], ...]]("readiness")
READINESS_TIMEOUT: Final = web.AppKey[float]("readiness_timeout")
METRICS: Final = web.AppKey[Metrics]("metrics")
CLOCK: Final = web.AppKey[Callable[[], datetime]]("clock")
_OPENAPI: Final = web.AppKey[bytes]("openapi")

#: The verified peer of the request, set by the identity middleware.
PEER: Final = web.RequestKey[PeerIdentity]("peer")

_MESSAGE_ID: Final = re.compile(MESSAGE_ID_PATTERN)
_ANY_MESSAGE: Final = frozenset({Role.SECURITY_OFFICER, Role.OPERATOR})
_METRICS_ROLES: Final = frozenset({Role.SECURITY_OFFICER, Role.OPERATOR})
_JSON: Final = "application/json"


# --- responses ----------------------------------------------------------------------------------


def _json_response(body: bytes, *, status: int = 200) -> web.Response:
    response = web.Response(body=body, status=status, content_type=_JSON)
    # Status metadata is about children's cases: no shared cache may keep it.
    response.headers["Cache-Control"] = "no-store"
    return response


def _model_response(model: BaseModel, *, status: int = 200) -> web.Response:
    return _json_response(model.model_dump_json().encode("utf-8"), status=status)


def _error_response(error: BrokerError) -> web.Response:
    return _json_response(json.dumps(error.body()).encode("utf-8"), status=error.http_status)


# --- middlewares --------------------------------------------------------------------------------


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return "(unmatched)" if resource is None else resource.canonical


@web.middleware
async def _log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Write the one canonical log line of the request, whatever happened inside."""
    started = time.perf_counter()
    status: int | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        peer: PeerIdentity | None = request.get(PEER)
        # Each request runs in its own task, so what a handler binds here stays here.
        _log.info(
            "http_request",
            method=request.method,
            route=_route_template(request),
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            peer_role=None if peer is None else peer.role.value,
            peer_agency=None if peer is None else peer.agency,
            peer_cn=None if peer is None else peer.common_name,
        )


def _from_http_exception(exc: web.HTTPException) -> BrokerError:
    if exc.status == web.HTTPNotFound.status_code:
        return NotFound()
    if exc.status == web.HTTPMethodNotAllowed.status_code:
        return MethodNotAllowed()
    if exc.status < web.HTTPInternalServerError.status_code:
        return BadRequest()
    return InternalError()


_STAFF_ID: Final = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


def peer_actor(peer: PeerIdentity | None) -> str:
    """The name an attempt is logged under: the person id, else the agency, else the role."""
    if peer is None:
        return "unidentified"  # a certificate of the area CA that names no usable role
    if _STAFF_ID.fullmatch(peer.common_name):
        return peer.common_name
    return peer.agency if peer.agency is not None else peer.role.value


async def _audit_refusal(request: web.Request) -> None:
    """Put a refused attempt in the audit log: who tried which route (no body, no answer)."""
    entry = refused_access_entry(
        actor=peer_actor(request.get(PEER)),
        route=f"{request.method} {request.rel_url.raw_path_qs}",
        at=request.config_dict[CLOCK](),
    )
    await request.config_dict[STORE].append_audit([entry])


@web.middleware
async def _map_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception into the JSON error body; foreign detail goes to the log only.

    Every 403 is also an ``access_refused`` audit entry, unless the route
    logged the attempt itself (the audit routes log it as a read).
    """
    try:
        return await handler(request)
    except BrokerError as exc:
        if exc.http_status >= web.HTTPInternalServerError.status_code:
            _log.warning("http_broker_error", code=exc.code, exc_info=True)
        if isinstance(exc, Forbidden) and not exc.audited:
            try:
                await _audit_refusal(request)
            except Exception:  # noqa: BLE001 - nothing was disclosed: the 403 stands, loudly logged
                _log.exception("access_refusal_not_audited")
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < web.HTTPBadRequest.status_code:
            raise  # a redirect or success raised on purpose
        response = _error_response(_from_http_exception(exc))
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:  # noqa: BLE001 - the one place a foreign failure becomes a safe 500
        _log.exception("http_internal_error")
        return _error_response(InternalError())


def _peer(request: web.Request) -> PeerIdentity:
    transport = request.transport
    ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        raise Unauthenticated("This API is only served over mutual TLS.")
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise Unauthenticated()
    try:
        return peer_identity_from_der(der)
    except CertificateRoleError as exc:
        raise Forbidden("The client certificate names no usable role or agency.") from exc


@web.middleware
async def _identify(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Put the verified peer on the request, or refuse it before any handler runs."""
    request[PEER] = _peer(request)
    return await handler(request)


# --- handlers -----------------------------------------------------------------------------------


async def _directory(request: web.Request) -> web.Response:
    served = request.app[DIRECTORY]()
    body = DirectoryResponse(
        area=served.area, root_key=served.root_key, entries=list(served.signed_entries())
    )
    return _model_response(body)


def _may_read(peer: PeerIdentity, record: MessageRecord) -> bool:
    if peer.role in _ANY_MESSAGE:
        return True
    if peer.role is not Role.ADAPTER or peer.agency is None:
        return False
    return peer.agency == record.sender or peer.agency in record.recipients


def _view(
    peer: PeerIdentity,
    record: MessageRecord,
    events: Sequence[StatusEvent],
    states: Sequence[RecipientState],
) -> TimelineResponse:
    if peer.role is Role.ADAPTER and peer.agency != record.sender:
        mine = peer.agency
        events = [e for e in events if e.agency is None or e.agency == mine]
        states = [s for s in states if s.agency == mine]
    return TimelineResponse(
        message=MessageOut.of(record),
        events=[EventOut.of(e) for e in events],
        recipients=[RecipientStateOut.of(s) for s in states],
    )


async def _timeline(request: web.Request) -> web.Response:
    message_id = request.match_info["message_id"]
    if not _MESSAGE_ID.fullmatch(message_id):
        raise BadRequest("The message id must be a lower-case UUID.")
    structlog.contextvars.bind_contextvars(message_id=message_id)
    peer = request[PEER]
    store = request.app[STORE]
    record = await store.get_message(message_id)
    # One answer for "no such id" and "not yours": the id's existence is not revealed.
    if record is None or not _may_read(peer, record):
        raise NotFound("No such message.")
    events = await store.timeline(message_id)
    return _model_response(_view(peer, record, events, derive(events, record.recipients)))


async def _health(request: web.Request) -> web.Response:
    return _model_response(HealthResponse(status="ok", time=request.app[CLOCK]()))


async def _probe(name: str, probe: Probe, limit_s: float) -> ProbeResult:
    try:
        async with asyncio.timeout(limit_s):
            await probe()
    except TimeoutError:
        _log.warning("readiness_probe_timeout", probe=name, limit_s=limit_s)
        return "timeout"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        # The type only: an exception's text may hold a connection URL with its password.
        _log.warning("readiness_probe_failed", probe=name, error_type=type(exc).__name__)
        return "failed"
    return "ok"


async def _ready(request: web.Request) -> web.Response:
    probes = request.app[READINESS]
    timeout = request.app[READINESS_TIMEOUT]
    results = await asyncio.gather(*(_probe(name, probe, timeout) for name, probe in probes))
    checks = dict(zip((name for name, _ in probes), results, strict=True))
    ready = all(r == "ok" for r in results)
    body = ReadinessResponse(status="ready" if ready else "unavailable", checks=checks)
    return _model_response(body, status=200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    if request[PEER].role not in _METRICS_ROLES:
        raise Forbidden("Metrics are for operators and security officers.")
    metrics = request.app[METRICS]
    response = web.Response(body=metrics.render())
    response.headers["Content-Type"] = metrics.content_type
    response.headers["Cache-Control"] = "no-store"
    return response


async def _openapi(request: web.Request) -> web.Response:
    return _json_response(request.app[_OPENAPI])


# --- assembly -----------------------------------------------------------------------------------


def create_app(
    *,
    store: Store,
    directory: Callable[[], ServedDirectory],
    readiness: Sequence[tuple[str, Probe]],
    metrics: Metrics,
    clock: Callable[[], datetime],
    readiness_timeout: float = 2.0,
    with_consents: bool = False,
    with_audit: bool = False,
    with_gaps: bool = False,
) -> web.Application:
    """The broker's HTTP application; serve it only with :func:`serve_http`.

    ``directory`` returns the current verified directory on each call, so a
    reloaded one is served at once; ``readiness`` names the probes GET /readyz
    runs, each under ``readiness_timeout`` seconds. ``with_consents`` and ``with_audit``
    document the routes ``broker.consent_http`` and ``broker.audit.http`` mount.
    """
    names = [name for name, _ in readiness]
    if len(set(names)) != len(names):
        raise ValueError(f"readiness probe names must be unique, got {names}")
    if not readiness_timeout > 0:
        raise ValueError("readiness_timeout must be positive")
    app = web.Application(middlewares=[_log_requests, _map_errors, _identify])
    app[STORE] = store
    app[DIRECTORY] = directory
    app[READINESS] = tuple(readiness)
    app[READINESS_TIMEOUT] = readiness_timeout
    app[METRICS] = metrics
    app[CLOCK] = clock
    app[_OPENAPI] = json.dumps(
        build_openapi(consents=with_consents, audit=with_audit, gaps=with_gaps)
    ).encode("utf-8")
    app.router.add_get(PATH_DIRECTORY, _directory)
    app.router.add_get(PATH_TIMELINE, _timeline)
    app.router.add_get(PATH_HEALTH, _health)
    app.router.add_get(PATH_READY, _ready)
    app.router.add_get(PATH_METRICS, _metrics)
    app.router.add_get(PATH_OPENAPI, _openapi)
    return app


async def serve_http(
    app: web.Application, *, host: str, port: int, ssl_context: ssl.SSLContext
) -> web.AppRunner:
    """Start serving ``app`` on ``host:port`` over mutual TLS; the caller cleans the runner up.

    Refuses a context that does not require a client certificate: the
    handshake, not the identity middleware, is the first guarantee.
    ``runner.addresses`` gives the bound address (useful with ``port=0``).
    """
    if ssl_context.verify_mode is not ssl.CERT_REQUIRED:
        raise ValueError("the HTTP API must be served with a context that requires client certs")
    # access_log=None: the canonical line of _log_requests replaces aiohttp's access log.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
