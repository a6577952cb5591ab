"""How deception records are written in the store: exact microsecond times and compact JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(moment: datetime) -> int:
    """Exact microseconds since the epoch of an aware datetime."""
    return (moment - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime of `to_micros` output."""
    return EPOCH + timedelta(microseconds=int(micros))


def to_json(value: Any) -> str:
    """Compact JSON of a list or object kept in a TEXT column."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
