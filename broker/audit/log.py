"""The audit log over the store: search, proofs, signed checkpoints, export.

Appending happens in ``broker.store.append_audit``, inside the transaction
that writes what an entry describes. This module reads: it implements
``broker.audit.ports.AuditReader`` for the security officer's routes and
console, and every read appends an ``audit_read`` entry (who, what query,
when) in the same transaction as the read, so no read leaves no trace.

Proofs and roots fetch exactly the stored subtree hashes they need in one
query (``broker.audit.merkle.needed_nodes_*``): O(log n) rows, however long
the log.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from datetime import UTC, datetime

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.audit import merkle, note
from broker.audit.entry import parse_canonical, read_entry
from broker.audit.ports import (
    MAX_PAGE,
    AuditFilter,
    AuditLookupError,
    AuditRangeError,
    Checkpoint,
    LoggedEntry,
    SearchPage,
)
from broker.store import (
    AUDIT_CHECKPOINTS,
    AUDIT_ENTRIES,
    AUDIT_NODES,
    AUDIT_PARTIES,
    StoreUnavailable,
    append_audit,
    read_nodes,
)
from keys.envelope import SenderKey

_log = structlog.get_logger("broker.audit")

#: Rows per query when streaming an export.
EXPORT_CHUNK = 2_000


def _utc_now() -> datetime:
    return datetime.now(UTC)


def origin_for(area: str) -> str:
    """The checkpoint origin of an area's audit log (C2SP tlog-checkpoint's first line)."""
    return f"backa.audit/{area}"


async def log_size(conn: AsyncConnection) -> int:
    """How many entries the log holds."""
    size = await conn.scalar(sa.select(sa.func.coalesce(sa.func.max(AUDIT_ENTRIES.c.seq) + 1, 0)))
    return int(size or 0)


def _getter(nodes: dict[tuple[int, int], bytes]) -> Callable[[int, int], bytes]:
    def get(level: int, index: int) -> bytes:
        return nodes[(level, index)]

    return get


async def tree_root(conn: AsyncConnection, size: int) -> bytes:
    """The RFC 9162 root of the first ``size`` entries."""
    nodes = await read_nodes(conn, merkle.needed_nodes_for_root(size))
    return merkle.root(size, _getter(nodes))


class AuditLog:
    """``AuditReader`` over the broker's store, signing checkpoints with the broker key."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        signer: SenderKey,
        origin: str,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._engine = engine
        self._signer = signer
        self.origin = origin
        self._clock = clock

    @property
    def verifier(self) -> str:
        """The vkey that verifies this log's checkpoints (C2SP signed-note verifier key)."""
        return note.vkey(self.origin, self._signer.private_key.public_key())

    async def _record_read(self, conn: AsyncConnection, officer: str, query: str) -> None:
        await append_audit(conn, [read_entry(actor=officer, query=query, at=self._clock())])

    async def size(self) -> int:
        """How many entries the log holds (not itself logged: it reveals no entry)."""
        async with self._engine.connect() as conn:
            return await log_size(conn)

    async def search(
        self, query: AuditFilter, *, after: int | None, limit: int, officer: str
    ) -> SearchPage:
        """Entries matching ``query`` with index > ``after``, oldest first."""
        limit = max(1, min(limit, MAX_PAGE))
        statement = sa.select(AUDIT_ENTRIES.c.seq, AUDIT_ENTRIES.c.entry, AUDIT_ENTRIES.c.leaf_hash)
        if query.agency is not None:
            statement = statement.join(
                AUDIT_PARTIES,
                sa.and_(
                    AUDIT_PARTIES.c.seq == AUDIT_ENTRIES.c.seq,
                    AUDIT_PARTIES.c.agency == query.agency,
                ),
            )
        conditions = []
        if query.child is not None:
            conditions.append(AUDIT_ENTRIES.c.child == query.child)
        if query.kind is not None:
            conditions.append(AUDIT_ENTRIES.c.kind == query.kind.value)
        if query.event is not None:
            conditions.append(AUDIT_ENTRIES.c.event == query.event.value)
        if query.since is not None:
            conditions.append(AUDIT_ENTRIES.c.at >= query.since)
        if query.until is not None:
            conditions.append(AUDIT_ENTRIES.c.at < query.until)
        if after is not None:
            conditions.append(AUDIT_ENTRIES.c.seq > after)
        statement = statement.where(*conditions).order_by(AUDIT_ENTRIES.c.seq).limit(limit + 1)
        async with self._engine.begin() as conn:
            size = await log_size(conn)
            rows = (await conn.execute(statement)).all()
            await self._record_read(conn, officer, query.describe())
        entries = [
            LoggedEntry(
                index=int(r.seq),
                entry=parse_canonical(bytes(r.entry)),
                canonical=bytes(r.entry),
                leaf_hash=bytes(r.leaf_hash),
            )
            for r in rows[:limit]
        ]
        next_after = entries[-1].index if len(rows) > limit else None
        return SearchPage(entries=entries, next_after=next_after, log_size=size)

    async def entry(self, index: int, *, officer: str) -> LoggedEntry:
        """One entry; raises AuditLookupError."""
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        AUDIT_ENTRIES.c.seq, AUDIT_ENTRIES.c.entry, AUDIT_ENTRIES.c.leaf_hash
                    ).where(AUDIT_ENTRIES.c.seq == index)
                )
            ).first()
            await self._record_read(conn, officer, f"entry {index}")
        if row is None:
            raise AuditLookupError(f"no entry {index}")
        return LoggedEntry(
            index=index,
            entry=parse_canonical(bytes(row.entry)),
            canonical=bytes(row.entry),
            leaf_hash=bytes(row.leaf_hash),
        )

    async def inclusion_proof(self, index: int, size: int, *, officer: str) -> list[bytes]:
        """The RFC 9162 inclusion proof of ``index`` in the tree of ``size``."""
        if not 0 <= index < size:
            raise AuditRangeError("index must be at least 0 and below size")
        async with self._engine.begin() as conn:
            if size > await log_size(conn):
                raise AuditLookupError("size is beyond the log")
            nodes = await read_nodes(conn, merkle.needed_nodes_for_inclusion(index, size))
            await self._record_read(conn, officer, f"inclusion {index} in {size}")
        return merkle.inclusion_proof(index, size, _getter(nodes))

    async def consistency_proof(self, size1: int, size2: int, *, officer: str) -> list[bytes]:
        """The RFC 9162 consistency proof between the trees of ``size1`` and ``size2``."""
        if not 0 <= size1 <= size2:
            raise AuditRangeError("sizes must satisfy 0 <= size1 <= size2")
        async with self._engine.begin() as conn:
            if size2 > await log_size(conn):
                raise AuditLookupError("size2 is beyond the log")
            nodes = await read_nodes(conn, merkle.needed_nodes_for_consistency(size1, size2))
            await self._record_read(conn, officer, f"consistency {size1} {size2}")
        return merkle.consistency_proof(size1, size2, _getter(nodes))

    async def checkpoint(self, *, officer: str, fresh: bool = False) -> Checkpoint:
        """The latest signed checkpoint; ``fresh`` (or none yet) signs one of the current size."""
        if fresh:
            await self.sign_checkpoint()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(AUDIT_CHECKPOINTS).order_by(AUDIT_CHECKPOINTS.c.size.desc()).limit(1)
                )
            ).first()
            await self._record_read(conn, officer, "checkpoint" + (" fresh" if fresh else ""))
        if row is None:
            return await self.sign_checkpoint()
        return Checkpoint(
            origin=self.origin, size=int(row.size), root=bytes(row.root), note=row.note, at=row.at
        )

    async def sign_checkpoint(self) -> Checkpoint:
        """Sign a checkpoint of the log as it is now (once per size; a repeat returns the first)."""
        async with self._engine.begin() as conn:
            size = await log_size(conn)
            existing = (
                await conn.execute(
                    sa.select(AUDIT_CHECKPOINTS).where(AUDIT_CHECKPOINTS.c.size == size)
                )
            ).first()
            if existing is not None:
                return Checkpoint(
                    origin=self.origin,
                    size=size,
                    root=bytes(existing.root),
                    note=existing.note,
                    at=existing.at,
                )
            root = await tree_root(conn, size)
            text = note.sign_checkpoint(
                self.origin, size, root, name=self.origin, key=self._signer.private_key
            )
            at = self._clock()
            await conn.execute(
                sa.insert(AUDIT_CHECKPOINTS).values(size=size, root=root, note=text, at=at)
            )
        _log.info("audit_checkpoint", size=size)
        return Checkpoint(origin=self.origin, size=size, root=root, note=text, at=at)

    async def export(self, start: int, end: int, *, officer: str) -> AsyncIterator[bytes]:
        """Entries [start, end) as JSON lines: index, the tree's leaf hash, the entry."""
        if not 0 <= start <= end:
            raise AuditRangeError("the range must satisfy 0 <= start <= end")
        async with self._engine.begin() as conn:
            if end > await log_size(conn):
                raise AuditLookupError("end is beyond the log")
            await self._record_read(conn, officer, f"export {start} {end}")
        position = start
        while position < end:
            stop = min(end, position + EXPORT_CHUNK)
            async with self._engine.connect() as conn:
                rows = await conn.execute(
                    sa.select(AUDIT_ENTRIES.c.seq, AUDIT_ENTRIES.c.entry, AUDIT_NODES.c.hash)
                    .join(
                        AUDIT_NODES,
                        sa.and_(AUDIT_NODES.c.level == 0, AUDIT_NODES.c.idx == AUDIT_ENTRIES.c.seq),
                        isouter=True,
                    )
                    .where(AUDIT_ENTRIES.c.seq >= position, AUDIT_ENTRIES.c.seq < stop)
                    .order_by(AUDIT_ENTRIES.c.seq)
                )
                chunk = rows.all()
            for row in chunk:
                yield export_line(
                    int(row.seq), bytes(row.entry), None if row.hash is None else bytes(row.hash)
                )
            position = stop

    async def refused(self, *, actor: str, query: str) -> None:
        """Log an attempt to read the audit by someone who may not."""
        async with self._engine.begin() as conn:
            await self._record_read(conn, actor, f"refused {query}")

    async def checkpoints_forever(self, interval_s: float, stop: asyncio.Event) -> None:
        """Sign a checkpoint every ``interval_s`` seconds while the log grows, until ``stop``.

        Stops at a safe point (between checkpoints), never inside a transaction.
        """
        last = -1
        while not stop.is_set():
            try:
                size = await self.size()
                if size != last:
                    last = (await self.sign_checkpoint()).size
            except (StoreUnavailable, sa.exc.DBAPIError, OSError) as exc:
                _log.warning("audit_checkpoint_deferred", cause=type(exc).__name__)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)


def export_line(index: int, canonical: bytes, leaf: bytes | None) -> bytes:
    """One export line (docs/AUDIT.md): the entry as an object, its index and the tree's leaf."""
    body = {
        "index": index,
        "leaf_hash": None if leaf is None else leaf.hex(),
        "entry": json.loads(canonical),
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
