"""The demo runs for real against RabbitMQ, passes every step, and leaks no identity."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from pydantic import SecretStr
from rich.console import Console

from backa.demo import EXAMPLE_NUMBER, DemoSettings, run
from tests.conftest import AMQP_URL

pytestmark = pytest.mark.rabbitmq


async def test_demo_passes_every_step(tmp_path: Path) -> None:
    """Every step succeeds, and neither the output nor the log holds the personnummer."""
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    settings = DemoSettings(amqp_url=SecretStr(AMQP_URL), demo_dir=tmp_path / "demo")
    assert await run(settings, console)
    text = out.getvalue()
    assert "Every step did what it says." in text
    for number in range(1, 8):
        assert re.search(rf"✓ {number}\. ", text), f"step {number} did not report success"
    digits = EXAMPLE_NUMBER.replace("-", "")
    log = (tmp_path / "demo" / "demo.log").read_text(encoding="utf-8")
    for haystack in (text, log):
        assert digits not in haystack.replace("-", "")
    assert "not_a_recipient" in log


async def test_demo_names_the_failing_step_when_rabbitmq_is_away(tmp_path: Path) -> None:
    """With nothing listening at the AMQP URL the demo fails, naming the RabbitMQ step."""
    out = io.StringIO()
    settings = DemoSettings(
        amqp_url=SecretStr("amqp://guest:guest@127.0.0.1:1/"), demo_dir=tmp_path / "demo"
    )
    assert not await run(settings, Console(file=out, width=120))
    assert "5. Through RabbitMQ failed" in out.getvalue()
