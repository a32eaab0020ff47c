"""The seam between the envelope code and the directory: key lookup by id.

The envelope functions never read files or the network; they ask a
``KeyLookup`` (implemented over verified directory entries by
``keys.directory.Directory``, and by plain dicts in tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.hpke import MLKEM768X25519PublicKey


@dataclass(frozen=True, slots=True)
class SealingKey:
    """A recipient's current encryption key: what a sender wraps the content key to."""

    agency: str
    kid: str
    public_key: MLKEM768X25519PublicKey


class KeyLookup(Protocol):
    """Answers which public keys are valid; implementations hold verified entries only."""

    def signing_key(
        self, agency: str, kid: str, *, created: datetime, now: datetime
    ) -> Ed25519PublicKey | None:
        """The sender's verification key for a message created at ``created``.

        None when the key is unknown, was not yet valid or no longer valid for
        sealing at ``created`` (``valid_from <= created < seal_until``), or is
        past its opening overlap at ``now`` (``now < open_until``).
        """
        ...

    def sealing_key(self, agency: str, *, now: datetime) -> SealingKey | None:
        """The agency's encryption key to seal new messages to at ``now``, if any."""
        ...
