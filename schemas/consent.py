"""Consents and their revocations, as registered with the broker over HTTP.

A consent waives secrecy between agencies (OSL 12 kap. 2 §). The record names
the child and its guardians by pseudonym only, which agencies may share, for
which purposes and for how long, and the digest of the signed consent document
the registering agency keeps. It is signed by the registering agency and
revocable at any time with effect forward.

These models check shape and internal coherence only. Whether the right people
consented (every custodial guardian; the child's own view by age and maturity,
OSL 12 kap. 3 §) is the policy engine's decision, never the schema's, so that
the legal rules live in one place a lawyer can read.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import Discriminator, Field, Tag, model_validator

from schemas._base import WireModel
from schemas.common import (
    AgencyId,
    ChildPseudonym,
    KeyId,
    MessageId,
    PayloadB64,
    Sha256Hex,
    SignatureB64,
    StaffId,
    Timestamp,
)
from schemas.directory import AgencyType
from schemas.envelope import Purpose

#: Most agencies or agency types one consent may name.
MAX_CONSENT_PARTIES = 32

#: Most guardians one consent may name (two parents and, rarely, two more
#: appointed guardians).
MAX_GUARDIANS = 4


class Guardian(WireModel):
    """A guardian who consented, by pseudonym (computed as the child's is)."""

    pseudonym: ChildPseudonym
    custodial: bool


class ChildView(WireModel):
    """The child's own view, recorded so that policy can weigh it (OSL 12 kap. 3 §)."""

    consented: bool
    age: int = Field(ge=0, le=17)
    assessed_mature: bool


class Registrar(WireModel):
    """The agency, its signing key id and the member of staff who registered or revoked.

    The key id names the directory entry whose key signed the record, so a
    verifier needs nothing but the record and the directory.
    """

    agency: AgencyId
    kid: KeyId
    staff_id: StaffId


class AgencyRef(WireModel):
    """A consent party named as one agency."""

    agency: AgencyId


class AgencyTypeRef(WireModel):
    """A consent party named as every agency of one type in the area."""

    agency_type: AgencyType


def _party_ref_tag(value: Any) -> str | None:
    # The two shapes differ by their only key, so the key is the tag; this
    # gives one clear error instead of pydantic trying each branch in turn.
    if isinstance(value, dict):
        if "agency" in value:
            return "agency"
        if "agency_type" in value:
            return "agency_type"
        return None
    if isinstance(value, AgencyRef):
        return "agency"
    if isinstance(value, AgencyTypeRef):
        return "agency_type"
    return None


#: A consent party: one agency (``{"agency": ...}``) or every agency of a type
#: (``{"agency_type": ...}``).
PartyRef = Annotated[
    Annotated[AgencyRef, Tag("agency")] | Annotated[AgencyTypeRef, Tag("agency_type")],
    Discriminator(
        _party_ref_tag,
        custom_error_type="party_ref",
        custom_error_message='a party is {"agency": ...} or {"agency_type": ...}',
    ),
]


class ConsentRecord(WireModel):
    """One registered consent: who may share what about which child, and until when."""

    id: MessageId
    child: ChildPseudonym
    guardians: list[Guardian] = Field(min_length=1, max_length=MAX_GUARDIANS)
    joint_custody: bool
    child_view: ChildView | None = None
    registered_by: Registrar
    parties: list[PartyRef] = Field(min_length=2, max_length=MAX_CONSENT_PARTIES)
    purposes: list[Purpose] = Field(min_length=1, max_length=len(Purpose))
    valid_from: Timestamp
    valid_until: Timestamp
    document_digest: Sha256Hex

    @model_validator(mode="after")
    def _coherent(self) -> ConsentRecord:
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        pseudonyms = [g.pseudonym for g in self.guardians]
        if len(set(pseudonyms)) != len(pseudonyms):
            raise ValueError("a guardian is listed twice")
        if self.child in pseudonyms:
            raise ValueError("the child cannot be its own guardian")
        if len(set(self.parties)) != len(self.parties):
            raise ValueError("a party is listed twice")
        if len(set(self.purposes)) != len(self.purposes):
            raise ValueError("a purpose is listed twice")
        return self


class RevocationReason(StrEnum):
    """Why a consent was revoked; a closed list, because the broker reads it."""

    GUARDIAN_WITHDREW = "guardian_withdrew"
    CHILD_WITHDREW = "child_withdrew"
    REGISTERED_IN_ERROR = "registered_in_error"
    OTHER = "other"


class ConsentRevocation(WireModel):
    """The revocation of one consent, with effect from ``revoked_at`` forward."""

    consent_id: MessageId
    revoked_at: Timestamp
    reason: RevocationReason
    by: Registrar


class SignedConsent(WireModel):
    """A consent record's exact payload bytes and the registering agency's signature."""

    payload: PayloadB64
    signature: SignatureB64


class SignedRevocation(WireModel):
    """A revocation's exact payload bytes and the revoking agency's signature."""

    payload: PayloadB64
    signature: SignatureB64
