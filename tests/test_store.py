"""The SQL store on the real SQLite and the real PostgreSQL: idempotence, order, time, schema.

Every test that takes ``store`` or ``database_url`` runs on both backends
(tests/dbs.py). The rows are made-up metadata: no content, key or personnummer.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url

from broker.errors import Unavailable
from broker.records import MessageRecord, Outcome, StatusEvent, Store
from broker.store import (
    METADATA,
    MIGRATION_LOCK_KEY,
    SqlStore,
    StoreUnavailable,
    create_store,
    migrate,
)

T0 = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
CHILD = "c" * 64
#: The newest migration: every test database is migrated to it.
HEAD = "0002"
#: A time zone other than UTC, to show that times are normalised, not just passed through.
CET = timezone(timedelta(hours=1))


def _record(
    message_id: str | None = None,
    *,
    recipients: tuple[str, ...] = ("soc-backa", "bup-vast"),
    **changes: Any,
) -> MessageRecord:
    record = MessageRecord(
        message_id=message_id or str(uuid.uuid4()),
        digest="d" * 64,
        kind="referral",
        sender="skola-backa",
        sender_kid="skola-backa-2026",
        child=CHILD,
        basis_type="consent",
        basis_ref=str(uuid.uuid4()),
        purpose="referral",
        thread=str(uuid.uuid4()),
        in_reply_to=None,
        created=T0,
        expires=T0 + timedelta(days=30),
        received_at=T0 + timedelta(seconds=2),
        outcome=Outcome.ACCEPTED,
        reason=None,
        rule="consent.referral",
        legal_ref="OSL 12 kap. 2 §",
        recipients=recipients,
    )
    return replace(record, **changes)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _event(
    message_id: str,
    status: str,
    *,
    at: datetime = T0,
    agency: str | None = None,
    receipt_id: str | None = None,
) -> StatusEvent:
    return StatusEvent(
        message_id=message_id,
        agency=agency,
        status=status,
        at=at,
        recorded_at=T0 + timedelta(minutes=5),
        signer=agency or "broker",
        receipt_id=receipt_id,
    )


def _assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is UTC


async def test_record_decision_inserts_then_returns_the_existing_record(store: SqlStore) -> None:
    """A second record_decision of the same id changes nothing and returns the first record."""
    first = _record()
    recorded = await store.record_decision(first, [_event(first.message_id, "accepted")])
    assert recorded.created
    assert recorded.record.log_index is not None, "the decision was logged"
    first = replace(first, log_index=recorded.record.log_index)
    assert recorded.record == first

    second = replace(first, outcome=Outcome.REJECTED, reason="no_basis", recipients=("police-x",))
    again = await store.record_decision(second, [_event(first.message_id, "rejected")])

    assert not again.created
    assert again.record == first
    assert await store.get_message(first.message_id) == first
    assert [e.status for e in await store.timeline(first.message_id)] == ["accepted"]


async def test_concurrent_record_decision_creates_exactly_one(
    store: SqlStore, database_url: str
) -> None:
    """Ten concurrent decisions on one id, from three instances' connections, create one record."""
    message_id = str(uuid.uuid4())
    in_use = most_in_use = 0

    def checkout(*_: object) -> None:
        nonlocal in_use, most_in_use
        in_use += 1
        most_in_use = max(most_in_use, in_use)

    def checkin(*_: object) -> None:
        nonlocal in_use
        in_use -= 1

    # Three stores on one database stand for three broker instances.
    instances = [store, create_store(database_url), create_store(database_url)]
    try:
        for instance in instances:
            sa.event.listen(instance.engine.sync_engine, "checkout", checkout)
            sa.event.listen(instance.engine.sync_engine, "checkin", checkin)
        # Each contender carries its own digest, so the winner is recognisable.
        contenders = [_record(message_id, digest=f"{i:064x}") for i in range(10)]
        results = await asyncio.gather(
            *(
                instances[i % len(instances)].record_decision(r, [_event(message_id, "accepted")])
                for i, r in enumerate(contenders)
            )
        )
    finally:
        for instance in instances[1:]:
            await instance.close()

    assert most_in_use > 1, "the contenders never overlapped: the test proves nothing"
    assert sum(r.created for r in results) == 1
    winner = next(r.record for r in results if r.created)
    assert replace(winner, log_index=None) in contenders
    assert all(r.record == winner for r in results)
    assert len(await store.timeline(message_id)) == 1


async def test_recipients_round_trip_in_order(store: SqlStore) -> None:
    """Recipients come back in the order they were recorded, not sorted."""
    record = _record(recipients=("vc-backa", "bup-vast", "soc-backa", "polis-vast"))
    await store.record_decision(record, [])

    stored = await store.get_message(record.message_id)

    assert stored is not None
    assert stored.recipients == ("vc-backa", "bup-vast", "soc-backa", "polis-vast")


async def test_record_without_recipients_round_trips(store: SqlStore) -> None:
    """A rejected message with no recipients and every optional field set round-trips."""
    record = _record(
        recipients=(),
        outcome=Outcome.REJECTED,
        reason="no_basis",
        rule=None,
        legal_ref=None,
        in_reply_to=str(uuid.uuid4()),
    )
    logged = await store.record_decision(record, [_event(record.message_id, "rejected")])

    assert await store.get_message(record.message_id) == logged.record
    assert logged.record == replace(record, log_index=logged.record.log_index)


async def test_record_decision_refuses_incoherent_input(store: SqlStore) -> None:
    """A recipient listed twice, or a first event of another message, is refused before I/O."""
    record = _record()
    with pytest.raises(ValueError, match="twice"):
        await store.record_decision(replace(record, recipients=("a-1", "a-1")), [])
    with pytest.raises(ValueError, match="belong"):
        await store.record_decision(record, [_event(str(uuid.uuid4()), "accepted")])
    assert await store.get_message(record.message_id) is None


async def test_unknown_message_has_no_record_and_no_timeline(store: SqlStore) -> None:
    """An id never recorded has no record and an empty timeline."""
    unknown = str(uuid.uuid4())
    assert await store.get_message(unknown) is None
    assert await store.timeline(unknown) == []


async def test_append_events_skips_known_receipts_and_counts(store: SqlStore) -> None:
    """A receipt id already stored, or repeated in one call, is written once; the count says so."""
    record = _record()
    await store.record_decision(record, [_event(record.message_id, "accepted")])
    mid = record.message_id

    def receipt(status: str, receipt_id: str) -> StatusEvent:
        return _event(mid, status, agency="soc-backa", receipt_id=receipt_id)

    assert await store.append_events([receipt("delivered", "r-1"), receipt("read", "r-2")]) == 2
    assert (
        await store.append_events(
            [receipt("delivered", "r-1"), receipt("answered", "r-3"), receipt("answered", "r-3")]
        )
        == 1
    )
    # Events without a receipt id (the broker's own) are never de-duplicated.
    assert await store.append_events([_event(mid, "routed"), _event(mid, "routed")]) == 2
    assert await store.append_events([]) == 0

    statuses = [e.status for e in await store.timeline(mid)]
    assert sorted(statuses) == ["accepted", "answered", "delivered", "read", "routed", "routed"]


async def test_timeline_orders_by_at_then_insertion(store: SqlStore) -> None:
    """Events recorded out of order come back by ``at``; equal times keep insertion order."""
    record = _record()
    mid = record.message_id
    await store.record_decision(record, [_event(mid, "accepted", at=T0 + timedelta(minutes=1))])
    await store.append_events(
        [
            _event(mid, "read", at=T0 + timedelta(minutes=9), agency="soc-backa", receipt_id="r-9"),
            _event(mid, "expired", at=T0, agency="skola-backa"),
            _event(mid, "delivered", at=T0 + timedelta(minutes=5), agency="soc-backa"),
            _event(mid, "handed_over", at=T0 + timedelta(minutes=5), agency="soc-backa"),
        ]
    )
    # Written later but happened earlier: the signer's time decides, in any zone.
    await store.append_events(
        [_event(mid, "routed", at=(T0 + timedelta(minutes=2)).astimezone(CET))]
    )

    assert [e.status for e in await store.timeline(mid)] == [
        "expired",
        "accepted",
        "routed",
        "delivered",
        "handed_over",
        "read",
    ]


async def test_mark_routed_sets_the_first_time_only(store: SqlStore) -> None:
    """mark_routed sets routed_at once; a repeat keeps the first time; an unknown id is ignored."""
    record = (await store.record_decision(_record(), [])).record
    assert (await store.get_message(record.message_id)) == record

    await store.mark_routed(record.message_id, T0 + timedelta(seconds=3))
    await store.mark_routed(record.message_id, T0 + timedelta(seconds=60))
    await store.mark_routed(str(uuid.uuid4()), T0)

    stored = await store.get_message(record.message_id)
    assert stored is not None
    assert stored.routed_at == T0 + timedelta(seconds=3)


async def test_datetimes_come_back_aware_utc(store: SqlStore) -> None:
    """Times written in another zone come back as the same instants, aware and in UTC."""
    record = _record(
        created=T0.astimezone(CET),
        expires=(T0 + timedelta(days=1)).astimezone(CET),
        received_at=T0.astimezone(CET),
    )
    await store.record_decision(
        record, [_event(record.message_id, "accepted", at=T0.astimezone(CET))]
    )
    await store.mark_routed(record.message_id, T0.astimezone(CET))
    await store.upsert_directory([("soc-backa", "soc-2026", "p", "s", T0.astimezone(CET))])

    stored = await store.get_message(record.message_id)
    assert stored is not None
    for value in (stored.created, stored.expires, stored.received_at, stored.routed_at):
        _assert_utc(value)
    assert stored.created == T0
    assert stored.expires == T0 + timedelta(days=1)
    (event,) = await store.timeline(record.message_id)
    _assert_utc(event.at)
    _assert_utc(event.recorded_at)
    assert event.at == T0
    (row,) = await store.directory_rows()
    _assert_utc(row.issued_at)


async def test_naive_datetime_is_refused(store: SqlStore) -> None:
    """A naive datetime is refused rather than guessed at; nothing is stored."""
    record = _record(created=datetime(2026, 11, 25, 9, 30))  # noqa: DTZ001 - the point of the test
    with pytest.raises(sa_exc.StatementError, match="naive datetime refused"):
        await store.record_decision(record, [])
    assert await store.get_message(record.message_id) is None


async def test_directory_upsert_replaces_by_agency_and_kid(store: SqlStore) -> None:
    """An entry with a stored (agency, kid) replaces it; other entries stay."""
    await store.upsert_directory(
        [
            ("soc-backa", "soc-2026", "payload-1", "sig-1", T0),
            ("soc-backa", "soc-2027", "payload-2", "sig-2", T0),
            ("bup-vast", "bup-2026", "payload-3", "sig-3", T0),
        ]
    )
    await store.upsert_directory(
        [("soc-backa", "soc-2026", "payload-1b", "sig-1b", T0 + timedelta(days=1))]
    )
    await store.upsert_directory([])

    rows = await store.directory_rows()

    assert [(r.agency, r.kid, r.payload, r.signature, r.issued_at) for r in rows] == [
        ("bup-vast", "bup-2026", "payload-3", "sig-3", T0),
        ("soc-backa", "soc-2026", "payload-1b", "sig-1b", T0 + timedelta(days=1)),
        ("soc-backa", "soc-2027", "payload-2", "sig-2", T0),
    ]


async def test_ping_answers_on_a_live_database(store: SqlStore) -> None:
    """ping returns quietly when the database answers, and SqlStore is a Store (mypy checks)."""
    protocol: Store = store
    await protocol.ping()  # raises StoreUnavailable when the database does not answer
    assert await store.consents() == [], "and a query on the fresh schema answers too"


async def test_migrate_twice_is_a_no_op(store: SqlStore, database_url: str) -> None:
    """Migrating an up-to-date database changes nothing and keeps its rows."""
    record = (await store.record_decision(_record(), [])).record

    await migrate(database_url)

    async with store.engine.connect() as conn:
        versions = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
    assert [v for (v,) in versions] == [HEAD]
    assert await store.get_message(record.message_id) == record


async def _versions(database_url: str) -> list[str]:
    store = create_store(database_url)
    try:
        async with store.engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
    finally:
        await store.close()
    return [v for (v,) in rows]


async def test_concurrent_migrations_in_one_process_take_turns(database_url: str) -> None:
    """Several tasks migrating one fresh database at once all succeed, and it is migrated once."""
    await asyncio.gather(*(migrate(database_url) for _ in range(4)))

    assert await _versions(database_url) == [HEAD]


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_migration_waits_for_the_advisory_lock(database_url: str) -> None:
    """On PostgreSQL a migration waits while another instance holds the migration lock."""
    holder = await asyncpg.connect(_libpq(database_url))
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        migrating = asyncio.create_task(migrate(database_url))
        done, _ = await asyncio.wait({migrating}, timeout=1.5)
        assert not done, "the migration ran while another instance held the lock"
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        await asyncio.wait_for(migrating, timeout=30)
    finally:
        await holder.close()

    assert await _versions(database_url) == [HEAD]


def _schema_differences(connection: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(connection), METADATA))


def _schema_names(connection: Connection) -> dict[str, tuple[set[str], ...]]:
    inspector = sa.inspect(connection)
    return {
        table: (
            {c["name"] for c in inspector.get_columns(table)},
            # PostgreSQL also lists the index behind each unique constraint.
            {
                str(i["name"])
                for i in inspector.get_indexes(table)
                if not i.get("duplicates_constraint")
            },
            {str(u["name"]) for u in inspector.get_unique_constraints(table)},
        )
        for table in inspector.get_table_names()
        if table != "alembic_version"
    }


def _metadata_names() -> dict[str, tuple[set[str], ...]]:
    return {
        table.name: (
            {c.name for c in table.columns},
            {str(i.name) for i in table.indexes},
            {str(c.name) for c in table.constraints if isinstance(c, sa.UniqueConstraint)},
        )
        for table in METADATA.sorted_tables
    }


async def test_migrated_schema_matches_the_metadata(store: SqlStore) -> None:
    """The migrations build exactly the tables, columns, types and indexes store.py declares."""
    async with store.engine.connect() as conn:
        differences = await conn.run_sync(_schema_differences)
        names = await conn.run_sync(_schema_names)

    assert differences == []
    assert names == _metadata_names()
    assert set(names) == {
        "messages",
        "message_recipients",
        "status_events",
        "directory_entries",
        "consents",
        "deadlines",
        "audit_entries",
        "audit_parties",
        "audit_nodes",
        "audit_checkpoints",
    }


@pytest.fixture(params=["postgres", "sqlite"])
def unreachable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL that cannot work: a closed port, or a SQLite file beneath a regular file."""
    if request.param == "postgres":
        return "postgresql+asyncpg://postgres:s3cret-pw@127.0.0.1:1/x"
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    return f"sqlite+aiosqlite:///{blocker / 'broker.db'}"


async def test_unreachable_database_raises_store_unavailable(unreachable_url: str) -> None:
    """An unreachable database is StoreUnavailable (503), and no message names the password."""
    with pytest.raises(StoreUnavailable) as migrating:
        await migrate(unreachable_url)

    errors = [migrating.value]
    try:
        store = create_store(unreachable_url)
    except StoreUnavailable as exc:
        errors.append(exc)
    else:
        try:
            with pytest.raises(StoreUnavailable) as pinging:
                await store.ping()
            with pytest.raises(StoreUnavailable) as recording:
                await store.record_decision(_record(), [])
            errors += [pinging.value, recording.value]
        finally:
            await store.close()

    for error in errors:
        assert isinstance(error, Unavailable)
        assert (error.code, error.http_status) == ("store_unavailable", 503)
        assert "s3cret-pw" not in f"{error} {error!r} {error.detail}"
        assert error.__cause__ is not None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_commits_are_synced_and_written_ahead(store: SqlStore) -> None:
    """WAL, and every commit synced (``FULL``): a power loss loses no committed decision
    or audit entry that a signed checkpoint may already cover."""
    async with store.engine.connect() as conn:
        assert await conn.scalar(sa.text("PRAGMA journal_mode")) == "wal"
        assert await conn.scalar(sa.text("PRAGMA synchronous")) == 2  # FULL
        assert await conn.scalar(sa.text("PRAGMA foreign_keys")) == 1
