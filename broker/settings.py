"""The broker's settings: one typed object, read once from the environment.

Every variable starts with ``BACKA_``; a bad value stops the broker at start
with a message that names the variable. Secrets (the AMQP URL carries a
password) are ``SecretStr`` and never logged.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker.pipeline import DEFAULT_MAX_BYTES
from keys.transport import AmqpUrlError, split_urls


class BrokerSettings(BaseSettings):
    """Everything ``backa broker serve`` needs to know."""

    model_config = SettingsConfigDict(env_prefix="BACKA_", extra="ignore", frozen=True)

    #: RabbitMQ, as the broker's own user (``backa broker provision`` creates it); for a
    #: cluster, every node's URL separated by commas (the broker fails over between them).
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    #: SQLite by default (one file, zero set-up); postgresql+asyncpg://… for production.
    database_url: SecretStr = SecretStr("sqlite+aiosqlite:///var/broker.db")
    #: The area's key directory (made by ``backa keys init``).
    area_dir: Path = Path("var/area-keys")
    #: The consent and legal-basis rules (reviewable by a lawyer; see the file's header).
    policy_file: Path = Path("deploy/policy/sweden.toml")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8443, ge=0, le=65535)
    max_message_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1024, le=16_000_000)
    #: Ingress messages processed at once.
    prefetch: int = Field(default=64, ge=1, le=10_000)
    #: Seconds to finish in-flight messages after SIGTERM before giving up.
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    #: The deadline and escalation rules (deploy/policy/deadlines.toml explains each field).
    deadlines_file: Path = Path("deploy/policy/deadlines.toml")
    #: Demonstrations only: the watchdog judges deadlines this many seconds in the
    #: future, so that "ten working days" pass during a one-minute demo. Logged loudly.
    demo_time_warp_s: float = Field(default=0.0, ge=0, le=400 * 86_400)
    #: Seconds between the watchdog's looks for due deadlines.
    watchdog_interval_s: float = Field(default=30.0, ge=0.1, le=3_600)
    #: Seconds between signed audit checkpoints (one is signed only when the log grew).
    checkpoint_interval_s: float = Field(default=60.0, ge=1, le=86_400)

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: SecretStr) -> SecretStr:
        try:
            split_urls(value.get_secret_value())
        except AmqpUrlError as exc:
            raise ValueError(
                f"BACKA_AMQP_URL: {exc} (one URL, or a cluster's nodes separated by commas)"
            ) from None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(
            ("sqlite+aiosqlite://", "postgresql+asyncpg://")
        ):
            raise ValueError(
                "BACKA_DATABASE_URL must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        return value
