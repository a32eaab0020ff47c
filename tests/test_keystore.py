"""Private keys at rest: round trips, wrong passphrases, tampering, insecure mode, modes."""

from __future__ import annotations

import json
import random
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from keys.errors import KeyStoreError
from keys.keystore import KeyAlg, StoredKey, read_private_key, write_private_key
from schemas.common import b64url_decode, b64url_encode

FAST_N = 2**4  # scrypt cost for tests only; production files use 2**15
PASSPHRASE = b"correct horse battery staple"
KID = "20250301-0a1b2c3d"
SECRETS = {
    KeyAlg.ED25519: bytes(range(32)),
    KeyAlg.HPKE: bytes(range(100, 132)),
    KeyAlg.HMAC_SHA256: bytes(range(200, 232)),
}


def _rng(seed: int = 1) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def _write(path: Path, alg: KeyAlg = KeyAlg.ED25519, **kwargs: Any) -> None:
    options: dict[str, Any] = {
        "passphrase": PASSPHRASE,
        "insecure": False,
        "rng": _rng(),
        "scrypt_n": FAST_N,
    }
    options.update(kwargs)
    write_private_key(path, alg, KID, SECRETS[alg], **options)


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("alg", list(KeyAlg), ids=lambda a: a.value)
def test_round_trip_for_every_algorithm(tmp_path: Path, alg: KeyAlg) -> None:
    """What is written under a passphrase reads back with the same alg, kid and bytes."""
    path = tmp_path / "k.key"
    _write(path, alg)
    assert read_private_key(path, passphrase=PASSPHRASE) == (alg, KID, SECRETS[alg])


def test_the_file_names_its_format_alg_kid_and_scrypt_parameters(tmp_path: Path) -> None:
    """The JSON carries the documented header fields and no plaintext."""
    path = tmp_path / "k.key"
    _write(path, KeyAlg.HPKE)
    record = json.loads(path.read_text())
    assert set(record) == {"format", "alg", "kid", "kdf", "nonce", "ciphertext"}
    assert record["format"] == "backa-key-v1"
    assert record["alg"] == "hpke-mlkem768x25519"
    assert record["kdf"]["name"] == "scrypt"
    assert (record["kdf"]["n"], record["kdf"]["r"], record["kdf"]["p"]) == (FAST_N, 8, 1)
    assert b64url_encode(SECRETS[KeyAlg.HPKE]) not in path.read_text()


def test_salt_and_nonce_come_from_the_injected_rng(tmp_path: Path) -> None:
    """The same rng seed gives the same file; another seed gives another file."""
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        _write(tmp_path / name, rng=_rng(seed))
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert (tmp_path / "a").read_bytes() != (tmp_path / "c").read_bytes()


def test_wrong_passphrase_is_a_key_store_error_naming_the_file(tmp_path: Path) -> None:
    """A wrong passphrase fails with a message that names the file."""
    path = tmp_path / "k.key"
    _write(path)
    with pytest.raises(KeyStoreError, match=r"wrong passphrase or damaged key file: .*k\.key"):
        read_private_key(path, passphrase=b"wrong")


def test_missing_passphrase_for_an_encrypted_file_is_refused(tmp_path: Path) -> None:
    """An encrypted file cannot be read without a passphrase."""
    path = tmp_path / "k.key"
    _write(path)
    with pytest.raises(KeyStoreError, match="no passphrase"):
        read_private_key(path, passphrase=None)


def _relabel_alg(record: dict[str, Any]) -> None:
    record["alg"] = "hmac-sha256"


def _relabel_kid(record: dict[str, Any]) -> None:
    record["kid"] = "20990101-ffffffff"


def _flip_ciphertext(record: dict[str, Any]) -> None:
    data = bytearray(b64url_decode(record["ciphertext"]))
    data[0] ^= 1
    record["ciphertext"] = b64url_encode(bytes(data))


def _lower_cost(record: dict[str, Any]) -> None:
    record["kdf"]["n"] = 2


def _swap_nonce(record: dict[str, Any]) -> None:
    record["nonce"] = b64url_encode(bytes(12))


@pytest.mark.parametrize(
    "tamper",
    [_relabel_alg, _relabel_kid, _flip_ciphertext, _lower_cost, _swap_nonce],
    ids=["alg", "kid", "ciphertext", "kdf-n", "nonce"],
)
def test_a_tampered_file_fails_like_a_wrong_passphrase(
    tmp_path: Path, tamper: Callable[[dict[str, Any]], None]
) -> None:
    """Relabelling alg or kid, or touching the ciphertext, nonce or kdf, fails the tag."""
    path = tmp_path / "k.key"
    _write(path)
    _edit(path, tamper)
    with pytest.raises(KeyStoreError, match="wrong passphrase or damaged key file"):
        read_private_key(path, passphrase=PASSPHRASE)


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[]", b'{"format": "backa-key-v1"}', b'{"format": "other"}'],
    ids=["empty", "junk", "list", "incomplete", "other-format"],
)
def test_a_file_that_is_not_a_key_file_is_damaged(tmp_path: Path, content: bytes) -> None:
    """Malformed files are KeyStoreErrors naming the file."""
    path = tmp_path / "k.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyStoreError, match=r"damaged key file: .*k\.key"):
        read_private_key(path, passphrase=PASSPHRASE)


def test_unreasonable_scrypt_parameters_in_a_file_are_refused(tmp_path: Path) -> None:
    """A planted file cannot make the reader allocate gigabytes."""
    path = tmp_path / "k.key"
    _write(path)
    _edit(path, lambda r: r["kdf"].update(n=2**30))
    with pytest.raises(KeyStoreError, match="damaged key file"):
        read_private_key(path, passphrase=PASSPHRASE)


def test_a_missing_file_is_a_key_store_error(tmp_path: Path) -> None:
    """Reading a file that is not there names it."""
    with pytest.raises(KeyStoreError, match=r"cannot read key file .*absent\.key"):
        read_private_key(tmp_path / "absent.key", passphrase=PASSPHRASE)


def test_writing_needs_a_passphrase_or_the_insecure_flag(tmp_path: Path) -> None:
    """Without a passphrase a key is written only when insecure=True is passed."""
    with pytest.raises(KeyStoreError, match="passphrase is needed"):
        _write(tmp_path / "k.key", passphrase=None)
    assert not (tmp_path / "k.key").exists()


def test_a_passphrase_and_the_insecure_flag_together_are_refused(tmp_path: Path) -> None:
    """Asking for both encryption and no encryption is a mistake, not a choice."""
    with pytest.raises(KeyStoreError, match="not both"):
        _write(tmp_path / "k.key", insecure=True)


def test_insecure_keys_are_plaintext_and_need_allow_insecure(tmp_path: Path) -> None:
    """An insecure file is refused by default and read with a loud warning when allowed."""
    path = tmp_path / "k.key"
    _write(path, KeyAlg.HMAC_SHA256, passphrase=None, insecure=True)
    record = json.loads(path.read_text())
    assert record["kdf"] == {"name": "none"}
    assert set(record) == {"format", "alg", "kid", "kdf", "plaintext"}
    with pytest.raises(KeyStoreError, match="UNENCRYPTED development key"):
        read_private_key(path, passphrase=None)
    with capture_logs() as logs:
        stored = read_private_key(path, passphrase=None, allow_insecure=True)
    assert stored.secret == SECRETS[KeyAlg.HMAC_SHA256]
    assert [entry["log_level"] for entry in logs] == ["warning"]
    assert "UNENCRYPTED" in logs[0]["event"]


def test_files_are_0600_and_new_directories_0700(tmp_path: Path) -> None:
    """Key files are private to their owner, and so are the directories made for them."""
    path = tmp_path / "a" / "b" / "k.key"
    _write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["k.key"]  # no temporary file left


def test_an_existing_key_is_never_overwritten_by_default(tmp_path: Path) -> None:
    """Replacing a key would lose the messages sealed to it, so it needs overwrite=True."""
    path = tmp_path / "k.key"
    _write(path)
    before = path.read_bytes()
    with pytest.raises(KeyStoreError, match="refusing to overwrite"):
        _write(path, rng=_rng(2))
    assert path.read_bytes() == before
    _write(path, rng=_rng(2), overwrite=True)
    assert path.read_bytes() != before


@pytest.mark.parametrize(
    ("alg", "size"),
    [(KeyAlg.ED25519, 31), (KeyAlg.HPKE, 96), (KeyAlg.HMAC_SHA256, 16)],
    ids=["ed25519-short", "hpke-old-96", "hmac-short"],
)
def test_secrets_of_the_wrong_length_are_refused(tmp_path: Path, alg: KeyAlg, size: int) -> None:
    """A key of the wrong size for its algorithm is never written."""
    with pytest.raises(KeyStoreError, match="cannot be"):
        write_private_key(
            tmp_path / "k.key", alg, KID, bytes(size), passphrase=PASSPHRASE, insecure=False
        )


def test_a_scrypt_cost_that_is_not_a_power_of_two_is_refused(tmp_path: Path) -> None:
    """scrypt's n must be a power of two."""
    with pytest.raises(KeyStoreError, match="power of two"):
        _write(tmp_path / "k.key", scrypt_n=1000)


def test_errors_and_repr_never_show_the_secret(tmp_path: Path) -> None:
    """Neither a stored key's repr nor an error message carries key bytes or the passphrase."""
    path = tmp_path / "k.key"
    _write(path, passphrase=None, insecure=True)
    _edit(path, lambda r: r.update(alg="hpke-mlkem768x25519", extra="x"))
    with pytest.raises(KeyStoreError) as caught:
        read_private_key(path, passphrase=None, allow_insecure=True)
    secret_text = b64url_encode(SECRETS[KeyAlg.ED25519])
    assert secret_text not in str(caught.value)
    stored = StoredKey(KeyAlg.ED25519, KID, SECRETS[KeyAlg.ED25519])
    assert "secret=<32 bytes>" in repr(stored)
    assert repr(SECRETS[KeyAlg.ED25519]) not in repr(stored)


@settings(max_examples=40, deadline=None)
@given(index=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_in_the_ciphertext_fails(
    tmp_path_factory: pytest.TempPathFactory, index: int, bit: int
) -> None:
    """Flipping any one bit of the sealed key (or its tag) makes reading fail."""
    path = tmp_path_factory.mktemp("flip") / "k.key"
    _write(path, KeyAlg.HPKE)
    record = json.loads(path.read_text())
    data = bytearray(b64url_decode(record["ciphertext"]))
    data[index % len(data)] ^= 1 << bit
    record["ciphertext"] = b64url_encode(bytes(data))
    path.write_text(json.dumps(record))
    with pytest.raises(KeyStoreError):
        read_private_key(path, passphrase=PASSPHRASE)
