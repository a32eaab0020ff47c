"""Envelope throughput: seal+sign and verify+open against bare HPKE.

Measures, for 2 KiB of content, with 1 and 5 recipients:

* seal+sign per second (content key, AES-256-GCM, one HPKE wrap per recipient,
  Ed25519 signature, header and envelope serialisation);
* verify+open per second at one recipient (parse, signature check, one HPKE
  unwrap, AES-256-GCM decrypt);

and, in the same run as the anchor, one bare HPKE single-shot encrypt+decrypt
of the same 2 KiB with the same suite (``cryptography``'s ``hpke.Suite``). Each
figure is the median of several rounds; ratios are envelope ops/s divided by
the anchor's ops/s. The last line of output is JSON with the headline figures.

    .venv/bin/python -m bench.envelope [--rounds 7] [--seconds 0.5]   (or: make bench)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cryptography

from keys.envelope import Sealed, open_envelope, seal
from keys.material import HPKE_SUITE
from schemas.envelope import Kind, LegalBasis, Purpose
from tests.support import CHILD, Agency, MemoryDirectory

CONTENT = os.urandom(2048)
NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
BASIS = LegalBasis(type="legal", ref="osl-10-28")


def _rate(operation: Callable[[], object], seconds: float) -> float:
    """Operations per second of ``operation`` over about ``seconds`` of wall time."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        operation()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def _median_rate(operation: Callable[[], object], rounds: int, seconds: float) -> float:
    operation()  # warm up
    return statistics.median(_rate(operation, seconds) for _ in range(rounds))


def main() -> None:
    """Run every measurement, print a table, the ratios and one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()

    sender = Agency.make("bench-sender")
    recipients = [Agency.make(f"bench-recipient-{i}") for i in range(5)]
    directory = MemoryDirectory.of(sender, *recipients)

    def sealer(count: int) -> Callable[[], Sealed]:
        targets = [r.sealing for r in recipients[:count]]
        return lambda: seal(
            CONTENT,
            sender=sender.sender,
            recipients=targets,
            kind=Kind.REFERRAL,
            child=CHILD,
            basis=BASIS,
            purpose=Purpose.REFERRAL,
            created=NOW,
            expires=NOW + timedelta(days=30),
        )

    def opener(count: int) -> Callable[[], object]:
        wire = sealer(count)().wire
        me = recipients[0].recipient
        return lambda: open_envelope(wire, keys=directory, recipient=me, now=NOW)

    anchor_key = recipients[0].hpke

    def bare_hpke() -> bytes:
        return HPKE_SUITE.decrypt(
            HPKE_SUITE.encrypt(CONTENT, anchor_key.public_key, info=b"bench"),
            anchor_key.private_key,
            info=b"bench",
        )

    rounds, seconds = args.rounds, args.seconds
    anchor = _median_rate(bare_hpke, rounds, seconds)
    figures = {
        "seal_1_per_s": _median_rate(sealer(1), rounds, seconds),
        "seal_5_per_s": _median_rate(sealer(5), rounds, seconds),
        "open_1_per_s": _median_rate(opener(1), rounds, seconds),
        "open_5_per_s": _median_rate(opener(5), rounds, seconds),
    }
    # A message's full cost is one seal plus one open per recipient.
    roundtrip_1 = 1 / (1 / figures["seal_1_per_s"] + 1 / figures["open_1_per_s"])

    print(f"envelope suite v1, 2 KiB content, median of {rounds} rounds x {seconds} s")
    print(f"  anchor: bare HPKE encrypt+decrypt     {anchor:10.0f} /s")
    for name, value in figures.items():
        print(f"  {name:36s} {value:10.0f} /s   ratio to anchor {value / anchor:5.2f}")
    print(
        f"  seal+open, 1 recipient               {roundtrip_1:10.0f} /s   "
        f"ratio to anchor {roundtrip_1 / anchor:5.2f}"
    )

    result = {
        "bench": "envelope",
        "content_bytes": len(CONTENT),
        "anchor_hpke_encrypt_decrypt_per_s": round(anchor),
        **{k: round(v) for k, v in figures.items()},
        "seal_open_1_per_s": round(roundtrip_1),
        "seal_open_1_ratio": round(roundtrip_1 / anchor, 3),
        "seal_1_ratio": round(figures["seal_1_per_s"] / anchor, 3),
        "seal_5_ratio": round(figures["seal_5_per_s"] / anchor, 3),
        "open_1_ratio": round(figures["open_1_per_s"] / anchor, 3),
        "open_5_ratio": round(figures["open_5_per_s"] / anchor, 3),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out = Path(__file__).parent / "results" / "envelope.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
