"""``backa adapter run`` as a real process: it starts, takes a submission, sends it, stops cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import aiohttp
import pytest

from adapters.config import token_digest
from broker.amqp import declare_topology
from broker.definitions import agency_permission
from broker.provision import RabbitmqctlRunner
from broker.topology import INGRESS_QUEUE
from keys.area import parse_area
from keys.setup import init_area
from tests.rabbit import amqp_url_for

pytestmark = pytest.mark.rabbitmq

SUFFIX = secrets.token_hex(3)
POLICE = f"polis-{SUFFIX}"
SOCIAL = f"soc-{SUFFIX}"
PASSWORD = secrets.token_urlsafe(12)
TOKEN = secrets.token_urlsafe(16)
DEMO_AREA = Path("deploy/areas/demo.toml").read_text(encoding="utf-8")
POLICY_FILE = Path("deploy/policy/sweden.toml").resolve()
REPORT = Path("docs/adapters/examples/police-concern_report.json").read_text(encoding="utf-8")


@dataclass
class Running:
    """The adapter process and its port."""

    process: asyncio.subprocess.Process
    port: int
    vhost: str


@pytest.fixture
def police_user(rabbitmqctl: RabbitmqctlRunner, scratch_vhost: str) -> Iterator[str]:
    """The police agency's RabbitMQ user with the provisioned permissions."""
    permission = agency_permission(POLICE)
    rabbitmqctl.run(["add_user", POLICE], stdin=PASSWORD + "\n")
    rabbitmqctl.run(
        [
            "set_permissions",
            "-p",
            scratch_vhost,
            POLICE,
            permission.configure,
            permission.write,
            permission.read,
        ]
    )
    try:
        yield scratch_vhost
    finally:
        rabbitmqctl.run(["delete_user", POLICE])


@pytest.fixture
async def running(tmp_path: Path, police_user: str) -> AsyncIterator[Running]:
    """An adapter process for the police, on a fresh area and the scratch vhost's topology."""
    text = DEMO_AREA.replace('"polisen-lidingo"', f'"{POLICE}"').replace(
        '"lidingo-socialtjanst"', f'"{SOCIAL}"'
    )
    area = parse_area(text)
    init_area(
        area,
        tmp_path / "area",
        passphrase=None,
        insecure=True,
        now=datetime.now(UTC),
        rng=os.urandom,
        scrypt_n=2**10,
    )
    connection = await aio_pika.connect(amqp_url_for(police_user))
    await declare_topology(await connection.channel(), [a.id for a in area.agency])
    await connection.close()
    (tmp_path / "amqp.password").write_text(PASSWORD)
    host_part = amqp_url_for(police_user).split("@", 1)[1]
    (tmp_path / "adapter.toml").write_text(
        f"""
agency = "{POLICE}"
area_dir = "area"
database = "police.db"
amqp_url = "amqp://{host_part}"
amqp_password_file = "amqp.password"
policy_file = "{POLICY_FILE}"
http_port = 0

[[systems]]
name = "polisens-arendesystem"
token_sha256 = "{token_digest(TOKEN)}"

[web]
enabled = false
""",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKA_KEY_PASSPHRASE")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backa",
        "adapter",
        "run",
        "--agency",
        POLICE,
        "--config",
        str(tmp_path / "adapter.toml"),
        "--allow-insecure-keys",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        port = await _port(process)
        yield Running(process, port, police_user)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _port(process: asyncio.subprocess.Process) -> int:
    assert process.stderr is not None
    seen: list[object] = []
    while True:
        raw = await asyncio.wait_for(process.stderr.readline(), timeout=60)
        assert raw, f"the adapter exited before serving: {seen}"
        try:
            record = json.loads(raw)
        except ValueError:
            seen.append(raw)
            continue
        seen.append(record)
        if record.get("event") == "adapter_serving":
            return int(record["port"])


async def test_the_adapter_process_sends_a_submission_and_stops_on_sigterm(
    running: Running,
) -> None:
    """A police concern report is accepted (202), published to backa.ingress; SIGTERM exits 0."""
    report = json.loads(REPORT.replace('"lidingo-socialtjanst"', f'"{SOCIAL}"'))
    base = f"http://127.0.0.1:{running.port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(f"{base}/healthz") as response:
                health = await response.json()
            if health["rabbitmq"] == "connected":
                break
            await asyncio.sleep(0.1)
        assert health == {"status": "ok", "agency": POLICE, "rabbitmq": "connected"}
        async with session.post(
            f"{base}/v1/messages", json=report, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response:
            assert response.status == 202, await response.text()
            message_id = (await response.json())["message_id"]
    connection = await aio_pika.connect(amqp_url_for(running.vhost))
    channel = await connection.channel()
    queue = await channel.get_queue(INGRESS_QUEUE, ensure=False)
    for _ in range(100):
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            break
        await asyncio.sleep(0.1)
    await connection.close()
    assert message is not None, "the envelope never reached backa.ingress"
    assert (message.message_id, message.user_id) == (message_id, POLICE)
    assert b"iakttagelser" not in message.body, "content travels encrypted"

    running.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(running.process.wait(), timeout=30) == 0
    assert running.process.stderr is not None
    assert "adapter_stopped" in (await running.process.stderr.read()).decode()
