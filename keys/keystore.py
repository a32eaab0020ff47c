"""Private keys at rest: one encrypted JSON file per key, written atomically.

The file format ``backa-key-v1`` holds an Ed25519 seed (``ed25519``, 32 bytes),
an HPKE private key (``hpke-mlkem768x25519``, the private encoding of
``keys.material``: the 32-byte X-Wing seed) or a MAC key such as the area pseudonym key
(``hmac-sha256``, at least 32 bytes)::

    {"format": "backa-key-v1", "alg": "ed25519", "kid": "20250101-a1b2c3d4",
     "kdf": {"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": "<b64url>"},
     "nonce": "<b64url>", "ciphertext": "<b64url>"}

The secret is sealed with AES-256-GCM under ``scrypt(passphrase)``; the
associated data is the canonical JSON of ``format``, ``alg``, ``kid`` and
``kdf``, so a file cannot be relabelled (an HPKE key passed off as a signing
key, an old kid as a new one) without the tag failing. For development only,
``{"kdf": {"name": "none"}, "plaintext": "<b64url>"}`` stores the secret in
clear; it is written only when the caller passes ``insecure=True`` and read
only with ``allow_insecure=True``, with a loud warning in the log.

Files are 0600 and written through a temporary file and ``os.replace``, so a
crash never leaves half a key; directories this module creates are 0700.
Every failure is a :class:`~keys.errors.KeyStoreError` naming the file. This
module must never put key bytes or the passphrase in a message, a log line
or a ``repr``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from keys.directory import canonical_json
from keys.errors import KeyStoreError
from keys.material import ED25519_LEN, HPKE_PRIVATE_LEN
from schemas.common import KeyId, b64url_decode, b64url_encode

__all__ = [
    "KEY_FILE_FORMAT",
    "SCRYPT_N",
    "KeyAlg",
    "StoredKey",
    "ensure_private_dir",
    "read_private_key",
    "write_file_atomic",
    "write_private_key",
]

_log = structlog.get_logger(__name__)

KEY_FILE_FORMAT = "backa-key-v1"

#: scrypt cost for new files: 32 MiB and about 0.1 s per key on a server (RFC 7914 §2).
SCRYPT_N = 2**15
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_LEN = 16
_NONCE_LEN = 12
_AES_KEY_LEN = 32
_MIN_MAC_KEY_LEN = 32
# Bounds on parameters read from a file, so a planted file cannot make us allocate
# gigabytes; the lower bound on n is low only so that tests can run fast.
_MAX_SCRYPT_N = 2**20
_MAX_SCRYPT_MEMORY = 2**30
_MAX_KEY_FILE = 64 * 1024

_KID = re.compile(r"^[A-Za-z0-9_-]{4,64}$")  # schemas.common.KeyId


class KeyAlg(StrEnum):
    """What a key file holds."""

    ED25519 = "ed25519"
    HPKE = "hpke-mlkem768x25519"
    HMAC_SHA256 = "hmac-sha256"


class StoredKey(NamedTuple):
    """A key read back from a file: ``alg, kid, secret = read_private_key(...)``."""

    alg: KeyAlg
    kid: str
    secret: bytes

    def __repr__(self) -> str:
        size = len(self.secret)
        return f"StoredKey(alg={self.alg.value!r}, kid={self.kid!r}, secret=<{size} bytes>)"


def _secret_ok(alg: KeyAlg, secret: bytes) -> bool:
    if alg is KeyAlg.ED25519:
        return len(secret) == ED25519_LEN
    if alg is KeyAlg.HPKE:
        return len(secret) == HPKE_PRIVATE_LEN
    return len(secret) >= _MIN_MAC_KEY_LEN


# --- files ----------------------------------------------------------------------------------


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` and any missing parents as 0700 directories (existing ones are left be)."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue
        # mkdir's mode is filtered by the umask; the chmod is what guarantees 0700.
        directory.chmod(0o700)


def _fsync_dir(directory: Path) -> None:
    # Without this the rename itself may be lost on a crash (ext4 and friends).
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes, *, mode: int, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename; KeyStoreError on failure."""
    try:
        ensure_private_dir(path.parent)
        if not overwrite and path.exists():
            raise KeyStoreError(f"refusing to overwrite existing file: {path}")
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            tmp.chmod(mode)
            tmp.replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(path.parent)
    except OSError as exc:
        raise KeyStoreError(f"cannot write {path}: {exc.strerror or exc}") from exc


# --- the format -----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _ScryptParams(_Strict):
    name: Literal["scrypt"]
    n: int = Field(ge=2, le=_MAX_SCRYPT_N)
    r: int = Field(ge=1, le=32)
    p: int = Field(ge=1, le=16)
    salt: str = Field(min_length=22, max_length=86)

    @model_validator(mode="after")
    def _bounded(self) -> _ScryptParams:
        if self.n & (self.n - 1):
            raise ValueError("n must be a power of two")
        if 128 * self.r * self.n * self.p > _MAX_SCRYPT_MEMORY:
            raise ValueError("scrypt parameters need too much memory")
        return self


class _NoKdf(_Strict):
    name: Literal["none"]


class _KeyFile(_Strict):
    format: Literal["backa-key-v1"]
    alg: KeyAlg
    kid: KeyId
    kdf: Annotated[_ScryptParams | _NoKdf, Field(discriminator="name")]
    nonce: str | None = None
    ciphertext: str | None = None
    plaintext: str | None = None

    @model_validator(mode="after")
    def _coherent(self) -> _KeyFile:
        if isinstance(self.kdf, _ScryptParams):
            if self.nonce is None or self.ciphertext is None or self.plaintext is not None:
                raise ValueError("an encrypted key has nonce and ciphertext and no plaintext")
        elif self.plaintext is None or self.nonce is not None or self.ciphertext is not None:
            raise ValueError("an unencrypted key has plaintext only")
        return self


def _aad(alg: KeyAlg, kid: str, kdf: dict[str, Any]) -> bytes:
    return canonical_json({"format": KEY_FILE_FORMAT, "alg": alg.value, "kid": kid, "kdf": kdf})


def _derive(passphrase: bytes, kdf: _ScryptParams, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=_AES_KEY_LEN, n=kdf.n, r=kdf.r, p=kdf.p).derive(passphrase)


def _random(rng: Callable[[int], bytes], size: int) -> bytes:
    value = rng(size)
    if len(value) != size:
        raise KeyStoreError(f"the random source returned {len(value)} bytes, not {size}")
    return value


def write_private_key(
    path: Path,
    alg: KeyAlg | str,
    kid: str,
    secret: bytes,
    *,
    passphrase: bytes | None,
    insecure: bool,
    rng: Callable[[int], bytes] = os.urandom,
    scrypt_n: int = SCRYPT_N,
    overwrite: bool = False,
) -> None:
    """Store one private key at ``path`` (0600), encrypted under ``passphrase``.

    Exactly one of ``passphrase`` and ``insecure=True`` must be given: with
    ``insecure`` the key is written in clear, for development only. An existing
    file is never replaced unless ``overwrite`` is set, since losing an old key
    loses the messages sealed to it. ``rng`` supplies the salt and the nonce.
    """
    try:
        alg = KeyAlg(alg)
    except ValueError:
        raise KeyStoreError(f"{path}: unknown key algorithm {alg!r}") from None
    if not _KID.fullmatch(kid):
        raise KeyStoreError(f"{path}: {kid!r} is not a valid key id")
    if not _secret_ok(alg, secret):
        raise KeyStoreError(f"{path}: a {alg.value} key cannot be {len(secret)} bytes long")
    if passphrase is not None and insecure:
        raise KeyStoreError(f"{path}: pass either a passphrase or insecure=True, not both")
    record: dict[str, Any]
    if passphrase is None:
        if not insecure:
            raise KeyStoreError(f"{path}: a passphrase is needed to write a private key")
        record = {
            "format": KEY_FILE_FORMAT,
            "alg": alg.value,
            "kid": kid,
            "kdf": {"name": "none"},
            "plaintext": b64url_encode(secret),
        }
    else:
        if not passphrase:
            raise KeyStoreError(f"{path}: an empty passphrase is not a passphrase")
        salt = _random(rng, _SALT_LEN)
        nonce = _random(rng, _NONCE_LEN)
        kdf = {
            "name": "scrypt",
            "n": scrypt_n,
            "r": _SCRYPT_R,
            "p": _SCRYPT_P,
            "salt": b64url_encode(salt),
        }
        try:
            params = _ScryptParams.model_validate(kdf)
        except ValidationError:
            raise KeyStoreError(
                f"{path}: scrypt n={scrypt_n} is not a power of two in range"
            ) from None
        sealed = AESGCM(_derive(passphrase, params, salt)).encrypt(
            nonce, secret, _aad(alg, kid, kdf)
        )
        record = {
            "format": KEY_FILE_FORMAT,
            "alg": alg.value,
            "kid": kid,
            "kdf": kdf,
            "nonce": b64url_encode(nonce),
            "ciphertext": b64url_encode(sealed),
        }
    data = (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    write_file_atomic(path, data, mode=0o600, overwrite=overwrite)


def _damaged(path: Path, why: str) -> KeyStoreError:
    return KeyStoreError(f"damaged key file: {path} ({why})")


def _parse(path: Path, data: bytes) -> _KeyFile:
    try:
        return _KeyFile.model_validate_json(data)
    except ValidationError as exc:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            raise _damaged(path, "not JSON") from None
        # Only the field names: pydantic's own text would quote the values, i.e. the key.
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(file)" for e in errors)
        raise _damaged(path, f"not a {KEY_FILE_FORMAT} file; bad fields: {fields}") from None


def read_private_key(
    path: Path, *, passphrase: bytes | None, allow_insecure: bool = False
) -> StoredKey:
    """Load one private key written by :func:`write_private_key`.

    A wrong passphrase and a tampered file are the same error on purpose:
    AES-GCM cannot tell them apart, and neither can we.
    """
    try:
        info = path.stat()
        if info.st_size > _MAX_KEY_FILE:
            raise _damaged(path, "too large to be a key file")
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning("key file readable by others", path=str(path), mode=oct(info.st_mode & 0o777))
    record = _parse(path, data)
    try:
        if isinstance(record.kdf, _NoKdf):
            if not allow_insecure:
                raise KeyStoreError(
                    f"{path} is an UNENCRYPTED development key; refusing to load it "
                    "outside insecure development mode"
                )
            secret = b64url_decode(record.plaintext or "")
            _log.warning(
                "UNENCRYPTED DEVELOPMENT KEY LOADED: never use this key for real data",
                path=str(path),
                alg=record.alg.value,
                kid=record.kid,
            )
        else:
            if passphrase is None:
                raise KeyStoreError(f"{path} is encrypted and no passphrase was given")
            kdf = record.kdf
            key = _derive(passphrase, kdf, b64url_decode(kdf.salt))
            secret = AESGCM(key).decrypt(
                b64url_decode(record.nonce or ""),
                b64url_decode(record.ciphertext or ""),
                _aad(record.alg, record.kid, kdf.model_dump()),
            )
    except (InvalidTag, ValueError):
        # ValueError: bad base64url or a nonce of the wrong length.
        raise KeyStoreError(f"wrong passphrase or damaged key file: {path}") from None
    if not _secret_ok(record.alg, secret):
        raise _damaged(path, f"a {record.alg.value} key cannot be {len(secret)} bytes long")
    return StoredKey(alg=record.alg, kid=record.kid, secret=secret)
