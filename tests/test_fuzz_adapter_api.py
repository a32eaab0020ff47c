"""Fuzz each adapter's agency API from its own OpenAPI document, against live adapter processes.

A whole area runs as processes, as in production: ``backa broker serve`` and
five ``backa adapter run``, one per mapping (the school's elevhälsa form,
social services, the canonical form at the vårdcentral, FHIR at BUP, the
police), on a RabbitMQ vhost and users of this module's own (random names,
removed afterwards). Before any fuzzing, the documented example messages go
between them for real (a consent, a referral, team invitations and a
response, concern reports both ways, a plan update), so that every inbox
and every outbox holds messages of several kinds.

schemathesis generates requests for every operation of each adapter's
document (``adapters.openapi.build_openapi`` of its mapping: the one it
serves at /openapi.json, checked equal below), sends them with the agency
system's bearer token and checks each answer: never a 5xx, and status code,
content type and body as documented. A request about one message (``{id}``)
is sent twice: with the generated id, which names no message, and with the
id of a real message at that adapter, so that reading, answering and the
status timeline are fuzzed on real messages too. A submission is sent twice
as well: as generated, and with its identity numbers and recipients made real
(``_repaired``), so that generated messages get past validation to sealing,
the outbox and the broker.

The bearer token itself is fuzzed with hypothesis: whatever the header holds,
a wrong token is the documented 401.

``BACKA_FUZZ_EXAMPLES`` sets how many examples schemathesis draws per
operation (default 5: about 40 s here, most of it starting the area). A
larger number (``make fuzz``) also runs schemathesis's coverage phase: each
field missing, of the wrong type or at its bounds, about a thousand requests
for each submission operation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
import requests
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from adapters.config import token_digest
from adapters.openapi import build_openapi
from broker.definitions import Permission, agency_permission, broker_permission
from broker.provision import RabbitmqctlError, RabbitmqctlRunner
from keys.area import parse_area
from keys.personnummer import parse_identity_number
from keys.pseudonym import PseudonymKey, child_pseudonym
from keys.setup import AreaLayout, init_area, load_agency_keys, load_pseudonym_key
from keys.signed import sign_consent
from schemas.consent import ConsentRecord
from tests.rabbit import AMQP_URL, random_vhost

pytestmark = pytest.mark.rabbitmq

DEFAULT_EXAMPLES: Final = 5
EXAMPLES = int(os.environ.get("BACKA_FUZZ_EXAMPLES", str(DEFAULT_EXAMPLES)))
#: schemathesis's coverage phase (boundary values, each field missing or of the wrong type:
#: about a thousand requests for each submission) is for the long run only.
LONG_RUN = EXAMPLES > DEFAULT_EXAMPLES
START_S = 60.0
TIMEOUT = 10.0
SUFFIX = secrets.token_hex(3)
TOKEN = secrets.token_urlsafe(16)
DEMO_AREA = Path("deploy/areas/demo.toml").read_text(encoding="utf-8")
EXAMPLES_DIR = Path("docs/adapters/examples")
POLICY_FILE = Path("deploy/policy/sweden.toml").resolve()
DEADLINES_FILE = Path("deploy/policy/deadlines.toml").resolve()

#: The demo area's agencies → this module's ids, and the mapping each one's adapter speaks.
AGENCIES: Final = {
    "torsviks-skola": (f"fz-skola-{SUFFIX}", "school"),
    "lidingo-socialtjanst": (f"fz-soc-{SUFFIX}", "social_services"),
    "lidingo-vardcentral": (f"fz-vc-{SUFFIX}", "canonical"),
    "bup-lidingo": (f"fz-bup-{SUFFIX}", "fhir"),
    "polisen-lidingo": (f"fz-polis-{SUFFIX}", "police"),
    "kappala-forskola": (f"fz-forskola-{SUFFIX}", None),  # in the area; no adapter runs
}
SCHOOL, SOCIAL, VC, BUP, POLICE = (AGENCIES[demo][0] for demo in list(AGENCIES)[:5])
BROKER_USER = f"fz-broker-{SUFFIX}"
#: The consent of the documented examples, and the child they are about (Skatteverket's example).
CONSENT_ID = "0193a5c2-7e41-7c1a-9b2e-4f6d8a1c3e50"
CHILD = "20121212-1212"

CONFIG = schemathesis.Config.from_dict(
    {"generation": {"max-examples": EXAMPLES}, "phases": {"coverage": {"enabled": LONG_RUN}}}
)
MAPPINGS: Final = ("school", "social_services", "canonical", "fhir", "police")
DOCUMENTS = {mapping: build_openapi(mapping) for mapping in MAPPINGS}
SCHEMAS = {m: schemathesis.openapi.from_dict(d, config=CONFIG) for m, d in DOCUMENTS.items()}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class LiveAdapter:
    """One running adapter: its URL, its log, and the ids of real messages it holds."""

    agency: str
    url: str
    log: Path
    sent: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the agency API with the token; (status, JSON body)."""
        response = requests.request(
            method,
            self.url + path,
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=TIMEOUT,
        )
        return response.status_code, response.json()

    def submit(self, body: dict[str, Any]) -> str:
        """Submit and expect 202; the message id."""
        status, answer = self.call("POST", "/v1/messages", body)
        assert status == 202, answer
        self.sent.append(str(answer["message_id"]))
        return str(answer["message_id"])

    def inbox(self) -> list[str]:
        """The ids of the handed-over messages, newest first."""
        status, body = self.call("GET", "/v1/inbox")
        assert status == 200, body
        return [_message_id(item) for item in body["messages"]]


@dataclass
class LiveArea:
    """The broker and the adapters by mapping."""

    broker_log: Path
    adapters: dict[str, LiveAdapter]


def _message_id(rendered: dict[str, Any]) -> str:
    """The message id of a rendering: canonical, Swedish, or a FHIR Bundle's identifier."""
    found = rendered.get("message_id") or rendered.get("meddelande_id")
    return str(found or rendered["identifier"]["value"])


def _example(name: str, **replace: str) -> dict[str, Any]:
    """A documented example request with the demo ids replaced by this module's."""
    text = (EXAMPLES_DIR / name).read_text(encoding="utf-8")
    for demo_id, (agency, _mapping) in AGENCIES.items():
        text = text.replace(f'"{demo_id}"', f'"{agency}"')
    for old, new in replace.items():
        text = text.replace(old, new)
    data: dict[str, Any] = json.loads(text)
    return data


# --- Setting the area up -------------------------------------------------------------------


def _provision(runner: RabbitmqctlRunner, vhost: str, passwords: dict[str, str]) -> None:
    """The vhost, and each user with the permissions ``backa broker provision`` gives it.

    In parallel: each ``rabbitmqctl`` call takes most of a second.
    """
    runner.run(["add_vhost", vhost])
    agencies = [user for user in passwords if user != BROKER_USER]
    rules = [broker_permission(BROKER_USER), *map(agency_permission, agencies)]

    def add(rule: Permission) -> None:
        runner.run(["add_user", rule.user], stdin=passwords[rule.user] + "\n")
        runner.run(
            ["set_permissions", "-p", vhost, rule.user, rule.configure, rule.write, rule.read]
        )

    with ThreadPoolExecutor(len(rules)) as pool:
        list(pool.map(add, rules))


def _unprovision(runner: RabbitmqctlRunner, vhost: str, users: list[str]) -> None:
    def remove(args: list[str]) -> None:
        with contextlib.suppress(RabbitmqctlError):  # never made: set-up failed before it
            runner.run(args)

    with ThreadPoolExecutor(len(users) + 1) as pool:
        list(pool.map(remove, [["delete_vhost", vhost], *(["delete_user", u] for u in users)]))


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BACKA_KEY_PASSPHRASE")}
    with log.open("wb") as sink:
        return subprocess.Popen(  # noqa: S603 - this interpreter and backa, arguments as a list
            [sys.executable, "-m", "backa", *args, "--allow-insecure-keys"],
            env={**clean, **env},
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )


def _events(log: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(raw)
        except ValueError:
            record = {"event": raw}
        lines.append(record if isinstance(record, dict) else {"event": raw})
    return lines


def _port(process: subprocess.Popen[bytes], log: Path, ready: str) -> int:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        for record in _events(log):
            if record.get("event") == ready:
                return int(record.get("port") or record["http_port"])
        if process.poll() is not None:
            pytest.fail(f"{log.stem} exited with {process.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    pytest.fail(f"{log.stem} did not serve within {START_S:.0f} s: {log.read_text()[-2000:]}")


def _until(what: str, probe: Any) -> Any:
    deadline = time.monotonic() + START_S
    while not (value := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def _adapter_config(root: Path, agency: str, mapping: str, amqp: str) -> Path:
    path = root / f"{agency}.toml"
    path.write_text(
        f"""agency = "{agency}"
area_dir = "{root / "area"}"
database = "{root / (agency + ".db")}"
amqp_url = "{amqp}"
amqp_password_file = "{root / (agency + ".password")}"
policy_file = "{POLICY_FILE}"
insecure_dev_keys = true
http_port = 0
mapping = "{mapping}"

[[systems]]
name = "{agency}-system"
token_sha256 = "{token_digest(TOKEN)}"

[web]
enabled = false
""",
        encoding="utf-8",
    )
    return path


def _register_consent(root: Path, broker_port: int) -> None:
    """The guardians' consent about the child, registered by VC with its own key and certificate."""
    area = root / "area"
    keys = load_agency_keys(area, VC, passphrase=None, allow_insecure=True)
    pseudonym_key = PseudonymKey(load_pseudonym_key(area, passphrase=None, allow_insecure=True))
    now = datetime.now(UTC)
    child = child_pseudonym(parse_identity_number(CHILD, today=now.date()), pseudonym_key)
    record = ConsentRecord.model_validate_json(
        json.dumps(
            {
                "id": CONSENT_ID,
                "child": child,
                "guardians": [
                    {"pseudonym": hashlib.sha256(b"guardian-1").hexdigest(), "custodial": True},
                    {"pseudonym": hashlib.sha256(b"guardian-2").hexdigest(), "custodial": True},
                ],
                "joint_custody": True,
                "child_view": {"consented": True, "age": 14, "assessed_mature": False},
                "registered_by": {"agency": VC, "kid": keys.kid, "staff_id": "bvc.anna"},
                "parties": [{"agency": a} for a in (VC, SCHOOL, SOCIAL, BUP)],
                "purposes": ["referral", "team", "plan"],
                "valid_from": now.isoformat(),
                "valid_until": (now + timedelta(days=365)).isoformat(),
                "document_digest": hashlib.sha256(b"the signed consent form").hexdigest(),
            }
        )
    )
    layout = AreaLayout(area)
    folder = layout.agency_dir(VC)
    response = requests.post(
        f"https://localhost:{broker_port}/v1/consents",
        data=sign_consent(record, keys.sender).model_dump_json(),
        headers={"Content-Type": "application/json"},
        cert=(str(folder / "client.crt"), str(folder / "client.key")),
        verify=str(layout.ca_cert),
        timeout=TIMEOUT,
    )
    assert response.status_code == 201, response.text


def _seed(adapters: dict[str, LiveAdapter]) -> None:
    """Real messages of every submittable kind, in every format, in every adapter's inbox."""
    by_agency = {adapter.agency: adapter for adapter in adapters.values()}
    school, social, vc, bup, police = (by_agency[a] for a in (SCHOOL, SOCIAL, VC, BUP, POLICE))
    team = social.submit(_example("social_services-team_invitation.json"))
    invitation = _example("canonical-team_invitation.json")
    invitation["recipients"] = [SOCIAL]
    vc.submit(invitation)
    school.submit(_example("school-referral.json"))
    police.submit(_example("police-concern_report.json"))
    social.submit(_example("social_services-concern_report.json"))
    social.submit(_example("social_services-plan_update.json"))
    _until("the team invitation at the school", lambda: team in school.inbox())
    # The documented response names the documented invitation; this one answers the real one.
    school.submit(
        _example("school-team_response.json", **{"0193a5d0-1f2b-7a9c-8e3d-5b6a7c8d9e01": team})
    )
    for adapter, count in ((school, 2), (social, 4), (vc, 2), (bup, 3), (police, 1)):
        _until(
            f"{adapter.agency}'s {count} messages", lambda a=adapter, n=count: len(a.inbox()) >= n
        )
        adapter.received = adapter.inbox()


@pytest.fixture(scope="module")
def live_area(
    tmp_path_factory: pytest.TempPathFactory, rabbitmqctl: RabbitmqctlRunner
) -> Iterator[LiveArea]:
    """The broker and five adapters as processes on a vhost of their own, with real messages."""
    root = tmp_path_factory.mktemp("fuzz-adapters")
    text = DEMO_AREA
    for demo_id, (agency, _mapping) in AGENCIES.items():
        text = text.replace(f'"{demo_id}"', f'"{agency}"')
    init_area(
        parse_area(text),
        root / "area",
        passphrase=None,
        insecure=True,
        now=datetime.now(UTC),
        rng=os.urandom,
        scrypt_n=2**10,
    )
    vhost = random_vhost()
    running = {agency: mapping for agency, mapping in AGENCIES.values() if mapping is not None}
    passwords = {user: secrets.token_urlsafe(12) for user in (BROKER_USER, *running)}
    for agency in running:
        (root / f"{agency}.password").write_text(passwords[agency], encoding="utf-8")
    host = AMQP_URL.split("@", 1)[-1].split("/", 1)[0] or "127.0.0.1:5672"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        _provision(rabbitmqctl, vhost, passwords)
        broker_log = root / "broker.log"
        broker = _spawn(
            ["broker", "serve"],
            {
                "BACKA_AREA_DIR": str(root / "area"),
                "BACKA_AMQP_URL": f"amqp://{BROKER_USER}:{passwords[BROKER_USER]}@{host}/{vhost}",
                "BACKA_DATABASE_URL": f"sqlite+aiosqlite:///{root / 'broker.db'}",
                "BACKA_HTTP_PORT": "0",
                "BACKA_POLICY_FILE": str(POLICY_FILE),
                "BACKA_DEADLINES_FILE": str(DEADLINES_FILE),
            },
            broker_log,
        )
        processes.append(broker)
        broker_port = _port(broker, broker_log, "broker_serving")
        started = {}
        for agency, mapping in running.items():
            config = _adapter_config(root, agency, mapping, f"amqp://{host}/{vhost}")
            log = root / f"{agency}.log"
            process = _spawn(
                ["adapter", "run", "--agency", agency, "--config", str(config)], {}, log
            )
            processes.append(process)
            started[mapping] = (agency, process, log)
        adapters = {
            mapping: LiveAdapter(
                agency, f"http://127.0.0.1:{_port(p, log, 'adapter_serving')}", log
            )
            for mapping, (agency, p, log) in started.items()
        }
        for adapter in adapters.values():
            _until(
                f"{adapter.agency} connecting to RabbitMQ",
                lambda a=adapter: (
                    requests.get(a.url + "/healthz", timeout=TIMEOUT).json()["rabbitmq"]
                    == "connected"
                ),
            )
        _register_consent(root, broker_port)
        _seed(adapters)
        yield LiveArea(broker_log=broker_log, adapters=adapters)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _unprovision(rabbitmqctl, vhost, list(passwords))


def test_each_adapter_serves_the_document_it_is_fuzzed_with(live_area: LiveArea) -> None:
    """GET /openapi.json (no token) is exactly the document the cases are generated from."""
    for mapping, adapter in live_area.adapters.items():
        response = requests.get(f"{adapter.url}/openapi.json", timeout=TIMEOUT)
        assert response.status_code == 200
        assert response.json() == json.loads(json.dumps(DOCUMENTS[mapping])), mapping


def _real_id(case: schemathesis.Case[Any], adapter: LiveAdapter) -> str | None:
    """The id of a real message at ``adapter`` for a case about one message, picked by the case."""
    generated = (case.path_parameters or {}).get("id")
    if generated is None:
        return None
    ids = adapter.sent if case.path.startswith("/v1/messages") else adapter.received
    digest = hashlib.sha256(str(generated).encode()).digest()
    return ids[digest[0] % len(ids)] if ids else None


def _repaired(node: Any, recipients: list[str]) -> Any:
    """``node`` with each identity number the documented child's and each recipient list real.

    A generator cannot guess a personnummer that passes its checksum and date,
    nor the agencies of this area; with these two put right, half of the
    generated submissions are sealed, queued and sent through the broker.
    """
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in {"identity_number", "personnummer"} and isinstance(value, str):
                out[key] = CHILD
            elif key in {"recipients", "mottagare"} and isinstance(value, list):
                out[key] = recipients[: max(1, len(value))]
            else:
                out[key] = _repaired(value, recipients)
        return out
    if isinstance(node, list):
        return [_repaired(item, recipients) for item in node]
    return node


def _fuzz(case: schemathesis.Case[Any], live_area: LiveArea, mapping: str) -> list[int]:
    """Send ``case`` (and its variants with a real id or repaired body), validating each
    answer against the document; the status of every answer."""
    adapter = live_area.adapters[mapping]
    token = {"Authorization": f"Bearer {TOKEN}"}
    statuses = []
    response = case.call(base_url=adapter.url, headers=token, timeout=TIMEOUT)
    case.validate_response(response, checks=CHECKS)
    statuses.append(response.status_code)
    real = _real_id(case, adapter)
    if real is not None:
        assert case.path_parameters is not None
        case.path_parameters["id"] = real
        response = case.call(base_url=adapter.url, headers=token, timeout=TIMEOUT)
        case.validate_response(response, checks=CHECKS)
        statuses.append(response.status_code)
    if case.path == "/v1/messages" and case.method == "POST":
        others = [a.agency for a in live_area.adapters.values() if a is not adapter]
        repaired = _repaired(case.body, others)
        if repaired != case.body:
            case.body = repaired
            response = case.call(base_url=adapter.url, headers=token, timeout=TIMEOUT)
            case.validate_response(response, checks=CHECKS)
            statuses.append(response.status_code)
    return statuses


@SCHEMAS["school"].parametrize()
def test_the_school_adapter_survives_fuzzing(
    case: schemathesis.Case[Any], live_area: LiveArea
) -> None:
    """The elevhälsa form's API: no 5xx, every answer as documented."""
    statuses = _fuzz(case, live_area, "school")
    assert statuses, "every case was sent"
    assert all(status < 500 for status in statuses), statuses


@SCHEMAS["social_services"].parametrize()
def test_the_social_services_adapter_survives_fuzzing(
    case: schemathesis.Case[Any], live_area: LiveArea
) -> None:
    """Social services' API (canonical in, cases out): no 5xx, every answer as documented."""
    statuses = _fuzz(case, live_area, "social_services")
    assert statuses, "every case was sent"
    assert all(status < 500 for status in statuses), statuses


@SCHEMAS["canonical"].parametrize()
def test_the_canonical_adapter_survives_fuzzing(
    case: schemathesis.Case[Any], live_area: LiveArea
) -> None:
    """The canonical JSON form's API: no 5xx, every answer as documented."""
    statuses = _fuzz(case, live_area, "canonical")
    assert statuses, "every case was sent"
    assert all(status < 500 for status in statuses), statuses


@SCHEMAS["fhir"].parametrize()
def test_the_fhir_adapter_survives_fuzzing(
    case: schemathesis.Case[Any], live_area: LiveArea
) -> None:
    """The FHIR API: no 5xx, every answer as documented."""
    statuses = _fuzz(case, live_area, "fhir")
    assert statuses, "every case was sent"
    assert all(status < 500 for status in statuses), statuses


@SCHEMAS["police"].parametrize()
def test_the_police_adapter_survives_fuzzing(
    case: schemathesis.Case[Any], live_area: LiveArea
) -> None:
    """The police form's API: no 5xx, every answer as documented."""
    statuses = _fuzz(case, live_area, "police")
    assert statuses, "every case was sent"
    assert all(status < 500 for status in statuses), statuses


# Ten times the examples: one small GET each, and the bytes that broke it are a few in 256.
@settings(max_examples=EXAMPLES * 10, deadline=None)
@given(
    token=st.text(
        st.characters(codec="latin-1", exclude_characters="\r\n", exclude_categories=["Cc"]),
        max_size=64,
    )
)
def test_any_bearer_token_is_refused_with_the_documented_401(
    live_area: LiveArea, token: str
) -> None:
    """Whatever bytes the Authorization header holds, a wrong token gets 401 and its JSON error.

    schemathesis sends the one good token; this fuzzes the header itself (as latin-1 bytes,
    as HTTP carries them).
    """
    adapter = live_area.adapters["school"]
    response = requests.get(
        f"{adapter.url}/v1/inbox", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
    )
    assert (response.status_code, response.json()["error"]) == (401, "unauthorized")


@dataclass(frozen=True)
class Found:
    """A request that made an adapter answer 500, and the answer the document gives it."""

    method: str
    action: str  # after /v1/inbox/{a real id}: read, answer, or nothing
    body: dict[str, str] | None
    token: str
    status: int


#: What the fuzzing above found: a staff id the signed receipt cannot carry (answer, read),
#: and a bearer token that is not UTF-8 (the header's bytes as latin-1, as HTTP carries them).
FOUND = [
    pytest.param(Found("POST", "answer", {"staff_id": "n\u00f5\u00f6\u00dfm\u00c8\u00ff", "answer": "accepted"}, TOKEN, 422), id="answer-staff-id-not-a-staff-id"),
    pytest.param(Found("POST", "read", {"staff_id": "a b"}, TOKEN, 422), id="read-staff-id-with-a-space"),
    pytest.param(Found("GET", "", None, "\u00e9", 401), id="token-not-utf-8"),
]  # fmt: skip


@pytest.mark.parametrize("found", FOUND)
def test_what_the_fuzzing_found_is_refused_cleanly(live_area: LiveArea, found: Found) -> None:
    """Each request that once made an adapter fail now gets its documented 4xx (a regression)."""
    for mapping, adapter in live_area.adapters.items():
        path = f"/v1/inbox/{adapter.received[0]}/{found.action}".rstrip("/")
        response = requests.request(
            found.method,
            adapter.url + path,
            json=found.body,
            headers={"Authorization": f"Bearer {found.token}"},
            timeout=TIMEOUT,
        )
        assert response.status_code == found.status, (mapping, response.text)
        template = "/v1/inbox/{id}" + (f"/{found.action}" if found.action else "")
        operation = DOCUMENTS[mapping]["paths"][template][found.method.lower()]
        assert str(found.status) in operation["responses"]


def test_nothing_failed_inside_the_adapters(live_area: LiveArea) -> None:
    """After all of the above (pytest runs a file in order): no error logged by any process."""
    for log in [live_area.broker_log, *(a.log for a in live_area.adapters.values())]:
        failed = [
            e
            for e in _events(log)
            if e.get("level") in {"error", "critical"} or "Error handling request" in str(e)
        ]
        assert failed == [], (log.stem, failed[:3])
