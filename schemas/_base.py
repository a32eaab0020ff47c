"""The strict base model every wire-contract model derives from.

Wire models refuse unknown fields, never coerce types silently and are frozen:
a message parsed from the network is a value, not something to patch up.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    """Base of every model on the wire: strict, closed and immutable."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        str_strip_whitespace=False,
        validate_default=True,
        # JSON input arrives as strings for datetimes and enums; strict mode
        # still refuses ints for strings, floats for ints and so on.
        use_enum_values=False,
    )
