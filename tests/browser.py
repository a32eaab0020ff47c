"""Playwright fixtures that drive Debian's chromium, for browser tests of the web inbox.

The browser is always ``/usr/bin/chromium`` from Debian's package; Playwright
never downloads one (``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1`` is set on import,
and nothing here calls ``playwright install``). The tests are async, on the
async Playwright API, so the aiohttp app under test runs in the same event
loop as the browser driver (pytest's ``asyncio_mode = "auto"``).

How to use them:

* Register the plugin once in ``tests/conftest.py``::

      pytest_plugins = ["tests.rabbit", "tests.dbs", "tests.browser"]

  or, until then, import the fixtures into a test module (pytest finds
  fixtures by name in the module's namespace)::

      from tests.browser import browser, chromium_path  # noqa: F401

* Serve the application on a random local port with :func:`serve` and point
  a page of the ``browser`` fixture at it::

      async def test_something(browser: BrowserContext) -> None:
          async with serve(app) as base_url:
              page = await browser.new_page()
              await page.goto(f"{base_url}/inbox/")

Fixtures:

``chromium_path`` (session)
    The path of Debian's chromium. If it is missing and the tests run as
    root, it runs ``apt-get install -y chromium`` (after ``apt-get update``
    if the first attempt fails); otherwise the test fails with a sentence
    saying what to install. It never skips: a browser test that silently
    does not run would hide a broken inbox.
``browser`` (function)
    A fresh headless chromium as a Playwright ``BrowserContext``, with its
    own user-data directory under the test's ``tmp_path`` (no cookies, cache
    or service workers carried between tests), no background networking,
    component updates or sync. Closed after the test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
from aiohttp import web
from playwright.async_api import BrowserContext, async_playwright

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "browser", "chromium_path", "serve"]

# Never fetch a browser, whatever a Playwright entry point may try.
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

#: Debian's chromium; the only browser these tests use.
CHROMIUM: Final = Path("/usr/bin/chromium")

#: Headless in a container as root: no sandbox; and nothing that calls home.
CHROMIUM_ARGS: Final = (
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

#: How long one Playwright action or expectation may take before the test fails.
ACTION_TIMEOUT_MS: Final = 15_000

_APT_GET: Final = "/usr/bin/apt-get"
_APT_TIMEOUT_S: Final = 1800


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Fixed arguments, absolute path: nothing here comes from outside the test suite.
    return subprocess.run(  # noqa: S603
        [_APT_GET, *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=_APT_TIMEOUT_S,
    )


def _install_chromium() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            f"Browser tests need Debian's chromium at {CHROMIUM}, and it is missing; "
            "install it with `sudo apt-get install -y chromium` (the tests never download "
            "a browser themselves).",
            pytrace=False,
        )
    result = _apt_get("install", "-y", "chromium")
    if result.returncode != 0:
        update = _apt_get("update")
        if update.returncode != 0:
            pytest.fail(
                f"`apt-get update` failed while installing chromium for the browser tests: "
                f"{update.stderr.strip()[-500:]}",
                pytrace=False,
            )
        result = _apt_get("install", "-y", "chromium")
    if result.returncode != 0:
        pytest.fail(
            f"`apt-get install -y chromium` failed, so the browser tests cannot run: "
            f"{result.stderr.strip()[-500:]}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    """Debian's chromium, installed with apt-get if missing and running as root."""
    if not CHROMIUM.exists():
        _install_chromium()
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is not an executable file; reinstall Debian's chromium package.",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium_path: Path, tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """A fresh headless chromium context with its own user-data directory."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            user_data_dir=tmp_path / "chromium-profile",
            executable_path=chromium_path,
            headless=True,
            args=list(CHROMIUM_ARGS),
            locale="sv-SE",
            timezone_id="Europe/Stockholm",
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        try:
            yield context
        finally:
            await context.close()


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 on a free port; yields its base URL (``http://127.0.0.1:N``)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
