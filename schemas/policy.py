"""The policy file: which sharing a consent or a legal basis allows, as data.

A policy file (``deploy/policy/sweden.toml``) is written for a lawyer to read:
every ``[[rule]]`` names one basis (``consent`` or a legal basis code such as
``osl-10-28``), the kinds of message it allows, which agency types may send
and receive them, optionally the purposes and conditions, and the legal
reference a reviewer checks it against. The ``[consent]`` section holds the
ages and the longest validity that consent registration applies.

These models check the file's shape only. The engine that applies the rules
is ``keys.policy`` (pure code, shared by the broker and the adapters); this
module holds no logic beyond what makes a file self-consistent.

Unlike the wire models the policy models are not strict, so that TOML strings
parse into enums; numbers and free text are strict, so that ``"12"`` or
``true`` is refused where an age belongs.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from schemas.directory import AgencyType
from schemas.envelope import Kind, LegalBasisCode, Purpose

#: The ``basis`` of a rule that applies to messages sent under a registered consent.
CONSENT_BASIS: Final = "consent"


class Condition(StrEnum):
    """A fact about the child that a rule needs and the header cannot show.

    The broker sees only a pseudonym, so it cannot check these; it allows
    with the condition *deferred* and the recipient adapter, which knows the
    personnummer, checks it again before it hands the message over.
    """

    CHILD_UNDER_18 = "child_under_18"


def _not_broker(value: AgencyType) -> AgencyType:
    # The broker carries messages; it never shares information about a child.
    if value is AgencyType.BROKER:
        raise ValueError("the broker is never a sender or recipient of a rule")
    return value


#: An agency type a rule may name: any but the broker.
RuleAgencyType = Annotated[AgencyType, AfterValidator(_not_broker)]

_Text200 = Annotated[str, StringConstraints(min_length=1, max_length=200, strict=True)]
_Text2000 = Annotated[str, StringConstraints(min_length=1, max_length=2000, strict=True)]
_Label = Annotated[str, StringConstraints(min_length=1, max_length=64, strict=True)]


class _PolicyModel(BaseModel):
    """Closed and immutable, but lax about enums so that TOML strings parse."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsentSection(_PolicyModel):
    """The ages and the validity limit that consent registration applies."""

    #: From this age the child's own view counts (OSL 12 kap. 3 §): a child
    #: assessed as mature who declines stops the consent.
    child_view_from_age: int = Field(ge=0, le=17, strict=True)
    #: From this age the child's own consent is required, whatever the guardians say.
    child_consent_required_from_age: int = Field(ge=0, le=17, strict=True)
    #: The longest time, in days, one consent may be valid.
    max_validity_days: int = Field(ge=1, le=3650, strict=True)


class PolicyRule(_PolicyModel):
    """One rule: under ``basis``, these kinds may go from these types to these types."""

    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{1,63}$", strict=True)]
    #: ``consent`` or a legal basis code as senders name it in the header.
    basis: Annotated[LegalBasisCode, StringConstraints(strict=True)]
    kinds: list[Kind] = Field(min_length=1)
    senders: list[RuleAgencyType] = Field(min_length=1)
    recipients: list[RuleAgencyType] = Field(min_length=1)
    #: None allows any purpose; a list allows only those.
    purposes: list[Purpose] | None = Field(default=None, min_length=1)
    conditions: list[Condition] = Field(default_factory=list)
    #: The citation a lawyer checks the rule against.
    legal_ref: _Text200
    description: _Text2000

    @field_validator("kinds", "senders", "recipients", "purposes", "conditions")
    @classmethod
    def _no_repeats(cls, values: list[str] | None) -> list[str] | None:
        # A repeated entry is harmless to the engine but confusing to a reviewer.
        if values is not None and len(set(values)) != len(values):
            raise ValueError("lists the same value twice")
        return values


class PolicyFile(_PolicyModel):
    """A whole policy file: its version, jurisdiction, consent section and rules."""

    version: _Label
    jurisdiction: _Label
    consent: ConsentSection
    #: In TOML, each rule is one ``[[rule]]`` table; rules are tried in file order.
    rules: list[PolicyRule] = Field(alias="rule")

    @model_validator(mode="after")
    def _coherent(self) -> PolicyFile:
        seen: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.id in seen:
                raise ValueError(
                    f"rule[{index}] (id {rule.id!r}).id: the id is already used by "
                    f"rule[{seen[rule.id]}]"
                )
            seen[rule.id] = index
        section = self.consent
        if section.child_view_from_age > section.child_consent_required_from_age:
            raise ValueError(
                "consent.child_view_from_age: must not be above child_consent_required_from_age"
            )
        return self
