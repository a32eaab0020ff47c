"""``backa demo``: the whole Backa barnet model, for real, as separate processes.

One broker (``backa broker serve``) and one adapter per agency (``backa
adapter run``) start as their own processes on the local RabbitMQ, with
keys for deploy/areas/demo.toml and the RabbitMQ users provisioned first.
Then a scripted scenario is driven through the agencies' own interfaces (the
adapters' agency APIs and web inbox, the broker's mTLS API for consents and
the audit), step by step:

1. the guardians' consent, registered by the barnkontakt (a BVC nurse);
2. the school refers the child to social services and BUP; both open and
   answer; the school sees delivered → read → accepted;
3. the barnkontakt invites Barnets team; the stödsamordnare accepts in the
   web inbox;
4. the police report concern to social services under OSL 10 kap. 28 §, no
   consent needed;
5. a referral nobody answers is escalated to the stödsamordnare (the
   watchdog's clock runs 40 days ahead, and the output says so);
6. a referral to an agency outside the consent is refused with its reason;
   the consent is revoked while a referral waits in BUP's queue, and it is
   not handed over;
7. the security officer verifies the audit log against a signed checkpoint
   and pulls the child's log extract.

Every step checks its own outcome; the exit code is 0 only if every step did
what it says, and a failure names the step. Every process the demo started
is stopped at the end (or left running with ``--keep-running``). Each
process's log (its standard error, JSON lines) is also written, whole, to
``<demo_dir>/logs/<name>.log`` (the broker's to ``broker.log``, an adapter's
to ``<agency>.log``; a restarted process appends), for operators to read
after the run.

Development keys and a fictitious child only: never real data.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from adapters.config import token_digest
from adapters.web import hash_password
from broker.audit.log import origin_for
from broker.audit.note import open_checkpoint, vkey
from broker.audit.verify import SignedSize, verify_export
from broker.provision import RabbitmqctlError, RabbitmqctlRunner, password_file, provision
from keys.area import load_area
from keys.ca import client_ssl_context
from keys.personnummer import parse_identity_number
from keys.pseudonym import PseudonymKey, child_pseudonym
from keys.setup import AreaLayout, init_area, load_agency_keys, load_directory, load_pseudonym_key
from keys.signed import sign_consent, sign_revocation
from schemas.common import b64url_decode
from schemas.consent import ConsentRecord, ConsentRevocation

AREA_FILE = Path("deploy/areas/demo.toml")
EXAMPLES = Path("docs/adapters/examples")
POLICY_FILE = Path("deploy/policy/sweden.toml")
DEADLINES_FILE = Path("deploy/policy/deadlines.toml")
CANONICAL_NOTE = 'mapping = "canonical"  # the demo BVC system speaks the canonical JSON form'
SCHOOL = "torsviks-skola"
SOCIAL = "lidingo-socialtjanst"
VC = "lidingo-vardcentral"
BUP = "bup-lidingo"
POLICE = "polisen-lidingo"
OFFICER = "sakerhet-lidingo"
AGENCIES = (SCHOOL, SOCIAL, VC, BUP, POLICE)
#: The consent id and child of the documented examples (docs/adapters/examples).
CONSENT_ID = "0193a5c2-7e41-7c1a-9b2e-4f6d8a1c3e50"
CHILD_NUMBER = "121212-1212"  # Skatteverket's published example: fictitious, never a real child
STAFF = {
    SOCIAL: ("stodsamordnare.eva", "Eva Stödsamordnare"),
    VC: ("bvc.anna", "Anna BVC-sjuksköterska"),
}
#: How far ahead the watchdog's clock runs in the demo, so that a deadline of
#: ten working days passes during a one-minute demo.
TIME_WARP = timedelta(days=40)
WAIT_S = 60.0
#: Log lines kept per process (for the failure message).
MAX_LOG_LINES = 5_000


class DemoSettings(BaseSettings):
    """Where the demo finds RabbitMQ, which vhost it uses, and where it keeps its files."""

    model_config = SettingsConfigDict(env_prefix="BACKA_", extra="ignore")

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    demo_dir: Path = Path("var/demo")
    demo_vhost: str = "backa"
    #: How long a step may wait for something to happen before it fails.
    demo_wait_s: float = 60.0


class DemoStepError(Exception):
    """A step did not do what it says; the message says what went wrong."""


@dataclass
class Proc:
    """One process the demo started, its HTTP port, and its log lines so far."""

    name: str
    process: asyncio.subprocess.Process
    port: int
    lines: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    #: Every log event by name, all of them (``lines`` keeps the first MAX_LOG_LINES);
    #: ``name:redelivered`` counts those that say a message came again.
    events: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class Demo:
    """Everything the steps share."""

    workdir: Path
    #: RabbitMQ's host:port, or a cluster's nodes as host:port separated by commas.
    amqp_host: str
    vhost: str
    console: Console
    wait_s: float = WAIT_S
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    procs: dict[str, Proc] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    pseudonym_key: PseudonymKey | None = None
    broker_id: str = "broker"
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    #: Processes that were stopped, were killed or died, with their log lines.
    finished: list[Proc] = field(default_factory=list)

    @property
    def keys(self) -> Path:
        """The area's key directory."""
        return self.workdir / "area"

    @property
    def layout(self) -> AreaLayout:
        """Where each key and certificate is."""
        return AreaLayout(self.keys)

    def amqp_setting(self, user: str = "", password: str = "") -> str:
        """The AMQP URL setting of the area's vhost: one URL per node, commas between."""
        credentials = f"{user}:{password}@" if user else ""
        return ",".join(
            f"amqp://{credentials}{host}/{self.vhost}" for host in self.amqp_host.split(",")
        )

    def note(self, step: str, what: str, detail: str) -> None:
        """One line of the timeline."""
        self.rows.append((step, what, detail))
        self.console.print(f"  [dim]{step}[/dim] {what}: {detail}", highlight=False)

    # --- processes ------------------------------------------------------------------------

    def log_file(self, name: str) -> Path:
        """Where the log lines of process ``name`` are written, all of them."""
        return self.workdir / "logs" / f"{name}.log"

    async def spawn(self, name: str, args: list[str], env: dict[str, str], ready: str) -> Proc:
        """Start ``python -m backa ARGS`` and wait for its ``ready`` log event (with the port).

        Every line it logs is also appended to ``log_file(name)``.
        """
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "backa", *args,
            env={**os.environ, **env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        lines: list[dict[str, Any]] = []
        events: collections.Counter[str] = collections.Counter()
        found: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        log_path = self.log_file(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: an operator tailing the file (--keep-running) sees each line as it comes.
        log = log_path.open("ab", buffering=0)

        async def read() -> None:
            stream = process.stderr
            if stream is None:
                return
            while raw := await stream.readline():
                log.write(raw)
                try:
                    record = json.loads(raw)
                except ValueError:
                    record = {"event": raw.decode(errors="replace").strip()}
                if not isinstance(record, dict):
                    record = {"event": str(record)}
                if len(lines) < MAX_LOG_LINES:
                    lines.append(record)
                events[str(record.get("event"))] += 1
                if record.get("redelivered") is True:
                    events[f"{record.get('event')}:redelivered"] += 1
                if record.get("event") == ready and not found.done():
                    found.set_result(int(record.get("port") or record.get("http_port") or 0))
            if not found.done():
                found.set_exception(
                    DemoStepError(f"{name} exited before it was ready: {lines[-3:]}")
                )

        reader = asyncio.create_task(read())
        reader.add_done_callback(lambda _reader: log.close())
        try:
            port = await asyncio.wait_for(found, timeout=self.wait_s)
        except TimeoutError:
            process.kill()
            raise DemoStepError(f"{name} did not start within {self.wait_s:.0f} s") from None
        proc = Proc(name, process, port, lines, reader, events)
        self.procs[name] = proc
        return proc

    async def stop(self, name: str) -> None:
        """SIGTERM one process and wait for it (it drains and exits 0)."""
        proc = self.procs.pop(name)
        self.finished.append(proc)
        if proc.process.returncode is None:
            proc.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.process.wait(), timeout=30)
            except TimeoutError:
                proc.process.kill()
                await proc.process.wait()
        if proc.reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.reader, timeout=5)

    async def kill(self, name: str) -> None:
        """SIGKILL one process (no chance to finish anything) and wait for it."""
        proc = self.procs.pop(name)
        self.finished.append(proc)
        if proc.process.returncode is None:
            proc.process.kill()
        await proc.process.wait()
        if proc.reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.reader, timeout=5)

    async def stop_all(self) -> None:
        """Stop every process the demo started, adapters first."""
        for name in [n for n in self.procs if n != "broker"] + (
            ["broker"] if "broker" in self.procs else []
        ):
            await self.stop(name)

    # --- talking to the adapters and the broker -------------------------------------------

    def adapter_url(self, agency: str) -> str:
        """The agency API of ``agency``'s adapter."""
        return f"http://127.0.0.1:{self.procs[agency].port}"

    async def api(self, agency: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call ``agency``'s agency API as its agency system (bearer token)."""
        async with aiohttp.ClientSession() as session, session.request(
            method, self.adapter_url(agency) + path, json=body,
            headers={"Authorization": f"Bearer {self.token}"},
        ) as response:  # fmt: skip
            return response.status, await response.json()

    async def broker(
        self, who: str, method: str, path: str, body: bytes | None = None, via: str = "broker"
    ) -> tuple[int, Any, str]:
        """Call the broker process ``via``'s mTLS API with ``who``'s client certificate."""
        folder = self.layout.officer_dir(who) if who == OFFICER else self.layout.agency_dir(who)
        context = client_ssl_context(
            cert_file=folder / "client.crt", key_file=folder / "client.key",
            ca_file=self.layout.ca_cert, passphrase=None,
        )  # fmt: skip
        url = f"https://localhost:{self.procs[via].port}{path}"
        async with aiohttp.ClientSession() as session, session.request(
            method, url, data=body, ssl=context, headers={"Content-Type": "application/json"}
        ) as response:  # fmt: skip
            text = await response.text()
            try:
                data = json.loads(text)
            except ValueError:
                data = None
            return response.status, data, text

    async def until(self, what: str, probe: Callable[[], Awaitable[Any]]) -> Any:
        """Poll ``probe`` until it returns something truthy, or fail naming ``what``."""
        deadline = time.monotonic() + self.wait_s
        while True:
            value = await probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise DemoStepError(f"timed out waiting for {what}")
            await asyncio.sleep(0.2)

    async def inbox_item(self, agency: str, message_id: str) -> dict[str, Any]:
        """Wait until ``message_id`` is handed over to ``agency``'s inbox."""

        async def probe() -> dict[str, Any] | None:
            status, body = await self.api(agency, "GET", "/v1/inbox")
            if status != HTTPStatus.OK:
                return None
            return next((m for m in body["messages"] if message_id in json.dumps(m)), None)

        item: dict[str, Any] = await self.until(f"{message_id} at {agency}", probe)
        return item

    async def timeline(self, agency: str, message_id: str) -> list[tuple[str, str, str | None]]:
        """The sender's verified receipts as (status, by, reason or answer)."""
        status, body = await self.api(agency, "GET", f"/v1/messages/{message_id}")
        if status != HTTPStatus.OK:
            raise DemoStepError(f"{agency} cannot show {message_id}: {status}")
        events = body.get("events") or body.get("handelser") or []
        out = []
        for event in events:
            by = event.get("agency") or event.get("myndighet")
            why = (
                event.get("reason")
                or event.get("orsak")
                or event.get("answer")
                or event.get("besked")
            )
            out.append((str(event["status"]), str(by), None if why is None else str(why)))
        return out

    async def wait_event(
        self, agency: str, message_id: str, wanted: tuple[str, str, str | None], what: str
    ) -> list[tuple[str, str, str | None]]:
        """Wait until the sender's timeline holds ``wanted``."""

        async def probe() -> list[tuple[str, str, str | None]] | None:
            events = await self.timeline(agency, message_id)
            return events if wanted in events else None

        events: list[tuple[str, str, str | None]] = await self.until(what, probe)
        return events


def _example(name: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    data.update(changes)
    return data


def _form_value(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    if match is None:
        raise DemoStepError(f"the web inbox page has no {name} field")
    return match.group(1)


# --- set-up ---------------------------------------------------------------------------------


async def setup_area(demo: Demo, runner: RabbitmqctlRunner | None = None) -> None:
    """Keys for the demo area (development keys, said plainly) and RabbitMQ users.

    ``runner`` runs ``rabbitmqctl`` against the RabbitMQ to provision (the local one
    by default).
    """
    # A fresh start every time: keys, databases and the vhost's queues of an
    # earlier run would otherwise carry its consents and messages into this one.
    if demo.workdir.exists():
        shutil.rmtree(demo.workdir)
    demo.workdir.mkdir(parents=True)
    runner = runner or RabbitmqctlRunner()
    with contextlib.suppress(RabbitmqctlError):
        await asyncio.to_thread(runner.run, ["delete_vhost", demo.vhost])
    init_area(
        load_area(AREA_FILE), demo.keys, passphrase=None, insecure=True,
        now=datetime.now(UTC), rng=os.urandom,
    )  # fmt: skip
    report = await asyncio.to_thread(provision, demo.keys, vhost=demo.vhost, runner=runner)
    demo.note("set-up", "keys", f"area keys in {demo.keys} (development keys, unencrypted)")
    demo.note("set-up", "RabbitMQ", f"vhost {report.vhost}, one user per agency and the broker")


async def start_processes(demo: Demo) -> None:
    """The broker, then one adapter per agency, each its own process."""
    await start_broker(
        demo,
        "broker",
        f"sqlite+aiosqlite:///{demo.workdir / 'broker.db'}",
        BACKA_DEMO_TIME_WARP_S=str(int(TIME_WARP.total_seconds())),
    )
    demo.note("set-up", "broker", f"https://localhost:{demo.procs['broker'].port} (mutual TLS)")
    for agency in AGENCIES:
        await start_adapter(demo, agency)
        demo.note("set-up", f"adapter {agency}", demo.adapter_url(agency))


async def start_broker(demo: Demo, name: str, database_url: str, **settings: str) -> Proc:
    """Start one ``backa broker serve`` process (of several, on one database, if wanted)."""
    broker_password = password_file(demo.keys / "amqp", "backa-broker").read_text().strip()
    return await demo.spawn(
        name,
        ["broker", "serve", "--allow-insecure-keys"],
        {
            "BACKA_AREA_DIR": str(demo.keys),
            "BACKA_AMQP_URL": demo.amqp_setting("backa-broker", broker_password),
            "BACKA_DATABASE_URL": database_url,
            "BACKA_HTTP_PORT": "0",
            "BACKA_POLICY_FILE": str(Path.cwd() / POLICY_FILE),
            "BACKA_DEADLINES_FILE": str(Path.cwd() / DEADLINES_FILE),
            "BACKA_WATCHDOG_INTERVAL_S": "1",
            "BACKA_CHECKPOINT_INTERVAL_S": "5",
            **settings,
        },
        "broker_serving",
    )


async def start_adapter(
    demo: Demo, agency: str, extra_config: str = "", env: dict[str, str] | None = None
) -> Proc:
    """Start ``agency``'s adapter process and wait until it is connected to RabbitMQ.

    ``extra_config`` is appended to its configuration file; ``env`` adds to its environment.
    """
    config = _adapter_config(demo, agency, extra_config)
    proc = await demo.spawn(
        agency,
        [
            "adapter",
            "run",
            "--agency",
            agency,
            "--config",
            str(config),
            "--allow-insecure-keys",
        ],
        env or {},
        "adapter_serving",
    )

    async def connected() -> bool:
        if proc.process.returncode is not None:
            raise DemoStepError(f"{agency}'s adapter exited ({proc.process.returncode})")
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(demo.adapter_url(agency) + "/healthz") as response,
            ):
                return bool((await response.json())["rabbitmq"] == "connected")
        except aiohttp.ClientConnectionError:
            return False  # not listening yet, or it just died: the check above tells which

    await demo.until(f"{agency}'s adapter connecting to RabbitMQ", connected)
    return proc


def _adapter_config(demo: Demo, agency: str, extra: str = "") -> Path:
    folder = demo.workdir / "adapters"
    folder.mkdir(parents=True, exist_ok=True)
    accounts = ""
    if agency in STAFF:
        staff_id, name = STAFF[agency]
        accounts = (
            f'[[web.accounts]]\nstaff_id = "{staff_id}"\nname = "{name}"\n'
            f'password_hash = "{hash_password(demo.password)}"\n'
        )
    text = f"""# Written by backa demo for {agency}; development settings.
agency = "{agency}"
area_dir = "{demo.keys}"
database = "{folder / (agency + ".db")}"
amqp_url = "{demo.amqp_setting()}"
amqp_password_file = "{password_file(demo.keys / "amqp", agency)}"
policy_file = "{Path.cwd() / POLICY_FILE}"
insecure_dev_keys = true
http_port = 0
broker_url = "https://localhost:{demo.procs["broker"].port}"
{CANONICAL_NOTE if agency == VC else ""}

[[systems]]
name = "{agency}-system"
token_sha256 = "{token_digest(demo.token)}"

[web]
enabled = {"true" if accounts else "false"}
session_secret_file = "{folder / (agency + ".session")}"
{accounts}
{extra}"""
    path = folder / f"{agency}.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the scenario ---------------------------------------------------------------------------


def _child(demo: Demo) -> str:
    """The child's pseudonym, computed as an adapter would (the broker never sees the number)."""
    if demo.pseudonym_key is None:
        raise DemoStepError("the pseudonym key is not loaded")
    number = parse_identity_number(CHILD_NUMBER, today=datetime.now(UTC).date())
    return child_pseudonym(number, demo.pseudonym_key)


async def step_consent(demo: Demo) -> str:
    """1. The barnkontakt (BVC nurse) registers the guardians' consent, signed with BVC's key."""
    now = datetime.now(UTC)
    keys = load_agency_keys(demo.keys, VC, passphrase=None, allow_insecure=True)
    record = ConsentRecord.model_validate_json(
        json.dumps(
            {
                "id": CONSENT_ID,
                "child": _child(demo),
                # Both custodial guardians, by pseudonym (joint custody).
                "guardians": [
                    {"pseudonym": hashlib.sha256(b"guardian-1").hexdigest(), "custodial": True},
                    {"pseudonym": hashlib.sha256(b"guardian-2").hexdigest(), "custodial": True},
                ],
                "joint_custody": True,
                "child_view": {"consented": True, "age": 13, "assessed_mature": False},
                "registered_by": {"agency": VC, "kid": keys.kid, "staff_id": "bvc.anna"},
                "parties": [{"agency": a} for a in (VC, SCHOOL, SOCIAL, BUP)],
                "purposes": ["referral", "team", "plan"],
                "valid_from": now.isoformat(),
                "valid_until": (now + timedelta(days=365)).isoformat(),
                "document_digest": hashlib.sha256(
                    b"the signed consent form, kept at BVC"
                ).hexdigest(),
            }
        )
    )
    body = sign_consent(record, keys.sender).model_dump_json().encode()
    status, _answer, text = await demo.broker(VC, "POST", "/v1/consents", body)
    if status != HTTPStatus.CREATED:
        raise DemoStepError(f"the broker refused the consent ({status}): {text[:300]}")
    demo.note("1 consent", "registered", f"{CONSENT_ID} for VC, school, social services, BUP")
    return "consent registered"


async def step_referral(demo: Demo) -> str:
    """2. The school refers the child to social services and BUP; both open and answer."""
    status, body = await demo.api(SCHOOL, "POST", "/v1/messages", _example("school-referral.json"))
    if status != HTTPStatus.ACCEPTED:
        raise DemoStepError(f"the school's adapter refused the referral ({status}): {body}")
    message_id = str(body["message_id"])
    demo.ids["referral"] = message_id
    for agency, staff in ((SOCIAL, "handlaggare.omar"), (BUP, "bup.mottagning")):
        await demo.inbox_item(agency, message_id)
        await demo.api(agency, "POST", f"/v1/inbox/{message_id}/read", {"staff_id": staff})
        await demo.api(
            agency,
            "POST",
            f"/v1/inbox/{message_id}/answer",
            {"staff_id": staff, "answer": "accepted"},
        )
    for agency in (SOCIAL, BUP):
        await demo.wait_event(
            SCHOOL, message_id, ("answered", agency, "ja"), f"{agency}'s answer at the school"
        )
    events = await demo.timeline(SCHOOL, message_id)
    for agency in (SOCIAL, BUP):
        steps = " → ".join(s for s, by, _ in events if by == agency)
        demo.note("2 referral", f"{message_id} at {agency}", steps)
    return "delivered → read → accepted, at both"


async def step_team(demo: Demo) -> str:
    """3. The barnkontakt invites Barnets team; the stödsamordnare accepts in the web inbox."""
    invitation = _example("canonical-team_invitation.json", recipients=[SOCIAL])
    status, body = await demo.api(VC, "POST", "/v1/messages", invitation)
    if status != HTTPStatus.ACCEPTED:
        raise DemoStepError(f"VC's adapter refused the invitation ({status}): {body}")
    message_id = str(body["message_id"])
    await demo.inbox_item(SOCIAL, message_id)
    staff_id, _name = STAFF[SOCIAL]
    base = demo.adapter_url(SOCIAL)
    # unsafe=True: keep cookies from an IP address (the adapter listens on 127.0.0.1).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as web:
        login = await (await web.get(f"{base}/inbox/login")).text()
        await web.post(
            f"{base}/inbox/login",
            data={
                "csrf": _form_value(login, "csrf"),
                "next": "/inbox/",
                "staff_id": staff_id,
                "password": demo.password,
            },
        )  # fmt: skip
        page = await (await web.get(f"{base}/inbox/m/{message_id}")).text()
        if "Inbjudan till Barnets team" not in page:
            raise DemoStepError("the web inbox did not show the invitation")
        answered = await web.post(
            f"{base}/inbox/m/{message_id}/answer",
            data={"csrf": _form_value(page, "csrf"), "answer": "accepted"},
        )
        if answered.status != HTTPStatus.OK or "Ditt svar är skickat" not in await answered.text():
            raise DemoStepError(f"the web inbox did not take the answer ({answered.status})")
    events = await demo.wait_event(
        VC, message_id, ("answered", SOCIAL, "accepted"), "the stödsamordnare's answer at VC"
    )
    demo.note(
        "3 team",
        f"{message_id} at {SOCIAL}",
        " → ".join(s for s, by, _ in events if by == SOCIAL),
    )
    return "the stödsamordnare accepted in the web inbox"


async def step_concern(demo: Demo) -> str:
    """4. The police report concern to social services under OSL 10 kap. 28 §, without consent."""
    status, body = await demo.api(
        POLICE, "POST", "/v1/messages", _example("police-concern_report.json")
    )
    if status != HTTPStatus.ACCEPTED:
        raise DemoStepError(f"the police adapter refused the report ({status}): {body}")
    message_id = str(body["message_id"])
    await demo.inbox_item(SOCIAL, message_id)
    await demo.wait_event(
        POLICE, message_id, ("delivered", SOCIAL, None), "delivered at the police"
    )
    demo.note(
        "4 concern",
        f"{message_id} police → social services",
        "accepted (legal basis) → delivered",
    )
    return "delivered under a legal basis"


async def step_escalation(demo: Demo) -> str:
    """5. A referral BUP never answers is escalated to the stödsamordnare (the clock runs ahead)."""
    referral = _example("school-referral.json", mottagare=[BUP])
    status, body = await demo.api(SCHOOL, "POST", "/v1/messages", referral)
    if status != HTTPStatus.ACCEPTED:
        raise DemoStepError(f"the school's adapter refused the referral ({status}): {body}")
    message_id = str(body["message_id"])
    await demo.inbox_item(BUP, message_id)

    async def escalated() -> dict[str, Any] | None:
        _status, inbox = await demo.api(SOCIAL, "GET", "/v1/inbox")
        return next(
            (
                m
                for m in inbox["messages"]
                if "escalation" in json.dumps(m) and message_id in json.dumps(m)
            ),
            None,
        )

    await demo.until("the escalation at the stödsamordnare", escalated)
    demo.note(
        "5 escalation",
        f"{message_id} school → BUP, unanswered",
        f"escalated to {SOCIAL} (stödsamordnare); "
        f"the watchdog's clock ran {TIME_WARP.days} days ahead",
    )
    return "escalated to the stödsamordnare"


async def step_refusal_and_revocation(demo: Demo) -> str:
    """6. Outside the consent: refused. Revoked while a referral waits for BUP: not handed over."""
    outside = _example("school-referral.json", mottagare=[POLICE])
    _status, body = await demo.api(SCHOOL, "POST", "/v1/messages", outside)
    refused_id = str(body["message_id"])
    events = await demo.until(
        "the broker's refusal",
        lambda: _refusal(demo, refused_id),
    )
    demo.note("6 refusal", f"{refused_id} school → police", f"rejected: {events}")
    await demo.stop(BUP)
    queued = _example("school-referral.json", mottagare=[BUP])
    _status, body = await demo.api(SCHOOL, "POST", "/v1/messages", queued)
    queued_id = str(body["message_id"])
    await demo.wait_event(
        SCHOOL, queued_id, ("accepted", demo.broker_id, None), "the broker routing it"
    )
    keys = load_agency_keys(demo.keys, SOCIAL, passphrase=None, allow_insecure=True)
    revocation = ConsentRevocation.model_validate_json(
        json.dumps(
            {
                "consent_id": CONSENT_ID,
                "revoked_at": datetime.now(UTC).isoformat(),
                "reason": "guardian_withdrew",
                "by": {"agency": SOCIAL, "kid": keys.kid, "staff_id": "handlaggare.omar"},
            }
        )
    )
    body_bytes = sign_revocation(revocation, keys.sender).model_dump_json().encode()
    status, _data, text = await demo.broker(
        SOCIAL, "POST", f"/v1/consents/{CONSENT_ID}/revoke", body_bytes
    )
    if status != HTTPStatus.OK:
        raise DemoStepError(f"the broker refused the revocation ({status}): {text[:300]}")
    await demo.spawn(
        BUP,
        [
            "adapter", "run", "--agency", BUP,
            "--config", str(demo.workdir / "adapters" / f"{BUP}.toml"), "--allow-insecure-keys",
        ],
        {},
        "adapter_serving",
    )  # fmt: skip
    await demo.wait_event(
        SCHOOL, queued_id, ("rejected", BUP, "consent_revoked"), "BUP refusing the queued referral"
    )
    status, _inbox = await demo.api(BUP, "GET", f"/v1/inbox/{queued_id}")
    if status != HTTPStatus.NOT_FOUND:
        raise DemoStepError("BUP's adapter handed over a referral under a revoked consent")
    demo.note(
        "6 revocation",
        f"{queued_id} queued for BUP",
        "consent revoked → rejected: consent_revoked, not handed over",
    )
    return "refused outside the consent; revocation stopped the queued referral"


async def _refusal(demo: Demo, message_id: str) -> str | None:
    events = await demo.timeline(SCHOOL, message_id)
    return next((why for status, _by, why in events if status == "rejected" and why), None)


async def verified_audit(demo: Demo, broker: str = "broker") -> list[dict[str, Any]]:
    """The whole audit log as the officer exports it, verified against a fresh signed checkpoint.

    Raises DemoStepError naming the first problem (a gap, a changed entry, a bad root).
    """
    status, _data, note = await demo.broker(
        OFFICER, "GET", "/v1/audit/checkpoint?fresh=1", via=broker
    )
    if status != HTTPStatus.OK:
        raise DemoStepError(f"the officer could not read a checkpoint ({status})")
    directory = load_directory(demo.keys)
    broker_agency = directory.broker_agency()
    entry = directory.current_entry(broker_agency, now=datetime.now(UTC)) if broker_agency else None
    if entry is None:
        raise DemoStepError("the directory has no broker key")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: PLC0415

    verifier = vkey(
        origin_for(directory.area),
        Ed25519PublicKey.from_public_bytes(b64url_decode(entry.signing_key)),
    )
    _origin, size, root = open_checkpoint(note, verifier)
    status, _data, export = await demo.broker(
        OFFICER, "GET", f"/v1/audit/export?start=0&end={size}", via=broker
    )
    if status != HTTPStatus.OK:
        raise DemoStepError(f"the officer could not export the audit log ({status})")
    report = verify_export(export.splitlines(), [SignedSize(size, root)])
    if not report.ok:
        raise DemoStepError(f"the audit log did not verify: {report.problem}")
    return [json.loads(line) for line in export.splitlines() if line.strip()]


async def step_audit(demo: Demo) -> str:
    """7. The security officer verifies the audit log and pulls the child's log extract."""
    size = len(await verified_audit(demo))
    demo.note("7 audit", "verified", f"{size} entries match the broker-signed checkpoint")
    child = _child(demo)
    status, page, _text = await demo.broker(
        OFFICER, "GET", f"/v1/audit/entries?child={child}&limit=500"
    )
    if status != HTTPStatus.OK:
        raise DemoStepError(f"the officer could not search the audit log ({status})")
    events = [e["entry"]["event"] for e in page["entries"]]
    demo.note(
        "7 audit",
        "the child's log extract",
        f"{len(events)} entries: " + ", ".join(sorted(set(events))),
    )
    return f"{size} entries verified; extract of {len(events)}"


STEPS: list[tuple[str, Callable[[Demo], Awaitable[str]]]] = [
    ("Consent registered by the barnkontakt", step_consent),
    ("Referral from the school to social services and BUP", step_referral),
    ("Barnets team: invitation accepted in the web inbox", step_team),
    ("Concern report from the police, by law", step_concern),
    ("Unanswered referral escalated", step_escalation),
    ("Refusal outside the consent; revocation in flight", step_refusal_and_revocation),
    ("Audit verified; the child's log extract", step_audit),
]


async def run(settings: DemoSettings, console: Console, *, keep_running: bool = False) -> bool:
    """Set up, start every process, run every step; True only if every step did what it says."""
    url = settings.amqp_url.get_secret_value()
    host = url.split("@", 1)[-1].split("/", 1)[0] or "127.0.0.1:5672"
    demo = Demo(
        # Absolute: the adapters' configs would resolve a relative one against their folder.
        workdir=settings.demo_dir.resolve(),
        amqp_host=host,
        vhost=settings.demo_vhost,
        console=console,
        wait_s=settings.demo_wait_s,
    )
    console.print(
        Panel.fit(
            "Backa broker: the whole model, each agency as its own process.\n"
            "A fictitious child (Skatteverket's example number) and development keys only.",
            title="backa demo",
        )
    )
    ok = False
    try:
        ok = await _run_all(demo, keep_running=keep_running)
    finally:
        with console.status("Stopping every process the demo started …"):
            await demo.stop_all()
        console.print(
            "All processes stopped." if ok else "All processes stopped (the demo failed)."
        )
    return ok


async def _run_all(demo: Demo, *, keep_running: bool) -> bool:
    console = demo.console
    try:
        with console.status("Keys, RabbitMQ users, broker and five adapters starting …"):
            await setup_area(demo)
            demo.pseudonym_key = PseudonymKey(
                load_pseudonym_key(demo.keys, passphrase=None, allow_insecure=True)
            )
            demo.broker_id = load_directory(demo.keys).broker_agency() or "broker"
            await start_processes(demo)
    except DemoStepError as exc:
        console.print(f"[bold red]FAILED[/bold red] set-up: {exc}")
        return False
    for number, (title, step) in enumerate(STEPS, start=1):
        with console.status(f"Step {number}: {title} …"):
            try:
                outcome = await step(demo)
            except (DemoStepError, aiohttp.ClientError, KeyError, ValueError) as exc:
                console.print(f"[bold red]FAILED[/bold red] step {number} ({title}): {exc}")
                return False
        console.print(f"[bold green]✓[/bold green] Step {number}: {title} — {outcome}")
    table = Table(title="Timeline")
    for column in ("step", "what", "detail"):
        table.add_column(column)
    for row in demo.rows:
        table.add_row(*row)
    console.print(table)
    console.print(
        f"Web inbox of the stödsamordnare: {demo.adapter_url(SOCIAL)}/inbox/ "
        f"(user {STAFF[SOCIAL][0]}, password {demo.password}); of the barnkontakt: "
        f"{demo.adapter_url(VC)}/inbox/ (user {STAFF[VC][0]}, the same password)\n"
        "Security officers' console: "
        f"https://localhost:{demo.procs['broker'].port}/konsol/ "
        f"(certificate in {demo.layout.officer_dir(OFFICER)})"
    )
    if not keep_running:
        console.print("They stop now; run `backa demo --keep-running` to click through them.")
        return True
    console.print("Everything keeps running; Ctrl-C stops it.")
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        await asyncio.Event().wait()
    return True
