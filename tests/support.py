"""Shared helpers for tests: in-memory key directories and fixed identities.

The in-memory directory implements ``keys.lookup.KeyLookup`` for the pure
envelope tests; the real, signed directory is tested in test_directory.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keys.envelope import OpeningKey, RecipientKeys, SenderKey
from keys.lookup import SealingKey
from keys.material import HpkeKeyPair, ed25519_from_seed, generate_hpke_keypair

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
