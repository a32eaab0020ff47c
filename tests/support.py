"""Shared helpers for tests: in-memory key directories and fixed identities.

The in-memory directory implements ``keys.lookup.KeyLookup`` for the pure
envelope tests; the real, signed directory is tested in test_directory.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keys.directory import Directory, sign_entry
from keys.envelope import OpeningKey, RecipientKeys, SenderKey
from keys.lookup import SealingKey
from keys.material import (
    HpkeKeyPair,
    ed25519_from_seed,
    ed25519_public_bytes,
    generate_hpke_keypair,
)
from schemas.common import b64url_encode
from schemas.directory import AgencyType, DirectoryBundle, DirectoryEntry

T0 = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)


def det_bytes(label: str, n: int) -> bytes:
    """Deterministic test bytes derived from a label (never use outside tests)."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
        counter += 1
    return out[:n]


@dataclass
class Agency:
    """A test agency with one signing key and one HPKE key."""

    agency: str
    kid: str
    signing: Ed25519PrivateKey
    hpke: HpkeKeyPair

    @classmethod
    def make(cls, agency: str, kid: str = "k2026-0001") -> Agency:
        """Deterministic keys for ``agency`` so failures reproduce."""
        return cls(
            agency=agency,
            kid=kid,
            signing=ed25519_from_seed(det_bytes(f"{agency}/{kid}/sign", 32)),
            hpke=generate_hpke_keypair(det_bytes(f"{agency}/{kid}/hpke", 32)),
        )

    @property
    def sender(self) -> SenderKey:
        """This agency as a sender."""
        return SenderKey(agency=self.agency, kid=self.kid, private_key=self.signing)

    @property
    def sealing(self) -> SealingKey:
        """This agency as a recipient to seal to."""
        return SealingKey(agency=self.agency, kid=self.kid, public_key=self.hpke.public_key)

    @property
    def recipient(self) -> RecipientKeys:
        """This agency's private keys for opening."""
        return RecipientKeys(
            agency=self.agency, keys={self.kid: OpeningKey(private_key=self.hpke.private_key)}
        )


@dataclass
class MemoryDirectory:
    """A KeyLookup over plain dicts; no area-root signatures (those are tested elsewhere)."""

    signing: dict[tuple[str, str], Ed25519PublicKey] = field(default_factory=dict)
    sealing: dict[str, SealingKey] = field(default_factory=dict)

    @classmethod
    def of(cls, *agencies: Agency) -> MemoryDirectory:
        """A directory that knows every given agency's current keys."""
        directory = cls()
        for a in agencies:
            directory.signing[(a.agency, a.kid)] = a.signing.public_key()
            directory.sealing[a.agency] = a.sealing
        return directory

    def signing_key(
        self, agency: str, kid: str, *, created: datetime, now: datetime
    ) -> Ed25519PublicKey | None:
        """The key for (agency, kid), ignoring validity windows."""
        del created, now
        return self.signing.get((agency, kid))

    def sealing_key(self, agency: str, *, now: datetime) -> SealingKey | None:
        """The agency's current sealing key."""
        del now
        return self.sealing.get(agency)


CHILD = hashlib.sha256(b"test child").hexdigest()
EXPIRES = T0 + timedelta(days=30)


ROOT = ed25519_from_seed(det_bytes("test-area-root", 32))
TEST_AREA = "test-area"


def signed_directory(
    agencies: list[tuple[Agency, AgencyType]], *, at: datetime = T0 - timedelta(days=1)
) -> Directory:
    """A real, root-signed Directory of the given agencies, their keys valid from ``at``."""
    entries = []
    for agency, kind in agencies:
        entry = DirectoryEntry.model_validate_json(
            json.dumps(
                {
                    "area": TEST_AREA,
                    "agency": agency.agency,
                    "name": agency.agency,
                    "agency_type": kind.value,
                    "kid": agency.kid,
                    "signing_key": b64url_encode(ed25519_public_bytes(agency.signing.public_key())),
                    "encryption_key": (
                        None
                        if kind is AgencyType.BROKER
                        else b64url_encode(agency.hpke.public_bytes)
                    ),
                    "valid_from": at.isoformat(),
                    "issued_at": at.isoformat(),
                }
            )
        )
        entries.append(sign_entry(entry, ROOT))
    bundle = DirectoryBundle(
        area=TEST_AREA,
        root_key=b64url_encode(ed25519_public_bytes(ROOT.public_key())),
        entries=entries,
    )
    return Directory(bundle, ROOT.public_key())
