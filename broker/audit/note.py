"""Signed checkpoints of the audit log: C2SP signed notes with Ed25519.

Pure: keys are arguments, nothing is read or logged. Two formats, both
interoperable with Go's ``golang.org/x/mod/sumdb/note`` and the transparency
tooling built on it:

* a signed note (https://c2sp.org/signed-note): the text, which ends in a
  newline, a blank line, then one line per signature,
  ``— <key name> <base64(key id ‖ signature)>``; the Ed25519 signature covers
  the text's UTF-8 bytes; the key id is the first 4 bytes of
  SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key), 0x01 naming Ed25519;
* a checkpoint (https://c2sp.org/tlog-checkpoint): a note whose text is the
  log's origin, its size in decimal and its root in standard base64, one per
  line, optionally followed by extension lines (tolerated, never produced).

A verifier key ("vkey") is ``<name>+<8 hex digits of key id>+<base64(0x01 ‖
public key)>``; it is how an auditor is told which key signs the checkpoints.

:func:`open_note` and :func:`open_checkpoint` raise :class:`CheckpointError`
(a ValueError) on any failure, with a short ``reason`` for logs:

::

    reason                  meaning
    bad_verifier_key        the vkey is malformed or its key id does not match
    malformed_note          not a signed note: control characters, no blank
                            line before the signatures, a bad signature line
    no_matching_signature   no signature line names the verifier's key
    bad_signature           a line names the verifier's key but does not verify
    malformed_checkpoint    origin, size or root line missing or malformed

A note with a matching but invalid signature is refused even if another
matching line verifies, as Go's ``note.Open`` does: a log never has a reason
to publish a bad signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "CheckpointError",
    "key_id",
    "open_checkpoint",
    "open_note",
    "parse_vkey",
    "sign_checkpoint",
    "sign_note",
    "vkey",
]

#: The signature type byte of Ed25519 in C2SP signed notes.
ALG_ED25519 = 0x01
_KEY_ID_LEN = 4
_ED25519_PUBLIC_LEN = 32
_ED25519_SIGNATURE_LEN = 64
_ROOT_LEN = 32
_SIG_PREFIX = "\N{EM DASH} "
#: Go's note.Open gives up after this many signature lines; so do we.
_MAX_SIGNATURES = 100
#: RFC 9162 tree sizes are uint64.
_MAX_SIZE = 1 << 64
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


class CheckpointError(ValueError):
    """A signed note or checkpoint failed to open; ``reason`` says why, for logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"signed checkpoint refused ({reason})")
        #: A short stable code (see the module docstring), safe to log.
        self.reason = reason


def _valid_name(name: str) -> bool:
    """A key name per C2SP signed-note: non-empty, no Unicode space, no ``+``."""
    return (
        bool(name)
        and "+" not in name
        and not any(ch.isspace() for ch in name)
        and not _CONTROL.search(name)
        and _encodable(name)
    )


def _encodable(text: str) -> bool:
    # A Python str may hold lone surrogates, which have no UTF-8 form.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _b64decode(text: str) -> bytes:
    """Strict standard base64: padded, canonical, nothing outside the alphabet."""
    data = base64.b64decode(text, validate=True)
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError("non-canonical base64")
    return data


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """The 4-byte key id: SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4] (C2SP signed-note)."""
    if not _valid_name(name):
        raise ValueError("a key name must be non-empty, without spaces or '+'")
    return _key_id(name, bytes([ALG_ED25519]) + public_key.public_bytes_raw())


def _key_id(name: str, typed_key: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + typed_key).digest()[:_KEY_ID_LEN]


def vkey(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key string ``<name>+<hex key id>+<base64(0x01 ‖ public key)>``."""
    typed = bytes([ALG_ED25519]) + public_key.public_bytes_raw()
    return f"{name}+{key_id(name, public_key).hex()}+{_b64encode(typed)}"


def parse_vkey(text: str) -> tuple[str, bytes, Ed25519PublicKey]:
    """Parse a verifier key into (name, 4-byte key id, public key); ValueError if malformed.

    The key id must be exactly 8 hex digits and equal the one computed from the
    name and key, so a vkey whose name was edited is refused.
    """
    name, sep1, rest = text.partition("+")
    hex_id, sep2, key_b64 = rest.partition("+")
    if not (sep1 and sep2) or not _valid_name(name):
        raise ValueError("a verifier key is <name>+<key id>+<key>")
    if not re.fullmatch(r"[0-9a-fA-F]{8}", hex_id):
        raise ValueError("a verifier key id is 8 hex digits")
    try:
        typed = _b64decode(key_b64)
    except (binascii.Error, ValueError):
        raise ValueError("a verifier key's key is not standard base64") from None
    if len(typed) != 1 + _ED25519_PUBLIC_LEN or typed[0] != ALG_ED25519:
        raise ValueError("only Ed25519 verifier keys (type 0x01, 32 bytes) are supported")
    kid = bytes.fromhex(hex_id)
    if kid != _key_id(name, typed):
        raise ValueError("the verifier key id does not match its name and key")
    return name, kid, Ed25519PublicKey.from_public_bytes(typed[1:])


def _valid_text(text: str) -> bool:
    return not _CONTROL.search(text) and _encodable(text)


def sign_note(text: str, *, name: str, key: Ed25519PrivateKey) -> str:
    """Sign ``text`` (which must end in a newline) as a C2SP signed note with one signature."""
    if not text.endswith("\n") or not _valid_text(text):
        raise ValueError("a note text ends in a newline and holds no other control character")
    if not _valid_name(name):
        raise ValueError("a key name must be non-empty, without spaces or '+'")
    signature = key.sign(text.encode("utf-8"))
    kid = key_id(name, key.public_key())
    return f"{text}\n{_SIG_PREFIX}{name} {_b64encode(kid + signature)}\n"


def _signature_line(line: str) -> tuple[str, bytes, bytes]:
    """Split ``— <name> <base64(key id ‖ signature)>`` into name, key id and signature."""
    if not line.startswith(_SIG_PREFIX):
        raise CheckpointError("malformed_note")
    name, _, sig_b64 = line[len(_SIG_PREFIX) :].partition(" ")
    try:
        blob = _b64decode(sig_b64)
    except (binascii.Error, ValueError):
        raise CheckpointError("malformed_note") from None
    if not _valid_name(name) or len(blob) <= _KEY_ID_LEN:
        raise CheckpointError("malformed_note")
    return name, blob[:_KEY_ID_LEN], blob[_KEY_ID_LEN:]


def open_note(note: str, verifier: str) -> str:
    """Verify ``note`` with the vkey ``verifier`` and return its text (C2SP signed-note).

    Signature lines for other keys are ignored; at least one must be the
    verifier's, and every one that is must verify.
    """
    try:
        name, kid, public_key = parse_vkey(verifier)
    except ValueError:
        raise CheckpointError("bad_verifier_key") from None
    if not isinstance(note, str) or not _valid_text(note):
        raise CheckpointError("malformed_note")
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("malformed_note")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise CheckpointError("malformed_note")
    lines = block[:-1].split("\n")
    if len(lines) > _MAX_SIGNATURES:
        raise CheckpointError("malformed_note")
    message = text.encode("utf-8")
    verified = False
    for line in lines:
        line_name, line_kid, signature = _signature_line(line)
        if line_name != name or line_kid != kid:
            continue
        if len(signature) != _ED25519_SIGNATURE_LEN:
            raise CheckpointError("bad_signature")
        try:
            public_key.verify(signature, message)
        except InvalidSignature:
            raise CheckpointError("bad_signature") from None
        verified = True
    if not verified:
        raise CheckpointError("no_matching_signature")
    return text


def _check_origin(origin: str) -> None:
    # tlog-checkpoint: the origin SHOULD be a schema-less URL without spaces or
    # '+'; what we sign follows the SHOULD, what we open need only be one line.
    if not _valid_name(origin):
        raise ValueError("an origin must be one non-empty line without spaces or '+'")


def sign_checkpoint(
    origin: str, size: int, root: bytes, *, name: str, key: Ed25519PrivateKey
) -> str:
    """The C2SP tlog-checkpoint of ``origin`` at ``size`` with ``root``, signed by ``name``.

    Raises ValueError for a caller mistake (bad origin, size or root).
    """
    _check_origin(origin)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < _MAX_SIZE:
        raise ValueError("a checkpoint size is an integer in [0, 2**64)")
    if len(root) != _ROOT_LEN:
        raise ValueError(f"a checkpoint root is {_ROOT_LEN} bytes, got {len(root)}")
    body = f"{origin}\n{size}\n{_b64encode(bytes(root))}\n"
    return sign_note(body, name=name, key=key)


def open_checkpoint(note: str, verifier: str) -> tuple[str, int, bytes]:
    """Verify a checkpoint note with the vkey ``verifier``; return (origin, size, root).

    The signature is checked first (:func:`open_note`), then the body is
    parsed (C2SP tlog-checkpoint); extension lines after the root are
    tolerated and ignored. Raises :class:`CheckpointError` on any failure.
    """
    text = open_note(note, verifier)
    lines = text[:-1].split("\n")
    # Three mandatory lines; extension lines must not be empty.
    if len(lines) < 3 or not all(lines):  # noqa: PLR2004 - origin, size and root
        raise CheckpointError("malformed_checkpoint")
    origin, size_text, root_text = lines[:3]
    # The length bound keeps int() below Python's digit limit; 2**64 has 20 digits.
    if len(size_text) > 20 or not _DECIMAL.fullmatch(size_text):  # noqa: PLR2004
        raise CheckpointError("malformed_checkpoint")
    size = int(size_text)
    if size >= _MAX_SIZE:
        raise CheckpointError("malformed_checkpoint")
    try:
        root = _b64decode(root_text)
    except (binascii.Error, ValueError):
        raise CheckpointError("malformed_checkpoint") from None
    if len(root) != _ROOT_LEN:
        raise CheckpointError("malformed_checkpoint")
    return origin, size, root
