"""Time at the edges: Timestamps exact to the microsecond in any zone (naive read as UTC), microseconds for stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from servers.mesh.timestamps import duration, from_micros, optional_timestamp, timestamp, to_micros

MOMENTS = [
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2026, 5, 6, 7, 8, 9, 123_456, tzinfo=timezone(timedelta(hours=-7))),
    datetime(2026, 5, 6, 7, 8, 9, 123_456),
    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
]


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_timestamp_is_what_protobufs_own_conversion_makes(moment: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(moment)
    stamp = timestamp(moment)
    assert stamp == expected
    assert 0 <= stamp.nanos < 1_000_000_000


def test_an_absent_moment_leaves_the_field_unset_and_a_duration_keeps_its_microseconds() -> None:
    assert optional_timestamp(None) is None
    assert optional_timestamp(MOMENTS[2]) == timestamp(MOMENTS[2])
    assert duration(timedelta(seconds=-1, microseconds=7)).ToTimedelta() == timedelta(seconds=-1, microseconds=7)


@pytest.mark.parametrize("moment", [m for m in MOMENTS if m.tzinfo is not None])
def test_microseconds_are_exact_and_read_back_to_the_same_instant(moment: datetime) -> None:
    micros = to_micros(moment)
    assert micros == (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert from_micros(micros) == moment
    assert from_micros(micros).tzinfo is UTC
