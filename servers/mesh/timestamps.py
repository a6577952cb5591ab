"""Time at the mesh's edges: protobuf Timestamps and Durations, and exact microseconds for the stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The Unix epoch, aware."""


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """The Timestamp of a datetime (a naive one is read as UTC, as `Timestamp.FromDatetime` does)."""
    # Timestamp.FromDatetime goes through a time tuple; plain arithmetic on the delta is exact
    # (whole microseconds) and several times cheaper, and most responses carry a timestamp.
    delta = (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)) - EPOCH
    return timestamp_pb2.Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


def optional_timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    """The Timestamp of `moment`, or None to leave the field unset."""
    return None if moment is None else timestamp(moment)


def duration(span: timedelta) -> duration_pb2.Duration:
    """The Duration of a timedelta."""
    message = duration_pb2.Duration()
    message.FromTimedelta(span)
    return message


def to_micros(moment: datetime) -> int:
    """Exact integer microseconds since the epoch of an aware datetime (how the stores keep times)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime of `to_micros` output."""
    return EPOCH + timedelta(microseconds=int(micros))
