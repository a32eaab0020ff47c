"""Faults against real processes: nothing lost, nothing handed over twice, the audit log intact.

Each test runs the demo area as processes (``backa broker serve`` and the
police and social services adapters) on the local RabbitMQ, in a vhost of its
own, sends a stream of concern reports (tests/process_area.py) and injects
one kind of fault in the middle of it:

* the broker killed with SIGKILL several times: at each of its failpoints
  (keys/failpoints.py: after the decision is stored, after the copies are
  routed, just before the ack) and at moments chosen at random;
* RabbitMQ itself restarted (``rabbitmqctl stop_app`` / ``start_app``);
* social services' adapter killed between storing a message and acking it;
* every AMQP connection cut by a TCP proxy between the processes and
  RabbitMQ, several times.

After each: every report handed over, every sender sees it delivered, each
acceptance logged once, the audit log verified; the counts are printed. The
length of the stream is ``BACKA_FAULT_MESSAGES`` (``make faults`` runs 5,000).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from rich.console import Console

from backa.demo import (
    POLICE,
    SOCIAL,
    Demo,
    DemoStepError,
    setup_area,
    start_adapter,
    start_broker,
)
from broker.provision import RabbitmqctlError, RabbitmqctlRunner
from tests.process_area import AgencySystem, agency_system, check_outcome, send_stream, trouble
from tests.rabbit import AMQP_URL
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.rabbitmq

MESSAGES = int(os.environ.get("BACKA_FAULT_MESSAGES", "200"))
#: The broker's failpoints, each fired once in turn (keys/failpoints.py).
FAILPOINTS = ("broker.after_record", "broker.after_route", "broker.before_ack")
SEED = int(os.environ.get("BACKA_FAULT_SEED", str(secrets.randbelow(2**32))))
_TARGET = urlsplit(AMQP_URL)


@pytest.fixture
async def area(tmp_path: Path) -> AsyncIterator[tuple[Demo, AgencySystem]]:
    """The demo area's keys and users in a fresh vhost, an agency system; no process yet."""
    demo = Demo(
        workdir=tmp_path / "area",
        amqp_host=f"{_TARGET.hostname}:{_TARGET.port or 5672}",
        vhost=f"faults-{secrets.token_hex(4)}",
        console=Console(quiet=True),
        wait_s=120.0,
    )
    runner = RabbitmqctlRunner()
    await setup_area(demo, runner)
    try:
        async with agency_system() as system:
            yield demo, system
    finally:
        await demo.stop_all()
        with contextlib.suppress(RabbitmqctlError):
            await asyncio.to_thread(runner.run, ["delete_vhost", demo.vhost])


def _database(demo: Demo) -> str:
    return f"sqlite+aiosqlite:///{demo.workdir / 'broker.db'}"


async def _start(demo: Demo, system: AgencySystem, **broker_settings: str) -> None:
    await start_broker(demo, "broker", _database(demo), **broker_settings)
    await start_adapter(demo, SOCIAL, system.webhook_config)
    await start_adapter(demo, POLICE)


def _supervise(
    demo: Demo, name: str, restart: Callable[[str], Awaitable[object]], plans: list[str]
) -> tuple[asyncio.Task[None], list[int]]:
    """Restart process ``name`` each time it dies, with the next failpoint plan; count deaths."""
    deaths: list[int] = []

    async def watch() -> None:
        while True:
            proc = demo.procs.get(name)
            if proc is None:
                await asyncio.sleep(0.05)
                continue
            code = await proc.process.wait()
            if demo.procs.get(name) is proc:
                demo.procs.pop(name)
                demo.finished.append(proc)
            deaths.append(code)
            await restart(plans.pop(0) if plans else "")

    return asyncio.create_task(watch()), deaths


async def test_the_broker_killed_again_and_again_loses_nothing(
    area: tuple[Demo, AgencySystem],
) -> None:
    """SIGKILL at each failpoint in turn, and twice from outside at random moments."""
    demo, system = area
    step = max(MESSAGES // 8, 5)
    plans = [f"{name}={step}" for name in FAILPOINTS]
    await _start(demo, system, BACKA_FAILPOINTS=plans.pop(0))

    async def restart(plan: str) -> None:
        await start_broker(demo, "broker", _database(demo), BACKA_FAILPOINTS=plan)

    supervisor, deaths = _supervise(demo, "broker", restart, plans)

    chooser = random.Random(SEED)

    async def kill_at_random_moments() -> None:
        """After the failpoints' three deaths, two more at random moments of a broker's life."""
        await _until(lambda: len(deaths) >= len(FAILPOINTS), lambda: f"deaths {deaths}")
        wanted = len(FAILPOINTS) + 2
        while len(deaths) < wanted:
            await _until(lambda: "broker" in demo.procs)
            await asyncio.sleep(chooser.uniform(0.1, 2.0))
            proc = demo.procs.get("broker")
            if proc is None:
                continue  # it died meanwhile; choose another moment
            before = len(deaths)
            proc.process.kill()
            await _until(lambda: len(deaths) > before)  # noqa: B023 - awaited in this pass

    started = time.monotonic()
    try:
        sent = await send_stream(demo, MESSAGES, {0: kill_at_random_moments})
        await _until(
            lambda: len(deaths) >= len(FAILPOINTS) + 2 and "broker" in demo.procs,
            lambda: f"deaths {deaths}, running {sorted(demo.procs)}; {trouble(demo)}",
        )
        await check_outcome(
            demo, system, sent, started=started, label=f"broker killed {len(deaths)}x, seed {SEED}"
        )
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
    assert all(code == -9 for code in deaths), f"each death was a SIGKILL: {deaths}"


async def test_rabbitmq_restarted_mid_stream_loses_nothing(
    area: tuple[Demo, AgencySystem],
) -> None:
    demo, system = area
    await _start(demo, system)
    runner = RabbitmqctlRunner()

    async def restart_rabbitmq() -> None:
        await asyncio.to_thread(runner.run, ["stop_app"])
        await asyncio.sleep(2)
        await asyncio.to_thread(runner.run, ["start_app"])

    started = time.monotonic()
    try:
        sent = await send_stream(demo, MESSAGES, {MESSAGES // 3: restart_rabbitmq})
    finally:
        with contextlib.suppress(RabbitmqctlError):
            await asyncio.to_thread(runner.run, ["start_app"])
    outcome = await check_outcome(demo, system, sent, started=started, label="RabbitMQ restarted")
    assert (outcome.lost, outcome.webhook_repeats) == (0, 0)


async def test_the_recipient_adapter_killed_between_store_and_ack_loses_nothing(
    area: tuple[Demo, AgencySystem],
) -> None:
    """Killed twice right after storing a message; RabbitMQ delivers it again, it is kept once.

    A webhook the adapter had posted but not yet recorded when it died is
    posted again after the restart, with the same ``Idempotency-Key``: the
    counts show such repeats, and the agency system must honour the key.
    """
    demo, system = area
    step = max(MESSAGES // 5, 5)
    await start_broker(demo, "broker", _database(demo))
    await start_adapter(demo, POLICE)

    async def restart(plan: str) -> None:
        # With a backlog waiting, the adapter may reach its failpoint and die before it
        # answers its health check. Registered by then, the supervisor sees the death and
        # restarts it; died before it was even ready, it is started again with the same plan.
        for attempt in range(5):
            try:
                await start_adapter(demo, SOCIAL, system.webhook_config, {"BACKA_FAILPOINTS": plan})
            except DemoStepError:
                if SOCIAL in demo.procs:
                    return
                if attempt == 4:
                    raise
            else:
                return

    await restart(f"adapter.after_store={step}")
    plans = [f"adapter.after_store={step}", ""]
    supervisor, deaths = _supervise(demo, SOCIAL, restart, plans)
    started = time.monotonic()
    try:
        sent = await send_stream(demo, MESSAGES)
        await _until(
            lambda: len(deaths) >= 2 and SOCIAL in demo.procs,
            lambda: f"deaths {deaths}, running {sorted(demo.procs)}; {trouble(demo)}",
        )
        outcome = await check_outcome(
            demo,
            system,
            sent,
            started=started,
            allow_webhook_repeats=True,
            label=f"recipient adapter killed {len(deaths)}x between store and ack",
        )
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
    assert outcome.duplicates_suppressed >= len(deaths), "each killed delivery came again"


async def test_cut_connections_lose_nothing(area: tuple[Demo, AgencySystem]) -> None:
    """Every process reaches RabbitMQ through a proxy that cuts all connections three times."""
    demo, system = area
    proxy = await TcpProxy(_TARGET.hostname or "127.0.0.1", _TARGET.port or 5672).start()
    demo.amqp_host = f"127.0.0.1:{proxy.port}"
    try:
        await _start(demo, system)
        processes, cuts = 3, 3

        async def cut_when_all_are_connected() -> None:
            for _ in range(cuts):
                await _until(lambda: proxy.open_connections >= processes)
                await asyncio.sleep(1.0)
                await proxy.cut()

        started = time.monotonic()
        sent = await send_stream(
            demo, MESSAGES, {1: cut_when_all_are_connected}, per_second=MESSAGES / 25
        )
        await check_outcome(demo, system, sent, started=started, label="connections cut 3x")
        assert proxy.connections >= processes * (1 + cuts), "each process reconnected each time"
    finally:
        await demo.stop_all()
        await proxy.close()


async def _until(
    condition: Callable[[], bool], what: Callable[[], str] = str, timeout_s: float = 120.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"the processes did not get there in time: {what()}")
        await asyncio.sleep(0.1)
