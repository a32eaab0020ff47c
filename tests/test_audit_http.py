"""The security officer's audit routes over real mutual TLS: search, proofs, export, refusals.

The broker's app is served with the demo area's certificates on 127.0.0.1;
the audit log is the in-memory :class:`~tests.audit_fakes.MemoryAuditReader`,
whose proofs and checkpoints come from the real Merkle and signed-note code.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from broker.audit import verify_consistency, verify_inclusion
from broker.audit.entry import canonical_from_json
from broker.audit.merkle import leaf_hash
from broker.audit.note import open_checkpoint
from broker.audit.ports import AuditRangeError
from tests.audit_fakes import (
    BUP,
    CHILD,
    OFFICER,
    OPERATOR,
    ORIGIN,
    SCHOOL,
    MemoryAuditReader,
    Pki,
    make_pki,
    seeded_reader,
    serve,
)

TIMEOUT = 10.0
SEEDED = 6  # entries in seeded_reader(), all under its checkpoint

ROUTES = [
    "/v1/audit/entries",
    "/v1/audit/entries/1?proof=1",
    "/v1/audit/proofs/inclusion?index=1&size=6",
    "/v1/audit/proofs/consistency?size1=2&size2=6",
    "/v1/audit/checkpoint",
    "/v1/audit/export?start=0&end=6",
]


@dataclass
class Answer:
    """One response: status, content type and body."""

    status: int
    content_type: str
    text: str

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.text)


@dataclass
class Served:
    """The app on a random port, its certificates and its log."""

    url: str
    pki: Pki
    reader: MemoryAuditReader

    async def get(self, path: str, who: str = OFFICER) -> Answer:
        """GET ``path`` with ``who``'s client certificate."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + path, ssl=self.pki.client(who)) as response,
        ):
            text = await asyncio.wait_for(response.text(), TIMEOUT)
            return Answer(response.status, response.content_type, text)

    async def ok(self, path: str) -> Any:
        """GET ``path`` as the officer; the JSON of a 200."""
        answer = await self.get(path)
        assert answer.status == 200, answer.text
        return answer.json()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The demo area's certificates and an operator's."""
    return make_pki(tmp_path_factory.mktemp("audit-http"))


@asynccontextmanager
async def _serve(pki: Pki, reader: MemoryAuditReader) -> AsyncIterator[Served]:
    async with serve(pki, reader) as url:
        yield Served(url, pki, reader)


@pytest.fixture
async def served(pki: Pki) -> AsyncIterator[Served]:
    """The routes over a seeded in-memory log."""
    async with _serve(pki, seeded_reader()) as running:
        yield running


# --- search -------------------------------------------------------------------------------------


async def test_officer_searches_the_whole_log(served: Served) -> None:
    """Without filters the officer gets every entry, oldest first, with leaf hashes that match."""
    body = await served.ok("/v1/audit/entries")
    assert [e["index"] for e in body["entries"]] == list(range(SEEDED))
    assert body["next_after"] is None
    assert body["log_size"] == SEEDED
    first = body["entries"][0]
    assert first["entry"]["event"] == "accepted"
    assert first["entry"]["child"] == CHILD
    for item in body["entries"]:
        assert leaf_hash(canonical_from_json(item["entry"])).hex() == item["leaf_hash"]


async def test_officer_pages_through_results(served: Served) -> None:
    """``limit`` and ``next_after`` walk a search page by page without gaps or repeats."""
    seen: list[int] = []
    after = ""
    pages = 0
    while True:
        # Filtered: the officer's own reads are appended to the log as it pages.
        body = await served.ok(f"/v1/audit/entries?child={CHILD}&limit=1{after}")
        pages += 1
        seen.extend(e["index"] for e in body["entries"])
        if body["next_after"] is None:
            break
        after = f"&after={body['next_after']}"
    assert seen == [0, 1, 2, 3]
    assert pages == 4


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (f"child={CHILD}", [0, 1, 2, 3]),
        (f"agency={BUP}", [0, 1, 2, 3]),
        (f"agency={SCHOOL}", [0, 1, 2, 5]),
        ("kind=team_invitation", [5]),
        ("event=rejected", [3]),
        ("event=receipt", [4]),
        (f"child={CHILD}&event=accepted", [0, 1, 2]),
        ("since=2026-11-25T09:50:00Z", [3, 4, 5]),
        ("until=2026-11-25T10:50:00%2B01:00", [0, 1, 2]),
        ("since=2026-11-25T09:31:00Z&until=2026-11-25T09:32:00Z", [1]),
        ("after=3", [4, 5]),
        ("event=audit_read", []),
    ],
    ids=[
        "child",
        "agency-recipient-or-sender",
        "agency-sender",
        "kind",
        "event",
        "receipt",
        "child-and-event",
        "since",
        "until-with-offset",
        "window",
        "after",
        "nothing",
    ],
)
async def test_officer_filters(served: Served, query: str, expected: list[int]) -> None:
    """Each filter narrows the search to the entries it names."""
    body = await served.ok(f"/v1/audit/entries?{query}")
    assert [e["index"] for e in body["entries"]] == expected


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "actor"), [(SCHOOL, SCHOOL), (OPERATOR, OPERATOR)])
async def test_non_officers_are_refused_and_the_attempt_logged(
    served: Served, who: str, actor: str
) -> None:
    """An adapter or operator gets 403 on every route, and each attempt reaches ``refused``."""
    for path in ROUTES:
        answer = await served.get(path, who=who)
        assert answer.status == 403, path
        assert answer.json()["error"]["code"] == "forbidden"
    assert served.reader.refusals == [(actor, path) for path in ROUTES]
    assert served.reader.calls == [], "nothing was read for a refused peer"


# --- bad requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/audit/entries?limit=0", "limit"),
        ("/v1/audit/entries?limit=501", "limit"),
        ("/v1/audit/entries?limit=ten", "limit"),
        ("/v1/audit/entries?limit=1&limit=2", "limit"),
        ("/v1/audit/entries?after=-1", "after"),
        ("/v1/audit/entries?child=19121212-1212", "child"),
        ("/v1/audit/entries?agency=Torsviks%20skola", "agency"),
        ("/v1/audit/entries?kind=letter", "kind"),
        ("/v1/audit/entries?event=deleted", "event"),
        ("/v1/audit/entries?since=2026-11-25T10:00:00", "since"),
        ("/v1/audit/entries?until=yesterday", "until"),
        ("/v1/audit/entries?since=2026-11-25T10:00:00Z&until=2026-11-25T09:00:00Z", "until"),
        ("/v1/audit/entries?chld=abc", "chld"),
        ("/v1/audit/entries/first", "index"),
        ("/v1/audit/entries/1?proof=yes", "proof"),
        ("/v1/audit/proofs/inclusion?size=3", "index"),
        ("/v1/audit/proofs/inclusion?index=1", "size"),
        ("/v1/audit/proofs/inclusion?index=3&size=3", "index"),
        ("/v1/audit/proofs/consistency?size1=4&size2=2", "size1"),
        ("/v1/audit/proofs/consistency?size1=1", "size2"),
        ("/v1/audit/checkpoint?fresh=please", "fresh"),
        ("/v1/audit/export?start=0", "end"),
        ("/v1/audit/export?start=4&end=2", "end"),
    ],
    ids=lambda value: value if not value.startswith("/") else value.split("/v1/audit/")[1],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    served: Served, path: str, name: str
) -> None:
    """A malformed parameter is refused with 400, named, its value never echoed, nothing read."""
    answer = await served.get(path)
    assert answer.status == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "bad_request"
    assert f"'{name}'" in error["message"]
    assert "19121212" not in error["message"]
    assert served.reader.calls == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1/audit/entries/1000",
        "/v1/audit/entries/1000?proof=1",
        "/v1/audit/proofs/inclusion?index=1&size=1000",
        "/v1/audit/proofs/consistency?size1=1&size2=1000",
        "/v1/audit/export?start=0&end=1000",
    ],
)
async def test_beyond_the_log_is_404(served: Served, path: str) -> None:
    """An index or size beyond the log is 404 not_found."""
    answer = await served.get(path)
    assert answer.status == 404, answer.text
    assert answer.json()["error"]["code"] == "not_found"


class _RangeRefusing(MemoryAuditReader):
    async def consistency_proof(self, size1: int, size2: int, *, officer: str) -> list[bytes]:
        raise AuditRangeError("refused by the log")


async def test_a_range_the_log_refuses_is_400(pki: Pki) -> None:
    """AuditRangeError from the reader becomes 400 bad_request."""
    reader = _RangeRefusing()
    reader.append(seeded_reader().logged[0].entry)
    async with _serve(pki, reader) as running:
        answer = await running.get("/v1/audit/proofs/consistency?size1=0&size2=1")
        assert answer.status == 400
        assert answer.json()["error"]["code"] == "bad_request"


# --- proofs and checkpoints ---------------------------------------------------------------------


async def test_inclusion_proofs_verify(served: Served) -> None:
    """Every entry's inclusion proof verifies against the root of the signed checkpoint."""
    checkpoint = await served.get("/v1/audit/checkpoint")
    origin, size, root = open_checkpoint(checkpoint.text, served.reader.verifier)
    assert (origin, size) == (ORIGIN, SEEDED)
    for index in range(size):
        body = await served.ok(f"/v1/audit/proofs/inclusion?index={index}&size={size}")
        assert (body["index"], body["size"]) == (index, size)
        verify_inclusion(
            bytes.fromhex(body["leaf_hash"]),
            index,
            size,
            [bytes.fromhex(p) for p in body["proof"]],
            root,
        )


async def test_an_entry_with_its_proof_verifies(served: Served) -> None:
    """``?proof=1`` adds the latest checkpoint and a proof that verifies against it."""
    body = await served.ok("/v1/audit/entries/3?proof=1")
    inclusion = body["inclusion"]
    origin, size, root = open_checkpoint(inclusion["checkpoint"], served.reader.verifier)
    assert (origin, size, root.hex()) == (ORIGIN, inclusion["size"], inclusion["root"])
    verify_inclusion(
        leaf_hash(canonical_from_json(body["entry"])),
        3,
        size,
        [bytes.fromhex(p) for p in inclusion["proof"]],
        root,
    )


async def test_an_entry_newer_than_the_checkpoint_has_no_proof_yet(served: Served) -> None:
    """An entry the latest checkpoint does not cover comes with ``inclusion: null``."""
    await served.ok("/v1/audit/entries?limit=1")  # logged as entry 6, after the checkpoint
    body = await served.ok("/v1/audit/entries/6?proof=1")
    assert body["entry"]["event"] == "audit_read"
    assert body["inclusion"] is None


async def test_consistency_proofs_verify(served: Served) -> None:
    """Proofs between every earlier size and the checkpoint verify with verify_consistency."""
    checkpoint = await served.get("/v1/audit/checkpoint")
    _origin, size, root = open_checkpoint(checkpoint.text, served.reader.verifier)
    for old in range(size + 1):
        body = await served.ok(f"/v1/audit/proofs/consistency?size1={old}&size2={size}")
        assert (body["size1"], body["size2"]) == (old, size)
        verify_consistency(
            old, size, [bytes.fromhex(p) for p in body["proof"]], served.reader.root(old), root
        )


async def test_a_fresh_checkpoint_extends_the_last_one(served: Served) -> None:
    """``?fresh=1`` signs the log as it is now, and it is consistent with the one before."""
    before = await served.get("/v1/audit/checkpoint")
    assert before.content_type == "text/plain"
    _o, size1, root1 = open_checkpoint(before.text, served.reader.verifier)
    after = await served.get("/v1/audit/checkpoint?fresh=1")
    _o, size2, root2 = open_checkpoint(after.text, served.reader.verifier)
    assert size2 > size1, "the reads themselves were logged"
    body = await served.ok(f"/v1/audit/proofs/consistency?size1={size1}&size2={size2}")
    verify_consistency(size1, size2, [bytes.fromhex(p) for p in body["proof"]], root1, root2)


# --- export -------------------------------------------------------------------------------------


async def test_export_is_ndjson_one_line_per_entry(served: Served) -> None:
    """The export is application/x-ndjson, one line per entry in order, each rebuilding its leaf."""
    answer = await served.get("/v1/audit/export?start=1&end=5")
    assert answer.status == 200
    assert answer.content_type == "application/x-ndjson"
    assert answer.text.endswith("\n")
    lines = answer.text.splitlines()
    assert len(lines) == 4
    for index, line in zip(range(1, 5), lines, strict=True):
        item = json.loads(line)
        assert item["index"] == index
        assert leaf_hash(canonical_from_json(item["entry"])).hex() == item["leaf_hash"]


async def test_an_empty_export_is_empty(served: Served) -> None:
    """start == end exports nothing, with 200."""
    answer = await served.get("/v1/audit/export?start=2&end=2")
    assert (answer.status, answer.text) == (200, "")


class _FailingExport(MemoryAuditReader):
    async def export(self, start: int, end: int, *, officer: str) -> AsyncIterator[bytes]:
        yield b'{"index":0}\n'
        raise RuntimeError("postgresql://broker:hunter2@db/backa went away")


async def test_an_export_failing_midway_is_cut_not_completed(pki: Pki) -> None:
    """A failure after the first line breaks the response instead of ending it cleanly."""
    async with _serve(pki, _FailingExport()) as running:
        with pytest.raises(aiohttp.ClientPayloadError):
            await running.get("/v1/audit/export?start=0&end=1")


# --- every read is the officer's ----------------------------------------------------------------


async def test_every_read_passes_the_officers_id(served: Served) -> None:
    """Each route calls the reader with the certificate's common name, and the log records it."""
    for path in ROUTES:
        answer = await served.get(path)
        assert answer.status == 200, (path, answer.text)
    calls = served.reader.calls
    assert {officer for _, officer in calls} == {OFFICER}
    assert {method for method, _ in calls} == {
        "search",
        "entry",
        "checkpoint",
        "inclusion_proof",
        "consistency_proof",
        "export",
    }
    reads = [
        logged.entry for logged in served.reader.logged[SEEDED:] if logged.entry.actor == OFFICER
    ]
    assert len(reads) == len(calls)
    assert reads[0].query == "search (all)"
