"""A stream of reports through an area of real processes, and the check that nothing was lost.

Shared by the scale-out test (tests/test_cluster.py) and the fault tests
(tests/test_faults.py). The area is the demo's (``backa.demo``): the broker
and each adapter are separate processes. The police adapter sends concern
reports to social services (by law, so no consent is needed); social
services' adapter hands each over by webhook to an agency system played by
the test, which counts every hand-over by its ``Idempotency-Key`` (the
message id).

:func:`check_outcome` waits until the stream has settled and asserts what the
reliability promises say (docs/RELIABILITY.md): every report handed over,
none twice unless the test allows webhook repeats (a recipient adapter
killed between the agency system's answer and its own record of it), every
sender sees its report delivered, each acceptance is in the audit log once,
and the audit log verifies against a fresh broker-signed checkpoint with no
gap. It prints the counts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

import pytest
from aiohttp import web

from backa.demo import POLICE, SOCIAL, Demo, DemoStepError, _example, verified_audit

#: Reports in flight at once from the police's system.
CONCURRENCY = 8


@dataclass
class AgencySystem:
    """Social services' case system: takes each webhook hand-over and counts it by message id."""

    handed_over: collections.Counter[str]
    changed: asyncio.Event
    url: str

    @property
    def webhook_config(self) -> str:
        """The adapter configuration that hands over to this system."""
        return f'[handover]\nmode = "webhook"\nwebhook_url = "{self.url}"\n'


@contextlib.asynccontextmanager
async def agency_system() -> AsyncIterator[AgencySystem]:
    """A real HTTP server on a free port that records each hand-over."""
    counts: collections.Counter[str] = collections.Counter()
    changed = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        await request.json()
        counts[request.headers["Idempotency-Key"]] += 1
        changed.set()
        return web.Response(status=HTTPStatus.NO_CONTENT)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield AgencySystem(counts, changed, f"http://127.0.0.1:{port}/hook")
    finally:
        await runner.cleanup()


async def send_stream(
    demo: Demo,
    count: int,
    faults: Mapping[int, Callable[[], Awaitable[object]]] | None = None,
    *,
    per_second: float | None = None,
) -> list[str]:
    """Send ``count`` concern reports; before report i, start ``faults[i]`` (not awaited here).

    ``per_second`` paces the stream (by default as fast as the adapter takes them).

    Returns the message ids, once every report was accepted (202) by the
    police adapter and every fault has run its course.
    """
    sent: list[str] = []
    pending: set[asyncio.Task[None]] = set()
    running: list[asyncio.Task[object]] = []

    async def send() -> None:
        body = _example("police-concern_report.json")
        status, answer = await demo.api(POLICE, "POST", "/v1/messages", body)
        assert status == HTTPStatus.ACCEPTED, answer
        sent.append(str(answer["message_id"]))

    began = time.monotonic()
    for number in range(count):
        if per_second is not None:
            await asyncio.sleep(max(0.0, began + number / per_second - time.monotonic()))
        fault = (faults or {}).get(number)
        if fault is not None:
            running.append(asyncio.create_task(_run(fault)))
        task = asyncio.create_task(send())
        pending.add(task)
        task.add_done_callback(pending.discard)
        if len(pending) >= CONCURRENCY:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*pending, *running)
    assert len(sent) == count == len(set(sent))
    return sent


async def _run(fault: Callable[[], Awaitable[object]]) -> object:
    return await fault()


@dataclass(frozen=True)
class Outcome:
    """The counts of one stream."""

    sent: int
    handed_over: int
    webhook_repeats: int
    lost: int
    duplicates_suppressed: int
    redelivered_to_broker: int
    audit_entries: int
    settled_s: float


async def check_outcome(
    demo: Demo,
    system: AgencySystem,
    sent: list[str],
    *,
    started: float,
    settle_s: float = 240.0,
    allow_webhook_repeats: bool = False,
    label: str = "",
) -> Outcome:
    """Wait for the stream to settle, print its counts, and assert that nothing was lost."""

    async def all_handed_over() -> None:
        while set(system.handed_over) != set(sent):
            system.changed.clear()
            await system.changed.wait()

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_handed_over(), settle_s)
    settled_s = time.monotonic() - started
    missing = set(sent) - set(system.handed_over)
    assert not missing, f"{len(missing)} of {len(sent)} never handed over; {trouble(demo)}"

    async def delivered(message_id: str) -> bool:
        events = await demo.timeline(POLICE, message_id)
        return ("delivered", SOCIAL, None) in events

    for message_id in sent:
        try:
            await demo.until(
                f"the police seeing {message_id} delivered",
                functools.partial(delivered, message_id),
            )
        except DemoStepError as exc:
            timeline = await demo.timeline(POLICE, message_id)
            about = [
                f"{proc.name}: {line}"
                for proc in [*demo.procs.values(), *demo.finished]
                for line in proc.lines
                if message_id in str(line) or line.get("level") in ("error", "critical")
            ]
            pytest.fail(f"{exc}; its timeline {timeline}; its log lines {about}")
    entries = await verified_audit(demo, "broker")
    accepted = collections.Counter(
        str(e["entry"].get("message_id")) for e in entries if e["entry"]["event"] == "accepted"
    )
    outcome = Outcome(
        sent=len(sent),
        handed_over=len(system.handed_over),
        webhook_repeats=sum(count - 1 for count in system.handed_over.values()),
        lost=len(set(sent) - set(system.handed_over)),
        duplicates_suppressed=log_count(demo, "duplicate_suppressed"),
        redelivered_to_broker=log_count(demo, "ingress_message:redelivered"),
        audit_entries=len(entries),
        settled_s=settled_s,
    )
    print(  # noqa: T201 - the counts the fault and scale-out tests report
        f"{label}: sent {outcome.sent}, handed over {outcome.handed_over}, lost {outcome.lost}, "
        f"webhook repeats {outcome.webhook_repeats}, duplicates suppressed by the recipient "
        f"{outcome.duplicates_suppressed}, redeliveries the broker recognised "
        f"{outcome.redelivered_to_broker}; settled after {outcome.settled_s:.1f} s; "
        f"audit log of {outcome.audit_entries} entries verified"
    )
    assert all(accepted[m] == 1 for m in sent), "each report's acceptance logged exactly once"
    if not allow_webhook_repeats:
        assert outcome.webhook_repeats == 0, "no report handed over twice"
    return outcome


def log_count(demo: Demo, event: str) -> int:
    """How many log lines of ``event`` every process wrote, living or not (Proc.events)."""
    return sum(proc.events[event] for proc in [*demo.procs.values(), *demo.finished])


def trouble(demo: Demo) -> str:
    """The processes' warnings and errors so far (what to read when a test fails)."""
    lines = [
        f"{proc.name}: {line.get('event')} "
        f"{ ({k: v for k, v in line.items() if k not in ('event', 'timestamp')}) }"
        for proc in [*demo.procs.values(), *demo.finished]
        for line in proc.lines
        if line.get("level") in ("warning", "error", "critical")
    ]
    return "\n".join(lines[-60:])
