"""Personnummer and samordningsnummer parsing (keys.personnummer)."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keys.errors import PersonnummerError
from keys.personnummer import IdentityNumber, luhn_check_digit, parse_identity_number

TODAY = date(2024, 6, 15)


def _with_check(nine: str) -> str:
    """Append the right check digit, so that a case fails only for the reason it names."""
    return nine + str(luhn_check_digit(nine))


def _numbers(yymmdd: str, serial: str) -> str:
    """The 10 digits of ``yymmdd`` + three-digit ``serial`` + its check digit."""
    return _with_check(yymmdd + serial)


@pytest.mark.parametrize(
    ("text", "normalised", "birth_date", "samordning"),
    [
        pytest.param("811218-9876", "198112189876", date(1981, 12, 18), False, id="short-dash"),
        pytest.param("8112189876", "198112189876", date(1981, 12, 18), False, id="short-bare"),
        pytest.param("19811218-9876", "198112189876", date(1981, 12, 18), False, id="long-dash"),
        pytest.param("198112189876", "198112189876", date(1981, 12, 18), False, id="long-bare"),
        pytest.param(" \t811218-9876\n", "198112189876", date(1981, 12, 18), False, id="padded"),
        pytest.param("121212-1212", "201212121212", date(2012, 12, 12), False, id="child-2012"),
        pytest.param("121212+1212", "191212121212", date(1912, 12, 12), False, id="plus-1912"),
        pytest.param("19121212-1212", "191212121212", date(1912, 12, 12), False, id="long-1912"),
        pytest.param("701063-2391", "197010632391", date(1970, 10, 3), True, id="samordning"),
        pytest.param("197010632391", "197010632391", date(1970, 10, 3), True, id="samord-long"),
        pytest.param(
            _numbers("000229", "123"),
            "20000229" + _numbers("000229", "123")[6:],
            date(2000, 2, 29),
            False,
            id="leap-day-2000",
        ),
        pytest.param(
            _numbers("240615", "001"),
            "20240615" + _numbers("240615", "001")[6:],
            date(2024, 6, 15),
            False,
            id="born-today",
        ),
        pytest.param(
            _numbers("240616", "001"),
            "19240616" + _numbers("240616", "001")[6:],
            date(1924, 6, 16),
            False,
            id="tomorrow-is-last-century",
        ),
    ],
)
def test_valid_forms_normalise(
    text: str, normalised: str, birth_date: date, samordning: bool
) -> None:
    """Each accepted form yields the 12-digit number, the real birth date and the kind."""
    number = parse_identity_number(text, today=TODAY)
    assert number.normalised == normalised
    assert number.birth_date == birth_date
    assert number.is_samordningsnummer is samordning


def test_forms_of_one_person_are_equal() -> None:
    """All textual forms of one person parse to equal values."""
    forms = ["811218-9876", "8112189876", "19811218-9876", "198112189876", " 811218-9876 "]
    assert len({parse_identity_number(form, today=TODAY) for form in forms}) == 1


INVALID = [
    pytest.param("811218-9875", "check digit does not match", id="bad-check-digit"),
    pytest.param("701063-2392", "check digit does not match", id="bad-check-samordning"),
    pytest.param(_numbers("811318", "987"), "month 13 does not exist", id="month-13"),
    pytest.param(_numbers("810018", "987"), "month 00 does not exist", id="month-00"),
    pytest.param(_numbers("810200", "987"), "day 00 does not exist", id="day-00"),
    pytest.param(_numbers("810230", "987"), "day 30 does not exist in February", id="feb-30"),
    pytest.param(_numbers("810431", "987"), "day 31 does not exist in April", id="april-31"),
    pytest.param(_numbers("810229", "987"), "29 February does not exist", id="feb-29-1981"),
    pytest.param("19" + _numbers("000229", "987"), "29 February does not exist", id="feb-29-1900"),
    pytest.param(
        _numbers("000229", "987")[:6] + "+" + _numbers("000229", "987")[6:],
        "29 February does not exist",
        id="plus-feb-29-1900",
    ),
    pytest.param(_numbers("810132", "987"), "day 32 is neither", id="day-32"),
    pytest.param(_numbers("810160", "987"), "day 60 is neither", id="day-60"),
    pytest.param(_numbers("810192", "987"), "day 92 is neither", id="day-92"),
    pytest.param(
        _numbers("810290", "987"), "day 30 does not exist in February", id="samordning-feb-30"
    ),
    pytest.param(
        "20" + _numbers("240616", "987"), "birth date is in the future", id="future-tomorrow"
    ),
    pytest.param("21" + _numbers("000101", "987"), "birth date is in the future", id="future-2100"),
    pytest.param(
        "20" + _numbers("240676", "987"), "birth date is in the future", id="future-samordning"
    ),
    pytest.param("00" + _numbers("000101", "987"), "year zero does not exist", id="year-zero"),
    pytest.param("19121212+1212", "belongs only to the 10-digit form", id="plus-12-digits"),
    pytest.param("", "expected 10 or 12 digits, got 0", id="empty"),
    pytest.param("   ", "expected 10 or 12 digits, got 0", id="blank"),
    pytest.param("811218-987", "expected 10 or 12 digits, got 9", id="9-digits"),
    pytest.param("81121898765", "expected 10 or 12 digits, got 11", id="11-digits"),
    pytest.param("1981121898765", "expected 10 or 12 digits, got 13", id="13-digits"),
    pytest.param("1" * 40, "far too long", id="40-digits"),
    pytest.param("81121X-9876", "may contain only the digits", id="letter"),
    pytest.param("abcdef-ghij", "may contain only the digits", id="letters"),
    pytest.param("811218 9876", "may contain only the digits", id="inner-space"),
    pytest.param("811218/9876", "may contain only the digits", id="slash"),
    pytest.param("811218\u20139876", "may contain only the digits", id="en-dash"),
    pytest.param("\u0668\u0661\u0661\u0662\u0661\u0668-9876", "may contain only", id="arabic"),
    pytest.param("\uff18\uff11\uff11\uff12\uff11\uff18-9876", "may contain only", id="fullwidth"),
    pytest.param("811218--9876", "more than one separator", id="two-dashes"),
    pytest.param("811218-+9876", "more than one separator", id="dash-plus"),
    pytest.param("8112-189876", "just before the last four digits", id="separator-misplaced"),
    pytest.param("-8112189876", "just before the last four digits", id="separator-leading"),
]


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_invalid_numbers_are_refused(text: str, expected: str) -> None:
    """Each malformed number is refused with a message that says what is wrong."""
    with pytest.raises(PersonnummerError, match=re.escape(expected)):
        parse_identity_number(text, today=TODAY)


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_error_messages_never_contain_the_digits(text: str, expected: str) -> None:
    """No message contains the input's digits, or any run of three digits at all."""
    with pytest.raises(PersonnummerError) as caught:
        parse_identity_number(text, today=TODAY)
    message = str(caught.value)
    digits = re.sub(r"\D", "", text)
    assert expected in message
    if len(digits) >= 3:
        assert digits not in message
        assert digits[-4:] not in message
    assert re.search(r"\d{3}", message) is None


def test_identity_number_never_shows_the_number() -> None:
    """repr, str and f-strings of an IdentityNumber show neither the number nor the date."""
    number = parse_identity_number("19811218-9876", today=TODAY)
    for shown in (repr(number), str(number), f"{number}", f"{number!r}", repr([number])):
        assert "IdentityNumber(<redacted>)" in shown
        assert "9876" not in shown
        assert "1981" not in shown


def test_identity_number_refuses_malformed_normalised() -> None:
    """An IdentityNumber built by hand must still carry exactly 12 ASCII digits."""
    with pytest.raises(PersonnummerError, match="exactly 12 ASCII digits"):
        IdentityNumber(
            normalised="8112189876", birth_date=date(1981, 12, 18), is_samordningsnummer=False
        )


@pytest.mark.parametrize(
    ("nine", "check"),
    [
        pytest.param("811218987", 6, id="811218-9876"),
        pytest.param("121212121", 2, id="121212-1212"),
        pytest.param("701063239", 1, id="samordning-701063-2391"),
        pytest.param("000000000", 0, id="zeros"),
    ],
)
def test_luhn_check_digit(nine: str, check: int) -> None:
    """The Luhn digit of known numbers matches Skatteverket's published examples."""
    assert luhn_check_digit(nine) == check


@pytest.mark.parametrize("bad", ["81121898", "8112189876", "81121898x", "\u0668" * 9])
def test_luhn_needs_nine_ascii_digits(bad: str) -> None:
    """luhn_check_digit refuses anything but exactly nine ASCII digits."""
    with pytest.raises(PersonnummerError, match="exactly nine ASCII digits"):
        luhn_check_digit(bad)


# --- properties ------------------------------------------------------------------------------


@st.composite
def _person(draw: st.DrawFn) -> tuple[date, date, str, bool]:
    """A today, a birth date less than 200 years before it, a serial and a kind."""
    today = draw(st.dates(min_value=date(1990, 1, 1), max_value=date(2199, 12, 31)))
    born = today - timedelta(days=draw(st.integers(min_value=0, max_value=199 * 365)))
    serial = draw(st.from_regex(r"\A[0-9]{3}\Z"))
    return today, born, serial, draw(st.booleans())


def _ten_digits(born: date, serial: str, samordning: bool) -> str:
    day = born.day + 60 if samordning else born.day
    return _with_check(f"{born.year % 100:02d}{born.month:02d}{day:02d}{serial}")


def _under_100(born: date, today: date) -> bool:
    """Whether the same day a hundred years later is still after today (SKV 704's '-' rule)."""
    return (born.year + 100, born.month, born.day) > (today.year, today.month, today.day)


@given(_person(), st.sampled_from(["", " ", "\t", "\n "]))
def test_every_form_round_trips(person: tuple[date, date, str, bool], pad: str) -> None:
    """Every textual form of a valid number normalises to the same value and birth date.

    The bare 10-digit form has no '+' and so names only people under 100.
    """
    today, born, serial, samordning = person
    ten = _ten_digits(born, serial, samordning)
    century = f"{born.year // 100:02d}"
    separator = "-" if _under_100(born, today) else "+"
    forms = [
        f"{ten[:6]}{separator}{ten[6:]}",
        f"{century}{ten[:6]}-{ten[6:]}",
        f"{century}{ten}",
    ]
    if separator == "-":
        forms.append(ten)
    parsed = {parse_identity_number(pad + form + pad, today=today) for form in forms}
    assert len(parsed) == 1
    (number,) = parsed
    assert number.normalised == century + ten
    assert number.birth_date == born
    assert number.is_samordningsnummer is samordning


@given(
    _person(),
    st.integers(min_value=0, max_value=9),
    st.integers(min_value=1, max_value=9),
    st.booleans(),
)
def test_one_changed_digit_never_parses(
    person: tuple[date, date, str, bool], position: int, delta: int, long_form: bool
) -> None:
    """Changing any one of the ten digits fails the date or the Luhn check.

    Luhn catches every single-digit substitution (doubling is a permutation of
    the digit sums mod 10), so no typo yields another valid number.
    """
    today, born, serial, samordning = person
    ten = _ten_digits(born, serial, samordning)
    changed = ten[:position] + str((int(ten[position]) + delta) % 10) + ten[position + 1 :]
    if long_form:
        text = f"{born.year // 100:02d}{changed[:6]}-{changed[6:]}"
    else:
        text = f"{changed[:6]}{'-' if _under_100(born, today) else '+'}{changed[6:]}"
    with pytest.raises(PersonnummerError):
        parse_identity_number(text, today=today)


@given(
    st.one_of(
        st.text(alphabet="0123456789-+ \tx\u0661", max_size=40),
        st.from_regex(r"\A[0-9]{6,8}[-+]?[0-9]{4}\Z"),
    )
)
def test_no_message_ever_shows_three_digits(text: str) -> None:
    """Whatever the input, an error message never holds three digits in a row."""
    message = ""
    try:
        parse_identity_number(text, today=TODAY)
    except PersonnummerError as exc:
        message = str(exc)
    assert re.search(r"\d{3}", message) is None
