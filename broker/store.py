"""The broker's durable state over SQLAlchemy 2 async Core: SQLite or PostgreSQL.

``SqlStore`` implements ``broker.records.Store`` (messages, their recipients and
their append-only status events) and holds the tables later parts of the broker
use: the signed directory, consents, deadlines and the audit log. SQLite (one
file, WAL) is the zero-setup default; PostgreSQL over asyncpg is for production
and for several broker instances sharing one database, so every write that must
happen once (a message decided, a receipt recorded) is an ``INSERT … ON
CONFLICT DO NOTHING`` against a unique key, never a read followed by a write.

The store must never hold message content, a key or a personnummer: a message
is its signed header's metadata, a child is a pseudonym, and the directory,
consent and audit rows are the signed payloads exactly as they were verified
(public keys and pseudonyms only). Every datetime is stored and returned as
aware UTC; a naive one is refused.

Errors::

    BrokerError                           (broker.errors)
    └── Unavailable                 503
        └── StoreUnavailable  store_unavailable  503  the database cannot be reached or
                                                      refused service (I/O, connection,
                                                      lock, pool timeout)

Foreign I/O errors are translated at this boundary (``raise StoreUnavailable
from exc``) with a fixed message; ``detail`` names the database and the foreign
error's class for the log, never credentials nor the foreign text. Integrity,
programming and data errors are bugs, not outages, and propagate unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NamedTuple

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from broker.audit import entry as audit_entry
from broker.audit import merkle
from broker.deadlines import Plan
from broker.errors import Unavailable
from broker.records import (
    BatchWritten,
    MessageRecord,
    Outcome,
    ReceiptWrite,
    Recorded,
    StatusEvent,
)
from schemas.audit import AuditEntry

__all__ = [
    "AUDIT_CHECKPOINTS",
    "AUDIT_ENTRIES",
    "AUDIT_LOCK_KEY",
    "AUDIT_NODES",
    "AUDIT_PARTIES",
    "CONSENTS",
    "DEADLINES",
    "DIRECTORY_ENTRIES",
    "MESSAGES",
    "MESSAGE_LEVEL",
    "MESSAGE_RECIPIENTS",
    "METADATA",
    "MIGRATION_LOCK_KEY",
    "STATUS_EVENTS",
    "ConsentRow",
    "DeadlineRow",
    "DirectoryRow",
    "SqlStore",
    "StoreUnavailable",
    "UtcDateTime",
    "append_audit",
    "build_engine",
    "create_store",
    "migrate",
]

#: Where the Alembic environment and revisions live (a package directory).
MIGRATIONS: Final = Path(__file__).resolve().parent / "migrations"

#: PostgreSQL connections each broker instance keeps, and how many more it may open.
PG_POOL_SIZE: Final = 10
PG_MAX_OVERFLOW: Final = 5
#: Seconds to wait for a connection (from the server, or from a full pool).
CONNECT_TIMEOUT_S: Final = 10
#: Seconds one SQL statement may run on PostgreSQL before it is cancelled.
COMMAND_TIMEOUT_S: Final = 30
#: ``pg_advisory_xact_lock`` key every migration holds ("backa" in ASCII).
MIGRATION_LOCK_KEY: Final = 0x6261636B61
#: Milliseconds a SQLite writer waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
#: Consents read per statement when every consent is read (``SqlStore.consents``).
CONSENT_PAGE: Final = 10_000

# Lengths are generous bounds on the wire contract's patterns (ids and key ids
# are at most 64 characters, codes far less), so that a bug cannot fill a row.
_ID: Final = 64
_CODE: Final = 64
_TEXT: Final = 200


class StoreUnavailable(Unavailable):
    """The database cannot be reached or refused service; retry later.

    The message is fixed and safe to show a client; which database failed and
    how is in ``detail``, for this process's log only.
    """

    code = "store_unavailable"
    http_status = 503
    default_message = "The broker's database cannot be reached right now; try again later."

    def __init__(self, detail: str = "unspecified") -> None:
        """Keep ``detail`` (the database and the foreign error's class, never credentials)."""
        super().__init__()
        self.detail = detail


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware timestamp, always returned as aware UTC.

    SQLite keeps no offset and returns naive values; they were written as UTC,
    so UTC is attached on the way back. Naive values are refused on the way in:
    there is no telling which clock they came from.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse a naive datetime; convert an aware one to UTC."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime refused: the store keeps aware UTC times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        """Return the stored time as aware UTC."""
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Deterministic constraint names, so that the hand-written migrations and this
# metadata agree and a later migration can name what it alters.
METADATA: Final = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid); PostgreSQL
# gets a 64-bit serial.
_SERIAL: Final = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

MESSAGES: Final = sa.Table(
    "messages",
    METADATA,
    sa.Column("message_id", sa.String(_ID), primary_key=True),
    sa.Column("digest", sa.String(_ID), nullable=False),
    sa.Column("kind", sa.String(_CODE), nullable=False),
    sa.Column("sender", sa.String(_ID), nullable=False),
    sa.Column("sender_kid", sa.String(_ID), nullable=False),
    sa.Column("child", sa.String(_ID), nullable=False),
    sa.Column("basis_type", sa.String(_CODE), nullable=False),
    sa.Column("basis_ref", sa.String(_ID), nullable=False),
    sa.Column("purpose", sa.String(_CODE), nullable=False),
    sa.Column("thread", sa.String(_ID), nullable=False),
    sa.Column("in_reply_to", sa.String(_ID), nullable=True),
    sa.Column("created", UtcDateTime(), nullable=False),
    sa.Column("expires", UtcDateTime(), nullable=False),
    sa.Column("received_at", UtcDateTime(), nullable=False),
    sa.Column("outcome", sa.String(_CODE), nullable=False),
    sa.Column("reason", sa.String(_CODE), nullable=True),
    sa.Column("rule", sa.String(_ID), nullable=True),
    sa.Column("legal_ref", sa.String(_TEXT), nullable=True),
    sa.Column("routed_at", UtcDateTime(), nullable=True),
    # The index of the decision's audit entry, carried by the accepted receipt.
    sa.Column("log_index", sa.BigInteger(), nullable=True),
    sa.Index("ix_messages_child", "child"),
    sa.Index("ix_messages_thread", "thread"),
)

#: The recipients of a message; ``position`` keeps the order the record gave.
MESSAGE_RECIPIENTS: Final = sa.Table(
    "message_recipients",
    METADATA,
    sa.Column(
        "message_id",
        sa.String(_ID),
        sa.ForeignKey("messages.message_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("agency", sa.String(_ID), primary_key=True),
    sa.Column("position", sa.Integer(), nullable=False),
)

STATUS_EVENTS: Final = sa.Table(
    "status_events",
    METADATA,
    sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
    sa.Column(
        "message_id",
        sa.String(_ID),
        sa.ForeignKey("messages.message_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("agency", sa.String(_ID), nullable=True),
    sa.Column("status", sa.String(_CODE), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("recorded_at", UtcDateTime(), nullable=False),
    sa.Column("signer", sa.String(_ID), nullable=False),
    sa.Column("receipt_id", sa.String(_ID), nullable=True),
    sa.Column("reason", sa.String(_CODE), nullable=True),
    sa.Column("answer", sa.String(_CODE), nullable=True),
    sa.Column("decline_reason", sa.String(_CODE), nullable=True),
    sa.Column("staff_id", sa.String(_ID), nullable=True),
    sa.Index("ix_status_events_message_id", "message_id"),
)
# A receipt recorded twice (redelivery, two broker instances) is one event.
_RECEIPT_PRESENT: Final = STATUS_EVENTS.c.receipt_id.is_not(None)
sa.Index(
    "uq_status_events_receipt_id",
    STATUS_EVENTS.c.receipt_id,
    unique=True,
    sqlite_where=_RECEIPT_PRESENT,
    postgresql_where=_RECEIPT_PRESENT,
)

#: One signed directory entry per (agency, key id), exactly as the area root signed it.
DIRECTORY_ENTRIES: Final = sa.Table(
    "directory_entries",
    METADATA,
    sa.Column("agency", sa.String(_ID), primary_key=True),
    sa.Column("kid", sa.String(_ID), primary_key=True),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Column("signature", sa.Text(), nullable=False),
    sa.Column("issued_at", UtcDateTime(), nullable=False),
)

#: Registered consents and, once revoked, the signed revocation beside them.
CONSENTS: Final = sa.Table(
    "consents",
    METADATA,
    sa.Column("consent_id", sa.String(_ID), primary_key=True),
    sa.Column("child", sa.String(_ID), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Column("signature", sa.Text(), nullable=False),
    sa.Column("valid_from", UtcDateTime(), nullable=False),
    sa.Column("valid_until", UtcDateTime(), nullable=False),
    sa.Column("registered_at", UtcDateTime(), nullable=False),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
    sa.Column("revocation_payload", sa.Text(), nullable=True),
    sa.Column("revocation_signature", sa.Text(), nullable=True),
    sa.Index("ix_consents_child", "child"),
)

#: Deadlines the broker watches (no per-message TTL in RabbitMQ, see broker.topology).
#: ``agency`` is NULL for a message-level deadline; SQL treats NULLs as distinct,
#: so the unique key only de-duplicates per-recipient deadlines.
DEADLINES: Final = sa.Table(
    "deadlines",
    METADATA,
    sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
    sa.Column(
        "message_id",
        sa.String(_ID),
        sa.ForeignKey("messages.message_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("rule", sa.String(_ID), nullable=False),
    sa.Column("agency", sa.String(_ID), nullable=True),
    sa.Column("due_at", UtcDateTime(), nullable=False),
    sa.Column("state", sa.String(_CODE), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("claimed_by", sa.String(_ID), nullable=True),
    sa.Column("claimed_at", UtcDateTime(), nullable=True),
    sa.Column("closed_at", UtcDateTime(), nullable=True),
    sa.Index("ix_deadlines_state_due_at", "state", "due_at"),
    sa.UniqueConstraint("message_id", "rule", "agency", name="uq_deadlines_message_id_rule_agency"),
)

#: Leaves of the audit Merkle tree: ``entry`` is the canonical JSON, never changed.
#: The other columns repeat fields of the entry, for the security officer's search.
AUDIT_ENTRIES: Final = sa.Table(
    "audit_entries",
    METADATA,
    sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("entry", sa.LargeBinary(), nullable=False),
    sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("event", sa.String(_CODE), nullable=False),
    sa.Column("kind", sa.String(_CODE), nullable=True),
    sa.Column("child", sa.String(_ID), nullable=True),
    sa.Column("message_id", sa.String(_ID), nullable=True),
    sa.Index("ix_audit_entries_at", "at"),
    sa.Index("ix_audit_entries_child_seq", "child", "seq"),
    sa.Index("ix_audit_entries_message_id", "message_id"),
)

#: Every agency an entry names (sender and recipients), for search by agency.
AUDIT_PARTIES: Final = sa.Table(
    "audit_parties",
    METADATA,
    sa.Column("agency", sa.String(_ID), primary_key=True),
    sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
)

#: The hash of every aligned perfect subtree of the audit tree (level 0: the leaves),
#: so that roots and proofs read O(log n) rows (broker.audit.merkle).
AUDIT_NODES: Final = sa.Table(
    "audit_nodes",
    METADATA,
    sa.Column("level", sa.SmallInteger(), primary_key=True, autoincrement=False),
    sa.Column("idx", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
)

#: Signed checkpoints (C2SP signed notes) of the audit tree, one per size signed.
AUDIT_CHECKPOINTS: Final = sa.Table(
    "audit_checkpoints",
    METADATA,
    sa.Column("size", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("root", sa.LargeBinary(32), nullable=False),
    sa.Column("note", sa.Text(), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
)


class DirectoryRow(NamedTuple):
    """One stored directory entry: the signed payload as verified, and when it was issued."""

    agency: str
    kid: str
    payload: str
    signature: str
    issued_at: datetime


class ConsentRow(NamedTuple):
    """One registered consent as signed, and its signed revocation once revoked."""

    consent_id: str
    child: str
    payload: str
    signature: str
    valid_from: datetime
    valid_until: datetime
    registered_at: datetime
    revoked_at: datetime | None = None
    revocation_payload: str | None = None
    revocation_signature: str | None = None


#: The ``agency`` of a deadline about the whole message (declined by every recipient):
#: a value, not NULL, so the unique key de-duplicates it across broker instances too.
MESSAGE_LEVEL: Final = "*"


class _EscalationFailed(Exception):  # noqa: N818 - a carrier, never seen outside this module
    """Carries the escalation callback's own error past ``_boundary``'s translation."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class DeadlineRow(NamedTuple):
    """One open deadline that is due, with the message facts an escalation names."""

    id: int
    message_id: str
    rule: str
    agency: str | None  # the recipient it is about, or None for the whole message
    due_at: datetime
    attempts: int
    kind: str
    sender: str
    child: str
    recipients: tuple[str, ...]
    #: The child's team as the broker knows it (``SqlStore.team_of``), read with the row.
    members: tuple[str, ...] = ()
    inviters: tuple[str, ...] = ()


# A constraint or query fault is a bug to fix, not an outage to wait out.
_CALLER_ERRORS: Final = (
    sa_exc.IntegrityError,
    sa_exc.ProgrammingError,
    sa_exc.DataError,
    sa_exc.NotSupportedError,
)


def _describe(url: URL) -> str:
    """Name a database for a message: never the password nor any query parameter."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite database {url.database or ':memory:'}"
    return f"PostgreSQL database {url.database} at {url.host}:{url.port or 5432}"


@contextmanager
def _boundary(url: URL) -> Iterator[None]:
    """Translate foreign I/O errors into ``StoreUnavailable``."""
    try:
        yield
    except (sa_exc.DBAPIError, sa_exc.TimeoutError, OSError) as exc:
        if isinstance(exc, _CALLER_ERRORS):
            raise
        cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig else exc
        raise StoreUnavailable(f"{_describe(url)}: {type(cause).__name__}") from exc


def _async_url(url: str | URL) -> URL:
    """The URL with its async driver: aiosqlite for SQLite, asyncpg for PostgreSQL."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        # The text may hold a password, so it is not repeated.
        raise ValueError("the database URL cannot be parsed") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in {"postgresql", "postgres"}:
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported database {backend!r}: use sqlite or postgresql")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers proceed during a write. FULL syncs every commit: NORMAL
    # could lose the last commits on power loss, after RabbitMQ was acked and
    # after a signed checkpoint covered their audit entries (a shorter log than
    # a signed checkpoint reads as tampering). Under group commit a sync is
    # shared by a whole batch.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
    finally:
        cursor.close()


def build_engine(url: str | URL, *, pooled: bool = True) -> AsyncEngine:
    """An async engine for a SQLite or PostgreSQL URL, configured for the broker.

    ``pooled=False`` opens one connection per use (migrations, one-off tools).
    A SQLite file's directory is created if missing.
    """
    parsed = _async_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # One connection: SQLite has one writer at a time, and several pooled
        # connections would wait for each other in SQLite's sleeping busy handler
        # (measured: ~60 msg/s); queueing for the one connection in asyncio is fast.
        pool: dict[str, Any] = (
            {"pool_size": 1, "max_overflow": 0, "pool_timeout": CONNECT_TIMEOUT_S}
            if pooled
            else {"poolclass": NullPool}
        )
        engine = create_async_engine(parsed, **pool)
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    pool = (
        {
            "pool_size": PG_POOL_SIZE,
            "max_overflow": PG_MAX_OVERFLOW,
            "pool_timeout": CONNECT_TIMEOUT_S,
            "pool_pre_ping": True,
            "pool_recycle": 1800,
        }
        if pooled
        else {"poolclass": NullPool}
    )
    return create_async_engine(
        parsed,
        connect_args={
            "timeout": CONNECT_TIMEOUT_S,
            "command_timeout": COMMAND_TIMEOUT_S,
            "server_settings": {"application_name": "backa-broker"},
        },
        **pool,
    )


def create_store(url: str) -> SqlStore:
    """A store on a SQLite or PostgreSQL URL (``sqlite+aiosqlite:///var/broker.db``).

    Connects lazily: an unreachable database shows at the first call (or at
    ``ping``) as ``StoreUnavailable``. The schema must exist: run ``migrate`` first.
    """
    parsed = _async_url(url)
    with _boundary(parsed):
        engine = build_engine(parsed)
    return SqlStore(engine)


# Alembic's ``context`` and ``op`` are module-level proxies: two upgrades in
# one process at once would trample each other's, so they take turns here
# (across processes, the environment's advisory lock does the same).
_ALEMBIC_LOCK: Final = threading.Lock()


def _upgrade_head(url: URL) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    # Passed as an attribute, not an ini option: a percent-encoded password
    # would be mangled by configparser interpolation.
    config.attributes["url"] = url.render_as_string(hide_password=False)
    with _ALEMBIC_LOCK:
        command.upgrade(config, "head")


async def migrate(url: str) -> None:
    """Bring the database's schema to the newest revision (``alembic upgrade head``).

    Idempotent, and safe to run from several broker instances at once on
    PostgreSQL (the migration holds an advisory lock) and from several tasks of
    one process (they take turns). Alembic is synchronous and its environment
    runs its own event loop, so it runs in a worker thread.
    """
    parsed = _async_url(url)
    with _boundary(parsed):
        await asyncio.to_thread(_upgrade_head, parsed)


def _message_values(record: MessageRecord) -> dict[str, Any]:
    return {
        "message_id": record.message_id,
        "digest": record.digest,
        "kind": record.kind,
        "sender": record.sender,
        "sender_kid": record.sender_kid,
        "child": record.child,
        "basis_type": record.basis_type,
        "basis_ref": record.basis_ref,
        "purpose": record.purpose,
        "thread": record.thread,
        "in_reply_to": record.in_reply_to,
        "created": record.created,
        "expires": record.expires,
        "received_at": record.received_at,
        "outcome": record.outcome.value,
        "reason": record.reason,
        "rule": record.rule,
        "legal_ref": record.legal_ref,
        "routed_at": record.routed_at,
        "log_index": record.log_index,
    }


def _record_from(row: sa.RowMapping, recipients: Sequence[str]) -> MessageRecord:
    return MessageRecord(
        message_id=row["message_id"],
        digest=row["digest"],
        kind=row["kind"],
        sender=row["sender"],
        sender_kid=row["sender_kid"],
        child=row["child"],
        basis_type=row["basis_type"],
        basis_ref=row["basis_ref"],
        purpose=row["purpose"],
        thread=row["thread"],
        in_reply_to=row["in_reply_to"],
        created=row["created"],
        expires=row["expires"],
        received_at=row["received_at"],
        outcome=Outcome(row["outcome"]),
        reason=row["reason"],
        rule=row["rule"],
        legal_ref=row["legal_ref"],
        recipients=tuple(recipients),
        routed_at=row["routed_at"],
        log_index=row["log_index"],
    )


def _event_values(event: StatusEvent) -> dict[str, Any]:
    return {
        "message_id": event.message_id,
        "agency": event.agency,
        "status": event.status,
        "at": event.at,
        "recorded_at": event.recorded_at,
        "signer": event.signer,
        "receipt_id": event.receipt_id,
        "reason": event.reason,
        "answer": event.answer,
        "decline_reason": event.decline_reason,
        "staff_id": event.staff_id,
    }


def _event_from(row: sa.RowMapping) -> StatusEvent:
    return StatusEvent(
        message_id=row["message_id"],
        agency=row["agency"],
        status=row["status"],
        at=row["at"],
        recorded_at=row["recorded_at"],
        signer=row["signer"],
        receipt_id=row["receipt_id"],
        reason=row["reason"],
        answer=row["answer"],
        decline_reason=row["decline_reason"],
        staff_id=row["staff_id"],
    )


#: The PostgreSQL advisory lock that serialises appends to the audit tree across
#: broker instances (each append reads the tree's right edge; two at once would fork it).
AUDIT_LOCK_KEY: Final = 0x62_61_63_6B_61_75_64  # "backaud"


def _deadline_values(
    message_id: str, rule: str, agency: str | None, due_at: datetime
) -> dict[str, Any]:
    """A new open deadline's row (a message-level one under ``MESSAGE_LEVEL``)."""
    return {
        "message_id": message_id,
        "rule": rule,
        "agency": agency if agency is not None else MESSAGE_LEVEL,
        "due_at": due_at,
        "state": "open",
        "attempts": 0,
    }


async def read_nodes(
    conn: AsyncConnection, keys: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """The stored subtree hashes at ``keys``, in one query.

    Spelt ``(level = a AND idx = b) OR ...``: SQLite plans a row-value ``IN``
    as a scan of the whole table (204 ms for 37 keys among 2.1 million nodes)
    but this as one primary-key lookup per pair (3.2 ms); PostgreSQL plans
    both the same, as a ``BitmapOr`` of primary-key index scans.
    """
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    rows = await conn.execute(
        sa.select(AUDIT_NODES.c.level, AUDIT_NODES.c.idx, AUDIT_NODES.c.hash).where(
            sa.or_(
                *(
                    sa.and_(AUDIT_NODES.c.level == level, AUDIT_NODES.c.idx == idx)
                    for level, idx in wanted
                )
            )
        )
    )
    return {(r.level, r.idx): bytes(r.hash) for r in rows}


async def append_audit(conn: AsyncConnection, entries: Sequence[AuditEntry]) -> list[int]:
    """Append ``entries`` to the audit tree inside the caller's transaction; their indices.

    Inside the transaction that writes what the entries describe, so a decision
    and its audit entry are committed together or not at all. Costs O(log n)
    node reads (the tree's right edge, in one query) and amortised O(1) writes
    per entry (``broker.audit.merkle.nodes_to_store``).
    """
    if not entries:
        return []
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(AUDIT_LOCK_KEY)))
    size = await conn.scalar(sa.select(sa.func.coalesce(sa.func.max(AUDIT_ENTRIES.c.seq) + 1, 0)))
    size = int(size or 0)
    known = await read_nodes(conn, merkle.needed_nodes_for_root(size))

    def get(level: int, index: int) -> bytes:
        return known[(level, index)]

    entry_rows: list[dict[str, Any]] = []
    party_rows: list[dict[str, Any]] = []
    node_rows: list[dict[str, Any]] = []
    indices = []
    for offset, item in enumerate(entries):
        index = size + offset
        data = audit_entry.canonical_bytes(item)
        leaf = merkle.leaf_hash(data)
        for level, idx, digest in merkle.nodes_to_store(index, leaf, get):
            known[(level, idx)] = digest
            node_rows.append({"level": level, "idx": idx, "hash": digest})
        entry_rows.append(
            {
                "seq": index,
                "at": item.at,
                "entry": data,
                "leaf_hash": leaf,
                "event": item.event.value,
                "kind": item.kind.value if item.kind else None,
                "child": item.child,
                "message_id": item.message_id,
            }
        )
        party_rows += [
            {"agency": agency, "seq": index}
            for agency in sorted({*([item.sender] if item.sender else []), *item.recipients})
        ]
        indices.append(index)
    await conn.execute(sa.insert(AUDIT_ENTRIES), entry_rows)
    await conn.execute(sa.insert(AUDIT_NODES), node_rows)
    if party_rows:
        await conn.execute(sa.insert(AUDIT_PARTIES), party_rows)
    return indices


def _deadline_row(
    row: sa.RowMapping,
    recipients: Iterable[str],
    *,
    members: Iterable[str] = (),
    inviters: Iterable[str] = (),
) -> DeadlineRow:
    """A deadline row joined with its message's kind, sender and child."""
    return DeadlineRow(
        id=int(row["id"]),
        message_id=row["message_id"],
        rule=row["rule"],
        agency=None if row["agency"] == MESSAGE_LEVEL else row["agency"],
        due_at=row["due_at"],
        attempts=int(row["attempts"]),
        kind=row["kind"],
        sender=row["sender"],
        child=row["child"],
        recipients=tuple(recipients),
        members=tuple(members),
        inviters=tuple(inviters),
    )


async def _team_of(conn: AsyncConnection, child: str) -> tuple[list[str], list[str]]:
    sent = (
        await conn.execute(
            sa.select(MESSAGES.c.message_id, MESSAGES.c.sender)
            .where(
                MESSAGES.c.child == child,
                MESSAGES.c.kind == "team_invitation",
                MESSAGES.c.outcome == Outcome.ACCEPTED.value,
            )
            .order_by(MESSAGES.c.received_at.desc())
        )
    ).all()
    accepted = (
        await conn.execute(
            sa.select(STATUS_EVENTS.c.agency)
            .where(
                STATUS_EVENTS.c.message_id.in_([row.message_id for row in sent]),
                STATUS_EVENTS.c.status == "answered",
                STATUS_EVENTS.c.answer == "accepted",
            )
            .order_by(STATUS_EVENTS.c.at.desc())
        )
    ).scalars()
    members = list(dict.fromkeys(a for a in accepted if a is not None))
    return members, list(dict.fromkeys(row.sender for row in sent))


class SqlStore:
    """``broker.records.Store`` over SQLAlchemy async Core.

    Every method commits before it returns.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._url = engine.url

    @property
    def engine(self) -> AsyncEngine:
        """The engine, for the parts of the broker that own the other tables."""
        return self._engine

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        # ON CONFLICT is dialect syntax; both dialects spell it the same way.
        if self._engine.dialect.name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    async def record_decision(
        self,
        record: MessageRecord,
        events: Sequence[StatusEvent],
        opens: Sequence[tuple[str, str, str | None, datetime]] = (),
    ) -> Recorded:
        """Insert the message, its recipients and first events, unless its id exists.

        Race-safe across broker instances: the primary key decides which insert
        wins, and the loser reads back the winner's record (``created=False``).
        ``opens`` (its deadlines) are opened with it if this call created it.
        """
        (recorded,) = (await self.write_batch([(record, events)], [], item_opens=[opens])).recorded
        return recorded

    async def record_decisions(
        self, items: Sequence[tuple[MessageRecord, Sequence[StatusEvent]]]
    ) -> list[Recorded]:
        """``record_decision`` for each item, in order, in one transaction (group commit).

        An id that appears twice is created by its first item; the second gets
        ``created=False``, exactly as two separate calls would.
        """
        return (await self.write_batch(items, [])).recorded

    async def write_batch(
        self,
        items: Sequence[tuple[MessageRecord, Sequence[StatusEvent]]],
        marks: Sequence[tuple[str, datetime]],
        receipts: Sequence[ReceiptWrite] = (),
        opens: Sequence[tuple[str, str, str | None, datetime]] = (),
        item_opens: Sequence[Sequence[tuple[str, str, str | None, datetime]]] = (),
    ) -> BatchWritten:
        """``record_decisions(items)``, ``mark_routed_many(marks)``, ``record_receipt`` of
        each of ``receipts`` and ``open_deadlines(opens)``, in one transaction; and
        ``item_opens[i]``, the deadlines of ``items[i]``, if that item created its message
        (one stored before, or replayed with other bytes, opens nothing).

        The broker's group commit: the decisions of new messages, the routed
        marks of earlier ones and the receipts for them share one commit and
        one audit append. Every row lock is taken before the audit lock, the
        routed rows in id order and the new rows in id order, so that two
        brokers writing overlapping batches (a redelivery) wait for each other
        instead of deadlocking.
        """
        if item_opens and len(item_opens) != len(items):
            raise ValueError("item_opens, if given, has one entry per item")
        for record, events in items:
            if len(set(record.recipients)) != len(record.recipients):
                raise ValueError("a recipient is listed twice")
            if any(e.message_id != record.message_id for e in events):
                raise ValueError("every first event must belong to the recorded message")
        if any(r.event.message_id != r.record.message_id for r in receipts):
            raise ValueError("a receipt must belong to the message it is recorded with")
        with _boundary(self._url):
            async with self._engine.begin() as conn:
                routed = await self._mark_unrouted(conn, marks)
                written, receipted = await self._record_receipts(conn, receipts)
                recorded = await self._record_many(conn, items, [*routed, *receipted])
                opened = await self._open_deadlines(
                    conn,
                    [
                        *opens,
                        *(
                            deadline
                            for result, deadlines in zip(recorded, item_opens, strict=False)
                            if result.created
                            for deadline in deadlines
                        ),
                    ],
                )
        return BatchWritten(recorded=recorded, receipts=written, opened=opened)

    async def record_receipt(self, write: ReceiptWrite) -> bool:
        """Record a recipient's receipt, audited, and apply its deadline changes, together.

        False if its receipt id is already stored: the event is not written
        again, but its deadline changes are applied again (they are idempotent),
        so a receipt redelivered after a crash leaves the deadlines right.
        """
        (written,) = (await self.write_batch([], [], [write])).receipts
        return written

    async def _record_receipts(
        self, conn: AsyncConnection, receipts: Sequence[ReceiptWrite]
    ) -> tuple[list[bool], list[AuditEntry]]:
        """Insert each receipt's event (skipping stored receipt ids) and apply its deadlines.

        Each receipt's planner sees its message's timeline as it would have
        been had the batch's receipts been recorded one by one: without the
        events this batch writes after it. Returns a flag per receipt (written)
        and the audit entries of those written.
        """
        if not receipts:
            return [], []
        ids = await self._insert_receipt_events(conn, [write.event for write in receipts])
        entries = [
            audit_entry.receipt_entry(write.event, record=write.record)
            for write, inserted in zip(receipts, ids, strict=True)
            if inserted is not None
        ]
        planned = {w.record.message_id for w in receipts if w.deadlines is not None}
        timelines = await self._timelines(conn, planned) if planned else {}
        plans: list[tuple[Plan, datetime]] = []
        for i, write in enumerate(receipts):
            if write.deadlines is None:
                continue
            later = {inserted for inserted in ids[i + 1 :] if inserted is not None}
            plan = write.deadlines(
                [
                    event
                    for event_id, event in timelines.get(write.record.message_id, [])
                    if event_id not in later
                ]
            )
            plans.append((plan, write.event.recorded_at))
        await self._apply_plans(conn, plans)
        return [inserted is not None for inserted in ids], entries

    async def _insert_receipt_events(
        self, conn: AsyncConnection, events: Sequence[StatusEvent]
    ) -> list[int | None]:
        """Insert receipt events in one statement; each one's row id, None if not written.

        A receipt id already stored, or earlier in ``events``, is not written
        again. Rows are numbered in ``events`` order (the timeline's tie-break).
        """
        if any(event.receipt_id is None for event in events):
            raise ValueError("a receipt event has a receipt id")
        rows = await conn.execute(
            self._insert(STATUS_EVENTS)
            .on_conflict_do_nothing(
                index_elements=[STATUS_EVENTS.c.receipt_id], index_where=_RECEIPT_PRESENT
            )
            .returning(STATUS_EVENTS.c.id, STATUS_EVENTS.c.receipt_id),
            [_event_values(event) for event in events],
        )
        inserted = {str(row.receipt_id): int(row.id) for row in rows}
        return [inserted.pop(str(event.receipt_id), None) for event in events]

    async def _apply_plans(
        self, conn: AsyncConnection, plans: Sequence[tuple[Plan, datetime]]
    ) -> None:
        """Apply each plan's openings and closings (at its time), as if one after another.

        When no deadline is touched twice, order cannot matter and the batch
        takes one statement for the openings and one for the closings; else
        each plan is applied in turn.
        """
        keys = [
            *((d.message_id, d.rule, d.agency) for plan, _at in plans for d in plan.open),
            *((c.message_id, c.rule, c.agency) for plan, _at in plans for c in plan.close),
        ]
        if len(set(keys)) < len(keys):
            for plan, at in plans:
                await self._open_deadlines(
                    conn, [(d.message_id, d.rule, d.agency, d.due_at) for d in plan.open]
                )
                for close in plan.close:
                    await self._close_deadlines(
                        conn, close.message_id, [close.rule], close.agency, at
                    )
            return
        opens = [
            _deadline_values(d.message_id, d.rule, d.agency, d.due_at)
            for plan, _at in plans
            for d in plan.open
        ]
        if opens:
            await conn.execute(
                self._insert(DEADLINES).on_conflict_do_nothing(
                    index_elements=[DEADLINES.c.message_id, DEADLINES.c.rule, DEADLINES.c.agency]
                ),
                opens,
            )
        closes = [
            {
                "closed_id": close.message_id,
                "closed_rule": close.rule,
                "closed_agency": close.agency if close.agency is not None else MESSAGE_LEVEL,
                "closed_at": at,
            }
            for plan, at in plans
            for close in plan.close
        ]
        if closes:
            await conn.execute(
                sa.update(DEADLINES)
                .where(
                    DEADLINES.c.message_id == sa.bindparam("closed_id"),
                    DEADLINES.c.rule == sa.bindparam("closed_rule"),
                    DEADLINES.c.agency == sa.bindparam("closed_agency"),
                    DEADLINES.c.state == "open",
                )
                .values(state="closed", closed_at=sa.bindparam("closed_at")),
                closes,
            )

    async def _timelines(
        self, conn: AsyncConnection, message_ids: Iterable[str]
    ) -> dict[str, list[tuple[int, StatusEvent]]]:
        """Each message's status events with their row ids, oldest first, in one query."""
        rows = (
            (
                await conn.execute(
                    sa.select(STATUS_EVENTS)
                    .where(STATUS_EVENTS.c.message_id.in_(sorted(set(message_ids))))
                    .order_by(STATUS_EVENTS.c.at, STATUS_EVENTS.c.id)
                )
            )
            .mappings()
            .all()
        )
        found: dict[str, list[tuple[int, StatusEvent]]] = {}
        for row in rows:
            found.setdefault(row["message_id"], []).append((int(row["id"]), _event_from(row)))
        return found

    async def _record_many(
        self,
        conn: AsyncConnection,
        items: Sequence[tuple[MessageRecord, Sequence[StatusEvent]]],
        routed: Sequence[AuditEntry] = (),
    ) -> list[Recorded]:
        # One statement per table for the whole batch, parameters bound in
        # bulk: building a statement per message cost more CPU than SQLite's
        # commit (profiled with bench/broker_hop.py --profile).
        first: dict[str, MessageRecord] = {}
        for record, _events in items:
            first.setdefault(record.message_id, record)
        inserted: set[str] = set()
        if first:
            inserted = set(
                (
                    await conn.execute(
                        self._insert(MESSAGES)
                        .on_conflict_do_nothing(index_elements=[MESSAGES.c.message_id])
                        .returning(MESSAGES.c.message_id),
                        [_message_values(first[m]) for m in sorted(first)],
                    )
                ).scalars()
            )

        def is_new(record: MessageRecord) -> bool:
            return record.message_id in inserted and first[record.message_id] is record

        new_items = [(record, events) for record, events in items if is_new(record)]
        recipients = [
            {"message_id": record.message_id, "agency": agency, "position": position}
            for record, _events in new_items
            for position, agency in enumerate(record.recipients)
        ]
        if recipients:
            await conn.execute(sa.insert(MESSAGE_RECIPIENTS), recipients)
        events = [event for _record, batch in new_items for event in batch]
        if any(event.receipt_id is not None for event in events):
            await self._insert_events(conn, events)  # receipts need the per-event dedupe
        elif events:
            await conn.execute(sa.insert(STATUS_EVENTS), [_event_values(e) for e in events])
        logged = await append_audit(
            conn,
            [*routed, *(audit_entry.decision_entry(record) for record, _events in new_items)],
        )
        log_index = {
            record.message_id: index
            for (record, _events), index in zip(new_items, logged[len(routed) :], strict=True)
        }
        if log_index:
            await conn.execute(
                sa.update(MESSAGES)
                .where(MESSAGES.c.message_id == sa.bindparam("logged_id"))
                .values(log_index=sa.bindparam("logged_index")),
                [{"logged_id": m, "logged_index": i} for m, i in log_index.items()],
            )
        results: list[Recorded] = []
        for record, _events in items:
            if is_new(record):
                # What was just written is what is stored: no need to read it back.
                written = replace(record, routed_at=None, log_index=log_index[record.message_id])
                results.append(Recorded(record=written, created=True))
                continue
            stored = await self._read_message(conn, record.message_id)
            if stored is None:
                raise RuntimeError(f"message {record.message_id} vanished while being recorded")
            results.append(Recorded(record=stored, created=False))
        return results

    async def get_message(self, message_id: str) -> MessageRecord | None:
        """The stored record of a message, or None."""
        with _boundary(self._url):
            async with self._engine.connect() as conn:
                return await self._read_message(conn, message_id)

    async def mark_routed(self, message_id: str, at: datetime) -> None:
        """Record that every recipient publish was confirmed; the first time stands.

        A message id that is not stored is ignored.
        """
        await self.mark_routed_many([(message_id, at)])

    async def mark_routed_many(self, marks: Sequence[tuple[str, datetime]]) -> None:
        """``mark_routed`` for each (message id, time), in one transaction, each audited once."""
        if marks:
            await self.write_batch([], marks)

    async def _mark_unrouted(
        self, conn: AsyncConnection, marks: Sequence[tuple[str, datetime]]
    ) -> list[AuditEntry]:
        """Set ``routed_at`` where it is unset; the routed audit entries to append.

        A few statements for the whole batch, not a few per message: this runs
        once per routed message on the broker's hot path.
        """
        first: dict[str, datetime] = {}
        for message_id, at in marks:
            first.setdefault(message_id, at)
        if not first:
            return []
        # Locked in id order (see write_batch); a row another broker just marked
        # is re-read after its lock and no longer matches (PostgreSQL).
        rows = (
            (
                await conn.execute(
                    sa.select(MESSAGES)
                    .where(
                        MESSAGES.c.message_id.in_(sorted(first)),
                        MESSAGES.c.routed_at.is_(None),
                    )
                    .order_by(MESSAGES.c.message_id)
                    .with_for_update()
                )
            )
            .mappings()
            .all()
        )
        if not rows:
            return []  # all routed before (redeliveries), or never stored
        await conn.execute(
            sa.update(MESSAGES)
            .where(
                MESSAGES.c.message_id == sa.bindparam("marked_id"),
                MESSAGES.c.routed_at.is_(None),
            )
            .values(routed_at=sa.bindparam("marked_at")),
            [{"marked_id": r["message_id"], "marked_at": first[r["message_id"]]} for r in rows],
        )
        recipients = await self._recipients_of(conn, [r["message_id"] for r in rows])
        records = {
            r["message_id"]: _record_from(r, recipients.get(r["message_id"], [])) for r in rows
        }
        return [
            audit_entry.routed_entry(records[message_id], at)
            for message_id, at in first.items()
            if message_id in records
        ]

    async def _recipients_of(
        self, conn: AsyncConnection, message_ids: Sequence[str]
    ) -> dict[str, list[str]]:
        """Each message's recipients, in their stored order, in one query."""
        found: dict[str, list[str]] = {}
        rows = await conn.execute(
            sa.select(MESSAGE_RECIPIENTS.c.message_id, MESSAGE_RECIPIENTS.c.agency)
            .where(MESSAGE_RECIPIENTS.c.message_id.in_(message_ids))
            .order_by(MESSAGE_RECIPIENTS.c.message_id, MESSAGE_RECIPIENTS.c.position)
        )
        for message_id, agency in rows:
            found.setdefault(message_id, []).append(agency)
        return found

    async def append_events(self, events: Sequence[StatusEvent]) -> int:
        """Append status events; one whose receipt id is already stored is skipped.

        Each event written is audited (a receipt entry) in the same transaction.
        Returns the number of events actually written.
        """
        if not events:
            return 0
        with _boundary(self._url):
            async with self._engine.begin() as conn:
                return await self._insert_events(conn, events, audit=True)

    async def append_audit(self, entries: Sequence[AuditEntry]) -> list[int]:
        """Append entries that go with no other write (refusals of unstored input, reads)."""
        if not entries:
            return []
        with _boundary(self._url):
            async with self._engine.begin() as conn:
                return await append_audit(conn, entries)

    async def timeline(self, message_id: str) -> list[StatusEvent]:
        """Every status event of a message, oldest first (by ``at``, then insertion)."""
        query = (
            sa.select(STATUS_EVENTS)
            .where(STATUS_EVENTS.c.message_id == message_id)
            .order_by(STATUS_EVENTS.c.at, STATUS_EVENTS.c.id)
        )
        with _boundary(self._url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).mappings().all()
        return [_event_from(row) for row in rows]

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` if the database cannot be reached."""
        with _boundary(self._url):
            async with self._engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))

    async def upsert_directory(
        self, entries: Sequence[tuple[str, str, str, str, datetime]]
    ) -> None:
        """Store signed directory entries ``(agency, kid, payload, signature, issued_at)``.

        An entry with a stored (agency, kid) replaces it. Verifying the
        signatures, and refusing a stale bundle, is the caller's job.
        """
        if not entries:
            return
        rows = [DirectoryRow(*entry)._asdict() for entry in entries]
        statement = self._insert(DIRECTORY_ENTRIES)
        statement = statement.on_conflict_do_update(
            index_elements=[DIRECTORY_ENTRIES.c.agency, DIRECTORY_ENTRIES.c.kid],
            set_={
                "payload": statement.excluded.payload,
                "signature": statement.excluded.signature,
                "issued_at": statement.excluded.issued_at,
            },
        )
        with _boundary(self._url):
            async with self._engine.begin() as conn:
                stored = {
                    (r.agency, r.kid): r.payload
                    for r in await conn.execute(
                        sa.select(
                            DIRECTORY_ENTRIES.c.agency,
                            DIRECTORY_ENTRIES.c.kid,
                            DIRECTORY_ENTRIES.c.payload,
                        )
                    )
                }
                await conn.execute(statement, rows)
                # A new or replaced entry is a key change the security officer must see.
                now = datetime.now(UTC)
                await append_audit(
                    conn,
                    [
                        audit_entry.directory_entry(
                            agency=row["agency"],
                            digest=hashlib.sha256(row["payload"].encode()).hexdigest(),
                            at=now,
                        )
                        for row in rows
                        if stored.get((row["agency"], row["kid"])) != row["payload"]
                    ],
                )

    async def directory_rows(self) -> list[DirectoryRow]:
        """Every stored directory entry, by agency and key id."""
        query = sa.select(DIRECTORY_ENTRIES).order_by(
            DIRECTORY_ENTRIES.c.agency, DIRECTORY_ENTRIES.c.kid
        )
        with _boundary(self._url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).mappings().all()
        return [
            DirectoryRow(
                agency=row["agency"],
                kid=row["kid"],
                payload=row["payload"],
                signature=row["signature"],
                issued_at=row["issued_at"],
            )
            for row in rows
        ]

    async def _insert_events(
        self, conn: AsyncConnection, events: Sequence[StatusEvent], *, audit: bool = False
    ) -> int:
        # One statement per event keeps insertion ids in the caller's order
        # (the timeline's tie-break) and tells exactly which were skipped.
        written = [event for event in events if await self._insert_event(conn, event) is not None]
        if audit and written:
            records = await self._read_messages(conn, {e.message_id for e in written})
            await append_audit(
                conn,
                [audit_entry.receipt_entry(e, record=records[e.message_id]) for e in written],
            )
        return len(written)

    async def _insert_event(self, conn: AsyncConnection, event: StatusEvent) -> int | None:
        """Insert one status event; its row id, or None if its receipt id is stored."""
        inserted = (
            await conn.execute(
                self._insert(STATUS_EVENTS)
                .values(_event_values(event))
                .on_conflict_do_nothing(
                    index_elements=[STATUS_EVENTS.c.receipt_id],
                    index_where=_RECEIPT_PRESENT,
                )
                .returning(STATUS_EVENTS.c.id)
            )
        ).first()
        return None if inserted is None else int(inserted.id)

    async def _read_messages(
        self, conn: AsyncConnection, message_ids: Iterable[str]
    ) -> dict[str, MessageRecord | None]:
        """The stored record of each message (None if not stored), in two queries."""
        wanted = sorted(set(message_ids))
        rows = (
            (await conn.execute(sa.select(MESSAGES).where(MESSAGES.c.message_id.in_(wanted))))
            .mappings()
            .all()
        )
        recipients = await self._recipients_of(conn, [r["message_id"] for r in rows])
        found: dict[str, MessageRecord | None] = dict.fromkeys(wanted)
        for row in rows:
            found[row["message_id"]] = _record_from(row, recipients.get(row["message_id"], []))
        return found

    async def _read_message(self, conn: AsyncConnection, message_id: str) -> MessageRecord | None:
        row = (
            (await conn.execute(sa.select(MESSAGES).where(MESSAGES.c.message_id == message_id)))
            .mappings()
            .first()
        )
        if row is None:
            return None
        recipients = (
            await conn.execute(
                sa.select(MESSAGE_RECIPIENTS.c.agency)
                .where(MESSAGE_RECIPIENTS.c.message_id == message_id)
                .order_by(MESSAGE_RECIPIENTS.c.position)
            )
        ).scalars()
        return _record_from(row, list(recipients))

    async def register_consent(self, row: ConsentRow, *, audit: AuditEntry | None = None) -> bool:
        """Store a verified consent and its audit entry; False (nothing written) if stored."""
        with _boundary(self._url):
            async with self._engine.begin() as conn:
                inserted = (
                    await conn.execute(
                        self._insert(CONSENTS)
                        .values(row._asdict())
                        .on_conflict_do_nothing(index_elements=[CONSENTS.c.consent_id])
                        .returning(CONSENTS.c.consent_id)
                    )
                ).first()
                if inserted is not None and audit is not None:
                    await append_audit(conn, [audit])
        return inserted is not None

    async def revoke_consent(
        self,
        consent_id: str,
        *,
        revoked_at: datetime,
        payload: str,
        signature: str,
        audit: AuditEntry | None = None,
    ) -> ConsentRow | None:
        """Record a verified revocation; the first one stands (forward only, never undone).

        The audit entry is appended only by the revocation that takes effect.
        Returns the consent as stored afterwards, or None if it was never registered.
        """
        with _boundary(self._url):
            async with self._engine.begin() as conn:
                changed = (
                    await conn.execute(
                        sa.update(CONSENTS)
                        .where(CONSENTS.c.consent_id == consent_id, CONSENTS.c.revoked_at.is_(None))
                        .values(
                            revoked_at=revoked_at,
                            revocation_payload=payload,
                            revocation_signature=signature,
                        )
                        .returning(CONSENTS.c.consent_id)
                    )
                ).first()
                if changed is not None and audit is not None:
                    await append_audit(conn, [audit])
                row = (
                    (
                        await conn.execute(
                            sa.select(CONSENTS).where(CONSENTS.c.consent_id == consent_id)
                        )
                    )
                    .mappings()
                    .first()
                )
        return None if row is None else ConsentRow(**row)

    # --- deadlines (broker.watchdog) ------------------------------------------------------

    async def open_deadlines(self, items: Sequence[tuple[str, str, str | None, datetime]]) -> int:
        """Open deadlines ``(message id, rule, agency or None, due at)``; an open one stays.

        Returns how many were new. The unique key makes this safe to repeat and
        safe across broker instances (a redelivered message opens nothing twice).
        """
        if not items:
            return 0
        return (await self.write_batch([], [], opens=items)).opened

    async def _open_deadlines(
        self, conn: AsyncConnection, items: Sequence[tuple[str, str, str | None, datetime]]
    ) -> int:
        written = 0
        for message_id, rule, agency, due_at in items:
            inserted = (
                await conn.execute(
                    self._insert(DEADLINES)
                    .values(_deadline_values(message_id, rule, agency, due_at))
                    .on_conflict_do_nothing(
                        index_elements=[
                            DEADLINES.c.message_id,
                            DEADLINES.c.rule,
                            DEADLINES.c.agency,
                        ]
                    )
                    .returning(DEADLINES.c.id)
                )
            ).first()
            written += inserted is not None
        return written

    async def close_deadlines(
        self, message_id: str, rules: Sequence[str], agency: str | None, at: datetime
    ) -> int:
        """Close the open deadlines of ``rules`` for this message (and recipient); how many."""
        if not rules:
            return 0
        with _boundary(self._url):
            async with self._engine.begin() as conn:
                return await self._close_deadlines(conn, message_id, rules, agency, at)

    async def _close_deadlines(
        self,
        conn: AsyncConnection,
        message_id: str,
        rules: Sequence[str],
        agency: str | None,
        at: datetime,
    ) -> int:
        result = await conn.execute(
            sa.update(DEADLINES)
            .where(
                DEADLINES.c.message_id == message_id,
                DEADLINES.c.rule.in_(list(rules)),
                DEADLINES.c.agency == (agency if agency is not None else MESSAGE_LEVEL),
                DEADLINES.c.state == "open",
            )
            .values(state="closed", closed_at=at)
        )
        return int(result.rowcount or 0)

    async def escalate_due(
        self,
        now: datetime,
        *,
        instance: str,
        escalate: Callable[[DeadlineRow], Awaitable[tuple[datetime, Sequence[AuditEntry]]]],
        limit: int = 50,
    ) -> int:
        """Escalate each open deadline due at ``now``, once across every broker instance.

        Each due row is locked (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so two
        instances never take the same row; SQLite has one broker and one
        writer) and ``escalate`` runs inside the row's transaction: it sends the
        escalation and returns when the next one is due and the audit entries.
        ``escalate`` must not use the store itself (on SQLite the row's
        transaction holds the one connection): what it needs comes in the row.
        The row's next due time, attempt count and the audit entries commit
        together; a crash before the commit leaves the row due, and the
        escalation's deterministic message id lets the recipient drop the repeat.
        """
        try:
            return await self._escalate_due(now, instance=instance, escalate=escalate, limit=limit)
        except _EscalationFailed as failed:
            # The sender's failure, not the database's: raise it as it was.
            raise failed.cause from failed.cause.__cause__

    async def _escalate_due(
        self,
        now: datetime,
        *,
        instance: str,
        escalate: Callable[[DeadlineRow], Awaitable[tuple[datetime, Sequence[AuditEntry]]]],
        limit: int,
    ) -> int:
        done = 0
        while done < limit:
            with _boundary(self._url):
                async with self._engine.begin() as conn:
                    query = (
                        sa.select(DEADLINES, MESSAGES.c.kind, MESSAGES.c.sender, MESSAGES.c.child)
                        .join(MESSAGES, MESSAGES.c.message_id == DEADLINES.c.message_id)
                        .where(DEADLINES.c.state == "open", DEADLINES.c.due_at <= now)
                        .order_by(DEADLINES.c.due_at, DEADLINES.c.id)
                        .limit(1)
                    )
                    if conn.dialect.name == "postgresql":
                        query = query.with_for_update(skip_locked=True, of=DEADLINES)
                    row = (await conn.execute(query)).mappings().first()
                    if row is None:
                        return done
                    recipients = (
                        await conn.execute(
                            sa.select(MESSAGE_RECIPIENTS.c.agency)
                            .where(MESSAGE_RECIPIENTS.c.message_id == row["message_id"])
                            .order_by(MESSAGE_RECIPIENTS.c.position)
                        )
                    ).scalars()
                    members, inviters = await _team_of(conn, row["child"])
                    due = _deadline_row(row, recipients, members=members, inviters=inviters)
                    try:
                        next_due, entries = await escalate(due)
                    except Exception as exc:  # carried past the store's boundary, below
                        raise _EscalationFailed(exc) from exc
                    await conn.execute(
                        sa.update(DEADLINES)
                        .where(DEADLINES.c.id == due.id)
                        .values(
                            due_at=next_due,
                            attempts=due.attempts + 1,
                            claimed_by=instance,
                            claimed_at=now,
                        )
                    )
                    await append_audit(conn, entries)
            done += 1
        return done

    async def team_of(self, child: str) -> tuple[list[str], list[str]]:
        """Who coordinates around ``child``, by pseudonym only, from accepted team invitations.

        Returns (agencies that accepted a team invitation about the child, newest
        first; agencies that sent one, newest first): the broker's knowledge of
        Barnets team, from signed receipts and signed headers it already holds.
        """
        with _boundary(self._url):
            async with self._engine.connect() as conn:
                return await _team_of(conn, child)

    async def handle_deadline(
        self, deadline_id: int, *, at: datetime, audit: AuditEntry
    ) -> DeadlineRow | None:
        """Close an open deadline by a person's decision; its audit entry goes with it.

        Returns the deadline as it was, or None if no open deadline has that id.
        """
        with _boundary(self._url):
            async with self._engine.begin() as conn:
                row = (
                    await conn.execute(
                        sa.update(DEADLINES)
                        .where(DEADLINES.c.id == deadline_id, DEADLINES.c.state == "open")
                        .values(state="handled", closed_at=at)
                        .returning(DEADLINES.c.message_id)
                    )
                ).first()
                if row is None:
                    return None
                await append_audit(conn, [audit])
        return await self.deadline(deadline_id)

    async def deadline(self, deadline_id: int) -> DeadlineRow | None:
        """One deadline (in any state), with its message's facts."""
        matters = await self._matters(DEADLINES.c.id == deadline_id)
        return matters[0] if matters else None

    async def open_matters(
        self, *, agency: str | None = None, due_by: datetime | None = None
    ) -> list[DeadlineRow]:
        """Every open deadline, oldest first: of matters ``agency`` sends or receives,
        and due at or before ``due_by``, where given (both filtered in the query)."""
        condition = DEADLINES.c.state == "open"
        if due_by is not None:
            condition = sa.and_(condition, DEADLINES.c.due_at <= due_by)
        if agency is not None:
            receives = sa.select(MESSAGE_RECIPIENTS.c.message_id).where(
                MESSAGE_RECIPIENTS.c.agency == agency
            )
            condition = sa.and_(
                condition,
                sa.or_(MESSAGES.c.sender == agency, DEADLINES.c.message_id.in_(receives)),
            )
        return await self._matters(condition)

    async def open_matter_counts(self) -> tuple[dict[str, int], datetime | None]:
        """How many deadlines are open per rule, and the earliest open one's due time.

        One grouped query over the ``(state, due_at)`` index, for the watchdog's
        gauges: it reads no matter, however many are open.
        """
        query = (
            sa.select(DEADLINES.c.rule, sa.func.count(), sa.func.min(DEADLINES.c.due_at))
            .where(DEADLINES.c.state == "open")
            .group_by(DEADLINES.c.rule)
        )
        with _boundary(self._url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        earliest = min((due for _rule, _count, due in rows), default=None)
        return {rule: int(count) for rule, count, _due in rows}, earliest

    async def _matters(self, condition: sa.ColumnElement[bool]) -> list[DeadlineRow]:
        query = (
            sa.select(DEADLINES, MESSAGES.c.kind, MESSAGES.c.sender, MESSAGES.c.child)
            .join(MESSAGES, MESSAGES.c.message_id == DEADLINES.c.message_id)
            .where(condition)
            .order_by(DEADLINES.c.due_at, DEADLINES.c.id)
        )
        with _boundary(self._url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).mappings().all()
                ids = [row["message_id"] for row in rows]
                recipients: dict[str, list[str]] = {}
                for message_id, agency in await conn.execute(
                    sa.select(MESSAGE_RECIPIENTS.c.message_id, MESSAGE_RECIPIENTS.c.agency)
                    .where(MESSAGE_RECIPIENTS.c.message_id.in_(ids))
                    .order_by(MESSAGE_RECIPIENTS.c.message_id, MESSAGE_RECIPIENTS.c.position)
                ):
                    recipients.setdefault(message_id, []).append(agency)
        return [_deadline_row(row, recipients.get(row["message_id"], ())) for row in rows]

    async def consents(self, *, child: str | None = None) -> list[ConsentRow]:
        """Every stored consent (of one child, if given), oldest registration first.

        All of them are read in pages of ``CONSENT_PAGE`` by primary key, one
        snapshot for every page: in one statement, a million consents (the
        broker's start, ``ConsentRegistry.load``) took about 30 s on
        PostgreSQL, its sort spilling a gigabyte to disk, and failed at
        ``COMMAND_TIMEOUT_S`` (bench/state_scale.py).
        """
        if child is not None:
            query = (
                sa.select(CONSENTS)
                .where(CONSENTS.c.child == child)
                .order_by(CONSENTS.c.registered_at, CONSENTS.c.consent_id)
            )
            with _boundary(self._url):
                async with self._engine.connect() as conn:
                    rows = (await conn.execute(query)).mappings().all()
            return [ConsentRow(**row) for row in rows]
        consents: list[ConsentRow] = []
        with _boundary(self._url):
            async with self._engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    # SQLite's one read transaction is one snapshot already.
                    await conn.execution_options(isolation_level="REPEATABLE READ")
                after: str | None = None
                while True:
                    page = sa.select(CONSENTS).order_by(CONSENTS.c.consent_id).limit(CONSENT_PAGE)
                    if after is not None:
                        page = page.where(CONSENTS.c.consent_id > after)
                    rows = (await conn.execute(page)).mappings().all()
                    consents += [ConsentRow(**row) for row in rows]
                    if len(rows) < CONSENT_PAGE:
                        break
                    after = rows[-1]["consent_id"]
        return sorted(consents, key=lambda row: (row.registered_at, row.consent_id))
