"""The audit log in the real store (SQLite and PostgreSQL): appended with what it describes,
provable, signed, exported, and every tampering found at its index."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from backa.cli import app
from broker.audit import merkle, verify_consistency, verify_inclusion
from broker.audit.entry import canonical_bytes, consent_entry, read_entry
from broker.audit.log import AuditLog, origin_for
from broker.audit.note import open_checkpoint
from broker.audit.ports import AuditFilter, AuditLookupError
from broker.audit.verify import SignedSize, verify_export
from broker.records import MessageRecord, Outcome, StatusEvent
from broker.store import AUDIT_ENTRIES, AUDIT_NODES, SqlStore, create_store
from schemas.audit import AuditEvent
from tests.support import T0, Agency

BROKER = Agency.make("audit-broker")
CHILD = "c" * 64
OFFICER = "sakerhet-lidingo"


def _record(**changes: Any) -> MessageRecord:
    record = MessageRecord(
        message_id=str(uuid.uuid4()),
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
        rule="consent.sharing",
        legal_ref="OSL 12 kap. 2 §",
        recipients=("soc-backa", "bup-vast"),
    )
    return replace(record, **changes)


def _receipt(message_id: str, status: str, agency: str, n: int) -> StatusEvent:
    return StatusEvent(
        message_id=message_id,
        agency=agency,
        status=status,
        at=T0 + timedelta(minutes=n),
        recorded_at=T0 + timedelta(minutes=n),
        signer=agency,
        receipt_id=f"receipt-{message_id}-{status}-{agency}",
        staff_id="handl-7" if status == "read" else None,
    )


def _log(store: SqlStore) -> AuditLog:
    return AuditLog(store.engine, signer=BROKER.sender, origin=origin_for("test-area"))


async def _story(store: SqlStore) -> list[str]:
    """A referral accepted, routed and answered; another refused; a consent registered."""
    accepted = _record()
    await store.record_decision(accepted, [])
    await store.mark_routed(accepted.message_id, T0 + timedelta(seconds=3))
    await store.append_events(
        [
            _receipt(accepted.message_id, "delivered", "soc-backa", 1),
            _receipt(accepted.message_id, "read", "soc-backa", 2),
        ]
    )
    refused = _record(outcome=Outcome.REJECTED, reason="consent_revoked", rule=None, legal_ref=None)
    await store.record_decision(refused, [])
    await store.append_audit(
        [
            consent_entry(
                revoked=False,
                consent_id=str(uuid.uuid4()),
                child=CHILD,
                agency="bvc-backa",
                staff_id="bvc.ssk",
                parties=["bvc-backa", "soc-backa"],
                at=T0,
            )
        ]
    )
    return [accepted.message_id, refused.message_id]


async def test_every_decision_and_event_is_logged_with_its_why(store: SqlStore) -> None:
    """Accepted names its rule and legal reference, rejected its reason; receipts, routing follow."""
    accepted_id, refused_id = await _story(store)
    page = await _log(store).search(AuditFilter(child=CHILD), after=None, limit=50, officer=OFFICER)
    events = [(e.entry.event, e.entry.message_id) for e in page.entries]
    assert events[:5] == [
        (AuditEvent.ACCEPTED, accepted_id),
        (AuditEvent.ROUTED, accepted_id),
        (AuditEvent.RECEIPT, accepted_id),
        (AuditEvent.RECEIPT, accepted_id),
        (AuditEvent.REJECTED, refused_id),
    ]
    first, _, _, read, refused = page.entries[:5]
    assert (first.entry.rule, first.entry.legal_ref) == ("consent.sharing", "OSL 12 kap. 2 §")
    assert read.entry.actor == "handl-7"
    assert refused.entry.reason is not None
    assert refused.entry.reason.value == "consent_revoked"
    stored = await store.get_message(accepted_id)
    assert stored is not None
    assert stored.log_index == first.index, "the accepted receipt carries this index"


async def test_a_read_of_the_log_is_itself_logged(store: SqlStore) -> None:
    """Searching, reading an entry and asking for proofs each leave an audit_read entry."""
    await _story(store)
    log = _log(store)
    before = await log.size()
    await log.search(AuditFilter(agency="soc-backa"), after=None, limit=10, officer=OFFICER)
    await log.entry(0, officer=OFFICER)
    await log.inclusion_proof(0, before, officer=OFFICER)
    page = await log.search(
        AuditFilter(event=AuditEvent.AUDIT_READ), after=None, limit=10, officer=OFFICER
    )
    queries = [(e.entry.actor, e.entry.query) for e in page.entries]
    assert queries == [
        (OFFICER, "search agency=soc-backa"),
        (OFFICER, "entry 0"),
        (OFFICER, f"inclusion 0 in {before}"),
    ]


async def test_proofs_from_the_store_verify_for_every_entry(store: SqlStore) -> None:
    """Root from stored subtrees equals a naive rebuild; every inclusion and consistency proof verifies."""
    await store.append_audit(
        [read_entry(actor=f"officer-{i}", query=f"q{i}", at=T0) for i in range(37)]
    )
    log = _log(store)
    async with store.engine.connect() as conn:
        leaves = [
            bytes(h)
            for (h,) in await conn.execute(
                sa.select(AUDIT_ENTRIES.c.leaf_hash).order_by(AUDIT_ENTRIES.c.seq)
            )
        ]
    size = len(leaves)
    checkpoint = await log.sign_checkpoint()
    assert checkpoint.root == _naive_root(leaves)
    for index in range(size):
        proof = await log.inclusion_proof(index, size, officer=OFFICER)
        verify_inclusion(leaves[index], index, size, proof, checkpoint.root)
    for size1 in (1, 5, 16, 17, 36):
        proof = await log.consistency_proof(size1, size, officer=OFFICER)
        verify_consistency(size1, size, proof, _naive_root(leaves[:size1]), checkpoint.root)
    with pytest.raises(AuditLookupError):
        await log.inclusion_proof(0, size + 100, officer=OFFICER)


def _naive_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.node_hash(_naive_root(leaves[:k]), _naive_root(leaves[k:]))


# PostgreSQL only: several broker instances share a database only there (one SQLite
# file has one broker, whose single connection already serialises every append).
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_concurrent_appends_from_several_instances_keep_one_tree(
    store: SqlStore, database_url: str
) -> None:
    """Three instances appending at once get distinct indices and one consistent tree."""
    instances = [store, create_store(database_url), create_store(database_url)]
    try:
        results = await asyncio.gather(
            *(
                instances[i % 3].append_audit(
                    [read_entry(actor=f"o-{i}-{j}", query="q", at=T0) for j in range(3)]
                )
                for i in range(12)
            )
        )
    finally:
        for instance in instances[1:]:
            await instance.close()
    indices = sorted(i for batch in results for i in batch)
    assert indices == list(range(36))
    async with store.engine.connect() as conn:
        leaves = [
            bytes(h)
            for (h,) in await conn.execute(
                sa.select(AUDIT_ENTRIES.c.leaf_hash).order_by(AUDIT_ENTRIES.c.seq)
            )
        ]
    assert (await _log(store).sign_checkpoint()).root == _naive_root(leaves)


async def test_a_checkpoint_is_a_signed_note_the_vkey_opens(store: SqlStore) -> None:
    """The checkpoint names origin, size and root, signed by the broker key."""
    await _story(store)
    log = _log(store)
    checkpoint = await log.checkpoint(officer=OFFICER, fresh=True)
    origin, size, root = open_checkpoint(checkpoint.note, log.verifier)
    assert (origin, size, root) == (log.origin, checkpoint.size, checkpoint.root)


async def _export(log: AuditLog, size: int) -> list[bytes]:
    return [line async for line in log.export(0, size, officer=OFFICER)]


async def _signed_story(store: SqlStore) -> tuple[AuditLog, list[SignedSize], int]:
    await _story(store)
    await store.append_audit([read_entry(actor=f"o{i}", query="q", at=T0) for i in range(10)])
    log = _log(store)
    checkpoint = await log.sign_checkpoint()
    return log, [SignedSize(checkpoint.size, checkpoint.root)], checkpoint.size


async def test_an_untouched_export_verifies(store: SqlStore) -> None:
    """Export and checkpoint agree, entry by entry and at the signed root."""
    log, signed, size = await _signed_story(store)
    report = verify_export(await _export(log, size), signed)
    assert report.ok, report.problem
    assert report.checked_sizes == (size,)


async def _tamper(store: SqlStore, how: str) -> int:
    """Change the store behind the broker's back; the index the change is at."""
    async with store.engine.begin() as conn:
        if how == "change":
            row = (
                await conn.execute(sa.select(AUDIT_ENTRIES.c.entry).where(AUDIT_ENTRIES.c.seq == 4))
            ).one()
            entry = json.loads(row.entry)
            entry["reason"] = "no_basis"
            await conn.execute(
                sa.update(AUDIT_ENTRIES)
                .where(AUDIT_ENTRIES.c.seq == 4)
                .values(entry=json.dumps(entry, sort_keys=True, separators=(",", ":")).encode())
            )
            return 4
        if how == "change-and-rehash":
            row = (
                await conn.execute(sa.select(AUDIT_ENTRIES.c.entry).where(AUDIT_ENTRIES.c.seq == 6))
            ).one()
            data = bytes(row.entry).replace(b'"actor":"o', b'"actor":"x')
            assert data != bytes(row.entry)
            leaf = merkle.leaf_hash(data)
            await conn.execute(
                sa.update(AUDIT_ENTRIES)
                .where(AUDIT_ENTRIES.c.seq == 6)
                .values(entry=data, leaf_hash=leaf)
            )
            await conn.execute(
                sa.update(AUDIT_NODES)
                .where(AUDIT_NODES.c.level == 0, AUDIT_NODES.c.idx == 6)
                .values(hash=leaf)
            )
            return 6
        if how == "delete":
            await conn.execute(sa.delete(AUDIT_ENTRIES).where(AUDIT_ENTRIES.c.seq == 3))
            return 3
        # reorder: swap the entries at 2 and 5
        rows = {
            r.seq: bytes(r.entry)
            for r in await conn.execute(
                sa.select(AUDIT_ENTRIES.c.seq, AUDIT_ENTRIES.c.entry).where(
                    AUDIT_ENTRIES.c.seq.in_([2, 5])
                )
            )
        }
        for seq, other in ((2, 5), (5, 2)):
            await conn.execute(
                sa.update(AUDIT_ENTRIES).where(AUDIT_ENTRIES.c.seq == seq).values(entry=rows[other])
            )
        return 2


@pytest.mark.parametrize("how", ["change", "change-and-rehash", "delete", "reorder"])
async def test_backa_audit_verify_finds_tampering_and_names_the_index(
    store: SqlStore, how: str, tmp_path: Path
) -> None:
    """A row changed, rewritten with its hashes, deleted or swapped: verify names where."""
    log, _signed, size = await _signed_story(store)
    checkpoint = await log.checkpoint(officer=OFFICER)
    where = await _tamper(store, how)
    export = tmp_path / "export.jsonl"
    lines = [
        line async for line in log.export(0, size - (1 if how == "delete" else 0), officer=OFFICER)
    ]
    export.write_bytes(b"".join(lines))
    (tmp_path / "checkpoint").write_text(checkpoint.note, encoding="utf-8")
    (tmp_path / "vkey").write_text(log.verifier, encoding="utf-8")
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "verify",
            "--export",
            str(export),
            "--broker-key",
            str(tmp_path / "vkey"),
            "--checkpoint",
            str(tmp_path / "checkpoint"),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "NOT VERIFIED" in result.output
    if how == "change-and-rehash":
        assert f"an entry in [0, {size - 1}] was changed" in result.output
    else:
        assert f"first bad index {where}" in result.output


async def test_backa_audit_verify_accepts_an_intact_export(store: SqlStore, tmp_path: Path) -> None:
    """The same command says verified, and exits 0, for the untouched log."""
    log, _signed, size = await _signed_story(store)
    checkpoint = await log.checkpoint(officer=OFFICER)
    export = tmp_path / "export.jsonl"
    export.write_bytes(b"".join(await _export(log, size)))
    (tmp_path / "checkpoint").write_text(checkpoint.note, encoding="utf-8")
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "verify",
            "--export",
            str(export),
            "--broker-key",
            log.verifier,
            "--checkpoint",
            str(tmp_path / "checkpoint"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"verified: {size} entries" in result.output


async def test_entries_hold_metadata_only(store: SqlStore) -> None:
    """No entry has a field beyond the schema's metadata; the canonical bytes are what is hashed."""
    await _story(store)
    page = await _log(store).search(AuditFilter(), after=None, limit=100, officer=OFFICER)
    allowed = {
        "at", "event", "message_id", "kind", "sender", "recipients", "child", "basis", "rule",
        "legal_ref", "reason", "status", "digest", "actor", "query",
    }  # fmt: skip
    for logged in page.entries:
        assert set(json.loads(logged.canonical)) <= allowed
        assert canonical_bytes(logged.entry) == logged.canonical
        assert merkle.leaf_hash(logged.canonical) == logged.leaf_hash


async def test_backa_audit_extract_gives_one_childs_entries(
    store: SqlStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The officer types the number; the pseudonym is computed locally; only that child's entries."""
    from keys.keystore import write_private_key  # noqa: PLC0415
    from keys.pseudonym import PseudonymKey, pseudonym_from_text  # noqa: PLC0415

    secret = b"p" * 32
    key_file = tmp_path / "pseudonym.key"
    write_private_key(key_file, "hmac-sha256", "pseudonym", secret, passphrase=None, insecure=True)
    number = "201212121212"
    child = pseudonym_from_text(number, PseudonymKey(secret), today=T0.date())
    await store.record_decision(_record(child=child), [])
    await store.record_decision(_record(), [])  # another child
    log = _log(store)
    export = tmp_path / "export.jsonl"
    export.write_bytes(b"".join(await _export(log, await log.size())))
    monkeypatch.delenv("BACKA_KEY_PASSPHRASE", raising=False)
    monkeypatch.delenv("BACKA_KEY_PASSPHRASE_FILE", raising=False)
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "extract",
            "--pseudonym-key",
            str(key_file),
            "--export",
            str(export),
            "--allow-insecure-keys",
        ],
        input=number + "\n",
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["entry"]["child"] for line in lines] == [child]
    assert number not in result.output
    assert "1 entries about this child" in result.output


async def test_backa_audit_review_samples_what_the_review_needs(
    store: SqlStore, tmp_path: Path
) -> None:
    """Night-time reads, refusals and revocations are listed; daytime reads are not."""
    night = T0.replace(hour=1)  # 02:00 in Stockholm
    day = T0.replace(hour=9)  # 10:00 in Stockholm, a Wednesday
    await store.append_audit(
        [
            read_entry(actor="officer-night", query="search (all)", at=night),
            read_entry(actor="officer-day", query="search (all)", at=day),
            consent_entry(
                revoked=True,
                consent_id=str(uuid.uuid4()),
                child=CHILD,
                agency="soc-backa",
                staff_id="handl-7",
                parties=["soc-backa", "skola-backa"],
                at=day,
            ),
        ]
    )
    await store.record_decision(
        _record(outcome=Outcome.REJECTED, reason="no_basis", rule=None, legal_ref=None), []
    )
    log = _log(store)
    export = tmp_path / "export.jsonl"
    export.write_bytes(b"".join(await _export(log, await log.size())))
    result = CliRunner().invoke(app, ["audit", "review", "--export", str(export)])
    assert result.exit_code == 0, result.output
    reasons = [line.split("\t")[2] for line in result.stdout.splitlines() if "\t" in line]
    assert reasons == ["read outside office hours", "consent revoked", "refusal"]
    assert "officer-day" not in result.stdout
