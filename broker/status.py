"""Message status: derived from the append-only event list, never stored as one field.

Receipts can arrive out of order (``read`` before ``delivered``); each is
recorded as it comes and the current state is the furthest point the events
prove. A later status implies the earlier ones: a person cannot have read a
message that was never delivered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from broker.records import StatusEvent

#: Progress of one recipient's copy, in order; each implies all before it.
PROGRESS: tuple[str, ...] = ("accepted", "routed", "delivered", "handed_over", "read", "answered")
#: Final states that override progress.
TERMINAL: tuple[str, ...] = ("rejected", "expired")


@dataclass(frozen=True, slots=True)
class RecipientState:
    """The derived state of one recipient's copy of a message."""

    agency: str
    state: str
    answer: str | None


def derive(events: Iterable[StatusEvent], recipients: Iterable[str]) -> list[RecipientState]:
    """The current state of each recipient's copy from all events of one message."""
    events = list(events)
    if any(e.agency is None and e.status == "rejected" for e in events):
        return [RecipientState(agency=a, state="rejected", answer=None) for a in recipients]
    message_level = max(
        (PROGRESS.index(e.status) for e in events if e.agency is None and e.status in PROGRESS),
        default=-1,
    )
    result = []
    for agency in recipients:
        mine = [e for e in events if e.agency == agency]
        if any(e.status in TERMINAL for e in mine):
            terminal = next(e.status for e in mine if e.status in TERMINAL)
            result.append(RecipientState(agency=agency, state=terminal, answer=None))
            continue
        rank = max(
            [message_level, *(PROGRESS.index(e.status) for e in mine if e.status in PROGRESS)]
        )
        answer = next((e.answer for e in reversed(mine) if e.status == "answered"), None)
        result.append(
            RecipientState(
                agency=agency, state=PROGRESS[rank] if rank >= 0 else "submitted", answer=answer
            )
        )
    return result
