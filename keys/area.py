"""The area description: which agencies and officers make up one Backa barnet area.

An area file (TOML, e.g. ``deploy/areas/demo.toml``) is what ``backa keys init``
turns into keys, certificates and a signed directory. It holds names and
roles only, never a key and never anything about a child. Every mistake in it
is an :class:`~keys.errors.AreaConfigError` whose one-line message names the
file and the field path (``agency[2].type``, counting from 0), so that whoever
edits the file can fix it without reading this code.

This module must never guess: unknown keys, duplicate ids and values of the
wrong type are refused rather than ignored or coerced.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from keys.errors import AreaConfigError
from schemas.common import AgencyId, AreaId, LongText, ShortText
from schemas.directory import AgencyType

__all__ = [
    "BROKER_ID",
    "AgencyConfig",
    "AreaConfig",
    "AreaSection",
    "OfficerConfig",
    "load_area",
    "parse_area",
]

#: The directory id of the area's broker; no agency may take it.
BROKER_ID = "broker"

#: Agency types an area file may name: every type except the broker itself.
AGENCY_TYPES: tuple[AgencyType, ...] = tuple(t for t in AgencyType if t is not AgencyType.BROKER)

# The same rule as ca._DNS_LABEL: checked here too so a typo is reported with its field.
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_MAX_HOSTNAME = 253  # RFC 1035
_MAX_QUOTED = 80  # longer bad values are not repeated in an error message


def _agency_type(value: object) -> AgencyType:
    if isinstance(value, AgencyType) and value is not AgencyType.BROKER:
        return value
    allowed = ", ".join(t.value for t in AGENCY_TYPES)
    if isinstance(value, str):
        if value in {t.value for t in AGENCY_TYPES}:
            return AgencyType(value)
        raise PydanticCustomError(
            "agency_type",
            "{value} is not one of {allowed}",
            {"value": repr(value), "allowed": allowed},
        )
    raise PydanticCustomError(
        "agency_type", "must be a string, one of {allowed}", {"allowed": allowed}
    )


#: An agency type as written in an area file.
AgencyTypeName = Annotated[AgencyType, BeforeValidator(_agency_type)]

#: An officer id: also a directory name under ``officers/``, so no dots or slashes.
OfficerId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]


class _AreaModel(BaseModel):
    # strict: a TOML file already has types, so "30" for a number of days is a mistake.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class AreaSection(_AreaModel):
    """The ``[area]`` table: the area's identity and its key and broker settings."""

    id: AreaId
    name: ShortText
    rotation_overlap_days: int = Field(default=30, ge=0, le=3650)
    key_validity_days: int = Field(default=730, ge=1, le=3650)
    broker_hostnames: list[str] = Field(default_factory=lambda: ["localhost"], max_length=64)
    broker_ips: list[str] = Field(default_factory=lambda: ["127.0.0.1"], max_length=64)

    @field_validator("broker_hostnames")
    @classmethod
    def _hostnames(cls, value: list[str]) -> list[str]:
        for host in value:
            labels = host.rstrip(".").split(".")
            if len(host) > _MAX_HOSTNAME or not all(_DNS_LABEL.fullmatch(x) for x in labels):
                raise ValueError(f"{host!r} is not a lower-case DNS name (A-labels only)")
        return value

    @field_validator("broker_ips")
    @classmethod
    def _ips(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                ipaddress.ip_address(text)
            except ValueError as exc:
                raise ValueError(f"{text!r} is not an IP address") from exc
        return value

    @model_validator(mode="after")
    def _reachable(self) -> AreaSection:
        if not self.broker_hostnames and not self.broker_ips:
            raise ValueError("broker_hostnames and broker_ips cannot both be empty")
        return self


class AgencyConfig(_AreaModel):
    """One ``[[agency]]`` table: an agency that sends and receives messages."""

    id: AgencyId
    name: ShortText
    type: AgencyTypeName
    municipality: ShortText
    #: Backa barnet roles present at the agency, e.g. "stödsamordnare"; informative only.
    roles: list[ShortText] = Field(default_factory=list, max_length=32)
    notes: LongText | None = None

    @field_validator("id")
    @classmethod
    def _not_broker(cls, value: str) -> str:
        if value == BROKER_ID:
            raise ValueError(f"{BROKER_ID!r} is reserved for the area's broker")
        return value


class OfficerConfig(_AreaModel):
    """One ``[[officer]]`` table: a person who gets a client certificate for the broker API."""

    id: OfficerId
    name: ShortText
    role: Literal["security_officer", "operator"]


class AreaConfig(_AreaModel):
    """A whole area file: the area, its agencies and its officers."""

    area: AreaSection
    agency: list[AgencyConfig] = Field(min_length=1, max_length=10_000)
    officer: list[OfficerConfig] = Field(default_factory=list, max_length=1_000)

    # The exact text the config was parsed from, so init can copy it byte for byte
    # (comments included); None when built in code.
    _source_text: str | None = PrivateAttr(default=None)

    @property
    def agencies(self) -> list[AgencyConfig]:
        """The ``[[agency]]`` tables (the field is named as the TOML key)."""
        return self.agency

    @property
    def officers(self) -> list[OfficerConfig]:
        """The ``[[officer]]`` tables."""
        return self.officer

    def agency_by_id(self, agency: str) -> AgencyConfig | None:
        """The agency with this id, if the area has one."""
        return next((a for a in self.agency if a.id == agency), None)

    def to_toml(self) -> str:
        """The area file: the text it was loaded from, or a TOML rendering of this config."""
        if self._source_text is not None:
            return self._source_text
        return _render_toml(self)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, except that TOML also forbids a raw DEL.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def _toml_table(header: str, values: dict[str, Any]) -> str:
    lines = [header]
    lines += [f"{key} = {_toml_value(v)}" for key, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def _render_toml(config: AreaConfig) -> str:
    data = config.model_dump(mode="json")
    tables = [_toml_table("[area]", data["area"])]
    tables += [_toml_table("[[agency]]", a) for a in data["agency"]]
    tables += [_toml_table("[[officer]]", o) for o in data["officer"]]
    return "\n".join(tables)


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    # The bad value helps whoever edits the file; custom errors already quote it.
    if kind != "agency_type" and isinstance(value, str | int) and len(repr(value)) <= _MAX_QUOTED:
        message += f" (got {value!r})"
    return message


def _duplicates(table: str, ids: list[str]) -> list[str]:
    problems = []
    first: dict[str, int] = {}
    for index, item in enumerate(ids):
        if item in first:
            earlier = f"{table}[{first[item]}]"
            problems.append(
                f"{table}[{index}].id: duplicate id {item!r} (already used by {earlier})"
            )
        else:
            first[item] = index
    return problems


def parse_area(text: str, *, source: str = "<area>") -> AreaConfig:
    """Parse the text of an area file; ``source`` names it in error messages."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AreaConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        config = AreaConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{_field_path(e['loc'])}: {_describe(e)}" for e in exc.errors()]
        raise AreaConfigError(f"{source}: " + "; ".join(problems)) from exc
    problems = _duplicates("agency", [a.id for a in config.agency])
    problems += _duplicates("officer", [o.id for o in config.officer])
    if problems:
        raise AreaConfigError(f"{source}: " + "; ".join(problems))
    config._source_text = text
    return config


def load_area(path: Path) -> AreaConfig:
    """Read and validate an area file; every problem is an AreaConfigError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AreaConfigError(f"{path}: cannot read the area file: {exc}") from exc
    return parse_area(text, source=str(path))
