"""C2SP signed notes and tlog checkpoints: Go's published example, a reference, tampering.

The reference signer and verifier here are written from the C2SP specs with
``hashlib``, ``base64`` and ``cryptography`` only, sharing no code with
``broker.audit.note``.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit.note import (
    CheckpointError,
    key_id,
    open_checkpoint,
    open_note,
    parse_vkey,
    sign_checkpoint,
    sign_note,
    vkey,
)

DASH = "\N{EM DASH}"

# The example in the documentation of golang.org/x/mod/sumdb/note (skey, vkey,
# text and signed note, byte for byte); Ed25519 is deterministic, so signing
# the text with the skey must reproduce the published signature.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + "\n"
    + f"{DASH} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)

ORIGIN = "backa.example/audit"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
ROOT = bytes.fromhex("3cd2dc52dfaef20e0a3c259d94abf99d3e71e2a3837f4089c5e5ea5d34d7a188")
VKEY = "backa.example/audit+aa89f96e+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
#: sign_checkpoint(ORIGIN, 1000, ROOT, name=ORIGIN, key=KEY), pinned.
CHECKPOINT = (
    "backa.example/audit\n"
    "1000\n"
    "PNLcUt+u8g4KPCWdlKv5nT5x4qODf0CJxeXqXTTXoYg=\n"
    "\n"
    f"{DASH} backa.example/audit qon5buwwKRSA7E5x6XHvhZhu3cosdgRmJ27x3VTlD+meVuQ5ZqRrjztMuMm7A7ftMdwBpfogzqT+q5H17UZVUk4rrAM=\n"
)

# --- an independent reference --------------------------------------------------


def _ref_key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    typed = b"\x01" + public_key.public_bytes_raw()
    return hashlib.sha256(name.encode() + b"\n" + typed).digest()[:4]


def _ref_line(text: str, name: str, key: Ed25519PrivateKey) -> str:
    blob = _ref_key_id(name, key.public_key()) + key.sign(text.encode())
    return f"{DASH} {name} {base64.b64encode(blob).decode()}\n"


def _ref_note(text: str, name: str, key: Ed25519PrivateKey) -> str:
    return text + "\n" + _ref_line(text, name, key)


def _ref_verifies(note: str, name: str, public_key: Ed25519PublicKey) -> bool:
    text, _, block = note.rpartition("\n\n")
    for line in block.splitlines():
        line_name, blob64 = line.removeprefix(f"{DASH} ").split(" ")
        blob = base64.b64decode(blob64)
        if line_name == name and blob[:4] == _ref_key_id(name, public_key):
            try:
                public_key.verify(blob[4:], (text + "\n").encode())
            except InvalidSignature:
                return False
            return True
    return False


def _reason(note: str, verifier: str = VKEY) -> str | None:
    """The reason open_checkpoint refuses the note, or None if it opens."""
    try:
        open_checkpoint(note, verifier)
    except CheckpointError as exc:
        return exc.reason
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- known answers ------------------------------------------------------------------


def test_go_example_keys_reproduce() -> None:
    """Go's example private key gives its published vkey and key id c74f20a3."""
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert seed[0] == 0x01
    key = Ed25519PrivateKey.from_private_bytes(seed[1:])
    assert vkey("PeterNeumann", key.public_key()) == GO_VKEY
    assert key_id("PeterNeumann", key.public_key()).hex() == "c74f20a3"
    name, kid, public_key = parse_vkey(GO_VKEY)
    assert (name, kid.hex()) == ("PeterNeumann", "c74f20a3")
    assert public_key.public_bytes_raw() == key.public_key().public_bytes_raw()


def test_go_example_note_signs_and_opens() -> None:
    """Signing Go's example text reproduces its note byte for byte, and the note opens."""
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])
    key = Ed25519PrivateKey.from_private_bytes(seed[1:])
    assert sign_note(GO_TEXT, name="PeterNeumann", key=key) == GO_NOTE
    assert open_note(GO_NOTE, GO_VKEY) == GO_TEXT


def test_key_id_matches_independent_computation() -> None:
    """The key id is SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4], also for non-ASCII names."""
    for name in (ORIGIN, "granskning.backa.example/logg-å", "x"):
        for key in (KEY, OTHER_KEY):
            assert key_id(name, key.public_key()) == _ref_key_id(name, key.public_key())


def test_vkey_format() -> None:
    """The vkey is name, hex key id and base64(0x01 ‖ public key), joined by '+'."""
    public_key = KEY.public_key()
    typed = b"\x01" + public_key.public_bytes_raw()
    expected = f"{ORIGIN}+{_ref_key_id(ORIGIN, public_key).hex()}+{_b64(typed)}"
    assert vkey(ORIGIN, public_key) == expected == VKEY


def test_checkpoint_is_pinned_and_matches_reference() -> None:
    """A checkpoint is the C2SP body and one signature line, as the reference builds it."""
    note = sign_checkpoint(ORIGIN, 1000, ROOT, name=ORIGIN, key=KEY)
    assert note == CHECKPOINT
    assert note == _ref_note(f"{ORIGIN}\n1000\n{_b64(ROOT)}\n", ORIGIN, KEY)
    assert _ref_verifies(note, ORIGIN, KEY.public_key())


# --- round trips ---------------------------------------------------------------------


def test_round_trip() -> None:
    """What sign_checkpoint signs, open_checkpoint opens to the same origin, size and root."""
    assert open_checkpoint(CHECKPOINT, VKEY) == (ORIGIN, 1000, ROOT)


def test_reference_signed_checkpoint_opens() -> None:
    """A checkpoint signed by the independent reference opens, under any key name."""
    name = "auditor.example/backa"
    note = _ref_note(f"{ORIGIN}\n0\n{_b64(bytes(32))}\n", name, OTHER_KEY)
    assert open_checkpoint(note, vkey(name, OTHER_KEY.public_key())) == (ORIGIN, 0, bytes(32))


@settings(max_examples=60, deadline=None)
@given(
    origin=st.text(
        st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
        min_size=1,
        max_size=40,
    ).filter(lambda s: "+" not in s and not any(c.isspace() for c in s)),
    size=st.integers(min_value=0, max_value=(1 << 64) - 1),
    root=st.binary(min_size=32, max_size=32),
)
def test_round_trip_property(origin: str, size: int, root: bytes) -> None:
    """Any valid origin, uint64 size and 32-byte root survive signing and opening."""
    note = sign_checkpoint(origin, size, root, name=ORIGIN, key=KEY)
    assert open_checkpoint(note, VKEY) == (origin, size, root)
    assert _ref_verifies(note, ORIGIN, KEY.public_key())


# --- tampering -------------------------------------------------------------------------

BODY_END = CHECKPOINT.index("\n\n") + 1


@pytest.mark.parametrize("position", range(BODY_END))
def test_every_changed_body_character_fails(position: int) -> None:
    """Changing any character of the signed body makes the checkpoint fail to open."""
    for replacement in ("x", "0", "\n", "å"):
        if CHECKPOINT[position] == replacement:
            continue
        note = CHECKPOINT[:position] + replacement + CHECKPOINT[position + 1 :]
        assert _reason(note) is not None, (position, replacement)


def test_every_flipped_signature_bit_fails() -> None:
    """Flipping any bit of the key id or the signature makes the checkpoint fail."""
    body, line = CHECKPOINT[: BODY_END + 1], CHECKPOINT[BODY_END + 1 :]
    prefix, blob64 = line.rstrip("\n").rsplit(" ", 1)
    blob = base64.b64decode(blob64)
    reasons = set()
    for bit in range(len(blob) * 8):
        changed = bytearray(blob)
        changed[bit // 8] ^= 1 << (bit % 8)
        reason = _reason(f"{body}{prefix} {_b64(bytes(changed))}\n")
        assert reason == ("no_matching_signature" if bit < 32 else "bad_signature"), bit
        reasons.add(reason)
    assert reasons == {"no_matching_signature", "bad_signature"}


def test_wrong_key_is_no_matching_signature() -> None:
    """A vkey for another key under the same name finds no signature of its own."""
    assert _reason(CHECKPOINT, vkey(ORIGIN, OTHER_KEY.public_key())) == "no_matching_signature"


def test_wrong_name_is_no_matching_signature() -> None:
    """A vkey for the same key under another name finds no signature of its own."""
    assert _reason(CHECKPOINT, vkey("other.example", KEY.public_key())) == "no_matching_signature"


def test_signature_by_another_key_under_our_key_id_is_bad() -> None:
    """A line naming our key and key id but signed by another key is a bad signature."""
    text = CHECKPOINT[:BODY_END]
    blob = _ref_key_id(ORIGIN, KEY.public_key()) + OTHER_KEY.sign(text.encode())
    note = f"{text}\n{DASH} {ORIGIN} {_b64(blob)}\n"
    assert _reason(note) == "bad_signature"


def test_our_key_id_under_another_name_is_not_ours() -> None:
    """A line must match the verifier's name as well as its key id, as in Go."""
    text = CHECKPOINT[:BODY_END]
    blob = _ref_key_id(ORIGIN, KEY.public_key()) + KEY.sign(text.encode())
    assert _reason(f"{text}\n{DASH} impostor.example {_b64(blob)}\n") == "no_matching_signature"


def test_short_signature_is_bad() -> None:
    """A matching line whose signature is not 64 bytes is a bad signature."""
    text = CHECKPOINT[:BODY_END]
    blob = _ref_key_id(ORIGIN, KEY.public_key()) + KEY.sign(text.encode())[:63]
    assert _reason(f"{text}\n{DASH} {ORIGIN} {_b64(blob)}\n") == "bad_signature"


def test_unrelated_signature_lines_are_ignored() -> None:
    """Signatures by other keys, before or after ours, even unverifiable ones, are ignored."""
    text = CHECKPOINT[:BODY_END]
    ours = _ref_line(text, ORIGIN, KEY)
    theirs = _ref_line(text, "witness.example", OTHER_KEY)
    garbage = f"{DASH} witness2.example {_b64(bytes(range(1, 69)))}\n"
    for block in (theirs + ours, ours + theirs, garbage + ours + theirs, ours + ours):
        assert open_checkpoint(f"{text}\n{block}", VKEY) == (ORIGIN, 1000, ROOT)
    assert _reason(f"{text}\n{theirs}{garbage}") == "no_matching_signature"


def test_a_bad_matching_line_beside_a_good_one_fails() -> None:
    """One bad signature under the verifier's key refuses the note, like Go's note.Open."""
    text = CHECKPOINT[:BODY_END]
    ours = _ref_line(text, ORIGIN, KEY)
    forged = _ref_key_id(ORIGIN, KEY.public_key()) + OTHER_KEY.sign(text.encode())
    assert _reason(f"{text}\n{ours}{DASH} {ORIGIN} {_b64(forged)}\n") == "bad_signature"


SIG_LINE = CHECKPOINT[BODY_END + 1 :]
TEXT = CHECKPOINT[:BODY_END]


@pytest.mark.parametrize(
    "note",
    [
        pytest.param(TEXT, id="no-signature-block"),
        pytest.param(TEXT + "\n", id="empty-signature-block"),
        pytest.param(TEXT + SIG_LINE, id="no-blank-line"),
        pytest.param(CHECKPOINT.rstrip("\n"), id="no-final-newline"),
        pytest.param(TEXT + "\n" + SIG_LINE.replace(DASH, "-"), id="hyphen-not-em-dash"),
        pytest.param(TEXT + "\n" + SIG_LINE.replace(f"{DASH} ", DASH), id="no-space-after-dash"),
        pytest.param(TEXT + "\n" + SIG_LINE.replace("=\n", "\n"), id="unpadded-base64"),
        pytest.param(TEXT + "\n" + SIG_LINE.replace("+", "-"), id="base64url"),
        pytest.param(TEXT + "\n" + f"{DASH} {ORIGIN} AQID\n", id="blob-shorter-than-key-id"),
        pytest.param(TEXT + "\n" + f"{DASH} {ORIGIN}\n", id="no-signature"),
        pytest.param(TEXT + "\n" + f"{DASH} a+b {_b64(bytes(68))}\n", id="plus-in-name"),
        pytest.param(TEXT + "\n" + SIG_LINE + "\n", id="blank-line-after-signatures"),
        pytest.param(TEXT + "\n" + SIG_LINE * 101, id="too-many-signatures"),
        pytest.param(CHECKPOINT.replace("1000", "10\t00"), id="tab-in-body"),
        pytest.param(CHECKPOINT.replace("1000", "1000\r"), id="carriage-return"),
        pytest.param(CHECKPOINT + "\x00", id="nul"),
        pytest.param(CHECKPOINT.replace("1000", "10\udc8000"), id="lone-surrogate"),
        pytest.param("", id="empty"),
    ],
)
def test_malformed_notes(note: str) -> None:
    """A note that is not a well-formed C2SP signed note is refused as malformed."""
    assert _reason(note) == "malformed_note"


# --- checkpoint bodies ---------------------------------------------------------------


#: A root whose standard base64 has '+' and '/', so base64url differs.
_URL_UNSAFE = bytes([0xFB]) * 32


def _signed_body(body: str) -> str:
    return _ref_note(body, ORIGIN, KEY)


def test_extension_lines_are_tolerated() -> None:
    """Extension lines after the root are accepted and ignored."""
    note = _signed_body(f"{ORIGIN}\n5\n{_b64(ROOT)}\nextension one\n— two\n")
    assert open_checkpoint(note, VKEY) == (ORIGIN, 5, ROOT)


def test_origin_with_spaces_opens() -> None:
    """An origin with a space (allowed, if discouraged, by the spec) still opens."""
    note = _signed_body(f"Backa log 1\n5\n{_b64(ROOT)}\n")
    assert open_checkpoint(note, VKEY) == ("Backa log 1", 5, ROOT)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(f"{ORIGIN}\n5\n", id="no-root"),
        pytest.param(f"{ORIGIN}\n", id="origin-only"),
        pytest.param(f"\n5\n{_b64(ROOT)}\n", id="empty-origin"),
        pytest.param(f"{ORIGIN}\n\n{_b64(ROOT)}\n", id="empty-size"),
        pytest.param(f"{ORIGIN}\n05\n{_b64(ROOT)}\n", id="leading-zero"),
        pytest.param(f"{ORIGIN}\n-5\n{_b64(ROOT)}\n", id="negative"),
        pytest.param(f"{ORIGIN}\n+5\n{_b64(ROOT)}\n", id="plus-sign"),
        pytest.param(f"{ORIGIN}\n 5\n{_b64(ROOT)}\n", id="space-before-size"),
        pytest.param(f"{ORIGIN}\n5.0\n{_b64(ROOT)}\n", id="decimal-point"),
        pytest.param(f"{ORIGIN}\n5_000\n{_b64(ROOT)}\n", id="underscore"),
        pytest.param(f"{ORIGIN}\n\u0665\n{_b64(ROOT)}\n", id="arabic-indic-digit"),
        pytest.param(f"{ORIGIN}\n{1 << 64}\n{_b64(ROOT)}\n", id="size-2-to-64"),
        pytest.param(f"{ORIGIN}\n{'9' * 5000}\n{_b64(ROOT)}\n", id="five-thousand-digits"),
        pytest.param(f"{ORIGIN}\n5\n{_b64(ROOT[:31])}\n", id="root-31-bytes"),
        pytest.param(f"{ORIGIN}\n5\n{_b64(ROOT + b'x')}\n", id="root-33-bytes"),
        pytest.param(f"{ORIGIN}\n5\n{ROOT.hex()}\n", id="root-hex"),
        pytest.param(f"{ORIGIN}\n5\n{_b64(ROOT).rstrip('=')}\n", id="root-unpadded"),
        # The last digit's low bits are padding; setting them decodes to the same bytes.
        pytest.param(f"{ORIGIN}\n5\n{_b64(ROOT)[:-2]}h=\n", id="root-non-canonical"),
        pytest.param(
            f"{ORIGIN}\n5\n{base64.urlsafe_b64encode(_URL_UNSAFE).decode()}\n", id="root-base64url"
        ),
        pytest.param(f"{ORIGIN}\n5\n{_b64(ROOT)}\n\nextension\n", id="empty-extension-line"),
    ],
)
def test_malformed_checkpoint_bodies(body: str) -> None:
    """A correctly signed body that is not a checkpoint is refused as malformed."""
    assert _reason(_signed_body(body)) == "malformed_checkpoint"


def test_maximum_size_opens() -> None:
    """The largest uint64 size is a valid checkpoint size."""
    size = (1 << 64) - 1
    assert open_checkpoint(_signed_body(f"{ORIGIN}\n{size}\n{_b64(ROOT)}\n"), VKEY)[1] == size


# --- verifier keys ------------------------------------------------------------------

_TYPED = b"\x01" + KEY.public_key().public_bytes_raw()
_KID = _ref_key_id(ORIGIN, KEY.public_key()).hex()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param(ORIGIN, id="name-only"),
        pytest.param(f"{ORIGIN}+{_KID}", id="no-key"),
        pytest.param(f"+{_KID}+{_b64(_TYPED)}", id="empty-name"),
        pytest.param(f"a b+{_KID}+{_b64(_TYPED)}", id="space-in-name"),
        pytest.param(f"{ORIGIN}+{_KID[:7]}+{_b64(_TYPED)}", id="seven-hex-digits"),
        pytest.param(f"{ORIGIN}+0{_KID}+{_b64(_TYPED)}", id="nine-hex-digits"),
        pytest.param(f"{ORIGIN}+{_KID[:7]}g+{_b64(_TYPED)}", id="non-hex"),
        pytest.param(f"{ORIGIN}+ {_KID[:7]}+{_b64(_TYPED)}", id="space-in-key-id"),
        pytest.param(f"{ORIGIN}+00000000+{_b64(_TYPED)}", id="wrong-key-id"),
        pytest.param(f"other.example+{_KID}+{_b64(_TYPED)}", id="renamed"),
        pytest.param(
            f"{ORIGIN}+{_KID}+{base64.urlsafe_b64encode(_TYPED).decode()}", id="base64url-key"
        ),
        pytest.param(f"{ORIGIN}+{_KID}+{_b64(_TYPED)}+extra", id="extra-part"),
        pytest.param(f"{ORIGIN}+{_KID}+{_b64(_TYPED[1:])}", id="no-type-byte"),
        pytest.param(f"{ORIGIN}+{_KID}+{_b64(bytes([2]) + _TYPED[1:])}", id="type-2"),
        pytest.param(f"{ORIGIN}+{_KID}+{_b64(_TYPED + bytes(1))}", id="key-33-bytes"),
    ],
)
def test_bad_verifier_keys(text: str) -> None:
    """A malformed or inconsistent vkey is a ValueError, and a checkpoint refusal."""
    with pytest.raises(ValueError, match=r"."):
        parse_vkey(text)
    assert _reason(CHECKPOINT, text) == "bad_verifier_key"


def test_uppercase_key_id_is_accepted() -> None:
    """Hex key ids are case-insensitive, as Go's strconv.ParseUint reads them."""
    assert parse_vkey(VKEY.replace(_KID, _KID.upper()))[1].hex() == _KID


# --- refusing to sign nonsense ----------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "size", "root", "name"),
    [
        pytest.param("", 1, ROOT, ORIGIN, id="empty-origin"),
        pytest.param("a\nb", 1, ROOT, ORIGIN, id="newline-in-origin"),
        pytest.param("a b", 1, ROOT, ORIGIN, id="space-in-origin"),
        pytest.param("a+b", 1, ROOT, ORIGIN, id="plus-in-origin"),
        pytest.param("a\x00", 1, ROOT, ORIGIN, id="nul-in-origin"),
        pytest.param(ORIGIN, -1, ROOT, ORIGIN, id="negative-size"),
        pytest.param(ORIGIN, 1 << 64, ROOT, ORIGIN, id="size-2-to-64"),
        pytest.param(ORIGIN, True, ROOT, ORIGIN, id="bool-size"),
        pytest.param(ORIGIN, 1, ROOT[:31], ORIGIN, id="root-31-bytes"),
        pytest.param(ORIGIN, 1, ROOT, "", id="empty-name"),
        pytest.param(ORIGIN, 1, ROOT, "a+b", id="plus-in-name"),
        pytest.param(ORIGIN, 1, ROOT, "a b", id="space-in-name"),
    ],
)
def test_sign_checkpoint_refuses_caller_mistakes(
    origin: str, size: int, root: bytes, name: str
) -> None:
    """Signing an impossible checkpoint is a ValueError, never a malformed note."""
    with pytest.raises(ValueError, match=r"."):
        sign_checkpoint(origin, size, root, name=name, key=KEY)


@pytest.mark.parametrize("text", ["no newline", "tab\there\n", "", "nul\x00\n"])
def test_sign_note_refuses_bad_text(text: str) -> None:
    """A note text must end in a newline and hold no other control character."""
    with pytest.raises(ValueError, match=r"."):
        sign_note(text, name=ORIGIN, key=KEY)


def test_checkpoint_error_is_a_value_error_with_a_reason() -> None:
    """CheckpointError is a ValueError carrying a short reason for the log."""
    assert issubclass(CheckpointError, ValueError)
    assert CheckpointError("bad_signature").reason == "bad_signature"
