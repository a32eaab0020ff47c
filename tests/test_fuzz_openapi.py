"""Fuzz the broker's HTTP API from its own OpenAPI document, against a live ``backa broker serve``.

schemathesis generates requests for every documented operation from the
document that ``broker.openapi.build_openapi`` builds (the one the broker
serves at /openapi.json, checked equal below), sends them over mutual TLS to
a real broker process on a port, and checks each answer: never a 5xx, and
status code, content type and body as documented wherever the document says.
Each request is made with a security officer's and with an agency adapter's
certificate, so that both sides of every role check are fuzzed.

The adapters' agency API has a document of its own (adapters/openapi.py) and
is fuzzed against five live adapters by tests/test_fuzz_adapter_api.py.

``BACKA_FUZZ_EXAMPLES`` sets how many examples schemathesis draws per
operation (default 10, about a minute here); a long run sets a larger number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from broker.openapi import build_openapi
from tests.audit_fakes import OFFICER, SCHOOL, Pki, make_pki
from tests.rabbit import amqp_url_for

pytestmark = pytest.mark.rabbitmq

EXAMPLES = int(os.environ.get("BACKA_FUZZ_EXAMPLES", "10"))
START_S = 60.0
TIMEOUT = 10.0
#: aiohttp's limit on the request line (its ``max_line_size``), which the broker keeps.
LONGEST_REQUEST_LINE = 8190

DOCUMENT = build_openapi(consents=True, audit=True, gaps=True)
SCHEMA = schemathesis.openapi.from_dict(
    DOCUMENT, config=schemathesis.Config.from_dict({"generation": {"max-examples": EXAMPLES}})
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass(frozen=True)
class LiveBroker:
    """A running broker process: its base URL, its log file and the TLS settings per identity."""

    url: str
    log: Path
    ca_file: str
    certs: dict[str, tuple[str, str]]

    def tls(self, who: str) -> dict[str, Any]:
        """The requests arguments that present ``who``'s certificate and trust only the area CA."""
        return {"cert": self.certs[who], "verify": self.ca_file}

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line the broker has written so far."""
        lines = []
        for raw in self.log.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return lines


def _cert(pki: Pki, who: str) -> tuple[str, str]:
    base = pki.dir(who)
    return (str(base / "client.crt"), str(base / "client.key"))


def _serving_port(process: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        for raw in log.read_text(encoding="utf-8").splitlines():
            if '"broker_serving"' in raw:
                return int(json.loads(raw)["http_port"])
        if process.poll() is not None:
            pytest.fail(f"the broker exited with {process.returncode}: {log.read_text()}")
        time.sleep(0.1)
    pytest.fail(f"the broker did not serve within {START_S:.0f} s: {log.read_text()}")


@pytest.fixture(scope="module")
def live_broker(
    tmp_path_factory: pytest.TempPathFactory, scratch_vhost: str
) -> Iterator[LiveBroker]:
    """``backa broker serve`` on the demo area, a SQLite store and this module's vhost."""
    root = tmp_path_factory.mktemp("fuzz-openapi")
    pki = make_pki(root)
    log = root / "broker.log"
    env = {
        **os.environ,
        "BACKA_AREA_DIR": str(pki.layout.base),
        "BACKA_AMQP_URL": amqp_url_for(scratch_vhost),
        "BACKA_DATABASE_URL": f"sqlite+aiosqlite:///{root / 'broker.db'}",
        "BACKA_HTTP_PORT": "0",
    }
    env.pop("BACKA_KEY_PASSPHRASE", None)
    env.pop("BACKA_KEY_PASSPHRASE_FILE", None)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "backa", "broker", "serve", "--allow-insecure-keys"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        port = _serving_port(process, log)
        yield LiveBroker(
            url=f"https://localhost:{port}",
            log=log,
            ca_file=str(pki.layout.ca_cert),
            certs={who: _cert(pki, who) for who in (OFFICER, SCHOOL)},
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_served_document_is_the_fuzzed_one(live_broker: LiveBroker) -> None:
    """GET /openapi.json serves exactly the document the cases are generated from."""
    response = requests.get(
        f"{live_broker.url}/openapi.json", timeout=TIMEOUT, **live_broker.tls(OFFICER)
    )
    assert response.status_code == 200
    assert response.json() == json.loads(json.dumps(DOCUMENT))


def _request_line(request: requests.PreparedRequest) -> str:
    return f"{request.method} {request.path_url} HTTP/1.1"


@SCHEMA.parametrize()
def test_the_broker_api_survives_fuzzing(
    case: schemathesis.Case[Any], live_broker: LiveBroker
) -> None:
    """Every generated request, as an officer and as an adapter: no 5xx, answers as documented."""
    for who in live_broker.certs:
        response = case.call(base_url=live_broker.url, timeout=TIMEOUT, **live_broker.tls(who))
        if len(_request_line(response.request)) > LONGEST_REQUEST_LINE:
            # Refused by aiohttp's HTTP parser before the broker's app sees it (see below).
            assert response.status_code == 400
            continue
        case.validate_response(response, checks=CHECKS)


def test_an_overlong_request_line_is_refused_before_the_app(live_broker: LiveBroker) -> None:
    """A request line over aiohttp's limit is a 400 from its HTTP parser, and the broker serves on.

    That 400 is aiohttp's own plain text, not the API's JSON error body: the app never sees
    the request, so the document's error shape cannot hold for it.
    """
    path = "/v1/audit/entries?agency=" + "a" * LONGEST_REQUEST_LINE
    tls = live_broker.tls(OFFICER)
    assert requests.get(live_broker.url + path, timeout=TIMEOUT, **tls).status_code == 400
    assert requests.get(f"{live_broker.url}/healthz", timeout=TIMEOUT, **tls).status_code == 200


#: Requests that made the broker answer 500, each with the answer the API documents: the
#: first was found by schemathesis, the others while reading the code it pointed at.
FOUND = [
    pytest.param(
        "POST",
        "/v1/gaps/53039415837917231747956736/handled",
        404,
        "not_found",
        id="gap-id-beyond-int64",
    ),
    pytest.param("POST", "/v1/gaps/%C2%B2/handled", 404, "not_found", id="gap-id-superscript-two"),
    pytest.param(
        "GET", "/v1/gaps?within_hours=%C2%B2", 400, "bad_request", id="within-hours-superscript-two"
    ),
    pytest.param(
        "GET",
        "/v1/audit/entries?since=0001-01-01T00:00:00%2B14:00",
        400,
        "bad_request",
        id="since-before-year-one-in-utc",
    ),
    pytest.param(
        "GET",
        "/v1/audit/entries?until=9999-12-31T23:59:59-14:00",
        400,
        "bad_request",
        id="until-after-year-9999-in-utc",
    ),
]


@pytest.mark.parametrize(("method", "path", "status", "code"), FOUND)
def test_what_the_fuzzing_found_is_refused_cleanly(
    live_broker: LiveBroker, method: str, path: str, status: int, code: str
) -> None:
    """Each request that once made the broker fail now gets its documented 4xx (a regression)."""
    response = requests.request(
        method,
        live_broker.url + path,
        data=b"\xef\xbf\xbd",
        timeout=TIMEOUT,
        **live_broker.tls(OFFICER),
    )
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_nothing_failed_inside_the_broker(live_broker: LiveBroker) -> None:
    """After all of the above (pytest runs a file in order): no error logged, no 5xx answered."""
    events = live_broker.events()
    assert [e for e in events if e.get("level") in {"error", "critical"}] == []
    answered = [e for e in events if e.get("event") == "http_request"]
    assert [e for e in answered if isinstance(e["status"], int) and e["status"] >= 500] == []
