"""Replay guard: clock window, seen ids, bounded memory (keys.replay)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keys.errors import ReplayRefused
from keys.replay import (
    DEFAULT_WINDOW,
    ClockWindow,
    MemorySeenIds,
    ReplayGuard,
    ReplayStoreFull,
    check_window,
    remember_until,
    replay_verdict,
)

NOW = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)
SKEW = DEFAULT_WINDOW.max_skew
AGE = DEFAULT_WINDOW.max_age
TICK = timedelta(microseconds=1)
HOUR = timedelta(hours=1)
ID_A = "0190a1b2-0000-7000-8000-000000000001"
ID_B = "0190a1b2-0000-7000-8000-000000000002"
ID_C = "0190a1b2-0000-7000-8000-000000000003"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_default_window() -> None:
    """The default window tolerates five minutes of skew and a week in a queue."""
    assert ClockWindow() == ClockWindow(max_skew=timedelta(minutes=5), max_age=timedelta(days=7))


@pytest.mark.parametrize(
    ("created", "expires", "reason"),
    [
        pytest.param(NOW, NOW + HOUR, None, id="fresh"),
        pytest.param(NOW + SKEW, NOW + HOUR, None, id="created-exactly-max-skew-ahead"),
        pytest.param(NOW + SKEW + TICK, NOW + HOUR, "from_future", id="created-past-max-skew"),
        pytest.param(NOW - AGE, NOW + HOUR, None, id="created-exactly-max-age-ago"),
        pytest.param(NOW - AGE - TICK, NOW + HOUR, "too_old", id="created-past-max-age"),
        pytest.param(NOW - HOUR, NOW + TICK, None, id="expires-one-tick-ahead"),
        pytest.param(NOW - HOUR, NOW, "expired", id="expires-exactly-now"),
        pytest.param(NOW - HOUR, NOW - TICK, "expired", id="expired-one-tick-ago"),
        pytest.param(NOW - AGE - TICK, NOW - TICK, "too_old", id="too-old-wins-over-expired"),
        pytest.param(NOW + SKEW + TICK, NOW, "from_future", id="future-wins-over-expired"),
        pytest.param(
            datetime(2024, 6, 15, 14, 5, tzinfo=timezone(timedelta(hours=2))),
            NOW + HOUR,
            None,
            id="other-offset-same-instant-plus-skew",
        ),
        pytest.param(
            datetime(2024, 6, 15, 14, 5, 0, 1, tzinfo=timezone(timedelta(hours=2))),
            NOW + HOUR,
            "from_future",
            id="other-offset-one-tick-past-skew",
        ),
    ],
)
def test_window(created: datetime, expires: datetime, reason: str | None) -> None:
    """The window accepts or refuses with the stated reason at exact boundaries."""
    if reason is None:
        check_window(created=created, expires=expires, now=NOW, window=DEFAULT_WINDOW)
        return
    with pytest.raises(ReplayRefused) as caught:
        check_window(created=created, expires=expires, now=NOW, window=DEFAULT_WINDOW)
    assert caught.value.reason_code == reason


def test_zero_skew_window() -> None:
    """With no skew allowed, a message created one tick in the future is refused."""
    window = ClockWindow(max_skew=timedelta(0))
    check_window(created=NOW, expires=NOW + HOUR, now=NOW, window=window)
    with pytest.raises(ReplayRefused, match="created more than"):
        check_window(created=NOW + TICK, expires=NOW + HOUR, now=NOW, window=window)


@pytest.mark.parametrize(
    ("max_skew", "max_age"),
    [
        pytest.param(timedelta(seconds=-1), AGE, id="negative-skew"),
        pytest.param(SKEW, timedelta(0), id="zero-age"),
        pytest.param(SKEW, timedelta(seconds=-1), id="negative-age"),
    ],
)
def test_window_refuses_nonsense(max_skew: timedelta, max_age: timedelta) -> None:
    """A negative skew or a non-positive age is refused when the window is built."""
    with pytest.raises(ValueError, match="max_"):
        ClockWindow(max_skew=max_skew, max_age=max_age)


def test_verdict_refuses_seen_id() -> None:
    """A seen id is refused as replayed even when its times are fine."""
    with pytest.raises(ReplayRefused) as caught:
        replay_verdict(
            ID_A, seen=True, created=NOW, expires=NOW + HOUR, now=NOW, window=DEFAULT_WINDOW
        )
    assert caught.value.reason_code == "replayed"
    assert ID_A not in str(caught.value)


def test_verdict_checks_window_for_unseen_id() -> None:
    """An unseen id is still refused when its times fall outside the window."""
    replay_verdict(
        ID_A, seen=False, created=NOW, expires=NOW + HOUR, now=NOW, window=DEFAULT_WINDOW
    )
    with pytest.raises(ReplayRefused) as caught:
        replay_verdict(ID_A, seen=False, created=NOW, expires=NOW, now=NOW, window=DEFAULT_WINDOW)
    assert caught.value.reason_code == "expired"


def test_guard_refuses_replayed_id() -> None:
    """The second arrival of one message id is refused as replayed."""
    guard = ReplayGuard(MemorySeenIds(clock=FakeClock(NOW)))
    guard.check_and_remember(ID_A, created=NOW, expires=NOW + HOUR, now=NOW)
    with pytest.raises(ReplayRefused) as caught:
        guard.check_and_remember(ID_A, created=NOW, expires=NOW + HOUR, now=NOW + TICK)
    assert caught.value.reason_code == "replayed"
    guard.check_and_remember(ID_B, created=NOW, expires=NOW + HOUR, now=NOW + TICK)


def test_guard_does_not_remember_refused_message() -> None:
    """A message refused by the window leaves no id behind, so a corrected resend is accepted."""
    store = MemorySeenIds(clock=FakeClock(NOW))
    guard = ReplayGuard(store)
    with pytest.raises(ReplayRefused):
        guard.check_and_remember(ID_A, created=NOW, expires=NOW, now=NOW)
    assert not store.seen(ID_A)
    assert len(store) == 0


NAIVE = datetime(2024, 6, 15, 12, 0)  # noqa: DTZ001 - the naive datetime under test


@pytest.mark.parametrize(
    ("created", "expires", "now"),
    [
        pytest.param(NAIVE, NOW + HOUR, NOW, id="naive-created"),
        pytest.param(NOW, NAIVE + HOUR, NOW, id="naive-expires"),
        pytest.param(NOW, NOW + HOUR, NAIVE, id="naive-now"),
    ],
)
def test_naive_datetimes_refused(created: datetime, expires: datetime, now: datetime) -> None:
    """Every entry point refuses a naive datetime with ValueError and remembers nothing."""
    with pytest.raises(ValueError, match="timezone-aware"):
        check_window(created=created, expires=expires, now=now, window=DEFAULT_WINDOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        replay_verdict(
            ID_A, seen=True, created=created, expires=expires, now=now, window=DEFAULT_WINDOW
        )
    store = MemorySeenIds(clock=FakeClock(NOW))
    with pytest.raises(ValueError, match="timezone-aware"):
        ReplayGuard(store).check_and_remember(ID_A, created=created, expires=expires, now=now)
    assert len(store) == 0


def test_store_refuses_naive_until_and_clock() -> None:
    """MemorySeenIds refuses a naive until, and a clock that returns naive datetimes."""
    with pytest.raises(ValueError, match="timezone-aware"):
        MemorySeenIds(clock=FakeClock(NOW)).remember(ID_A, NAIVE)
    with pytest.raises(ValueError, match="timezone-aware"):
        MemorySeenIds(clock=FakeClock(NAIVE)).remember(ID_A, NOW)


@pytest.mark.parametrize(
    ("created", "expires", "until"),
    [
        pytest.param(NOW, NOW + HOUR, NOW + HOUR + SKEW, id="expires-first"),
        pytest.param(NOW, NOW + 2 * AGE, NOW + AGE + SKEW, id="max-age-first"),
        pytest.param(NOW, NOW + AGE, NOW + AGE + SKEW, id="tie"),
        pytest.param(NOW, datetime.max.replace(tzinfo=UTC) - SKEW, NOW + AGE + SKEW, id="far"),
    ],
)
def test_remember_until(created: datetime, expires: datetime, until: datetime) -> None:
    """An id is held until the earlier of expiry and max age, plus the skew."""
    assert remember_until(created=created, expires=expires, window=DEFAULT_WINDOW) == until


_windows = st.builds(
    ClockWindow,
    max_skew=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=1)),
    max_age=st.timedeltas(min_value=TICK, max_value=timedelta(days=30)),
)
_offsets = st.timedeltas(min_value=-timedelta(days=60), max_value=timedelta(days=60))


@given(_windows, _offsets, _offsets, st.timedeltas(min_value=TICK, max_value=timedelta(days=90)))
def test_pruned_id_cannot_be_replayed(
    window: ClockWindow, created_offset: timedelta, expires_offset: timedelta, late: timedelta
) -> None:
    """Once an id may be pruned, even a checker whose clock is max_skew behind refuses it.

    Pruning happens strictly after ``until`` on the pruning instance's clock;
    any instance whose clock is at most ``max_skew`` behind is then strictly
    past ``until - max_skew``, where the window alone must refuse.
    """
    created, expires = NOW + created_offset, NOW + expires_offset
    until = remember_until(created=created, expires=expires, window=window)
    with pytest.raises(ReplayRefused):
        check_window(
            created=created, expires=expires, now=until - window.max_skew + late, window=window
        )


def test_prune_only_strictly_after_until() -> None:
    """An id is kept at its until instant and dropped one tick after."""
    store = MemorySeenIds(clock=FakeClock(NOW))
    store.remember(ID_A, NOW + HOUR)
    assert store.prune(NOW + HOUR) == 0
    assert store.seen(ID_A)
    assert store.prune(NOW + HOUR + TICK) == 1
    assert not store.seen(ID_A)
    assert len(store) == 0


def test_remember_prunes_expired_ids() -> None:
    """Remembering a new id drops the ids whose until has passed by the injected clock."""
    clock = FakeClock(NOW)
    store = MemorySeenIds(clock=clock)
    store.remember(ID_A, NOW + HOUR)
    store.remember(ID_B, NOW + 2 * HOUR)
    clock.now = NOW + HOUR + TICK
    store.remember(ID_C, NOW + 3 * HOUR)
    assert not store.seen(ID_A)
    assert store.seen(ID_B)
    assert store.seen(ID_C)
    assert len(store) == 2


def test_guard_accepts_id_again_only_after_pruning_and_window() -> None:
    """After the id is pruned, a resend of the same message is refused by the window instead."""
    clock = FakeClock(NOW)
    guard = ReplayGuard(MemorySeenIds(clock=clock))
    guard.check_and_remember(ID_A, created=NOW, expires=NOW + HOUR, now=NOW)
    clock.now = NOW + HOUR + SKEW + TICK
    guard.check_and_remember(ID_B, created=clock.now, expires=clock.now + HOUR, now=clock.now)
    assert not guard.seen.seen(ID_A)
    with pytest.raises(ReplayRefused) as caught:
        guard.check_and_remember(ID_A, created=NOW, expires=NOW + HOUR, now=clock.now)
    assert caught.value.reason_code == "expired"


def test_remember_refuses_held_id() -> None:
    """remember of an id already held raises replayed, closing the seen/remember race."""
    store = MemorySeenIds(clock=FakeClock(NOW))
    store.remember(ID_A, NOW + HOUR)
    with pytest.raises(ReplayRefused) as caught:
        store.remember(ID_A, NOW + 2 * HOUR)
    assert caught.value.reason_code == "replayed"


def test_full_store_refuses_rather_than_forgets() -> None:
    """A full store raises ReplayStoreFull and keeps every id until one may be pruned."""
    clock = FakeClock(NOW)
    store = MemorySeenIds(clock=clock, max_ids=2)
    store.remember(ID_A, NOW + HOUR)
    store.remember(ID_B, NOW + 2 * HOUR)
    with pytest.raises(ReplayStoreFull, match="rather than forgetting") as caught:
        store.remember(ID_C, NOW + HOUR)
    assert caught.value.http_status == 503
    assert store.seen(ID_A)
    assert store.seen(ID_B)
    assert not store.seen(ID_C)
    clock.now = NOW + HOUR + TICK
    store.remember(ID_C, NOW + 3 * HOUR)
    assert not store.seen(ID_A)
    assert store.seen(ID_C)


def test_guard_full_store_remembers_nothing() -> None:
    """When the store is full the guard raises ReplayStoreFull and the id stays unseen."""
    store = MemorySeenIds(clock=FakeClock(NOW), max_ids=1)
    guard = ReplayGuard(store)
    guard.check_and_remember(ID_A, created=NOW, expires=NOW + HOUR, now=NOW)
    with pytest.raises(ReplayStoreFull):
        guard.check_and_remember(ID_B, created=NOW, expires=NOW + HOUR, now=NOW)
    assert not store.seen(ID_B)


def test_store_needs_room_for_one() -> None:
    """A store with no capacity is refused when built."""
    with pytest.raises(ValueError, match="at least 1"):
        MemorySeenIds(clock=FakeClock(NOW), max_ids=0)
