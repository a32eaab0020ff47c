"""Failpoints: named places where a test may make a process die, to show a crash loses nothing.

Off unless ``BACKA_FAILPOINTS`` is set, which only a test does for a process
it starts: ``name=N[,name=N…]`` makes the process kill itself with SIGKILL
(no clean-up, as a power cut) the N-th time it passes ``name``. The places
are the windows where a crash is most dangerous:

* ``broker.after_record`` — the decision is stored, nothing is routed;
* ``broker.after_route`` — the recipients' copies are confirmed by RabbitMQ,
  the store does not yet say so;
* ``broker.before_ack`` — everything is done but the ingress ack;
* ``adapter.after_store`` — the received message is stored, not yet acked.

A process that names an unknown failpoint refuses to start, so a test
cannot silently inject nothing.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Final

#: Every failpoint a process may pass.
NAMES: Final = frozenset(
    {"broker.after_record", "broker.after_route", "broker.before_ack", "adapter.after_store"}
)
ENV: Final = "BACKA_FAILPOINTS"


def parse(text: str) -> dict[str, int]:
    """``name=N,…`` → {name: N}; ValueError naming what is wrong."""
    plan: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, count = item.partition("=")
        if name not in NAMES:
            raise ValueError(
                f"{ENV}: unknown failpoint {name!r} (known: {', '.join(sorted(NAMES))})"
            )
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{ENV}: {name} needs a positive count, as {name}=3")
        plan[name] = int(count)
    return plan


_PLAN: Final = parse(os.environ.get(ENV, ""))
_passes: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """Pass the failpoint ``name``: die here if the plan says this is the pass."""
    if not _PLAN:
        return
    _passes[name] += 1
    if _PLAN.get(name) == _passes[name]:
        os.kill(os.getpid(), signal.SIGKILL)
