"""Directory entries: who an agency is and which keys it uses.

Each entry is certified by the area root (Ed25519) over its exact payload
bytes, so an adapter that pins the area root can verify any entry it is handed
and a compromised broker cannot substitute a key.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from schemas._base import WireModel
from schemas.common import (
    AgencyId,
    AreaId,
    Ed25519PublicB64,
    HpkePublicB64,
    KeyId,
    PayloadB64,
    ShortText,
    SignatureB64,
    Timestamp,
)


class AgencyType(StrEnum):
    """The kinds of agency that take part in a Backa barnet area."""

    PRESCHOOL = "preschool"
    SCHOOL = "school"
    SOCIAL_SERVICES = "social_services"
    CHILD_HEALTH = "child_health"  # BVC
    MATERNAL_CARE = "maternal_care"  # MVC
    YOUTH_CLINIC = "youth_clinic"  # ungdomsmottagning
    PRIMARY_CARE = "primary_care"  # vårdcentral
    BUP = "bup"  # barn- och ungdomspsykiatri
    HABILITATION = "habilitation"
    POLICE = "police"
    BROKER = "broker"  # the area's broker: signs receipts and audit checkpoints


class DirectoryEntry(WireModel):
    """One key pair of one agency (or of the broker), as certified by the area root.

    ``seal_until`` ends the key's use for new messages (set on rotation);
    ``open_until`` ends its use for anything, after the rotation overlap.
    """

    area: AreaId
    agency: AgencyId
    name: ShortText
    agency_type: AgencyType
    municipality: ShortText | None = None
    kid: KeyId
    signing_key: Ed25519PublicB64
    encryption_key: HpkePublicB64 | None
    valid_from: Timestamp
    seal_until: Timestamp | None = None
    open_until: Timestamp | None = None
    issued_at: Timestamp

    @model_validator(mode="after")
    def _coherent(self) -> DirectoryEntry:
        if self.agency_type is not AgencyType.BROKER and self.encryption_key is None:
            raise ValueError("an agency entry must carry an encryption key")
        if self.seal_until is not None and self.seal_until < self.valid_from:
            raise ValueError("seal_until is before valid_from")
        if self.open_until is not None and self.seal_until is None:
            raise ValueError("open_until is only set together with seal_until")
        if (
            self.open_until is not None
            and self.seal_until is not None
            and self.open_until < self.seal_until
        ):
            raise ValueError("open_until is before seal_until")
        return self


class SignedDirectoryEntry(WireModel):
    """A directory entry's exact payload bytes and the area root's signature."""

    payload: PayloadB64
    signature: SignatureB64


class DirectoryBundle(WireModel):
    """All signed entries of one area, as distributed to the broker and adapters."""

    area: AreaId
    root_key: Ed25519PublicB64
    entries: list[SignedDirectoryEntry] = Field(max_length=100_000)
