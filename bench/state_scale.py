"""State at scale: decisions over 1,000,000 consents, proofs in 10,000,000 audit entries.

Issue 9's goals, each measured on the real code against the real PostgreSQL
store, with its anchor in the same run and the ratio printed:

* **policy decision** (goal: p99 < 1 ms) -- ``ConsentPolicy.decide``, what the
  pipeline calls for every message, over the ``ConsentBook`` that
  ``ConsentRegistry.load`` fills at start from the ``consents`` table holding
  ``--consents`` signed consents. The headers are a mix: valid, expired,
  revoked and unknown consents, and a legal basis. Anchor: one bare
  primary-key ``SELECT`` of the same consent's payload on the same table
  (asyncpg, prepared), the least any decision that read the store could cost.
  Also timed: ``ConsentRegistry.load`` itself (the broker's start) and
  ``ConsentRegistry.for_child`` (the consent route's list of one child).
* **inclusion proof** (goal: p99 < 10 ms) -- ``AuditLog.inclusion_proof`` for
  random entries of the tree of ``--entries`` against the signed checkpoint of
  that size: it reads the proof's stored subtree hashes and logs the read as
  an ``audit_read`` entry, committing. Also the store work of ``GET
  /v1/audit/proofs/inclusion`` (``entry`` + ``inclusion_proof``); every proof
  timed is verified against the checkpoint with ``merkle.verify_inclusion``.
  Anchors: the same call on a log of ``--small-entries`` (a second database
  loaded alike: the ratio is what the log's size costs), reading the same
  subtree hashes (``broker.store.read_nodes``) on a read-only connection,
  computing the proof from them in memory, appending one ``audit_read`` entry
  alone, and one ``SELECT 1`` through the store's engine.
* **export verification** (measured and reported) -- ``backa audit verify``
  (``broker.audit.cli.verify_command``) over the whole export that
  ``AuditLog.export`` wrote to a file, against the signed checkpoint. Anchor:
  SHA-256 of each line of the same file. The export is timed against a raw
  binary ``COPY`` of the same rows out of PostgreSQL.

The state is loaded with COPY into a fresh database (``backa_bench_state_<hex>``,
and ``..._small`` for the anchor, on the server of ``--database-url``, migrated
by ``broker.store.migrate``, dropped at the end unless ``--keep``), in chunks,
by ``--workers`` processes.
The rows are what the real code writes: consents signed by their registering
agency (``keys.signed``), audit entries in canonical form with their search
columns and parties, and every stored subtree hash computed by
``broker.audit.merkle.nodes_to_store``. The log is a broker's: each block of
ten entries opens with a consent's registration (and, for every twentieth, its
revocation), the rest are messages accepted, routed and delivered. Bytes come
from templates made by the real builders; the load is then verified with the
real code: sampled entries equal ``broker.audit.entry``'s builders, sampled
consent rows equal ``sign_consent``'s and verify against the directory, one
consent is registered and revoked through ``ConsentRegistry`` and matches,
the tree holds exactly the expected nodes, each proof timed verifies, a
consistency proof over the entries appended since verifies, and the whole
export verifies against the signed checkpoint. A chunk commits whole, so a
database kept with ``--keep`` (or named with ``--reuse NAME``, made if missing)
is loaded only with what it lacks: an interrupted load resumes.

Percentiles within each round, medians over ``--rounds``; the export is
verified ``--verify-rounds`` times (once by default: minutes at full size).
The last line is JSON, also written to bench/results/state_scale.json.

    .venv/bin/python -m bench.state_scale [--consents 1000000] [--entries 10000000]
        [--rounds 5] [--database-url postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import math
import multiprocessing
import os
import platform
import random
import re
import resource
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import asyncpg
import sqlalchemy as sa
import typer
from sqlalchemy.engine import make_url

from broker.audit import merkle
from broker.audit.cli import verify_command
from broker.audit.entry import (
    canonical_bytes,
    consent_entry,
    decision_entry,
    parse_canonical,
    read_entry,
    receipt_entry,
    routed_entry,
)
from broker.audit.log import AuditLog, origin_for
from broker.audit.note import open_checkpoint
from broker.audit.ports import Checkpoint, LoggedEntry
from broker.consents import ConsentBook, ConsentPolicy, ConsentRegistry
from broker.records import MessageRecord, Outcome, StatusEvent
from broker.store import (
    AUDIT_ENTRIES,
    AUDIT_NODES,
    AUDIT_PARTIES,
    CONSENTS,
    ConsentRow,
    SqlStore,
    create_store,
    migrate,
    read_nodes,
)
from keys.ca import PeerIdentity, Role
from keys.directory import Directory, canonical_json
from keys.envelope import seal
from keys.policy import PolicyFile, consent_allows_party, load_policy
from keys.signed import (
    CONSENT_DOMAIN,
    REVOCATION_DOMAIN,
    sign_consent,
    sign_revocation,
    verify_consent,
)
from schemas.audit import AuditEntry
from schemas.common import b64url_encode
from schemas.consent import ConsentRecord, ConsentRevocation, SignedConsent
from schemas.directory import AgencyType
from schemas.envelope import ConsentBasis, Kind, LegalBasis, ProtectedHeader, Purpose
from tests.support import Agency, signed_directory

POLICY_FILE: Final = Path(__file__).resolve().parents[1] / "deploy" / "policy" / "sweden.toml"
DEFAULT_PG: Final = os.environ.get("BACKA_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

#: The first audit entry's time; each next entry is ENTRY_STEP later.
START: Final = datetime(2026, 1, 5, 7, 0, tzinfo=UTC)
ENTRY_STEP: Final = timedelta(seconds=3)
#: Audit entries per consent: consent c is registered by entry BLOCK * c ...
BLOCK: Final = 10
#: ... and, if it is one of the revoked (every REVOKE_EVERY-th), revoked by entry BLOCK * c + 5.
REVOKE_SLOT: Final = 5
REVOKE_EVERY: Final = 20
#: Every EXPIRE_EVERY-th consent (c % 10 == 3) was valid for an hour only.
EXPIRE_EVERY: Final = 10
#: Audit entries per loading chunk (2**16), aligned so each chunk is a perfect subtree.
CHUNK_BITS: Final = 16
CONSENT_CHUNK: Final = 50_000
OFFICER: Final = "bench.officer"

_COPY_ENTRIES: Final = ("seq", "at", "entry", "leaf_hash", "event", "kind", "child", "message_id")
_COPY_CONSENTS: Final = tuple(ConsentRow._fields)


# --- the area and what is in its store (pure, deterministic) ------------------------------------


@dataclass(frozen=True)
class _Area:
    """The bench's agencies, their signed directory and the real rules file."""

    registrars: tuple[Agency, ...]  # register consents, send under them and under the law
    social: tuple[Agency, ...]  # social services: the recipients
    broker: Agency
    directory: Directory
    policy: PolicyFile


@functools.cache
def _area() -> _Area:
    registrars = (
        *(Agency.make(f"skola-{n:02d}") for n in range(1, 7)),
        *(Agency.make(f"forskola-{n:02d}") for n in range(1, 4)),
        *(Agency.make(f"bvc-{n:02d}") for n in range(1, 3)),
    )
    types = [AgencyType.SCHOOL] * 6 + [AgencyType.PRESCHOOL] * 3 + [AgencyType.CHILD_HEALTH] * 2
    social = (Agency.make("soc-01"), Agency.make("soc-02"))
    broker = Agency.make("broker")
    directory = signed_directory(
        [
            *zip(registrars, types, strict=True),
            *((s, AgencyType.SOCIAL_SERVICES) for s in social),
            (Agency.make("polis-01"), AgencyType.POLICE),
            (broker, AgencyType.BROKER),
        ],
        at=START - timedelta(days=1),
    )
    return _Area(registrars, social, broker, directory, load_policy(POLICY_FILE))


@dataclass(frozen=True)
class _Plan:
    """How much state (consents in the book, entries in the tree), and the loading chunks."""

    consents: int
    entries: int
    chunk_bits: int = CHUNK_BITS
    consent_chunk: int = CONSENT_CHUNK

    @property
    def now(self) -> datetime:
        """When decisions are made: a day after the last consent and the last entry."""
        return _at(max(self.entries, BLOCK * self.consents)) + timedelta(days=1)


def _at(i: int) -> datetime:
    return START + i * ENTRY_STEP


def _hex(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def _consent_id(c: int) -> str:
    return f"0194a000-0000-7000-8000-{c:012x}"


def _message_id(m: int) -> str:
    return f"0194b000-0000-7000-8000-{m:012x}"


def _revoked(c: int) -> bool:
    return c % REVOKE_EVERY == REVOKE_EVERY - 1


def _expired(c: int) -> bool:
    return c % EXPIRE_EVERY == 3  # noqa: PLR2004 - any residue but REVOKE_EVERY's


def _registrar(c: int) -> Agency:
    registrars = _area().registrars
    return registrars[c % len(registrars)]


def _staff(agency: Agency) -> str:
    return f"handl.{agency.agency}"


def _consent_fields(c: int) -> dict[str, Any]:
    """Consent c as the registering agency's adapter sends it: valid for two years or an hour."""
    registered = _at(BLOCK * c)
    until = registered + (timedelta(hours=1) if _expired(c) else timedelta(days=700))
    registrar = _registrar(c)
    age = 6 + c % 12
    return {
        "id": _consent_id(c),
        "child": _hex(f"bench child {c // 2}"),
        "guardians": [{"pseudonym": _hex(f"bench guardian {c}"), "custodial": True}],
        "joint_custody": False,
        "child_view": {"consented": True, "age": age, "assessed_mature": age >= 12},  # noqa: PLR2004
        "registered_by": {
            "agency": registrar.agency,
            "kid": registrar.kid,
            "staff_id": _staff(registrar),
        },
        "parties": [{"agency": registrar.agency}, {"agency_type": "social_services"}],
        "purposes": ["referral", "coordination"],
        "valid_from": registered.isoformat(),
        "valid_until": until.isoformat(),
        "document_digest": _hex(f"bench consent document {c}"),
    }


def _consent_record(c: int) -> ConsentRecord:
    return ConsentRecord.model_validate_json(json.dumps(_consent_fields(c)))


def _revocation(c: int) -> ConsentRevocation:
    registrar = _registrar(c)
    return ConsentRevocation.model_validate_json(
        json.dumps(
            {
                "consent_id": _consent_id(c),
                "revoked_at": _at(BLOCK * c + REVOKE_SLOT).isoformat(),
                "reason": "guardian_withdrew",
                "by": {
                    "agency": registrar.agency,
                    "kid": registrar.kid,
                    "staff_id": _staff(registrar),
                },
            }
        )
    )


def _real_consent_row(c: int) -> ConsentRow:
    """Consent c's row through ``keys.signed``, as ``ConsentRegistry`` stores it."""
    record = _consent_record(c)
    signed = sign_consent(record, _registrar(c).sender)
    row = ConsentRow(
        consent_id=record.id,
        child=record.child,
        payload=signed.payload,
        signature=signed.signature,
        valid_from=record.valid_from,
        valid_until=record.valid_until,
        registered_at=_at(BLOCK * c),
    )
    if not _revoked(c):
        return row
    revocation = sign_revocation(_revocation(c), _registrar(c).sender)
    return row._replace(
        revoked_at=_at(BLOCK * c + REVOKE_SLOT),
        revocation_payload=revocation.payload,
        revocation_signature=revocation.signature,
    )


def _parties(record: ConsentRecord, directory: Directory) -> list[str]:
    # As ConsentRegistry._parties; the registration check below compares with the real one.
    return [
        agency
        for agency in directory.agencies()
        if agency != directory.broker_agency() and consent_allows_party(record, agency, directory)
    ]


def _consent_entries_before(i: int, consents: int) -> int:
    registered = min(consents, -(-i // BLOCK))
    revocable = min(consents, max(0, (i - REVOKE_SLOT - 1) // BLOCK + 1))
    return registered + revocable // REVOKE_EVERY


def _slot(i: int, consents: int) -> tuple[str, int]:
    """What entry i is: ("registered" | "revoked", consent) or ("message", message event)."""
    block, position = divmod(i, BLOCK)
    if block < consents and position == 0:
        return "registered", block
    if block < consents and position == REVOKE_SLOT and _revoked(block):
        return "revoked", block
    return "message", i - _consent_entries_before(i, consents)


@dataclass(frozen=True)
class _Message:
    """Message m: a referral under a consent (even m) or a concern report under OSL 10:28."""

    m: int
    sender: str
    recipient: str
    child: str
    consent: int | None

    @classmethod
    def of(cls, m: int, consents: int) -> _Message:
        area = _area()
        if m % 2 == 0 and consents:
            c = (m // 2) % consents
            if _revoked(c) or _expired(c):
                c -= 1  # the log holds what was accepted: a consent that was valid then
            return cls(
                m=m,
                sender=_registrar(c).agency,
                recipient=area.social[c % 2].agency,
                child=_hex(f"bench child {c // 2}"),
                consent=c,
            )
        return cls(
            m=m,
            sender=area.registrars[m % len(area.registrars)].agency,
            recipient=area.social[m % 2].agency,
            child=_hex(f"bench pupil {m // 4}"),
            consent=None,
        )

    def record(
        self, *, received_at: datetime, message_id: str, child: str, digest: str, consent_id: str
    ) -> MessageRecord:
        """The broker's record of the message (accepted); the fields given may be sentinels."""
        legal = self.consent is None
        rule = next(
            r
            for r in _area().policy.rules
            if r.id == ("osl-10-28.concern-report" if legal else "consent.sharing")
        )
        return MessageRecord(
            message_id=message_id,
            digest=digest,
            kind=(Kind.CONCERN_REPORT if legal else Kind.REFERRAL).value,
            sender=self.sender,
            sender_kid="k2026-0001",
            child=child,
            basis_type="legal" if legal else "consent",
            basis_ref="osl-10-28" if legal else consent_id,
            purpose=(Purpose.CONCERN if legal else Purpose.REFERRAL).value,
            thread=message_id,
            in_reply_to=None,
            created=received_at,
            expires=received_at + timedelta(days=30),
            received_at=received_at,
            outcome=Outcome.ACCEPTED,
            reason=None,
            rule=rule.id,
            legal_ref=rule.legal_ref,
            recipients=(self.recipient,),
        )


def _message_entry(
    message: _Message, phase: int, at: datetime, values: Mapping[str, str]
) -> AuditEntry:
    record = message.record(
        received_at=at,
        message_id=values["mid"],
        child=values["child"],
        digest=values["digest"],
        consent_id=values["cid"],
    )
    if phase == 0:
        return decision_entry(record)
    if phase == 1:
        return routed_entry(record, at)
    delivered = StatusEvent(
        message_id=record.message_id,
        agency=message.recipient,
        status="delivered",
        at=at,
        recorded_at=at,
        signer=message.recipient,
    )
    return receipt_entry(delivered, record=record)


def _consent_audit_entry(
    c: int, *, revoked: bool, at: datetime, values: Mapping[str, str]
) -> AuditEntry:
    record = _consent_record(c)
    return consent_entry(
        revoked=revoked,
        consent_id=values["cid"],
        child=values["child"],
        agency=record.registered_by.agency,
        staff_id=record.registered_by.staff_id,
        parties=_parties(record, _area().directory),
        at=at,
        digest=None if revoked else values["digest"],
    )


def _values(i: int, consents: int) -> dict[str, str]:
    """The fields of entry i that differ between entries of one shape."""
    what, n = _slot(i, consents)
    if what != "message":
        return _consent_values(n)
    return _message_values(_Message.of(n // 3, consents))


def _consent_values(c: int) -> dict[str, str]:
    return {
        "cid": _consent_id(c),
        "child": _hex(f"bench child {c // 2}"),
        "digest": _hex(f"bench consent document {c}"),
    }


def _message_values(message: _Message) -> dict[str, str]:
    return {
        "mid": _message_id(message.m),
        "child": message.child,
        "digest": _hex(f"bench message {message.m}"),
        "cid": _consent_id(message.consent or 0),
    }


def real_entry(i: int, consents: int) -> AuditEntry:
    """Entry i through ``broker.audit.entry``'s builders, as the broker would log it."""
    what, n = _slot(i, consents)
    values = _values(i, consents)
    if what != "message":
        return _consent_audit_entry(n, revoked=what == "revoked", at=_at(i), values=values)
    return _message_entry(_Message.of(n // 3, consents), n % 3, _at(i), values)


# --- templates: the builders' bytes with the varying fields left open ---------------------------

# Values no real entry holds, each valid where it stands, so the real builders accept them.
_SENTINELS: Final = {
    "at": "2001-02-03T04:05:06Z",
    "until": "2001-02-03T04:05:07Z",
    "mid": "99999999-9999-7999-8999-999999999901",
    "cid": "99999999-9999-7999-8999-999999999902",
    "child": "9" * 63 + "3",
    "digest": "9" * 63 + "4",
    "guardian": "9" * 63 + "5",
}
_SENTINEL_AT: Final = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)


class _Template:
    """Canonical bytes with the sentinels' places left as ``%s``, filled in order."""

    def __init__(self, data: bytes) -> None:
        found = sorted(
            (match.start(), name)
            for name, text in _SENTINELS.items()
            for match in re.finditer(re.escape(text.encode()), data)
        )
        shape = data.replace(b"%", b"%%")
        for text in _SENTINELS.values():
            shape = shape.replace(text.encode(), b"%s")
        self._shape = shape
        self._names = tuple(name for _, name in found)

    def fill(self, values: Mapping[str, bytes]) -> bytes:
        return self._shape % tuple(values[name] for name in self._names)


def _stamp(at: datetime) -> bytes:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ").encode()


class _Templates:
    """Per process: the entry and consent templates, made on first use by the real builders."""

    def __init__(self, consents: int) -> None:
        self.consents = consents
        self._entries: dict[tuple[object, ...], tuple[_Template, AuditEntry]] = {}
        self._consents: dict[tuple[int, int], _Template] = {}
        self._revocations: dict[int, _Template] = {}
        self._message: _Message | None = None

    def entry(self, i: int, at: datetime) -> tuple[bytes, AuditEntry, dict[str, str]]:
        """Entry i (at ``_at(i)``): its canonical bytes, an entry of its shape, its values."""
        what, n = _slot(i, self.consents)
        sentinels = {k: _SENTINELS[k] for k in ("mid", "cid", "child", "digest")}
        if what == "message":
            # A message's three entries are neighbours: made once, used thrice.
            if self._message is None or self._message.m != n // 3:
                self._message = _Message.of(n // 3, self.consents)
            message = self._message
            values = _message_values(message)
            key: tuple[object, ...] = (
                n % 3,
                message.consent is None,
                message.sender,
                message.recipient,
            )
            if key not in self._entries:
                shaped = _message_entry(message, n % 3, _SENTINEL_AT, sentinels)
                self._entries[key] = (_Template(canonical_bytes(shaped)), shaped)
        else:
            values = _consent_values(n)
            key = (what, n % len(_area().registrars))
            if key not in self._entries:
                shaped = _consent_audit_entry(
                    n, revoked=what == "revoked", at=_SENTINEL_AT, values=sentinels
                )
                self._entries[key] = (_Template(canonical_bytes(shaped)), shaped)
        template, shaped = self._entries[key]
        filled = {k: v.encode() for k, v in values.items()}
        filled["at"] = _stamp(at)
        return template.fill(filled), shaped, values

    def consent_row(self, c: int) -> ConsentRow:
        """Consent c's row: the bytes of ``_real_consent_row`` (Ed25519 is deterministic)."""
        registrar = _registrar(c)
        key = (c % len(_area().registrars), c % 12)
        if key not in self._consents:
            fields = _consent_fields(c)
            fields.update(
                id=_SENTINELS["cid"],
                child=_SENTINELS["child"],
                document_digest=_SENTINELS["digest"],
                valid_from=_SENTINEL_AT.isoformat(),
                valid_until=(_SENTINEL_AT + timedelta(seconds=1)).isoformat(),
            )
            fields["guardians"][0]["pseudonym"] = _SENTINELS["guardian"]
            record = ConsentRecord.model_validate_json(json.dumps(fields))
            self._consents[key] = _Template(_payload_bytes(record))
        registered = _at(BLOCK * c)
        until = registered + (timedelta(hours=1) if _expired(c) else timedelta(days=700))
        child = _hex(f"bench child {c // 2}")
        payload = self._consents[key].fill(
            {
                "cid": _consent_id(c).encode(),
                "child": child.encode(),
                "digest": _hex(f"bench consent document {c}").encode(),
                "guardian": _hex(f"bench guardian {c}").encode(),
                "at": _stamp(registered),
                "until": _stamp(until),
            }
        )
        row = ConsentRow(
            consent_id=_consent_id(c),
            child=child,
            payload=b64url_encode(payload),
            signature=b64url_encode(registrar.signing.sign(CONSENT_DOMAIN + payload)),
            valid_from=registered,
            valid_until=until,
            registered_at=registered,
        )
        if not _revoked(c):
            return row
        index = c % len(_area().registrars)
        if index not in self._revocations:
            fields = json.loads(_revocation(c).model_dump_json())
            fields.update(consent_id=_SENTINELS["cid"], revoked_at=_SENTINEL_AT.isoformat())
            revocation = ConsentRevocation.model_validate_json(json.dumps(fields))
            self._revocations[index] = _Template(_payload_bytes(revocation))
        revoked_at = _at(BLOCK * c + REVOKE_SLOT)
        body = self._revocations[index].fill(
            {"cid": _consent_id(c).encode(), "at": _stamp(revoked_at)}
        )
        return row._replace(
            revoked_at=revoked_at,
            revocation_payload=b64url_encode(body),
            revocation_signature=b64url_encode(registrar.signing.sign(REVOCATION_DOMAIN + body)),
        )


def _payload_bytes(model: ConsentRecord | ConsentRevocation) -> bytes:
    # keys.signed._sign's payload: the model's canonical JSON.
    return canonical_json(model.model_dump(mode="json"))


@functools.cache
def _templates(consents: int) -> _Templates:
    return _Templates(consents)


# --- loading (worker processes) -----------------------------------------------------------------


def _audit_rows(
    plan: _Plan, start: int, end: int
) -> tuple[list[tuple[Any, ...]], list[tuple[str, int]], list[tuple[int, int, bytes]]]:
    """Rows of entries [start, end) of an aligned chunk: entries, parties, subtree hashes."""
    templates = _templates(plan.consents)
    entries: list[tuple[Any, ...]] = []
    parties: list[tuple[str, int]] = []
    nodes: list[tuple[int, int, bytes]] = []
    local: dict[tuple[int, int], bytes] = {}

    def get(level: int, index: int) -> bytes:
        return local[(level, index)]

    for i in range(start, end):
        at = _at(i)
        data, shaped, values = templates.entry(i, at)
        leaf = merkle.leaf_hash(data)
        # In chunk coordinates the climb stops at the chunk's root; shifted back, the
        # nodes are exactly those append_audit stores for this leaf within the chunk.
        for level, index, digest in merkle.nodes_to_store(i - start, leaf, get):
            local[(level, index)] = digest
            nodes.append((level, (start >> level) + index, digest))
        entries.append(
            (
                i,
                at,
                data,
                leaf,
                shaped.event.value,
                shaped.kind.value if shaped.kind else None,
                values["child"],
                values["mid"] if "mid" in values else values["cid"],
            )
        )
        named = {*([shaped.sender] if shaped.sender else []), *shaped.recipients}
        parties += [(agency, i) for agency in sorted(named)]
    return entries, parties, nodes


async def _connect(dsn: str) -> Any:
    conn = await asyncpg.connect(dsn, timeout=30)
    # A lost chunk is reloaded on resume; the rows are the same either way.
    await conn.execute("SET synchronous_commit = off")
    return conn


async def _copy_audit_chunk(dsn: str, plan: _Plan, chunk: int) -> None:
    start = chunk << plan.chunk_bits
    end = min(plan.entries, start + (1 << plan.chunk_bits))
    entries, parties, nodes = _audit_rows(plan, start, end)
    conn = await _connect(dsn)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                AUDIT_ENTRIES.name, records=entries, columns=_COPY_ENTRIES
            )
            await conn.copy_records_to_table(
                AUDIT_PARTIES.name, records=parties, columns=("agency", "seq")
            )
            await conn.copy_records_to_table(
                AUDIT_NODES.name, records=nodes, columns=("level", "idx", "hash")
            )
    finally:
        await conn.close()


async def _copy_consent_chunk(dsn: str, plan: _Plan, chunk: int) -> None:
    templates = _templates(plan.consents)
    start = chunk * plan.consent_chunk
    end = min(plan.consents, start + plan.consent_chunk)
    rows = [tuple(templates.consent_row(c)) for c in range(start, end)]
    conn = await _connect(dsn)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(CONSENTS.name, records=rows, columns=_COPY_CONSENTS)
    finally:
        await conn.close()


def load_chunk(dsn: str, plan: _Plan, table: str, chunk: int) -> None:
    """Load one chunk of ``table`` (a worker process's whole job; one transaction)."""
    copy = _copy_audit_chunk if table == AUDIT_ENTRIES.name else _copy_consent_chunk
    asyncio.run(copy(dsn, plan, chunk))


async def _missing_chunks(conn: Any, plan: _Plan) -> tuple[list[int], list[int]]:
    """Chunks not yet loaded (a chunk commits whole, so its first row tells)."""
    consent_chunks = range(-(-plan.consents // plan.consent_chunk))
    audit_chunks = range(-(-plan.entries >> plan.chunk_bits))
    have_consents = {
        r[0]
        for r in await conn.fetch(
            "SELECT consent_id FROM consents WHERE consent_id = ANY($1::text[])",
            [_consent_id(c * plan.consent_chunk) for c in consent_chunks],
        )
    }
    have_entries = {
        int(r[0])
        for r in await conn.fetch(
            "SELECT seq FROM audit_entries WHERE seq = ANY($1::bigint[])",
            [c << plan.chunk_bits for c in audit_chunks],
        )
    }
    return (
        [c for c in consent_chunks if _consent_id(c * plan.consent_chunk) not in have_consents],
        [c for c in audit_chunks if c << plan.chunk_bits not in have_entries],
    )


async def _store_upper_nodes(conn: Any, plan: _Plan) -> int:
    """The subtree hashes above the chunks' roots, by ``nodes_to_store`` over the roots."""
    chunks = plan.entries >> plan.chunk_bits
    roots = {
        int(r["idx"]): bytes(r["hash"])
        for r in await conn.fetch(
            "SELECT idx, hash FROM audit_nodes WHERE level = $1 AND idx < $2",
            plan.chunk_bits,
            chunks,
        )
    }
    known: dict[tuple[int, int], bytes] = {}

    def get(level: int, index: int) -> bytes:
        return known[(level, index)]

    rows = []
    for chunk in range(chunks):
        for level, index, digest in merkle.nodes_to_store(chunk, roots[chunk], get):
            known[(level, index)] = digest
            if level:  # level 0 here is the chunk's root, stored with the chunk
                rows.append((level + plan.chunk_bits, index, digest))
    await conn.executemany(
        "INSERT INTO audit_nodes (level, idx, hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        rows,
    )
    return len(rows)


class _Workers:
    """The loading processes, started on first use and shared by both databases."""

    def __init__(self, count: int) -> None:
        self.count = max(1, count)
        self._pool: ProcessPoolExecutor | None = None

    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.count, mp_context=context)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


async def _load(dsn: str, plan: _Plan, workers: _Workers) -> dict[str, float]:
    """Load what is missing; seconds per table and for VACUUM ANALYZE, chunks loaded."""
    conn = await _connect(dsn)
    try:
        missing_consents, missing_audit = await _missing_chunks(conn, plan)
        size = await conn.fetchval("SELECT coalesce(max(seq) + 1, 0) FROM audit_entries")
        if missing_audit and size > missing_audit[0] << plan.chunk_bits:
            raise SystemExit(
                "this database's log grew past a chunk still to load (a kept database "
                "loaded with fewer --entries): load a fresh one"
            )
    finally:
        await conn.close()
    print(
        f"loading: {len(missing_consents)} consent chunks of {plan.consent_chunk}, "
        f"{len(missing_audit)} audit chunks of {1 << plan.chunk_bits}, {workers.count} workers ...",
        flush=True,
    )
    timings: dict[str, float] = {
        "consent_chunks": len(missing_consents),
        "audit_chunks": len(missing_audit),
    }
    loop = asyncio.get_running_loop()
    for table, chunks in ((CONSENTS.name, missing_consents), (AUDIT_ENTRIES.name, missing_audit)):
        started = time.perf_counter()
        jobs = [
            loop.run_in_executor(workers.pool(), load_chunk, dsn, plan, table, c) for c in chunks
        ]
        for done, job in enumerate(asyncio.as_completed(jobs), start=1):
            await job
            if done % 20 == 0 or done == len(jobs):
                elapsed = time.perf_counter() - started
                print(f"  {table}: {done}/{len(jobs)} chunks, {elapsed:.0f} s", flush=True)
        timings[table] = time.perf_counter() - started
    conn = await _connect(dsn)
    try:
        started = time.perf_counter()
        await _store_upper_nodes(conn, plan)
        timings[AUDIT_ENTRIES.name] += time.perf_counter() - started
        started = time.perf_counter()
        for vacuumed in (CONSENTS, AUDIT_ENTRIES, AUDIT_PARTIES, AUDIT_NODES):
            # What autovacuum does to a table that has been written: the store at rest.
            await conn.execute(f"VACUUM (ANALYZE) {vacuumed.name}")
        timings["vacuum"] = time.perf_counter() - started
    finally:
        await conn.close()
    return timings


# --- verifying the load with the real code ------------------------------------------------------


def _expected_nodes(size: int) -> int:
    return sum(size >> level for level in range(size.bit_length()))


async def _verify_sample(dsn: str, plan: _Plan, sample: int, rng: random.Random) -> dict[str, int]:
    """Sampled rows equal what the real code writes; the tree has exactly the nodes expected."""
    conn = await asyncpg.connect(dsn)
    try:
        indices = sorted(
            {0, plan.entries - 1, *rng.sample(range(plan.entries), min(sample, plan.entries))}
        )
        rows = await conn.fetch(
            "SELECT seq, at, entry, leaf_hash, event, kind, child, message_id "
            "FROM audit_entries WHERE seq = ANY($1::bigint[]) ORDER BY seq",
            indices,
        )
        if [int(r["seq"]) for r in rows] != indices:
            raise SystemExit("sample check: entries are missing")
        for row in rows:
            i = int(row["seq"])
            expected = real_entry(i, plan.consents)
            data = bytes(row["entry"])
            if data != canonical_bytes(expected) or parse_canonical(data) != expected:
                raise SystemExit(f"sample check: entry {i} is not the builder's")
            columns = (
                row["at"],
                bytes(row["leaf_hash"]),
                row["event"],
                row["kind"],
                row["child"],
                row["message_id"],
            )
            wanted = (
                expected.at,
                merkle.leaf_hash(data),
                expected.event.value,
                expected.kind.value if expected.kind else None,
                expected.child,
                expected.message_id,
            )
            if columns != wanted:
                raise SystemExit(f"sample check: the search columns of entry {i} differ")
            named = {*([expected.sender] if expected.sender else []), *expected.recipients}
            parties = await conn.fetch(
                # By the primary key (agency, seq), as a search by agency reads it.
                "SELECT agency FROM audit_parties WHERE agency = ANY($1::text[]) AND seq = $2",
                _area().directory.agencies(),
                i,
            )
            if sorted(r[0] for r in parties) != sorted(named):
                raise SystemExit(f"sample check: the parties of entry {i} differ")
        consents = sorted(
            {*rng.sample(range(plan.consents), min(sample, plan.consents))}
            | ({plan.consents - 1} if plan.consents else set())
        )
        stored = {
            r["consent_id"]: ConsentRow(**dict(r))
            for r in await conn.fetch(
                "SELECT * FROM consents WHERE consent_id = ANY($1::text[])",
                [_consent_id(c) for c in consents],
            )
        }
        directory = _area().directory
        for c in consents:
            row = stored.get(_consent_id(c))
            if row != _real_consent_row(c):
                raise SystemExit(f"sample check: consent {c} is not what sign_consent gives")
            verify_consent(
                SignedConsent(payload=row.payload, signature=row.signature),
                keys=directory,
                now=row.registered_at,
            )
        # Levels above the tree's leaves: exactly the aligned perfect subtrees below the size.
        nodes = await conn.fetchval(
            "SELECT count(*) FROM audit_nodes WHERE idx < ($1::bigint >> level)", plan.entries
        )
        if nodes != _expected_nodes(plan.entries):
            raise SystemExit(
                f"sample check: {nodes} subtree hashes, not {_expected_nodes(plan.entries)}"
            )
        below = await conn.fetchval(
            "SELECT count(*) FROM audit_entries WHERE seq < $1", plan.entries
        )
        if below != plan.entries:
            raise SystemExit(f"sample check: {below} entries below {plan.entries}")
    finally:
        await conn.close()
    return {"entries_checked": len(indices), "consents_checked": len(consents), "nodes": int(nodes)}


async def _register_through_registry(store: SqlStore, registry: ConsentRegistry, dsn: str) -> int:
    """Register (and revoke, if its number says so) the next consent through the real registry.

    Its row and audit entries must equal what the loader made for the same consent.
    Returns the consent's number.
    """
    conn = await asyncpg.connect(dsn)
    try:
        c = int(await conn.fetchval("SELECT count(*) FROM consents"))
        size = int(await conn.fetchval("SELECT coalesce(max(seq) + 1, 0) FROM audit_entries"))
    finally:
        await conn.close()
    registrar = _registrar(c)
    peer = PeerIdentity(
        role=Role.ADAPTER, agency=registrar.agency, common_name=registrar.agency, serial=1
    )
    body = sign_consent(_consent_record(c), registrar.sender).model_dump_json().encode()
    await registry.register(body, peer=peer, now=_at(BLOCK * c))
    if _revoked(c):
        revocation = sign_revocation(_revocation(c), registrar.sender)
        await registry.revoke(
            _consent_id(c),
            revocation.model_dump_json().encode(),
            peer=peer,
            now=_at(BLOCK * c + REVOKE_SLOT),
        )
    stored = await store.consents(child=_hex(f"bench child {c // 2}"))
    if _templates(c + 1).consent_row(c) not in stored:
        raise SystemExit("registration check: the registry's row differs from the loader's")
    conn = await asyncpg.connect(dsn)
    try:
        logged = [
            bytes(r[0])
            for r in await conn.fetch(
                "SELECT entry FROM audit_entries WHERE seq >= $1 ORDER BY seq", size
            )
        ]
    finally:
        await conn.close()
    # The loader's entries for consent c: at BLOCK * c (and + REVOKE_SLOT), c + 1 consents.
    templates = _templates(c + 1)
    made = [templates.entry(BLOCK * c, _at(BLOCK * c))[0]]
    if _revoked(c):
        revoked = BLOCK * c + REVOKE_SLOT
        made.append(templates.entry(revoked, _at(revoked))[0])
    if logged != made:
        raise SystemExit(
            "registration check: the registry's audit entries differ from the loader's"
        )
    return c


# --- measuring ----------------------------------------------------------------------------------

_T = TypeVar("_T")


def _pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _ms(ns: int) -> float:
    return ns / 1e6


async def _timed(pending: Awaitable[_T]) -> tuple[float, _T]:
    """Milliseconds to await ``pending`` (a coroutine does nothing until awaited), and its value."""
    started = time.perf_counter_ns()
    result = await pending
    return _ms(time.perf_counter_ns() - started), result


@dataclass
class _Rounds:
    """Per-operation times (ms) of each round, by name."""

    times: dict[str, list[list[float]]] = field(default_factory=dict)

    def add(self, name: str, round_times: list[float]) -> None:
        self.times.setdefault(name, []).append(round_times)

    def median(self, name: str, q: float) -> float:
        """The median over rounds of each round's q-th percentile."""
        return statistics.median(_pct(r, q) for r in self.times[name])

    def ratio(self, name: str, anchor: str, q: float) -> float:
        """The median over rounds of the ratio of the q-th percentiles, round by round."""
        return statistics.median(
            _pct(a, q) / _pct(b, q)
            for a, b in zip(self.times[name], self.times[anchor], strict=True)
        )


@dataclass
class _Bench:
    """One run's database, store, log and options."""

    args: argparse.Namespace
    plan: _Plan
    rng: random.Random
    dsn: str
    store: SqlStore
    audit: AuditLog
    small: AuditLog  # the same log code over a database of --small-entries (the scale anchor)
    small_size: int


def _headers(
    plan: _Plan, count: int, rng: random.Random
) -> tuple[list[ProtectedHeader], list[str]]:
    """Message headers to decide, and a stored consent id for each (the anchor reads it).

    90 % name a random registered consent (a tenth of them expired, a twentieth
    revoked), 2 % a consent id nobody registered, 8 % the legal basis OSL 10 kap. 28 §.
    Each is a real sealed header with the child and basis replaced.
    """
    area = _area()
    now = datetime.now(UTC)
    sealed: dict[tuple[str, str], ProtectedHeader] = {}
    headers, ids = [], []
    for _ in range(count):
        draw = rng.random()
        c = rng.randrange(plan.consents) if plan.consents else 0
        sender, recipient = _registrar(c), area.social[c % 2]
        key = (sender.agency, recipient.agency)
        if key not in sealed:
            sealed[key] = seal(
                b"{}",
                sender=sender.sender,
                recipients=[recipient.sealing],
                kind=Kind.REFERRAL,
                child=_hex("bench sealed"),
                basis=LegalBasis(type="legal", ref="osl-10-28"),
                purpose=Purpose.REFERRAL,
                created=now,
                expires=now + timedelta(days=30),
            ).header
        if draw < 0.08 or not plan.consents:  # noqa: PLR2004 - the share of legal bases
            update: dict[str, Any] = {
                "kind": Kind.CONCERN_REPORT,
                "purpose": Purpose.CONCERN,
                "child": _hex(f"bench pupil {c}"),
            }
        else:
            # 2 %: an id in the pattern of consent ids that no consent has.
            unknown = draw < 0.10  # noqa: PLR2004
            consent = f"0194afff{_consent_id(c)[8:]}" if unknown else _consent_id(c)
            update = {
                "basis": ConsentBasis(type="consent", consent_id=consent),
                "child": _hex(f"bench child {c // 2}"),
            }
        headers.append(sealed[key].model_copy(update=update))
        ids.append(_consent_id(c))
    return headers, ids


async def _decision_rounds(bench: _Bench, policy: ConsentPolicy) -> tuple[_Rounds, dict[str, int]]:
    directory = _area().directory
    rounds = _Rounds()
    outcomes: dict[str, int] = {}
    conn = await asyncpg.connect(bench.dsn)
    try:
        select = await conn.prepare("SELECT payload FROM consents WHERE consent_id = $1")
        for _ in range(bench.args.rounds):
            headers, ids = _headers(bench.plan, bench.args.decisions, bench.rng)
            times = []
            for header in headers:
                started = time.perf_counter_ns()
                decision = policy.decide(header, directory=directory, now=bench.plan.now)
                times.append(_ms(time.perf_counter_ns() - started))
                outcome = "allowed" if decision.allowed else str(decision.reason)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            rounds.add("decision", times)
            anchor = []
            for consent_id in ids:
                elapsed, _ = await _timed(select.fetchval(consent_id))
                anchor.append(elapsed)
            rounds.add("pk_select", anchor)
    finally:
        await conn.close()
    return rounds, outcomes


async def _measure_decisions(bench: _Bench) -> dict[str, Any]:
    """The broker's start (the book from the store), then decisions against a PK SELECT."""
    area = _area()
    book = ConsentBook()
    registry = ConsentRegistry(
        store=bench.store, book=book, policy=area.policy, directory=lambda: area.directory
    )
    rss_before = _rss_mib()
    started = time.perf_counter()
    await registry.load()
    load_s = time.perf_counter() - started
    rss = _rss_mib() - rss_before
    registered = await _register_through_registry(bench.store, registry, bench.dsn)
    rounds, outcomes = await _decision_rounds(bench, ConsentPolicy(policy=area.policy, book=book))
    peer = PeerIdentity(
        role=Role.ADAPTER,
        agency=area.registrars[0].agency,
        common_name=area.registrars[0].agency,
        serial=1,
    )
    for_child = []
    for k in range(5):
        started_ns = time.perf_counter_ns()
        registry.for_child(_hex(f"bench child {k}"), peer=peer)
        for_child.append(_ms(time.perf_counter_ns() - started_ns))
    print(
        f"policy decisions with {len(book.states)} consents in the book "
        f"({bench.args.decisions} per round, median of {bench.args.rounds} rounds):"
    )
    print(f"  ConsentRegistry.load (broker start) {load_s:8.1f} s, +{rss:.0f} MiB peak RSS")
    for q in (50, 99):
        print(
            f"  p{q}: ConsentPolicy.decide {rounds.median('decision', q):8.4f} ms   "
            f"anchor PK SELECT {rounds.median('pk_select', q):8.4f} ms   "
            f"ratio {rounds.ratio('decision', 'pk_select', q):6.3f}"
        )
    print(f"  outcomes: {dict(sorted(outcomes.items()))}")
    print(f"  ConsentRegistry.for_child (scans the book) {statistics.median(for_child):8.1f} ms")
    return {
        "consents": len(book.states),
        "decision_p50_ms": round(rounds.median("decision", 50), 4),
        "decision_p99_ms": round(rounds.median("decision", 99), 4),
        "anchor_pk_select_p50_ms": round(rounds.median("pk_select", 50), 4),
        "anchor_pk_select_p99_ms": round(rounds.median("pk_select", 99), 4),
        "decision_ratio_p50": round(rounds.ratio("decision", "pk_select", 50), 3),
        "decision_ratio_p99": round(rounds.ratio("decision", "pk_select", 99), 3),
        "decision_outcomes": dict(sorted(outcomes.items())),
        "book_load_s": round(load_s, 1),
        "book_rss_mib": round(rss),
        "for_child_ms": round(statistics.median(for_child), 1),
        "registered_through_registry": registered,
    }


async def _proof_rounds(bench: _Bench, checkpoint: Checkpoint) -> tuple[_Rounds, int]:
    rounds = _Rounds()
    verified = 0
    for _ in range(bench.args.rounds):
        times: dict[str, list[float]] = {}
        async with bench.store.engine.connect() as idle:
            for _ in range(bench.args.proofs):
                elapsed, _ = await _timed(idle.execute(sa.text("SELECT 1")))
                times.setdefault("round_trip", []).append(elapsed)
                await _proof_round(bench, checkpoint, times)
                verified += 1
        for name, values in times.items():
            rounds.add(name, values)
    return rounds, verified


async def _proof_round(
    bench: _Bench, checkpoint: Checkpoint, times: dict[str, list[float]]
) -> None:
    """One inclusion proof, timed with its anchors, and verified."""
    store, audit, size = bench.store, bench.audit, checkpoint.size
    index = bench.rng.randrange(size)
    elapsed, proof = await _timed(audit.inclusion_proof(index, size, officer=OFFICER))
    times.setdefault("proof", []).append(elapsed)
    small = bench.rng.randrange(bench.small_size)
    elapsed, _ = await _timed(bench.small.inclusion_proof(small, bench.small_size, officer=OFFICER))
    times.setdefault("small_proof", []).append(elapsed)
    async with store.engine.connect() as conn:
        elapsed, nodes = await _timed(
            read_nodes(conn, merkle.needed_nodes_for_inclusion(index, size))
        )
    times.setdefault("read_nodes", []).append(elapsed)
    started = time.perf_counter_ns()
    in_memory = merkle.inclusion_proof(index, size, _getter(nodes))
    times.setdefault("memory_proof", []).append(_ms(time.perf_counter_ns() - started))
    anchor = [read_entry(actor=OFFICER, query="bench anchor", at=datetime.now(UTC))]
    elapsed, _ = await _timed(store.append_audit(anchor))
    times.setdefault("append_read", []).append(elapsed)
    elapsed, (logged, routed) = await _timed(_route(audit, index, size))
    times.setdefault("route", []).append(elapsed)
    if not proof == in_memory == routed:
        raise SystemExit(f"proof check: the proofs of entry {index} differ")
    merkle.verify_inclusion(logged.leaf_hash, index, size, proof, checkpoint.root)


def _getter(nodes: Mapping[tuple[int, int], bytes]) -> Callable[[int, int], bytes]:
    def get(level: int, index: int) -> bytes:
        return nodes[(level, index)]

    return get


async def _route(audit: AuditLog, index: int, size: int) -> tuple[LoggedEntry, list[bytes]]:
    """What GET /v1/audit/proofs/inclusion asks of the log: the entry, then its proof."""
    logged = await audit.entry(index, officer=OFFICER)
    return logged, await audit.inclusion_proof(index, size, officer=OFFICER)


async def _measure_proofs(bench: _Bench, checkpoint: Checkpoint) -> dict[str, Any]:
    """Inclusion proofs against their anchors; then consistency with what the reads appended."""
    rounds, verified = await _proof_rounds(bench, checkpoint)
    size = checkpoint.size
    print(
        f"inclusion proofs in a tree of {size} entries ({bench.args.proofs} per round, "
        f"median of {bench.args.rounds} rounds; each verified against the checkpoint):"
    )
    for q in (50, 99):
        print(
            f"  p{q}: AuditLog.inclusion_proof {rounds.median('proof', q):7.3f} ms   "
            f"route (entry + proof) {rounds.median('route', q):7.3f} ms"
        )
        print(
            f"       anchors: the same in a log of {bench.small_size} entries "
            f"{rounds.median('small_proof', q):7.3f} ms "
            f"(ratio {rounds.ratio('proof', 'small_proof', q):5.2f})"
        )
        print(
            f"                read_nodes {rounds.median('read_nodes', q):7.3f} ms "
            f"(ratio {rounds.ratio('proof', 'read_nodes', q):5.2f}), "
            f"one audit_read append {rounds.median('append_read', q):7.3f} ms "
            f"(ratio {rounds.ratio('proof', 'append_read', q):5.2f}), "
            f"in-memory proof {rounds.median('memory_proof', q):7.4f} ms"
        )
        print(
            f"                one SELECT 1 round trip {rounds.median('round_trip', q):7.3f} ms "
            f"(ratio {rounds.ratio('proof', 'round_trip', q):5.1f})"
        )
    later = await bench.audit.sign_checkpoint()
    consistency = await bench.audit.consistency_proof(size, later.size, officer=OFFICER)
    merkle.verify_consistency(size, later.size, consistency, checkpoint.root, later.root)
    print(f"  consistency {size} -> {later.size} (the entries the reads appended) verified")
    return {
        "inclusion_proof_p50_ms": round(rounds.median("proof", 50), 3),
        "inclusion_proof_p99_ms": round(rounds.median("proof", 99), 3),
        "inclusion_route_p50_ms": round(rounds.median("route", 50), 3),
        "inclusion_route_p99_ms": round(rounds.median("route", 99), 3),
        "anchor_small_log_entries": bench.small_size,
        "anchor_small_log_proof_p50_ms": round(rounds.median("small_proof", 50), 3),
        "anchor_small_log_proof_p99_ms": round(rounds.median("small_proof", 99), 3),
        "inclusion_ratio_small_log_p50": round(rounds.ratio("proof", "small_proof", 50), 2),
        "inclusion_ratio_small_log_p99": round(rounds.ratio("proof", "small_proof", 99), 2),
        "anchor_read_nodes_p50_ms": round(rounds.median("read_nodes", 50), 3),
        "anchor_read_nodes_p99_ms": round(rounds.median("read_nodes", 99), 3),
        "inclusion_ratio_read_nodes_p50": round(rounds.ratio("proof", "read_nodes", 50), 2),
        "inclusion_ratio_read_nodes_p99": round(rounds.ratio("proof", "read_nodes", 99), 2),
        "anchor_append_read_p50_ms": round(rounds.median("append_read", 50), 3),
        "anchor_append_read_p99_ms": round(rounds.median("append_read", 99), 3),
        "inclusion_ratio_append_read_p50": round(rounds.ratio("proof", "append_read", 50), 2),
        "anchor_memory_proof_p50_ms": round(rounds.median("memory_proof", 50), 4),
        "anchor_round_trip_p50_ms": round(rounds.median("round_trip", 50), 3),
        "anchor_round_trip_p99_ms": round(rounds.median("round_trip", 99), 3),
        "inclusion_ratio_round_trip_p50": round(rounds.ratio("proof", "round_trip", 50), 1),
        "proofs_verified": verified,
        "consistency_verified_to": later.size,
    }


async def _export(bench: _Bench, size: int, folder: Path) -> tuple[Path, float, float]:
    """Export [0, size) to a file with AuditLog.export; the anchor COPYs the same rows out raw."""
    path = folder / "export.jsonl"
    started = time.perf_counter()
    with path.open("wb") as handle:
        async for line in bench.audit.export(0, size, officer=OFFICER):
            handle.write(line)
    export_s = time.perf_counter() - started
    received = 0

    async def sink(data: bytes) -> None:
        nonlocal received
        received += len(data)

    conn = await asyncpg.connect(bench.dsn)
    try:
        started = time.perf_counter()
        await conn.copy_from_query(
            "SELECT e.seq, e.entry, n.hash FROM audit_entries e "
            "LEFT JOIN audit_nodes n ON n.level = 0 AND n.idx = e.seq "
            "WHERE e.seq < $1 ORDER BY e.seq",
            size,
            output=sink,
            format="binary",
        )
        copy_s = time.perf_counter() - started
    finally:
        await conn.close()
    return path, export_s, copy_s


def _verify_file(export: Path, note_path: Path, verifier: str) -> float:
    """``backa audit verify --export FILE --broker-key VKEY --checkpoint NOTE``; seconds."""
    started = time.perf_counter()
    try:
        verify_command(export=export, broker_key=verifier, checkpoint=[note_path])
    except typer.Exit as exc:
        raise SystemExit("export check: backa audit verify refused the export") from exc
    return time.perf_counter() - started


def _hash_file(export: Path) -> float:
    started = time.perf_counter()
    with export.open("rb") as handle:
        for line in handle:
            hashlib.sha256(line).digest()
    return time.perf_counter() - started


async def _measure_export(bench: _Bench, checkpoint: Checkpoint) -> dict[str, Any]:
    """The whole export to a file, then ``backa audit verify`` of it, each against its anchor."""
    size, verifier = checkpoint.size, bench.audit.verifier
    if open_checkpoint(checkpoint.note, verifier)[1:] != (size, checkpoint.root):
        raise SystemExit("the signed checkpoint does not say what was signed")
    with tempfile.TemporaryDirectory(dir=bench.args.scratch) as scratch:
        folder = Path(scratch)
        note_path = folder / "checkpoint.txt"
        note_path.write_text(checkpoint.note, encoding="utf-8")
        exported, export_s, copy_s = await _export(bench, size, folder)
        export_bytes = exported.stat().st_size
        verify_times, hash_times = [], []
        for _ in range(bench.args.verify_rounds):
            verify_times.append(_verify_file(exported, note_path, verifier))
            hash_times.append(_hash_file(exported))
    verify_s = statistics.median(verify_times)
    hash_s = statistics.median(hash_times)
    print(f"the whole export, {size} entries ({export_bytes / 2**30:.2f} GiB):")
    print(
        f"  AuditLog.export to a file {export_s:8.1f} s   anchor raw COPY of the rows "
        f"{copy_s:6.1f} s   ratio {copy_s / export_s:5.3f}"
    )
    print(
        f"  backa audit verify         {verify_s:8.1f} s ({size / verify_s:7.0f} entries/s)   "
        f"anchor SHA-256 of the lines {hash_s:5.1f} s   ratio {hash_s / verify_s:5.3f}"
    )
    return {
        "export_s": round(export_s, 3),
        "anchor_copy_s": round(copy_s, 3),
        "export_ratio": round(copy_s / export_s, 4),
        "export_bytes": export_bytes,
        "export_verify_s": round(verify_s, 3),
        "export_verify_entries_per_s": round(size / verify_s),
        "anchor_sha256_s": round(hash_s, 3),
        "export_verify_ratio": round(hash_s / verify_s, 4),
    }


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the run ------------------------------------------------------------------------------------


async def admin(admin: str, statement: str, *params: object) -> object:
    """Run one statement on the server's admin database; its first value, if any."""
    dsn = make_url(admin).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        return await conn.fetchval(statement, *params)
    finally:
        await conn.close()


async def _server_facts(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            "postgres": await conn.fetchval("SHOW server_version"),
            "table_bytes": {
                table.name: int(
                    await conn.fetchval("SELECT pg_total_relation_size($1::text)", table.name)
                )
                for table in (CONSENTS, AUDIT_ENTRIES, AUDIT_PARTIES, AUDIT_NODES)
            },
        }
    finally:
        await conn.close()


@dataclass(frozen=True)
class _Database:
    """A bench database: its name, asyncpg DSN and SQLAlchemy URL."""

    name: str
    dsn: str
    url: str

    @classmethod
    def on(cls, admin_url: str, name: str) -> _Database:
        base = make_url(admin_url).set(database=name)
        return cls(
            name=name,
            dsn=base.set(drivername="postgresql").render_as_string(hide_password=False),
            url=base.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False),
        )


async def _prepare(database: _Database, plan: _Plan, workers: _Workers) -> dict[str, float]:
    """Migrate and load what is missing; seconds of each part and chunks loaded."""
    await migrate(database.url)
    started = time.perf_counter()
    loaded = await _load(database.dsn, plan, workers)
    loaded["total"] = time.perf_counter() - started
    print(
        f"  {database.name}: loaded in {loaded['total']:.1f} s: consents "
        f"{loaded[CONSENTS.name]:.1f} s, audit {loaded[AUDIT_ENTRIES.name]:.1f} s, "
        f"VACUUM ANALYZE {loaded['vacuum']:.1f} s",
        flush=True,
    )
    return loaded


async def _measure(
    args: argparse.Namespace, primary: _Database, small: _Database
) -> dict[str, Any]:
    plan = _Plan(
        consents=args.consents,
        entries=args.entries,
        chunk_bits=args.chunk_bits,
        consent_chunk=args.consent_chunk,
    )
    small_plan = _Plan(
        consents=max(1, args.small_entries // BLOCK),
        entries=args.small_entries,
        chunk_bits=args.chunk_bits,
        consent_chunk=args.consent_chunk,
    )
    workers = _Workers(args.workers)
    try:
        loaded = await _prepare(primary, plan, workers)
        await _prepare(small, small_plan, workers)
    finally:
        workers.close()
    rng = random.Random(args.seed)
    started = time.perf_counter()
    checks = await _verify_sample(primary.dsn, plan, args.sample, rng)
    await _verify_sample(small.dsn, small_plan, args.sample, rng)
    print(
        f"  sample verified: {checks['entries_checked']} entries and "
        f"{checks['consents_checked']} consents are the real builders' and signatures, "
        f"{checks['nodes']} subtree hashes as expected ({time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    area = _area()
    store, small_store = create_store(primary.url), create_store(small.url)
    try:

        def log(on: SqlStore) -> AuditLog:
            return AuditLog(on.engine, signer=area.broker.sender, origin=origin_for("test-area"))

        audit = log(store)
        checkpoint = await audit.sign_checkpoint()
        if checkpoint.size < plan.entries:
            raise SystemExit(f"the log holds {checkpoint.size} entries, not {plan.entries}")
        small_log = log(small_store)
        bench = _Bench(
            args=args,
            plan=plan,
            rng=rng,
            dsn=primary.dsn,
            store=store,
            audit=audit,
            small=small_log,
            small_size=(await small_log.sign_checkpoint()).size,
        )
        decisions = await _measure_decisions(bench)
        proofs = await _measure_proofs(bench, checkpoint)
        export = await _measure_export(bench, checkpoint)
    finally:
        await store.close()
        await small_store.close()
    return {
        "bench": "state_scale",
        "entries": checkpoint.size,
        **decisions,
        **proofs,
        **export,
        "goal_decision_p99_under_1ms": decisions["decision_p99_ms"] < 1.0,
        "goal_inclusion_p99_under_10ms": proofs["inclusion_proof_p99_ms"] < 10.0,  # noqa: PLR2004
        "sample_verified": True,
        "checks": checks,
        "load_s": round(loaded["total"], 1),
        "load_consents_s": round(loaded[CONSENTS.name], 1),
        "load_audit_s": round(loaded[AUDIT_ENTRIES.name], 1),
        "load_vacuum_s": round(loaded["vacuum"], 1),
        "chunks_loaded": {"consents": loaded["consent_chunks"], "audit": loaded["audit_chunks"]},
        **await _server_facts(primary.dsn),
        "rounds": args.rounds,
        "verify_rounds": args.verify_rounds,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 1),
        "python": platform.python_version(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    """Make (or reuse) the bench databases, measure, and drop them unless kept."""
    name = args.reuse or f"backa_bench_state_{secrets.token_hex(4)}"
    if not re.fullmatch(r"backa_bench_state_[a-z0-9_]+", name):
        raise SystemExit("--reuse takes a database this bench made (backa_bench_state_...)")
    primary, small = (_Database.on(args.database_url, n) for n in (name, f"{name}_small"))
    for database in (primary, small):
        exists = "SELECT 1 FROM pg_database WHERE datname = $1"
        if not await admin(args.database_url, exists, database.name):
            await admin(args.database_url, f'CREATE DATABASE "{database.name}"')
    print(f"databases {primary.name} and {small.name} (the scale anchor)", flush=True)
    try:
        return {"database": name, **await _measure(args, primary, small)}
    finally:
        if args.keep:
            print(f"kept database {name} (--reuse {name} measures it again)", flush=True)
        else:
            for database in (primary, small):
                drop = f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)'
                await admin(args.database_url, drop)


def main(argv: list[str] | None = None) -> None:
    """Load, verify and measure; print the figures and, last, one JSON line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--consents", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--decisions", type=int, default=20_000, help="decisions per round")
    parser.add_argument("--proofs", type=int, default=300, help="inclusion proofs per round")
    parser.add_argument(
        "--small-entries", type=int, default=1 << 16, help="the scale anchor's log, in entries"
    )
    parser.add_argument("--verify-rounds", type=int, default=1)
    parser.add_argument("--sample", type=int, default=2_000, help="entries and consents checked")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--database-url", default=DEFAULT_PG, help="the server (any database)")
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    parser.add_argument(
        "--reuse", help="use this database (made if missing), load what it lacks, measure"
    )
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the export file")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--chunk-bits", type=int, default=CHUNK_BITS, help="2**N entries a chunk")
    parser.add_argument("--consent-chunk", type=int, default=CONSENT_CHUNK, help="consents a chunk")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "state_scale.json"
    )
    args = parser.parse_args(argv)
    if args.entries < 1 or args.consents < 1:
        parser.error("--entries and --consents must be at least 1")
    result = asyncio.run(_run(args))
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
