"""The policy seam: may this message go from its sender to its recipients?

``Policy`` is the interface the broker calls for every envelope; the consent
and legal-basis engine (issue #4) implements it. Until then the broker runs
``ExplicitPolicy``: an allow-list read from a TOML file that names exactly
which kinds may go from which agency types to which, and refuses everything
else with ``no_basis``. Pure: no I/O here (the file is parsed by the caller's
text, and time is an argument).
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keys.directory import Directory
from schemas.directory import AgencyType
from schemas.envelope import Kind, ProtectedHeader
from schemas.reasons import ReasonCode


@dataclass(frozen=True, slots=True)
class Decision:
    """Allowed (with the rule and its legal reference) or refused (with a reason code)."""

    allowed: bool
    reason: ReasonCode | None = None
    rule: str | None = None
    legal_ref: str | None = None

    @classmethod
    def allow(cls, rule: str, legal_ref: str | None = None) -> Decision:
        """An allowing decision under ``rule``."""
        return cls(allowed=True, rule=rule, legal_ref=legal_ref)

    @classmethod
    def refuse(cls, reason: ReasonCode) -> Decision:
        """A refusal with a stable reason code."""
        return cls(allowed=False, reason=reason)


class Policy(Protocol):
    """Decides one message. Must be pure and fail closed (refuse when unsure)."""

    def decide(self, header: ProtectedHeader, *, directory: Directory, now: datetime) -> Decision:
        """The decision for ``header`` against the verified ``directory`` at ``now``."""
        ...


class PolicyFileError(ValueError):
    """The policy file is invalid; the message names the rule and the field."""


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    kinds: list[Kind] = Field(min_length=1)
    senders: list[AgencyType] = Field(min_length=1)
    recipients: list[AgencyType] = Field(min_length=1)
    legal_ref: str | None = Field(default=None, max_length=200)
    note: str | None = Field(default=None, max_length=1000)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: list[_Rule] = Field(default_factory=list)


@dataclass(frozen=True)
class ExplicitPolicy:
    """Allow exactly what a rule lists: kind, sender type and every recipient's type."""

    rules: Sequence[_Rule]

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<policy>") -> ExplicitPolicy:
        """Parse an allow-list file; errors name the file, the rule and the field."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyFileError(f"{source}: not valid TOML: {exc}") from exc
        try:
            parsed = _File.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{_where(data, err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise PolicyFileError(f"{source}: {problems}") from exc
        ids = [rule.id for rule in parsed.allow]
        if len(set(ids)) != len(ids):
            raise PolicyFileError(f"{source}: two rules share an id")
        return cls(rules=tuple(parsed.allow))

    def decide(self, header: ProtectedHeader, *, directory: Directory, now: datetime) -> Decision:
        """Allow when one rule covers the kind, the sender's type and every recipient's type."""
        del now
        sender_type = directory.agency_type(header.sender.agency)
        recipient_types = [directory.agency_type(r.agency) for r in header.recipients]
        if sender_type is None or None in recipient_types:
            return Decision.refuse(ReasonCode.NO_BASIS)
        for rule in self.rules:
            if (
                header.kind in rule.kinds
                and sender_type in rule.senders
                and all(t in rule.recipients for t in recipient_types)
            ):
                return Decision.allow(rule.id, rule.legal_ref)
        return Decision.refuse(ReasonCode.NO_BASIS)


def _where(data: object, loc: tuple[int | str, ...]) -> str:
    """``allow[2] (id 'x').kinds`` for an error location, naming the rule by id when known."""
    if len(loc) > 1 and loc[0] == "allow" and isinstance(loc[1], int):
        rules = data.get("allow") if isinstance(data, dict) else None
        rule_id = ""
        if isinstance(rules, list) and loc[1] < len(rules) and isinstance(rules[loc[1]], dict):
            rule_id = f" (id {rules[loc[1]].get('id')!r})"
        rest = ".".join(str(part) for part in loc[2:])
        return f"allow[{loc[1]}]{rule_id}" + (f".{rest}" if rest else "")
    return ".".join(str(part) for part in loc) or "(file)"
