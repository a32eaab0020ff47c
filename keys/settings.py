"""Where the passphrase that protects private keys at rest comes from.

One typed settings object, read from the environment once, at start-up:

* ``BACKA_KEY_PASSPHRASE``: the passphrase itself;
* ``BACKA_KEY_PASSPHRASE_FILE``: a file holding it (for systemd credentials,
  Docker secrets and the like); one trailing newline is not part of it.

Setting both is refused, not resolved by precedence: two sources that may
disagree are a mistake an operator should hear about. This module must never
log, print or put the passphrase in an error message.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from keys.errors import KeyStoreError

__all__ = ["PASSPHRASE_ENV", "PASSPHRASE_FILE_ENV", "KeySettings"]

PASSPHRASE_ENV = "BACKA_KEY_PASSPHRASE"  # noqa: S105 - the variable's name, not a passphrase
PASSPHRASE_FILE_ENV = "BACKA_KEY_PASSPHRASE_FILE"  # noqa: S105 - same

_ENV_BY_FIELD = {"key_passphrase": PASSPHRASE_ENV, "key_passphrase_file": PASSPHRASE_FILE_ENV}


class KeySettings(BaseSettings):
    """The key passphrase settings; build with :meth:`from_env` for readable errors."""

    model_config = SettingsConfigDict(env_prefix="BACKA_", extra="ignore", frozen=True)

    key_passphrase: SecretStr | None = None
    key_passphrase_file: Path | None = None

    @field_validator("key_passphrase", "key_passphrase_file", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        # An empty variable would otherwise become "" (no passphrase) or Path(".").
        if value == "":
            raise ValueError("is set but empty")
        return value

    @classmethod
    def from_env(cls) -> KeySettings:
        """Read the environment; a bad value is a KeyStoreError naming the variable."""
        try:
            return cls()
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else ""
                message = str(error["msg"]).removeprefix("Value error, ")
                problems.append(f"{_ENV_BY_FIELD.get(field, field)} {message}")
            # Not chained: pydantic's error text quotes the input, i.e. the passphrase.
            raise KeyStoreError("; ".join(problems)) from None

    def passphrase(self) -> bytes | None:
        """The passphrase as UTF-8 bytes, or None when neither variable is set."""
        if self.key_passphrase is not None and self.key_passphrase_file is not None:
            raise KeyStoreError(
                f"both {PASSPHRASE_ENV} and {PASSPHRASE_FILE_ENV} are set; set only one of them"
            )
        if self.key_passphrase is not None:
            return self.key_passphrase.get_secret_value().encode("utf-8")
        if self.key_passphrase_file is None:
            return None
        path = self.key_passphrase_file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyStoreError(
                f"{PASSPHRASE_FILE_ENV} names {path}, which cannot be read: {exc.strerror}"
            ) from exc
        # Files written by `echo` or an editor end in a newline that is not part of it.
        data = data.removesuffix(b"\n").removesuffix(b"\r")
        if not data:
            raise KeyStoreError(f"{PASSPHRASE_FILE_ENV} names {path}, which is empty")
        return data
