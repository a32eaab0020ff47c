"""Scale-out for real: two broker instances on one PostgreSQL, a three-node RabbitMQ cluster.

``deploy/cluster/cluster.sh`` starts three RabbitMQ nodes on this machine
(ports of their own, so the main RabbitMQ is not touched). The demo area's
keys and users are provisioned on the cluster; two ``backa broker serve``
processes share one fresh PostgreSQL database; the police adapter and social
services' adapter run as processes whose RabbitMQ setting names all three
nodes. Social services' adapter hands over by webhook to an agency system
played by this test, which counts every hand-over by message id.

In the middle of a stream of concern reports (police → social services, by
law), one RabbitMQ node is stopped (the first node in every process's list:
the one they are all connected to) and one broker instance is killed with
SIGKILL. Afterwards every report must have been handed over exactly once,
every sender must see it delivered, and the audit log must verify against
a fresh broker-signed checkpoint with no gap.

``BACKA_CLUSTER_MESSAGES`` sets the length of the stream (``make cluster-test``
runs a longer one than ``make test``). When the test fails, or always if
``BACKA_CLUSTER_LOG_DIR`` names a folder, every process's log lines (JSON
lines, one file a process), the RabbitMQ nodes' own logs and the cluster's
queues and consumers as RabbitMQ saw them at the end are kept there (on a
failure without the setting: in the test's temporary folder), and the folder
is printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from rich.console import Console
from sqlalchemy.engine import make_url

from backa.demo import POLICE, SOCIAL, Demo, setup_area, start_adapter, start_broker
from broker.provision import RabbitmqctlRunner
from tests.dbs import fresh_postgres_database
from tests.process_area import (
    AgencySystem,
    Outcome,
    agency_system,
    check_outcome,
    log_count,
    send_stream,
)

pytestmark = [pytest.mark.cluster, pytest.mark.scaleout, pytest.mark.rabbitmq, pytest.mark.postgres]

SCRIPT = Path("deploy/cluster/cluster.sh").resolve()
MESSAGES = int(os.environ.get("BACKA_CLUSTER_MESSAGES", "240"))
#: How long everything may take to arrive after the last report was sent.
SETTLE_S = 240.0
#: Where to keep every log of the run even when it passes ("": only on a failure).
KEEP_LOGS = os.environ.get("BACKA_CLUSTER_LOG_DIR", "")
#: What rabbitmqctl is asked about the queues and consumers at the end of a run.
QUEUE_INFO = [
    "name",
    "type",
    "leader",
    "members",
    "online",
    "messages",
    "messages_ready",
    "messages_unacknowledged",
    "consumers",
]


@dataclass(frozen=True)
class Cluster:
    """A running three-node cluster of deploy/cluster/cluster.sh."""

    env: dict[str, str]
    ports: tuple[int, ...]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the script with this cluster's settings; fail the test if it fails."""
        done = subprocess.run(  # noqa: S603 - our own script, fixed arguments
            [str(SCRIPT), *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"cluster.sh {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done

    def rabbitmqctl(self, node: int) -> RabbitmqctlRunner:
        """rabbitmqctl against ``node`` with the cluster's cookie (for provisioning)."""
        settings = [f"{k}={v}" for k, v in self.env.items()]
        return RabbitmqctlRunner(command=("env", *settings, str(SCRIPT), "ctl", str(node)))

    @property
    def hosts(self) -> str:
        """Every node as host:port, commas between (the demo's amqp_host)."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three RabbitMQ nodes of this test's own, stopped and deleted afterwards."""
    if shutil.which("rabbitmq-server") is None and not Path("/usr/sbin/rabbitmq-server").exists():
        pytest.skip("rabbitmq-server is not installed here: no cluster can be started")
    # A name and ports of this run's own: a cluster some earlier run left behind
    # (or another checkout's) cannot be mistaken for this one.
    base = _free_base()
    cluster = Cluster(
        env={
            "BACKA_CLUSTER_DIR": str(tmp_path_factory.mktemp("cluster")),
            "BACKA_CLUSTER_BASE_PORT": str(base),
            "BACKA_CLUSTER_NAME": f"backaci{secrets.token_hex(3)}n",
        },
        ports=(base + 1, base + 2, base + 3),
    )
    started = time.monotonic()
    try:
        cluster.run("start")
        print(f"three-node cluster started in {time.monotonic() - started:.1f} s")  # noqa: T201
        yield cluster
    finally:
        subprocess.run(  # noqa: S603 - our own script
            [str(SCRIPT), "stop", "--purge"],
            env={**os.environ, **cluster.env},
            capture_output=True,
            timeout=300,
            check=False,
        )


def _free_base() -> int:
    """A port base whose three AMQP and three distribution ports are all free now."""
    for _ in range(50):
        base = 6000 + 10 * secrets.randbelow(300)
        ports = [base + n for n in (1, 2, 3)] + [base + n + 20000 for n in (1, 2, 3)]
        if all(_free(port) for port in ports):
            return base
    pytest.fail("no free ports for a three-node cluster between 6000 and 9000")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
async def case_system() -> AsyncIterator[AgencySystem]:
    async with agency_system() as system:
        yield system


async def test_a_stream_survives_a_rabbitmq_node_and_a_broker_instance_dying(
    cluster: Cluster, case_system: AgencySystem, tmp_path: Path
) -> None:
    demo = Demo(
        workdir=tmp_path / "area",
        amqp_host=cluster.hosts,
        vhost="backa",
        console=Console(quiet=True),
        wait_s=120.0,
    )
    failed = True
    try:
        async with fresh_postgres_database() as database_url:
            outcome = await _run(demo, cluster, case_system, database_url)
        failed = False
    finally:
        # What RabbitMQ holds while the processes still run (their consumers).
        rabbit = _rabbit_state(cluster) if failed or KEEP_LOGS else ""
        await demo.stop_all()
        if failed or KEEP_LOGS:
            folder = Path(KEEP_LOGS) if KEEP_LOGS else tmp_path / "logs"
            try:
                _keep_logs(demo, cluster, rabbit, folder)
            except OSError as exc:  # never hide the test's own failure behind this one
                print(f"the run's logs could not be kept in {folder}: {exc}")  # noqa: T201
    assert (outcome.handed_over, outcome.lost, outcome.webhook_repeats) == (MESSAGES, 0, 0)


async def _run(demo: Demo, cluster: Cluster, system: AgencySystem, database_url: str) -> Outcome:
    await setup_area(demo, cluster.rabbitmqctl(1))
    await start_broker(demo, "broker", database_url)
    await start_broker(demo, "broker-2", database_url)
    await start_adapter(demo, SOCIAL, system.webhook_config)
    await start_adapter(demo, POLICE)

    async def node_and_broker_die() -> None:
        # The first node in every list: every process is connected to it.
        stop = asyncio.create_task(asyncio.to_thread(cluster.run, "stop-node", "1"))
        await demo.kill("broker-2")
        await stop

    started = time.monotonic()
    sent = await send_stream(demo, MESSAGES, {MESSAGES // 3: node_and_broker_die})
    outcome = await check_outcome(
        demo, system, sent, started=started, settle_s=SETTLE_S, label="cluster"
    )
    await _print_storage(database_url, len(sent))
    print(  # noqa: T201 - how often RabbitMQ refused a publish, and the remedy was used
        f"transient failures retried by the brokers {log_count(demo, 'transient_failure')}, "
        f"publishes the adapters deferred {log_count(demo, 'publish_deferred')}, "
        f"publisher channels renewed {log_count(demo, 'publisher_channel_renewed')}, "
        f"messages failed {log_count(demo, 'message_failed')}, "
        f"dead-lettered {log_count(demo, 'dead_lettered')}"
    )
    first = f"127.0.0.1:{cluster.ports[0]}"
    for name in ("broker", POLICE, SOCIAL):
        nodes = [
            line["node"]
            for line in demo.procs[name].lines
            if line.get("event") == "rabbitmq_node_connected"
        ]
        assert nodes[0] == first, f"{name} first connected to node 1"
        assert any(node != first for node in nodes[1:]), f"{name} failed over from node 1"
    return outcome


async def _print_storage(database_url: str, messages: int) -> None:
    """What the broker's PostgreSQL holds per message, table by table (for docs/SCALING.md)."""
    url = make_url(database_url).set(drivername="postgresql")
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        await connection.execute("ANALYZE")
        rows = await connection.fetch(
            "SELECT relname, n_live_tup, pg_total_relation_size(relid) AS bytes "
            "FROM pg_stat_user_tables ORDER BY bytes DESC"
        )
    finally:
        await connection.close()
    total = sum(int(r["bytes"]) for r in rows)
    tables = ", ".join(
        f"{r['relname']} {r['n_live_tup']} rows {int(r['bytes']) // 1024} KiB" for r in rows
    )
    print(f"PostgreSQL: {total / messages:.0f} bytes per message in all; {tables}")  # noqa: T201


def _rabbit_state(cluster: Cluster) -> str:
    """The vhost's queues (leader, members, counts, consumers) and consumers, as a node sees them.

    Asks node 2, then node 3 (node 1 was stopped); never fails the test itself.
    """
    parts = []
    for node in (2, 3):
        answered = True
        for args in (
            ["list_queues", "-p", "backa", *QUEUE_INFO],
            ["list_consumers", "-p", "backa"],
            ["list_connections", "name", "user", "channels", "state"],
            ["cluster_status"],
        ):
            try:
                done = subprocess.run(  # noqa: S603 - our own script, fixed arguments
                    [str(SCRIPT), "ctl", str(node), *args],
                    env={**os.environ, **cluster.env},
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                parts.append(f"node {node} {args[0]}: timed out")
                answered = False
                continue
            answered = answered and done.returncode == 0
            parts.append(f"node {node} {' '.join(args)} (exit {done.returncode}):\n{done.stdout}")
            if done.stderr.strip():
                parts.append(done.stderr)
        if answered:
            break
    return "\n".join(parts)


def _keep_logs(demo: Demo, cluster: Cluster, rabbit: str, folder: Path) -> None:
    """Write every process's log lines, the nodes' logs and ``rabbit`` to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, proc in enumerate([*demo.finished, *demo.procs.values()]):
        with (folder / f"{index:02d}-{proc.name}.jsonl").open("w") as out:
            for line in proc.lines:
                out.write(json.dumps(line, default=str) + "\n")
    (folder / "rabbitmq-state.txt").write_text(rabbit)
    nodes = Path(cluster.env["BACKA_CLUSTER_DIR"])
    for log in nodes.glob("node*/log/*.log"):
        shutil.copy(log, folder / f"{log.parent.parent.name}-{log.name}")
    print(f"the run's logs are in {folder}")  # noqa: T201 - where to read them
