"""The whole ``backa demo``, run once per test session and shared by the tests that read it.

The run takes most of a minute (a broker and five adapters as processes, seven
steps), so tests/test_demo.py (every step passed) and tests/test_demo_leaks.py
(nothing it left holds plaintext) look at the same run instead of each making
one. It has a RabbitMQ vhost and a directory of its own; the vhost is removed
after the run, the directory stays for the tests to search.

Enable with ``pytest_plugins = ["tests.demo_run"]`` in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from rich.console import Console

from backa.demo import DemoSettings, run
from broker.provision import RabbitmqctlError, RabbitmqctlRunner
from tests.conftest import AMQP_URL


@dataclass(frozen=True)
class DemoRun:
    """What one run of the demo left: its directory and its console output."""

    workdir: Path
    output: str


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The whole demo, run once for the session in a vhost and directory of its own."""
    vhost = f"backa-demo-run-{secrets.token_hex(3)}"
    workdir = tmp_path_factory.mktemp("demo-run") / "demo"
    out = io.StringIO()
    settings = DemoSettings(amqp_url=SecretStr(AMQP_URL), demo_dir=workdir, demo_vhost=vhost)
    try:
        ok = asyncio.run(run(settings, Console(file=out, width=160, force_terminal=False)))
    finally:
        with contextlib.suppress(RabbitmqctlError):  # never created if set-up failed first
            RabbitmqctlRunner(timeout=60.0).run(["delete_vhost", vhost])
    if not ok:
        pytest.fail(f"the demo failed, so nothing it left can be checked:\n{out.getvalue()}")
    return DemoRun(workdir, out.getvalue())
