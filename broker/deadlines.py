"""The deadline engine: which deadlines a message's events open and close, and when they fall due.

The broker watches every open matter so that no child falls into the gap
between agencies: a message no adapter takes, a referral nobody answers or
everybody declines, an invitation unanswered before the meeting, a concern
report nobody opens. The rules are data (``deploy/policy/deadlines.toml``) that
a coordinator can read; this module loads them and applies them. The shell
(the watchdog and ``broker.store``) stores what :func:`plan` returns, escalates
what falls due to :func:`escalation_targets` and asks :func:`next_due` when to
escalate again, until the deadline is closed.

Pure: no I/O except :func:`load_deadline_rules` reading the file (and the
``holidays`` package's tables); no logging; time is always an argument; every
datetime must be timezone-aware and every datetime returned is in UTC.

Triggers
--------

Each rule has one trigger, which says when its deadline starts and what
closes it. Every trigger but ``declined_by_all`` is per recipient.

================  ====================================  ===========================
trigger           starts (due)                          closed by the recipient's
================  ====================================  ===========================
not_delivered     acceptance (+ ``after``)              delivered, handed_over,
                                                        read, answered or rejected
not_answered      the recipient's delivered             answered or rejected
                  (+ ``after``)
declined_by_all   the answer that makes every           nothing: it stays open
                  recipient's answer "declined" (due    until someone handles it
                  at once)
before_expiry     acceptance (``expires`` minus         answered or rejected
                  ``hours_before``, never before
                  acceptance)
not_read          acceptance (+ ``after``)              read, answered or rejected
================  ====================================  ===========================

Receipts can arrive out of order, so a later step closes a ``not_delivered``
deadline as well: a read receipt proves delivery even if the delivered
receipt is still on its way. For the same reason ``not_answered`` is not
opened for a recipient whose answer is already known. An ``expired`` receipt
closes nothing: a matter that ran out unanswered is exactly what must be
escalated.

:func:`plan` may open a deadline that is already open or was closed (a
redelivered receipt): the store keeps the first one for each key (rule,
message, agency), so a deadline starts at the first event that starts it.

Broker-originated kinds (``escalation``, ``receipt``) are never watched: an
escalation of an undelivered escalation would loop. Operators see those in
the gaps view.

Time
----

``hours`` are elapsed hours, around the clock and across daylight saving
changes (4 hours is 4 hours of real time). ``working_days`` count Swedish
working days (:class:`WorkingCalendar`): Monday to Friday, except public
holidays (allmänna helgdagar, lag 1989:253, from ``holidays``) and the days
the calendar's ``extra_non_working`` names. Midsommarafton, julafton and
nyårsafton are not public holidays, but Swedish working life treats them as
Sundays (semesterlagen 1977:480, 7 §: "Med söndag jämställs allmän helgdag samt
midsommarafton, julafton och nyårsafton") and public-sector agencies keep
them closed, so a deadline counted in working days skips them by default.

n working days after a moment on a working day is the same local wall-clock
time on the n-th working day after its local date. A moment on a non-working
day counts as the start of the next working day (``working_day_starts``,
08:00 local): a referral delivered on Saturday has 10 working days from
Monday 08:00, so it is due at 08:00 ten working days after that Monday. The
count is in the configured time zone, so a deadline keeps its local time
across a daylight saving change (which in the EU happens on a Sunday, never a
working day, so the wall time always exists exactly once on the due date).

A rule counted in working days also repeats on working days: a repeat that
would fall on a non-working day waits until the start of the next working
day. Rules counted in hours repeat around the clock.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from holidays import country_holidays
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from broker.errors import BrokerError
from keys.policy import rule_location
from schemas.content import Overdue
from schemas.envelope import Kind
from schemas.receipts import Answer, ReceiptStatus

__all__ = [
    "WATCHED_KINDS",
    "Accepted",
    "After",
    "CalendarSettings",
    "CloseDeadline",
    "DeadlineRule",
    "DeadlineRules",
    "DeadlineRulesError",
    "ExtraDay",
    "MessageFacts",
    "NotifyRole",
    "OpenDeadline",
    "Plan",
    "Receipted",
    "Targets",
    "TeamLookup",
    "Trigger",
    "WorkingCalendar",
    "due_at",
    "escalation_targets",
    "load_deadline_rules",
    "next_due",
    "parse_deadline_rules",
    "plan",
]

#: The longest delay, lead time or repeat a rule may give, in hours (one year):
#: anything longer is a typo, and a deadline a year out watches nothing.
_MAX_HOURS: Final = 24 * 366
#: The longest delay in working days (about one working year).
_MAX_WORKING_DAYS: Final = 250

#: ``date.weekday()`` of the first weekend day.
_SATURDAY: Final = 5

#: The kinds a rule may watch: everything an agency sends about a matter.
WATCHED_KINDS: Final = frozenset(Kind) - {Kind.RECEIPT, Kind.ESCALATION}


class DeadlineRulesError(BrokerError):
    """The deadline rules file is invalid; the message names the file, the rule and the field.

    An operator's fault found at start-up: the broker refuses to start rather
    than leave matters unwatched.
    """

    code = "deadline_rules_invalid"
    http_status = 500
    default_message = "The deadline rules file is invalid."


# --- the rules file --------------------------------------------------------------------------


class Trigger(StrEnum):
    """What starts a rule's deadline and what closes it (see the module docstring)."""

    NOT_DELIVERED = "not_delivered"
    NOT_ANSWERED = "not_answered"
    DECLINED_BY_ALL = "declined_by_all"
    BEFORE_EXPIRY = "before_expiry"
    NOT_READ = "not_read"


class NotifyRole(StrEnum):
    """Whom an escalation goes to, as a role resolved per message."""

    SENDER = "sender"
    RECIPIENT = "recipient"  # the recipient the deadline is about
    OPERATORS = "operators"  # no agency: the broker's operators, in the gaps view
    STODSAMORDNARE = "stodsamordnare"  # the child's support coordinator, if any
    BARNKONTAKT = "barnkontakt"  # the family's one contact, if any


class ExtraDay(StrEnum):
    """A day that is not a public holiday but that Swedish working life keeps closed."""

    MIDSOMMARAFTON = "midsommarafton"  # the Friday before midsommardagen (19-25 June)
    JULAFTON = "julafton"  # 24 December
    NYARSAFTON = "nyarsafton"  # 31 December

    def date_in(self, year: int) -> date:
        """This day's date in ``year``."""
        if self is ExtraDay.JULAFTON:
            return date(year, 12, 24)
        if self is ExtraDay.NYARSAFTON:
            return date(year, 12, 31)
        first = date(year, 6, 19)
        return first + timedelta(days=(4 - first.weekday()) % 7)


#: Roles that may resolve to nobody (a child without a stödsamordnare), and so
#: the only ones a ``fallback`` can stand in for.
_MAY_BE_NOBODY: Final = frozenset({NotifyRole.STODSAMORDNARE, NotifyRole.BARNKONTAKT})

_RuleIdText = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{1,63}$", strict=True)]
_Label = Annotated[str, StringConstraints(min_length=1, max_length=64, strict=True)]
_Text2000 = Annotated[str, StringConstraints(min_length=1, max_length=2000, strict=True)]


class _FieldError(ValueError):
    """A coherence error that belongs to one field, so that the message can name it.

    Pydantic locates a model validator's error at the model; ``loc`` is
    appended to that location when the error is reported.
    """

    def __init__(self, loc: tuple[int | str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class _RulesModel(BaseModel):
    """Closed and immutable, lax about enums so that TOML strings parse; numbers are strict."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CalendarSettings(_RulesModel):
    """The calendar working days are counted in."""

    #: The IANA time zone the agencies' working day is in.
    timezone: _Label = "Europe/Stockholm"
    #: Whose public holidays apply; the extra days below are Swedish, so only Sweden.
    country: Literal["SE"] = "SE"
    #: Days off that are not public holidays.
    extra_non_working: list[ExtraDay] = Field(default_factory=lambda: list(ExtraDay))
    #: Where counting starts when a deadline starts on a non-working day (local time).
    working_day_starts: time = time(8, 0)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("not an IANA time zone such as 'Europe/Stockholm'") from exc
        return value

    @field_validator("extra_non_working")
    @classmethod
    def _no_repeats(cls, values: list[ExtraDay]) -> list[ExtraDay]:
        if len(set(values)) != len(values):
            raise ValueError("lists the same day twice")
        return values

    @field_validator("working_day_starts")
    @classmethod
    def _local(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("a local time without an offset, such as 08:00:00")
        return value


class After(_RulesModel):
    """How long after its start a deadline is due: hours or working days, exactly one."""

    hours: int | None = Field(default=None, ge=1, le=_MAX_HOURS, strict=True)
    working_days: int | None = Field(default=None, ge=1, le=_MAX_WORKING_DAYS, strict=True)

    @model_validator(mode="after")
    def _exactly_one(self) -> After:
        if (self.hours is None) == (self.working_days is None):
            raise ValueError("give exactly one of hours or working_days")
        return self


class DeadlineRule(_RulesModel):
    """One rule: when this trigger's deadline passes, notify these roles, and repeat."""

    id: _RuleIdText
    trigger: Trigger
    #: The kinds of message the rule watches; left out, every watched kind.
    kinds: list[Kind] | None = Field(default=None, min_length=1)
    #: For every trigger but before_expiry and declined_by_all.
    after: After | None = None
    #: For before_expiry only: how long before ``expires`` the deadline is due.
    hours_before: int | None = Field(default=None, ge=1, le=_MAX_HOURS, strict=True)
    notify: list[NotifyRole] = Field(min_length=1)
    #: Notified instead of a role in ``notify`` that resolves to nobody.
    fallback: NotifyRole | None = None
    #: Escalate again this many hours after each escalation, until the deadline closes.
    repeat_hours: int = Field(ge=1, le=_MAX_HOURS, strict=True)
    #: The late step, as the escalation notice names it.
    overdue: Overdue
    description: _Text2000

    @field_validator("kinds")
    @classmethod
    def _watched_kinds(cls, values: list[Kind] | None) -> list[Kind] | None:
        if values is None:
            return None
        if len(set(values)) != len(values):
            raise ValueError("lists the same value twice")
        unwatched = [k.value for k in values if k not in WATCHED_KINDS]
        if unwatched:
            raise ValueError(
                f"{', '.join(unwatched)} cannot be watched: the broker sends it itself, and "
                "watching an escalation would escalate escalations"
            )
        return values

    @field_validator("notify")
    @classmethod
    def _no_repeats(cls, values: list[NotifyRole]) -> list[NotifyRole]:
        if len(set(values)) != len(values):
            raise ValueError("lists the same value twice")
        return values

    @model_validator(mode="after")
    def _coherent(self) -> DeadlineRule:
        self._check_timing()
        self._check_roles()
        return self

    def _check_timing(self) -> None:
        trigger = self.trigger
        if trigger is Trigger.BEFORE_EXPIRY:
            if self.after is not None:
                raise _FieldError(
                    ("after",), "a before_expiry rule counts back from expires: use hours_before"
                )
            if self.hours_before is None:
                raise _FieldError(("hours_before",), "required for a before_expiry rule")
            return
        if self.hours_before is not None:
            raise _FieldError(
                ("hours_before",),
                f"only a before_expiry rule counts back from expires, not {trigger.value}",
            )
        if trigger is Trigger.DECLINED_BY_ALL:
            if self.after is not None:
                raise _FieldError(
                    ("after",),
                    "a declined_by_all rule is due the moment the last recipient declines; "
                    "remove after",
                )
            return
        if self.after is None:
            raise _FieldError(
                ("after",), f"required for a {trigger.value} rule: hours or working_days"
            )

    def _check_roles(self) -> None:
        if self.trigger is Trigger.DECLINED_BY_ALL:
            # The deadline is about the whole message: there is no one recipient.
            if NotifyRole.RECIPIENT in self.notify:
                raise _FieldError(
                    ("notify",), "a declined_by_all deadline has no single recipient to notify"
                )
            if self.fallback is NotifyRole.RECIPIENT:
                raise _FieldError(
                    ("fallback",), "a declined_by_all deadline has no single recipient to notify"
                )
        if self.fallback is None:
            return
        if self.fallback in self.notify:
            raise _FieldError(
                ("fallback",),
                f"{self.fallback.value} is already in notify, so it would never add anyone",
            )
        if not _MAY_BE_NOBODY.intersection(self.notify):
            raise _FieldError(
                ("fallback",),
                "never used: it stands in for stodsamordnare or barnkontakt when the child "
                "has none, and notify names neither",
            )


class DeadlineRules(_RulesModel):
    """A whole deadline rules file: its version, calendar and rules."""

    version: _Label
    calendar: CalendarSettings = Field(default_factory=CalendarSettings)
    #: In TOML each rule is one ``[[rule]]`` table. A file without rules would
    #: watch nothing, so at least one is required.
    rules: list[DeadlineRule] = Field(alias="rule", min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> DeadlineRules:
        seen: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.id in seen:
                raise _FieldError(
                    ("rule", index, "id"), f"the id is already used by rule[{seen[rule.id]}]"
                )
            seen[rule.id] = index
        return self

    def by_id(self, rule_id: str) -> DeadlineRule | None:
        """The rule with this id, or None (a stored deadline whose rule was since removed)."""
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        return None


def parse_deadline_rules(text: str, *, source: str) -> DeadlineRules:
    """Parse a deadline rules file's TOML text; ``source`` names it in every error."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DeadlineRulesError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return DeadlineRules.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(data, dict(err)) for err in exc.errors())
        raise DeadlineRulesError(f"{source}: {problems}") from exc


def load_deadline_rules(path: Path) -> DeadlineRules:
    """Read and parse the deadline rules file at ``path`` (the engine's only I/O)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DeadlineRulesError(f"{path}: cannot read the deadline rules file: {exc}") from exc
    return parse_deadline_rules(text, source=str(path))


def _problem(data: Mapping[str, Any], err: Mapping[str, Any]) -> str:
    """One validation error as ``rule[2] (id 'x').after: <message> (got 'y')``."""
    ctx = err.get("ctx") or {}
    error = ctx.get("error")
    # Our own validators' messages read better without pydantic's "Value error, " prefix.
    message = str(error) if err.get("type") == "value_error" and error is not None else err["msg"]
    loc: tuple[int | str, ...] = tuple(err.get("loc", ()))
    if isinstance(error, _FieldError):
        loc = (*loc, *error.loc)
    got = err.get("input")
    if isinstance(got, str | int | float | bool) and err.get("type") != "value_error":
        message += f" (got {got!r})"
    if not loc:
        return message
    return f"{rule_location(data, loc)}: {message}"


# --- working days ----------------------------------------------------------------------------


class WorkingCalendar:
    """Swedish working days in the configured time zone (see the module docstring).

    Holiday tables are computed once per year and kept; an instance is meant
    to live as long as the rules it was built for.
    """

    def __init__(self, settings: CalendarSettings | None = None) -> None:
        """Build the calendar from ``settings`` (the defaults: Stockholm, Sweden)."""
        self.settings = settings if settings is not None else CalendarSettings()
        self.zone = ZoneInfo(self.settings.timezone)
        self._closed: dict[int, frozenset[date]] = {}

    def is_working_day(self, day: date) -> bool:
        """Whether ``day`` is a working day: Monday to Friday, not a holiday nor an extra day."""
        if isinstance(day, datetime):
            # A datetime is a date to Python, but its local date depends on the zone.
            raise TypeError("is_working_day takes a date; convert a datetime to local time first")
        return day.weekday() < _SATURDAY and day not in self._non_working(day.year)

    def add_working_days(self, start: datetime, n: int) -> datetime:
        """The same local time ``n`` working days after ``start``'s local date, in UTC.

        A ``start`` on a non-working day counts from the start of the next
        working day (``working_day_starts``, local time).
        """
        _require_aware(start, "start")
        if n < 0:
            raise ValueError("n must not be negative")
        local = start.astimezone(self.zone)
        day, wall = local.date(), local.time()
        if not self.is_working_day(day):
            day, wall = self._next_working_day(day), self.settings.working_day_starts
        for _ in range(n):
            day = self._next_working_day(day)
        # Where a wall time does not exist that day (a zone that changes its
        # clocks on a weekday), fold=0 reads it with the offset before the change.
        return datetime.combine(day, wall, tzinfo=self.zone).astimezone(UTC)

    def next_working_moment(self, moment: datetime) -> datetime:
        """``moment`` (in UTC) if it falls on a working day, else the next working day's start."""
        _require_aware(moment, "moment")
        local = moment.astimezone(self.zone)
        if self.is_working_day(local.date()):
            return moment.astimezone(UTC)
        day = self._next_working_day(local.date())
        return datetime.combine(day, self.settings.working_day_starts, tzinfo=self.zone).astimezone(
            UTC
        )

    def _next_working_day(self, day: date) -> date:
        day += timedelta(days=1)
        while not self.is_working_day(day):
            day += timedelta(days=1)
        return day

    def _non_working(self, year: int) -> frozenset[date]:
        closed = self._closed.get(year)
        if closed is None:
            # Sundays are weekend days here anyway; include_sundays=False keeps the
            # table to the named holidays whatever the library version's default.
            public = country_holidays(self.settings.country, years=year, include_sundays=False)
            extra = {day.date_in(year) for day in self.settings.extra_non_working}
            closed = frozenset(public.keys()) | frozenset(extra)
            self._closed[year] = closed
        return closed


# --- deadlines -------------------------------------------------------------------------------


def due_at(
    rule: DeadlineRule,
    *,
    start: datetime,
    expires: datetime | None = None,
    calendar: WorkingCalendar,
) -> datetime:
    """When ``rule``'s deadline that started at ``start`` is due, in UTC.

    A before_expiry deadline needs ``expires`` and is due ``hours_before`` it,
    but never before ``start``: an invitation sent later than that is due at
    once rather than never. A declined_by_all deadline is due at ``start``.
    """
    _require_aware(start, "start")
    if rule.trigger is Trigger.DECLINED_BY_ALL:
        return start.astimezone(UTC)
    if rule.trigger is Trigger.BEFORE_EXPIRY:
        if expires is None:
            raise ValueError(f"rule {rule.id!r} counts back from expires, and none was given")
        _require_aware(expires, "expires")
        before = timedelta(hours=_present(rule.hours_before, rule, "hours_before"))
        return max(start, expires - before).astimezone(UTC)
    after = rule.after
    if after is None:
        raise ValueError(f"rule {rule.id!r} has no after")
    if after.working_days is not None:
        return calendar.add_working_days(start, after.working_days)
    hours = _present(after.hours, rule, "after.hours")
    return (start + timedelta(hours=hours)).astimezone(UTC)


def next_due(rule: DeadlineRule, *, escalated_at: datetime, calendar: WorkingCalendar) -> datetime:
    """When to escalate again after an escalation at ``escalated_at``, in UTC.

    ``repeat_hours`` later; for a rule counted in working days, moved to the
    start of the next working day if that falls on a non-working day.
    """
    _require_aware(escalated_at, "escalated_at")
    due = escalated_at + timedelta(hours=rule.repeat_hours)
    if rule.after is not None and rule.after.working_days is not None:
        return calendar.next_working_moment(due)
    return due.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Accepted:
    """The broker accepted a message and routed it to its recipients."""

    message_id: str
    kind: Kind
    sender: str
    recipients: tuple[str, ...]
    child: str
    at: datetime
    expires: datetime | None = None

    def __post_init__(self) -> None:
        _require_aware(self.at, "at")
        if self.expires is not None:
            _require_aware(self.expires, "expires")


@dataclass(frozen=True, slots=True)
class Receipted:
    """A recipient's receipt for a message: one step, and the answer when it is answered."""

    message_id: str
    agency: str
    status: ReceiptStatus
    at: datetime
    answer: Answer | None = None

    def __post_init__(self) -> None:
        _require_aware(self.at, "at")
        if (self.status is ReceiptStatus.ANSWERED) != (self.answer is not None):
            raise ValueError("answer is required for answered receipts and refused otherwise")


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What the broker knows of a message when an event arrives.

    ``answers`` holds every recipient's answer so far and ``refused`` the
    recipients whose adapter refused the message (a ``rejected`` receipt);
    :func:`plan` adds the event it is given, so it may or may not be included.
    """

    kind: Kind
    sender: str
    recipients: tuple[str, ...]
    child: str
    expires: datetime | None = None
    answers: Mapping[str, Answer] = field(default_factory=dict)
    refused: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.expires is not None:
            _require_aware(self.expires, "expires")

    @classmethod
    def from_accepted(cls, event: Accepted) -> MessageFacts:
        """The facts of a message the moment it is accepted: nobody has answered yet."""
        return cls(
            kind=event.kind,
            sender=event.sender,
            recipients=event.recipients,
            child=event.child,
            expires=event.expires,
        )


@dataclass(frozen=True, slots=True)
class OpenDeadline:
    """Open ``rule``'s deadline for this message (and recipient; None for the whole message)."""

    rule: str
    message_id: str
    agency: str | None
    due_at: datetime


@dataclass(frozen=True, slots=True)
class CloseDeadline:
    """Close ``rule``'s deadline for this message (and recipient), if it is open."""

    rule: str
    message_id: str
    agency: str | None


@dataclass(frozen=True, slots=True)
class Plan:
    """What one event does to the deadlines: in rule file order, then recipient order."""

    open: tuple[OpenDeadline, ...] = ()
    close: tuple[CloseDeadline, ...] = ()


#: The recipient's receipts that close each trigger's deadline for that recipient.
_CLOSED_BY: Final[Mapping[Trigger, frozenset[ReceiptStatus]]] = {
    # Any later step proves delivery (receipts can arrive out of order).
    Trigger.NOT_DELIVERED: frozenset(
        {
            ReceiptStatus.DELIVERED,
            ReceiptStatus.HANDED_OVER,
            ReceiptStatus.READ,
            ReceiptStatus.ANSWERED,
            ReceiptStatus.REJECTED,
        }
    ),
    Trigger.NOT_ANSWERED: frozenset({ReceiptStatus.ANSWERED, ReceiptStatus.REJECTED}),
    # Nobody is left to answer: only handling it (in the shell) closes it.
    Trigger.DECLINED_BY_ALL: frozenset(),
    Trigger.BEFORE_EXPIRY: frozenset({ReceiptStatus.ANSWERED, ReceiptStatus.REJECTED}),
    Trigger.NOT_READ: frozenset(
        {ReceiptStatus.READ, ReceiptStatus.ANSWERED, ReceiptStatus.REJECTED}
    ),
}

#: Triggers whose per-recipient deadlines start when the broker accepts the message.
_ON_ACCEPT: Final = frozenset({Trigger.NOT_DELIVERED, Trigger.BEFORE_EXPIRY, Trigger.NOT_READ})


def plan(
    event: Accepted | Receipted,
    *,
    rules: DeadlineRules,
    calendar: WorkingCalendar,
    message: MessageFacts,
) -> Plan:
    """The deadlines ``event`` opens and closes under ``rules``.

    Deterministic and free of duplicates. For :class:`Accepted`, ``message``
    must hold the event's own facts (:meth:`MessageFacts.from_accepted`). A
    receipt from an agency that is not a recipient changes nothing.
    """
    watching = [rule for rule in rules.rules if _watches(rule, message.kind)]
    if isinstance(event, Accepted):
        return _plan_accepted(event, watching, calendar, message)
    return _plan_receipted(event, watching, calendar, message)


def _watches(rule: DeadlineRule, kind: Kind) -> bool:
    if kind not in WATCHED_KINDS:
        return False
    return rule.kinds is None or kind in rule.kinds


def _plan_accepted(
    event: Accepted, watching: list[DeadlineRule], calendar: WorkingCalendar, message: MessageFacts
) -> Plan:
    if MessageFacts.from_accepted(event) != MessageFacts(
        kind=message.kind,
        sender=message.sender,
        recipients=message.recipients,
        child=message.child,
        expires=message.expires,
    ):
        raise ValueError("the message facts disagree with the Accepted event")
    recipients = tuple(dict.fromkeys(event.recipients))
    opened: list[OpenDeadline] = []
    for rule in watching:
        if rule.trigger not in _ON_ACCEPT:
            continue
        if rule.trigger is Trigger.BEFORE_EXPIRY and event.expires is None:
            continue
        due = due_at(rule, start=event.at, expires=event.expires, calendar=calendar)
        opened.extend(OpenDeadline(rule.id, event.message_id, agency, due) for agency in recipients)
    return Plan(open=tuple(opened))


def _plan_receipted(
    event: Receipted,
    watching: list[DeadlineRule],
    calendar: WorkingCalendar,
    message: MessageFacts,
) -> Plan:
    agency = event.agency
    if agency not in message.recipients:
        return Plan()
    answers = dict(message.answers)
    if event.answer is not None:
        answers[agency] = event.answer
    refused = set(message.refused)
    if event.status is ReceiptStatus.REJECTED:
        refused.add(agency)
    declined = {r for r in message.recipients if answers.get(r) is Answer.DECLINED}
    opened: list[OpenDeadline] = []
    closed: list[CloseDeadline] = []
    for rule in watching:
        if event.status in _CLOSED_BY[rule.trigger]:
            closed.append(CloseDeadline(rule.id, event.message_id, agency))
        if (
            rule.trigger is Trigger.NOT_ANSWERED
            and event.status is ReceiptStatus.DELIVERED
            and agency not in answers
        ):
            due = due_at(rule, start=event.at, calendar=calendar)
            opened.append(OpenDeadline(rule.id, event.message_id, agency, due))
        # Nobody is left to take the matter on: every recipient declined or refused
        # it, at least one declined (refusals alone reach the sender as receipts),
        # and this event is the one that made it so.
        if (
            rule.trigger is Trigger.DECLINED_BY_ALL
            and (event.answer is Answer.DECLINED or event.status is ReceiptStatus.REJECTED)
            and declined
            and all(r in declined or r in refused for r in message.recipients)
        ):
            due = due_at(rule, start=event.at, calendar=calendar)
            opened.append(OpenDeadline(rule.id, event.message_id, None, due))
    return Plan(open=tuple(opened), close=tuple(closed))


# --- escalation ------------------------------------------------------------------------------


class TeamLookup(Protocol):
    """Who holds the child's Barnets team roles, as agency ids (the child by pseudonym)."""

    def stodsamordnare(self, child: str) -> str | None:
        """The agency of the child's stödsamordnare, or None if the child has none."""
        ...

    def barnkontakt(self, child: str) -> str | None:
        """The agency of the child's barnkontakt, or None if the child has none."""
        ...


@dataclass(frozen=True, slots=True)
class Targets:
    """Whom an escalation goes to: agencies, in the rule's order, and whether operators."""

    agencies: tuple[str, ...]
    operators: bool


def escalation_targets(
    rule: DeadlineRule,
    *,
    sender: str,
    recipient: str | None,
    child: str,
    team: TeamLookup,
) -> Targets:
    """Resolve ``rule``'s notify roles for one deadline, applying its fallback.

    Agencies come in the order of ``notify``, each once; a role that resolves
    to nobody is replaced by ``fallback``. An escalation never goes to nobody:
    if no role resolves to an agency, the operators are told.
    """
    agencies: list[str] = []
    operators = False
    for role in rule.notify:
        chosen = role
        agency = _resolve(role, sender=sender, recipient=recipient, child=child, team=team)
        if agency is None and role is not NotifyRole.OPERATORS and rule.fallback is not None:
            chosen = rule.fallback
            agency = _resolve(chosen, sender=sender, recipient=recipient, child=child, team=team)
        if chosen is NotifyRole.OPERATORS:
            operators = True
        elif agency is not None and agency not in agencies:
            agencies.append(agency)
    # A gap nobody hears of is the failure this module exists to prevent.
    return Targets(agencies=tuple(agencies), operators=operators or not agencies)


def _resolve(
    role: NotifyRole, *, sender: str, recipient: str | None, child: str, team: TeamLookup
) -> str | None:
    if role is NotifyRole.SENDER:
        return sender
    if role is NotifyRole.RECIPIENT:
        return recipient
    if role is NotifyRole.STODSAMORDNARE:
        return team.stodsamordnare(child)
    if role is NotifyRole.BARNKONTAKT:
        return team.barnkontakt(child)
    return None  # operators: no agency


def _present(value: int | None, rule: DeadlineRule, name: str) -> int:
    # The rule's validators guarantee it; only model_construct could skip them.
    if value is None:
        raise ValueError(f"rule {rule.id!r} has no {name}")
    return value


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
