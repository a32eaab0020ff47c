"""``backa demo`` for real: a broker and five adapters as processes, every step passing.

Reads the session's one run of the whole scenario (tests/demo_run.py, shared
with tests/test_demo_leaks.py: backa/demo.py on a RabbitMQ vhost of its own,
with the RabbitMQ users the demo provisions) and checks that every step reported
success, that no personnummer reached the output, and that every process was
stopped; and that a failure names what failed.
"""

from __future__ import annotations

import contextlib
import io
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from rich.console import Console

from backa.demo import CHILD_NUMBER, DemoSettings, run
from broker.provision import RabbitmqctlError, RabbitmqctlRunner
from tests.demo_run import DemoRun

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def demo_vhost(rabbitmqctl: RabbitmqctlRunner) -> Iterator[str]:
    """A vhost of the demo's own, removed afterwards."""
    vhost = f"backa-demo-test-{secrets.token_hex(3)}"
    yield vhost
    with contextlib.suppress(RabbitmqctlError):  # never created if set-up failed first
        rabbitmqctl.run(["delete_vhost", vhost])


def test_the_demo_passes_every_step_with_real_processes(demo_run: DemoRun) -> None:
    """Seven steps, each ✓; the child's number never printed; every process stopped."""
    text = demo_run.output
    for number in range(1, 8):
        assert re.search(rf"✓ Step {number}: ", text), f"step {number} did not pass:\n{text}"
    assert "All processes stopped." in text
    digits = CHILD_NUMBER.replace("-", "")
    assert digits not in text.replace("-", "")
    assert "consent_revoked" in text
    assert "escalated to lidingo-socialtjanst" in text


async def test_the_demo_names_what_failed(tmp_path: Path, demo_vhost: str) -> None:
    """With nothing listening at the AMQP address, set-up fails naming what did not start."""
    out = io.StringIO()
    settings = DemoSettings(
        amqp_url=SecretStr("amqp://guest:guest@127.0.0.1:1/"),
        demo_dir=tmp_path / "demo",
        demo_vhost=demo_vhost,
        demo_wait_s=5,
    )
    assert not await run(settings, Console(file=out, width=160))
    text = out.getvalue()
    assert "FAILED set-up" in text
    assert "All processes stopped (the demo failed)." in text
