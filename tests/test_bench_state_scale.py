"""The state-at-scale benchmark, bounded: it loads, verifies what it loaded, resumes, and reports."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from bench import state_scale
from broker import store
from tests.dbs import PG_URL

pytestmark = pytest.mark.postgres

# Small chunks, so that a tiny run still loads several chunks in the worker processes,
# stores subtree hashes above the chunks' roots, and ends in a partial chunk.
TINY = [
    *("--consents", "2000", "--entries", "5000", "--rounds", "1"),
    *("--decisions", "300", "--proofs", "10", "--sample", "100", "--small-entries", "1500"),
    *("--chunk-bits", "10", "--consent-chunk", "700", "--database-url", PG_URL),
]


def _run(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> dict[str, Any]:
    state_scale.main([*TINY, "--out", str(out), *extra])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    figures: dict[str, Any] = json.loads(last)
    assert figures == json.loads(out.read_text(encoding="utf-8"))
    return figures


def test_the_state_benchmark_loads_verifies_resumes_and_reports(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny run verifies its load and ends with its JSON; a kept database is measured again."""
    # The broker's start reads every consent in pages: here seven of them fill the book.
    monkeypatch.setattr(store, "CONSENT_PAGE", 300)
    name = f"backa_bench_state_test_{uuid.uuid4().hex[:12]}"
    try:
        first = _run(capsys, tmp_path / "first.json", "--reuse", name, "--keep")
        assert first["database"] == name
        assert first["sample_verified"] is True
        assert first["chunks_loaded"] == {"consents": 3, "audit": 5}
        assert first["entries"] == 5000
        assert first["consents"] == 2001  # and one registered through ConsentRegistry
        assert first["checks"]["nodes"] == sum(5000 >> level for level in range(13))
        assert first["proofs_verified"] == 10
        assert first["anchor_small_log_entries"] == 1500
        assert first["inclusion_ratio_small_log_p50"] > 0
        assert first["consistency_verified_to"] > 5000
        assert 0 < first["decision_p50_ms"] <= first["decision_p99_ms"]
        assert 0 < first["inclusion_proof_p50_ms"] <= first["inclusion_proof_p99_ms"]
        assert first["decision_ratio_p50"] > 0
        assert first["export_verify_s"] > 0
        assert first["export_verify_ratio"] > 0
        assert set(first["decision_outcomes"]) >= {"allowed", "consent_missing"}
        assert first["cpu_count"] >= 1
        assert first["postgres"]
        # Nothing is left to load: the second run measures the kept database, then drops it.
        again = _run(capsys, tmp_path / "again.json", "--reuse", name, "--proofs", "3")
        assert again["chunks_loaded"] == {"consents": 0, "audit": 0}
        assert again["sample_verified"] is True
        assert again["consents"] == 2002
        assert again["entries"] > first["consistency_verified_to"]
    finally:
        for database in (name, f"{name}_small"):
            drop = f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'
            asyncio.run(state_scale.admin(PG_URL, drop))
