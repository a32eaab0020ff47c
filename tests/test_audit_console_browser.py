"""The security officer's console in Debian's chromium, signed in by a client certificate.

The broker's app is served over real mutual TLS with the demo area's CA
(``keys.setup.init_area``); chromium presents the security officer's
certificate through Playwright's ``client_certificates``, exactly as an
officer's browser presents the one on their card. A browser without a
certificate never gets past the TLS handshake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from playwright.async_api import Error as PlaywrightError

from tests.audit_fakes import CHILD, OFFICER, MemoryAuditReader, Pki, make_pki, seeded_reader, serve
from tests.browser import ACTION_TIMEOUT_MS, CHROMIUM_ARGS

SEEDED = 6


@dataclass
class Console:
    """The served console, its log, and a chromium to open it with."""

    url: str
    pki: Pki
    reader: MemoryAuditReader
    chromium: Browser

    async def context(self, *, with_certificate: bool) -> BrowserContext:
        """A fresh browser context, with or without the officer's client certificate."""
        officer = self.pki.layout.officer_dir(OFFICER)
        context = await self.chromium.new_context(
            locale="sv-SE",
            timezone_id="Europe/Stockholm",
            # The area CA is not in chromium's trust store; the client certificate is the point.
            ignore_https_errors=True,
            client_certificates=(
                [
                    {
                        "origin": self.url,
                        "certPath": officer / "client.crt",
                        "keyPath": officer / "client.key",
                    }
                ]
                if with_certificate
                else []
            ),
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The demo area's certificates: the officer's client certificate key is unencrypted PEM."""
    return make_pki(tmp_path_factory.mktemp("audit-browser"))


@pytest.fixture
async def console(pki: Pki, chromium_path: Path) -> AsyncIterator[Console]:
    """The broker's app with the console over mTLS, and a headless Debian chromium."""
    reader = seeded_reader()
    async with serve(pki, reader) as url, async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield Console(url, pki, reader, chromium)
        finally:
            await chromium.close()


@pytest.fixture
async def officer_page(console: Console) -> AsyncIterator[Page]:
    """A page in a context that presents the security officer's certificate."""
    context = await console.context(with_certificate=True)
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def test_officer_searches_opens_an_entry_and_sees_it_verified(
    console: Console, officer_page: Page
) -> None:
    """Search by child, open the rejected referral, and read that it is verified in the log."""
    page = officer_page
    await page.goto(f"{console.url}/konsol/")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sök i loggen")
    await expect(page.get_by_text(f"Inloggad med certifikat: {OFFICER}")).to_be_visible()
    await page.get_by_label("Barnets pseudonym").fill(CHILD)
    await page.get_by_label("Händelse").select_option(label="Avvisat")
    await page.get_by_role("button", name="Sök").click()
    table = page.get_by_role("table")
    await expect(table).to_be_visible()
    await expect(table.get_by_role("row")).to_have_count(2)  # the header and one entry
    await expect(table).to_contain_text("Orosanmälan")
    await expect(table).to_contain_text(f"{CHILD[:8]}\N{HORIZONTAL ELLIPSIS}")
    await table.get_by_role("link", name="Post 3", exact=True).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Post 3: Avvisat")
    verdict = page.get_by_role("status")
    await expect(verdict).to_contain_text("Verifierad: posten ingår i loggen")
    await expect(verdict).to_contain_text(f"checkpoint storlek {SEEDED}")
    await expect(page.get_by_text(CHILD, exact=True)).to_be_visible()
    assert console.reader.officers() == {OFFICER}


async def test_officer_sees_the_chain_verified(console: Console, officer_page: Page) -> None:
    """The chain page shows the latest checkpoint and that its signature verified."""
    page = officer_page
    await page.goto(f"{console.url}/konsol/")
    await page.get_by_role("link", name="Kedjans status").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Kedjans status")
    await expect(page.get_by_role("status").first).to_have_text(
        "Signaturen är verifierad med brokerns nyckel."
    )
    await expect(page.locator("dl.facts")).to_contain_text(f"{SEEDED} poster")
    await page.get_by_role("link", name=f"kontroll mot checkpoint med storlek {SEEDED}").click()
    await expect(page.get_by_role("status").last).to_contain_text(
        f"bygger vidare på checkpointen med storlek {SEEDED}"
    )
    assert f"fran={SEEDED}" in page.url, "the consistency check is against the older size"
    assert console.reader.officers() == {OFFICER}, "every read was logged under the officer"


async def test_a_browser_without_a_certificate_is_refused_at_the_handshake(
    console: Console,
) -> None:
    """Without the officer's certificate the TLS handshake fails and no page loads."""
    context = await console.context(with_certificate=False)
    try:
        page = await context.new_page()
        with pytest.raises(PlaywrightError, match="ERR_"):
            await page.goto(f"{console.url}/konsol/")
    finally:
        await context.close()
    assert console.reader.calls == []
    assert console.reader.refusals == []
