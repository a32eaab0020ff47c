"""``backa broker serve`` as a real process: it starts, answers over mTLS, and stops cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from keys.area import load_area
from keys.ca import client_ssl_context
from keys.setup import AreaLayout, init_area
from tests.rabbit import amqp_url_for

pytestmark = pytest.mark.rabbitmq

DEMO = Path("deploy/areas/demo.toml")


@dataclass
class Served:
    """A running broker process and what a client needs to reach it."""

    process: asyncio.subprocess.Process
    port: int
    layout: AreaLayout
    lines: list[dict[str, object]]


async def _read_until(process: asyncio.subprocess.Process, event: str) -> list[dict[str, object]]:
    assert process.stderr is not None
    lines: list[dict[str, object]] = []
    while True:
        raw = await asyncio.wait_for(process.stderr.readline(), timeout=60)
        assert raw, f"the broker exited before logging {event}: {lines}"
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        lines.append(record)
        if record.get("event") == event:
            return lines


@pytest.fixture
async def served(tmp_path: Path, scratch_vhost: str) -> AsyncIterator[Served]:
    """A broker process on a fresh area, SQLite store and the scratch vhost."""
    area_dir = tmp_path / "area"
    init_area(
        load_area(DEMO),
        area_dir,
        passphrase=None,
        insecure=True,
        now=datetime.now(UTC),
        rng=os.urandom,
        scrypt_n=2**10,
    )
    env = {
        **os.environ,
        "BACKA_AREA_DIR": str(area_dir),
        "BACKA_AMQP_URL": amqp_url_for(scratch_vhost),
        "BACKA_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'broker.db'}",
        "BACKA_HTTP_PORT": "0",
    }
    env.pop("BACKA_KEY_PASSPHRASE", None)
    env.pop("BACKA_KEY_PASSPHRASE_FILE", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backa",
        "broker",
        "serve",
        "--allow-insecure-keys",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        lines = await _read_until(process, "broker_serving")
        port = int(str(lines[-1]["http_port"]))
        yield Served(process, port, AreaLayout(area_dir), lines)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_serves_over_mtls_and_stops_on_sigterm(served: Served) -> None:
    """The officer's certificate reads /readyz; SIGTERM drains and exits 0."""
    officer = served.layout.officer_dir("sakerhet-lidingo")
    context = client_ssl_context(
        cert_file=officer / "client.crt",
        key_file=officer / "client.key",
        ca_file=served.layout.ca_cert,
        passphrase=None,
    )
    async with aiohttp.ClientSession() as session:
        url = f"https://localhost:{served.port}/readyz"
        async with session.get(url, ssl=context) as response:
            assert response.status == 200
            body = await response.json()
    assert body == {"status": "ready", "checks": {"rabbitmq": "ok", "store": "ok"}}
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), timeout=30) == 0
    assert served.process.stderr is not None
    rest = (await served.process.stderr.read()).decode()
    assert "broker_stopped" in rest


async def test_a_client_without_a_certificate_is_refused(served: Served) -> None:
    """Plain TLS without a client certificate never gets an HTTP answer."""
    context = ssl.create_default_context(cafile=str(served.layout.ca_cert))
    async with aiohttp.ClientSession() as session:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            async with session.get(f"https://localhost:{served.port}/healthz", ssl=context) as r:
                await r.read()


async def test_the_audit_log_is_for_security_officers_only(served: Served) -> None:
    """The officer gets a signed checkpoint; an adapter's certificate gets 403, and that is logged."""
    layout = served.layout
    officer = layout.officer_dir("sakerhet-lidingo")
    school = layout.agency_dir("torsviks-skola")
    contexts = {
        name: client_ssl_context(
            cert_file=folder / "client.crt",
            key_file=folder / "client.key",
            ca_file=layout.ca_cert,
            passphrase=None,
        )
        for name, folder in (("officer", officer), ("school", school))
    }
    base = f"https://localhost:{served.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/v1/audit/checkpoint?fresh=1", ssl=contexts["officer"]) as r:
            assert r.status == 200
            note = await r.text()
        async with session.get(f"{base}/v1/audit/entries", ssl=contexts["school"]) as r:
            assert r.status == 403
        async with session.get(
            f"{base}/v1/audit/entries?event=audit_read", ssl=contexts["officer"]
        ) as r:
            assert r.status == 200
            reads = (await r.json())["entries"]
    assert note.startswith("backa.audit/lidingo-demo\n")
    refused = [e["entry"] for e in reads if e["entry"]["query"].startswith("refused")]
    assert len(refused) == 1
    assert refused[0]["query"] == "refused /v1/audit/entries"
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), timeout=30) == 0
