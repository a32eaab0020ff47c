"""The security officer's JSON routes into the audit log (mounted on the broker's mTLS app).

Handlers only parse, call :class:`~broker.audit.ports.AuditReader` with the
officer's id (the certificate's common name) and shape the answer; the reader
logs every read as an ``audit_read`` entry before it answers::

    GET /v1/audit/entries                  search: child, agency, kind, event, since,
                                           until, after, limit (default 100, at most 500)
    GET /v1/audit/entries/{index}          one entry; ?proof=1 adds its inclusion proof
                                           against the latest checkpoint
    GET /v1/audit/proofs/inclusion         ?index=&size=  RFC 9162 inclusion proof
    GET /v1/audit/proofs/consistency       ?size1=&size2=  RFC 9162 consistency proof
    GET /v1/audit/checkpoint               the latest signed note (text/plain); ?fresh=1
                                           signs one of the current size first
    GET /v1/audit/export                   ?start=&end=  entries [start, end) as JSON lines

Security officers only. Any other role gets 403, and the attempt is itself
logged through ``AuditReader.refused`` first (who looked, or tried to look,
at the log is part of the log). Errors follow ``broker.errors``: a bad
parameter is 400 naming the parameter (never echoing its value),
``AuditLookupError`` is 404, ``AuditRangeError`` is 400. Hashes are lower-case
hex; entries are the JSON object whose canonical form is the Merkle leaf
(``broker.audit.entry``).

Must never: answer a read without passing the officer's id to the reader, or
refuse one without logging the refusal; put a submitted value in an error
message.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Final, TypeVar

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from broker.audit.ports import (
    MAX_PAGE,
    AuditFilter,
    AuditLookupError,
    AuditRangeError,
    AuditReader,
    LoggedEntry,
)
from broker.errors import BadRequest, Forbidden, InternalError, NotFound
from broker.http import PEER, peer_actor
from broker.openapi import (
    PATH_AUDIT_CHECKPOINT,
    PATH_AUDIT_CONSISTENCY,
    PATH_AUDIT_ENTRIES,
    PATH_AUDIT_ENTRY,
    PATH_AUDIT_EXPORT,
    PATH_AUDIT_INCLUSION,
)
from keys.ca import Role
from schemas.audit import AuditEvent
from schemas.envelope import Kind

__all__ = [
    "DEFAULT_PAGE",
    "PATH_AUDIT_CHECKPOINT",
    "PATH_AUDIT_CONSISTENCY",
    "PATH_AUDIT_ENTRIES",
    "PATH_AUDIT_ENTRY",
    "PATH_AUDIT_EXPORT",
    "PATH_AUDIT_INCLUSION",
    "READER",
    "add_audit_routes",
    "officer_or_refuse",
]

_log = structlog.get_logger("broker.audit.http")


#: Entries a search returns when ``limit`` is not given.
DEFAULT_PAGE: Final = 100

READER: Final = web.AppKey[AuditReader]("audit_reader")
_ORIGIN: Final = web.AppKey[str]("audit_origin")

_PSEUDONYM: Final = re.compile(r"^[0-9a-f]{64}$")
_AGENCY: Final = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_STAFF_ID: Final = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_DIGITS: Final = re.compile(r"^[0-9]{1,18}$")
_PARAM_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,31}$")
#: The longest query an ``audit_read`` entry holds (schemas.audit.AuditQuery).
_MAX_QUERY: Final = 1_000
_TRUE: Final = frozenset({"1", "true"})
_FALSE: Final = frozenset({"0", "false"})
_NDJSON: Final = "application/x-ndjson"

_SEARCH_PARAMS: Final = frozenset(
    {"child", "agency", "kind", "event", "since", "until", "after", "limit"}
)

_Enum = TypeVar("_Enum", Kind, AuditEvent)


# --- who may read -------------------------------------------------------------------------------


def _query_text(request: web.Request) -> str:
    # The route and its query string as sent (percent-encoded, so one line of ASCII); no body.
    return request.rel_url.raw_path_qs[:_MAX_QUERY]


async def officer_or_refuse(request: web.Request, reader: AuditReader) -> str:
    """The officer id of a security officer's request; anyone else is logged, then refused."""
    peer = request[PEER]
    if peer.role is Role.SECURITY_OFFICER:
        return peer.common_name
    # Patient data law: an attempt to look at the log is logged like a look.
    await reader.refused(actor=peer_actor(peer), query=_query_text(request))
    refusal = Forbidden("The audit log is for security officers.")
    refusal.audited = True
    raise refusal


# --- parameters ---------------------------------------------------------------------------------


def _only(request: web.Request, allowed: frozenset[str]) -> None:
    """Refuse a parameter the route does not know: a mistyped filter must not widen a search."""
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        # Only a name that looks like one is repeated back; anything else was typed by someone.
        named = f" {unknown[0]!r}" if _PARAM_NAME.fullmatch(unknown[0]) else ""
        raise BadRequest(f"Unknown parameter{named}; allowed: {', '.join(sorted(allowed))}.")


def _text(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"Give the parameter {name!r} at most once.")
    return values[0] if values and values[0] else None


def _int(
    request: web.Request, name: str, *, minimum: int = 0, maximum: int | None = None
) -> int | None:
    value = _text(request, name)
    if value is None:
        return None
    top = "" if maximum is None else f" and at most {maximum}"
    if not _DIGITS.fullmatch(value):
        raise BadRequest(
            f"The parameter {name!r} must be a whole number of at least {minimum}{top}."
        )
    number = int(value)
    if number < minimum or (maximum is not None and number > maximum):
        raise BadRequest(
            f"The parameter {name!r} must be a whole number of at least {minimum}{top}."
        )
    return number


def _required_int(request: web.Request, name: str, *, minimum: int = 0) -> int:
    number = _int(request, name, minimum=minimum)
    if number is None:
        raise BadRequest(f"The parameter {name!r} is required.")
    return number


def _flag(request: web.Request, name: str) -> bool:
    value = _text(request, name)
    if value is None or value in _FALSE:
        return False
    if value in _TRUE:
        return True
    raise BadRequest(f"The parameter {name!r} must be 1 or 0.")


def _choice(request: web.Request, name: str, kind: type[_Enum]) -> _Enum | None:
    value = _text(request, name)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise BadRequest(f"The parameter {name!r} must be one of: {allowed}.") from None


def _parse_time(value: str) -> datetime | None:
    """An ISO 8601 time with its offset (``Z`` allowed), or None if it is not one in UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return None  # a naive time means a different instant on every server
    try:
        parsed.astimezone(UTC)  # the log stores UTC: 0001-01-01T00:00+14:00 has no UTC time
    except OverflowError:
        return None
    return parsed


def _time(request: web.Request, name: str) -> datetime | None:
    value = _text(request, name)
    if value is None:
        return None
    parsed = _parse_time(value)
    if parsed is None:
        raise BadRequest(
            f"The parameter {name!r} must be an ISO 8601 time with an offset, "
            "e.g. 2026-11-25T10:00:00Z."
        )
    return parsed


def _pattern(request: web.Request, name: str, pattern: re.Pattern[str], what: str) -> str | None:
    value = _text(request, name)
    if value is not None and not pattern.fullmatch(value):
        raise BadRequest(f"The parameter {name!r} must be {what}.")
    return value


def _filter(request: web.Request) -> AuditFilter:
    since = _time(request, "since")
    until = _time(request, "until")
    if since is not None and until is not None and until <= since:
        raise BadRequest("The parameter 'until' must be later than 'since'.")
    return AuditFilter(
        child=_pattern(request, "child", _PSEUDONYM, "the child's 64-character pseudonym"),
        agency=_pattern(request, "agency", _AGENCY, "an agency id"),
        kind=_choice(request, "kind", Kind),
        event=_choice(request, "event", AuditEvent),
        since=since,
        until=until,
    )


# --- responses ----------------------------------------------------------------------------------


def _json(data: object) -> web.Response:
    response = web.json_response(data, dumps=json.dumps)
    # The log names children and agencies: no shared cache may keep it.
    response.headers["Cache-Control"] = "no-store"
    return response


def _entry_out(logged: LoggedEntry) -> dict[str, object]:
    return {
        "index": logged.index,
        "leaf_hash": logged.leaf_hash.hex(),
        # The object whose canonical JSON is the leaf (broker.audit.entry.canonical_bytes).
        "entry": logged.entry.model_dump(mode="json", exclude_none=True),
    }


def _hexes(proof: list[bytes]) -> list[str]:
    return [node.hex() for node in proof]


# --- handlers -----------------------------------------------------------------------------------


async def _search(request: web.Request) -> web.Response:
    reader = request.app[READER]
    officer = await officer_or_refuse(request, reader)
    _only(request, _SEARCH_PARAMS)
    query = _filter(request)
    after = _int(request, "after")
    limit = _int(request, "limit", minimum=1, maximum=MAX_PAGE)
    page = await reader.search(
        query, after=after, limit=DEFAULT_PAGE if limit is None else limit, officer=officer
    )
    return _json(
        {
            "entries": [_entry_out(logged) for logged in page.entries],
            "next_after": page.next_after,
            "log_size": page.log_size,
        }
    )


def _index(request: web.Request) -> int:
    value = request.match_info["index"]
    if not _DIGITS.fullmatch(value):
        raise BadRequest("The entry index 'index' must be a whole number of at least 0.")
    return int(value)


async def _entry(request: web.Request) -> web.Response:
    reader = request.app[READER]
    officer = await officer_or_refuse(request, reader)
    _only(request, frozenset({"proof"}))
    index = _index(request)
    with_proof = _flag(request, "proof")
    logged = await reader.entry(index, officer=officer)
    body = _entry_out(logged)
    if with_proof:
        checkpoint = await reader.checkpoint(officer=officer)
        if index < checkpoint.size:
            proof = await reader.inclusion_proof(index, checkpoint.size, officer=officer)
            body["inclusion"] = {
                "origin": checkpoint.origin,
                "size": checkpoint.size,
                "root": checkpoint.root.hex(),
                "proof": _hexes(proof),
                "checkpoint": checkpoint.note,
            }
        else:
            # Newer than the latest checkpoint: GET /v1/audit/checkpoint?fresh=1 first.
            body["inclusion"] = None
    return _json(body)


async def _inclusion(request: web.Request) -> web.Response:
    reader = request.app[READER]
    officer = await officer_or_refuse(request, reader)
    _only(request, frozenset({"index", "size"}))
    index = _required_int(request, "index")
    size = _required_int(request, "size", minimum=1)
    if index >= size:
        raise BadRequest("The parameter 'index' must be less than 'size'.")
    logged = await reader.entry(index, officer=officer)
    proof = await reader.inclusion_proof(index, size, officer=officer)
    return _json(
        {
            "origin": request.app[_ORIGIN],
            "index": index,
            "size": size,
            "leaf_hash": logged.leaf_hash.hex(),
            "proof": _hexes(proof),
        }
    )


async def _consistency(request: web.Request) -> web.Response:
    reader = request.app[READER]
    officer = await officer_or_refuse(request, reader)
    _only(request, frozenset({"size1", "size2"}))
    size1 = _required_int(request, "size1")
    size2 = _required_int(request, "size2")
    if size1 > size2:
        raise BadRequest("The parameter 'size1' must not be larger than 'size2'.")
    proof = await reader.consistency_proof(size1, size2, officer=officer)
    return _json(
        {"origin": request.app[_ORIGIN], "size1": size1, "size2": size2, "proof": _hexes(proof)}
    )


async def _checkpoint(request: web.Request) -> web.Response:
    reader = request.app[READER]
    officer = await officer_or_refuse(request, reader)
    _only(request, frozenset({"fresh"}))
    checkpoint = await reader.checkpoint(officer=officer, fresh=_flag(request, "fresh"))
    if checkpoint.origin != request.app[_ORIGIN]:
        # A checkpoint of another log would verify against the wrong history.
        _log.error("audit_checkpoint_origin_mismatch", expected=request.app[_ORIGIN])
        raise InternalError()
    response = web.Response(text=checkpoint.note, content_type="text/plain", charset="utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response


async def _export(request: web.Request) -> web.StreamResponse:
    reader = request.app[READER]
    officer = await officer_or_refuse(request, reader)
    _only(request, frozenset({"start", "end"}))
    start = _required_int(request, "start")
    end = _required_int(request, "end")
    if end < start:
        raise BadRequest("The parameter 'end' must not be less than 'start'.")
    lines = aiter(reader.export(start, end, officer=officer))
    # The first line is read before the headers go out, so that a range or lookup
    # error still becomes a 400 or 404 instead of a truncated 200.
    first = await anext(lines, None)
    response = web.StreamResponse(headers={"Cache-Control": "no-store"})
    response.content_type = _NDJSON
    response.charset = "utf-8"
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(first)
        async for line in lines:
            await response.write(line)
    except Exception as exc:  # noqa: BLE001 - any failure after the headers must cut the stream
        # The status is already sent: cut the connection so the client sees a broken
        # chunked body, never a short export that looks complete. The type only.
        _log.error("audit_export_failed", error_type=type(exc).__name__, start=start, end=end)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


# --- errors and assembly ------------------------------------------------------------------------


def _guarded(handler: Handler) -> Handler:
    """``handler`` with the reader's two errors translated into the broker's."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except AuditLookupError as exc:
            raise NotFound("No such entry, or a size beyond the log.") from exc
        except AuditRangeError as exc:
            raise BadRequest("The sizes or range make no sense for this log.") from exc

    return guarded


def add_audit_routes(app: web.Application, reader: AuditReader, *, origin: str) -> None:
    """Mount the security officer's audit routes on the broker's app (``origin`` names the log)."""
    app[READER] = reader
    app[_ORIGIN] = origin
    app.router.add_get(PATH_AUDIT_ENTRIES, _guarded(_search))
    app.router.add_get(PATH_AUDIT_ENTRY, _guarded(_entry))
    app.router.add_get(PATH_AUDIT_INCLUSION, _guarded(_inclusion))
    app.router.add_get(PATH_AUDIT_CONSISTENCY, _guarded(_consistency))
    app.router.add_get(PATH_AUDIT_CHECKPOINT, _guarded(_checkpoint))
    app.router.add_get(PATH_AUDIT_EXPORT, _guarded(_export))
