"""The round-trip benchmark, bounded: every phase runs and its last line is its JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import round_trip

pytestmark = pytest.mark.rabbitmq

MESSAGES = 50
BACKLOG = 200


def test_the_round_trip_benchmark_runs_and_reports(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A tiny run hands over and delivers every message, and ends with the JSON it writes."""
    out = tmp_path / "round_trip.json"
    round_trip.main(
        [
            "--quick",
            *("--messages", str(MESSAGES), "--rounds", "1", "--hop-messages", "200"),
            *("--memory-messages", "0", "--broker-memory-messages", "0"),
            *("--backlog", str(BACKLOG), "--out", str(out)),
        ]
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    figures = json.loads(last)
    assert figures == json.loads(out.read_text(encoding="utf-8"))
    # One max-rate run and the half-load run, each of MESSAGES, and the light-load run.
    light = max(MESSAGES // 4, 20)
    through = 2 * MESSAGES + light
    assert figures["messages_through_round_trip"] == through
    assert figures["delivered_receipts_at_sender"] == through
    assert figures["handed_over_receipts_at_sender"] == through
    assert figures["handed_over_at_webhook"] == through + BACKLOG
    assert figures["webhook_repeats"] == 0
    assert figures["backlog"]["queued"] == BACKLOG
    assert figures["backlog_drain_msgs_per_s"] > 0
    for key in ("broker_hop_ratio", "round_trip_ratio", "backlog_drain_ratio"):
        assert 0 < figures[key] < 10, key
    assert figures["raw_msgs_per_s"] > figures["round_trip_msgs_per_s"] > 0
    assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
    assert figures["half_load_msgs_per_s"] > 0
    assert figures["light_load_latency_ms"]["samples_to_delivered"] == light
    assert 0 < figures["light_load_msgs_per_s"] < figures["half_load_msgs_per_s"]
    assert figures["memory"] == {"round_trip": None, "broker_hop": None}
    assert figures["cpu_count"] == os.cpu_count()
    assert figures["rabbitmq"]
    assert figures["python"]
