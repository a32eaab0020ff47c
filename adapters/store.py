"""The adapter's own SQLite store: outbox, sent messages, inbox and consents.

One file at the agency, one connection (SQLite has one writer; see
``broker.store``), WAL mode. Everything the adapter has promised is here
before it is promised: a submission is in the outbox before the ``202``, a
received message is stored before its AMQP ack, a receipt is in the outbox
before the state it reports is committed as done. The outbox holds sealed
envelopes and signed receipts only; the inbox holds the opened content,
because handing it over is the adapter's job (the file sits at the agency,
under the agency's own protection, like the agency system's database).

The hot paths (a received message stored, a hand-over settled, a receipt
recorded, an outbox item marked sent) go through one group commit
(``keys.group_commit``): concurrent calls share a transaction, each set-based
(one statement per table for the batch, ``ON CONFLICT DO NOTHING`` for the
de-duplication) and each caller still returns only after its write is
committed.

Must never: log content, or be shared by two adapters.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from keys.group_commit import GroupCommit

#: Bumped when the schema changes; a file of another version is refused at start.
SCHEMA_VERSION: Final = 1

_meta = sa.MetaData()


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out (SQLite keeps no zone)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


outbox = sa.Table(
    "outbox",
    _meta,
    sa.Column("id", sa.String(36), primary_key=True),  # message id or receipt id
    sa.Column("type", sa.String(32), nullable=False),  # the AMQP type
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    sa.Column("sent_at", UtcDateTime, nullable=True),
    sa.Index("ix_outbox_due", "sent_at", "next_attempt_at"),
)

sent = sa.Table(
    "sent",
    _meta,
    sa.Column("message_id", sa.String(36), primary_key=True),
    sa.Column("idempotency_key", sa.String(200), nullable=True, unique=True),
    sa.Column("request_digest", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("recipients", sa.Text, nullable=False),  # JSON list
    sa.Column("child", sa.String(64), nullable=False),
    sa.Column("thread", sa.String(36), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("submitted_at", UtcDateTime, nullable=False),
)

sent_events = sa.Table(
    "sent_events",
    _meta,
    sa.Column("receipt_id", sa.String(36), primary_key=True),
    sa.Column("message_id", sa.String(36), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("agency", sa.String(64), nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("reason", sa.String(64), nullable=True),
    sa.Column("answer", sa.String(16), nullable=True),
    sa.Column("decline_reason", sa.String(32), nullable=True),
    sa.Column("staff_id", sa.String(64), nullable=True),
)

inbox = sa.Table(
    "inbox",
    _meta,
    sa.Column("message_id", sa.String(36), primary_key=True),
    sa.Column("sender", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("header", sa.LargeBinary, nullable=False),  # the verified protected header JSON
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=True),  # None once refused
    sa.Column("child_age", sa.Integer, nullable=True),
    sa.Column("received_at", UtcDateTime, nullable=False),
    # delivered → handed_over → read → answered; or rejected (with reason).
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64), nullable=True),
    sa.Column("handover_attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_handover_at", UtcDateTime, nullable=True),
    sa.Column("handed_over_at", UtcDateTime, nullable=True),
    sa.Column("read_by", sa.String(64), nullable=True),
    sa.Column("read_at", UtcDateTime, nullable=True),
    sa.Column("answer", sa.String(16), nullable=True),
    sa.Column("decline_reason", sa.String(32), nullable=True),
    sa.Column("answered_by", sa.String(64), nullable=True),
    sa.Column("answered_at", UtcDateTime, nullable=True),
    sa.Index("ix_inbox_state", "state", "next_handover_at"),
)

consents = sa.Table(
    "consents",
    _meta,
    sa.Column("consent_id", sa.String(36), primary_key=True),
    # The whole notice: its signed consent and revocation are verified again at start.
    sa.Column("notice", sa.LargeBinary, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False),
)

meta_table = sa.Table(
    "adapter_meta",
    _meta,
    sa.Column("key", sa.String(32), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)


class AdapterStoreError(Exception):
    """The adapter's database is unavailable or not this adapter's."""


class IdempotencyConflict(Exception):  # noqa: N818 - a verdict about the request
    """The idempotency key was used before for a different submission."""

    code = "idempotency_conflict"
    http_status = 409


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One sealed envelope or signed receipt waiting for a publisher confirm."""

    id: str
    type: str
    body: bytes
    attempts: int


@dataclass(frozen=True, slots=True)
class SentRow:
    """A message this adapter sent, with its outbox state."""

    message_id: str
    kind: str
    recipients: tuple[str, ...]
    child: str
    thread: str
    digest: str
    submitted_at: datetime
    outbox_sent: bool


@dataclass(frozen=True, slots=True)
class InboxRow:
    """A received message as stored."""

    message_id: str
    sender: str
    kind: str
    header: bytes
    digest: str
    content: bytes | None
    child_age: int | None
    received_at: datetime
    state: str
    reason: str | None
    handover_attempts: int
    read_by: str | None
    answer: str | None
    decline_reason: str | None


def _inbox_row(row: Any) -> InboxRow:
    return InboxRow(
        message_id=row.message_id,
        sender=row.sender,
        kind=row.kind,
        header=row.header,
        digest=row.digest,
        content=row.content,
        child_age=row.child_age,
        received_at=row.received_at,
        state=row.state,
        reason=row.reason,
        handover_attempts=row.handover_attempts,
        read_by=row.read_by,
        answer=row.answer,
        decline_reason=row.decline_reason,
    )


def _sent_row(row: Any, sent_at: datetime | None) -> SentRow:
    return SentRow(
        message_id=row.message_id,
        kind=row.kind,
        recipients=tuple(json.loads(row.recipients)),
        child=row.child,
        thread=row.thread,
        digest=row.digest,
        submitted_at=row.submitted_at,
        outbox_sent=sent_at is not None,
    )


def _check_owner(found: dict[str, str], path: Path, agency: str) -> None:
    if not found:
        return
    if found.get("agency") != agency:
        raise AdapterStoreError(f"{path} belongs to another agency's adapter")
    if found.get("schema_version") != str(SCHEMA_VERSION):
        raise AdapterStoreError(
            f"{path} has schema version {found.get('schema_version')}, "
            f"this adapter needs {SCHEMA_VERSION}"
        )


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged submission or an acked message must survive power loss.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=5000")
    finally:
        cursor.close()


#: A receipt for the outbox: (receipt id, signed body, AMQP type).
ReceiptRow = tuple[str, bytes, str]


@dataclass(frozen=True, slots=True)
class _Submitted:
    """``submit``: the sealed submission's ``sent`` row and its outbox row."""

    sent_row: dict[str, Any]
    outbox_row: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Received:
    """``store_received``: the inbox row and its first receipt."""

    row: dict[str, Any]
    receipt: ReceiptRow | None
    now: datetime


@dataclass(frozen=True, slots=True)
class _Settled:
    """``settle_handover``."""

    message_id: str
    state: str
    reason: str | None
    receipt: ReceiptRow
    now: datetime


@dataclass(frozen=True, slots=True)
class _Queued:
    """``queue_receipt``."""

    receipt: ReceiptRow
    now: datetime


@dataclass(frozen=True, slots=True)
class _Event:
    """``record_event``: a receipt for a sent message, every column of ``sent_events``."""

    row: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Sent:
    """``mark_sent`` or ``mark_sent_many``."""

    item_ids: tuple[str, ...]
    now: datetime


_Write = _Submitted | _Received | _Settled | _Queued | _Event | _Sent
#: A write's result: a submission's ``(message id, created)`` or its refusal, else a flag
#: (True if the write has no result).
_Result = tuple[str, bool] | IdempotencyConflict | bool

_EVENT_COLUMNS: Final = tuple(sent_events.c.keys())


class AdapterStore:
    """The adapter's SQLite file; every method is one transaction.

    ``submit``, ``store_received``, ``settle_handover``, ``queue_receipt``,
    ``record_event`` and ``mark_sent`` share theirs with the concurrent calls
    of any of them (group commit). Calls in one batch overlap in time, so any order of them is
    one that calls in turn could have had; the store keeps the order they came
    in within each method, so of two duplicates the first wins, as in turn.
    """

    def __init__(self, engine: AsyncEngine, agency: str) -> None:
        self._engine = engine
        self.agency = agency
        self._group: GroupCommit[_Write, _Result] = GroupCommit(self._write_batch)

    @property
    def engine(self) -> AsyncEngine:
        """The engine (for tests and tools that watch the transactions)."""
        return self._engine

    @classmethod
    async def open(cls, path: Path, agency: str) -> AdapterStore:
        """Open (creating if new) the store at ``path`` for ``agency``; refuse another's file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            f"sqlite+aiosqlite:///{path}", pool_size=1, max_overflow=0, pool_timeout=30
        )
        sa.event.listen(engine.sync_engine, "connect", _pragmas)
        store = cls(engine, agency)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_meta.create_all)
                rows = (await conn.execute(sa.select(meta_table.c.key, meta_table.c.value))).all()
                found: dict[str, str] = {str(row.key): str(row.value) for row in rows}
                if not found:
                    await conn.execute(
                        meta_table.insert(),
                        [
                            {"key": "agency", "value": agency},
                            {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                        ],
                    )
            _check_owner(found, path, agency)
        except SQLAlchemyError as exc:
            await engine.dispose()
            raise AdapterStoreError(f"cannot open the adapter database {path}") from exc
        except AdapterStoreError:
            await engine.dispose()
            raise
        return store

    async def close(self) -> None:
        """Let queued writes commit, then close the connection."""
        await self._group.idle()
        await self._engine.dispose()

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.begin() as conn:
                yield conn
        except (IntegrityError, IdempotencyConflict):
            raise
        except SQLAlchemyError as exc:
            raise AdapterStoreError("the adapter database failed") from exc

    async def _flag(self, write: _Received | _Event) -> bool:
        """Submit a write whose result is a flag, and return it."""
        result = await self._group.submit(write)
        assert isinstance(result, bool)  # noqa: S101 - these writes' results are flags
        return result

    async def _write_batch(self, writes: Sequence[_Write]) -> list[_Result]:
        """Every write in one transaction, a few statements per kind; one result each.

        The kinds go in a fixed order (submitted, stored, settled, queued,
        events, sent); within a kind, the order the writes came in.
        ``mark_sent``, ``settle_handover`` and ``queue_receipt`` have no
        result: True.
        """
        submitted = [(i, w) for i, w in enumerate(writes) if isinstance(w, _Submitted)]
        received = [(i, w) for i, w in enumerate(writes) if isinstance(w, _Received)]
        events = [(i, w) for i, w in enumerate(writes) if isinstance(w, _Event)]
        async with self._tx() as conn:
            accepted = await _submit_many(conn, [w for _, w in submitted])
            stored = await _store_many(conn, [w for _, w in received])
            await _settle_many(conn, [w for w in writes if isinstance(w, _Settled)])
            await _queue_receipts(
                conn, [(w.receipt, w.now) for w in writes if isinstance(w, _Queued)]
            )
            recorded = await _record_events(conn, [w for _, w in events])
            await _mark_sent(conn, [w for w in writes if isinstance(w, _Sent)])
        results: list[_Result] = [True] * len(writes)
        for (index, _), result in zip(submitted, accepted, strict=True):
            results[index] = result
        for (index, _), flag in zip([*received, *events], [*stored, *recorded], strict=True):
            results[index] = flag
        return results

    # --- outbox and sent ------------------------------------------------------------------

    async def submit(
        self,
        *,
        message_id: str,
        idempotency_key: str | None,
        request_digest: str,
        kind: str,
        recipients: Sequence[str],
        child: str,
        thread: str,
        digest: str,
        wire: bytes,
        amqp_type: str,
        now: datetime,
    ) -> tuple[str, bool]:
        """Record a sealed submission in the outbox; ``(message id, created)``.

        The same idempotency key with the same request gives the first
        message's id and ``created=False``; with another request, raises
        :class:`IdempotencyConflict`.
        """
        result = await self._group.submit(
            _Submitted(
                sent_row={
                    "message_id": message_id,
                    "idempotency_key": idempotency_key,
                    "request_digest": request_digest,
                    "kind": kind,
                    "recipients": json.dumps(list(recipients)),
                    "child": child,
                    "thread": thread,
                    "digest": digest,
                    "submitted_at": now,
                },
                outbox_row={
                    "id": message_id,
                    "type": amqp_type,
                    "body": wire,
                    "created_at": now,
                    "attempts": 0,
                    "next_attempt_at": now,
                },
            )
        )
        if isinstance(result, IdempotencyConflict):
            raise result
        assert isinstance(result, tuple)  # noqa: S101 - a submission's result is its id
        return result

    async def due_outbox(self, now: datetime, limit: int = 100) -> list[OutboxItem]:
        """Unsent outbox items whose next attempt is due, oldest first."""
        async with self._tx() as conn:
            rows = await conn.execute(
                sa.select(outbox.c.id, outbox.c.type, outbox.c.body, outbox.c.attempts)
                .where(outbox.c.sent_at.is_(None), outbox.c.next_attempt_at <= now)
                .order_by(outbox.c.created_at, outbox.c.id)
                .limit(limit)
            )
            return [OutboxItem(r.id, r.type, r.body, r.attempts) for r in rows]

    async def mark_sent(self, item_id: str, now: datetime) -> None:
        """RabbitMQ confirmed the item: never publish it again."""
        await self.mark_sent_many([item_id], now)

    async def mark_sent_many(self, item_ids: Sequence[str], now: datetime) -> None:
        """RabbitMQ confirmed these items: never publish them again (one transaction)."""
        if item_ids:
            await self._group.submit(_Sent(tuple(item_ids), now))

    async def defer(self, item_id: str, until: datetime) -> None:
        """Publishing failed: count the attempt and try again at ``until``."""
        await self.defer_many([(item_id, until)])

    async def defer_many(self, items: Sequence[tuple[str, datetime]]) -> None:
        """``defer`` for each (item id, until), in one transaction."""
        if not items:
            return
        async with self._tx() as conn:
            await conn.execute(
                outbox.update()
                .where(outbox.c.id == sa.bindparam("b_id"))
                .values(
                    attempts=outbox.c.attempts + 1,
                    next_attempt_at=sa.bindparam("b_until", type_=UtcDateTime()),
                ),
                [{"b_id": item_id, "b_until": until} for item_id, until in items],
            )

    async def queue_receipt(
        self, receipt_id: str, body: bytes, amqp_type: str, now: datetime
    ) -> None:
        """Put a signed receipt in the outbox (once: its id is deterministic)."""
        await self._group.submit(_Queued((receipt_id, body, amqp_type), now))

    async def sent_messages(self, limit: int = 200) -> list[SentRow]:
        """Messages this adapter sent, newest first."""
        async with self._tx() as conn:
            rows = await conn.execute(
                sa.select(sent, outbox.c.sent_at)
                .join(outbox, outbox.c.id == sent.c.message_id)
                .order_by(sent.c.submitted_at.desc(), sent.c.message_id.desc())
                .limit(limit)
            )
            return [_sent_row(r, r.sent_at) for r in rows]

    async def sent_message(self, message_id: str) -> SentRow | None:
        """One sent message, or None."""
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    sa.select(sent, outbox.c.sent_at)
                    .join(outbox, outbox.c.id == sent.c.message_id)
                    .where(sent.c.message_id == message_id)
                )
            ).first()
        return None if row is None else _sent_row(row, row.sent_at)

    async def record_event(self, *, receipt_id: str, message_id: str, **fields: Any) -> bool:
        """Record a verified receipt for a sent message; False if already recorded.

        Also False for a message this adapter did not send, and for a row the
        table refuses (a missing status, say): an ``IntegrityError`` always was.
        """
        unknown = set(fields).difference(_EVENT_COLUMNS)
        if unknown:
            raise TypeError(f"sent_events has no column {sorted(unknown)}")
        # Every column, so that the batch binds one shape of row.
        row = {name: fields.get(name) for name in _EVENT_COLUMNS}
        row.update(receipt_id=receipt_id, message_id=message_id)
        try:
            return await self._flag(_Event(row))
        except IntegrityError:
            return False

    async def events(self, message_id: str) -> list[dict[str, Any]]:
        """The recorded receipts for one sent message, oldest first."""
        async with self._tx() as conn:
            rows = await conn.execute(
                sa.select(sent_events)
                .where(sent_events.c.message_id == message_id)
                .order_by(sent_events.c.at, sent_events.c.receipt_id)
            )
            return [dict(r._mapping) for r in rows]

    # --- inbox ----------------------------------------------------------------------------

    async def store_received(
        self,
        *,
        message_id: str,
        sender: str,
        kind: str,
        header: bytes,
        digest: str,
        content: bytes | None,
        child_age: int | None,
        state: str,
        reason: str | None,
        receipt: tuple[str, bytes, str] | None,
        now: datetime,
    ) -> bool:
        """Store a received message and its first receipt together; False if a duplicate."""
        row = {
            "message_id": message_id,
            "sender": sender,
            "kind": kind,
            "header": header,
            "digest": digest,
            "content": content,
            "child_age": child_age,
            "received_at": now,
            "state": state,
            "reason": reason,
            "handover_attempts": 0,
            "next_handover_at": now if state == "delivered" else None,
        }
        return await self._flag(_Received(row, receipt, now))

    async def due_handovers(self, now: datetime, limit: int = 50) -> list[InboxRow]:
        """Stored messages not yet handed over whose next attempt is due."""
        async with self._tx() as conn:
            rows = await conn.execute(
                sa.select(inbox)
                .where(inbox.c.state == "delivered", inbox.c.next_handover_at <= now)
                .order_by(inbox.c.received_at, inbox.c.message_id)
                .limit(limit)
            )
            return [_inbox_row(r) for r in rows]

    async def settle_handover(
        self,
        message_id: str,
        *,
        state: str,
        reason: str | None,
        receipt: tuple[str, bytes, str],
        now: datetime,
    ) -> None:
        """Mark a message handed over (or refused) and queue the receipt that says so."""
        await self._group.submit(_Settled(message_id, state, reason, receipt, now))

    async def retry_handover(self, message_id: str, until: datetime) -> None:
        """The agency system did not take it: try again at ``until``."""
        async with self._tx() as conn:
            await conn.execute(
                inbox.update()
                .where(inbox.c.message_id == message_id)
                .values(handover_attempts=inbox.c.handover_attempts + 1, next_handover_at=until)
            )

    async def received(self, message_id: str) -> InboxRow | None:
        """One received message, or None."""
        async with self._tx() as conn:
            row = (
                await conn.execute(sa.select(inbox).where(inbox.c.message_id == message_id))
            ).first()
        return None if row is None else _inbox_row(row)

    async def received_list(self, states: Sequence[str], limit: int = 200) -> list[InboxRow]:
        """Received messages in ``states``, newest first."""
        async with self._tx() as conn:
            rows = await conn.execute(
                sa.select(inbox)
                .where(inbox.c.state.in_(list(states)))
                .order_by(inbox.c.received_at.desc(), inbox.c.message_id.desc())
                .limit(limit)
            )
            return [_inbox_row(r) for r in rows]

    async def mark_read(
        self, message_id: str, staff_id: str, receipt: tuple[str, bytes, str], now: datetime
    ) -> bool:
        """Record the first reading (and queue its receipt); False if read before."""
        async with self._tx() as conn:
            result = await conn.execute(
                inbox.update()
                .where(inbox.c.message_id == message_id, inbox.c.state == "handed_over")
                .values(state="read", read_by=staff_id, read_at=now)
            )
            if result.rowcount != 1:
                return False
            await _queue_receipt(conn, *receipt, now)
        return True

    async def mark_answered(
        self,
        message_id: str,
        *,
        staff_id: str,
        answer: str,
        decline_reason: str | None,
        receipt: tuple[str, bytes, str],
        now: datetime,
    ) -> bool:
        """Record the answer (and queue its receipt); False if it cannot be answered now."""
        async with self._tx() as conn:
            result = await conn.execute(
                inbox.update()
                .where(inbox.c.message_id == message_id, inbox.c.state.in_(["handed_over", "read"]))
                .values(
                    state="answered",
                    answer=answer,
                    decline_reason=decline_reason,
                    answered_by=staff_id,
                    answered_at=now,
                    read_by=sa.func.coalesce(inbox.c.read_by, staff_id),
                )
            )
            if result.rowcount != 1:
                return False
            await _queue_receipt(conn, *receipt, now)
        return True

    # --- consents -------------------------------------------------------------------------

    async def put_consent(self, consent_id: str, *, notice: bytes, revoked: bool) -> None:
        """Keep a verified consent notice; forward only (a revocation is never undone)."""
        async with self._tx() as conn:
            known = (
                await conn.execute(
                    sa.select(consents.c.revoked).where(consents.c.consent_id == consent_id)
                )
            ).first()
            if known is None:
                await conn.execute(
                    consents.insert().values(
                        consent_id=consent_id,
                        notice=notice,
                        revoked=revoked,
                    )
                )
            elif revoked and not known.revoked:
                await conn.execute(
                    consents.update()
                    .where(consents.c.consent_id == consent_id)
                    .values(notice=notice, revoked=True)
                )

    async def consent_notices(self) -> list[bytes]:
        """Every kept consent notice (to rebuild the book at start)."""
        async with self._tx() as conn:
            return list((await conn.execute(sa.select(consents.c.notice))).scalars())


async def _queue_receipt(
    conn: AsyncConnection, receipt_id: str, body: bytes, amqp_type: str, now: datetime
) -> None:
    await _queue_receipts(conn, [((receipt_id, body, amqp_type), now)])


async def _queue_receipts(
    conn: AsyncConnection, receipts: Sequence[tuple[ReceiptRow, datetime]]
) -> None:
    """Put receipts in the outbox; an id already there (or earlier in the list) is kept."""
    if not receipts:
        return
    await conn.execute(
        sqlite.insert(outbox).on_conflict_do_nothing(index_elements=[outbox.c.id]),
        [
            {
                "id": receipt_id,
                "type": amqp_type,
                "body": body,
                "created_at": now,
                "attempts": 0,
                "next_attempt_at": now,
            }
            for (receipt_id, body, amqp_type), now in receipts
        ],
    )


async def _submit_many(
    conn: AsyncConnection, writes: Sequence[_Submitted]
) -> list[tuple[str, bool] | IdempotencyConflict]:
    """Insert the submissions; each one's ``(message id, created)``, or its refusal.

    An idempotency key already stored, or earlier in the batch, gives that
    submission's id and ``created=False`` if the request is the same, and an
    :class:`IdempotencyConflict` (for ``submit`` to raise) if not.
    """
    if not writes:
        return []
    keys = sorted({w.sent_row["idempotency_key"] for w in writes} - {None})
    known: dict[str, tuple[str, str]] = {}
    if keys:
        rows = await conn.execute(
            sa.select(sent.c.idempotency_key, sent.c.message_id, sent.c.request_digest).where(
                sent.c.idempotency_key.in_(keys)
            )
        )
        known = {str(r.idempotency_key): (str(r.message_id), str(r.request_digest)) for r in rows}
    results: list[tuple[str, bool] | IdempotencyConflict] = []
    new: list[_Submitted] = []
    for write in writes:
        key = write.sent_row["idempotency_key"]
        if key is not None and key in known:
            message_id, request_digest = known[key]
            if request_digest != write.sent_row["request_digest"]:
                results.append(
                    IdempotencyConflict("this Idempotency-Key was used for a different submission")
                )
            else:
                results.append((message_id, False))
            continue
        if key is not None:
            known[key] = (write.sent_row["message_id"], write.sent_row["request_digest"])
        new.append(write)
        results.append((write.sent_row["message_id"], True))
    if new:
        await conn.execute(sent.insert(), [w.sent_row for w in new])
        await conn.execute(outbox.insert(), [w.outbox_row for w in new])
    return results


async def _insert_firsts(
    conn: AsyncConnection, key: sa.Column[Any], rows: Sequence[dict[str, Any]]
) -> list[bool]:
    """Insert each row whose ``key`` is not stored yet, in one statement; True for each
    row inserted. Of two rows with one key, the first is the one inserted."""
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        first.setdefault(row[key.name], row)
    if not first:
        return []
    inserted = set(
        (
            await conn.execute(
                sqlite.insert(key.table)
                .on_conflict_do_nothing(index_elements=[key])
                .returning(key),
                list(first.values()),
            )
        ).scalars()
    )
    return [row[key.name] in inserted and first[row[key.name]] is row for row in rows]


async def _store_many(conn: AsyncConnection, writes: Sequence[_Received]) -> list[bool]:
    """Insert the inbox rows not stored yet, with their receipts; True for each one inserted.

    The first write of a message id inserts it; a later one in the batch, like
    one of an id stored before, is a duplicate (False, and no receipt).
    """
    created = await _insert_firsts(conn, inbox.c.message_id, [w.row for w in writes])
    await _queue_receipts(
        conn,
        [
            (write.receipt, write.now)
            for write, new in zip(writes, created, strict=True)
            if new and write.receipt is not None
        ],
    )
    return created


async def _settle_many(conn: AsyncConnection, writes: Sequence[_Settled]) -> None:
    """Settle each hand-over still ``delivered``, in order, and queue every receipt."""
    if not writes:
        return
    await conn.execute(
        inbox.update()
        .where(inbox.c.message_id == sa.bindparam("b_id"), inbox.c.state == "delivered")
        .values(
            state=sa.bindparam("b_state"),
            reason=sa.bindparam("b_reason"),
            next_handover_at=None,
            # Handed over: stamp the time, keep the content. Refused: leave the
            # time, drop the content (the adapter keeps nothing it may not hand
            # over). One statement for both, so the batch keeps its order.
            handed_over_at=sa.func.coalesce(
                sa.bindparam("b_handed_over_at", type_=UtcDateTime()), inbox.c.handed_over_at
            ),
            content=sa.case(
                (sa.bindparam("b_keep_content", type_=sa.Boolean()), inbox.c.content),
                else_=sa.null(),
            ),
        ),
        [
            {
                "b_id": write.message_id,
                "b_state": write.state,
                "b_reason": write.reason,
                "b_handed_over_at": write.now if write.state == "handed_over" else None,
                "b_keep_content": write.state == "handed_over",
            }
            for write in writes
        ],
    )
    await _queue_receipts(conn, [(write.receipt, write.now) for write in writes])


async def _record_events(conn: AsyncConnection, writes: Sequence[_Event]) -> list[bool]:
    """Insert the receipts of sent messages; True for each one inserted.

    One read finds which message ids this adapter sent; the first receipt of an
    id (among those of sent messages) inserts it, a later one in the batch, like
    one recorded before, is not recorded again (False).
    """
    if not writes:
        return []
    message_ids = sorted({write.row["message_id"] for write in writes})
    known = set(
        (
            await conn.execute(
                sa.select(sent.c.message_id).where(sent.c.message_id.in_(message_ids))
            )
        ).scalars()
    )
    rows = [write.row for write in writes]
    inserted = iter(
        await _insert_firsts(
            conn, sent_events.c.receipt_id, [r for r in rows if r["message_id"] in known]
        )
    )
    return [row["message_id"] in known and next(inserted) for row in rows]


async def _mark_sent(conn: AsyncConnection, writes: Sequence[_Sent]) -> None:
    """Set ``sent_at`` on every confirmed item, in order (a later mark of an id stands)."""
    rows = [{"b_id": item_id, "b_at": write.now} for write in writes for item_id in write.item_ids]
    if rows:
        await conn.execute(
            outbox.update()
            .where(outbox.c.id == sa.bindparam("b_id"))
            .values(sent_at=sa.bindparam("b_at", type_=UtcDateTime())),
            rows,
        )
