"""The deadline engine (``broker.deadlines``) against deploy/policy/deadlines.toml.

Every deadline is checked to the microsecond at fixed times (no clock, no
sleeps); working days are checked across Swedish holidays, the extra days off
and daylight saving changes, and by a hypothesis property; every invalid rule
file is refused with an error that names the rule and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.deadlines import (
    Accepted,
    CalendarSettings,
    CloseDeadline,
    DeadlineRule,
    DeadlineRulesError,
    ExtraDay,
    MessageFacts,
    OpenDeadline,
    Plan,
    Receipted,
    Targets,
    Trigger,
    WorkingCalendar,
    due_at,
    escalation_targets,
    load_deadline_rules,
    next_due,
    parse_deadline_rules,
    plan,
)
from schemas.content import Overdue
from schemas.envelope import Kind
from schemas.receipts import Answer, ReceiptStatus

REPO = Path(__file__).resolve().parents[1]
RULES = load_deadline_rules(REPO / "deploy" / "policy" / "deadlines.toml")
CALENDAR = WorkingCalendar(RULES.calendar)
STOCKHOLM = ZoneInfo("Europe/Stockholm")
US = timedelta(microseconds=1)

MESSAGE_ID = "019abb2a-6a50-7cc3-9e0f-3a5f7d1e2b4c"
CHILD = "cd" * 32
SENDER = "test-skola"
SOC = "test-soc"
BUP = "test-bup"
#: The fixed moment most events happen at: Wednesday 25 November 2026, 10:30 in Stockholm.
T0 = datetime(2026, 11, 25, 9, 30, 0, 1, tzinfo=UTC)
#: The meeting a team invitation is for (its ``expires``).
MEETING = datetime(2026, 12, 3, 13, 0, tzinfo=UTC)

NOT_DELIVERED = "delivery.not-delivered"
NOT_ANSWERED = "referral.not-answered"
DECLINED_BY_ALL = "referral.declined-by-all"
BEFORE_MEETING = "invitation.before-meeting"
NOT_READ = "concern.not-read"


def sthlm(year: int, month: int, day: int, hour: int = 10, minute: int = 0) -> datetime:
    """A local Stockholm time."""
    return datetime(year, month, day, hour, minute, tzinfo=STOCKHOLM)


def shipped(rule_id: str) -> DeadlineRule:
    """A rule of the shipped file by its id."""
    rule = RULES.by_id(rule_id)
    assert rule is not None, rule_id
    return rule


# --- the shipped file ------------------------------------------------------------------------


def test_shipped_rules_load_with_the_five_triggers() -> None:
    """The shipped deadlines.toml loads and has one rule for each of the five triggers."""
    assert [(rule.id, rule.trigger) for rule in RULES.rules] == [
        (NOT_DELIVERED, Trigger.NOT_DELIVERED),
        (NOT_ANSWERED, Trigger.NOT_ANSWERED),
        (DECLINED_BY_ALL, Trigger.DECLINED_BY_ALL),
        (BEFORE_MEETING, Trigger.BEFORE_EXPIRY),
        (NOT_READ, Trigger.NOT_READ),
    ]
    assert RULES.calendar == CalendarSettings()
    assert RULES.by_id("no.such-rule") is None


@pytest.mark.parametrize(
    ("rule_id", "kinds", "notify", "fallback", "repeat_hours", "overdue"),
    [
        (NOT_DELIVERED, None, ["sender", "operators"], None, 24, Overdue.DELIVERY),
        (NOT_ANSWERED, [Kind.REFERRAL], ["stodsamordnare"], "barnkontakt", 48, Overdue.ANSWER),
        (DECLINED_BY_ALL, [Kind.REFERRAL], ["stodsamordnare"], "barnkontakt", 48, Overdue.ANSWER),
        (
            BEFORE_MEETING,
            [Kind.TEAM_INVITATION],
            ["sender", "stodsamordnare"],
            "barnkontakt",
            24,
            Overdue.ANSWER,
        ),
        (NOT_READ, [Kind.CONCERN_REPORT], ["sender", "recipient"], None, 8, Overdue.READ),
    ],
    ids=["not-delivered", "not-answered", "declined-by-all", "before-meeting", "not-read"],
)
def test_shipped_rule_settings(  # noqa: PLR0917 - one parameter per column
    rule_id: str,
    kinds: list[Kind] | None,
    notify: list[str],
    fallback: str | None,
    repeat_hours: int,
    overdue: Overdue,
) -> None:
    """Each shipped rule watches the agreed kinds and notifies the agreed roles."""
    rule = shipped(rule_id)
    assert rule.kinds == kinds
    assert [role.value for role in rule.notify] == notify
    assert (rule.fallback.value if rule.fallback else None) == fallback
    assert rule.repeat_hours == repeat_hours
    assert rule.overdue is overdue


# --- due_at ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule_id", "start", "expires", "due"),
    [
        (NOT_DELIVERED, T0, None, T0 + timedelta(hours=4)),
        # Hours are elapsed time: across the spring change it is 04:30 local, not 03:30.
        (NOT_DELIVERED, sthlm(2026, 3, 29, 0, 30), None, datetime(2026, 3, 29, 2, 30, tzinfo=UTC)),
        (NOT_READ, T0, None, T0 + timedelta(hours=24)),
        (NOT_ANSWERED, T0, None, datetime(2026, 12, 9, 9, 30, 0, 1, tzinfo=UTC)),
        (NOT_ANSWERED, sthlm(2026, 12, 17), None, sthlm(2027, 1, 7)),
        (BEFORE_MEETING, T0, MEETING, MEETING - timedelta(hours=48)),
        # Sent later than 48 hours before the meeting: due at once, never in the past.
        (BEFORE_MEETING, MEETING - timedelta(hours=5), MEETING, MEETING - timedelta(hours=5)),
        (DECLINED_BY_ALL, T0, None, T0),
    ],
    ids=[
        "delivery-4h",
        "delivery-over-dst",
        "concern-24h",
        "referral-10-working-days",
        "referral-over-christmas",
        "invitation-48h-before",
        "invitation-sent-late",
        "declined-at-once",
    ],
)
def test_due_at_exact(
    rule_id: str, start: datetime, expires: datetime | None, due: datetime
) -> None:
    """Each rule is due at its exact moment, in UTC, and not a microsecond before."""
    got = due_at(shipped(rule_id), start=start, expires=expires, calendar=CALENDAR)
    assert got == due
    assert got.tzinfo is UTC
    assert not got <= due - US


def test_due_at_before_expiry_needs_expires() -> None:
    """A before_expiry deadline cannot be computed without an expiry time."""
    with pytest.raises(ValueError, match="expires"):
        due_at(shipped(BEFORE_MEETING), start=T0, expires=None, calendar=CALENDAR)


@pytest.mark.parametrize("name", ["start", "expires"])
def test_due_at_refuses_naive_datetimes(name: str) -> None:
    """A naive start or expiry is a programming error."""
    naive = datetime(2026, 11, 25, 10, 0)  # noqa: DTZ001 - the naive value is the point
    start, expires = (naive, MEETING) if name == "start" else (T0, naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        due_at(shipped(BEFORE_MEETING), start=start, expires=expires, calendar=CALENDAR)


# --- working days ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (date(2026, 12, 23), True),
        (date(2026, 12, 24), False),  # julafton, a Thursday
        (date(2026, 12, 25), False),  # juldagen
        (date(2026, 12, 31), False),  # nyårsafton
        (date(2027, 1, 6), False),  # trettondedag jul
        (date(2026, 4, 2), True),  # skärtorsdagen is a working day
        (date(2026, 4, 3), False),  # långfredagen
        (date(2026, 4, 6), False),  # annandag påsk
        (date(2026, 5, 1), False),  # första maj
        (date(2026, 5, 14), False),  # Kristi himmelsfärdsdag
        (date(2026, 6, 19), False),  # midsommarafton
        (date(2027, 6, 25), False),  # midsommarafton 2027
        (date(2028, 6, 6), False),  # nationaldagen on a Tuesday
        (date(2026, 11, 28), False),  # Saturday
        (date(2026, 11, 29), False),  # Sunday
        (date(2026, 11, 30), True),
    ],
    ids=str,
)
def test_is_working_day(day: date, working: bool) -> None:
    """Weekends, Swedish public holidays and the three extra days off are not working days."""
    assert CALENDAR.is_working_day(day) is working


def test_extra_days_can_be_left_out() -> None:
    """An area that works on julafton can leave it out of extra_non_working."""
    calendar = WorkingCalendar(CalendarSettings(extra_non_working=[ExtraDay.MIDSOMMARAFTON]))
    assert calendar.is_working_day(date(2026, 12, 24))
    assert calendar.is_working_day(date(2026, 12, 31))
    assert not calendar.is_working_day(date(2026, 6, 19))


def test_working_days_agree_with_the_holidays_de_facto_category() -> None:
    """Every day of 2026-2030 is a working day exactly when the holidays package says so."""
    de_facto = getattr(holidays.constants, "DE_FACTO", None)
    if de_facto is None:
        pytest.skip("this holidays version has no de facto category")
    days_off = holidays.country_holidays(
        "SE", years=range(2026, 2031), categories=(holidays.constants.PUBLIC, de_facto)
    )
    day = date(2026, 1, 1)
    while day.year < 2031:
        assert CALENDAR.is_working_day(day) is (day.weekday() < 5 and day not in days_off), day
        day += timedelta(days=1)


@pytest.mark.parametrize(
    ("start", "n", "due"),
    [
        (sthlm(2026, 11, 25, 10, 30), 1, sthlm(2026, 11, 26, 10, 30)),
        (sthlm(2026, 11, 27, 16, 45), 1, sthlm(2026, 11, 30, 16, 45)),
        # Thursday before Christmas: skips 24, 25, 26 Dec, 31 Dec, 1 Jan, 6 Jan and weekends.
        (sthlm(2026, 12, 17, 10), 10, sthlm(2027, 1, 7, 10)),
        (sthlm(2026, 12, 23, 15), 1, sthlm(2026, 12, 28, 15)),
        # Thursday before midsommarafton: the next working day is Monday.
        (sthlm(2026, 6, 18, 9), 1, sthlm(2026, 6, 22, 9)),
        # Started on midsommarafton: counting starts Monday 08:00.
        (sthlm(2026, 6, 19, 14), 1, sthlm(2026, 6, 23, 8)),
        (sthlm(2026, 6, 19, 14), 0, sthlm(2026, 6, 22, 8)),
        (sthlm(2026, 5, 13, 9, 15), 1, sthlm(2026, 5, 15, 9, 15)),
        # Started on Kristi himmelsfärdsdag: counting starts Friday 08:00.
        (sthlm(2026, 5, 14, 12), 1, sthlm(2026, 5, 18, 8)),
        (sthlm(2026, 4, 2, 11), 1, sthlm(2026, 4, 7, 11)),
        # Started on a Saturday night.
        (sthlm(2026, 11, 28, 23, 59), 10, sthlm(2026, 12, 14, 8)),
        # Daylight saving starts on Sunday 29 March: same local time, one hour less UTC.
        (sthlm(2026, 3, 27, 10), 1, sthlm(2026, 3, 30, 10)),
        # Daylight saving ends on Sunday 25 October: same local time, one hour more UTC.
        (sthlm(2026, 10, 23, 10), 1, sthlm(2026, 10, 26, 10)),
        (sthlm(2026, 11, 25, 10, 30), 0, sthlm(2026, 11, 25, 10, 30)),
    ],
    ids=[
        "next-day",
        "over-weekend",
        "christmas-and-new-year",
        "over-christmas",
        "over-midsommar",
        "start-on-midsommarafton",
        "start-on-midsommarafton-zero",
        "over-ascension",
        "start-on-ascension",
        "over-easter",
        "start-on-saturday",
        "dst-spring",
        "dst-autumn",
        "zero",
    ],
)
def test_add_working_days(start: datetime, n: int, due: datetime) -> None:
    """n working days later is the same local time on the n-th working day, returned in UTC."""
    got = CALENDAR.add_working_days(start, n)
    assert got == due
    assert got.tzinfo is UTC
    assert got.astimezone(STOCKHOLM).replace(tzinfo=None) == due.replace(tzinfo=None)


def test_dst_changes_the_utc_hour_only() -> None:
    """Across both daylight saving changes the UTC time moves by one hour, the local one not."""
    spring = CALENDAR.add_working_days(sthlm(2026, 3, 27, 10), 1)
    autumn = CALENDAR.add_working_days(sthlm(2026, 10, 23, 10), 1)
    assert spring == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)
    assert autumn == datetime(2026, 10, 26, 9, 0, tzinfo=UTC)


def test_calendar_refuses_bad_arguments() -> None:
    """A datetime where a date belongs, a naive start and a negative count are programming errors."""
    with pytest.raises(TypeError, match="takes a date"):
        CALENDAR.is_working_day(T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        CALENDAR.add_working_days(datetime(2026, 11, 25, 10), 1)  # noqa: DTZ001 - the point
    with pytest.raises(ValueError, match="negative"):
        CALENDAR.add_working_days(T0, -1)


_START = st.datetimes(
    min_value=datetime(2026, 1, 1),  # noqa: DTZ001 - hypothesis takes naive bounds with timezones
    max_value=datetime(2030, 12, 31, 23, 59, 59),  # noqa: DTZ001 - as above
    timezones=st.just(UTC),
)


@settings(max_examples=300, deadline=None)
@given(start=_START, n=st.integers(min_value=1, max_value=30))
def test_add_working_days_property(start: datetime, n: int) -> None:
    """The result is a working day at the same local time, after start, n working days on."""
    due = CALENDAR.add_working_days(start, n)
    local_start, local_due = start.astimezone(STOCKHOLM), due.astimezone(STOCKHOLM)
    on_working_day = CALENDAR.is_working_day(local_start.date())
    assert due > start
    assert CALENDAR.is_working_day(local_due.date())
    assert local_due.time() == (local_start.time() if on_working_day else time(8))
    crossed = 0
    day = local_start.date() + timedelta(days=1)
    while day <= local_due.date():
        crossed += CALENDAR.is_working_day(day)
        day += timedelta(days=1)
    # A start on a day off counts from the next working day, which is crossed too.
    assert crossed == n + (0 if on_working_day else 1)


# --- next_due --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule_id", "escalated_at", "due"),
    [
        (NOT_DELIVERED, T0, T0 + timedelta(hours=24)),
        (NOT_READ, sthlm(2026, 11, 27, 20), sthlm(2026, 11, 28, 4)),
        (NOT_ANSWERED, sthlm(2026, 11, 23, 10), sthlm(2026, 11, 25, 10)),
        # 48 hours after Thursday is Saturday: the reminder waits for Monday 08:00.
        (NOT_ANSWERED, sthlm(2026, 11, 26, 10), sthlm(2026, 11, 30, 8)),
        (NOT_ANSWERED, sthlm(2026, 12, 22, 10), sthlm(2026, 12, 28, 8)),
        # Counted in hours: the repeat falls on a Saturday and stays there.
        (DECLINED_BY_ALL, sthlm(2026, 11, 26, 10), sthlm(2026, 11, 28, 10)),
    ],
    ids=[
        "hours",
        "hours-overnight",
        "working-day",
        "weekend-to-monday",
        "julafton-to-monday",
        "declined-around-the-clock",
    ],
)
def test_next_due(rule_id: str, escalated_at: datetime, due: datetime) -> None:
    """A repeat is repeat_hours later; a working-day rule's repeat waits for a working day."""
    got = next_due(shipped(rule_id), escalated_at=escalated_at, calendar=CALENDAR)
    assert got == due
    assert got.tzinfo is UTC


# --- plan ------------------------------------------------------------------------------------


def accepted(
    kind: Kind, recipients: tuple[str, ...] = (SOC, BUP), *, expires: datetime | None = MEETING
) -> Accepted:
    """The broker accepted a message of ``kind`` at T0."""
    return Accepted(
        message_id=MESSAGE_ID,
        kind=kind,
        sender=SENDER,
        recipients=recipients,
        child=CHILD,
        at=T0,
        expires=expires,
    )


def facts(
    kind: Kind,
    answers: Mapping[str, Answer] | None = None,
    recipients: tuple[str, ...] = (SOC, BUP),
    refused: frozenset[str] = frozenset(),
) -> MessageFacts:
    """What the broker knows of a message of ``kind`` to SOC and BUP."""
    return MessageFacts(
        kind=kind,
        sender=SENDER,
        recipients=recipients,
        child=CHILD,
        expires=MEETING,
        answers=answers or {},
        refused=refused,
    )


def plan_accepted(event: Accepted) -> Plan:
    """The plan for an Accepted event under the shipped rules."""
    return plan(event, rules=RULES, calendar=CALENDAR, message=MessageFacts.from_accepted(event))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (Kind.REFERRAL, [(NOT_DELIVERED, T0 + timedelta(hours=4))]),
        (Kind.TEAM_RESPONSE, [(NOT_DELIVERED, T0 + timedelta(hours=4))]),
        (Kind.PLAN_UPDATE, [(NOT_DELIVERED, T0 + timedelta(hours=4))]),
        (
            Kind.CONCERN_REPORT,
            [(NOT_DELIVERED, T0 + timedelta(hours=4)), (NOT_READ, T0 + timedelta(hours=24))],
        ),
        (
            Kind.TEAM_INVITATION,
            [
                (NOT_DELIVERED, T0 + timedelta(hours=4)),
                (BEFORE_MEETING, MEETING - timedelta(hours=48)),
            ],
        ),
        (Kind.ESCALATION, []),
        (Kind.RECEIPT, []),
    ],
    ids=lambda value: str(value) if isinstance(value, Kind) else None,
)
def test_accepted_opens_per_recipient_by_kind(
    kind: Kind, expected: list[tuple[str, datetime]]
) -> None:
    """Acceptance opens not_delivered for each recipient, and not_read or before_expiry by kind."""
    got = plan_accepted(accepted(kind))
    assert got == Plan(
        open=tuple(
            OpenDeadline(rule, MESSAGE_ID, agency, due)
            for rule, due in expected
            for agency in (SOC, BUP)
        )
    )


def test_accepted_invitation_without_expiry_has_no_before_expiry() -> None:
    """Without an expiry there is nothing to count back from, so only delivery is watched."""
    got = plan_accepted(accepted(Kind.TEAM_INVITATION, (SOC,), expires=None))
    assert [(d.rule, d.agency) for d in got.open] == [(NOT_DELIVERED, SOC)]


def test_accepted_lists_each_recipient_once() -> None:
    """A recipient named twice gets one deadline per rule: the plan holds no duplicates."""
    got = plan_accepted(accepted(Kind.REFERRAL, (SOC, BUP, SOC)))
    assert [(d.rule, d.agency) for d in got.open] == [(NOT_DELIVERED, SOC), (NOT_DELIVERED, BUP)]


def test_accepted_refuses_facts_of_another_message() -> None:
    """The message facts given with an Accepted event must be the event's own."""
    with pytest.raises(ValueError, match="disagree"):
        plan(
            accepted(Kind.REFERRAL),
            rules=RULES,
            calendar=CALENDAR,
            message=facts(Kind.CONCERN_REPORT),
        )


@pytest.mark.parametrize(
    ("kind", "status", "answer", "answers", "closes", "opens"),
    [
        (Kind.REFERRAL, ReceiptStatus.DELIVERED, None, {}, [NOT_DELIVERED], [NOT_ANSWERED]),
        (Kind.REFERRAL, ReceiptStatus.DELIVERED, None, {SOC: Answer.ACCEPTED}, [NOT_DELIVERED], []),
        (Kind.CONCERN_REPORT, ReceiptStatus.DELIVERED, None, {}, [NOT_DELIVERED], []),
        (Kind.TEAM_INVITATION, ReceiptStatus.DELIVERED, None, {}, [NOT_DELIVERED], []),
        (Kind.REFERRAL, ReceiptStatus.HANDED_OVER, None, {}, [NOT_DELIVERED], []),
        (Kind.CONCERN_REPORT, ReceiptStatus.READ, None, {}, [NOT_DELIVERED, NOT_READ], []),
        (Kind.REFERRAL, ReceiptStatus.READ, None, {}, [NOT_DELIVERED], []),
        (
            Kind.REFERRAL,
            ReceiptStatus.ANSWERED,
            Answer.ACCEPTED,
            {},
            [NOT_DELIVERED, NOT_ANSWERED],
            [],
        ),
        (
            Kind.REFERRAL,
            ReceiptStatus.ANSWERED,
            Answer.DECLINED,
            {},
            [NOT_DELIVERED, NOT_ANSWERED],
            [],
        ),
        (
            Kind.TEAM_INVITATION,
            ReceiptStatus.ANSWERED,
            Answer.ACCEPTED,
            {},
            [NOT_DELIVERED, BEFORE_MEETING],
            [],
        ),
        (Kind.REFERRAL, ReceiptStatus.REJECTED, None, {}, [NOT_DELIVERED, NOT_ANSWERED], []),
        (Kind.CONCERN_REPORT, ReceiptStatus.REJECTED, None, {}, [NOT_DELIVERED, NOT_READ], []),
        (
            Kind.TEAM_INVITATION,
            ReceiptStatus.REJECTED,
            None,
            {},
            [NOT_DELIVERED, BEFORE_MEETING],
            [],
        ),
        (Kind.PLAN_UPDATE, ReceiptStatus.REJECTED, None, {}, [NOT_DELIVERED], []),
        (Kind.REFERRAL, ReceiptStatus.EXPIRED, None, {}, [], []),
        (Kind.ESCALATION, ReceiptStatus.DELIVERED, None, {}, [], []),
    ],
    ids=[
        "referral-delivered",
        "referral-delivered-after-its-answer",
        "concern-delivered",
        "invitation-delivered",
        "handed-over-proves-delivery",
        "concern-read",
        "referral-read",
        "referral-accepted",
        "referral-declined-by-one",
        "invitation-answered",
        "referral-rejected",
        "concern-rejected",
        "invitation-rejected",
        "plan-update-rejected",
        "expired-closes-nothing",
        "escalation-not-watched",
    ],
)
def test_receipt_closes_and_opens(  # noqa: PLR0917 - one parameter per column
    kind: Kind,
    status: ReceiptStatus,
    answer: Answer | None,
    answers: dict[str, Answer],
    closes: list[str],
    opens: list[str],
) -> None:
    """A recipient's receipt closes that recipient's deadlines and opens the next one, by kind."""
    event = Receipted(MESSAGE_ID, SOC, status, T0, answer)
    got = plan(event, rules=RULES, calendar=CALENDAR, message=facts(kind, answers))
    assert got.close == tuple(CloseDeadline(rule, MESSAGE_ID, SOC) for rule in closes)
    assert [(d.rule, d.agency) for d in got.open] == [(rule, SOC) for rule in opens]


def test_delivered_referral_is_due_ten_working_days_later() -> None:
    """not_answered starts at the recipient's delivered receipt and counts working days."""
    delivered = sthlm(2026, 12, 17, 10)
    event = Receipted(MESSAGE_ID, BUP, ReceiptStatus.DELIVERED, delivered)
    got = plan(event, rules=RULES, calendar=CALENDAR, message=facts(Kind.REFERRAL))
    assert got.open == (OpenDeadline(NOT_ANSWERED, MESSAGE_ID, BUP, sthlm(2027, 1, 7, 10)),)


@pytest.mark.parametrize(
    ("answers", "answer", "fires"),
    [
        ({BUP: Answer.DECLINED}, Answer.DECLINED, True),
        ({BUP: Answer.DECLINED, SOC: Answer.DECLINED}, Answer.DECLINED, True),
        ({}, Answer.DECLINED, False),
        ({BUP: Answer.ACCEPTED}, Answer.DECLINED, False),
        ({BUP: Answer.DECLINED}, Answer.ACCEPTED, False),
    ],
    ids=[
        "last-declines",
        "answers-include-this-one",
        "others-pending",
        "other-accepted",
        "this-accepts",
    ],
)
def test_declined_by_all(answers: dict[str, Answer], answer: Answer, fires: bool) -> None:
    """When the last recipient declines a referral, declined_by_all opens for the message, due at once."""
    event = Receipted(MESSAGE_ID, SOC, ReceiptStatus.ANSWERED, T0, answer)
    got = plan(event, rules=RULES, calendar=CALENDAR, message=facts(Kind.REFERRAL, answers))
    expected = (OpenDeadline(DECLINED_BY_ALL, MESSAGE_ID, None, T0),) if fires else ()
    assert got.open == expected
    assert all(close.rule != DECLINED_BY_ALL for close in got.close)


@pytest.mark.parametrize(
    ("refused", "status", "answer", "fires"),
    [
        pytest.param(frozenset({BUP}), ReceiptStatus.ANSWERED, Answer.DECLINED, True, id="one-refused-then-last-declines"),
        pytest.param(frozenset(), ReceiptStatus.REJECTED, None, True, id="one-declined-then-last-refuses"),
        pytest.param(frozenset({BUP}), ReceiptStatus.REJECTED, None, False, id="everyone-refused-nobody-declined"),
    ],
)  # fmt: skip
def test_declined_by_all_counts_refusals_as_nobody_left(
    refused: frozenset[str], status: ReceiptStatus, answer: Answer | None, fires: bool
) -> None:
    """Declined by some and refused by the rest leaves no receiving agency; refusals alone do not fire."""
    answers = {BUP: Answer.DECLINED} if status is ReceiptStatus.REJECTED and not refused else {}
    event = Receipted(MESSAGE_ID, SOC, status, T0, answer)
    message = facts(Kind.REFERRAL, answers, refused=refused)
    got = plan(event, rules=RULES, calendar=CALENDAR, message=message)
    expected = (OpenDeadline(DECLINED_BY_ALL, MESSAGE_ID, None, T0),) if fires else ()
    assert tuple(o for o in got.open if o.rule == DECLINED_BY_ALL) == expected


def test_declined_by_all_filters_by_kind() -> None:
    """Every recipient declining an invitation is not a referral declined by all."""
    event = Receipted(MESSAGE_ID, SOC, ReceiptStatus.ANSWERED, T0, Answer.DECLINED)
    message = facts(Kind.TEAM_INVITATION, {BUP: Answer.DECLINED})
    assert plan(event, rules=RULES, calendar=CALENDAR, message=message).open == ()


def test_receipt_from_a_stranger_changes_nothing() -> None:
    """A receipt from an agency that is not a recipient opens and closes nothing."""
    event = Receipted(MESSAGE_ID, "test-polis", ReceiptStatus.REJECTED, T0)
    assert plan(event, rules=RULES, calendar=CALENDAR, message=facts(Kind.REFERRAL)) == Plan()


def test_plan_is_deterministic() -> None:
    """The same event and facts always give the same plan."""
    event = Receipted(MESSAGE_ID, SOC, ReceiptStatus.ANSWERED, T0, Answer.DECLINED)
    message = facts(Kind.REFERRAL, {BUP: Answer.DECLINED})
    first = plan(event, rules=RULES, calendar=CALENDAR, message=message)
    assert all(
        plan(event, rules=RULES, calendar=CALENDAR, message=message) == first for _ in range(3)
    )


@pytest.mark.parametrize(
    ("status", "answer"),
    [(ReceiptStatus.ANSWERED, None), (ReceiptStatus.READ, Answer.ACCEPTED)],
    ids=["answered-without-answer", "answer-without-answered"],
)
def test_receipted_answer_matches_status(status: ReceiptStatus, answer: Answer | None) -> None:
    """An answer belongs to an answered receipt and to no other."""
    with pytest.raises(ValueError, match="answer is required"):
        Receipted(MESSAGE_ID, SOC, status, T0, answer)


# --- escalation targets ----------------------------------------------------------------------


@dataclass
class Team:
    """An in-memory Barnets team: each child's stödsamordnare and barnkontakt agencies."""

    coordinators: dict[str, str] = field(default_factory=dict)
    contacts: dict[str, str] = field(default_factory=dict)

    def stodsamordnare(self, child: str) -> str | None:
        """The agency of the child's stödsamordnare."""
        return self.coordinators.get(child)

    def barnkontakt(self, child: str) -> str | None:
        """The agency of the child's barnkontakt."""
        return self.contacts.get(child)


FULL_TEAM = Team({CHILD: "test-soc-ss"}, {CHILD: "test-forskola"})
NO_COORDINATOR = Team({}, {CHILD: "test-forskola"})
NOBODY = Team()


@pytest.mark.parametrize(
    ("rule_id", "recipient", "team", "expected"),
    [
        (NOT_ANSWERED, SOC, FULL_TEAM, Targets(("test-soc-ss",), operators=False)),
        (NOT_ANSWERED, SOC, NO_COORDINATOR, Targets(("test-forskola",), operators=False)),
        (NOT_ANSWERED, SOC, NOBODY, Targets((), operators=True)),
        (DECLINED_BY_ALL, None, NO_COORDINATOR, Targets(("test-forskola",), operators=False)),
        (NOT_DELIVERED, SOC, FULL_TEAM, Targets((SENDER,), operators=True)),
        (NOT_READ, SOC, NOBODY, Targets((SENDER, SOC), operators=False)),
        (BEFORE_MEETING, BUP, FULL_TEAM, Targets((SENDER, "test-soc-ss"), operators=False)),
        (BEFORE_MEETING, BUP, NO_COORDINATOR, Targets((SENDER, "test-forskola"), operators=False)),
        # The sender is the stödsamordnare: told once.
        (BEFORE_MEETING, BUP, Team({CHILD: SENDER}), Targets((SENDER,), operators=False)),
        (BEFORE_MEETING, BUP, Team({}, {CHILD: SENDER}), Targets((SENDER,), operators=False)),
    ],
    ids=[
        "stodsamordnare",
        "fallback-barnkontakt",
        "nobody-so-operators",
        "declined-fallback",
        "sender-and-operators",
        "sender-and-recipient",
        "sender-and-stodsamordnare",
        "sender-and-fallback",
        "sender-is-stodsamordnare",
        "sender-is-barnkontakt",
    ],
)
def test_escalation_targets(
    rule_id: str, recipient: str | None, team: Team, expected: Targets
) -> None:
    """Roles resolve to agencies in notify order, once each, with the fallback for a missing role."""
    got = escalation_targets(
        shipped(rule_id), sender=SENDER, recipient=recipient, child=CHILD, team=team
    )
    assert got == expected


def test_fallback_to_operators() -> None:
    """A rule may fall back to the operators when the child has no stödsamordnare."""
    rule = parse_deadline_rules(
        rules_toml(rule_toml(notify='["sender", "stodsamordnare"]', fallback='"operators"')),
        source="ops.toml",
    ).rules[0]
    assert escalation_targets(
        rule, sender=SENDER, recipient=SOC, child=CHILD, team=NOBODY
    ) == Targets((SENDER,), operators=True)
    assert escalation_targets(
        rule, sender=SENDER, recipient=SOC, child=CHILD, team=FULL_TEAM
    ) == Targets((SENDER, "test-soc-ss"), operators=False)


# --- bad rule files --------------------------------------------------------------------------

_VALID_RULE: dict[str, str] = {
    "id": '"r.one"',
    "trigger": '"not_read"',
    "after": "{ hours = 4 }",
    "notify": '["sender"]',
    "repeat_hours": "8",
    "overdue": '"read"',
    "description": '"Why the rule exists."',
}


def rule_toml(**changes: str | None) -> str:
    """A ``[[rule]]`` table: the valid rule with fields changed (a TOML literal) or dropped (None)."""
    fields = {**_VALID_RULE, **changes}
    return "[[rule]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None)


def rules_toml(*rules: str, calendar: str = "") -> str:
    """A whole rules file with these rule tables."""
    return (
        'version = "test-1"\n'
        + (f"[calendar]\n{calendar}\n" if calendar else "")
        + "\n".join(rules)
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            rules_toml(rule_toml(), rule_toml()),
            "rule[1] (id 'r.one').id: the id is already used by rule[0]",
        ),
        (
            rules_toml(rule_toml(id='"R One"')),
            "rule[0] (id 'R One').id: String should match pattern",
        ),
        (
            rules_toml(rule_toml(trigger='"not_heard"')),
            "rule[0] (id 'r.one').trigger: Input should be 'not_delivered', 'not_answered', 'declined_by_all', 'before_expiry' or 'not_read' (got 'not_heard')",
        ),
        (
            rules_toml(rule_toml(after="{ hours = 4, working_days = 2 }")),
            "rule[0] (id 'r.one').after: give exactly one of hours or working_days",
        ),
        (
            rules_toml(rule_toml(after="{}")),
            "rule[0] (id 'r.one').after: give exactly one of hours or working_days",
        ),
        (
            rules_toml(rule_toml(after=None)),
            "rule[0] (id 'r.one').after: required for a not_read rule",
        ),
        (
            rules_toml(rule_toml(after="{ hours = 0 }")),
            "rule[0] (id 'r.one').after.hours: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            rules_toml(rule_toml(after='{ working_days = "10" }')),
            "rule[0] (id 'r.one').after.working_days: Input should be a valid integer (got '10')",
        ),
        (
            rules_toml(rule_toml(after="{ days = 3 }")),
            "rule[0] (id 'r.one').after.days: Extra inputs are not permitted",
        ),
        (
            rules_toml(rule_toml(hours_before="48")),
            "rule[0] (id 'r.one').hours_before: only a before_expiry rule counts back from expires, not not_read",
        ),
        (
            rules_toml(rule_toml(trigger='"before_expiry"', after=None)),
            "rule[0] (id 'r.one').hours_before: required for a before_expiry rule",
        ),
        (
            rules_toml(rule_toml(trigger='"before_expiry"', hours_before="48")),
            "rule[0] (id 'r.one').after: a before_expiry rule counts back from expires: use hours_before",
        ),
        (
            rules_toml(rule_toml(trigger='"declined_by_all"')),
            "rule[0] (id 'r.one').after: a declined_by_all rule is due the moment the last recipient declines",
        ),
        (
            rules_toml(rule_toml(trigger='"declined_by_all"', after=None, notify='["recipient"]')),
            "rule[0] (id 'r.one').notify: a declined_by_all deadline has no single recipient",
        ),
        (rules_toml(rule_toml(notify=None)), "rule[0] (id 'r.one').notify: Field required"),
        (
            rules_toml(rule_toml(notify="[]")),
            "rule[0] (id 'r.one').notify: List should have at least 1 item",
        ),
        (
            rules_toml(rule_toml(notify='["sender", "rektor"]')),
            "rule[0] (id 'r.one').notify[1]: Input should be 'sender', 'recipient', 'operators', 'stodsamordnare' or 'barnkontakt' (got 'rektor')",
        ),
        (
            rules_toml(rule_toml(notify='["sender", "sender"]')),
            "rule[0] (id 'r.one').notify: lists the same value twice",
        ),
        (
            rules_toml(rule_toml(fallback='"rektor"')),
            "rule[0] (id 'r.one').fallback: Input should be",
        ),
        (
            rules_toml(rule_toml(fallback='"barnkontakt"')),
            "rule[0] (id 'r.one').fallback: never used",
        ),
        (
            rules_toml(
                rule_toml(notify='["stodsamordnare", "barnkontakt"]', fallback='"barnkontakt"')
            ),
            "rule[0] (id 'r.one').fallback: barnkontakt is already in notify",
        ),
        (
            rules_toml(
                rule_toml(
                    trigger='"declined_by_all"',
                    after=None,
                    notify='["stodsamordnare"]',
                    fallback='"recipient"',
                )
            ),
            "rule[0] (id 'r.one').fallback: a declined_by_all deadline has no single recipient",
        ),
        (
            rules_toml(rule_toml(repeat_hours=None)),
            "rule[0] (id 'r.one').repeat_hours: Field required",
        ),
        (
            rules_toml(rule_toml(repeat_hours="true")),
            "rule[0] (id 'r.one').repeat_hours: Input should be a valid integer (got True)",
        ),
        (
            rules_toml(rule_toml(kinds='["escalation"]')),
            "rule[0] (id 'r.one').kinds: escalation cannot be watched",
        ),
        (
            rules_toml(rule_toml(kinds='["referral", "referral"]')),
            "rule[0] (id 'r.one').kinds: lists the same value twice",
        ),
        (
            rules_toml(rule_toml(kinds="[]")),
            "rule[0] (id 'r.one').kinds: List should have at least 1 item",
        ),
        (
            rules_toml(rule_toml(overdue='"soon"')),
            "rule[0] (id 'r.one').overdue: Input should be 'delivery', 'handover', 'read' or 'answer' (got 'soon')",
        ),
        (
            rules_toml(rule_toml(description='""')),
            "rule[0] (id 'r.one').description: String should have at least 1 character",
        ),
        (
            rules_toml(rule_toml(repeat_days="2")),
            "rule[0] (id 'r.one').repeat_days: Extra inputs are not permitted",
        ),
        (
            rules_toml(rule_toml(), calendar='timezone = "Europe/Stockholmm"'),
            "calendar.timezone: not an IANA time zone",
        ),
        (
            rules_toml(rule_toml(), calendar='country = "NO"'),
            "calendar.country: Input should be 'SE' (got 'NO')",
        ),
        (
            rules_toml(rule_toml(), calendar='extra_non_working = ["julafton", "julafton"]'),
            "calendar.extra_non_working: lists the same day twice",
        ),
        (
            rules_toml(rule_toml(), calendar='extra_non_working = ["valborg"]'),
            "calendar.extra_non_working[0]: Input should be",
        ),
        (rules_toml(), "rule: Field required"),
        ('version = "test-1"\n[[rule]\n', "not valid TOML"),
    ],
    ids=[
        "duplicate-id",
        "bad-id",
        "unknown-trigger",
        "hours-and-working-days",
        "neither-hours-nor-working-days",
        "missing-after",
        "zero-hours",
        "working-days-as-text",
        "unknown-unit",
        "hours-before-on-not-read",
        "before-expiry-without-hours-before",
        "before-expiry-with-after",
        "declined-by-all-with-after",
        "declined-by-all-notifies-recipient",
        "missing-notify",
        "empty-notify",
        "unknown-notify-role",
        "repeated-notify-role",
        "unknown-fallback",
        "fallback-never-used",
        "fallback-already-notified",
        "declined-by-all-falls-back-to-recipient",
        "missing-repeat",
        "repeat-as-bool",
        "watches-escalations",
        "repeated-kind",
        "empty-kinds",
        "unknown-overdue",
        "empty-description",
        "unknown-field",
        "unknown-timezone",
        "other-country",
        "repeated-extra-day",
        "unknown-extra-day",
        "no-rules",
        "not-toml",
    ],
)
def test_bad_rules_file_names_rule_and_field(text: str, expected: str) -> None:
    """An invalid rules file is refused with an error naming the file, the rule (index and id) and the field."""
    with pytest.raises(DeadlineRulesError) as caught:
        parse_deadline_rules(text, source="bad.toml")
    assert str(caught.value).startswith("bad.toml: ")
    assert expected in str(caught.value)
    assert caught.value.code == "deadline_rules_invalid"


def test_unreadable_rules_file(tmp_path: Path) -> None:
    """A rules file that cannot be read is refused with its path."""
    missing = tmp_path / "deadlines.toml"
    with pytest.raises(DeadlineRulesError, match="cannot read the deadline rules file"):
        load_deadline_rules(missing)


def test_minimal_rule_file_uses_calendar_defaults() -> None:
    """A file without a [calendar] section counts working days in Stockholm with the three extra days."""
    rules = parse_deadline_rules(rules_toml(rule_toml()), source="min.toml")
    assert rules.calendar == CalendarSettings()
    assert rules.calendar.extra_non_working == list(ExtraDay)
    assert rules.calendar.working_day_starts == time(8, 0)


@pytest.mark.parametrize(
    ("day", "year", "expected"),
    [
        (ExtraDay.MIDSOMMARAFTON, 2026, date(2026, 6, 19)),
        (ExtraDay.MIDSOMMARAFTON, 2027, date(2027, 6, 25)),
        (ExtraDay.MIDSOMMARAFTON, 2029, date(2029, 6, 22)),
        (ExtraDay.MIDSOMMARAFTON, 2030, date(2030, 6, 21)),
        (ExtraDay.JULAFTON, 2026, date(2026, 12, 24)),
        (ExtraDay.NYARSAFTON, 2026, date(2026, 12, 31)),
    ],
    ids=str,
)
def test_extra_day_dates(day: ExtraDay, year: int, expected: date) -> None:
    """Midsommarafton is the Friday between 19 and 25 June; julafton and nyårsafton are fixed."""
    assert day.date_in(year) == expected
