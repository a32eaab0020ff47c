"""The log redaction processor: forbidden field names, personnummer-like digits, UUIDs kept."""

from __future__ import annotations

import uuid

import pytest

from keys.logs import REDACTED, redact


def _redacted(**fields: object) -> dict[str, object]:
    return dict(redact(None, "info", dict(fields)))


@pytest.mark.parametrize(
    "name", ["content", "plaintext", "personnummer", "wrapped_key", "api_token", "Password"]
)
def test_a_forbidden_field_name_is_dropped_whatever_its_value(name: str) -> None:
    assert _redacted(**{name: "harmless"})[name] == REDACTED


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("child 201212121212 seen", f"child {REDACTED} seen"),
        ("child 20121212-1212 seen", f"child {REDACTED} seen"),
        ("121212-1212", REDACTED),
        ("1212121212", REDACTED),
        ("121212+1212", REDACTED),
        ("order 12345", "order 12345"),
        ("1234567890123", "1234567890123"),  # thirteen digits: not a personnummer
    ],
)
def test_personnummer_like_digits_are_masked_in_any_value(value: str, expected: str) -> None:
    assert _redacted(reason=value)["reason"] == expected


def test_a_uuid_with_a_run_of_twelve_digits_is_kept_whole() -> None:
    """A message id's last group can be twelve decimal digits; it is an id, not a number."""
    message_id = "0192f3a4-5b6c-7d8e-9f01-201212121212"
    assert _redacted(message_id=message_id)["message_id"] == message_id
    line = f"message {message_id} for 201212121212"
    assert _redacted(detail=line)["detail"] == f"message {message_id} for {REDACTED}"


def test_no_uuidv7_is_ever_redacted() -> None:
    """Ten thousand fresh UUIDv7-shaped ids (random bits in every group) pass unchanged."""
    ids = [
        str(uuid.UUID(int=(uuid.uuid4().int & ~(0xF << 76)) | (0x7 << 76))) for _ in range(10_000)
    ]
    changed = [i for i in ids if _redacted(message_id=i)["message_id"] != i]
    assert changed == []


def test_a_personnummer_next_to_a_uuid_is_still_masked() -> None:
    message_id = str(uuid.uuid4())
    value = f"{message_id}/201212121212"
    assert _redacted(v=value)["v"] == f"{message_id}/{REDACTED}"
