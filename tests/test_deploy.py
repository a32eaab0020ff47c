"""The deployment files hold together: compose, systemd units, RabbitMQ config, adapter configs.

This machine has no Docker Compose and runs no systemd, so the files are
checked as far as can be done here: they parse, every service names the
settings it requires, every setting named is one the programs read, and the
units pass ``systemd-analyze verify``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.config import load_config
from broker.settings import BrokerSettings

DEPLOY = Path("deploy")
COMPOSE = DEPLOY / "compose.yaml"
UNITS = DEPLOY / "systemd"
#: Variables the broker reads besides BrokerSettings (keys.settings).
KEY_VARIABLES = {"BACKA_KEY_PASSPHRASE", "BACKA_KEY_PASSPHRASE_FILE"}
BROKER_VARIABLES = {f"BACKA_{name.upper()}" for name in BrokerSettings.model_fields} | KEY_VARIABLES
#: What the broker cannot run without (the rest have defaults fit for production).
BROKER_REQUIRES = {
    "BACKA_AREA_DIR",
    "BACKA_AMQP_URL",
    "BACKA_DATABASE_URL",
    "BACKA_KEY_PASSPHRASE_FILE",
}
AGENCIES = [
    "torsviks-skola",
    "lidingo-socialtjanst",
    "lidingo-vardcentral",
    "bup-lidingo",
    "polisen-lidingo",
]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file, parsed."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def test_compose_names_every_service(compose: dict[str, Any]) -> None:
    """RabbitMQ, PostgreSQL, the broker and one adapter per agency."""
    assert set(compose["services"]) == {
        "rabbitmq", "postgres", "broker", *(f"adapter-{a}" for a in AGENCIES)
    }  # fmt: skip


def test_the_broker_service_has_every_required_setting(compose: dict[str, Any]) -> None:
    """Secrets from the env file, the rest in the file; nothing the broker does not read."""
    broker = compose["services"]["broker"]
    named = set(broker["environment"])
    assert named <= BROKER_VARIABLES, f"not read by the broker: {named - BROKER_VARIABLES}"
    assert broker["env_file"] == ["./secrets/broker.env"]
    from_env_file = {"BACKA_AMQP_URL", "BACKA_DATABASE_URL"}  # passwords: never in this file
    assert named | from_env_file >= BROKER_REQUIRES
    assert not named & from_env_file
    assert broker["command"] == ["broker", "serve"]


def test_each_adapter_service_has_a_config_that_loads(compose: dict[str, Any]) -> None:
    """Every adapter's command names its agency and a config file that passes validation."""
    for agency in AGENCIES:
        service = compose["services"][f"adapter-{agency}"]
        assert service["command"][:4] == ["adapter", "run", "--agency", agency]
        assert service["command"][4] == "--config"
        mounted = Path(service["command"][5])
        local = DEPLOY / "compose" / "adapters" / mounted.name
        config = load_config(local, agency=agency)
        assert config.amqp_url.startswith("amqps://"), "TLS to RabbitMQ"
        assert config.broker_url == "https://broker:8443"


def test_rabbitmq_is_tls_only_with_client_certificates() -> None:
    """No plain listener; peers must present a certificate from the area CA."""
    conf = dict(
        line.split(" = ", 1)
        for line in (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    assert conf["listeners.tcp"] == "none"
    assert conf["ssl_options.verify"] == "verify_peer"
    assert conf["ssl_options.fail_if_no_peer_cert"] == "true"


def test_the_env_example_sets_only_what_the_broker_reads() -> None:
    """broker.env's example holds every required setting and no unknown one."""
    names = {
        line.split("=", 1)[0]
        for line in (UNITS / "backa-broker.env.example").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    }
    assert names <= BROKER_VARIABLES
    assert names >= BROKER_REQUIRES


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize("unit", ["backa-broker.service", "backa-adapter@.service"])
def test_units_pass_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    """Each unit verifies, with ExecStart pointed at this checkout's installed command."""
    backa = Path(".venv/bin/backa").resolve()
    text = (
        (UNITS / unit).read_text(encoding="utf-8").replace("/opt/backa/.venv/bin/backa", str(backa))
    )
    name = unit.replace("@.service", "@torsviks-skola.service")
    (tmp_path / name).write_text(text, encoding="utf-8")
    done = subprocess.run(  # noqa: S603 - a fixed program and our own file
        ["systemd-analyze", "verify", str(tmp_path / name)],  # noqa: S607 - found on PATH above
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    problems = [line for line in done.stderr.splitlines() if not re.search(r"Documentation", line)]
    assert done.returncode == 0, done.stderr
    assert not problems, "\n".join(problems)
