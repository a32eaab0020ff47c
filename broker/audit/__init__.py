"""The tamper-evident audit log: an RFC 9162 Merkle tree over metadata-only entries.

The public, stable surface for outside auditors is :func:`verify_inclusion`
and :func:`verify_consistency` (pure, raw 32-byte hashes, one error type),
documented in docs/AUDIT.md. The rest of the package is the broker's own:
the tree over the store (``log``), signed checkpoints (``note``), the
security officer's routes and console.
"""

from __future__ import annotations

from broker.audit.merkle import AuditProofError, verify_consistency, verify_inclusion

__all__ = ["AuditProofError", "verify_consistency", "verify_inclusion"]
