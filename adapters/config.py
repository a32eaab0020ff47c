"""The adapter's configuration: one TOML file per adapter, read once at start.

``backa adapter run --agency ID --config FILE``; a bad file stops the adapter
with a message that names the field. Secrets are not in the file itself:
agency-system tokens are kept as SHA-256 digests, the AMQP password and the
key passphrase are read from files or environment variables it names.
See docs/adapters/README.md for every field.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from keys.errors import KeysError
from keys.transport import AmqpUrlError, split_urls, with_credentials

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgencySystem(_Section):
    """One agency system allowed to call the API, by the SHA-256 of its bearer token."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    token_sha256: Sha256Hex


class Handover(_Section):
    """How received messages reach the agency system."""

    #: ``inbox``: the agency system pulls (GET /v1/inbox) or staff use the web inbox;
    #: ``webhook``: the adapter POSTs each message to ``webhook_url`` until it gets a 2xx.
    mode: Literal["inbox", "webhook"] = "inbox"
    webhook_url: str | None = None
    #: Seconds to wait for the agency system per webhook call.
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _url_when_webhook(self) -> Handover:
        if (self.mode == "webhook") != (self.webhook_url is not None):
            raise ValueError("webhook_url is required with mode = 'webhook' and refused otherwise")
        if self.webhook_url is not None and not self.webhook_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError("webhook_url must be an http:// or https:// URL")
        return self


class Account(_Section):
    """A local web-inbox account (``adapters.web.hash_password`` makes the hash)."""

    staff_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    password_hash: Annotated[str, StringConstraints(min_length=10, max_length=512)]


class Web(_Section):
    """The web inbox for the stödsamordnare and the barnkontakt."""

    enabled: bool = True
    #: ``local``: accounts below with hashed passwords; ``header``: a trusted reverse proxy.
    auth: Literal["local", "header"] = "local"
    staff_header: str = "X-Backa-Staff"
    name_header: str | None = "X-Backa-Staff-Name"
    #: File holding the secret that signs session cookies and form tokens (made if missing).
    session_secret_file: Path | None = None
    secure_cookies: bool = False
    accounts: list[Account] = Field(default_factory=list)


class AdapterConfig(_Section):
    """Everything ``backa adapter run`` needs to know."""

    agency: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
    #: The area directory made by ``backa keys init`` (public directory, this agency's keys).
    area_dir: Path
    #: The adapter's own SQLite file.
    database: Path
    #: RabbitMQ, as this agency's user; the password comes from ``amqp_password_file``.
    #: For a cluster, every node's URL separated by commas (the adapter fails over).
    amqp_url: str = "amqp://127.0.0.1:5672/backa"
    amqp_password_file: Path | None = None
    #: The broker's HTTPS API (e.g. https://localhost:8443), for the web inbox's late-matters
    #: list; reached with this agency's client certificate from area_dir. None: not shown.
    broker_url: str | None = None
    #: The consent and legal-basis rules, checked again before hand-over.
    policy_file: Path = Path("deploy/policy/sweden.toml")
    #: The format the agency system speaks: ``canonical``, ``school``, ``social_services``,
    #: ``fhir`` or ``police``; by default the one for the agency's type.
    mapping: str | None = None
    #: Environment variable with the passphrase of the private keys (none: dev keys).
    passphrase_env: str | None = "BACKA_KEY_PASSPHRASE"  # noqa: S105 - a variable name
    insecure_dev_keys: bool = False
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8081, ge=0, le=65535)
    #: How long a sent message is valid, unless the submission says.
    message_ttl_days: int = Field(default=30, ge=1, le=365)
    systems: list[AgencySystem] = Field(default_factory=list)
    handover: Handover = Handover()
    web: Web = Web()

    @field_validator("amqp_url")
    @classmethod
    def _amqp_urls(cls, value: str) -> str:
        try:
            split_urls(value)
        except AmqpUrlError as exc:
            raise ValueError(f"{exc} (one URL, or a cluster's nodes separated by commas)") from None
        return value

    def amqp_url_with_password(self) -> str:
        """The AMQP URL with this agency's user and password filled in."""
        if self.amqp_password_file is None:
            return self.amqp_url
        password = self.amqp_password_file.read_text(encoding="ascii").strip()
        return with_credentials(self.amqp_url, self.agency, password)

    def passphrase(self) -> bytes | None:
        """The key passphrase from the environment, or None for dev keys."""
        if self.passphrase_env is None:
            return None
        value = os.environ.get(self.passphrase_env)
        return None if value is None else value.encode()

    def system_for(self, token: str) -> str | None:
        """The name of the agency system whose token this is, or None."""
        try:
            # aiohttp keeps header bytes that are not UTF-8 as surrogates: hash the bytes sent.
            # (A plain encode() raised on them: a 500 for any such token, found by fuzzing.)
            raw = token.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return None
        digest = hashlib.sha256(raw).hexdigest()
        for system in self.systems:
            if hmac.compare_digest(digest, system.token_sha256):
                return system.name
        return None


class ConfigError(KeysError):
    """The adapter's configuration file cannot be used; the message names the field."""


def load_config(path: Path, *, agency: str | None = None) -> AdapterConfig:
    """Read and check the config; relative paths are relative to the file's directory."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the adapter config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    base = path.resolve().parent
    for key in ("area_dir", "database", "amqp_password_file", "policy_file"):
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str(base / data[key])
    web = data.get("web")
    if isinstance(web, dict) and isinstance(web.get("session_secret_file"), str):
        web["session_secret_file"] = str(base / web["session_secret_file"])
    try:
        config = AdapterConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigError(f"{path}: {problems}") from None
    if agency is not None and agency != config.agency:
        raise ConfigError(f"{path} is the config of {config.agency!r}, not of {agency!r}")
    return config


def token_digest(token: str) -> str:
    """What goes into ``token_sha256`` for a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()
