"""Swedish personal identity numbers: parse, check and normalise, without a clock.

A child is named on the wire only by a pseudonym (``keys.pseudonym``), and the
pseudonym is only as stable as the number under it: every textual form of one
person's number must normalise to the same twelve digits, and anything that is
not a well-formed number must be refused rather than guessed at.

Rules (Skatteverket SKV 704 for personnummer, SKV 707 for samordningsnummer;
folkbokföringslagen 18 § and 18 a §):

* Forms accepted: ``YYMMDD-NNNN``, ``YYMMDD+NNNN``, ``YYMMDDNNNN``,
  ``YYYYMMDD-NNNN`` and ``YYYYMMDDNNNN``, with surrounding whitespace trimmed.
  Nothing else: no other separators, no letters, no non-ASCII digits.
* ``+`` replaces ``-`` in the year a person turns 100 (SKV 704), so for the
  10-digit forms the century is the latest one that puts the birth date on or
  before ``today``, and with ``+`` a hundred years earlier than that. The
  12-digit form states its century and never takes ``+``.
* The last digit is a Luhn (mod 10) check digit over the 10-digit form
  ``YYMMDDNNN``, as written, so over day+60 for a samordningsnummer.
* A samordningsnummer (SKV 707) is written with the day of birth plus 60
  (61-91); the normalised form keeps the written day, ``birth_date`` the real
  one, so a samordningsnummer and a personnummer never collide.

What this module must never do: read the clock (``today`` is an argument), or
put a number, or any run of its digits, into an error message, a ``repr`` or a
``str`` — the messages say what is wrong, never what was given, because they
end up in logs and HTTP answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from keys.errors import PersonnummerError

__all__ = ["IdentityNumber", "luhn_check_digit", "parse_identity_number"]

#: Longest input looked at: bounds the work, and keeps every count we report to two digits.
_MAX_INPUT_CHARS = 32

_ALLOWED = re.compile(r"[0-9+-]*")
_DIGITS = re.compile(r"[0-9]+")

# Day-of-birth offset of a samordningsnummer (SKV 707).
_SAMORDNING_OFFSET = 60

_MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True, slots=True, repr=False)
class IdentityNumber:
    """A checked personnummer or samordningsnummer.

    ``normalised`` is ``YYYYMMDDNNNN`` as written (a samordningsnummer keeps its
    day+60); ``birth_date`` is the real date of birth. ``repr`` and ``str``
    never show either, so that an ``IdentityNumber`` that slips into a log
    line or an f-string reveals nothing.
    """

    normalised: str
    birth_date: date
    is_samordningsnummer: bool

    def __post_init__(self) -> None:
        if len(self.normalised) != 12 or not _DIGITS.fullmatch(self.normalised):  # noqa: PLR2004
            raise PersonnummerError("a normalised number has exactly 12 ASCII digits")

    def __repr__(self) -> str:
        return "IdentityNumber(<redacted>)"

    def __str__(self) -> str:
        return "IdentityNumber(<redacted>)"


def luhn_check_digit(nine_digits: str) -> int:
    """The Luhn check digit of ``YYMMDDNNN`` (weights 2, 1, 2, … from the left; SKV 704)."""
    if len(nine_digits) != 9 or not _DIGITS.fullmatch(nine_digits):  # noqa: PLR2004
        raise PersonnummerError("a Luhn check digit is computed over exactly nine ASCII digits")
    total = 0
    for index, char in enumerate(nine_digits):
        product = int(char) * (2 if index % 2 == 0 else 1)
        total += product // 10 + product % 10
    return (10 - total % 10) % 10


def parse_identity_number(text: str, *, today: date) -> IdentityNumber:
    """Parse, check and normalise a personnummer or samordningsnummer.

    Raises ``PersonnummerError`` with a message that says what is wrong and
    never contains the digits given.
    """
    stripped = text.strip()
    if len(stripped) > _MAX_INPUT_CHARS:
        raise PersonnummerError("is far too long to be a personnummer or samordningsnummer")
    if not _ALLOWED.fullmatch(stripped):
        raise PersonnummerError(
            "may contain only the digits 0-9 and one '-' or '+' before the last four digits"
        )

    separators = [char for char in stripped if char in "+-"]
    digits = stripped.replace("-", "").replace("+", "")
    if len(digits) not in (10, 12):
        raise PersonnummerError(f"expected 10 or 12 digits, got {len(digits)}")
    if len(separators) > 1:
        raise PersonnummerError("has more than one separator")
    separator = separators[0] if separators else ""
    if separator and stripped[-5] != separator:
        raise PersonnummerError("a separator must stand just before the last four digits")
    if separator == "+" and len(digits) == 12:  # noqa: PLR2004
        # SKV 704: '+' stands in for the century a 12-digit number already states.
        raise PersonnummerError("'+' (aged a hundred or more) belongs only to the 10-digit form")

    short = digits[-10:]
    month = int(short[2:4])
    written_day = int(short[4:6])
    _check_month_and_day(month, written_day)
    is_samordning = written_day > _SAMORDNING_OFFSET
    day = written_day - _SAMORDNING_OFFSET if is_samordning else written_day

    if len(digits) == 12:  # noqa: PLR2004
        year = int(digits[:4])
    else:
        year = _infer_year(int(short[:2]), month, day, today=today, centenarian=separator == "+")

    birth_date = _real_date(year, month, day, is_samordning=is_samordning)
    if birth_date > today:
        raise PersonnummerError("birth date is in the future")
    if luhn_check_digit(short[:9]) != int(short[9]):
        raise PersonnummerError("check digit does not match")

    return IdentityNumber(
        normalised=f"{year:04d}{short[2:]}",
        birth_date=birth_date,
        is_samordningsnummer=is_samordning,
    )


def _check_month_and_day(month: int, written_day: int) -> None:
    """Refuse a month or a day that no year has, before the century is known."""
    if not 1 <= month <= 12:  # noqa: PLR2004
        raise PersonnummerError(f"month {month:02d} does not exist")
    if written_day == 0:
        raise PersonnummerError("day 00 does not exist")
    if 31 < written_day <= _SAMORDNING_OFFSET or written_day > 31 + _SAMORDNING_OFFSET:  # noqa: PLR2004
        raise PersonnummerError(
            f"day {written_day:02d} is neither a calendar day (01-31) "
            "nor a samordningsnummer day (61-91)"
        )


def _infer_year(yy: int, month: int, day: int, *, today: date, centenarian: bool) -> int:
    """The century rule of SKV 704 for the 10-digit forms.

    Compared as (year, month, day) tuples, not dates, so that a day which does
    not exist in the candidate year (29 February) does not break the choice; it
    is refused afterwards, in the year actually chosen.
    """
    year = today.year - today.year % 100 + yy
    if (year, month, day) > (today.year, today.month, today.day):
        year -= 100
    if centenarian:
        year -= 100
    return year


def _real_date(year: int, month: int, day: int, *, is_samordning: bool) -> date:
    """The real birth date; the message names the day and month, never the year."""
    suffix = " (samordningsnummer day minus 60)" if is_samordning else ""
    if year < 1:
        raise PersonnummerError("year zero does not exist")
    if day > _DAYS_IN_MONTH[month - 1]:
        raise PersonnummerError(
            f"day {day:02d} does not exist in {_MONTH_NAMES[month - 1]}{suffix}"
        )
    try:
        return date(year, month, day)
    except ValueError as exc:
        # Only 29 February of a non-leap year gets here; the table above caught the rest.
        raise PersonnummerError(f"29 February does not exist in a non-leap year{suffix}") from exc
