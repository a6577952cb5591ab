"""JavaScript value semantics for JSON Logic: truthiness, conversions, equality, comparison.

json-logic-js, the reference implementation of JSON Logic, is JavaScript; rules written for
flagd behave the same here only if `==`, `<`, `+` and friends convert values the way
JavaScript does (`"10" == 10`, `"b" > "a"`, `null < 1`; and `[]` is false in JSON Logic).
"""

from __future__ import annotations

import math
import re
from typing import Any

_NUMBER_PREFIX = re.compile(r"^\s*([+-]?(?:Infinity|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))")


def is_number(value: Any) -> bool:
    """True for JSON numbers (bool is not a number here, unlike in Python)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def truthy(value: Any) -> bool:
    """JSON Logic truthiness: JavaScript's, except that an empty array is false."""
    if isinstance(value, list):
        return bool(value)
    if isinstance(value, dict):
        return True
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(value)


def js_string(value: Any) -> str:
    """JavaScript `String(value)`."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_string(value)
    if isinstance(value, list):
        return ",".join("" if item is None else js_string(item) for item in value)
    return "[object Object]"


def _float_string(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


def to_number(value: Any) -> float | int:
    """JavaScript `Number(value)` (ToNumber): NaN where JavaScript gives NaN."""
    if value is None or value is False:
        return 0
    if value is True:
        return 1
    if is_number(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str):
        return _string_to_number(value)
    if isinstance(value, list):
        return to_number(js_string(value)) if len(value) <= 1 else math.nan
    return math.nan


def _string_to_number(text: str) -> float | int:
    stripped = text.strip()
    if not stripped:
        return 0
    if "_" in stripped:
        return math.nan
    try:
        return int(stripped, 0) if stripped[:2].lower() in ("0x", "0o", "0b") else int(stripped)
    except ValueError:
        pass
    match = _NUMBER_PREFIX.match(stripped)
    if match is None or match.end() != len(stripped):
        return math.nan
    return float(match.group(1).replace("Infinity", "inf"))


def parse_float(value: Any) -> float | int:
    """JavaScript `parseFloat(value)`: the leading number of the value's string, else NaN."""
    if is_number(value):
        return value  # type: ignore[no-any-return]
    match = _NUMBER_PREFIX.match(js_string(value))
    if match is None:
        return math.nan
    number = float(match.group(1).replace("Infinity", "inf"))
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def loose_equals(left: Any, right: Any) -> bool:
    """JavaScript `==`."""
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, bool) or isinstance(right, bool):
        if isinstance(left, bool) and isinstance(right, bool):
            return left is right
        return loose_equals(
            int(left) if isinstance(left, bool) else left, int(right) if isinstance(right, bool) else right
        )
    if is_number(left) and is_number(right):
        return bool(left == right)
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    if isinstance(left, list | dict) and isinstance(right, list | dict):
        return left is right
    if isinstance(left, list | dict):
        return loose_equals(js_string(left), right)
    if isinstance(right, list | dict):
        return loose_equals(left, js_string(right))
    return bool(to_number(left) == to_number(right))


def strict_equals(left: Any, right: Any) -> bool:
    """JavaScript `===`."""
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    if is_number(left) and is_number(right):
        return bool(left == right)
    if isinstance(left, list | dict) or isinstance(right, list | dict):
        return left is right
    return type(left) is type(right) and left == right


def less_than(left: Any, right: Any, *, or_equal: bool = False) -> bool:
    """JavaScript `<` (or `<=`): strings compare as strings, anything else as numbers."""
    left = js_string(left) if isinstance(left, list | dict) else left
    right = js_string(right) if isinstance(right, list | dict) else right
    if isinstance(left, str) and isinstance(right, str):
        return left <= right if or_equal else left < right
    a, b = to_number(left), to_number(right)
    if math.isnan(a) or math.isnan(b):
        return False
    return a <= b if or_equal else a < b


def number_result(value: float | int) -> float | int:
    """A numeric result as an int when it is a whole number that a double holds exactly."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value
