"""Credits usage reports: UTC calendar buckets, what counts as usage, and range checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from servers.credits.events import (
    Consumed,
    Purchased,
    ReservationCommitted,
    Reserved,
    SealedPaymentReference,
    TransferredOut,
)
from servers.credits.reports import UsagePeriod, UsageReport, UsageRow, period_end, period_start
from servers.mesh.errors import InvalidArgument


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "period", "start", "end"),
    [
        (utc(2026, 3, 4, 23, 59, 59), UsagePeriod.DAY, utc(2026, 3, 4), utc(2026, 3, 5)),
        # 2026-03-01 is a Sunday: it belongs to the ISO week that began on Monday 2026-02-23.
        (utc(2026, 3, 1, 23, 59), UsagePeriod.WEEK, utc(2026, 2, 23), utc(2026, 3, 2)),
        (utc(2026, 3, 2, 0, 0), UsagePeriod.WEEK, utc(2026, 3, 2), utc(2026, 3, 9)),
        # ISO week 1 of 2027 starts on Monday 2027-01-04; 2027-01-01 is in 2026's last week.
        (utc(2027, 1, 1, 12), UsagePeriod.WEEK, utc(2026, 12, 28), utc(2027, 1, 4)),
        (utc(2026, 12, 31, 23, 59), UsagePeriod.MONTH, utc(2026, 12, 1), utc(2027, 1, 1)),
        (utc(2028, 2, 29, 8), UsagePeriod.MONTH, utc(2028, 2, 1), utc(2028, 3, 1)),
        # 01:30 at +02:00 is 23:30 UTC the day before.
        (
            datetime(2026, 3, 5, 1, 30, tzinfo=timezone(timedelta(hours=2))),
            UsagePeriod.DAY,
            utc(2026, 3, 4),
            utc(2026, 3, 5),
        ),
    ],
)
def test_periods_are_utc_calendar_periods(
    moment: datetime, period: UsagePeriod, start: datetime, end: datetime
) -> None:
    assert period_start(moment, period) == start
    assert period_end(start, period) == end


def test_report_counts_consumes_and_committed_amounts_only() -> None:
    report = UsageReport(utc(2026, 3, 1), utc(2026, 4, 1), UsagePeriod.WEEK)
    ref = SealedPaymentReference("c", "l")
    for event in (
        Purchased("a", 1, utc(2026, 3, 2), "", 1_000, ref),
        Consumed("a", 2, utc(2026, 3, 2, 10), "", 7),
        Reserved("a", 3, utc(2026, 3, 3), "", "r1", 50, utc(2026, 3, 4)),
        ReservationCommitted("a", 4, utc(2026, 3, 3, 1), "", "r1", 20, 30),
        TransferredOut("a", 5, utc(2026, 3, 3, 2), "", "t1", "b", 100),
        Consumed("a", 6, utc(2026, 3, 9), "", 5),
        Consumed("b", 1, utc(2026, 3, 8, 23, 59), "", 1),
    ):
        report.add(event)
    assert report.rows() == [
        UsageRow("a", utc(2026, 3, 2), utc(2026, 3, 9), 27, 2),
        UsageRow("a", utc(2026, 3, 9), utc(2026, 3, 16), 5, 1),
        UsageRow("b", utc(2026, 3, 2), utc(2026, 3, 9), 1, 1),
    ]


def test_only_consumption_inside_the_range_counts() -> None:
    report = UsageReport(utc(2026, 3, 4, 12), utc(2026, 3, 6), UsagePeriod.MONTH)
    report.add(Consumed("a", 1, utc(2026, 3, 4, 11, 59), "", 100))
    report.add(Consumed("a", 2, utc(2026, 3, 4, 12), "", 3))
    report.add(Consumed("a", 3, utc(2026, 3, 6), "", 100))
    assert report.rows() == [UsageRow("a", utc(2026, 3, 1), utc(2026, 4, 1), 3, 1)]


@pytest.mark.parametrize(
    ("start", "end", "period", "field"),
    [
        (None, utc(2026, 3, 2), UsagePeriod.DAY, "start_time"),
        (utc(2026, 3, 1), None, UsagePeriod.DAY, "end_time"),
        (utc(2026, 3, 1), utc(2026, 3, 2), None, "period"),
        (utc(2026, 3, 2), utc(2026, 3, 2), UsagePeriod.DAY, "end_time"),
        (utc(2026, 3, 2), utc(2026, 3, 1), UsagePeriod.DAY, "end_time"),
        (datetime(2026, 3, 1), utc(2026, 3, 2), UsagePeriod.DAY, "start_time"),
    ],
)
def test_bad_ranges_name_the_field(
    start: datetime | None, end: datetime | None, period: UsagePeriod | None, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        UsageReport(start, end, period)
    assert caught.value.metadata["field"] == field
