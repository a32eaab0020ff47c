"""Child pseudonyms: HMAC-SHA256 under the area pseudonym key, never a plain hash.

Every message names its child by a pseudonym, so that the broker can check
consent, route and audit per child without ever holding a personnummer. The
rule (docs/PROTOCOL.md, "Child pseudonym") is::

    pseudonym = lowercase hex of HMAC-SHA256(area pseudonym key,
                                             b"backa-child-pseudonym-v1\\x00" + normalised)

where ``normalised`` is the 12-digit ``YYYYMMDDNNNN`` of ``keys.personnummer``
in ASCII (a samordningsnummer keeps its day+60, so it never collides with a
personnummer). The result is 64 lowercase hex digits, the ``ChildPseudonym``
pattern of ``schemas.common``.

Why a keyed MAC and not a hash: the input space is tiny. A birth date and a
three-digit serial fix the number (the last digit is a check digit), so one
birth year holds about 365,000 personnummer and as many samordningsnummer,
and all children under 18 about 13 million numbers in all. A plain SHA-256 of
that space is inverted in seconds on a laptop, and a pseudonym that can be
inverted is just a personnummer in disguise (GDPR art. 4.5 requires that the
additional information needed to re-identify be kept separately). Under HMAC
the same search needs the key.

Who holds the key: the adapters of one area, which see personnummer anyway in
their agency systems. The broker never holds it and must never be given it:
the broker compares pseudonyms for equality, which needs no key, and a broker
that held the key could re-identify every child in its audit log. The label
``-v1`` and the NUL separator keep this use of the key apart from any other,
and let a future rule change the pseudonym without ambiguity.

What this module must never do: let the key or the number reach a ``repr``,
``str`` or log line.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import date

from keys.personnummer import IdentityNumber, parse_identity_number

__all__ = [
    "MIN_KEY_BYTES",
    "PSEUDONYM_LABEL",
    "PseudonymKey",
    "child_pseudonym",
    "pseudonym_from_text",
]

#: Domain separation for the HMAC input; part of the wire contract.
PSEUDONYM_LABEL = b"backa-child-pseudonym-v1\x00"

#: Shortest key accepted: the full HMAC-SHA256 security level (RFC 2104 §3).
MIN_KEY_BYTES = 32


# eq=False: keys are never compared in normal use, and an ``==`` on secret bytes
# would be a timing side channel; identity is all the equality a key needs.
@dataclass(frozen=True, slots=True, eq=False)
class PseudonymKey:
    """The area pseudonym key: at least 32 secret random bytes; ``repr`` hides them."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise ValueError(
                f"a pseudonym key needs at least {MIN_KEY_BYTES} bytes, got {len(self.secret)}"
            )

    def __repr__(self) -> str:
        return "PseudonymKey(<secret>)"

    def __str__(self) -> str:
        return "PseudonymKey(<secret>)"


def child_pseudonym(number: IdentityNumber, key: PseudonymKey) -> str:
    """The child's pseudonym: 64 lowercase hex digits, as in ``schemas.common.ChildPseudonym``."""
    message = PSEUDONYM_LABEL + number.normalised.encode("ascii")
    return hmac.new(key.secret, message, hashlib.sha256).hexdigest()


def pseudonym_from_text(text: str, key: PseudonymKey, *, today: date) -> str:
    """Parse a personnummer or samordningsnummer and return its pseudonym.

    Raises ``PersonnummerError`` (never showing the digits) if the text is not
    a valid number.
    """
    return child_pseudonym(parse_identity_number(text, today=today), key)
