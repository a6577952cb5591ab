"""Credits usage reports: consumption per account per calendar day, ISO week or month (UTC).

Consumption is what left the ledger for good: direct consumes plus the committed part of
reservations. Reservations, releases and transfers are not usage. Periods are calendar
periods in UTC; the first and last may stick out of the requested range, but only
consumption inside the range is counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from servers.credits.events import Consumed, Event, ReservationCommitted
from servers.mesh.errors import InvalidArgument


class UsagePeriod(StrEnum):
    """The calendar period consumption is added up over."""

    DAY = "day"
    WEEK = "week"
    """ISO 8601 week: Monday 00:00 UTC to the next Monday."""
    MONTH = "month"


def period_start(moment: datetime, period: UsagePeriod) -> datetime:
    """Start (00:00 UTC) of the calendar period that contains `moment`."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period is UsagePeriod.DAY:
        return day
    if period is UsagePeriod.WEEK:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_end(start: datetime, period: UsagePeriod) -> datetime:
    """End (exclusive) of the period that begins at `start` (a `period_start` value)."""
    if period is UsagePeriod.DAY:
        return start + timedelta(days=1)
    if period is UsagePeriod.WEEK:
        return start + timedelta(days=7)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def consumption(event: Event) -> int:
    """Credits an event consumed for good (0 for events that are not usage)."""
    if isinstance(event, Consumed):
        return event.amount
    if isinstance(event, ReservationCommitted):
        return event.committed
    return 0


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Consumption of one account in one period."""

    account_id: str
    period_start: datetime
    period_end: datetime
    consumed: int
    """Credits consumed in the period (within the report's range)."""
    operations: int
    """Consume and commit events counted."""


class UsageReport:
    """Adds consumption up per account and period over `[start_time, end_time)`.

    Feed it events (`add`) or pre-aggregated amounts (`add_consumption`) in any order.
    """

    def __init__(self, start_time: datetime | None, end_time: datetime | None, period: UsagePeriod | None) -> None:
        if start_time is None:
            raise InvalidArgument("start_time", "is required")
        if end_time is None:
            raise InvalidArgument("end_time", "is required")
        if period is None:
            raise InvalidArgument("period", "is required")
        if start_time.tzinfo is None:
            raise InvalidArgument("start_time", "must carry a time zone")
        if end_time.tzinfo is None:
            raise InvalidArgument("end_time", "must carry a time zone")
        if end_time <= start_time:
            raise InvalidArgument("end_time", "must be after start_time")
        self.start_time = start_time
        self.end_time = end_time
        self.period = period
        self._totals: dict[tuple[str, datetime], list[int]] = {}

    def add(self, event: Event) -> None:
        """Count an event if it is usage and falls inside the range."""
        amount = consumption(event)
        if amount:
            self.add_consumption(event.account_id, event.occurred_at, amount)

    def add_consumption(self, account_id: str, occurred_at: datetime, amount: int, operations: int = 1) -> None:
        """Count `amount` credits consumed by `account_id` at `occurred_at`, if inside the range."""
        if not self.start_time <= occurred_at < self.end_time:
            return
        key = (account_id, period_start(occurred_at, self.period))
        totals = self._totals.get(key)
        if totals is None:
            self._totals[key] = [amount, operations]
        else:
            totals[0] += amount
            totals[1] += operations

    def rows(self) -> list[UsageRow]:
        """The report: periods with consumption, by account id then period."""
        return [
            UsageRow(account_id, start, period_end(start, self.period), consumed, operations)
            for (account_id, start), (consumed, operations) in sorted(self._totals.items())
        ]
