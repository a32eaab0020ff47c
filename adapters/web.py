"""The web inbox: where a stödsamordnare or a barnkontakt reads and answers messages.

Plain server-rendered HTML in Swedish, usable without JavaScript, mounted by
:func:`setup_web` as a sub-application under ``/inbox/``. It calls only the
runtime's :class:`~adapters.ports.InboxPort`, so a person in the browser and
an agency system on the API send the same signed receipts::

    GET  /inbox/                    received messages and "Skickat", newest first
    GET  /inbox/m/{id}              open one: sends the signed ``read`` receipt, shows it all
    POST /inbox/m/{id}/answer       accept or decline (with a reason): the ``answered`` receipt
    GET  /inbox/sent/{id}           the receipts of something this agency sent
    GET  /inbox/login               local accounts only: the login form
    POST /inbox/login               local accounts only: check the password, set the session
    POST /inbox/logout              local accounts only: drop the session

Who the person is comes from :class:`StaffAuth`: either a header set by a
trusted reverse proxy (only when ``trust_proxy_header`` says so), or local
accounts with scrypt-hashed passwords and an HMAC-signed session cookie.
Every POST form carries a CSRF token that is an HMAC of the session (or, in
header mode, of the staff id); a POST without a valid one is refused.

Errors, each a Swedish HTML page (never a traceback, never content)::

    UnknownMessageError      404  no such message here
    AnswerConflictError      409  already answered, or cannot be answered
    unauthenticated          303 to the login form (local accounts) or 401 (header mode)
    bad or missing CSRF      403
    a form left incomplete   422  the message page again, with the error beside the field
    anything else            500  the exception type in the log only

Must never: log content, a personnummer, a password or a submitted value (the
log gets message ids, staff ids and outcomes only); put a personnummer in a
title or a URL; load anything from another origin or run a script (the
Content-Security-Policy forbids both).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from types import MappingProxyType
from typing import Any, Final, TypeVar
from zoneinfo import ZoneInfo

import jinja2
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from adapters import web_labels as labels
from adapters.canonical import Received
from adapters.ports import AnswerConflictError, InboxPort, Staff, UnknownMessageError
from schemas.content import NEED_AREA_LABELS, NeedArea
from schemas.receipts import Answer, DeclineReason, ReceiptStatus

__all__ = [
    "AUTH",
    "PORT",
    "PREFIX",
    "STAFF",
    "LocalAccount",
    "StaffAuth",
    "hash_password",
    "setup_web",
    "verify_password",
]

_log = structlog.get_logger("adapters.web")

_Choice = TypeVar("_Choice", Answer, DeclineReason)

PREFIX: Final = "/inbox"

# --- passwords ----------------------------------------------------------------------------------

_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
_SALT_BYTES: Final = 16
_HASH_BYTES: Final = 32
#: Stored parameters above these are refused: a typo in config must not make
#: every login allocate gigabytes.
_MIN_SCRYPT_N: Final = 2
_MAX_SCRYPT_N: Final = 2**20
_MAX_SCRYPT_RP: Final = 32
_SCRYPT_MAXMEM: Final = 256 * 1024 * 1024
_HASH_FIELDS: Final = 6
#: Verified against when the staff id is unknown, so that a wrong id costs as
#: much time as a wrong password and does not reveal which ids exist.
_DUMMY_HASH: Final = (
    "scrypt$16384$8$1$Eg19TW0K6VkjcR5Spwr2Kg==$doFuZZMqH3CeRGb00HEWx84SnAuhnyBN8/5yHsKvmIw="
)
_MAX_PASSWORD_CHARS: Final = 1024


def _password_bytes(password: str) -> bytes:
    # NFC: "å" typed on one system as one code point and on another as "a" plus
    # a combining ring must be the same password.
    return unicodedata.normalize("NFC", password).encode("utf-8")


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The stored form ``scrypt$n$r$p$salt_b64$hash_b64`` of ``password`` (standard base64).

    ``salt`` is 16 random bytes unless given (tests pass a fixed one).
    """
    if salt is None:
        salt = os.urandom(_SALT_BYTES)
    if len(salt) != _SALT_BYTES:
        raise ValueError(f"the salt must be {_SALT_BYTES} bytes")
    digest = hashlib.scrypt(
        _password_bytes(password),
        salt=salt,
        n=_SCRYPT_N,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        dklen=_HASH_BYTES,
        maxmem=_SCRYPT_MAXMEM,
    )
    salt_b64 = base64.b64encode(salt).decode("ascii")
    hash_b64 = base64.b64encode(digest).decode("ascii")
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt_b64}${hash_b64}"


@dataclass(frozen=True)
class _ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _parse_hash(stored: str) -> _ScryptHash:
    parts = stored.split("$")
    if len(parts) != _HASH_FIELDS or parts[0] != "scrypt":
        raise ValueError("a stored password is not of the form scrypt$n$r$p$salt_b64$hash_b64")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValueError("a stored password has a bad number or base64 field") from exc
    if n < _MIN_SCRYPT_N or n & (n - 1) or n > _MAX_SCRYPT_N:
        raise ValueError(f"a stored password's scrypt n must be a power of two up to {2**20}")
    if not (1 <= r <= _MAX_SCRYPT_RP and 1 <= p <= _MAX_SCRYPT_RP):
        raise ValueError(f"a stored password's scrypt r and p must be 1..{_MAX_SCRYPT_RP}")
    if len(salt) < _SALT_BYTES or not digest:
        raise ValueError("a stored password's salt or hash is too short")
    return _ScryptHash(n=n, r=r, p=p, salt=salt, digest=digest)


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (from :func:`hash_password`), in constant time.

    Raises ``ValueError`` when ``stored`` is malformed: that is a configuration
    error, which :class:`LocalAccount` already refuses at start-up.
    """
    parsed = _parse_hash(stored)
    if len(password) > _MAX_PASSWORD_CHARS:
        return False
    candidate = hashlib.scrypt(
        _password_bytes(password),
        salt=parsed.salt,
        n=parsed.n,
        r=parsed.r,
        p=parsed.p,
        dklen=len(parsed.digest),
        maxmem=_SCRYPT_MAXMEM,
    )
    return hmac.compare_digest(candidate, parsed.digest)


# --- configuration ------------------------------------------------------------------------------

_STAFF_ID: Final = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")  # schemas.common.StaffId
_HEADER_NAME: Final = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_MIN_SECRET_BYTES: Final = 32
_MAX_DISPLAY_NAME: Final = 128


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class LocalAccount:
    """A person who signs in with a password; ``staff_id`` is also the user name."""

    staff_id: str
    display_name: str
    password_hash: str = field(repr=False)

    def __post_init__(self) -> None:
        if not _STAFF_ID.fullmatch(self.staff_id):
            raise ValueError("a local account's staff_id must be a valid staff id")
        if not self.display_name or len(self.display_name) > _MAX_DISPLAY_NAME:
            raise ValueError(f"a local account's display_name must be 1..{_MAX_DISPLAY_NAME} chars")
        _parse_hash(self.password_hash)


@dataclass(frozen=True)
class StaffAuth:
    """How the inbox knows who a person is; exactly one of two ways.

    * ``trust_proxy_header=True``: a reverse proxy that has authenticated the
      person sets ``staff_header`` (and optionally ``name_header``). The proxy
      must strip these headers from what clients send; the inbox trusts them
      only in this mode, and refuses a request without one with 401.
    * ``accounts`` (by staff id): a login form, scrypt passwords and a session
      cookie signed with ``secret``; without a session a page redirects there.

    ``secret`` (at least 32 random bytes) signs sessions and CSRF tokens in
    both modes; changing it signs everyone out. ``clock`` is injectable for tests.
    """

    secret: bytes = field(repr=False)
    accounts: Mapping[str, LocalAccount] = field(default_factory=dict, repr=False)
    trust_proxy_header: bool = False
    staff_header: str = "X-Backa-Staff"
    name_header: str | None = None
    cookie_secure: bool = True
    session_ttl: timedelta = timedelta(hours=8)
    clock: Callable[[], datetime] = _utcnow

    def __post_init__(self) -> None:
        if len(self.secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"StaffAuth.secret must be at least {_MIN_SECRET_BYTES} bytes")
        if self.trust_proxy_header == bool(self.accounts):
            raise ValueError(
                "StaffAuth needs exactly one way to sign in: trust_proxy_header, "
                "or at least one local account (not both)"
            )
        for name in (self.staff_header, self.name_header):
            if name is not None and not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"StaffAuth header name {name!r} is not a valid header name")
        for key, account in self.accounts.items():
            if key != account.staff_id:
                raise ValueError("StaffAuth.accounts must be keyed by each account's staff_id")
        if self.session_ttl <= timedelta(0):
            raise ValueError("StaffAuth.session_ttl must be positive")
        object.__setattr__(self, "accounts", MappingProxyType(dict(self.accounts)))


# --- app state ----------------------------------------------------------------------------------

PORT: Final = web.AppKey[InboxPort]("inbox_port")
AUTH: Final = web.AppKey[StaffAuth]("inbox_auth")
_TEMPLATES: Final = web.AppKey[jinja2.Environment]("inbox_templates")

#: The signed-in person of the request, set by the authentication middleware.
STAFF: Final = web.RequestKey[Staff]("inbox_staff")
_CSRF: Final = web.RequestKey[str]("inbox_csrf")

_SESSION_COOKIE: Final = "backa_inbox_session"
_LOGIN_COOKIE: Final = "backa_inbox_login"
_COOKIE_PATH: Final = f"{PREFIX}/"
_LOGIN_NONCE_TTL: Final = timedelta(hours=1)
_PUBLIC_ROUTES: Final = frozenset({"inbox.login_form", "inbox.login"})
_MESSAGE_ID: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: Where a login may send the browser on: inbox pages only, no query, no other host.
_NEXT: Final = re.compile(r"^/inbox/[A-Za-z0-9/_-]*$")
_CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS: Final = MappingProxyType(
    {
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        # Pages are about children's cases: no shared or browser cache may keep them.
        "Cache-Control": "no-store",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
)


# --- tokens -------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(auth: StaffAuth, domain: str, *parts: str) -> str:
    message = "\0".join((f"backa-inbox-{domain}-v1", *parts)).encode("utf-8")
    return _b64url(hmac.new(auth.secret, message, hashlib.sha256).digest())


def _account_binding(account: LocalAccount) -> str:
    # A new password ends every session signed for the old one.
    return hashlib.sha256(account.password_hash.encode("utf-8")).hexdigest()


def _mint_session(auth: StaffAuth, account: LocalAccount) -> str:
    expiry = str(int((auth.clock() + auth.session_ttl).timestamp()))
    mac = _mac(auth, "session", account.staff_id, expiry, _account_binding(account))
    return f"{_b64url(account.staff_id.encode('utf-8'))}.{expiry}.{mac}"


def _session_account(auth: StaffAuth, token: str | None) -> LocalAccount | None:
    if not token or token.count(".") != 2:  # noqa: PLR2004 - id.expiry.mac
        return None
    encoded_id, expiry, mac = token.split(".")
    try:
        staff_id = _unb64url(encoded_id).decode("utf-8")
        expires = int(expiry)
    except (ValueError, binascii.Error):
        return None
    account = auth.accounts.get(staff_id)
    if account is None:
        return None
    expected = _mac(auth, "session", staff_id, expiry, _account_binding(account))
    if not hmac.compare_digest(mac.encode("ascii", "replace"), expected.encode("ascii")):
        return None
    if auth.clock().timestamp() >= expires:
        return None
    return account


def _tokens_equal(given: object, expected: str) -> bool:
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


# --- identity -----------------------------------------------------------------------------------


def _is_surrogate(ch: str) -> bool:
    return "\ud800" <= ch <= "\udfff"


def _header_text(value: str) -> str:
    # aiohttp decodes header bytes as UTF-8 with surrogateescape; drop what is
    # not printable text rather than show mojibake or control characters.
    clean = "".join(ch for ch in value if ch.isprintable() and not _is_surrogate(ch))
    return clean.strip()[:_MAX_DISPLAY_NAME]


def _staff_from_header(request: web.Request, auth: StaffAuth) -> Staff | None:
    raw = request.headers.get(auth.staff_header)
    if raw is None or not _STAFF_ID.fullmatch(raw.strip()):
        return None
    staff_id = raw.strip()
    name = ""
    if auth.name_header is not None:
        name = _header_text(request.headers.get(auth.name_header, ""))
    return Staff(staff_id=staff_id, display_name=name or staff_id)


def _identify(request: web.Request, auth: StaffAuth) -> tuple[Staff, str] | None:
    """The person and their CSRF token, or ``None`` when nobody is signed in."""
    if auth.trust_proxy_header:
        staff = _staff_from_header(request, auth)
        if staff is None:
            return None
        return staff, _mac(auth, "csrf", "staff", staff.staff_id)
    token = request.cookies.get(_SESSION_COOKIE)
    account = _session_account(auth, token)
    if account is None or token is None:
        return None
    staff = Staff(staff_id=account.staff_id, display_name=account.display_name)
    return staff, _mac(auth, "csrf", "session", token)


# --- responses ----------------------------------------------------------------------------------


class _Refused(Exception):  # noqa: N818 - reads as what happened
    """A request the inbox refuses with a Swedish page; never carries a submitted value."""

    def __init__(self, status: int, title: str, text: str) -> None:
        super().__init__(status)
        self.status = status
        self.title = title
        self.text = text


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _render(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    auth = request.app[AUTH]
    base = {
        "agency": request.app[PORT].agency,
        "staff": request.get(STAFF),
        "csrf": request.get(_CSRF, ""),
        "can_logout": not auth.trust_proxy_header and request.get(STAFF) is not None,
    }
    html = request.app[_TEMPLATES].get_template(template).render(base | context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _error_page(request: web.Request, status: int, title: str, text: str) -> web.Response:
    return _render(request, "error.html", status=status, title=title, text=text)


_HTTP_ERRORS: Final = MappingProxyType(
    {
        404: ("Sidan finns inte", "Adressen finns inte i inkorgen. Kontrollera länken."),
        405: ("Det går inte att göra så här", "Sidan tar inte emot den här typen av begäran."),
        413: ("För mycket data", "Formuläret innehöll mer data än inkorgen tar emot."),
    }
)


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Put the strict CSP and the no-cache headers on every response the inbox gives."""
    response = await handler(request)
    response.headers.update(_SECURITY_HEADERS)
    return response


def _failure(exc: Exception) -> tuple[int, str, str]:
    """The status, title and text of the page for a failure."""
    if isinstance(exc, UnknownMessageError):
        return (
            404,
            "Meddelandet finns inte",
            "Det finns inget meddelande med den adressen i inkorgen.",
        )
    if isinstance(exc, AnswerConflictError):
        return (
            409,
            "Meddelandet kan inte besvaras",
            "Meddelandet är redan besvarat eller går inte att besvara. "
            "Öppna det igen för att se hur det besvarades.",
        )
    if isinstance(exc, _Refused):
        return exc.status, exc.title, exc.text
    # The type only: a port's exception text could quote content.
    _log.error("inbox_internal_error", error_type=type(exc).__name__)
    return (
        500,
        "Något gick fel",
        "Inkorgen kunde inte visa sidan. Försök igen om en stund eller kontakta "
        "supporten om felet består.",
    )


@web.middleware
async def _error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a Swedish page; foreign detail goes to the log by type only."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < web.HTTPBadRequest.status_code:
            return web.Response(status=exc.status, headers=exc.headers)
        title, text = _HTTP_ERRORS.get(
            exc.status, ("Felaktig begäran", "Inkorgen kunde inte förstå begäran.")
        )
        response = _error_page(request, exc.status, title, text)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:  # noqa: BLE001 - the one place a failure becomes a safe page
        return _error_page(request, *_failure(exc))


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Set who is signed in, or send them to sign in; check the CSRF token of every POST."""
    if request.match_info.route.name in _PUBLIC_ROUTES:
        return await handler(request)
    auth = request.app[AUTH]
    identified = _identify(request, auth)
    if identified is None:
        if auth.trust_proxy_header:
            raise _Refused(
                401,
                "Inloggning krävs",
                "Inkorgen vet inte vem du är. Logga in via organisationens inloggning.",
            )
        target = request.path if request.method == "GET" and _NEXT.fullmatch(request.path) else ""
        query = f"?next={target}" if target and target != f"{PREFIX}/" else ""
        return _see_other(f"{PREFIX}/login{query}")
    request[STAFF], request[_CSRF] = identified
    if request.method == "POST":
        form = await request.post()
        if not _tokens_equal(form.get("csrf"), request[_CSRF]):
            _log.warning("inbox_csrf_refused", route=request.match_info.route.name)
            raise _Refused(
                403,
                "Formuläret kunde inte skickas",
                "Formuläret saknade en giltig säkerhetskod. Ladda om sidan och försök igen.",
            )
    return await handler(request)


# --- handlers -----------------------------------------------------------------------------------


def _message_id(request: web.Request) -> str:
    message_id = request.match_info["message_id"]
    if not _MESSAGE_ID.fullmatch(message_id):
        raise UnknownMessageError(message_id)
    return message_id


async def _index(request: web.Request) -> web.Response:
    port = request.app[PORT]
    received = sorted(await port.list_received(), key=lambda r: r.received_at, reverse=True)
    sent = sorted(await port.list_sent(), key=lambda s: s.submitted_at, reverse=True)
    gaps = await port.gaps()
    return _render(request, "inbox.html", received=received, sent=sent, gaps=gaps)


def _message_page(
    request: web.Request,
    item: Received,
    *,
    status: int = 200,
    confirmed: bool = False,
    errors: Mapping[str, str] | None = None,
    chosen: str = "",
    chosen_reason: str = "",
) -> web.Response:
    return _render(
        request,
        "message.html",
        status=status,
        item=item,
        kind=item.kind.value,
        content=item.content,
        answerable=labels.is_answerable(item),
        informational=item.kind not in labels.ANSWERABLE_KINDS,
        confirmed=confirmed and item.state is ReceiptStatus.ANSWERED,
        errors=errors or {},
        chosen=chosen,
        chosen_reason=chosen_reason,
    )


def _is_prefetch(request: web.Request) -> bool:
    # A browser's speculative prefetch is nobody reading: answering it with an
    # error makes the browser fetch the page again when the person opens it.
    purpose = f"{request.headers.get('Sec-Purpose', '')} {request.headers.get('Purpose', '')}"
    return "prefetch" in purpose.lower()


async def _message(request: web.Request) -> web.Response:
    message_id = _message_id(request)
    staff = request[STAFF]
    if _is_prefetch(request):
        raise _Refused(
            503,
            "Sidan hämtas inte i förväg",
            "Meddelandet öppnas bara när du själv öppnar det.",
        )
    # Opening is reading: the port sends the signed read receipt once, after
    # the person is known, and only on a GET a person made (HEAD is not routed).
    item = await request.app[PORT].mark_read(message_id, staff.staff_id)
    _log.info("inbox_opened", message_id=message_id, staff_id=staff.staff_id)
    return _message_page(request, item, confirmed=request.query.get("svar") == "skickat")


def _choice(kind: type[_Choice], value: object) -> _Choice | None:
    """The enum member a form field names, or ``None`` for anything else."""
    if not isinstance(value, str):
        return None
    try:
        return kind(value)
    except ValueError:
        return None


async def _answer(request: web.Request) -> web.Response:
    message_id = _message_id(request)
    staff = request[STAFF]
    port = request.app[PORT]
    form = await request.post()
    item = await port.get_received(message_id)
    if item.kind not in labels.ANSWERABLE_KINDS:
        raise AnswerConflictError(message_id)
    answer = _choice(Answer, form.get("answer"))
    reason = _choice(DeclineReason, form.get("decline_reason"))
    errors: dict[str, str] = {}
    if answer is None:
        errors["answer"] = "Välj om du vill acceptera eller avböja."
    elif answer is Answer.DECLINED and reason is None:
        errors["decline_reason"] = "Välj ett skäl när du avböjer."
    if errors or answer is None:
        return _message_page(
            request,
            item,
            status=422,
            errors=errors,
            chosen="" if answer is None else answer.value,
            chosen_reason="" if reason is None else reason.value,
        )
    decline_reason = reason if answer is Answer.DECLINED else None
    await port.answer(message_id, staff.staff_id, answer, decline_reason)
    _log.info(
        "inbox_answered",
        message_id=message_id,
        staff_id=staff.staff_id,
        answer=answer.value,
        decline_reason=None if decline_reason is None else decline_reason.value,
    )
    return _see_other(f"{PREFIX}/m/{message_id}?svar=skickat")


async def _sent(request: web.Request) -> web.Response:
    message_id = _message_id(request)
    for timeline in await request.app[PORT].list_sent():
        if timeline.message_id == message_id:
            return _render(request, "sent.html", timeline=timeline)
    raise UnknownMessageError(message_id)


def _next_target(value: object) -> str:
    if isinstance(value, str) and _NEXT.fullmatch(value):
        return value
    return f"{PREFIX}/"


def _set_cookie(
    response: web.Response, auth: StaffAuth, name: str, value: str, max_age: timedelta
) -> None:
    response.set_cookie(
        name,
        value,
        path=_COOKIE_PATH,
        max_age=int(max_age.total_seconds()),
        httponly=True,
        secure=auth.cookie_secure,
        samesite="Strict",
    )


def _login_page(
    request: web.Request, nonce: str, *, status: int = 200, error: str = "", **context: Any
) -> web.Response:
    auth = request.app[AUTH]
    return _render(
        request,
        "login.html",
        status=status,
        login_csrf=_mac(auth, "csrf", "login", nonce),
        error=error,
        **context,
    )


async def _login_form(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    target = _next_target(request.query.get("next"))
    if _identify(request, auth) is not None:
        return _see_other(target)
    # The login form's CSRF token is bound to a random cookie (login CSRF would
    # sign a person in as someone else, and they would answer as that person).
    nonce = secrets.token_urlsafe(16)
    response = _login_page(
        request, nonce, next=target, staff_id="", logged_out="utloggad" in request.query
    )
    _set_cookie(response, auth, _LOGIN_COOKIE, nonce, _LOGIN_NONCE_TTL)
    return response


async def _login(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    form = await request.post()
    nonce = request.cookies.get(_LOGIN_COOKIE)
    if not nonce or not _tokens_equal(form.get("csrf"), _mac(auth, "csrf", "login", nonce)):
        raise _Refused(
            403,
            "Inloggningen kunde inte skickas",
            "Formuläret saknade en giltig säkerhetskod. Öppna inloggningssidan igen.",
        )
    staff_id = form.get("staff_id")
    password = form.get("password")
    staff_id = staff_id.strip() if isinstance(staff_id, str) else ""
    password = password if isinstance(password, str) else ""
    target = _next_target(form.get("next"))
    account = auth.accounts.get(staff_id)
    stored = _DUMMY_HASH if account is None else account.password_hash
    # scrypt takes tens of milliseconds of CPU: off the event loop.
    matches = await asyncio.to_thread(verify_password, password, stored)
    if account is None or not matches:
        _log.info("inbox_login_refused")
        return _login_page(
            request,
            nonce,
            status=401,
            error="Fel användar-id eller lösenord.",
            next=target,
            staff_id=staff_id if _STAFF_ID.fullmatch(staff_id) else "",
            logged_out=False,
        )
    _log.info("inbox_login", staff_id=account.staff_id)
    response = _see_other(target)
    _set_cookie(response, auth, _SESSION_COOKIE, _mint_session(auth, account), auth.session_ttl)
    response.del_cookie(_LOGIN_COOKIE, path=_COOKIE_PATH)
    return response


async def _logout(request: web.Request) -> web.Response:
    _log.info("inbox_logout", staff_id=request[STAFF].staff_id)
    response = _see_other(f"{PREFIX}/login?utloggad=1")
    response.del_cookie(_SESSION_COOKIE, path=_COOKIE_PATH)
    return response


# --- assembly -----------------------------------------------------------------------------------


def _format_time(value: datetime, tz: tzinfo) -> str:
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _format_date(value: date) -> str:
    return value.isoformat()


def _environment(tz: tzinfo) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("adapters", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters["tid"] = lambda value: _format_time(value, tz)
    env.filters["datum"] = _format_date
    env.filters["forsening"] = labels.lateness
    env.filters["pnr"] = labels.format_personnummer
    env.filters["ja_nej"] = labels.yes_no
    env.globals.update(
        kind_label=lambda kind: labels.KIND_LABELS[kind],
        state_label=labels.received_state_label,
        event_label=labels.event_label,
        recipient_statuses=labels.recipient_statuses,
        basis_label=labels.basis_label,
        need_label=lambda area: NEED_AREA_LABELS[NeedArea(area)],
        STATUS=ReceiptStatus,
        PURPOSE_LABELS=labels.PURPOSE_LABELS,
        URGENCY_LABELS=labels.URGENCY_LABELS,
        OVERDUE_LABELS=labels.OVERDUE_LABELS,
        ANSWER_LABELS=labels.ANSWER_LABELS,
        DECLINE_REASON_LABELS=labels.DECLINE_REASON_LABELS,
        REASON_LABELS=labels.REASON_LABELS,
        OUTBOX_LABELS=labels.OUTBOX_LABELS,
        UNREAD=frozenset({ReceiptStatus.DELIVERED, ReceiptStatus.HANDED_OVER}),
    )
    return env


def setup_web(
    app: web.Application,
    port: InboxPort,
    auth: StaffAuth,
    *,
    display_tz: tzinfo | None = None,
) -> None:
    """Mount the web inbox on ``app`` under ``/inbox/``, as a sub-application.

    Call it before the application starts. The inbox's middlewares (security
    headers, Swedish error pages, sign-in and CSRF) apply to ``/inbox/`` only,
    so ``app`` may also serve the agency API with middlewares of its own.
    Times are shown in ``display_tz`` (Europe/Stockholm unless given).
    """
    inbox = web.Application(
        middlewares=[
            _security_headers,
            _error_pages,
            web.normalize_path_middleware(append_slash=True, merge_slashes=False),
            _authenticate,
        ]
    )
    inbox[PORT] = port
    inbox[AUTH] = auth
    inbox[_TEMPLATES] = _environment(
        display_tz if display_tz is not None else ZoneInfo("Europe/Stockholm")
    )
    inbox.router.add_get("/", _index, name="inbox.index")
    inbox.router.add_get("/m/{message_id}", _message, name="inbox.message", allow_head=False)
    inbox.router.add_post("/m/{message_id}/answer", _answer, name="inbox.answer")
    inbox.router.add_get("/sent/{message_id}", _sent, name="inbox.sent")
    if not auth.trust_proxy_header:
        inbox.router.add_get("/login", _login_form, name="inbox.login_form")
        inbox.router.add_post("/login", _login, name="inbox.login")
        inbox.router.add_post("/logout", _logout, name="inbox.logout")
    app.add_subapp(PREFIX, inbox)
