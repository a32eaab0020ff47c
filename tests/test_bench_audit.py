"""The audit benchmark, bounded: it runs, its export verifies, and its last line is its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import audit


def test_the_audit_benchmark_runs_and_reports(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A small run prints ratios to its anchors and ends with the JSON it also writes."""
    out = tmp_path / "audit.json"
    audit.main(["--entries", "3000", "--appends", "40", "--rounds", "1", "--out", str(out)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    figures = json.loads(last)
    assert figures == json.loads(out.read_text(encoding="utf-8"))
    assert figures["verify_entries"] == 3000
    assert figures["appends_per_s_batch_64"] > 0
    assert figures["append_ratio_batch_1"] > 0
