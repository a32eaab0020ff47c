"""The web inbox in a real browser (Debian's chromium), keyboard only where it matters.

Uses the in-memory port of ``tests/test_web_inbox.py``: what is checked here is
that a person can sign in, open and answer with a browser and a keyboard, and
that the page layer then called the port in the right order.
"""

from __future__ import annotations

import re

from playwright.async_api import BrowserContext, Locator, Page, expect

from schemas.receipts import Answer
from tests.browser import serve
from tests.test_web_inbox import (
    INVITATION_ID,
    PASSWORD,
    SOCIAL,
    STAFF_ID,
    STAFF_NAME,
    inbox_app,
    local_auth,
    memory_inbox,
)

#: More Tab presses than any inbox page has focusable elements before its form.
MAX_TABS = 30


async def tab_to(page: Page, target: Locator) -> int:
    """Press Tab until ``target`` has focus; returns how many presses it took."""
    for presses in range(1, MAX_TABS + 1):
        await page.keyboard.press("Tab")
        if await target.evaluate("element => element === document.activeElement"):
            return presses
    raise AssertionError(f"not reachable with {MAX_TABS} presses of Tab")


async def test_staff_accepts_an_invitation_with_the_keyboard(
    browser: BrowserContext,
) -> None:
    """A person signs in, opens an invitation, accepts it by keyboard and sees the confirmation."""
    port = memory_inbox()
    async with serve(inbox_app(port, local_auth())) as base_url:
        page = await browser.new_page()
        await page.goto(f"{base_url}/inbox/")
        await expect(page).to_have_url(f"{base_url}/inbox/login")
        await expect(page.get_by_role("heading", level=1)).to_have_text("Logga in")

        await page.get_by_label("Användar-id").fill(STAFF_ID)
        await page.get_by_label("Lösenord").fill(PASSWORD)
        await page.get_by_role("button", name="Logga in").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Inkorg")
        await expect(page.get_by_text(f"Inloggad som {STAFF_NAME}")).to_be_visible()
        assert port.calls == [], "the list alone reads nothing"

        await page.get_by_role("link", name=re.compile(r"^Inbjudan till Barnets team")).click()
        await expect(page).to_have_url(f"{base_url}/inbox/m/{INVITATION_ID}")
        await expect(page.get_by_role("heading", level=1)).to_have_text(
            f"Inbjudan till Barnets team från {SOCIAL}"
        )
        await expect(page.get_by_text("Familjecentralen, rum 2")).to_be_visible()

        skip = page.get_by_role("link", name="Hoppa till innehållet")
        assert await tab_to(page, skip) == 1, "the skip link is the first stop"
        accept = page.get_by_role("radio", name="Acceptera")
        await tab_to(page, accept)
        await page.keyboard.press("Space")
        await expect(accept).to_be_checked()
        submit = page.get_by_role("button", name="Skicka svar")
        await tab_to(page, submit)
        await page.keyboard.press("Enter")

        await expect(page.get_by_role("status")).to_contain_text(
            f"Ditt svar är skickat till {SOCIAL}"
        )
        await expect(page.get_by_role("button", name="Skicka svar")).to_have_count(0)

    assert port.calls[:2] == [
        ("read", INVITATION_ID, STAFF_ID),
        ("answer", INVITATION_ID, STAFF_ID, Answer.ACCEPTED, None),
    ]
    assert port.answers() == [("answer", INVITATION_ID, STAFF_ID, Answer.ACCEPTED, None)]
