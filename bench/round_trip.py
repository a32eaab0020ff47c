"""Full round trip through real processes, beside raw aio-pika and the broker hop, in one run.

In one run, on the local RabbitMQ, alternating round by round so that a noisy
neighbour hits all alike:

* **raw**: persistent 2 KiB publishes with confirms to one quorum queue,
  consumed with manual acks (``bench.broker_hop._raw``): the anchor;
* **broker hop**: ingress → broker → recipient queue (``bench.broker_hop._hop``);
* **full round trip**: an agency system POSTs police concern reports (2 KiB of
  content) to the police adapter's API with ``--window`` requests in flight;
  the adapter seals and publishes; the broker (``backa broker serve``, SQLite)
  verifies, checks policy, records and routes; social services' adapter opens,
  stores, hands over by webhook to an agency system played by this process and
  sends ``delivered`` (and ``handed_over``) back through the broker; the
  police adapter records the receipts. Messages per second is N over the time
  from the first submission to the N-th ``delivered`` recorded by the sender.

Then, on the same processes:

* **latency at half load** (and at a tenth, to show the pipeline's own
  latency without queueing): submissions at half the measured maximum, open
  loop (each has a scheduled time and its latency counts from it, so a stall
  is not hidden by the sender waiting: no coordinated omission); p50/p95/p99
  from submission to ``delivered`` at the sender, to the webhook, and to the
  adapter's ``202``;
* **memory**: VmRSS of the broker and of each adapter after every tenth of
  ``--memory-messages`` messages through the full round trip;
* **backlog drain**: social services' adapter stopped, ``--backlog`` sealed
  concern reports published as the police through the broker into its queue,
  the adapter started again: the time from its start to the last hand-over.

Every process logs as in production (JSON lines on standard error, read by
this process). The sender's ``delivered`` is seen in its ``receipt`` log line;
the area, its keys, RabbitMQ vhost and users (named for this run, never the
demo's, which other runs use), the databases and the agency system are this
run's own, and removed at the end. The last line is JSON, also written to
``--out``.

    .venv/bin/python -m bench.round_trip [--messages 2000] [--rounds 3]
        [--memory-messages 100000] [--backlog 50000] [--profile DIR] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import math
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import aiohttp
import aiormq
from aiohttp import web
from rich.console import Console

from adapters.canonical import Submission
from adapters.mappings import mapping_for
from backa.demo import DEADLINES_FILE, EXAMPLES, MAX_LOG_LINES, Demo, Proc, start_adapter
from bench.broker_hop import (
    HOST,
    SENDER,
    _consume,
    _ctl,
    _hop,
    _publish_all,
    _raw,
    _url,
)
from broker.provision import RabbitmqctlError, RabbitmqctlRunner, password_file, provision
from broker.topology import INGRESS_EXCHANGE, INGRESS_QUEUE
from keys import logs
from keys.area import parse_area
from keys.envelope import SenderKey, seal
from keys.lookup import SealingKey
from keys.personnummer import parse_identity_number
from keys.pseudonym import PseudonymKey, child_pseudonym
from keys.setup import init_area, load_agency_keys, load_directory, load_pseudonym_key
from schemas.content import ConcernReport
from schemas.directory import AgencyType

_T = TypeVar("_T")

POLICY_FILE = Path("deploy/policy/sweden.toml")
RESULTS = Path(__file__).parent / "results" / "round_trip.json"
#: Bytes of content per message, as in the raw run's bodies.
CONTENT_BYTES = 2048
#: Publishes in flight for the raw and broker-hop runs (bench.broker_hop's default).
HOP_WINDOW = 200
#: The light load, as a fraction of the measured maximum: the pipeline's latency unqueued.
LIGHT_LOAD = 0.1
#: Seconds a phase may take beyond what 20 messages per second would need.
SLACK_S = 180.0


class BenchError(Exception):
    """A phase did not finish as it should; the message says what is missing."""


# --- what the processes say ------------------------------------------------------------------


@dataclass
class Observed:
    """What this process saw happen, in ``time.perf_counter`` seconds."""

    #: Clean message id → when the sender's adapter logged its ``delivered`` receipt.
    delivered: dict[str, float] = field(default_factory=dict)
    #: Every ``delivered`` receipt the sender recorded, in order (ids masked or not).
    delivered_at: list[float] = field(default_factory=list)
    handed_receipt: dict[str, float] = field(default_factory=dict)
    handed_receipt_at: list[float] = field(default_factory=list)
    #: Message id → the first webhook hand-over to the agency system.
    webhook: dict[str, float] = field(default_factory=dict)
    webhook_calls: int = 0
    #: Receipt log lines whose message id the log redaction had masked.
    masked: int = 0
    #: Warnings and errors, as "process: event", and the first few lines whole.
    trouble: collections.Counter[str] = field(default_factory=collections.Counter)
    trouble_lines: list[str] = field(default_factory=list)


def _observer(obs: Observed, sender: str) -> Callable[[str, dict[str, Any]], None]:
    def observe(name: str, record: dict[str, Any]) -> None:
        now = time.perf_counter()
        level = record.get("level")
        if level in ("warning", "error", "critical"):
            obs.trouble[f"{name}: {record.get('event')}"] += 1
            if len(obs.trouble_lines) < 20:  # noqa: PLR2004 - enough to see what went wrong
                obs.trouble_lines.append(f"{name}: {json.dumps(record)[:400]}")
        if name != sender or record.get("event") != "receipt" or record.get("recorded") is not True:
            return
        message_id = str(record.get("message_id"))
        # The personnummer mask of keys.logs also hits UUIDs with ten or twelve digits in a
        # row (about one id in a hundred): such lines count, but cannot be matched to an id.
        clean = "[redacted]" not in message_id
        obs.masked += not clean
        if record.get("status") == "delivered":
            obs.delivered_at.append(now)
            if clean:
                obs.delivered.setdefault(message_id, now)
        elif record.get("status") == "handed_over":
            obs.handed_receipt_at.append(now)
            if clean:
                obs.handed_receipt.setdefault(message_id, now)

    return observe


async def _read_log(
    proc: Proc, observe: Callable[[str, dict[str, Any]], None], stream: asyncio.StreamReader
) -> None:
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # a line over the reader's limit: dropped, the next one is read
            continue
        if not raw:
            return
        try:
            record = json.loads(raw)
        except ValueError:
            record = {"event": raw.decode(errors="replace").strip()}
        if not isinstance(record, dict):
            record = {"event": str(record)}
        if len(proc.lines) < MAX_LOG_LINES:
            proc.lines.append(record)
        proc.events[str(record.get("event"))] += 1
        observe(proc.name, record)


async def _tap(proc: Proc, observe: Callable[[str, dict[str, Any]], None]) -> None:
    """Read the rest of ``proc``'s log here, passing each line to ``observe`` as well.

    ``Demo.spawn`` reads each process's log but keeps no times; its reader is
    stopped at a line boundary (a readline cancelled while waiting leaves the
    buffer as it was) and this one carries on, keeping ``proc.lines`` and
    ``proc.events`` as it did.
    """
    stream = proc.process.stderr
    if stream is None:
        raise BenchError(f"{proc.name} has no log stream")
    if proc.reader is not None:
        proc.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await proc.reader
    proc.reader = asyncio.create_task(_read_log(proc, observe, stream))


# --- the agency system on the receiving side ----------------------------------------------------


@contextlib.asynccontextmanager
async def _agency_system(obs: Observed) -> AsyncIterator[str]:
    """Social services' case system: takes each webhook hand-over and notes when it came."""

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        obs.webhook.setdefault(request.headers["Idempotency-Key"], time.perf_counter())
        obs.webhook_calls += 1
        return web.Response(status=HTTPStatus.NO_CONTENT)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


# --- one area of real processes ------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One stream of submissions and what became of it."""

    sent: int
    seconds: float
    msgs_per_s: float
    handover_msgs_per_s: float
    #: Milliseconds from submission to: ``delivered`` at the sender, the webhook, the 202.
    to_delivered: list[float]
    to_webhook: list[float]
    to_accepted: list[float]
    #: CPU seconds each process used during the stream, by role.
    cpu_s: dict[str, float]


@dataclass
class Area:
    """The broker and the two adapters as processes, and how to drive them."""

    demo: Demo
    police: str
    social: str
    obs: Observed
    webhook_url: str
    body: bytes
    session: aiohttp.ClientSession
    police_password: str
    sealer: _Sealer
    sent_total: int = 0

    @property
    def roles(self) -> dict[str, str]:
        """Process name by role."""
        return {"broker": "broker", "sender_adapter": self.police, "recipient_adapter": self.social}

    def pids(self) -> dict[str, int]:
        """Process id by role, of the processes running now."""
        procs = self.demo.procs
        return {role: procs[name].process.pid for role, name in self.roles.items() if name in procs}

    async def submit(self) -> tuple[str, float]:
        """One concern report from the police's system; its message id and seconds to the 202."""
        started = time.perf_counter()
        async with self.session.post(
            self.demo.adapter_url(self.police) + "/v1/messages",
            data=self.body,
            headers={
                "Authorization": f"Bearer {self.demo.token}",
                "Content-Type": "application/json",
            },
        ) as response:
            answer = await response.json()
            if response.status != HTTPStatus.ACCEPTED:
                raise BenchError(f"the police adapter answered {response.status}: {answer}")
        return str(answer["message_id"]), time.perf_counter() - started

    async def closed_loop(self, n: int, window: int) -> Run:
        """``n`` submissions, ``window`` at a time, as fast as the adapter takes them."""
        starts: dict[str, float] = {}
        accepted: list[float] = []
        remaining = iter(range(n))

        async def worker() -> None:
            for _ in remaining:
                started = time.perf_counter()
                message_id, seconds = await self.submit()
                starts[message_id] = started
                accepted.append(seconds)

        base = len(self.obs.delivered_at)
        cpu = {**_cpu_seconds(self.pids()), "bench_driver": time.process_time()}
        first = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(window)))
        return await self._settled(starts, accepted, base=base, first=first, cpu=cpu)

    async def open_loop(self, n: int, per_second: float) -> Run:
        """``n`` submissions at ``per_second``, each timed from when it was due."""
        starts: dict[str, float] = {}
        accepted: list[float] = []

        async def one(due: float) -> None:
            message_id, seconds = await self.submit()
            starts[message_id] = due
            accepted.append(seconds)

        base = len(self.obs.delivered_at)
        cpu = {**_cpu_seconds(self.pids()), "bench_driver": time.process_time()}
        first = time.perf_counter()
        tasks = []
        for number in range(n):
            due = first + number / per_second
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
        return await self._settled(starts, accepted, base=base, first=first, cpu=cpu)

    async def _settled(
        self,
        starts: dict[str, float],
        accepted: list[float],
        *,
        base: int,
        first: float,
        cpu: dict[str, float],
    ) -> Run:
        """Wait until every submission is delivered, handed over and reported handed over."""
        n = len(starts)
        self.sent_total += n
        obs = self.obs
        timeout = SLACK_S + n / 20
        await _until(
            f"{n} delivered receipts at the sender",
            lambda: len(obs.delivered_at) >= base + n,
            timeout,
            self._trouble,
        )
        last_delivered = obs.delivered_at[base + n - 1]
        await _until(
            f"{n} webhook hand-overs",
            lambda: _all_in(starts, obs.webhook),
            timeout,
            self._trouble,
        )
        await _until(
            f"{n} handed_over receipts at the sender",
            lambda: len(obs.handed_receipt_at) >= base + n,
            timeout,
            self._trouble,
        )
        used = {**_cpu_seconds(self.pids()), "bench_driver": time.process_time()}
        unseen = [m for m in starts if m not in obs.delivered]
        await self._confirm_delivered(unseen)
        last_webhook = max(obs.webhook[m] for m in starts)
        return Run(
            sent=n,
            seconds=last_delivered - first,
            msgs_per_s=n / (last_delivered - first),
            handover_msgs_per_s=n / (last_webhook - first),
            to_delivered=[
                (obs.delivered[m] - t) * 1000 for m, t in starts.items() if m in obs.delivered
            ],
            to_webhook=[(obs.webhook[m] - t) * 1000 for m, t in starts.items()],
            to_accepted=[s * 1000 for s in accepted],
            cpu_s={role: used[role] - cpu[role] for role in used},
        )

    async def _confirm_delivered(self, message_ids: list[str]) -> None:
        """Ask the sender's API about messages whose receipt line had a masked id."""
        limit = asyncio.Semaphore(8)

        async def delivered(message_id: str) -> bool:
            async with limit:
                timeline = await self.demo.timeline(self.police, message_id)
            return any(status == "delivered" for status, _by, _why in timeline)

        answers = await asyncio.gather(*(delivered(m) for m in message_ids))
        missing = [m for m, ok in zip(message_ids, answers, strict=True) if not ok]
        if missing:
            raise BenchError(f"{len(missing)} messages never delivered, e.g. {missing[:3]}")

    def _trouble(self) -> str:
        obs = self.obs
        return (
            f"delivered {len(obs.delivered_at)}, webhook {len(obs.webhook)}, handed_over "
            f"{len(obs.handed_receipt_at)}; warnings and errors {dict(obs.trouble)}; "
            + " | ".join(obs.trouble_lines[-5:])
        )

    def rss_kib(self) -> dict[str, int]:
        """VmRSS of each process, by role, in KiB."""
        return {role: _status_kib(pid, "VmRSS") for role, pid in self.pids().items()}

    async def through_broker(self, count: int) -> float:
        """The broker hop in this area: ``count`` sealed reports published as the police,
        consumed here from social services' queue (its adapter must be stopped).

        Messages per second from the first publish to the last message consumed.
        """
        sealed = await asyncio.to_thread(self.sealer.seal, count)
        queue = f"agency.{self.social}"
        consumer = asyncio.create_task(_consume(self.url_guest, queue, count, HOP_WINDOW))
        started = await self._publish([wire for _id, wire in sealed])
        return count / (await consumer - started)

    async def backlog(self, count: int) -> dict[str, float]:
        """Queue ``count`` reports while social services' adapter is down; time the drain."""
        if self.social in self.demo.procs:
            await self.demo.stop(self.social)
        waiting: list[str] = []
        interruptions: list[str] = []
        filled = time.perf_counter()
        for chunk in _chunks(count, 5000):
            # Sealed in a thread: this loop keeps reading the processes' logs meanwhile.
            sealed = await asyncio.to_thread(self.sealer.seal, chunk)
            waiting += [message_id for message_id, _wire in sealed]
            bodies = [wire for _id, wire in sealed]
            await _retrying(
                "publishing the backlog", functools.partial(self._publish, bodies), interruptions
            )
        queue = f"agency.{self.social}"
        depth = await _retrying(
            "reading the queue depth",
            lambda: _queue_depth(self.url_guest, queue, count, limit_s=SLACK_S + count / 20),
            interruptions,
        )
        filled_s = time.perf_counter() - filled
        started = time.perf_counter()
        proc = await start_adapter(self.demo, self.social, self.webhook_config)
        ready_s = time.perf_counter() - started
        await _tap(proc, _observer(self.obs, self.police))
        obs = self.obs
        await _until(
            f"{count} backlog hand-overs",
            lambda: _all_in(waiting, obs.webhook),
            SLACK_S + count / 20,
            self._trouble,
        )
        last = max(obs.webhook[m] for m in waiting)
        first = min(obs.webhook[m] for m in waiting)
        return {
            "messages": count,
            "queued": depth,
            "fill_s": round(filled_s, 1),
            "start_to_ready_s": round(ready_s, 2),
            "start_to_first_handover_s": round(first - started, 2),
            "seconds": round(last - started, 1),
            "msgs_per_s": count / (last - started),
            # RabbitMQ stopped under the fill (another run's rabbitmqctl stop_app): a chunk
            # published again; the broker and the adapter keep each message id once.
            "rabbitmq_interruptions_while_filling": len(interruptions),
        }

    async def _publish(self, bodies: list[bytes]) -> float:
        """Publish sealed envelopes to the broker as the police's RabbitMQ user; the start time."""
        url = _url(self.police, self.police_password, self.demo.vhost)
        return await _publish_all(
            url,
            bodies,
            exchange=INGRESS_EXCHANGE,
            routing_key=INGRESS_QUEUE,
            user_id=self.police,
            window=HOP_WINDOW,
        )

    @property
    def url_guest(self) -> str:
        """This area's vhost as guest (who may read its queues)."""
        return _url("guest", "guest", self.demo.vhost)

    @property
    def webhook_config(self) -> str:
        """The adapter configuration that hands over to this run's agency system."""
        return f'[handover]\nmode = "webhook"\nwebhook_url = "{self.webhook_url}"\n'


async def _until(
    what: str, done: Callable[[], bool], limit_s: float, why: Callable[[], str]
) -> None:
    deadline = time.monotonic() + limit_s
    while not done():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {limit_s:.0f} s waiting for {what}: {why()}")
        # Every figure comes from the time each event was seen, not from this poll.
        await asyncio.sleep(0.05)


def _all_in(wanted: Collection[str], seen: Collection[str]) -> bool:
    """Whether every one of ``wanted`` is in ``seen`` (counted first: long lists, often asked)."""
    return len(seen) >= len(wanted) and all(m in seen for m in wanted)


#: What RabbitMQ going away looks like to this process's own connections.
AMQP_GONE = (
    ConnectionError,
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
)


async def _retrying(
    what: str, attempt: Callable[[], Coroutine[Any, Any, _T]], interruptions: list[str]
) -> _T:
    """``attempt()``, tried again (five times at most) if RabbitMQ went away meanwhile."""
    for _ in range(5):
        try:
            return await attempt()
        except AMQP_GONE as exc:
            interruptions.append(f"{what}: {type(exc).__name__}")
            print(f"  RabbitMQ went away while {what}; again in 5 s", file=sys.stderr)
            await asyncio.sleep(5)
    return await attempt()


def _chunks(total: int, size: int) -> Iterator[int]:
    while total > 0:
        yield min(size, total)
        total -= size


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User and system CPU seconds of each process so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for role, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        out[role] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return out


@dataclass(frozen=True)
class _Sealer:
    """Seals concern reports from the police to social services as the police adapter does."""

    submission: Submission
    content: bytes
    child: str
    sender: SenderKey
    recipient: SealingKey

    @classmethod
    def load(cls, keys: Path, police: str, social: str, document: object) -> _Sealer:
        """From the area's keys and a police submission (``document``)."""
        now = datetime.now(UTC)
        submission = mapping_for(AgencyType.POLICE, agency=police).parse(document, today=now.date())
        if not isinstance(submission.content, ConcernReport):
            raise BenchError("the police example is not a concern report")
        pseudonym = PseudonymKey(load_pseudonym_key(keys, passphrase=None, allow_insecure=True))
        number = parse_identity_number(submission.content.child.identity_number, today=now.date())
        recipient = load_directory(keys).sealing_key(social, now=now)
        if recipient is None:
            raise BenchError(f"{social} has no current sealing key")
        return cls(
            submission=submission,
            content=submission.content.model_dump_json().encode(),
            child=child_pseudonym(number, pseudonym),
            sender=load_agency_keys(keys, police, passphrase=None, allow_insecure=True).sender,
            recipient=recipient,
        )

    def seal(self, count: int) -> list[tuple[str, bytes]]:
        """``count`` sealed envelopes: (message id, wire bytes)."""
        now = datetime.now(UTC)
        out = []
        for _ in range(count):
            sealed = seal(
                self.content,
                sender=self.sender,
                recipients=[self.recipient],
                kind=self.submission.kind,
                child=self.child,
                basis=self.submission.basis,
                purpose=self.submission.purpose,
                created=now,
                expires=now + timedelta(days=30),
            )
            out.append((sealed.header.id, sealed.wire))
        return out


async def _queue_depth(url: str, queue: str, wanted: int, *, limit_s: float) -> int:
    """Wait until ``queue`` holds ``wanted`` ready messages; how many it holds then."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        deadline = time.monotonic() + limit_s
        while True:
            declared = await channel.declare_queue(queue, passive=True)
            depth = declared.declaration_result.message_count or 0
            if depth >= wanted:
                return depth
            if time.monotonic() > deadline:
                raise BenchError(f"{queue} holds {depth} of {wanted} after {limit_s:.0f} s")
            await asyncio.sleep(0.5)


def _police_report(social: str) -> bytes:
    """The documented police example to ``social``, its observations padded to 2 KiB of content."""
    document: dict[str, Any] = json.loads(
        (EXAMPLES / "police-concern_report.json").read_text(encoding="utf-8")
    )
    document["mottagare"] = [social]
    filler = " Uppgifterna är påhittade och används för att mäta genomströmningen."
    today = datetime.now(UTC).date()
    mapping = mapping_for(AgencyType.POLICE)
    while True:
        size = len(mapping.parse(document, today=today).content.model_dump_json().encode())
        if size >= CONTENT_BYTES - len(filler.encode()):
            document["iakttagelser"] += "." * max(0, CONTENT_BYTES - size)
            return json.dumps(document, ensure_ascii=False).encode()
        document["iakttagelser"] += filler


def _area_text(tag: str, police: str, social: str) -> str:
    return f"""[area]
id = "bench-rt-{tag}"
name = "Round-trip benchmark {tag}"

[[agency]]
id = "{police}"
name = "Polisen (benchmark)"
type = "police"
municipality = "Lidingö"

[[agency]]
id = "{social}"
name = "Socialtjänsten (benchmark)"
type = "social_services"
municipality = "Lidingö"
"""


@contextlib.asynccontextmanager
async def _area(workdir: Path, tag: str, window: int) -> AsyncIterator[Area]:
    """An area of this run's own: keys, vhost, users, broker and two adapters; removed after.

    The agency ids and the broker's RabbitMQ user are this run's, not the demo area's:
    provisioning the demo's users again would change their passwords under other runs.
    """
    police, social, broker_user = f"rt{tag}-polis", f"rt{tag}-soc", f"rt{tag}-broker"
    demo = Demo(
        workdir=workdir,
        amqp_host=HOST,
        vhost=f"backa-bench-rt-{tag}",
        console=Console(quiet=True),
        wait_s=120.0,
    )
    runner = RabbitmqctlRunner()
    obs = Observed()
    observe = _observer(obs, police)
    area_config = parse_area(_area_text(tag, police, social), source="bench area")
    init_area(
        area_config, demo.keys, passphrase=None, insecure=True,
        now=datetime.now(UTC), rng=os.urandom,
    )  # fmt: skip
    try:
        await asyncio.to_thread(
            provision, demo.keys, vhost=demo.vhost, runner=runner, broker_user=broker_user
        )
        # This process reads the depth of the recipient's queue as guest.
        await asyncio.to_thread(
            runner.run, ["set_permissions", "-p", demo.vhost, "guest", "^$", "^$", ".*"]
        )
        async with (
            _agency_system(obs) as webhook_url,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(window, 256))) as http,
        ):
            broker_password = password_file(demo.keys / "amqp", broker_user).read_text().strip()
            broker = await demo.spawn(
                "broker",
                ["broker", "serve", "--allow-insecure-keys"],
                {
                    "BACKA_AREA_DIR": str(demo.keys),
                    "BACKA_AMQP_URL": demo.amqp_setting(broker_user, broker_password),
                    "BACKA_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'broker.db'}",
                    "BACKA_HTTP_PORT": "0",
                    "BACKA_POLICY_FILE": str(Path.cwd() / POLICY_FILE),
                    "BACKA_DEADLINES_FILE": str(Path.cwd() / DEADLINES_FILE),
                },
                "broker_serving",
            )
            await _tap(broker, observe)
            body = _police_report(social)
            area = Area(
                demo=demo,
                police=police,
                social=social,
                obs=obs,
                webhook_url=webhook_url,
                body=body,
                session=http,
                police_password=password_file(demo.keys / "amqp", police).read_text().strip(),
                sealer=_Sealer.load(demo.keys, police, social, json.loads(body)),
            )
            await _tap(await start_adapter(demo, social, area.webhook_config), observe)
            await _tap(await start_adapter(demo, police), observe)
            try:
                yield area
            finally:
                await demo.stop_all()
    finally:
        with contextlib.suppress(RabbitmqctlError):
            await asyncio.to_thread(runner.run, ["delete_vhost", demo.vhost])
        for user in (police, social, broker_user):
            with contextlib.suppress(RabbitmqctlError):
                await asyncio.to_thread(runner.run, ["delete_user", user])


@contextlib.asynccontextmanager
async def _hop_vhost(tag: str) -> AsyncIterator[tuple[str, str]]:
    """The vhost and sender user of bench.broker_hop's raw and hop runs (as its main makes them)."""
    vhost = f"backa-bench-hop-{tag}"
    password = secrets.token_urlsafe(16)
    _ctl("add_vhost", vhost)
    try:
        _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        _ctl("add_user", SENDER.agency, password)
        _ctl("set_permissions", "-p", vhost, SENDER.agency, "^$", "^backa\\.ingress$", "^$")
        yield _url("guest", "guest", vhost), _url(SENDER.agency, password, vhost)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ctl("delete_user", SENDER.agency)
        _ctl("delete_vhost", vhost)


# --- profiles --------------------------------------------------------------------------------


def _thread_ticks(pid: int) -> dict[int, int]:
    """CPU clock ticks (user and system) of each thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        out[int(task.name)] = int(fields[11]) + int(fields[12])
    return out


@contextlib.asynccontextmanager
async def _profiled(
    pids: dict[str, int], folder: Path | None
) -> AsyncIterator[dict[str, dict[str, Any]]]:
    """py-spy on each process while the block runs; the summary fills the yielded dict.

    Samples are taken only while a thread holds the GIL (``--gil``): where the
    processes' Python CPU goes, not where they wait. Collapsed stacks are kept
    in ``folder``; beside them, the CPU of each process's event-loop thread and
    of its other threads (aiosqlite's, the executor's), from /proc.
    """
    summary: dict[str, dict[str, Any]] = {}
    if folder is None:
        yield summary
        return
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    spies = [
        await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("py-spy")),
            *("record", "--gil", "--format", "raw"),
            *("--output", str(folder / f"{role}.txt"), "--pid", str(pid)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for role, pid in pids.items()
    ]
    await asyncio.sleep(1.0)  # py-spy attaches
    before = {role: _thread_ticks(pid) for role, pid in pids.items()}
    try:
        yield summary
    finally:
        after = {role: _thread_ticks(pid) for role, pid in pids.items()}
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            await asyncio.wait_for(spy.wait(), timeout=60)
    ticks = os.sysconf("SC_CLK_TCK")
    for role, pid in pids.items():
        used = {tid: n - before[role].get(tid, 0) for tid, n in after[role].items()}
        summary[role] = {
            "cpu_s_event_loop_thread": round(used.get(pid, 0) / ticks, 2),
            "cpu_s_other_threads": round(sum(n for t, n in used.items() if t != pid) / ticks, 2),
            **_top_frames(folder / f"{role}.txt"),
        }


#: Where this project's own code is, for the inclusive view of a profile.
_OWN_CODE = ("broker/", "adapters/", "keys/", "schemas/")


def _top_frames(path: Path, count: int = 12) -> dict[str, Any]:
    """From collapsed stacks: the frames most often on top, and own functions inclusive (%)."""
    on_top: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = stack.split(";")
        samples = int(number)
        total += samples
        on_top[frames[-1]] += samples
        # "name (file:line)" → "name (file)": a function counted once per sample.
        functions = {f.rpartition(":")[0] + ")" for f in frames if f.endswith(")")}
        for function in functions:
            if any(part in function for part in _OWN_CODE):
                inclusive[function] += samples
    if total == 0:
        return {"gil_samples": 0}
    return {
        "gil_samples": total,
        "on_top_pct": [(f, round(100 * n / total, 1)) for f, n in on_top.most_common(count)],
        "own_inclusive_pct": [
            (f, round(100 * n / total, 1)) for f, n in inclusive.most_common(count + 8)
        ],
    }


# --- memory ----------------------------------------------------------------------------------


def _points(first: int, total: int) -> list[int]:
    """Ten sampling points from ``first`` to ``total`` messages."""
    first = max(1, min(first, total))
    return sorted({round(first + i * (total - first) / 9) for i in range(10)})


def _memory_summary(samples: list[dict[str, Any]], roles: list[str]) -> dict[str, Any]:
    first, last = samples[0], samples[-1]
    return {
        "messages": [first["messages"], last["messages"]],
        "processes": {
            role: {
                "rss_kib": [first[role], last[role]],
                "change_pct": round(100 * (last[role] - first[role]) / first[role], 1),
            }
            for role in roles
        },
        "samples": samples,
    }


async def _memory_round_trip(
    area: Area, first: int, total: int, window: int
) -> dict[str, Any] | None:
    """RSS of each process at ten points from ``first`` to ``total`` messages through the
    round trip (counting every message of the run so far), each after the stream settled."""
    if total <= 0:
        return None
    samples: list[dict[str, Any]] = []
    for point in _points(first, total):
        rate = None
        if area.sent_total < point:
            run = await area.closed_loop(point - area.sent_total, window)
            rate = round(run.msgs_per_s)
        samples.append({"messages": area.sent_total, "msgs_per_s": rate, **area.rss_kib()})
        print(f"  memory, round trip: {samples[-1]}", file=sys.stderr)
    return _memory_summary(samples, list(area.roles))


async def _memory_broker_hop(area: Area, first: int, total: int) -> dict[str, Any] | None:
    """RSS of the broker (and the sender's adapter, which takes the broker's ``accepted``
    receipts) at ten points from ``first`` to ``total`` messages through this area's broker,
    consumed here from the recipient's queue while the recipient's adapter is stopped."""
    if total <= 0:
        return None
    if area.social in area.demo.procs:
        await area.demo.stop(area.social)
    samples: list[dict[str, Any]] = []
    through = 0
    for point in _points(first, total):
        rates = []
        for chunk in _chunks(point - through, 10_000):
            rates.append(await area.through_broker(chunk))
            through += chunk
        rate = round(statistics.median(rates)) if rates else None
        samples.append({"messages": through, "msgs_per_s": rate, **area.rss_kib()})
        print(f"  memory, broker hop: {samples[-1]}", file=sys.stderr)
    return _memory_summary(samples, ["broker", "sender_adapter"])


# --- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What to run (the command line, with --quick's smaller defaults filled in)."""

    messages: int
    rounds: int
    window: int
    hop_messages: int
    latency_messages: int
    memory_from: int
    memory_messages: int
    broker_memory_messages: int
    backlog: int
    profile: Path | None
    out: Path


def _percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _percentiles(values: list[float]) -> dict[str, float]:
    return {f"p{q}": round(_percentile(values, q), 1) for q in (50, 95, 99)}


async def _bench(settings: Settings) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    raws: list[float] = []
    hops: list[float] = []
    trips: list[Run] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="backa-bench-rt-") as scratch:
        async with (
            _hop_vhost(tag) as (url_guest, url_sender),
            _area(Path(scratch) / "area", tag, settings.window) as area,
        ):
            for round_number in range(settings.rounds):
                raws.append(await _raw(url_guest, settings.hop_messages, HOP_WINDOW))
                hops.append(
                    await _hop(
                        url_guest,
                        url_sender,
                        n=settings.hop_messages,
                        window=HOP_WINDOW,
                        database_url=f"sqlite+aiosqlite:///{scratch}/hop-{round_number}.db",
                    )
                )
                trips.append(await area.closed_loop(settings.messages, settings.window))
                _progress(
                    f"round {round_number + 1}: raw {raws[-1]:.0f}, hop {hops[-1]:.0f}, "
                    f"round trip {trips[-1].msgs_per_s:.0f} msg/s",
                    began,
                )
            trip = statistics.median(t.msgs_per_s for t in trips)
            half = await area.open_loop(settings.latency_messages, trip / 2)
            _progress(
                f"half load: {half.sent} at {trip / 2:.1f} msg/s, to delivered "
                f"{_percentiles(half.to_delivered)} ms",
                began,
            )
            # The pipeline's own latency, with the CPU mostly idle: what queueing adds at
            # half load is the difference.
            light = await area.open_loop(max(settings.latency_messages // 4, 20), trip * LIGHT_LOAD)
            _progress(
                f"light load: {light.sent} at {trip * LIGHT_LOAD:.1f} msg/s, to delivered "
                f"{_percentiles(light.to_delivered)} ms",
                began,
            )
            async with _profiled(area.pids(), settings.profile) as profile:
                if settings.profile is not None:
                    await area.closed_loop(settings.messages, settings.window)
            # The long phases: one that fails or times out is reported, and the rest run.
            errors: dict[str, str] = {}
            memory = {
                "round_trip": await _phase(
                    "memory.round_trip",
                    errors,
                    began,
                    _memory_round_trip(
                        area, settings.memory_from, settings.memory_messages, settings.window
                    ),
                ),
                "broker_hop": await _phase(
                    "memory.broker_hop",
                    errors,
                    began,
                    _memory_broker_hop(area, settings.memory_from, settings.broker_memory_messages),
                ),
            }
            backlog = (
                await _phase("backlog", errors, began, area.backlog(settings.backlog))
                if settings.backlog
                else None
            )
            obs = area.obs
            seen = {
                "messages_through_round_trip": area.sent_total,
                "delivered_receipts_at_sender": len(obs.delivered_at),
                "handed_over_receipts_at_sender": len(obs.handed_receipt_at),
                "handed_over_at_webhook": len(obs.webhook),
                "webhook_repeats": obs.webhook_calls - len(obs.webhook),
                "receipt_lines_with_masked_id": obs.masked,
                "warnings_and_errors": dict(obs.trouble),
                "phase_errors": errors,
            }
    return _figures(
        settings,
        raws=raws,
        hops=hops,
        trips=trips,
        half=half,
        light=light,
        memory=memory,
        backlog=backlog,
        profile=profile,
        seen={**seen, "run_s": round(time.perf_counter() - began)},
    )


async def _phase(
    name: str, errors: dict[str, str], began: float, work: Coroutine[Any, Any, _T]
) -> _T | None:
    """``work``'s result; None, with the reason in ``errors``, if it failed or timed out."""
    try:
        result = await work
    except (BenchError, TimeoutError, *AMQP_GONE) as exc:
        # e.g. RabbitMQ stopped under the run by someone else (rabbitmqctl stop_app).
        errors[name] = f"{type(exc).__name__}: {str(exc)[:600]}"
        _progress(f"{name} failed: {errors[name]}", began)
        return None
    _progress(f"{name}: {json.dumps(result)}", began)
    return result


def _progress(what: str, began: float) -> None:
    print(f"  [{time.perf_counter() - began:6.0f} s] {what}", file=sys.stderr, flush=True)


def _figures(
    settings: Settings,
    *,
    raws: list[float],
    hops: list[float],
    trips: list[Run],
    half: Run,
    light: Run,
    memory: dict[str, Any],
    backlog: dict[str, float] | None,
    profile: dict[str, dict[str, Any]],
    seen: dict[str, Any],
) -> dict[str, Any]:
    raw, hop = statistics.median(raws), statistics.median(hops)
    trip = statistics.median(t.msgs_per_s for t in trips)
    cpu = {
        role: statistics.median(t.cpu_s[role] * 1000 / t.sent for t in trips)
        for role in trips[0].cpu_s
    }
    drain = None if backlog is None else backlog["msgs_per_s"]
    return {
        "bench": "round_trip",
        "messages": settings.messages,
        "rounds": settings.rounds,
        "window": settings.window,
        "hop_messages": settings.hop_messages,
        "raw_msgs_per_s": round(raw),
        "broker_hop_msgs_per_s": round(hop),
        "broker_hop_ratio": round(hop / raw, 3),
        "round_trip_msgs_per_s": round(trip),
        "round_trip_ratio": round(trip / raw, 3),
        "round_trip_handover_msgs_per_s": round(
            statistics.median(t.handover_msgs_per_s for t in trips)
        ),
        "per_round": {
            "raw": [round(r) for r in raws],
            "broker_hop": [round(h) for h in hops],
            "round_trip": [round(t.msgs_per_s) for t in trips],
        },
        "half_load_target_msgs_per_s": round(trip / 2, 1),
        "half_load_msgs_per_s": round(half.sent / half.seconds, 1),
        "half_load_messages": half.sent,
        **{f"{k}_ms": v for k, v in _percentiles(half.to_delivered).items()},
        "half_load_latency_ms": {
            "to_delivered_at_sender": _percentiles(half.to_delivered),
            "to_webhook_handover": _percentiles(half.to_webhook),
            "to_202_from_adapter": _percentiles(half.to_accepted),
            "samples_to_delivered": len(half.to_delivered),
        },
        "light_load_msgs_per_s": round(light.sent / light.seconds, 1),
        "light_load_latency_ms": {
            "to_delivered_at_sender": _percentiles(light.to_delivered),
            "to_webhook_handover": _percentiles(light.to_webhook),
            "to_202_from_adapter": _percentiles(light.to_accepted),
            "samples_to_delivered": len(light.to_delivered),
        },
        "max_rate_latency_ms": {
            "to_delivered_at_sender": _percentiles(trips[-1].to_delivered),
            "to_202_from_adapter": _percentiles(trips[-1].to_accepted),
        },
        "cpu_s_per_1000_messages": {k: round(v, 2) for k, v in cpu.items()},
        "memory": memory,
        "backlog_drain_msgs_per_s": None if drain is None else round(drain),
        "backlog_drain_ratio": None if drain is None else round(drain / raw, 3),
        "backlog": None if backlog is None else {**backlog, "msgs_per_s": round(drain or 0)},
        "profile": profile or None,
        **seen,
        "store": "sqlite",
        "cpu_count": os.cpu_count(),
        "rabbitmq": _rabbitmq_version(),
        "python": platform.python_version(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _rabbitmq_version() -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", "version"],  # noqa: S607 - the operator's rabbitmqctl
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _print_latency(title: str, latency: dict[str, Any], *, goal: bool) -> None:
    print(title)
    for label, key in (
        ("submission -> delivered at the sender", "to_delivered_at_sender"),
        ("submission -> webhook hand-over", "to_webhook_handover"),
        ("submission -> 202 from the police adapter", "to_202_from_adapter"),
    ):
        p = latency[key]
        note = "   goal p99 < 100" if goal and key == "to_delivered_at_sender" else ""
        print(f"  {label:42s} p50 {p['p50']:7.1f}  p95 {p['p95']:7.1f}  p99 {p['p99']:7.1f}{note}")


def _report(figures: dict[str, Any], settings: Settings) -> None:
    raw = figures["raw_msgs_per_s"]
    print(
        f"round trip: police concern reports of 2 KiB content, {settings.messages} a run, "
        f"{settings.window} submissions in flight; raw and broker hop {settings.hop_messages} "
        f"messages, {HOP_WINDOW} in flight; median of {settings.rounds} alternating rounds; "
        f"{figures['cpu_count']} CPUs, RabbitMQ {figures['rabbitmq']}, "
        f"Python {figures['python']}, SQLite stores"
    )
    print("                                                       msg/s   ratio   goal")
    rows = [
        ("raw aio-pika publish+consume (quorum queue)", raw, ""),
        ("broker hop: ingress -> broker -> recipient queue", figures["broker_hop_msgs_per_s"],
         ">= 0.5"),
        ("full round trip: system -> ... -> delivered back", figures["round_trip_msgs_per_s"],
         ">= 0.25"),
        ("  (the same runs, to the last webhook hand-over)",
         figures["round_trip_handover_msgs_per_s"], ""),
    ]  # fmt: skip
    backlog = figures["backlog"]
    if backlog is not None:
        rows.append(
            (
                f"backlog drain: {backlog['messages']} queued, adapter offline",
                figures["backlog_drain_msgs_per_s"],
                ">= 0.5",
            )
        )
    for label, rate, goal in rows:
        print(f"  {label:50s} {rate:7.0f}  {rate / raw:6.3f}   {goal}")
    print(f"  per round: {figures['per_round']}")
    _print_latency(
        f"latency at half load: {figures['half_load_messages']} submissions at "
        f"{figures['half_load_target_msgs_per_s']} msg/s, open loop "
        f"({figures['half_load_msgs_per_s']} msg/s achieved), ms",
        figures["half_load_latency_ms"],
        goal=True,
    )
    light = figures["light_load_latency_ms"]
    _print_latency(
        f"latency at light load: {light['samples_to_delivered']} submissions at "
        f"{figures['light_load_msgs_per_s']} msg/s, ms",
        light,
        goal=False,
    )
    print(
        "CPU seconds per 1000 messages in the max-rate round trips: "
        + ", ".join(f"{k} {v}" for k, v in figures["cpu_s_per_1000_messages"].items())
    )
    for name, memory in figures["memory"].items():
        if memory is None:
            continue
        first, last = memory["messages"]
        print(f"memory (VmRSS, MiB) after {first} and {last} messages through the {name}:")
        for role, m in memory["processes"].items():
            before, after = (kib / 1024 for kib in m["rss_kib"])
            print(f"  {role:20s} {before:7.1f} {after:7.1f}  {m['change_pct']:+6.1f}%   goal ±10%")
        rates = [s["msgs_per_s"] for s in memory["samples"]]
        print(f"  msg/s along the way: {rates}")
    if backlog is not None:
        print(
            f"backlog: {backlog['queued']} queued in {backlog['fill_s']} s; the adapter started: "
            f"ready after {backlog['start_to_ready_s']} s, first hand-over after "
            f"{backlog['start_to_first_handover_s']} s, last after {backlog['seconds']} s"
        )
    for role, found in (figures["profile"] or {}).items():
        print(
            f"py-spy --gil, {role}: CPU s event-loop thread {found['cpu_s_event_loop_thread']}, "
            f"other threads {found['cpu_s_other_threads']}; {found['gil_samples']} samples"
        )
        print("  % on top of the stack:")
        for frame, pct in found.get("on_top_pct", []):
            print(f"    {pct:5.1f}  {frame[:110]}")
        print("  % anywhere on the stack, own code:")
        for frame, pct in found.get("own_inclusive_pct", []):
            print(f"    {pct:5.1f}  {frame[:110]}")
    for phase, error in figures["phase_errors"].items():
        print(f"phase {phase} did not finish: {error}")
    if figures["warnings_and_errors"]:
        print(f"warnings and errors logged: {figures['warnings_and_errors']}")
    print(
        f"{figures['messages_through_round_trip']} messages through the round trip, "
        f"{figures['webhook_repeats']} webhook repeats, "
        f"{figures['receipt_lines_with_masked_id']} receipt log lines with a masked message id; "
        f"{figures['run_s']} s in all"
    )


def _settings(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, help="per round-trip run (default 2000)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3)")
    parser.add_argument("--window", type=int, default=32, help="submissions in flight")
    parser.add_argument("--hop-messages", type=int, help="per raw and hop run (default 3000)")
    parser.add_argument("--latency-messages", type=int, help="at half load (default --messages)")
    parser.add_argument(
        "--memory-messages",
        type=int,
        help="through the round trip, counting the whole run (default 100000; 0: off)",
    )
    parser.add_argument(
        "--broker-memory-messages",
        type=int,
        help="through the broker hop of the area's broker (default 100000; 0: off)",
    )
    parser.add_argument("--memory-from", type=int, help="the first memory sample (default 10000)")
    parser.add_argument("--backlog", type=int, help="queued while offline (default 50000; 0: off)")
    parser.add_argument("--profile", type=Path, help="py-spy each process in one extra run; DIR")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="small counts: a minute or two")
    args = parser.parse_args(argv)
    quick = args.quick

    def pick(value: int | None, full: int, small: int) -> int:
        return value if value is not None else small if quick else full

    messages = pick(args.messages, 2000, 300)
    return Settings(
        messages=messages,
        rounds=pick(args.rounds, 3, 1),
        window=args.window,
        hop_messages=pick(args.hop_messages, 3000, 500),
        latency_messages=pick(args.latency_messages, messages, messages),
        memory_from=pick(args.memory_from, 10_000, 200),
        memory_messages=pick(args.memory_messages, 100_000, 2000),
        broker_memory_messages=pick(args.broker_memory_messages, 100_000, 2000),
        backlog=pick(args.backlog, 50_000, 1000),
        profile=args.profile,
        out=args.out,
    )


def main(argv: list[str] | None = None) -> None:
    """Run every phase; print the table, then one JSON line, also written to ``--out``."""
    settings = _settings(argv)
    figures = asyncio.run(_bench(settings))
    _report(figures, settings)
    line = json.dumps(figures, ensure_ascii=False)
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(json.dumps(figures, ensure_ascii=False, indent=2) + "\n", "utf-8")
    print(line)


if __name__ == "__main__":
    # Key loading warns of development keys through structlog: to stderr, not into the table.
    logs.configure(stream=sys.stderr)
    main()
