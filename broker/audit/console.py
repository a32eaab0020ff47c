"""The security officer's web console on the audit log: search, one entry, the chain.

Plain server-rendered HTML in Swedish, usable without JavaScript, mounted by
:func:`add_audit_console` on the broker's mTLS app as a sub-application under
``/konsol/``. Who the officer is comes from the client certificate (the app's
identity middleware); every page is GET only, so there is no form to forge::

    GET /konsol/                 search form; with a query, one page of results
                                 (barn, myndighet, typ, handelse, fran, till, efter)
    GET /konsol/post/{index}     one entry, every field, and its inclusion proof
                                 verified here against the latest signed checkpoint
                                 (?ny=1 signs a fresh checkpoint first)
    GET /konsol/kedja            the latest checkpoint and its signature; with
                                 ?fran=N&rot=<hex>, the log's consistency with that
                                 earlier checkpoint, verified here (?ny=1 as above)

Nothing a page says is verified is taken from the reader on trust: the
checkpoint's signature is checked with the broker's verifier key
(``note.open_checkpoint``), the entry's leaf hash is recomputed from its
canonical bytes, and proofs are checked with ``verify_inclusion`` and
``verify_consistency`` against the root of that signed checkpoint.

Security officers only: anyone else gets a Swedish 403 page, and the attempt
is logged through ``AuditReader.refused`` first. Every read passes the
officer's id (the certificate's common name) to the reader, which logs it.

Errors, each a Swedish HTML page (never a traceback)::

    AuditLookupError, unknown page   404
    AuditRangeError, bad form input  400 (the form again, the error beside the field)
    not a security officer           403
    Unavailable                      503
    anything else                    500  the exception type in the log only

Must never: load anything from another origin or run a script (the
Content-Security-Policy forbids both); show a failed check as verified.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from types import MappingProxyType
from typing import Any, Final, TypeVar
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import jinja2
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from broker.audit.entry import parse_canonical
from broker.audit.http import officer_or_refuse
from broker.audit.merkle import AuditProofError, leaf_hash, verify_consistency, verify_inclusion
from broker.audit.note import CheckpointError, open_checkpoint
from broker.audit.ports import (
    AuditFilter,
    AuditLookupError,
    AuditRangeError,
    AuditReader,
    Checkpoint,
    LoggedEntry,
)
from broker.errors import BadRequest, Forbidden, NotFound, Unavailable
from schemas.audit import AuditEntry, AuditEvent
from schemas.envelope import ConsentBasis, Kind
from schemas.receipts import ReceiptStatus

__all__ = [
    "EVENT_LABELS",
    "KIND_LABELS",
    "PAGE_SIZE",
    "PREFIX",
    "STATUS_LABELS",
    "SignedTree",
    "Verdict",
    "add_audit_console",
    "check_consistency",
    "check_inclusion",
]

_log = structlog.get_logger("broker.audit.console")

_Enum = TypeVar("_Enum", Kind, AuditEvent)

PREFIX: Final = "/konsol"
#: Entries one result page shows.
PAGE_SIZE: Final = 50

# --- Swedish words ------------------------------------------------------------------------------

#: What each audit event is called in the console.
EVENT_LABELS: Mapping[AuditEvent, str] = MappingProxyType(
    {
        AuditEvent.ACCEPTED: "Godkänt",
        AuditEvent.REJECTED: "Avvisat",
        AuditEvent.ROUTED: "Vidarebefordrat",
        AuditEvent.RECEIPT: "Kvitto",
        AuditEvent.DEAD_LETTERED: "Kunde inte levereras",
        AuditEvent.CONSENT_REGISTERED: "Samtycke registrerat",
        AuditEvent.CONSENT_REVOKED: "Samtycke återkallat",
        AuditEvent.DIRECTORY_CHANGED: "Katalogen ändrad",
        AuditEvent.KEY_CHANGED: "Nyckel bytt",
        AuditEvent.ESCALATION: "Eskalering",
        AuditEvent.DEADLINE_HANDLED: "Ärende avslutat utan svar",
        AuditEvent.AUDIT_READ: "Läsning av loggen",
        AuditEvent.ACCESS_REFUSED: "Nekad åtkomst",
    }
)

#: What each kind of message is called at a Swedish agency.
KIND_LABELS: Mapping[Kind, str] = MappingProxyType(
    {
        Kind.REFERRAL: "Remiss",
        Kind.TEAM_INVITATION: "Inbjudan till Barnets team",
        Kind.TEAM_RESPONSE: "Svar på inbjudan",
        Kind.CONCERN_REPORT: "Orosanmälan",
        Kind.PLAN_UPDATE: "Barnets plan",
        Kind.RECEIPT: "Kvittens",
        Kind.ESCALATION: "Eskalering",
    }
)

#: A receipt's status; ``accepted`` is the broker's acceptance, not the recipient's answer.
STATUS_LABELS: Mapping[ReceiptStatus, str] = MappingProxyType(
    {
        ReceiptStatus.ACCEPTED: "Godkänd av förmedlingen",
        ReceiptStatus.REJECTED: "Avvisad",
        ReceiptStatus.DELIVERED: "Levererad",
        ReceiptStatus.HANDED_OVER: "Överlämnad",
        ReceiptStatus.READ: "Läst",
        ReceiptStatus.ANSWERED: "Besvarad",
        ReceiptStatus.EXPIRED: "Utgången",
    }
)

#: How many hex digits of a pseudonym a table shows; the full one is in its title and detail.
_SHORT: Final = 8

# --- verification (pure) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one check as the console states it: verified or not, and why."""

    ok: bool
    text: str
    pending: bool = False  # not checkable yet (newer than the checkpoint); not a failure
    reason: str | None = None  # a short stable code for the log when it failed


@dataclass(frozen=True, slots=True)
class SignedTree:
    """What a checkpoint whose signature verified says; only these values are trusted."""

    origin: str
    size: int
    root: bytes


def _entry_matches(logged: LoggedEntry) -> bool:
    """The shown entry is the one whose canonical bytes are the leaf."""
    if leaf_hash(logged.canonical) != logged.leaf_hash:
        return False
    try:
        return parse_canonical(logged.canonical) == logged.entry
    except ValueError:
        return False


def check_inclusion(
    logged: LoggedEntry, opened: SignedTree | None, proof: Sequence[bytes]
) -> Verdict:
    """Whether ``logged`` is in the tree of the signed checkpoint ``opened`` by ``proof``."""
    if opened is None:
        return Verdict(
            ok=False,
            text="Ej verifierad: checkpointens signatur stämmer inte med brokerns nyckel.",
            reason="checkpoint_signature",
        )
    if not _entry_matches(logged):
        return Verdict(
            ok=False,
            text="Ej verifierad: postens innehåll stämmer inte med dess hash i loggen.",
            reason="leaf_mismatch",
        )
    if logged.index >= opened.size:
        return Verdict(
            ok=False,
            pending=True,
            text=(
                f"Inte verifierad ännu: posten är nyare än senaste checkpoint "
                f"(storlek {opened.size})."
            ),
        )
    try:
        verify_inclusion(logged.leaf_hash, logged.index, opened.size, proof, opened.root)
    except AuditProofError as exc:
        return Verdict(
            ok=False,
            text=(
                f"Ej verifierad: beviset visar inte att posten ingår i loggen "
                f"(checkpoint storlek {opened.size})."
            ),
            reason=exc.reason,
        )
    return Verdict(
        ok=True,
        text=(
            f"Verifierad: posten ingår i loggen (checkpoint storlek {opened.size}, "
            f"rot {opened.root.hex()})."
        ),
    )


def check_consistency(
    old_size: int, old_root: bytes, opened: SignedTree | None, proof: Sequence[bytes]
) -> Verdict:
    """Whether the signed checkpoint ``opened`` extends the earlier tree of ``old_size``."""
    if opened is None:
        return Verdict(
            ok=False,
            text="Kan inte kontrolleras: checkpointens signatur stämmer inte med brokerns nyckel.",
            reason="checkpoint_signature",
        )
    try:
        verify_consistency(old_size, opened.size, proof, old_root, opened.root)
    except AuditProofError as exc:
        return Verdict(
            ok=False,
            text=(
                f"Ej verifierad: loggen i storlek {opened.size} bygger inte vidare på "
                f"checkpointen med storlek {old_size} och den angivna roten. "
                "Loggen kan ha ändrats i efterhand."
            ),
            reason=exc.reason,
        )
    return Verdict(
        ok=True,
        text=(
            f"Verifierad: loggen i storlek {opened.size} bygger vidare på checkpointen med "
            f"storlek {old_size}; inget som fanns då har ändrats."
        ),
    )


# --- app state ----------------------------------------------------------------------------------

_READER: Final = web.AppKey[AuditReader]("console_reader")
_VERIFIER: Final = web.AppKey[str]("console_verifier")
_TEMPLATES: Final = web.AppKey[jinja2.Environment]("console_templates")
_TZ: Final = web.AppKey[tzinfo]("console_tz")

#: The officer of the request (the certificate's common name), set by the middleware.
_OFFICER: Final = web.RequestKey[str]("console_officer")

_PSEUDONYM: Final = re.compile(r"^[0-9a-f]{64}$")
_AGENCY: Final = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_DIGITS: Final = re.compile(r"^[0-9]{1,18}$")
_ROOT_HEX: Final = re.compile(r"^[0-9a-f]{64}$")
_SEARCH_FIELDS: Final = ("barn", "myndighet", "typ", "handelse", "fran", "till")

_CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS: Final = MappingProxyType(
    {
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        # The log names children and agencies: no shared or browser cache may keep it.
        "Cache-Control": "no-store",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
)

# --- responses ----------------------------------------------------------------------------------


def _render(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    base = {"officer": request.get(_OFFICER), "next_url": None, "first_url": None}
    html = request.app[_TEMPLATES].get_template(template).render(base | context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _error_page(request: web.Request, status: int, title: str, text: str) -> web.Response:
    return _render(request, "error.html", status=status, title=title, text=text)


def _failure(exc: Exception) -> tuple[int, str, str]:
    """The status, title and text of the page for a failure."""
    if isinstance(exc, Forbidden):
        return (
            403,
            "Åtkomst nekad",
            "Granskningskonsolen är bara för säkerhetsansvariga. Försöket har loggats.",
        )
    if isinstance(exc, AuditLookupError | NotFound):
        return 404, "Posten finns inte", "Det finns ingen post med det numret i loggen."
    if isinstance(exc, AuditRangeError | BadRequest):
        return 400, "Felaktig begäran", "Storlekarna eller intervallet passar inte loggen."
    if isinstance(exc, Unavailable):
        return (
            503,
            "Loggen går inte att nå just nu",
            "Försök igen om en stund eller kontakta driften om felet består.",
        )
    # The type only: an exception's text could hold a connection URL.
    _log.error("console_internal_error", error_type=type(exc).__name__)
    return (
        500,
        "Något gick fel",
        "Konsolen kunde inte visa sidan. Försök igen om en stund eller kontakta driften.",
    )


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Put the strict CSP and the no-cache headers on every response the console gives."""
    response = await handler(request)
    response.headers.update(_SECURITY_HEADERS)
    return response


@web.middleware
async def _error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a Swedish page; foreign detail goes to the log by type only."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < web.HTTPBadRequest.status_code:
            return web.Response(status=exc.status, headers=exc.headers)
        if exc.status == web.HTTPNotFound.status_code:
            title, text = "Sidan finns inte", "Adressen finns inte i konsolen."
        elif exc.status == web.HTTPMethodNotAllowed.status_code:
            title, text = "Det går inte att göra så här", "Sidan tar bara emot GET."
        else:
            title, text = "Felaktig begäran", "Konsolen kunde inte förstå begäran."
        response = _error_page(request, exc.status, title, text)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:  # noqa: BLE001 - the one place a failure becomes a safe page
        return _error_page(request, *_failure(exc))


@web.middleware
async def _officer_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Let security officers through; log anyone else's attempt, then refuse it."""
    request[_OFFICER] = await officer_or_refuse(request, request.app[_READER])
    return await handler(request)


# --- the search form ----------------------------------------------------------------------------


@dataclass
class _SearchForm:
    """The search as typed, what it means, and what is wrong with it (per field)."""

    values: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)
    query: AuditFilter = field(default_factory=AuditFilter)
    after: int | None = None

    @property
    def submitted(self) -> bool:
        return any(name in self.values for name in (*_SEARCH_FIELDS, "efter"))


#: The years a search may name (the log began in this century; the console is in use before 9999).
FIRST_YEAR: Final = 1900
LAST_YEAR: Final = 9998


def _start_of(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time.min, tzinfo=tz)


def _enum_field(
    values: Mapping[str, str], name: str, kind: type[_Enum], errors: dict[str, str], text: str
) -> _Enum | None:
    if not values.get(name):
        return None
    try:
        return kind(values[name])
    except ValueError:
        errors[name] = text
        return None


def _date_field(values: Mapping[str, str], name: str, errors: dict[str, str]) -> date | None:
    if not values.get(name):
        return None
    try:
        day = date.fromisoformat(values[name])
    except ValueError:
        errors[name] = "Ange datumet som ÅÅÅÅ-MM-DD."
        return None
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        # Outside these years the day's start in UTC (or the day after) does not exist.
        errors[name] = f"Ange ett datum mellan år {FIRST_YEAR} och {LAST_YEAR}."
        return None
    return day


def _pattern_field(
    values: Mapping[str, str],
    name: str,
    pattern: re.Pattern[str],
    errors: dict[str, str],
    text: str,
) -> str | None:
    value = values.get(name) or None
    if value is not None and not pattern.fullmatch(value):
        errors[name] = text
        return None
    return value


def _parse_search(query: Mapping[str, str], tz: tzinfo) -> _SearchForm:
    values = {name: query[name].strip() for name in (*_SEARCH_FIELDS, "efter") if name in query}
    if values.get("barn"):
        values["barn"] = values["barn"].lower()
    form = _SearchForm(values=values)
    errors = form.errors
    child = _pattern_field(
        values, "barn", _PSEUDONYM, errors, "Ange barnets pseudonym: 64 tecken, siffror och a-f."
    )
    agency = _pattern_field(
        values, "myndighet", _AGENCY, errors, "Ange myndighetens id, t.ex. torsviks-skola."
    )
    kind = _enum_field(values, "typ", Kind, errors, "Välj en typ i listan.")
    event = _enum_field(values, "handelse", AuditEvent, errors, "Välj en händelse i listan.")
    since_day = _date_field(values, "fran", errors)
    until_day = _date_field(values, "till", errors)
    if since_day is not None and until_day is not None and until_day < since_day:
        errors["till"] = "Till-datumet får inte vara före från-datumet."
    after = _pattern_field(
        values,
        "efter",
        _DIGITS,
        errors,
        "Sidnumreringen i adressen är felaktig; börja om sökningen.",
    )
    if errors:
        return form
    form.after = None if after is None else int(after)
    form.query = AuditFilter(
        child=child,
        agency=agency,
        kind=kind,
        event=event,
        since=None if since_day is None else _start_of(since_day, tz),
        # "Till" is the whole day: up to the start of the next one.
        until=None if until_day is None else _start_of(until_day + timedelta(days=1), tz),
    )
    return form


def _page_url(values: Mapping[str, str], after: int | None) -> str:
    params = [(name, values[name]) for name in _SEARCH_FIELDS if values.get(name)]
    if after is not None:
        params.append(("efter", str(after)))
    return f"{PREFIX}/?{urlencode(params)}"


# --- handlers -----------------------------------------------------------------------------------


async def _search(request: web.Request) -> web.Response:
    form = _parse_search(request.query, request.app[_TZ])
    if not form.submitted:
        # No query, no read: opening the console does not touch the log.
        return _render(request, "search.html", form=form, page=None)
    if form.errors:
        return _render(request, "search.html", status=400, form=form, page=None)
    page = await request.app[_READER].search(
        form.query, after=form.after, limit=PAGE_SIZE, officer=request[_OFFICER]
    )
    next_url = None if page.next_after is None else _page_url(form.values, page.next_after)
    first_url = _page_url(form.values, None) if form.after is not None else None
    return _render(
        request, "search.html", form=form, page=page, next_url=next_url, first_url=first_url
    )


def _open(checkpoint: Checkpoint, verifier: str) -> SignedTree | None:
    try:
        origin, size, root = open_checkpoint(checkpoint.note, verifier)
    except CheckpointError as exc:
        _log.warning("audit_checkpoint_unverified", reason=exc.reason)
        return None
    return SignedTree(origin=origin, size=size, root=root)


def _index(request: web.Request) -> int:
    value = request.match_info["index"]
    if not _DIGITS.fullmatch(value):
        raise NotFound()
    return int(value)


def _fresh(request: web.Request) -> bool:
    return request.query.get("ny") == "1"


async def _entry(request: web.Request) -> web.Response:
    reader = request.app[_READER]
    officer = request[_OFFICER]
    index = _index(request)
    logged = await reader.entry(index, officer=officer)
    checkpoint = await reader.checkpoint(officer=officer, fresh=_fresh(request))
    opened = _open(checkpoint, request.app[_VERIFIER])
    proof: list[bytes] = []
    if opened is not None and index < opened.size:
        proof = await reader.inclusion_proof(index, opened.size, officer=officer)
    verdict = check_inclusion(logged, opened, proof)
    if not verdict.ok and not verdict.pending:
        # A failed check is a security event: the officer sees it, and so does the log.
        _log.warning("audit_inclusion_unverified", index=index, reason=verdict.reason)
    return _render(
        request,
        "entry.html",
        logged=logged,
        entry=logged.entry,
        opened=opened,
        checkpoint=checkpoint,
        proof=proof,
        verdict=verdict,
    )


def _parse_previous(query: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    values = {name: query[name].strip() for name in ("fran", "rot") if name in query}
    errors: dict[str, str] = {}
    if values.get("fran") and not _DIGITS.fullmatch(values["fran"]):
        errors["fran"] = "Ange storleken som ett heltal, t.ex. 1200."
    if values.get("rot"):
        values["rot"] = values["rot"].lower()
        if not _ROOT_HEX.fullmatch(values["rot"]):
            errors["rot"] = "Ange roten som 64 tecken siffror och a-f."
    if bool(values.get("fran")) != bool(values.get("rot")):
        missing = "rot" if values.get("fran") else "fran"
        errors.setdefault(missing, "Ange både storlek och rot från den tidigare checkpointen.")
    return values, errors


async def _chain(request: web.Request) -> web.Response:
    reader = request.app[_READER]
    officer = request[_OFFICER]
    values, errors = _parse_previous(request.query)
    checkpoint = await reader.checkpoint(officer=officer, fresh=_fresh(request))
    opened = _open(checkpoint, request.app[_VERIFIER])
    consistency: Verdict | None = None
    if not errors and values.get("fran") and values.get("rot"):
        old_size, old_root = int(values["fran"]), bytes.fromhex(values["rot"])
        proof: list[bytes] = []
        if opened is not None and old_size > opened.size:
            errors["fran"] = (
                f"Storleken är större än senaste checkpoint ({opened.size}); "
                "den kan inte ha visats tidigare."
            )
        else:
            if opened is not None:
                proof = await reader.consistency_proof(old_size, opened.size, officer=officer)
            consistency = check_consistency(old_size, old_root, opened, proof)
            if not consistency.ok:
                _log.warning(
                    "audit_consistency_unverified", size1=old_size, reason=consistency.reason
                )
    return _render(
        request,
        "chain.html",
        status=400 if errors else 200,
        checkpoint=checkpoint,
        opened=opened,
        values=values,
        errors=errors,
        consistency=consistency,
        later_url=(
            None
            if opened is None
            else f"{PREFIX}/kedja?{urlencode({'fran': opened.size, 'rot': opened.root.hex()})}"
        ),
    )


# --- assembly -----------------------------------------------------------------------------------


def _basis(entry: AuditEntry) -> str | None:
    if entry.basis is None:
        return None
    if isinstance(entry.basis, ConsentBasis):
        return f"Samtycke {entry.basis.consent_id}"
    return f"Rättslig grund {entry.basis.ref}"


def _short(pseudonym: str) -> str:
    return pseudonym[:_SHORT] + "\N{HORIZONTAL ELLIPSIS}"


def _environment(tz: tzinfo) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("broker.audit", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters["tid"] = lambda value: value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
    env.filters["kort"] = _short
    env.globals.update(
        EVENT_LABELS=EVENT_LABELS,
        KIND_LABELS=KIND_LABELS,
        STATUS_LABELS=STATUS_LABELS,
        EVENTS=list(AuditEvent),
        KINDS=list(Kind),
        PREFIX=PREFIX,
        basis_text=_basis,
        child_url=lambda child: f"{PREFIX}/?{urlencode({'barn': child})}",
    )
    return env


def add_audit_console(
    app: web.Application,
    reader: AuditReader,
    *,
    verifier: str,
    display_tz: tzinfo | None = None,
) -> None:
    """Mount the security officer's console on the broker's app under ``/konsol/``.

    ``verifier`` is the broker's checkpoint verifier key (a C2SP signed-note
    vkey): the console trusts a checkpoint only if it verifies with it. Times
    are shown, and the search's dates read, in ``display_tz``
    (Europe/Stockholm unless given). Call it before the application starts.
    """
    console = web.Application(
        middlewares=[
            _security_headers,
            _error_pages,
            web.normalize_path_middleware(append_slash=True, merge_slashes=False),
            _officer_only,
        ]
    )
    console[_READER] = reader
    console[_VERIFIER] = verifier
    tz = display_tz if display_tz is not None else ZoneInfo("Europe/Stockholm")
    console[_TZ] = tz
    console[_TEMPLATES] = _environment(tz)
    console.router.add_get("/", _search, name="console.search")
    console.router.add_get("/post/{index}", _entry, name="console.entry")
    console.router.add_get("/kedja", _chain, name="console.chain")
    app.add_subapp(PREFIX, console)
