"""Broker hop throughput: ingress → broker → recipient queue, against raw aio-pika.

In one run, on the same RabbitMQ:

* **raw**: publish N persistent 2 KiB messages with publisher confirms to one
  quorum queue and consume them with manual acks (the anchor);
* **broker hop**: publish N sealed envelopes (2 KiB content, one recipient) to
  ``backa.ingress`` as the sending agency's RabbitMQ user; the broker — a
  separate process running ``BrokerService`` on a fresh SQLite (or, with
  ``--postgres``, PostgreSQL) store — verifies, checks policy, records, routes with
  confirms and acks; this process consumes them from the recipient's queue.

* **bare forwarder**: a process that only consumes ``backa.ingress`` and
  publishes each body with a confirm to the recipient's queue, then acks;
* **forwarder + receipt**: the same, plus a receipt with a confirm to the
  sender's queue — exactly the broker's RabbitMQ traffic (one quorum-queue
  consume, two confirmed quorum-queue publishes, where raw has one of each)
  without its verification, policy, store or logging: the ceiling of the
  broker hop on this machine, whatever the broker does in between.

Both sides keep ``--window`` publishes in flight. Messages per second is N
over the time from the first publish to the last message consumed. The run
uses a scratch vhost and scratch users (made with rabbitmqctl, removed after),
and ends with one JSON line of the headline figures.

    .venv/bin/python -m bench.broker_hop [--messages 3000] [--window 200] [--rounds 3]
                                         [--postgres postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import aio_pika
import asyncpg
from sqlalchemy.engine import make_url

from broker.batching import GroupCommitStore
from broker.consents import ConsentBook, ConsentPolicy
from broker.metrics import Metrics
from broker.service import BrokerService
from broker.store import create_store, migrate
from broker.topology import (
    DELIVER_EXCHANGE,
    INGRESS_EXCHANGE,
    INGRESS_QUEUE,
    TYPE_ENVELOPE,
    agency_queue,
)
from keys import logs
from keys.envelope import seal
from keys.policy import load_policy
from schemas.directory import AgencyType
from schemas.envelope import Kind, LegalBasis, Purpose
from tests.support import CHILD, Agency, signed_directory

#: RabbitMQ users are global, not per vhost: each run's agencies get names of their
#: own, which the broker and forwarder processes it starts inherit.
RUN = os.environ.setdefault("BACKA_BENCH_RUN", secrets.token_hex(3))
SENDER = Agency.make(f"bench-skola-{RUN}")
RECIPIENT = Agency.make(f"bench-soc-{RUN}")
BROKER = Agency.make(f"bench-broker-{RUN}")
AGENCIES = [
    (SENDER, AgencyType.SCHOOL),
    (RECIPIENT, AgencyType.SOCIAL_SERVICES),
    (BROKER, AgencyType.BROKER),
]
POLICY_FILE = Path("deploy/policy/sweden.toml")
HOST = os.environ.get("BACKA_BENCH_AMQP_HOST", "127.0.0.1:5672")


async def _pg_admin(server_url: str, statement: str) -> None:
    url = make_url(server_url).set(drivername="postgresql")
    connection = await asyncpg.connect(url.render_as_string(hide_password=False), timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def fresh_database(server_url: str | None, scratch: str, name: str) -> str:
    """A new, empty store for one run: a SQLite file, or a PostgreSQL database on ``server_url``.

    A PostgreSQL database is named ``backa_bench_<name>_<random>``; ``drop_database``
    removes it.
    """
    if server_url is None:
        return f"sqlite+aiosqlite:///{scratch}/{name}.db"
    database = f"backa_bench_{name}_{secrets.token_hex(4)}"
    asyncio.run(_pg_admin(server_url, f'CREATE DATABASE "{database}"'))
    return (
        make_url(server_url)
        .set(drivername="postgresql+asyncpg", database=database)
        .render_as_string(hide_password=False)
    )


def drop_database(database_url: str) -> None:
    """Remove a PostgreSQL database ``fresh_database`` made (a SQLite file goes with its dir)."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        asyncio.run(
            _pg_admin(
                url.set(database="postgres").render_as_string(hide_password=False),
                f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)',
            )
        )


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _postgres_pids(database: str) -> list[int]:
    """The PostgreSQL backends serving ``database`` (their title names it)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with suppress(OSError):
            title = cmdline.read_bytes().decode(errors="replace")
            if title.startswith("postgres: ") and f" {database} " in title:
                pids.append(int(cmdline.parent.name))
    return pids


class CpuMeter:
    """CPU seconds spent by RabbitMQ, PostgreSQL, the process under test and this one.

    On a 2-core machine where all four share the cores, the sum of their CPU
    time per message bounds the rate: ``rate <= cores / cpu_per_message``.
    RabbitMQ's figure includes any other load on the node; PostgreSQL's counts
    the backends serving ``database`` only (not the WAL writer or checkpointer).
    """

    def __init__(self, rabbitmq_pid: int | None, database: str | None = None) -> None:
        self.rabbitmq_pid = rabbitmq_pid
        self.database = database
        self.before: dict[str, float] = {}

    def _now(self, process: int | None) -> dict[str, float]:
        own = os.times()
        return {
            "rabbitmq": _cpu_seconds(self.rabbitmq_pid) if self.rabbitmq_pid else 0.0,
            "postgres": (
                sum(_cpu_seconds(pid) for pid in _postgres_pids(self.database))
                if self.database
                else 0.0
            ),
            "process": _cpu_seconds(process) if process else 0.0,
            "client": own.user + own.system,
        }

    def start(self, process: int | None = None) -> None:
        """Take the first reading."""
        self.before = self._now(process)

    def per_message_ms(self, n: int, process: int | None = None) -> dict[str, float]:
        """Each role's CPU milliseconds per message since ``start``."""
        after = self._now(process)
        return {k: round((after[k] - self.before[k]) * 1000 / n, 3) for k in after}


@functools.cache
def rabbitmq_pid() -> int | None:
    """The OS process id of the local RabbitMQ node, or None if it cannot be asked."""
    try:
        out = subprocess.run(
            ["rabbitmqctl", "-q", "eval", "os:getpid()."],  # noqa: S607 - the operator's
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    digits = out.strip().strip('"')
    return int(digits) if digits.isdigit() else None


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)  # noqa: S603, S607


def _url(user: str, password: str, vhost: str) -> str:
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"amqp://{credentials}@{HOST}/{quote(vhost, safe='')}"


async def _publish_all(
    url: str,
    bodies: Iterable[bytes],
    *,
    exchange: str,
    routing_key: str,
    user_id: str | None,
    window: int,
) -> float:
    """Publish every body with confirms, ``window`` in flight; return the start time."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = (
            channel.default_exchange
            if exchange == ""
            else await channel.get_exchange(exchange, ensure=False)
        )
        limit = asyncio.Semaphore(window)
        started = time.perf_counter()

        async def one(body: bytes) -> None:
            async with limit:
                await target.publish(
                    aio_pika.Message(
                        body,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        user_id=user_id,
                        type=TYPE_ENVELOPE,
                        content_type="application/json",
                    ),
                    routing_key=routing_key,
                )

        await asyncio.gather(*(one(b) for b in bodies))
        return started


async def _consume(url: str, queue_name: str, count: int, prefetch: int) -> float:
    """Consume ``count`` messages with manual acks; return when the last one arrived."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(queue_name, ensure=False)
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        seen = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen
            await message.ack()
            seen += 1
            if seen == count and not done.done():
                done.set_result(time.perf_counter())

        tag = await queue.consume(on_message)
        finished = await asyncio.wait_for(done, timeout=600)
        await queue.cancel(tag)
        return finished


async def _raw(url: str, n: int, window: int, cpu: dict[str, float] | None = None) -> float:
    """Raw publish + consume through one quorum queue; fills ``cpu`` (ms per message) if given."""
    meter = CpuMeter(rabbitmq_pid())
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue("bench.raw", durable=True, arguments={"x-queue-type": "quorum"})
    body = os.urandom(2048)
    meter.start()
    consumer = asyncio.create_task(_consume(url, "bench.raw", n, window))
    started = await _publish_all(
        url, [body] * n, exchange="", routing_key="bench.raw", user_id=None, window=window
    )
    finished = await consumer
    if cpu is not None:
        cpu.update(meter.per_message_ms(n))
    return n / (finished - started)


def _seal_all(n: int) -> list[bytes]:
    now = datetime.now(UTC)
    content = os.urandom(1536).hex()[:2048].encode()  # 2 KiB of content
    return [
        seal(
            content,
            sender=SENDER.sender,
            recipients=[RECIPIENT.sealing],
            kind=Kind.CONCERN_REPORT,
            child=CHILD,
            basis=LegalBasis(type="legal", ref="osl-10-28"),
            purpose=Purpose.CONCERN,
            created=now,
            expires=now + timedelta(days=1),
        ).wire
        for _ in range(n)
    ]


async def _hop(
    url_guest: str,
    url_sender: str,
    *,
    n: int,
    window: int,
    database_url: str,
    profile: str | None = None,
    mode: str = "--serve",
    cpu: dict[str, float] | None = None,
) -> float:
    """Messages per second through the process ``mode`` starts; fills ``cpu`` if given."""
    bodies = _seal_all(n)
    database = make_url(database_url).database if database_url.startswith("postgresql") else None
    meter = CpuMeter(rabbitmq_pid(), database)
    broker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.broker_hop",
        mode,
        url_guest,
        database_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,  # one JSON line per message, as in production
    )
    try:
        assert broker.stdout is not None  # noqa: S101 - started with a pipe
        ready = await asyncio.wait_for(broker.stdout.readline(), timeout=60)
        if ready.strip() != b"ready":
            raise RuntimeError(f"broker process did not start: {ready!r}")
        spy = None
        if profile:
            # py-spy samples the broker process; collapsed stacks, for a flame graph.
            spy = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).with_name("py-spy")),
                *("record", "--format", "raw", "--output", profile, "--pid", str(broker.pid)),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        meter.start(broker.pid)
        consumer = asyncio.create_task(
            _consume(url_guest, agency_queue(RECIPIENT.agency), n, window)
        )
        started = await _publish_all(
            url_sender,
            bodies,
            exchange=INGRESS_EXCHANGE,
            routing_key=INGRESS_QUEUE,
            user_id=SENDER.agency,
            window=window,
        )
        finished = await consumer
        if cpu is not None:
            cpu.update(meter.per_message_ms(n, broker.pid))
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            await asyncio.wait_for(spy.wait(), timeout=60)
        return n / (finished - started)
    finally:
        broker.terminate()
        await asyncio.wait_for(broker.wait(), timeout=60)


async def _serve(url: str, database_url: str, policy_file: Path) -> None:
    """The broker side, in its own process: runs until SIGTERM, logging as in production."""
    logs.configure(json=True)
    await migrate(database_url)
    store = create_store(database_url)
    service = BrokerService(
        amqp_url=url,
        store=GroupCommitStore(store),
        directory=signed_directory(AGENCIES, at=datetime.now(UTC) - timedelta(days=1)),
        broker_key=BROKER.sender,
        # The real rules: a concern report to social services under OSL 10 kap. 28 §.
        policy=ConsentPolicy(policy=load_policy(policy_file), book=ConsentBook()),
        metrics=Metrics(),
        prefetch=256,
    )
    await service.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await service.stop()
    await store.close()


async def _forward(url: str, *, receipt: bool = False) -> None:
    """A bare forwarder, the ceiling for any broker in Python on this machine.

    Consumes backa.ingress and publishes each body, with a confirm, to the
    recipient's queue, then acks: the broker's RabbitMQ traffic minus its
    receipt, with no verification, policy, store or logging at all. With
    ``receipt``, it also publishes a 400-byte receipt to the sender's queue
    (as the broker does, with a confirm): exactly the broker's RabbitMQ work,
    and so the ceiling of the broker hop itself.
    """
    receipt_body = os.urandom(200).hex().encode()
    connection = await aio_pika.connect(url)
    async with connection:
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=256)
        publisher = await connection.channel(publisher_confirms=True)
        exchange = await publisher.get_exchange(DELIVER_EXCHANGE, ensure=False)
        queue = await consumer.get_queue(INGRESS_QUEUE, ensure=False)

        async def forward(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await exchange.publish(
                aio_pika.Message(message.body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=RECIPIENT.agency,
            )
            if receipt:
                await exchange.publish(
                    aio_pika.Message(receipt_body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=SENDER.agency,
                )
            await message.ack()

        await queue.consume(forward)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()


@dataclass
class Runs:
    """Each run's messages per second, and its CPU milliseconds per message by role."""

    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def add(self, name: str, rate: float, cpu: dict[str, float]) -> None:
        """Record one run of ``name``."""
        self.rates.setdefault(name, []).append(rate)
        self.cpu.setdefault(name, []).append(cpu)

    def median(self, name: str) -> float:
        """The median rate of ``name``."""
        return statistics.median(self.rates[name])

    def cpu_median(self, name: str) -> dict[str, float]:
        """The median CPU milliseconds per message of each role in ``name``'s runs."""
        roles = self.cpu[name][0].keys()
        return {r: round(statistics.median(c[r] for c in self.cpu[name]), 3) for r in roles}


def measure(
    *, messages: int, window: int, rounds: int, postgres: str | None, profile: str | None = None
) -> Runs:
    """Raw, broker hop, bare forwarder and forwarder + receipt, alternating for ``rounds``.

    Names the runs "raw", "hop", "bare" and "ceiling"; a scratch vhost and
    sender user exist only for the run.
    """
    runs = Runs()
    vhost = f"backa-bench-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    _ctl("add_vhost", vhost)
    _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    _ctl("add_user", SENDER.agency, password)
    _ctl("set_permissions", "-p", vhost, SENDER.agency, "^$", "^backa\\.ingress$", "^$")
    url_guest = _url("guest", "guest", vhost)
    url_sender = _url(SENDER.agency, password, vhost)

    def hop(mode: str, database_url: str, profile: str | None = None) -> None:
        cpu: dict[str, float] = {}
        rate = asyncio.run(
            _hop(
                url_guest,
                url_sender,
                n=messages,
                window=window,
                database_url=database_url,
                profile=profile,
                mode=mode,
                cpu=cpu,
            )
        )
        runs.add({"--serve": "hop", "--forward": "bare"}.get(mode, "ceiling"), rate, cpu)

    try:
        with tempfile.TemporaryDirectory() as scratch:
            # Alternate the runs so that a noisy neighbour hits all alike.
            for round_number in range(rounds):
                cpu: dict[str, float] = {}
                runs.add("raw", asyncio.run(_raw(url_guest, messages, window, cpu)), cpu)
                database_url = fresh_database(postgres, scratch, f"hop{round_number}")
                try:
                    hop("--serve", database_url, profile if round_number == 0 else None)
                finally:
                    drop_database(database_url)
                hop("--forward", "")
                hop("--forward-receipt", "")
    finally:
        _ctl("delete_user", SENDER.agency)
        _ctl("delete_vhost", vhost)
    return runs


def rabbitmq_version() -> str:
    """What the local ``rabbitmqctl version`` prints."""
    return subprocess.run(
        ["rabbitmqctl", "-q", "version"],  # noqa: S607 - the operator's rabbitmqctl
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def main() -> None:
    """Measure raw and broker hop in one run; print both, the ratio and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--postgres",
        metavar="SERVER_URL",
        default=None,
        help="store on PostgreSQL (a fresh database per round on this server, e.g. "
        "postgresql://postgres@127.0.0.1:5432/postgres) instead of a SQLite file",
    )
    parser.add_argument("--profile", help="record the broker process with py-spy into FILE")
    parser.add_argument("--serve", nargs=2, metavar=("AMQP_URL", "DATABASE_URL"))
    parser.add_argument("--forward", nargs=2, metavar=("AMQP_URL", "UNUSED"))
    parser.add_argument("--forward-receipt", nargs=2, metavar=("AMQP_URL", "UNUSED"))
    args = parser.parse_args()
    if args.forward:
        asyncio.run(_forward(args.forward[0]))
        return
    if args.forward_receipt:
        asyncio.run(_forward(args.forward_receipt[0], receipt=True))
        return
    if args.serve:
        url, database_url = args.serve
        asyncio.run(_serve(url, database_url, POLICY_FILE))
        return

    runs = measure(
        messages=args.messages,
        window=args.window,
        rounds=args.rounds,
        postgres=args.postgres,
        profile=args.profile,
    )
    raw, hop, bare, ceiling = (runs.median(name) for name in ("raw", "hop", "bare", "ceiling"))
    ratios = sorted(h / r for h, r in zip(runs.rates["hop"], runs.rates["raw"], strict=True))
    version = rabbitmq_version()
    print(
        f"broker hop, {args.messages} messages of 2 KiB, {args.window} in flight, "
        f"median of {args.rounds} alternating rounds"
    )
    print(f"  raw aio-pika publish+consume (quorum queue)  {raw:8.0f} msg/s")
    print(f"  bare forwarder (no checks, store, receipt)    {bare:8.0f} msg/s", end="")
    print(f"   ratio {bare / raw:.2f}")
    print(f"  forwarder + receipt (the broker's AMQP work)  {ceiling:8.0f} msg/s", end="")
    print(f"   ratio {ceiling / raw:.2f}")
    print(f"  ingress -> broker -> recipient queue          {hop:8.0f} msg/s", end="")
    print(f"   ratio {hop / raw:.2f}   of the forwarder + receipt {hop / ceiling:.2f}")
    print("  CPU ms per message (median)   rabbitmq  postgres   process    client     total")
    cpu = {name: runs.cpu_median(name) for name in ("raw", "bare", "ceiling", "hop")}
    for name, label in (
        ("raw", "raw"),
        ("bare", "bare forwarder"),
        ("ceiling", "forwarder + receipt"),
        ("hop", "broker hop"),
    ):
        c = cpu[name]
        print(
            f"    {label:<27}"
            + "".join(f"{c[k]:10.3f}" for k in ("rabbitmq", "postgres", "process", "client"))
            + f"{sum(c.values()):10.3f}"
        )
    print(
        json.dumps(
            {
                "bench": "broker_hop",
                "messages": args.messages,
                "msgs_per_s": round(hop),
                "raw_msgs_per_s": round(raw),
                "ratio": round(hop / raw, 3),
                "bare_forward_msgs_per_s": round(bare),
                "bare_forward_ratio": round(bare / raw, 3),
                "forward_receipt_msgs_per_s": round(ceiling),
                "forward_receipt_ratio": round(ceiling / raw, 3),
                "hop_of_forward_receipt": round(hop / ceiling, 3),
                "hop_ratio_per_round": [round(r, 3) for r in ratios],
                "cpu_ms_per_message": cpu,
                "rounds": args.rounds,
                "store": "postgresql" if args.postgres else "sqlite",
                "cpu_count": os.cpu_count(),
                "rabbitmq": version,
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
