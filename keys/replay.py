"""Replay guard shared by the broker and the adapters: message ids and a clock window.

A signed envelope stays valid for as long as its signing key does, so a copy
captured on the wire, in a dead-letter queue or in a backup could be sent
again. Two checks refuse it:

* the clock window (pure, ``check_window``): a message must not be created
  more than ``max_skew`` in the future (a sender's clock ahead of ours), nor
  more than ``max_age`` in the past (a message may sit a week in an offline
  recipient's queue, but not for ever), and must not be past its ``expires``;
* the message id (``SeenIds``): an id accepted once is refused ever after,
  for as long as the window would still let the message in.

The window is what makes the id store finite. A message is acceptable only
while ``now <= created + max_age`` and ``now < expires``, so its id needs to be
held only until ``min(expires, created + max_age)``, plus ``max_skew`` so that
another instance whose clock runs up to ``max_skew`` behind still finds it
(``remember_until``). Holding it until the *later* of the two would buy no
safety, and would let one message with ``expires`` in the year 9999 pin its
id for ever. An id is dropped only strictly after that instant, never earlier,
and a full store refuses new ids (``ReplayStoreFull``) instead of forgetting
old ones, because either would open a window for a replay.

What this module must never do: read the clock (``now`` and the store's
``clock`` are injected), accept a naive datetime (``ValueError``), or forget an
id that could still be replayed.

Reason codes of ``ReplayRefused`` (keys.errors): ``replayed``, ``too_old``,
``from_future``, ``expired``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from keys.errors import KeysError, ReplayRefused

__all__ = [
    "DEFAULT_MAX_IDS",
    "DEFAULT_WINDOW",
    "ClockWindow",
    "MemorySeenIds",
    "ReplayGuard",
    "ReplayStoreFull",
    "SeenIds",
    "check_window",
    "remember_until",
    "replay_verdict",
]

#: Default capacity of ``MemorySeenIds``. Sweden's whole volume is about one
#: message a second (DESIGN.md), about 605,000 in a seven-day window; one area
#: is a small fraction of that, and an entry costs a few hundred bytes.
DEFAULT_MAX_IDS = 1_000_000


@dataclass(frozen=True, slots=True)
class ClockWindow:
    """How far a message's ``created`` may lie from ``now``, either way."""

    #: Tolerated clock difference between sender and checker (and between broker instances).
    max_skew: timedelta = timedelta(minutes=5)
    #: Longest a message may travel, queueing included, before it is refused.
    max_age: timedelta = timedelta(days=7)

    def __post_init__(self) -> None:
        if self.max_skew < timedelta(0):
            raise ValueError("max_skew must not be negative")
        if self.max_age <= timedelta(0):
            raise ValueError("max_age must be positive")


#: The window the broker and adapters use unless an area configures another.
DEFAULT_WINDOW = ClockWindow()


class ReplayStoreFull(KeysError):  # noqa: N818 - a state of the store, not a fault in the message
    """The id store is full of ids that may still be replayed; try again later.

    Deliberately not a ``ReplayRefused``: the message is not at fault, and a
    sender that retries later will be accepted once old ids have expired.
    """

    code = "replay_store_full"
    http_status = 503


def _require_aware(**values: datetime) -> None:
    """Refuse naive datetimes: comparing them with aware ones is meaningless."""
    for name, value in values.items():
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be a timezone-aware datetime")


def check_window(
    *, created: datetime, expires: datetime, now: datetime, window: ClockWindow
) -> None:
    """Refuse a message whose times fall outside the window; pure.

    Boundaries are inclusive for ``created`` (exactly ``max_skew`` ahead or
    exactly ``max_age`` old is accepted) and exclusive for ``expires`` (a
    message is expired at its ``expires`` instant).
    """
    _require_aware(created=created, expires=expires, now=now)
    if created > now + window.max_skew:
        raise ReplayRefused(
            "from_future", f"message was created more than {window.max_skew} after now"
        )
    if created < now - window.max_age:
        raise ReplayRefused("too_old", f"message was created more than {window.max_age} ago")
    if now >= expires:
        raise ReplayRefused("expired", "message has expired")


def replay_verdict(
    message_id: str,
    *,
    seen: bool,
    created: datetime,
    expires: datetime,
    now: datetime,
    window: ClockWindow,
) -> None:
    """Refuse a seen id as ``replayed``, otherwise apply ``check_window``; pure.

    The id is not echoed in the message: the caller has it in its log context,
    and it is whatever a peer chose to send.
    """
    del message_id  # part of the signature so that call sites read as a verdict on one message
    _require_aware(created=created, expires=expires, now=now)
    if seen:
        raise ReplayRefused("replayed", "message id was seen before")
    check_window(created=created, expires=expires, now=now, window=window)


def remember_until(*, created: datetime, expires: datetime, window: ClockWindow) -> datetime:
    """How long an accepted id must be held: after this, ``check_window`` refuses it anyway.

    ``min(expires, created + max_age) + max_skew``; see the module docstring
    for why the earlier of the two and not the later.
    """
    _require_aware(created=created, expires=expires)
    return min(expires, created + window.max_age) + window.max_skew


class SeenIds(Protocol):
    """Where accepted message ids are held until they can no longer be replayed.

    ``remember`` of an id that is already held must raise
    ``ReplayRefused("replayed", ...)``: a store shared by several broker
    instances implements it as an insert under a unique constraint, which is
    what closes the race between two instances that both ran ``seen`` before
    either ran ``remember``. A store may drop an id only strictly after its
    ``until``, and must raise rather than drop one earlier to make room.
    """

    def seen(self, message_id: str) -> bool:
        """Whether the id is held."""
        ...

    def remember(self, message_id: str, until: datetime) -> None:
        """Hold the id until ``until``; raise ``ReplayRefused`` if it is already held."""
        ...


class MemorySeenIds:
    """A bounded in-memory ``SeenIds`` for one process (an adapter, a one-node broker).

    Ids are pruned strictly after their ``until``, by the injected ``clock``,
    whenever a new id is remembered (or on ``prune``). When ``max_ids`` ids
    are held that may all still be replayed, ``remember`` raises
    ``ReplayStoreFull``: forgetting the oldest would re-open it to a replay.
    Not thread-safe; under asyncio ``seen`` and ``remember`` run without an
    ``await`` between them.
    """

    __slots__ = ("_clock", "_heap", "_max_ids", "_until")

    def __init__(self, *, clock: Callable[[], datetime], max_ids: int = DEFAULT_MAX_IDS) -> None:
        if max_ids < 1:
            raise ValueError("max_ids must be at least 1")
        self._clock = clock
        self._max_ids = max_ids
        self._until: dict[str, datetime] = {}
        # Min-heap on ``until``: each held id appears exactly once, so popping
        # from the top is the whole of pruning.
        self._heap: list[tuple[datetime, str]] = []

    def __len__(self) -> int:
        return len(self._until)

    def seen(self, message_id: str) -> bool:
        """Whether the id is held (an id past ``until`` but not yet pruned counts as held)."""
        return message_id in self._until

    def remember(self, message_id: str, until: datetime) -> None:
        """Hold the id until ``until``; prune first; refuse a held id or a full store."""
        _require_aware(until=until)
        if message_id in self._until:
            raise ReplayRefused("replayed", "message id was seen before")
        self.prune(self._clock())
        if len(self._until) >= self._max_ids:
            raise ReplayStoreFull(
                f"replay guard holds {len(self._until)} message ids that may still be replayed; "
                "refusing a new one rather than forgetting an old one"
            )
        self._until[message_id] = until
        heapq.heappush(self._heap, (until, message_id))

    def prune(self, now: datetime) -> int:
        """Drop the ids whose ``until`` is strictly before ``now``; return how many."""
        _require_aware(now=now)
        dropped = 0
        while self._heap and self._heap[0][0] < now:
            _, message_id = heapq.heappop(self._heap)
            del self._until[message_id]
            dropped += 1
        return dropped


@dataclass(frozen=True, slots=True)
class ReplayGuard:
    """The replay check as the broker and adapters call it: verdict, then remember."""

    seen: SeenIds
    window: ClockWindow = DEFAULT_WINDOW

    def check_and_remember(
        self, message_id: str, *, created: datetime, expires: datetime, now: datetime
    ) -> None:
        """Refuse a replayed or out-of-window message; otherwise hold its id.

        Raises ``ReplayRefused`` (nothing is remembered), ``ReplayStoreFull``
        (nothing is remembered; retry later) or ``ValueError`` for a naive
        datetime.
        """
        _require_aware(created=created, expires=expires, now=now)
        replay_verdict(
            message_id,
            seen=self.seen.seen(message_id),
            created=created,
            expires=expires,
            now=now,
            window=self.window,
        )
        self.seen.remember(
            message_id, remember_until(created=created, expires=expires, window=self.window)
        )
