"""Child pseudonyms (keys.pseudonym)."""

from __future__ import annotations

import hashlib
from datetime import date

import pytest
from pydantic import TypeAdapter

from keys.errors import PersonnummerError
from keys.personnummer import luhn_check_digit, parse_identity_number
from keys.pseudonym import PseudonymKey, child_pseudonym, pseudonym_from_text
from schemas.common import ChildPseudonym

TODAY = date(2024, 6, 15)
KEY = PseudonymKey(bytes(range(32)))

#: Fixed vector: key 000102…1f, personnummer 19811218-9876 (normalised 198112189876).
VECTOR_PERSONNUMMER = "590ad3fafe9c6da064a3e4d986680342a97ba87a1f2c2158cab98b9fd250ed9d"
#: Fixed vector: same key, samordningsnummer 701063-2391 (normalised 197010632391).
VECTOR_SAMORDNING = "eab5cdaa67414aea58653015d17f5fefe0149e9322e7ed681e1105ee88dbc326"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("19811218-9876", VECTOR_PERSONNUMMER, id="personnummer"),
        pytest.param("811218-9876", VECTOR_PERSONNUMMER, id="personnummer-short"),
        pytest.param("701063-2391", VECTOR_SAMORDNING, id="samordningsnummer"),
    ],
)
def test_fixed_vector(text: str, expected: str) -> None:
    """Pins the HMAC rule of docs/PROTOCOL.md (label, NUL, 12 ASCII digits) against silent change.

    The values were computed once and hard-coded; an agency implementing the
    rule in another language checks itself against the same vector.
    """
    assert pseudonym_from_text(text, KEY, today=TODAY) == expected


def test_pseudonym_matches_the_wire_pattern() -> None:
    """A pseudonym is a valid schemas.common.ChildPseudonym (64 lowercase hex)."""
    pseudonym = pseudonym_from_text("121212-1212", KEY, today=TODAY)
    assert TypeAdapter(ChildPseudonym).validate_python(pseudonym) == pseudonym


def test_pseudonym_is_not_a_plain_hash() -> None:
    """The pseudonym differs from an unkeyed SHA-256 of the same input, with or without label."""
    pseudonym = pseudonym_from_text("19811218-9876", KEY, today=TODAY)
    assert pseudonym != hashlib.sha256(b"198112189876").hexdigest()
    assert pseudonym != hashlib.sha256(b"backa-child-pseudonym-v1\x00198112189876").hexdigest()


def test_different_keys_give_different_pseudonyms() -> None:
    """The same child has unrelated pseudonyms under two area keys."""
    other = PseudonymKey(bytes(range(1, 33)))
    number = parse_identity_number("811218-9876", today=TODAY)
    assert child_pseudonym(number, KEY) != child_pseudonym(number, other)


def test_samordningsnummer_and_personnummer_differ() -> None:
    """A samordningsnummer and a personnummer with the same birth date and serial differ."""
    personnummer = "701003-239" + str(luhn_check_digit("701003239"))
    samordning = parse_identity_number("701063-2391", today=TODAY)
    person = parse_identity_number(personnummer, today=TODAY)
    assert samordning.birth_date == person.birth_date
    assert child_pseudonym(samordning, KEY) != child_pseudonym(person, KEY)


def test_invalid_number_is_refused() -> None:
    """pseudonym_from_text refuses a number that does not parse, before any HMAC."""
    with pytest.raises(PersonnummerError, match="check digit does not match"):
        pseudonym_from_text("811218-9875", KEY, today=TODAY)


@pytest.mark.parametrize("length", [0, 16, 31])
def test_short_key_refused(length: int) -> None:
    """A key shorter than 32 bytes is refused."""
    with pytest.raises(ValueError, match="at least 32 bytes"):
        PseudonymKey(b"\x07" * length)


def test_long_key_accepted() -> None:
    """A key longer than 32 bytes is accepted (HMAC hashes it down)."""
    number = parse_identity_number("811218-9876", today=TODAY)
    assert len(child_pseudonym(number, PseudonymKey(b"\x07" * 64))) == 64


def test_repr_hides_the_key() -> None:
    """repr and str of a key show neither its bytes nor their hex."""
    secret = bytes(range(200, 232))
    key = PseudonymKey(secret)
    for shown in (repr(key), str(key), f"{key}", repr([key])):
        assert "PseudonymKey(<secret>)" in shown
        assert secret.hex() not in shown
        assert repr(secret) not in shown
        assert "\\xc8" not in shown
