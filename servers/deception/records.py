"""How deception records are written in the store: exact microsecond times and compact JSON."""

from __future__ import annotations

import json
from typing import Any


def to_json(value: Any) -> str:
    """Compact JSON of a list or object kept in a TEXT column."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
