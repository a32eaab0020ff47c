"""The wire contract of Backa broker: pydantic models and their JSON Schema.

Everything that crosses a process boundary is defined here, strictly: unknown
fields are refused, strings and lists are bounded, datetimes are timezone-aware.
This package imports nothing else of the project.
"""

from schemas.common import b64url_decode, b64url_encode
from schemas.directory import AgencyType, DirectoryBundle, DirectoryEntry, SignedDirectoryEntry
from schemas.envelope import (
    ENVELOPE_VERSION,
    Basis,
    ConsentBasis,
    Envelope,
    Kind,
    LegalBasis,
    Party,
    ProtectedHeader,
    Purpose,
    Recipient,
    Suite,
)

__all__ = [
    "ENVELOPE_VERSION",
    "AgencyType",
    "Basis",
    "ConsentBasis",
    "DirectoryBundle",
    "DirectoryEntry",
    "Envelope",
    "Kind",
    "LegalBasis",
    "Party",
    "ProtectedHeader",
    "Purpose",
    "Recipient",
    "SignedDirectoryEntry",
    "Suite",
    "b64url_decode",
    "b64url_encode",
]
