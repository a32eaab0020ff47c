"""Derived message status: the furthest point the append-only events prove."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.records import StatusEvent
from broker.status import derive
from tests.support import T0

MID = "019abb2a-6a50-7cc3-9e0f-3a5f7d1e2b4c"


def _event(status: str, agency: str | None, minutes: int, **extra: str) -> StatusEvent:
    at = T0 + timedelta(minutes=minutes)
    return StatusEvent(
        message_id=MID, agency=agency, status=status, at=at, recorded_at=at, signer="x", **extra
    )


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param([], {"soc": "submitted", "bup": "submitted"}, id="nothing-yet"),
        pytest.param([_event("accepted", None, 0)], {"soc": "accepted", "bup": "accepted"}, id="accepted"),
        pytest.param(
            [_event("accepted", None, 0), _event("routed", None, 0), _event("delivered", "soc", 1)],
            {"soc": "delivered", "bup": "routed"},
            id="one-delivered",
        ),
        pytest.param(
            [_event("accepted", None, 0), _event("read", "soc", 5), _event("delivered", "soc", 1)],
            {"soc": "read", "bup": "accepted"},
            id="read-before-delivered",
        ),
        pytest.param([_event("rejected", None, 0, reason="no_basis")], {"soc": "rejected", "bup": "rejected"}, id="rejected"),
        pytest.param(
            [_event("accepted", None, 0), _event("rejected", "bup", 3, reason="delivery_limit")],
            {"soc": "accepted", "bup": "rejected"},
            id="dead-lettered-at-one-recipient",
        ),
    ],
)  # fmt: skip
def test_derived_state(events: list[StatusEvent], expected: dict[str, str]) -> None:
    """Each recipient's state is the furthest its events prove, whatever their order."""
    states = {s.agency: s.state for s in derive(events, ["soc", "bup"])}
    assert states == expected


def test_answer_is_carried() -> None:
    """An answered copy reports the answer (accepted or declined)."""
    events = [_event("accepted", None, 0), _event("answered", "soc", 9, answer="declined")]
    (soc,) = derive(events, ["soc"])
    assert (soc.state, soc.answer) == ("answered", "declined")
