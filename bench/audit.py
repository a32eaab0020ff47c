"""Audit log: appends per second, and the time to verify an export of 1,000,000 entries.

Appends go through ``broker.store.append_audit`` on a fresh SQLite file (the
default store), in transactions of ``--batch`` entries (1: one decision at a
time; 64: the group commit under load). The anchor, in the same run and on
the same kind of file, inserts the same rows into a plain table in
transactions of the same size: the ratio is what the Merkle tree (leaf hash,
right-edge read, subtree hashes, search columns) costs over writing the
entries at all.

Verification runs ``broker.audit.verify.verify_export`` over ``--entries``
export lines made in memory by the exporter's own line function (what
``backa audit verify`` does, without the disk), against a checkpoint of the
full size. Its anchor is hashing the same lines with SHA-256 and nothing else.

Medians of ``--rounds``; the last line is JSON with the headline figures.

    .venv/bin/python -m bench.audit [--entries 1000000] [--rounds 3]   (or: make bench)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from broker.audit import merkle
from broker.audit.entry import canonical_bytes, read_entry
from broker.audit.log import export_line
from broker.audit.verify import Frontier, SignedSize, verify_export
from broker.store import append_audit, create_store, migrate
from schemas.audit import AuditEntry

NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
_ANCHOR = sa.Table(
    "anchor_entries",
    sa.MetaData(),
    sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("entry", sa.LargeBinary(), nullable=False),
)


def _entries(count: int) -> list[AuditEntry]:
    return [
        read_entry(actor=f"officer-{i % 50}", query=f"search child={i:064x}", at=NOW)
        for i in range(count)
    ]


async def _append_rate(entries: list[AuditEntry], batch: int) -> tuple[float, float]:
    """(tree appends/s, plain inserts/s) on fresh SQLite files."""
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{Path(folder) / 'broker.db'}"
        await migrate(url)
        store = create_store(url)
        try:
            start = time.perf_counter()
            for i in range(0, len(entries), batch):
                async with store.engine.begin() as conn:
                    await append_audit(conn, entries[i : i + batch])
            tree = len(entries) / (time.perf_counter() - start)
            async with store.engine.begin() as conn:
                await conn.run_sync(_ANCHOR.metadata.create_all)
            rows = [{"seq": i, "entry": canonical_bytes(e)} for i, e in enumerate(entries)]
            start = time.perf_counter()
            for i in range(0, len(rows), batch):
                async with store.engine.begin() as conn:
                    await conn.execute(sa.insert(_ANCHOR), rows[i : i + batch])
            plain = len(entries) / (time.perf_counter() - start)
        finally:
            await store.close()
    return tree, plain


def _lines(count: int) -> Iterator[bytes]:
    for i in range(count):
        data = canonical_bytes(
            read_entry(actor=f"officer-{i % 50}", query=f"search child={i:064x}", at=NOW)
        )
        yield export_line(i, data, merkle.leaf_hash(data))


def _verify_seconds(lines: list[bytes], checkpoint: SignedSize) -> float:
    start = time.perf_counter()
    report = verify_export(lines, [checkpoint])
    elapsed = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(f"the benchmark's own export did not verify: {report.problem}")
    return elapsed


def _hash_seconds(lines: list[bytes]) -> float:
    start = time.perf_counter()
    for line in lines:
        hashlib.sha256(line).digest()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_000_000, help="export size to verify")
    parser.add_argument("--appends", type=int, default=5_000, help="entries appended per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "audit.json"
    )
    args = parser.parse_args(argv)

    print(f"audit appends on SQLite ({args.appends} entries, median of {args.rounds}):")
    appends: dict[str, float] = {}
    for batch in (1, 64):
        results = [
            asyncio.run(_append_rate(_entries(args.appends), batch)) for _ in range(args.rounds)
        ]
        tree = statistics.median(r[0] for r in results)
        plain = statistics.median(r[1] for r in results)
        appends[f"appends_per_s_batch_{batch}"] = tree
        appends[f"anchor_inserts_per_s_batch_{batch}"] = plain
        print(
            f"  batch {batch:3d}: tree {tree:9.0f} /s   plain insert {plain:9.0f} /s   "
            f"ratio {tree / plain:5.2f}"
        )

    print(f"building an export of {args.entries} entries in memory ...")
    lines = list(_lines(args.entries))
    frontier = Frontier()
    for line in lines:
        frontier.append(bytes.fromhex(json.loads(line)["leaf_hash"]))
    checkpoint = SignedSize(size=args.entries, root=frontier.root())
    verify = statistics.median(_verify_seconds(lines, checkpoint) for _ in range(args.rounds))
    hashing = statistics.median(_hash_seconds(lines) for _ in range(args.rounds))
    print(
        f"  verify {args.entries} entries: {verify:6.2f} s "
        f"({args.entries / verify:9.0f} entries/s); "
        f"anchor SHA-256 of the lines {hashing:5.2f} s; ratio {hashing / verify:5.3f}"
    )
    result = {
        "bench": "audit",
        **{k: round(v) for k, v in appends.items()},
        "append_ratio_batch_1": round(
            appends["appends_per_s_batch_1"] / appends["anchor_inserts_per_s_batch_1"], 3
        ),
        "append_ratio_batch_64": round(
            appends["appends_per_s_batch_64"] / appends["anchor_inserts_per_s_batch_64"], 3
        ),
        "verify_entries": args.entries,
        "verify_seconds": round(verify, 2),
        "verify_entries_per_s": round(args.entries / verify),
        "anchor_sha256_seconds": round(hashing, 2),
        "verify_ratio_to_anchor": round(hashing / verify, 3),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
