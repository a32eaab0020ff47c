"""An in-memory audit log and an mTLS-served broker app, for the officer's routes and console.

:class:`MemoryAuditReader` implements ``broker.audit.ports.AuditReader`` over a
list of entries and a dict of Merkle nodes, with the real tree math
(``broker.audit.merkle``) and real signed checkpoints (``broker.audit.note``),
so every proof it hands out verifies unless a test asks it to tamper. Like the
real log, each read appends an ``audit_read`` entry naming the officer before
it answers, and it remembers every call. ``broker.audit.log.AuditLog`` over
the store is tested against the databases elsewhere.

:func:`make_pki` builds the demo area's certificates (``keys.setup.init_area``)
plus an operator certificate; :func:`serve` runs the broker's app with the
audit routes and console on 127.0.0.1 over the area's real mutual TLS.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import merkle, note
from broker.audit.console import add_audit_console
from broker.audit.entry import canonical_bytes, read_entry
from broker.audit.http import add_audit_routes
from broker.audit.log import export_line
from broker.audit.ports import (
    MAX_PAGE,
    AuditFilter,
    AuditLookupError,
    AuditRangeError,
    Checkpoint,
    LoggedEntry,
    SearchPage,
)
from broker.http import create_app, serve_http
from broker.metrics import Metrics
from broker.records import MessageRecord, ReceiptWrite, Recorded, StatusEvent
from keys.area import load_area
from keys.ca import (
    Issued,
    Role,
    cert_to_pem,
    client_ssl_context,
    issue_client_cert,
    key_to_pem,
    load_cert_pem,
    load_key_pem,
    server_ssl_context,
)
from keys.setup import AreaLayout, init_area
from schemas.audit import AuditEntry
from schemas.directory import SignedDirectoryEntry

DEMO = Path(__file__).resolve().parent.parent / "deploy" / "areas" / "demo.toml"
AREA = "lidingo-demo"
ORIGIN = "backa.audit/lidingo-demo"
OFFICER = "sakerhet-lidingo"
OPERATOR = "op.olle"
SCHOOL = "torsviks-skola"
SOCIAL = "lidingo-socialtjanst"
BUP = "bup-lidingo"
CHILD = "ab" * 32
OTHER_CHILD = "cd" * 32
T0 = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
#: A legal reference with markup in it: the console must show it as text.
HOSTILE_REF = '<script>alert("x")</script> & OSL'


# --- the in-memory log --------------------------------------------------------------------------


def _matches(entry: AuditEntry, query: AuditFilter) -> bool:
    return (
        (query.child is None or entry.child == query.child)
        and (
            query.agency is None or entry.sender == query.agency or query.agency in entry.recipients
        )
        and (query.kind is None or entry.kind == query.kind)
        and (query.event is None or entry.event == query.event)
        and (query.since is None or entry.at >= query.since)
        and (query.until is None or entry.at < query.until)
    )


def _flip(proof: list[bytes]) -> list[bytes]:
    if not proof:
        return [bytes(32)]
    first = proof[0]
    return [bytes([first[0] ^ 1]) + first[1:], *proof[1:]]


@dataclass
class MemoryAuditReader:
    """``AuditReader`` over a list and a node dict; remembers calls; may tamper when told."""

    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    origin: str = ORIGIN
    clock: Callable[[], datetime] = field(default=lambda: T0 + timedelta(hours=1))
    logged: list[LoggedEntry] = field(default_factory=list)
    nodes: dict[tuple[int, int], bytes] = field(default_factory=dict)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    #: (method, officer) of every read, in order.
    calls: list[tuple[str, str]] = field(default_factory=list)
    #: (actor, query) of every refused attempt.
    refusals: list[tuple[str, str]] = field(default_factory=list)
    tamper_inclusion: bool = False
    tamper_consistency: bool = False
    #: A checkpoint note to hand out instead of the signed one (a forged checkpoint).
    forged_note: str | None = None

    @property
    def verifier(self) -> str:
        """The vkey that verifies this log's checkpoints."""
        return note.vkey(self.origin, self.key.public_key())

    @property
    def size(self) -> int:
        """How many entries the log holds."""
        return len(self.logged)

    def append(self, entry: AuditEntry) -> LoggedEntry:
        """Append one entry, storing the tree nodes it completes."""
        canonical = canonical_bytes(entry)
        leaf = merkle.leaf_hash(canonical)
        index = len(self.logged)
        for level, position, digest in merkle.nodes_to_store(index, leaf, self._get):
            self.nodes[(level, position)] = digest
        logged = LoggedEntry(index=index, entry=entry, canonical=canonical, leaf_hash=leaf)
        self.logged.append(logged)
        return logged

    def root(self, size: int) -> bytes:
        """The tree head of the first ``size`` entries."""
        return merkle.root(size, self._get)

    def sign(self) -> Checkpoint:
        """Sign a checkpoint of the log as it is now."""
        size = self.size
        root = self.root(size)
        text = note.sign_checkpoint(self.origin, size, root, name=self.origin, key=self.key)
        checkpoint = Checkpoint(
            origin=self.origin, size=size, root=root, note=text, at=self.clock()
        )
        self.checkpoints.append(checkpoint)
        return checkpoint

    def _get(self, level: int, index: int) -> bytes:
        return self.nodes[(level, index)]

    def _read(self, method: str, officer: str, query: str) -> None:
        self.calls.append((method, officer))
        self.append(read_entry(actor=officer, query=query, at=self.clock()))

    def officers(self) -> set[str]:
        """Every officer id a read was made with."""
        return {officer for _, officer in self.calls}

    async def search(
        self, query: AuditFilter, *, after: int | None, limit: int, officer: str
    ) -> SearchPage:
        """Matching entries with index > after, oldest first."""
        size = self.size
        self._read("search", officer, query.describe())
        limit = max(1, min(limit, MAX_PAGE))
        found = [
            logged
            for logged in self.logged[:size]
            if (after is None or logged.index > after) and _matches(logged.entry, query)
        ]
        page = found[:limit]
        next_after = page[-1].index if len(found) > limit else None
        return SearchPage(entries=page, next_after=next_after, log_size=size)

    async def entry(self, index: int, *, officer: str) -> LoggedEntry:
        """One entry; AuditLookupError beyond the log."""
        size = self.size
        self._read("entry", officer, f"entry {index}")
        if not 0 <= index < size:
            raise AuditLookupError(f"no entry {index}")
        return self.logged[index]

    async def inclusion_proof(self, index: int, size: int, *, officer: str) -> list[bytes]:
        """The inclusion proof, flipped when ``tamper_inclusion`` is set."""
        if not 0 <= index < size:
            raise AuditRangeError("index must be at least 0 and below size")
        if size > self.size:
            raise AuditLookupError("size is beyond the log")
        self._read("inclusion_proof", officer, f"inclusion {index} in {size}")
        proof = merkle.inclusion_proof(index, size, self._get)
        return _flip(proof) if self.tamper_inclusion else proof

    async def consistency_proof(self, size1: int, size2: int, *, officer: str) -> list[bytes]:
        """The consistency proof, flipped when ``tamper_consistency`` is set."""
        if not 0 <= size1 <= size2:
            raise AuditRangeError("sizes must satisfy 0 <= size1 <= size2")
        if size2 > self.size:
            raise AuditLookupError("size2 is beyond the log")
        self._read("consistency_proof", officer, f"consistency {size1} {size2}")
        proof = merkle.consistency_proof(size1, size2, self._get)
        return _flip(proof) if self.tamper_consistency else proof

    async def checkpoint(self, *, officer: str, fresh: bool = False) -> Checkpoint:
        """The latest checkpoint (signing one first when fresh or when there is none)."""
        self._read("checkpoint", officer, "checkpoint" + (" fresh" if fresh else ""))
        latest = self.sign() if fresh or not self.checkpoints else self.checkpoints[-1]
        if self.forged_note is None:
            return latest
        return Checkpoint(
            origin=latest.origin,
            size=latest.size,
            root=latest.root,
            note=self.forged_note,
            at=latest.at,
        )

    async def export(self, start: int, end: int, *, officer: str) -> AsyncIterator[bytes]:
        """Entries [start, end) as JSON lines; checks the range on the first step, as the log does."""
        if not 0 <= start <= end:
            raise AuditRangeError("the range must satisfy 0 <= start <= end")
        if end > self.size:
            raise AuditLookupError("end is beyond the log")
        self._read("export", officer, f"export {start} {end}")
        for logged in self.logged[start:end]:
            yield export_line(logged.index, logged.canonical, logged.leaf_hash)

    async def refused(self, *, actor: str, query: str) -> None:
        """Log the refused attempt like a read."""
        self.refusals.append((actor, query))
        self.append(read_entry(actor=actor, query=f"refused {query}", at=self.clock()))


def _entry(minutes: int, **fields: object) -> AuditEntry:
    at = (T0 + timedelta(minutes=minutes)).isoformat()
    return AuditEntry.model_validate({"at": at, **fields}, strict=False)


def seeded_reader(*, referrals: int = 3) -> MemoryAuditReader:
    """A log of a few decisions about two children, with a checkpoint signed over all of it."""
    reader = MemoryAuditReader()
    message = "019abb2a-6a50-7cc3-9e0f-3a5f7d1e2b4c"
    for n in range(referrals):
        reader.append(
            _entry(
                n,
                event="accepted",
                message_id=f"019abb2a-6a50-7cc3-9e0f-{n:012x}",
                kind="referral",
                sender=SCHOOL,
                recipients=[SOCIAL, BUP],
                child=CHILD,
                basis={"type": "legal", "ref": "osl-10-28"},
                rule="osl-10-28-concern",
                legal_ref="OSL 10 kap. 28 §",
                digest="0" * 64,
            )
        )
    reader.append(
        _entry(
            20,
            event="rejected",
            message_id=message,
            kind="concern_report",
            sender=BUP,
            recipients=[SOCIAL],
            child=CHILD,
            basis={"type": "consent", "consent_id": "019abb2a-6a52-7000-8000-00000000beef"},
            reason="consent_missing",
        )
    )
    reader.append(
        _entry(
            30,
            event="receipt",
            message_id=message,
            sender=SOCIAL,
            recipients=[SOCIAL],
            status="read",
            actor="anna.s",
        )
    )
    reader.append(
        _entry(
            40,
            event="accepted",
            message_id="019abb2a-6a50-7cc3-9e0f-0000000000ff",
            kind="team_invitation",
            sender=SOCIAL,
            recipients=[SCHOOL],
            child=OTHER_CHILD,
            basis={"type": "legal", "ref": "sol-12-10"},
            rule="sol-team",
            legal_ref=HOSTILE_REF,
        )
    )
    reader.sign()
    return reader


# --- certificates and a served app --------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """The demo area's certificates, plus an operator's."""

    layout: AreaLayout
    extra: Path

    def dir(self, who: str) -> Path:
        """Where ``who``'s client.crt and client.key are."""
        if who == OFFICER:
            return self.layout.officer_dir(who)
        if who == OPERATOR:
            return self.extra / "operator"
        return self.layout.agency_dir(who)

    def client(self, who: str) -> ssl.SSLContext:
        """A client context presenting ``who``'s certificate."""
        base = self.dir(who)
        return client_ssl_context(
            cert_file=base / "client.crt",
            key_file=base / "client.key",
            ca_file=self.layout.ca_cert,
            passphrase=None,
        )

    def server(self) -> ssl.SSLContext:
        """The broker's server context, requiring a client certificate from the area CA."""
        return server_ssl_context(
            cert_file=self.layout.broker_dir / "tls.crt",
            key_file=self.layout.broker_dir / "tls.key",
            ca_file=self.layout.ca_cert,
            passphrase=None,
        )


def make_pki(root: Path) -> Pki:
    """The demo area with insecure test keys (certificates start now: TLS checks the clock)."""
    now = datetime.now(UTC)
    out = root / "keys"
    init_area(
        load_area(DEMO),
        out,
        passphrase=None,
        insecure=True,
        now=now,
        rng=os.urandom,
        scrypt_n=2**10,
    )
    layout = AreaLayout(out)
    area_ca = Issued(
        key=load_key_pem(layout.ca_key.read_bytes(), None),
        cert=load_cert_pem(layout.ca_cert.read_bytes()),
    )
    operator = issue_client_cert(
        area_ca, common_name=OPERATOR, role=Role.OPERATOR, agency=None, area=AREA, now=now
    )
    base = root / "extra" / "operator"
    base.mkdir(parents=True)
    (base / "client.crt").write_bytes(cert_to_pem(operator.cert))
    (base / "client.key").write_bytes(key_to_pem(operator.key, None))
    return Pki(layout=layout, extra=root / "extra")


class NoMessages:
    """A ``broker.records.Store`` that holds no messages: these tests are about the audit routes.

    What the HTTP layer appends itself (a refused access) is kept in ``audit``.
    """

    def __init__(self) -> None:
        """No messages, no audit entries yet."""
        self.audit: list[AuditEntry] = []

    async def record_decision(
        self,
        record: MessageRecord,
        events: Sequence[StatusEvent],
        opens: Sequence[tuple[str, str, str | None, datetime]] = (),
    ) -> Recorded:
        """Never called here."""
        raise NotImplementedError

    async def get_message(self, message_id: str) -> MessageRecord | None:
        """No message is known."""
        return None

    async def mark_routed(self, message_id: str, at: datetime) -> None:
        """Never called here."""
        raise NotImplementedError

    async def append_events(self, events: Sequence[StatusEvent]) -> int:
        """Never called here."""
        raise NotImplementedError

    async def record_receipt(self, write: ReceiptWrite) -> bool:
        """Never called here."""
        raise NotImplementedError

    async def open_deadlines(self, items: Sequence[tuple[str, str, str | None, datetime]]) -> int:
        """Never called here."""
        raise NotImplementedError

    async def timeline(self, message_id: str) -> list[StatusEvent]:
        """No events."""
        return []

    async def append_audit(self, entries: Sequence[AuditEntry]) -> list[int]:
        """Kept in ``audit``, numbered from 0."""
        self.audit.extend(entries)
        return list(range(len(self.audit) - len(entries), len(self.audit)))

    async def ping(self) -> None:
        """Always reachable."""


class _NoDirectory:
    """A ``ServedDirectory`` without entries."""

    area = AREA
    root_key = ""

    def signed_entries(self) -> list[SignedDirectoryEntry]:
        """None."""
        return []


@asynccontextmanager
async def serve(
    pki: Pki, reader: MemoryAuditReader, store: NoMessages | None = None
) -> AsyncIterator[str]:
    """The broker's app with the audit routes and console over mTLS; yields its base URL."""
    app = create_app(
        store=store if store is not None else NoMessages(),
        directory=_NoDirectory,
        readiness=[],
        metrics=Metrics(),
        clock=lambda: T0,
    )
    add_audit_routes(app, reader, origin=reader.origin)
    add_audit_console(app, reader, verifier=reader.verifier)
    runner = await serve_http(app, host="127.0.0.1", port=0, ssl_context=pki.server())
    try:
        yield f"https://localhost:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
