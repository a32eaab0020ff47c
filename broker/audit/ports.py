"""What the security officer's HTTP routes and web console need from the audit log.

``broker.audit.log.AuditLog`` implements :class:`AuditReader` over the store;
the routes (``broker.audit.http``) and the console (``broker.audit.console``)
only call these methods. Every method that reads the log takes the officer's
identity and appends an ``audit_read`` entry naming the officer and the
query before it answers (patient data law: who looked at the log is itself
logged), so no page or route can read without leaving a trace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from schemas.audit import AuditEntry, AuditEvent
from schemas.envelope import Kind

#: Most entries one search page returns.
MAX_PAGE = 500


class AuditLookupError(LookupError):
    """No entry at that index, or a size beyond the log (HTTP 404)."""


class AuditRangeError(ValueError):
    """A size or range that makes no sense, e.g. size1 > size2 (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """A search: every given field must match; None matches anything."""

    child: str | None = None
    agency: str | None = None  # the sender or any recipient
    kind: Kind | None = None
    event: AuditEvent | None = None  # the outcome: accepted, rejected, receipt, …
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def describe(self) -> str:
        """The query as logged in the audit_read entry (filters only, no content)."""
        parts = [
            f"{name}={value.isoformat() if isinstance(value, datetime) else value}"
            for name, value in (
                ("child", self.child),
                ("agency", self.agency),
                ("kind", self.kind.value if self.kind else None),
                ("event", self.event.value if self.event else None),
                ("since", self.since),
                ("until", self.until),
            )
            if value is not None
        ]
        return "search " + (" ".join(parts) if parts else "(all)")


@dataclass(frozen=True, slots=True)
class LoggedEntry:
    """One entry with its position in the log and its leaf hash (SHA-256(0x00 ‖ bytes))."""

    index: int
    entry: AuditEntry
    canonical: bytes  # the exact bytes hashed into the tree
    leaf_hash: bytes


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of search results, oldest first; ``next_after`` continues it."""

    entries: list[LoggedEntry]
    next_after: int | None
    log_size: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed checkpoint: the log's origin, size and root, as a C2SP signed note."""

    origin: str
    size: int
    root: bytes
    note: str  # the whole signed note, body and signature lines
    at: datetime


class AuditReader(Protocol):
    """The audit log as a security officer reads it; each call is itself logged."""

    async def search(
        self, query: AuditFilter, *, after: int | None, limit: int, officer: str
    ) -> SearchPage:
        """Entries matching ``query`` with index > ``after``, oldest first, at most ``limit``."""
        ...

    async def entry(self, index: int, *, officer: str) -> LoggedEntry:
        """One entry; raises AuditLookupError."""
        ...

    async def inclusion_proof(self, index: int, size: int, *, officer: str) -> list[bytes]:
        """The RFC 9162 inclusion proof of entry ``index`` in the tree of ``size``."""
        ...

    async def consistency_proof(self, size1: int, size2: int, *, officer: str) -> list[bytes]:
        """The RFC 9162 consistency proof between the trees of ``size1`` and ``size2``."""
        ...

    async def checkpoint(self, *, officer: str, fresh: bool = False) -> Checkpoint:
        """The latest signed checkpoint; ``fresh`` signs one of the current size first."""
        ...

    def export(self, start: int, end: int, *, officer: str) -> AsyncIterator[bytes]:
        """Entries [start, end) as JSON lines (docs/AUDIT.md), each line ending in a newline."""
        ...

    async def refused(self, *, actor: str, query: str) -> None:
        """Log an attempt to read the audit by someone who may not (the 403 is logged too)."""
        ...
