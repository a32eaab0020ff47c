"""The envelope and its protected header: what travels over RabbitMQ.

The envelope is JOSE-like (see docs/PROTOCOL.md): ``protected`` is the
base64url of the exact header JSON bytes the sender signed, ``ciphertext`` the
AES-256-GCM encrypted content, ``signature`` the sender's Ed25519 signature.
The broker routes on the header only; it never sees content.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import Field, StringConstraints, model_validator

from schemas._base import WireModel
from schemas.common import (
    AgencyId,
    ChildPseudonym,
    CiphertextB64,
    KeyId,
    MessageId,
    NonceB64,
    ProtectedB64,
    SignatureB64,
    Timestamp,
    WrappedKeyB64,
)

#: Envelope format version carried in every header.
ENVELOPE_VERSION: Final = 1

#: Most recipients one envelope may name.
MAX_RECIPIENTS = 32


class Suite(StrEnum):
    """Algorithm suite identifiers; a new suite is how the algorithms change."""

    #: Ed25519 signatures; HPKE base mode with ML-KEM-768+X25519, HKDF-SHA256
    #: and AES-256-GCM for key wrapping; AES-256-GCM for the content.
    V1 = "backa-v1-mlkem768x25519-hkdfsha256-a256gcm-ed25519"


class Kind(StrEnum):
    """What a message is; each kind has its own content model."""

    REFERRAL = "referral"
    TEAM_INVITATION = "team_invitation"
    TEAM_RESPONSE = "team_response"
    CONCERN_REPORT = "concern_report"  # orosanmälan
    PLAN_UPDATE = "plan_update"
    RECEIPT = "receipt"
    ESCALATION = "escalation"  # broker-originated, metadata only


class Purpose(StrEnum):
    """What the sharing is for; consents name the purposes they allow."""

    REFERRAL = "referral"
    TEAM = "team"
    PLAN = "plan"
    CONCERN = "concern"
    COORDINATION = "coordination"


class Party(WireModel):
    """The sending agency and the key id it signed with."""

    agency: AgencyId
    kid: KeyId


class Recipient(WireModel):
    """One recipient: its agency, its encryption key id and its wrapped content key."""

    agency: AgencyId
    kid: KeyId
    wrapped_key: WrappedKeyB64


#: A legal basis code as named in the policy file (e.g. ``osl-10-28``).
LegalBasisCode = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{1,63}$")]


class ConsentBasis(WireModel):
    """Sharing allowed by a registered consent (OSL 12 kap. 2 §)."""

    type: Literal["consent"]
    consent_id: MessageId


class LegalBasis(WireModel):
    """Sharing allowed without consent by a named legal basis."""

    type: Literal["legal"]
    ref: LegalBasisCode


Basis = Annotated[ConsentBasis | LegalBasis, Field(discriminator="type")]


class ProtectedHeader(WireModel):
    """Everything the broker may read, all of it covered by the signature."""

    v: Literal[1]
    suite: Suite
    id: MessageId
    kind: Kind
    sender: Party
    recipients: list[Recipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    child: ChildPseudonym
    basis: Basis
    purpose: Purpose
    thread: MessageId
    in_reply_to: MessageId | None = None
    created: Timestamp
    expires: Timestamp
    iv: NonceB64

    @model_validator(mode="after")
    def _coherent(self) -> ProtectedHeader:
        if self.expires <= self.created:
            raise ValueError("expires must be after created")
        agencies = [r.agency for r in self.recipients]
        if len(set(agencies)) != len(agencies):
            raise ValueError("a recipient agency is listed twice")
        if self.sender.agency in agencies:
            raise ValueError("the sender cannot be its own recipient")
        return self

    def recipient(self, agency: str, kid: str) -> Recipient | None:
        """The recipient entry for this agency and key id, if listed."""
        for entry in self.recipients:
            if entry.agency == agency and entry.kid == kid:
                return entry
        return None


class Envelope(WireModel):
    """The envelope as it travels: protected header bytes, ciphertext, signature."""

    protected: ProtectedB64
    ciphertext: CiphertextB64
    signature: SignatureB64
