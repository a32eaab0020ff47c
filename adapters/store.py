"""The adapter's own SQLite store: outbox, sent messages, inbox and consents.

One file at the agency, one connection (SQLite has one writer; see
``broker.store``), WAL mode. Everything the adapter has promised is here
before it is promised: a submission is in the outbox before the ``202``, a
received message is stored before its AMQP ack, a receipt is in the outbox
before the state it reports is committed as done. The outbox holds sealed
envelopes and signed receipts only; the inbox holds the opened content,
because handing it over is the adapter's job (the file sits at the agency,
under the agency's own protection, like the agency system's database).

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
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

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


class AdapterStore:
    """The adapter's SQLite file; every method is one transaction."""

    def __init__(self, engine: AsyncEngine, agency: str) -> None:
        self._engine = engine
        self.agency = agency

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
        """Close the connection."""
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
        async with self._tx() as conn:
            if idempotency_key is not None:
                found = (
                    await conn.execute(
                        sa.select(sent.c.message_id, sent.c.request_digest).where(
                            sent.c.idempotency_key == idempotency_key
                        )
                    )
                ).first()
                if found is not None:
                    if found.request_digest != request_digest:
                        raise IdempotencyConflict(
                            "this Idempotency-Key was used for a different submission"
                        )
                    return str(found.message_id), False
            await conn.execute(
                sent.insert().values(
                    message_id=message_id,
                    idempotency_key=idempotency_key,
                    request_digest=request_digest,
                    kind=kind,
                    recipients=json.dumps(list(recipients)),
                    child=child,
                    thread=thread,
                    digest=digest,
                    submitted_at=now,
                )
            )
            await conn.execute(
                outbox.insert().values(
                    id=message_id,
                    type=amqp_type,
                    body=wire,
                    created_at=now,
                    attempts=0,
                    next_attempt_at=now,
                )
            )
        return message_id, True

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
        async with self._tx() as conn:
            await conn.execute(outbox.update().where(outbox.c.id == item_id).values(sent_at=now))

    async def defer(self, item_id: str, until: datetime) -> None:
        """Publishing failed: count the attempt and try again at ``until``."""
        async with self._tx() as conn:
            await conn.execute(
                outbox.update()
                .where(outbox.c.id == item_id)
                .values(attempts=outbox.c.attempts + 1, next_attempt_at=until)
            )

    async def queue_receipt(
        self, receipt_id: str, body: bytes, amqp_type: str, now: datetime
    ) -> None:
        """Put a signed receipt in the outbox (once: its id is deterministic)."""
        async with self._tx() as conn:
            await _queue_receipt(conn, receipt_id, body, amqp_type, now)

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
        """Record a verified receipt for a sent message; False if already recorded."""
        async with self._tx() as conn:
            known = await conn.scalar(
                sa.select(sa.func.count()).select_from(sent).where(sent.c.message_id == message_id)
            )
            if not known:
                return False
            try:
                async with conn.begin_nested():
                    await conn.execute(
                        sent_events.insert().values(
                            receipt_id=receipt_id, message_id=message_id, **fields
                        )
                    )
            except IntegrityError:
                return False
        return True

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
        async with self._tx() as conn:
            exists = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(inbox)
                .where(inbox.c.message_id == message_id)
            )
            if exists:
                return False
            await conn.execute(
                inbox.insert().values(
                    message_id=message_id,
                    sender=sender,
                    kind=kind,
                    header=header,
                    digest=digest,
                    content=content,
                    child_age=child_age,
                    received_at=now,
                    state=state,
                    reason=reason,
                    handover_attempts=0,
                    next_handover_at=now if state == "delivered" else None,
                )
            )
            if receipt is not None:
                await _queue_receipt(conn, *receipt, now)
        return True

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
        values: dict[str, Any] = {"state": state, "reason": reason, "next_handover_at": None}
        if state == "handed_over":
            values["handed_over_at"] = now
        else:
            values["content"] = None  # refused: the adapter keeps nothing it may not hand over
        async with self._tx() as conn:
            await conn.execute(
                inbox.update()
                .where(inbox.c.message_id == message_id, inbox.c.state == "delivered")
                .values(**values)
            )
            await _queue_receipt(conn, *receipt, now)

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
    exists = await conn.scalar(
        sa.select(sa.func.count()).select_from(outbox).where(outbox.c.id == receipt_id)
    )
    if not exists:
        await conn.execute(
            outbox.insert().values(
                id=receipt_id,
                type=amqp_type,
                body=body,
                created_at=now,
                attempts=0,
                next_attempt_at=now,
            )
        )
