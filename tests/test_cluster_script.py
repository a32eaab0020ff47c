"""deploy/cluster/cluster.sh: a three-node RabbitMQ cluster of its own on this machine.

The test starts real RabbitMQ nodes next to the main one (on their own ports,
with their own name and a scratch directory), and checks what the cluster is
for: a quorum queue keeps every message whose publish was confirmed when the
node that leads it stops, and the node comes back into the cluster. Whatever
happens, it stops the nodes and deletes their directory, and the main node
still answers afterwards.

Takes about a minute on two cores; ``pytest -m "not cluster"`` leaves it out.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aio_pika
import pytest
from pamqp.commands import Basic

ROOT: Final = Path(__file__).resolve().parent.parent
SCRIPT: Final = ROOT / "deploy" / "cluster" / "cluster.sh"
#: Not the defaults (backa, 5680), so a cluster someone left running is never touched.
NAME: Final = "backatest"
BASE_PORT: Final = 5690
NODES: Final = (1, 2, 3)
MESSAGES: Final = 100
#: The main RabbitMQ node (the same variable and default as tests/conftest.py).
MAIN_URL: Final = os.environ.get("BACKA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
AMQP_TIMEOUT_S: Final = 60.0


def _rabbitmq_installed() -> bool:
    if bin_dir := os.environ.get("BACKA_RABBITMQ_BIN"):
        return (Path(bin_dir) / "rabbitmq-server").exists()
    path = os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/lib/rabbitmq/bin", "/usr/sbin", "/usr/local/sbin"]
    )
    return shutil.which("rabbitmq-server", path=path) is not None


pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not _rabbitmq_installed(),
        reason="rabbitmq-server is not installed, so deploy/cluster/cluster.sh cannot start nodes",
    ),
]


def _node(n: int) -> str:
    return f"{NAME}{n}@localhost"


@dataclass(frozen=True)
class Run:
    """What one call of cluster.sh did."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def explain(self) -> str:
        return f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


class Cluster:
    """cluster.sh with this test's directory, name and ports."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.env = {
            **os.environ,
            "BACKA_CLUSTER_DIR": str(directory),
            "BACKA_CLUSTER_BASE_PORT": str(BASE_PORT),
            "BACKA_CLUSTER_NAME": NAME,
        }

    async def run(self, *args: str) -> Run:
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            SCRIPT,
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await process.communicate()
        assert process.returncode is not None
        return Run(
            process.returncode,
            stdout.decode(),
            stderr.decode(),
            time.monotonic() - started,
        )

    async def ok(self, *args: str) -> Run:
        result = await self.run(*args)
        assert result.returncode == 0, f"cluster.sh {' '.join(args)}: {result.explain()}"
        return result

    async def leader(self, queue: str) -> int:
        """The number of the node that leads the quorum queue, as node 2 sees it."""
        listed = await self.ok(
            "ctl", "2", "-q", "list_queues", "name", "leader", "--formatter", "json"
        )
        leaders = {row["name"]: row["leader"] for row in json.loads(listed.stdout)}
        by_name = {_node(n): n for n in NODES}
        assert leaders.get(queue) in by_name, f"no leader for {queue} among {leaders}"
        return by_name[leaders[queue]]


async def _amqp_answers(url: str) -> bool:
    try:
        connection = await aio_pika.connect(url, timeout=10)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError):
        return False
    await connection.close()
    return True


async def _declare_and_publish(url: str, queue: str, bodies: list[bytes]) -> None:
    """Declares a quorum queue and publishes bodies persistently, each confirmed."""
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        for body in bodies:
            confirmation = await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue,
                mandatory=True,
            )
            assert isinstance(confirmation, Basic.Ack), (
                f"{body!r} was not confirmed: {confirmation}"
            )
    finally:
        await connection.close()


async def _consume(url: str, queue: str, count: int) -> list[bytes]:
    """Consumes (and acknowledges) count messages from queue, then checks none is left."""
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=count)
        declared = await channel.get_queue(queue, ensure=True)
        bodies: list[bytes] = []
        async with declared.iterator() as messages:
            async for message in messages:
                bodies.append(message.body)
                await message.ack()
                if len(bodies) == count:
                    break
        assert await declared.get(no_ack=True, fail=False) is None, "more messages than published"
        return bodies
    finally:
        await connection.close()


async def _failover(cluster: Cluster, timings: dict[str, float]) -> int:
    """Runs the cluster through a failover; returns the node that led the queue."""
    started = await cluster.ok("start")
    timings["start"] = started.seconds
    assert (await cluster.run("status")).returncode == 0
    status = await cluster.ok("ctl", "1", "-q", "cluster_status", "--formatter", "json")
    assert sorted(json.loads(status.stdout)["running_nodes"]) == [_node(n) for n in NODES]
    urls = (await cluster.ok("urls")).stdout.strip().split(",")
    assert urls == [f"amqp://guest:guest@127.0.0.1:{BASE_PORT + n}/" for n in NODES]

    queue = f"test.cluster.{uuid.uuid4().hex[:12]}"
    bodies = [f"message {i:03d}".encode() for i in range(MESSAGES)]
    async with asyncio.timeout(AMQP_TIMEOUT_S):
        await _declare_and_publish(urls[0], queue, bodies)
    # Declared through node 1, the queue is led from there (client-local
    # placement); whichever node leads it is the one to stop.
    leader = await cluster.leader(queue)
    stopped = await cluster.ok("stop-node", str(leader))
    timings["stop-node"] = stopped.seconds
    assert (await cluster.run("status")).returncode == 3

    survivor = 2 if leader != 2 else 3
    async with asyncio.timeout(AMQP_TIMEOUT_S):
        received = await _consume(urls[survivor - 1], queue, MESSAGES)
    assert sorted(received) == bodies

    restarted = await cluster.ok("start-node", str(leader))
    timings["start-node"] = restarted.seconds
    assert (await cluster.run("status")).returncode == 0
    status = await cluster.ok("ctl", str(survivor), "-q", "cluster_status", "--formatter", "json")
    assert _node(leader) in json.loads(status.stdout)["running_nodes"]
    return leader


async def test_quorum_queue_keeps_confirmed_messages_when_its_leader_stops(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster")
    main_answered = await _amqp_answers(MAIN_URL)
    timings: dict[str, float] = {}
    leader = 0
    try:
        leader = await _failover(cluster, timings)
    finally:
        purged = await cluster.run("stop", "--purge")
        timings["stop --purge"] = purged.seconds
        print(  # noqa: T201 - the timings are what to watch on a slow machine
            "cluster.sh timings: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
            + (f" (node {leader} led the queue and was stopped)" if leader else "")
        )
    assert purged.returncode == 0, purged.explain()
    assert (await cluster.run("status")).returncode == 1
    assert not cluster.directory.exists()
    if main_answered:
        assert await _amqp_answers(MAIN_URL), f"the main RabbitMQ at {MAIN_URL} no longer answers"
