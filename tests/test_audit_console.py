"""The security officer's console over real mutual TLS: pages, Swedish, escaping, verification.

The identity comes from the client certificate, so the console is served the
way the broker serves it (``tests.audit_fakes.serve``) and read with aiohttp
presenting the officer's, an adapter's or an operator's certificate. The log
is the in-memory reader, told to tamper or forge where a test needs it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from html import unescape

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import console
from broker.audit.note import sign_checkpoint
from broker.audit.ports import LoggedEntry
from schemas.audit import AuditEvent
from schemas.envelope import Kind
from schemas.receipts import ReceiptStatus
from tests.audit_fakes import (
    CHILD,
    HOSTILE_REF,
    OFFICER,
    OPERATOR,
    ORIGIN,
    OTHER_CHILD,
    SCHOOL,
    MemoryAuditReader,
    Pki,
    make_pki,
    seeded_reader,
    serve,
)

TIMEOUT = 10.0
SEEDED = 6
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
PAGES = ["/konsol/", f"/konsol/?barn={CHILD}", "/konsol/post/1", "/konsol/kedja"]


@dataclass
class Page:
    """One response: status, headers and HTML."""

    status: int
    headers: dict[str, str]
    html: str

    @property
    def text(self) -> str:
        """The HTML with tags dropped and entities decoded, whitespace folded."""
        return " ".join(unescape(re.sub(r"<[^>]+>", " ", self.html)).split())


@dataclass
class Served:
    """The console on a random port, its certificates and its log."""

    url: str
    pki: Pki
    reader: MemoryAuditReader

    async def get(self, path: str, who: str = OFFICER) -> Page:
        """GET ``path`` with ``who``'s client certificate, without following redirects."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                self.url + path, ssl=self.pki.client(who), allow_redirects=False
            ) as response,
        ):
            html = await asyncio.wait_for(response.text(), TIMEOUT)
            return Page(response.status, dict(response.headers), html)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The demo area's certificates and an operator's."""
    return make_pki(tmp_path_factory.mktemp("audit-console"))


@asynccontextmanager
async def _serve(pki: Pki, reader: MemoryAuditReader) -> AsyncIterator[Served]:
    async with serve(pki, reader) as url:
        yield Served(url, pki, reader)


@pytest.fixture
async def served(pki: Pki) -> AsyncIterator[Served]:
    """The console over a seeded in-memory log."""
    async with _serve(pki, seeded_reader()) as running:
        yield running


def _rows(page: Page) -> list[int]:
    """The entry numbers of the result table, in order."""
    return [int(n) for n in re.findall(r'<a href="/konsol/post/(\d+)"', page.html)]


# --- pages and house style ----------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_is_accessible_swedish_html_without_script(
    served: Served, path: str
) -> None:
    """Each page is Swedish HTML with one h1, a skip link, labelled inputs, and no script."""
    page = await served.get(path)
    assert page.status == 200, page.text
    assert page.headers["Content-Type"].startswith("text/html")
    assert '<html lang="sv">' in page.html
    assert page.html.count("<h1") == 1
    assert '<a class="skip" href="#main">Hoppa till innehållet</a>' in page.html
    assert "<script" not in page.html.lower()
    assert "http://" not in page.html, "no external assets"
    assert "https://" not in page.html, "no external assets"
    for input_id in re.findall(r'<(?:input|select)[^>]* id="([^"]+)"', page.html):
        assert f'<label for="{input_id}">' in page.html, input_id
    for th in re.findall(r"<th(?: [^>]*)?>", page.html):
        assert "scope=" in th, th


@pytest.mark.parametrize("path", [*PAGES, "/konsol/post/999", "/konsol/finns-inte"])
async def test_every_response_carries_the_strict_headers(served: Served, path: str) -> None:
    """Pages and error pages alike have the CSP, no-store and the framing refusals."""
    page = await served.get(path)
    assert page.headers["Content-Security-Policy"] == CSP
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"


async def test_the_console_without_a_slash_redirects(served: Served) -> None:
    """/konsol sends the browser on to /konsol/."""
    page = await served.get("/konsol")
    assert page.status in {301, 308}
    assert page.headers["Location"] == "/konsol/"


def test_every_event_kind_and_status_has_a_swedish_label() -> None:
    """The label tables are complete, so no code reaches the officer untranslated."""
    assert set(console.EVENT_LABELS) == set(AuditEvent)
    assert set(console.KIND_LABELS) == set(Kind)
    assert set(console.STATUS_LABELS) == set(ReceiptStatus)
    assert console.EVENT_LABELS[AuditEvent.ACCEPTED] == "Godkänt"
    assert console.EVENT_LABELS[AuditEvent.AUDIT_READ] == "Läsning av loggen"
    assert console.KIND_LABELS[Kind.CONCERN_REPORT] == "Orosanmälan"


# --- search -------------------------------------------------------------------------------------


async def test_the_empty_form_reads_nothing(served: Served) -> None:
    """Opening the console shows the form and makes no read of the log."""
    page = await served.get("/konsol/")
    assert "Sök i loggen" in page.text
    assert "Resultat" not in page.text
    assert served.reader.calls == []


async def test_search_by_child_shows_swedish_rows(served: Served) -> None:
    """A child's entries are listed with Swedish labels and the pseudonym shortened."""
    page = await served.get(f"/konsol/?barn={CHILD}")
    assert _rows(page) == [0, 1, 2, 3]
    text = page.text
    for label in ("Godkänt", "Avvisat", "Remiss", "Orosanmälan", "OSL 10 kap. 28 §"):
        assert label in text
    assert "consent_missing" in text
    assert f'title="{CHILD}"' in page.html
    assert f"{CHILD[:8]}\N{HORIZONTAL ELLIPSIS}" in text
    assert f">{CHILD}<" not in page.html, "the table shows the short form"
    assert served.reader.calls == [("search", OFFICER)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (f"myndighet={SCHOOL}", [0, 1, 2, 5]),
        ("typ=team_invitation", [5]),
        ("handelse=rejected", [3]),
        ("fran=2026-11-25&till=2026-11-25", [0, 1, 2, 3, 4, 5]),
        ("till=2026-11-24", []),
        (f"barn={OTHER_CHILD.upper()}", [5]),
        ("barn=&myndighet=&typ=&handelse=&fran=&till=", [0, 1, 2, 3, 4, 5]),
    ],
    ids=["agency", "kind", "event", "one-day", "before", "upper-case-child", "all"],
)
async def test_search_filters(served: Served, query: str, expected: list[int]) -> None:
    """Each form field narrows the search; dates are whole Swedish days."""
    page = await served.get(f"/konsol/?{query}")
    assert page.status == 200, page.text
    assert _rows(page) == expected


async def test_results_page_on_with_next_page(pki: Pki) -> None:
    """More results than a page holds give a "Nästa sida" link that continues the search."""
    async with _serve(pki, seeded_reader(referrals=console.PAGE_SIZE + 5)) as running:
        first = await running.get(f"/konsol/?barn={CHILD}&handelse=accepted")
        assert _rows(first) == list(range(console.PAGE_SIZE))
        link = re.search(r'<a href="([^"]+)" rel="next">Nästa sida</a>', first.html)
        assert link is not None
        second = await running.get(unescape(link.group(1)))
        assert _rows(second) == list(range(console.PAGE_SIZE, console.PAGE_SIZE + 5))
        assert "Nästa sida" not in second.text
        assert "Första sidan" in second.text


async def test_bad_form_input_is_400_with_the_error_beside_the_field(served: Served) -> None:
    """A malformed field comes back with a Swedish message beside it and nothing is read."""
    page = await served.get("/konsol/?barn=19121212-1212&fran=2026-13-01&typ=brev")
    assert page.status == 400
    assert "Sökningen kunde inte göras" in page.text
    assert "Ange barnets pseudonym" in page.text
    assert "Ange datumet som ÅÅÅÅ-MM-DD." in page.text
    assert "Välj en typ i listan." in page.text
    for name in ("barn", "fran", "typ"):
        assert re.search(rf'id="f-{name}"[^>]*aria-invalid="true"', page.html, re.S), name
    assert served.reader.calls == []


@pytest.mark.parametrize("query", ["fran=0001-01-01", "till=9999-12-31"])
async def test_a_date_at_the_edge_of_the_calendar_is_a_field_error_not_a_crash(
    served: Served, query: str
) -> None:
    """Found by fuzzing: these days have no start in UTC, or no day after them."""
    page = await served.get(f"/konsol/?{query}")
    assert page.status == 400
    assert "Ange ett datum mellan år 1900 och 9998." in page.text
    assert served.reader.calls == []


async def test_content_from_the_log_is_escaped(served: Served) -> None:
    """Markup in a logged field is shown as text in the table and the detail page."""
    for path in ("/konsol/?typ=team_invitation", "/konsol/post/5"):
        page = await served.get(path)
        assert "<script>alert" not in page.html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; OSL" in page.html
        assert HOSTILE_REF in page.text


async def test_a_searched_value_is_escaped_in_the_form(served: Served) -> None:
    """What the officer typed is echoed into the form as text, never as markup."""
    page = await served.get('/konsol/?myndighet="><b>x')
    assert page.status == 400
    assert '"><b>x' not in page.html
    assert "&#34;&gt;&lt;b&gt;x" in page.html


# --- one entry ----------------------------------------------------------------------------------


async def test_an_entry_shows_every_field_and_is_verified(served: Served) -> None:
    """The detail page labels every field in Swedish and verifies the entry's inclusion."""
    page = await served.get("/konsol/post/3")
    assert page.status == 200
    text = page.text
    for label in (
        "Nummer i loggen",
        "Tid",
        "Händelse",
        "Meddelande-id",
        "Typ",
        "Avsändare",
        "Mottagare",
        "Barnets pseudonym",
        "Grund",
        "Regel",
        "Lagrum",
        "Orsak",
        "Kvittensstatus",
        "Kontrollsumma för innehållet",
        "Utförd av",
        "Fråga till loggen",
        "Lövhash",
    ):
        assert label in text, label
    assert CHILD in text, "the detail shows the full pseudonym"
    assert "Avvisat" in text
    assert "consent_missing" in text
    root = served.reader.root(SEEDED).hex()
    assert f"Verifierad: posten ingår i loggen (checkpoint storlek {SEEDED}, rot {root})." in text
    assert 'class="verified"' in page.html
    assert [m for m, _ in served.reader.calls] == ["entry", "checkpoint", "inclusion_proof"]
    assert served.reader.officers() == {OFFICER}


async def test_a_tampered_proof_is_shown_as_not_verified(served: Served) -> None:
    """When the reader hands out a wrong proof the page says so and never says verified."""
    served.reader.tamper_inclusion = True
    page = await served.get("/konsol/post/2")
    assert page.status == 200
    assert "Ej verifierad: beviset visar inte att posten ingår i loggen" in page.text
    assert "Verifierad:" not in page.text
    assert 'class="unverified"' in page.html


async def test_a_forged_checkpoint_is_not_trusted(served: Served) -> None:
    """A checkpoint signed by another key fails, however well the proof matches its root."""
    impostor = Ed25519PrivateKey.generate()
    served.reader.forged_note = sign_checkpoint(
        ORIGIN, SEEDED, served.reader.root(SEEDED), name=ORIGIN, key=impostor
    )
    page = await served.get("/konsol/post/2")
    assert "Ej verifierad: checkpointens signatur stämmer inte med brokerns nyckel." in page.text
    assert "Verifierad:" not in page.text
    chain = await served.get("/konsol/kedja")
    assert "Signaturen kunde inte verifieras" in chain.text
    assert "Signatur verifierad Nej" in chain.text


async def test_an_entry_that_is_not_its_leaf_is_not_verified(served: Served) -> None:
    """An entry whose shown fields differ from its hashed bytes fails verification."""
    honest = served.reader.logged[0]
    other = served.reader.logged[1].entry
    served.reader.logged[0] = LoggedEntry(
        index=0, entry=other, canonical=honest.canonical, leaf_hash=honest.leaf_hash
    )
    page = await served.get("/konsol/post/0")
    assert "Ej verifierad: postens innehåll stämmer inte med dess hash i loggen." in page.text


async def test_a_new_entry_waits_for_a_checkpoint_then_verifies(served: Served) -> None:
    """An entry newer than the checkpoint is pending; signing a fresh one verifies it."""
    await served.get(f"/konsol/?barn={CHILD}")  # logged as entry 6
    pending = await served.get("/konsol/post/6")
    assert "Inte verifierad ännu: posten är nyare än senaste checkpoint" in pending.text
    assert 'class="pending"' in pending.html
    assert "Läsning av loggen" in pending.text
    assert OFFICER in pending.text
    fresh = await served.get("/konsol/post/6?ny=1")
    assert "Verifierad: posten ingår i loggen" in fresh.text


async def test_an_unknown_entry_is_a_swedish_404(served: Served) -> None:
    """An index beyond the log, or not a number, is a Swedish 404 page."""
    for path in ("/konsol/post/999", "/konsol/post/tre"):
        page = await served.get(path)
        assert page.status == 404
        assert "Posten finns inte" in page.text


# --- the chain ----------------------------------------------------------------------------------


async def test_the_chain_shows_the_verified_checkpoint(served: Served) -> None:
    """The chain page shows origin, size, root, time and that the signature verified."""
    page = await served.get("/konsol/kedja")
    text = page.text
    assert "Signaturen är verifierad med brokerns nyckel." in text
    assert ORIGIN in text
    assert f"Storlek {SEEDED} poster" in text
    assert served.reader.root(SEEDED).hex() in text
    assert "Signatur verifierad Ja" in text
    later = f"/konsol/kedja?fran={SEEDED}&amp;rot={served.reader.root(SEEDED).hex()}"
    assert later in page.html


async def test_consistency_with_an_earlier_checkpoint_is_verified(served: Served) -> None:
    """Given an earlier size and root, the page proves the log only grew since."""
    root = served.reader.root(3).hex()
    page = await served.get(f"/konsol/kedja?fran=3&rot={root}&ny=1")
    assert page.status == 200
    assert "Verifierad: loggen i storlek" in page.text
    assert "bygger vidare på checkpointen med storlek 3" in page.text
    assert "consistency_proof" in [m for m, _ in served.reader.calls]


async def test_a_rewritten_history_fails_the_consistency_check(served: Served) -> None:
    """A wrong earlier root, or a tampered proof, is shown as not verified."""
    wrong = served.reader.root(2).hex()
    page = await served.get(f"/konsol/kedja?fran=3&rot={wrong}")
    assert "Ej verifierad: loggen i storlek" in page.text
    assert "Loggen kan ha ändrats i efterhand." in page.text
    served.reader.tamper_consistency = True
    page = await served.get(f"/konsol/kedja?fran=3&rot={served.reader.root(3).hex()}")
    assert "Ej verifierad" in page.text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("fran=3", "Ange både storlek och rot"),
        ("fran=tre&rot=" + "00" * 32, "Ange storleken som ett heltal"),
        ("fran=3&rot=xyz", "Ange roten som 64 tecken"),
        ("fran=1000&rot=" + "00" * 32, "Storleken är större än senaste checkpoint"),
    ],
    ids=["no-root", "bad-size", "bad-root", "beyond"],
)
async def test_bad_chain_input_is_400_with_a_swedish_message(
    served: Served, query: str, message: str
) -> None:
    """A bad earlier size or root is refused beside its field."""
    page = await served.get(f"/konsol/kedja?{query}")
    assert page.status == 400
    assert message in page.text
    assert "consistency_proof" not in [m for m, _ in served.reader.calls]


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("who", [SCHOOL, OPERATOR])
async def test_non_officers_get_a_swedish_403_and_the_attempt_is_logged(
    served: Served, who: str
) -> None:
    """An adapter or operator is refused on every page, and each attempt reaches ``refused``."""
    for path in PAGES:
        page = await served.get(path, who=who)
        assert page.status == 403, path
        assert "Åtkomst nekad" in page.text
        assert page.headers["Content-Security-Policy"] == CSP
    assert served.reader.refusals == [(who, path) for path in PAGES]
    assert served.reader.calls == []
