"""Time at the deployment server's edges: Unix seconds in the store, Timestamp and Duration on the wire."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from google.protobuf import duration_pb2


def epoch(moment_: datetime) -> float:
    """Unix seconds of an aware datetime (how the store keeps times)."""
    return moment_.timestamp()


def moment(seconds: float) -> datetime:
    """The aware UTC datetime of Unix seconds."""
    return datetime.fromtimestamp(seconds, UTC)


def duration_message(seconds: float | None) -> duration_pb2.Duration | None:
    """A Duration of `seconds`, or None to leave the field unset."""
    if seconds is None or not math.isfinite(seconds):
        return None
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def seconds_of(value: duration_pb2.Duration) -> float:
    """The seconds a request's Duration says (possibly negative or absurd: callers validate)."""
    return value.seconds + value.nanos / 1e9
