"""The web inbox's pages, sign-in and forms, over HTTP against an in-memory port.

The page layer is the subject here: :class:`MemoryInbox` keeps Received and
SentTimeline items in a dict and records the calls a page makes. The real
runtime behind :class:`~adapters.ports.InboxPort` (its store, its receipts) is
tested end to end elsewhere. ``tests/test_web_inbox_browser.py`` reuses the
port and the builders below.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from adapters import web_labels
from adapters.canonical import Received, SentTimeline, TimelineEvent
from adapters.ports import AnswerConflictError, Gap, UnknownMessageError
from adapters.web import LocalAccount, StaffAuth, hash_password, setup_web, verify_password
from schemas.content import (
    NEED_AREA_LABELS,
    ChildIdentity,
    ConcernReport,
    Contact,
    EscalationNotice,
    Need,
    NeedArea,
    Overdue,
    PlanGoal,
    PlanUpdate,
    Referral,
    StaffRole,
    TeamInvitation,
    TeamResponse,
    Urgency,
)
from schemas.envelope import ConsentBasis, Kind, LegalBasis, Purpose
from schemas.reasons import ReasonCode
from schemas.receipts import Answer, DeclineReason, ReceiptStatus

AGENCY = "lidingo-vardcentral"
SOCIAL = "lidingo-socialtjanst"
SCHOOL = "torsviks-skola"
BROKER = "backa-broker"
CHILD_PSEUDONYM = "a" * 64
PERSONNUMMER = "201311252386"
T0 = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
SECRET = b"s" * 32

INVITATION_ID = "019abb2a-6a52-7000-8000-000000000001"
REFERRAL_ID = "019abb2a-6a52-7000-8000-000000000002"
PLAN_ID = "019abb2a-6a52-7000-8000-000000000003"
ESCALATION_ID = "019abb2a-6a52-7000-8000-000000000004"
SENT_ID = "019abb2a-6a52-7000-8000-000000000005"
UNKNOWN_ID = "019abb2a-6a52-7000-8000-0000000000ff"
THREAD = "019abb2a-6a52-7000-8000-000000000010"

STAFF_ID = "anna.bvc"
STAFF_NAME = "Anna Sjöström"
PASSWORD = "rätt lösenord 42"
#: One scrypt hash for the module: each costs tens of milliseconds.
PASSWORD_HASH = hash_password(PASSWORD)


# --- the in-memory port -------------------------------------------------------------------------


@dataclass
class MemoryInbox:
    """An InboxPort over dicts that records every call a page makes."""

    agency: str
    received: dict[str, Received] = field(default_factory=dict)
    sent: list[SentTimeline] = field(default_factory=list)
    calls: list[tuple[object, ...]] = field(default_factory=list)
    #: The broker's gaps view as the runtime would give it; None: the view is away.
    late: list[Gap] | None = field(default_factory=list)
    #: Makes every answer a conflict, as if another person had just answered.
    conflict: bool = False

    async def list_received(self) -> list[Received]:
        """Every item, newest first."""
        return sorted(self.received.values(), key=lambda r: r.received_at, reverse=True)

    async def get_received(self, message_id: str) -> Received:
        """One item or UnknownMessageError."""
        try:
            return self.received[message_id]
        except KeyError:
            raise UnknownMessageError(message_id) from None

    async def mark_read(self, message_id: str, staff_id: str) -> Received:
        """Record the read; the state moves to read once."""
        item = await self.get_received(message_id)
        self.calls.append(("read", message_id, staff_id))
        if item.state is ReceiptStatus.HANDED_OVER:
            item = dataclasses.replace(item, state=ReceiptStatus.READ)
            self.received[message_id] = item
        return item

    async def answer(
        self,
        message_id: str,
        staff_id: str,
        answer: Answer,
        decline_reason: DeclineReason | None,
    ) -> Received:
        """Record the answer; a second answer is a conflict."""
        item = await self.get_received(message_id)
        self.calls.append(("answer", message_id, staff_id, answer, decline_reason))
        if self.conflict or item.state is ReceiptStatus.ANSWERED:
            raise AnswerConflictError(message_id)
        item = dataclasses.replace(
            item, state=ReceiptStatus.ANSWERED, answer=answer, decline_reason=decline_reason
        )
        self.received[message_id] = item
        return item

    async def list_sent(self) -> list[SentTimeline]:
        """Every sent message as given."""
        return list(self.sent)

    async def gaps(self) -> list[Gap] | None:
        """The late matters as given."""
        return None if self.late is None else list(self.late)

    def answers(self) -> list[tuple[object, ...]]:
        """The answer calls only."""
        return [call for call in self.calls if call[0] == "answer"]


# --- builders -----------------------------------------------------------------------------------

CHILD = ChildIdentity(identity_number=PERSONNUMMER, given_name="Elsa", family_name="Berg")


def received(
    message_id: str,
    kind: Kind,
    content: object,
    *,
    sender: str = SOCIAL,
    at: datetime = T0,
    state: ReceiptStatus = ReceiptStatus.HANDED_OVER,
) -> Received:
    """A received item with plausible metadata around ``content``."""
    return Received(
        message_id=message_id,
        kind=kind,
        sender=sender,
        child=CHILD_PSEUDONYM,
        basis=ConsentBasis(type="consent", consent_id="019abb2a-6a52-7000-8000-00000000beef"),
        purpose=Purpose.TEAM,
        thread=THREAD,
        in_reply_to=None,
        created=at - timedelta(minutes=5),
        received_at=at,
        content=content,
        state=state,
    )


def invitation(agenda: str = "Hur går det i förskolan?") -> TeamInvitation:
    """A team invitation to a meeting at the family centre."""
    return TeamInvitation(
        child=CHILD,
        meeting_at=T0 + timedelta(days=7),
        place="Familjecentralen, rum 2",
        invited_roles=["barnkontakt", "stödsamordnare"],
        agenda=agenda,
        respond_by=T0 + timedelta(days=3),
    )


def referral(summary: str = "Vi ser att Elsa behöver stöd.") -> Referral:
    """A referral from the school about two need areas."""
    return Referral(
        child=CHILD,
        needs=[
            Need(area=NeedArea.HALSA, description="Sover dåligt."),
            Need(area=NeedArea.TILLHORIGHET, description="Har få kamrater."),
        ],
        summary=summary,
        requested_support="Hälsosamtal på BVC.",
        urgency=Urgency.SOON,
        contact=Contact(staff_id="kurator.torsvik", role="kurator", phone="08-123 456"),
        guardians_informed=True,
    )


def plan() -> PlanUpdate:
    """Version 2 of Barnets plan with one goal."""
    return PlanUpdate(
        child=CHILD,
        plan_id="019abb2a-6a52-7000-8000-000000000020",
        version=2,
        goals=[
            PlanGoal(
                area=NeedArea.TRYGGHET,
                goal="Elsa ska känna sig trygg på förskolan.",
                responsible_agency=SOCIAL,
                follow_up=date(2027, 1, 15),
            )
        ],
        next_review=date(2027, 2, 1),
    )


def escalation() -> EscalationNotice:
    """The watchdog's notice that an invitation is unanswered."""
    return EscalationNotice(
        matter=SENT_ID,
        rule="answer-within-5-days",
        overdue=Overdue.ANSWER,
        since=T0 - timedelta(days=1),
        child=CHILD_PSEUDONYM,
    )


def sent_timeline() -> SentTimeline:
    """A referral this agency sent: accepted by the broker, read at one recipient, rejected at another."""
    return SentTimeline(
        message_id=SENT_ID,
        kind=Kind.REFERRAL,
        recipients=(SOCIAL, SCHOOL),
        submitted_at=T0 - timedelta(days=2),
        outbox="sent",
        events=(
            TimelineEvent(status=ReceiptStatus.ACCEPTED, agency=BROKER, at=T0 - timedelta(days=2)),
            TimelineEvent(status=ReceiptStatus.DELIVERED, agency=SOCIAL, at=T0 - timedelta(days=2)),
            TimelineEvent(
                status=ReceiptStatus.READ,
                agency=SOCIAL,
                at=T0 - timedelta(days=1),
                staff_id="stodsamordnare.lisa",
            ),
            TimelineEvent(
                status=ReceiptStatus.REJECTED,
                agency=SCHOOL,
                at=T0 - timedelta(days=2),
                reason=ReasonCode.RECIPIENT_KEY_UNKNOWN,
            ),
        ),
    )


def memory_inbox() -> MemoryInbox:
    """An inbox with one item of each displayable kind and one sent referral."""
    port = MemoryInbox(agency=AGENCY)
    for item in (
        received(INVITATION_ID, Kind.TEAM_INVITATION, invitation(), at=T0),
        received(REFERRAL_ID, Kind.REFERRAL, referral(), sender=SCHOOL, at=T0 - timedelta(hours=1)),
        received(PLAN_ID, Kind.PLAN_UPDATE, plan(), at=T0 - timedelta(hours=2)),
        received(
            ESCALATION_ID,
            Kind.ESCALATION,
            escalation(),
            sender=BROKER,
            at=T0 - timedelta(hours=3),
        ),
    ):
        port.received[item.message_id] = item
    port.sent.append(sent_timeline())
    return port


def local_auth(
    *, clock: Callable[[], datetime] | None = None, cookie_secure: bool = False
) -> StaffAuth:
    """Local accounts with one person; cookies not Secure so that plain-HTTP tests work."""
    account = LocalAccount(staff_id=STAFF_ID, display_name=STAFF_NAME, password_hash=PASSWORD_HASH)
    return StaffAuth(
        secret=SECRET,
        accounts={STAFF_ID: account},
        cookie_secure=cookie_secure,
        clock=clock or (lambda: datetime.now(UTC)),
    )


def header_auth() -> StaffAuth:
    """A trusted reverse proxy that names the person in X-Backa-Staff and X-Backa-Staff-Name."""
    return StaffAuth(secret=SECRET, trust_proxy_header=True, name_header="X-Backa-Staff-Name")


def inbox_app(port: MemoryInbox, auth: StaffAuth) -> web.Application:
    """An application with only the inbox mounted."""
    app = web.Application()
    setup_web(app, port, auth)
    return app


Client = TestClient[web.Request, web.Application]


@pytest.fixture
def port() -> MemoryInbox:
    """A fresh in-memory inbox."""
    return memory_inbox()


@pytest.fixture
async def client(port: MemoryInbox) -> AsyncIterator[Client]:
    """A test client for the inbox with local accounts, not signed in."""
    async with TestClient(TestServer(inbox_app(port, local_auth()))) as test_client:
        yield test_client


@pytest.fixture
async def header_client(port: MemoryInbox) -> AsyncIterator[Client]:
    """A test client for the inbox behind a trusted proxy header."""
    async with TestClient(TestServer(inbox_app(port, header_auth()))) as test_client:
        yield test_client


_HIDDEN_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = _HIDDEN_CSRF.search(html)
    assert found is not None, "the page has no form with a csrf token"
    return found.group(1)


async def log_in(
    client: Client, password: str = PASSWORD, staff_id: str = STAFF_ID
) -> ClientResponse:
    """Fetch the login form and post it; returns the response to the post."""
    form = await client.get("/inbox/login")
    assert form.status == 200
    # Sent by hand: the client's jar keeps a Secure cookie from plain HTTP to itself.
    nonce = form.cookies["backa_inbox_login"].value
    return await client.post(
        "/inbox/login",
        data={
            "csrf": csrf_of(await form.text()),
            "staff_id": staff_id,
            "password": password,
            "next": "/inbox/",
        },
        headers={"Cookie": f"backa_inbox_login={nonce}"},
        allow_redirects=False,
    )


@pytest.fixture
async def signed_in(client: Client) -> Client:
    """The client with a valid session."""
    response = await log_in(client)
    assert response.status == 303
    return client


async def page_csrf(client: Client, path: str) -> str:
    """The CSRF token on the page at ``path``."""
    response = await client.get(path)
    assert response.status == 200
    return csrf_of(await response.text())


# --- sign-in ------------------------------------------------------------------------------------


async def test_login_required(client: Client, port: MemoryInbox) -> None:
    """Without a session every inbox page redirects to the login form, which remembers the page."""
    response = await client.get("/inbox/", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/inbox/login"
    response = await client.get(f"/inbox/m/{INVITATION_ID}", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == f"/inbox/login?next=/inbox/m/{INVITATION_ID}"
    assert port.calls == []


async def test_login_sets_a_strict_http_only_session(port: MemoryInbox) -> None:
    """The right password sets an HttpOnly, SameSite=Strict, Secure (as configured) session."""
    async with TestClient(TestServer(inbox_app(port, local_auth(cookie_secure=True)))) as client:
        with capture_logs() as logs:
            response = await log_in(client)
    assert response.status == 303
    assert response.headers["Location"] == "/inbox/"
    cookie = next(
        value
        for value in response.headers.getall("Set-Cookie")
        if value.startswith("backa_inbox_session=")
    )
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" in cookie
    assert "Path=/inbox/" in cookie
    assert PASSWORD not in repr(logs)


async def test_signed_in_page_names_the_person(signed_in: Client) -> None:
    """After login the inbox shows who is signed in."""
    response = await signed_in.get("/inbox/")
    assert response.status == 200
    assert f"Inloggad som {STAFF_NAME}" in await response.text()


@pytest.mark.parametrize(
    ("staff_id", "password"),
    [(STAFF_ID, "fel lösenord"), ("okand.person", PASSWORD), (STAFF_ID, "")],
    ids=["wrong-password", "unknown-id", "empty-password"],
)
async def test_wrong_password_refused(
    client: Client, port: MemoryInbox, staff_id: str, password: str
) -> None:
    """A wrong password or unknown id gets a Swedish error, no session and no access."""
    with capture_logs() as logs:
        response = await log_in(client, password=password, staff_id=staff_id)
    assert response.status == 401
    assert "Fel användar-id eller lösenord." in await response.text()
    assert all(
        not value.startswith("backa_inbox_session=")
        for value in response.headers.getall("Set-Cookie", [])
    )
    assert (await client.get("/inbox/", allow_redirects=False)).status == 303
    assert password not in repr(logs) or not password
    assert port.calls == []


async def test_login_without_form_token_is_refused(client: Client) -> None:
    """A login post without the token bound to the login cookie is refused with 403."""
    response = await client.post(
        "/inbox/login", data={"staff_id": STAFF_ID, "password": PASSWORD}, allow_redirects=False
    )
    assert response.status == 403
    assert "säkerhetskod" in await response.text()


async def test_expired_session_is_refused(port: MemoryInbox) -> None:
    """A session past its time-to-live sends the person back to the login form."""
    now = [T0]
    auth = local_auth(clock=lambda: now[0])
    async with TestClient(TestServer(inbox_app(port, auth))) as client:
        assert (await log_in(client)).status == 303
        assert (await client.get("/inbox/", allow_redirects=False)).status == 200
        now[0] = T0 + auth.session_ttl + timedelta(seconds=1)
        assert (await client.get("/inbox/", allow_redirects=False)).status == 303


async def test_tampered_session_is_refused(client: Client) -> None:
    """A session cookie naming another staff id with the old signature is not accepted."""
    await log_in(client)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/inbox/"))
    token = cookie["backa_inbox_session"].value
    _, expiry, mac = token.split(".")
    forged = f"YWRtaW4.{expiry}.{mac}"  # "admin" in base64url, with anna's signature
    client.session.cookie_jar.clear()
    genuine = await client.get(
        "/inbox/", headers={"Cookie": f"backa_inbox_session={token}"}, allow_redirects=False
    )
    assert genuine.status == 200
    response = await client.get(
        "/inbox/", headers={"Cookie": f"backa_inbox_session={forged}"}, allow_redirects=False
    )
    assert response.status == 303


async def test_logout_ends_the_session(signed_in: Client) -> None:
    """Logging out (with the form's token) drops the session cookie."""
    token = await page_csrf(signed_in, "/inbox/")
    response = await signed_in.post("/inbox/logout", data={"csrf": token}, allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/inbox/login?utloggad=1"
    assert (await signed_in.get("/inbox/", allow_redirects=False)).status == 303


async def test_login_next_never_leaves_the_inbox(client: Client) -> None:
    """A next parameter pointing at another host is replaced by the inbox start page."""
    form = await client.get("/inbox/login?next=//evil.example/")
    html = await form.text()
    assert "evil.example" not in html
    response = await client.post(
        "/inbox/login",
        data={
            "csrf": csrf_of(html),
            "staff_id": STAFF_ID,
            "password": PASSWORD,
            "next": "https://evil.example/",
        },
        allow_redirects=False,
    )
    assert response.headers["Location"] == "/inbox/"


async def test_header_mode_trusts_only_configured_header(
    header_client: Client, port: MemoryInbox
) -> None:
    """Behind a proxy only X-Backa-Staff identifies the person; other user headers get 401."""
    for headers in ({}, {"X-Remote-User": STAFF_ID}, {"X-Forwarded-User": STAFF_ID}):
        response = await header_client.get("/inbox/", headers=headers, allow_redirects=False)
        assert response.status == 401
        assert "Inloggning krävs" in await response.text()
    response = await header_client.get(
        "/inbox/", headers={"X-Backa-Staff": "<script>", "X-Backa-Staff-Name": "x"}
    )
    assert response.status == 401
    response = await header_client.get(
        f"/inbox/m/{INVITATION_ID}",
        headers={"X-Backa-Staff": STAFF_ID, "X-Backa-Staff-Name": STAFF_NAME},
    )
    assert response.status == 200
    assert f"Inloggad som {STAFF_NAME}" in await response.text()
    assert port.calls == [("read", INVITATION_ID, STAFF_ID)]


async def test_local_mode_ignores_the_staff_header(client: Client, port: MemoryInbox) -> None:
    """With local accounts a client-sent X-Backa-Staff header is not trusted."""
    response = await client.get(
        f"/inbox/m/{INVITATION_ID}", headers={"X-Backa-Staff": STAFF_ID}, allow_redirects=False
    )
    assert response.status == 303
    assert port.calls == []


async def test_header_mode_answer_needs_the_csrf_token(
    header_client: Client, port: MemoryInbox
) -> None:
    """Behind a proxy the answer form carries a token derived from the staff id."""
    headers = {"X-Backa-Staff": STAFF_ID}
    page = await header_client.get(f"/inbox/m/{INVITATION_ID}", headers=headers)
    token = csrf_of(await page.text())
    url = f"/inbox/m/{INVITATION_ID}/answer"
    refused = await header_client.post(
        url, data={"answer": "accepted"}, headers=headers, allow_redirects=False
    )
    assert refused.status == 403
    other = await header_client.post(
        url,
        data={"answer": "accepted", "csrf": token},
        headers={"X-Backa-Staff": "someone.else"},
        allow_redirects=False,
    )
    assert other.status == 403
    accepted = await header_client.post(
        url, data={"answer": "accepted", "csrf": token}, headers=headers, allow_redirects=False
    )
    assert accepted.status == 303
    assert port.answers() == [("answer", INVITATION_ID, STAFF_ID, Answer.ACCEPTED, None)]


def test_staff_auth_needs_exactly_one_way_to_sign_in() -> None:
    """StaffAuth refuses both modes at once, neither, and a short secret."""
    account = LocalAccount(staff_id=STAFF_ID, display_name=STAFF_NAME, password_hash=PASSWORD_HASH)
    with pytest.raises(ValueError, match="exactly one way"):
        StaffAuth(secret=SECRET, accounts={STAFF_ID: account}, trust_proxy_header=True)
    with pytest.raises(ValueError, match="exactly one way"):
        StaffAuth(secret=SECRET)
    with pytest.raises(ValueError, match="32 bytes"):
        StaffAuth(secret=b"short", trust_proxy_header=True)
    with pytest.raises(ValueError, match="scrypt"):
        LocalAccount(staff_id=STAFF_ID, display_name=STAFF_NAME, password_hash="plain")


# --- the pages ----------------------------------------------------------------------------------


async def test_list_shows_items_with_swedish_labels(signed_in: Client, port: MemoryInbox) -> None:
    """The start page lists received items newest first in Swedish, and Skickat per recipient."""
    port.received[REFERRAL_ID] = dataclasses.replace(
        port.received[REFERRAL_ID],
        state=ReceiptStatus.ANSWERED,
        answer=Answer.DECLINED,
        decline_reason=DeclineReason.NO_CAPACITY,
    )
    response = await signed_in.get("/inbox/")
    html = await response.text()
    assert response.status == 200
    kinds = ["Inbjudan till Barnets team", "Remiss", "Barnets plan", "Eskalering"]
    positions = [html.index(f'">{kind}<span') for kind in kinds]
    assert positions == sorted(positions), "received items are newest first"
    assert "Överlämnad" in html
    assert "Besvarad \u2013 avböjd" in html
    assert SCHOOL in html
    assert "2026-11-25 10:30" in html  # 09:30 UTC shown in Stockholm time
    assert '<h2 id="sent-heading">Skickat</h2>' in html
    assert f"{SOCIAL}: Läst" in html
    assert f"{SCHOOL}: Avvisad" in html
    assert f'href="/inbox/sent/{SENT_ID}"' in html
    assert PERSONNUMMER not in html
    assert port.calls == [], "listing reads nothing"


async def test_opening_calls_mark_read_with_staff_id(signed_in: Client, port: MemoryInbox) -> None:
    """Opening a message calls mark_read with the signed-in staff id, and shows it as read."""
    response = await signed_in.get(f"/inbox/m/{INVITATION_ID}")
    assert response.status == 200
    assert port.calls == [("read", INVITATION_ID, STAFF_ID)]
    assert "<dd>Läst</dd>" in await response.text()


async def test_invitation_page_shows_the_meeting(signed_in: Client) -> None:
    """An invitation shows the child, meeting time, place, roles and agenda, and the answer form."""
    html = await (await signed_in.get(f"/inbox/m/{INVITATION_ID}")).text()
    assert "20131125-2386" in html
    assert "Elsa Berg" in html
    assert "2026-12-02 10:30" in html
    assert "Familjecentralen, rum 2" in html
    assert "stödsamordnare" in html
    assert "Hur går det i förskolan?" in html
    assert "<legend>Ditt svar till lidingo-socialtjanst</legend>" in html
    assert 'type="radio" id="answer-accepted"' in html
    assert '<label for="decline_reason">' in html
    for reason in DeclineReason:
        assert web_labels.DECLINE_REASON_LABELS[reason] in html


async def test_personnummer_is_never_in_the_title(signed_in: Client) -> None:
    """The personnummer is shown on the page but not in its title."""
    html = await (await signed_in.get(f"/inbox/m/{REFERRAL_ID}")).text()
    title = html[html.index("<title>") : html.index("</title>")]
    assert PERSONNUMMER not in title
    assert "20131125-2386" not in title
    assert "20131125-2386" in html


async def test_referral_page_shows_needs_with_labels(signed_in: Client) -> None:
    """A referral shows its need areas with the behovskompass labels, summary, support and contact."""
    html = await (await signed_in.get(f"/inbox/m/{REFERRAL_ID}")).text()
    assert NEED_AREA_LABELS[NeedArea.HALSA] in html
    assert NEED_AREA_LABELS[NeedArea.TILLHORIGHET] in html
    assert "Sover dåligt." in html
    assert "Vi ser att Elsa behöver stöd." in html
    assert "Hälsosamtal på BVC." in html
    assert "kurator.torsvik" in html
    assert "08-123 456" in html
    assert "Snart" in html


@pytest.mark.parametrize(
    ("message_id", "expected"),
    [
        (
            ESCALATION_ID,
            [SENT_ID, "answer-within-5-days", "Inte besvarad", "2026-11-24 10:30"],
        ),
        (PLAN_ID, ["Barnets plan, version 2", "Trygghet", "2027-01-15", "2027-02-01"]),
    ],
    ids=["escalation", "plan-update"],
)
async def test_information_only_kinds_have_no_form(
    signed_in: Client, message_id: str, expected: list[str]
) -> None:
    """Escalations and plan updates show their details and offer no answer form."""
    html = await (await signed_in.get(f"/inbox/m/{message_id}")).text()
    for text in expected:
        assert text in html
    assert '<form class="answer"' not in html
    assert "besvaras inte här" in html


async def test_concern_report_shows_danger_and_can_be_answered(
    signed_in: Client, port: MemoryInbox
) -> None:
    """An orosanmälan shows immediate danger first, its observations and areas, and the form."""
    report = ConcernReport(
        child=CHILD,
        observations="Blåmärken på armarna.",
        need_areas=[NeedArea.TRYGGHET],
        immediate_danger=True,
        reporter=StaffRole(staff_id="ssk.bvc", role="barnkontakt"),
        guardians_informed=False,
        child_informed=False,
    )
    concern_id = "019abb2a-6a52-7000-8000-000000000030"
    port.received[concern_id] = received(concern_id, Kind.CONCERN_REPORT, report)
    html = await (await signed_in.get(f"/inbox/m/{concern_id}")).text()
    assert "Anmälaren bedömer att barnet är i akut fara." in html
    assert "Blåmärken på armarna." in html
    assert "<li>Trygghet</li>" in html
    assert "barnkontakt (ssk.bvc)" in html
    assert '<form class="answer"' in html


async def test_team_response_shows_the_answer(signed_in: Client, port: MemoryInbox) -> None:
    """A team response shows the decline reason and detail, and is not itself answered."""
    response_content = TeamResponse(
        invitation_id=INVITATION_ID,
        answer=Answer.DECLINED,
        decline_reason=DeclineReason.NO_CAPACITY,
        decline_detail="Ingen kan komma den dagen.",
    )
    response_id = "019abb2a-6a52-7000-8000-000000000031"
    port.received[response_id] = received(response_id, Kind.TEAM_RESPONSE, response_content)
    html = await (await signed_in.get(f"/inbox/m/{response_id}")).text()
    assert "Svar på inbjudan" in html
    assert "Vi har inte möjlighet just nu" in html
    assert "Ingen kan komma den dagen." in html
    assert '<form class="answer"' not in html


async def test_head_and_prefetch_do_not_read(signed_in: Client, port: MemoryInbox) -> None:
    """Neither a HEAD request nor a browser prefetch of a message counts as reading it."""
    head = await signed_in.head(f"/inbox/m/{INVITATION_ID}")
    assert head.status == 405
    prefetch = await signed_in.get(
        f"/inbox/m/{INVITATION_ID}", headers={"Sec-Purpose": "prefetch;prerender"}
    )
    assert prefetch.status == 503
    assert port.calls == []


async def test_information_only_kinds_cannot_be_answered(
    signed_in: Client, port: MemoryInbox
) -> None:
    """Posting an answer to an escalation is a 409 and never reaches the port."""
    token = await page_csrf(signed_in, f"/inbox/m/{ESCALATION_ID}")
    response = await signed_in.post(
        f"/inbox/m/{ESCALATION_ID}/answer", data={"answer": "accepted", "csrf": token}
    )
    assert response.status == 409
    assert port.answers() == []


async def test_accept_posts_answer(signed_in: Client, port: MemoryInbox) -> None:
    """Accepting calls answer once and redirects to the message with a Swedish confirmation."""
    token = await page_csrf(signed_in, f"/inbox/m/{INVITATION_ID}")
    response = await signed_in.post(
        f"/inbox/m/{INVITATION_ID}/answer",
        data={"answer": "accepted", "decline_reason": "no_capacity", "csrf": token},
        allow_redirects=False,
    )
    assert response.status == 303
    assert response.headers["Location"] == f"/inbox/m/{INVITATION_ID}?svar=skickat"
    assert port.answers() == [("answer", INVITATION_ID, STAFF_ID, Answer.ACCEPTED, None)]
    page = await signed_in.get(response.headers["Location"])
    html = await page.text()
    assert "Ditt svar är skickat till lidingo-socialtjanst: Besvarad \u2013 accepterad." in html
    assert '<form class="answer"' not in html


async def test_decline_with_reason_posts_answer(signed_in: Client, port: MemoryInbox) -> None:
    """Declining with a reason sends that reason."""
    token = await page_csrf(signed_in, f"/inbox/m/{REFERRAL_ID}")
    response = await signed_in.post(
        f"/inbox/m/{REFERRAL_ID}/answer",
        data={"answer": "declined", "decline_reason": "not_our_remit", "csrf": token},
    )
    assert response.status == 200
    assert "Besvarad \u2013 avböjd (Ingår inte i vårt uppdrag)" in await response.text()
    assert port.answers() == [
        ("answer", REFERRAL_ID, STAFF_ID, Answer.DECLINED, DeclineReason.NOT_OUR_REMIT)
    ]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"answer": "declined"}, "Välj ett skäl när du avböjer."),
        ({"answer": "declined", "decline_reason": "because"}, "Välj ett skäl när du avböjer."),
        ({}, "Välj om du vill acceptera eller avböja."),
        ({"answer": "maybe"}, "Välj om du vill acceptera eller avböja."),
    ],
    ids=["decline-no-reason", "decline-unknown-reason", "no-answer", "unknown-answer"],
)
async def test_decline_without_reason_is_refused(
    signed_in: Client, port: MemoryInbox, data: dict[str, str], error: str
) -> None:
    """An incomplete answer form comes back with a Swedish error and sends nothing."""
    token = await page_csrf(signed_in, f"/inbox/m/{INVITATION_ID}")
    response = await signed_in.post(
        f"/inbox/m/{INVITATION_ID}/answer", data={**data, "csrf": token}
    )
    html = await response.text()
    assert response.status == 422
    assert error in html
    assert 'role="alert"' in html
    assert port.answers() == []


@pytest.mark.parametrize("token", [None, "", "forged-token"], ids=["missing", "empty", "forged"])
async def test_csrf_missing_is_forbidden(
    signed_in: Client, port: MemoryInbox, token: str | None
) -> None:
    """An answer post without a valid CSRF token is refused with 403 and sends nothing."""
    data = {"answer": "accepted"} | ({} if token is None else {"csrf": token})
    response = await signed_in.post(f"/inbox/m/{INVITATION_ID}/answer", data=data)
    assert response.status == 403
    assert "Formuläret kunde inte skickas" in await response.text()
    assert port.answers() == []


@pytest.mark.parametrize(
    "path",
    [f"/inbox/m/{UNKNOWN_ID}", "/inbox/m/not-a-uuid", f"/inbox/sent/{UNKNOWN_ID}"],
    ids=["unknown-message", "malformed-id", "unknown-sent"],
)
async def test_unknown_message_is_a_swedish_404(signed_in: Client, path: str) -> None:
    """An unknown or malformed message id gets the Swedish 404 page."""
    response = await signed_in.get(path)
    assert response.status == 404
    assert "Meddelandet finns inte" in await response.text()


async def test_unknown_path_is_a_swedish_404(signed_in: Client) -> None:
    """A path the inbox does not have gets a Swedish 404 page with the same headers."""
    response = await signed_in.get("/inbox/no/such/page")
    assert response.status == 404
    assert "Sidan finns inte" in await response.text()
    assert "Content-Security-Policy" in response.headers


async def test_answer_conflict_is_a_swedish_409(signed_in: Client, port: MemoryInbox) -> None:
    """An answer the port refuses as a conflict gets the Swedish 409 page."""
    token = await page_csrf(signed_in, f"/inbox/m/{INVITATION_ID}")
    port.conflict = True
    response = await signed_in.post(
        f"/inbox/m/{INVITATION_ID}/answer", data={"answer": "accepted", "csrf": token}
    )
    assert response.status == 409
    assert "Meddelandet kan inte besvaras" in await response.text()


async def test_html_escapes_content(signed_in: Client, port: MemoryInbox) -> None:
    """Content is escaped: a script tag in a summary is shown as text, never as markup."""
    port.received[REFERRAL_ID] = dataclasses.replace(
        port.received[REFERRAL_ID], content=referral(summary='<script>alert("x")</script>')
    )
    html = await (await signed_in.get(f"/inbox/m/{REFERRAL_ID}")).text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


@pytest.mark.parametrize(
    "path", ["/inbox/", f"/inbox/m/{INVITATION_ID}", f"/inbox/sent/{SENT_ID}", "/inbox/login"]
)
async def test_csp_header_present(signed_in: Client, path: str) -> None:
    """Every inbox page carries the strict CSP and is never cached."""
    response = await signed_in.get(path)
    assert response.headers["Content-Security-Policy"] == (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    )
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    html = await response.text()
    assert '<html lang="sv">' in html
    assert html.count("<h1>") == 1
    assert "<script" not in html
    assert 'href="#main"' in html


async def test_sent_timeline_page(signed_in: Client) -> None:
    """A sent message's page lists each receipt in Swedish with agency, reason, answer and staff."""
    response = await signed_in.get(f"/inbox/sent/{SENT_ID}")
    html = await response.text()
    assert response.status == 200
    assert "Godkänd av förmedlingen" in html
    assert "stodsamordnare.lisa" in html
    assert web_labels.REASON_LABELS[ReasonCode.RECIPIENT_KEY_UNKNOWN] in html
    assert "<code>recipient_key_unknown</code>" in html
    assert '<th scope="col">Händelse</th>' in html


async def test_bare_prefix_redirects_to_the_inbox(signed_in: Client) -> None:
    """/inbox without the slash leads to /inbox/."""
    response = await signed_in.get("/inbox", allow_redirects=False)
    assert response.status == 308
    assert response.headers["Location"] == "/inbox/"


async def test_nothing_of_the_content_is_logged(signed_in: Client) -> None:
    """Opening and answering logs ids and outcomes, never content or the personnummer."""
    with capture_logs() as logs:
        token = csrf_of(await (await signed_in.get(f"/inbox/m/{REFERRAL_ID}")).text())
        await signed_in.post(
            f"/inbox/m/{REFERRAL_ID}/answer", data={"answer": "accepted", "csrf": token}
        )
    text = repr(logs)
    assert {entry["event"] for entry in logs} >= {"inbox_opened", "inbox_answered"}
    assert PERSONNUMMER not in text
    assert "Sover dåligt" not in text
    assert "Elsa" not in text


# --- passwords and labels -----------------------------------------------------------------------


def test_password_hash_round_trip() -> None:
    """A hash verifies its password, and a wrong password fails."""
    stored = hash_password("hemligt ord", salt=bytes(range(16)))
    assert stored.startswith("scrypt$16384$8$1$AAECAwQFBgcICQoLDA0ODw==$")
    assert verify_password("hemligt ord", stored)
    assert not verify_password("hemligt ord!", stored)
    assert not verify_password("", stored)


def test_password_hash_is_salted_and_normalised() -> None:
    """Two hashes of one password differ by salt, and composed and decomposed å are the same."""
    assert hash_password("å") != hash_password("å")
    assert verify_password("a\u030a", hash_password("\u00e5"))


@pytest.mark.parametrize(
    "stored",
    ["", "bcrypt$1$2$3$4$5", "scrypt$16385$8$1$AAAA$AAAA", "scrypt$16384$8$1$!!$AAAA"],
    ids=["empty", "other-scheme", "n-not-power-of-two", "bad-base64"],
)
def test_malformed_stored_hash_is_a_configuration_error(stored: str) -> None:
    """A malformed stored hash raises ValueError rather than silently refusing everyone."""
    with pytest.raises(ValueError, match="stored password"):
        verify_password("x", stored)


@pytest.mark.parametrize(
    ("table", "enum"),
    [
        (web_labels.KIND_LABELS, Kind),
        (web_labels.STATUS_LABELS, ReceiptStatus),
        (web_labels.ANSWER_LABELS, Answer),
        (web_labels.DECLINE_REASON_LABELS, DeclineReason),
        (web_labels.REASON_LABELS, ReasonCode),
        (web_labels.URGENCY_LABELS, Urgency),
        (web_labels.OVERDUE_LABELS, Overdue),
        (web_labels.PURPOSE_LABELS, Purpose),
    ],
    ids=["kind", "status", "answer", "decline", "reason", "urgency", "overdue", "purpose"],
)
def test_every_code_has_a_swedish_label(table: Mapping[StrEnum, str], enum: type[StrEnum]) -> None:
    """Every value of each displayed enum has a non-empty Swedish label."""
    assert set(table) == set(enum)
    assert all(table.values())


def test_basis_label_names_consent_or_legal_basis() -> None:
    """The basis reads as a consent id or a legal basis code."""
    assert web_labels.basis_label(LegalBasis(type="legal", ref="osl-10-28")) == (
        "Rättslig grund (osl-10-28)"
    )


async def test_the_inbox_lists_late_matters_most_urgent_first(
    signed_in: Client, port: MemoryInbox
) -> None:
    """Late matters come first in Swedish, as the runtime ordered them; an unreachable view says so."""
    due = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    port.late = [
        Gap("019abb2a-6a51-7000-8000-0000000000a1", "referral.not-answered", "referral", SOCIAL, "bup-lidingo", due, 3 * 86_400, "late", 1),
        Gap("019abb2a-6a51-7000-8000-0000000000a2", "concern.not-read", "concern_report", SOCIAL, None, due, 0, "near", 0),
    ]  # fmt: skip
    page = await (await signed_in.get("/inbox/")).text()
    assert "Sena ärenden" in page
    assert "Försenat 3 dagar" in page
    assert page.index("Försenat 3 dagar") < page.index("Snart sent")
    port.late = None
    page = await (await signed_in.get("/inbox/")).text()
    assert "går inte att nå just nu" in page
