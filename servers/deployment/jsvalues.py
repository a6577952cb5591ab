"""JavaScript value semantics for JSON Logic, and the operations that are plain functions of
their evaluated arguments (comparison, arithmetic, strings, arrays).

json-logic-js, the reference implementation of JSON Logic, is JavaScript; rules written for
flagd behave the same here only if `==`, `<`, `+` and friends convert values the way
JavaScript does (`"10" == 10`, `"b" > "a"`, `null < 1`; and `[]` is false in JSON Logic).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
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


def _first(args: list[Any]) -> Any:
    return args[0] if args else None


def _compare(args: list[Any], *, or_equal: bool) -> bool:
    if len(args) == 3:  # "between": a < b < c
        return less_than(args[0], args[1], or_equal=or_equal) and less_than(args[1], args[2], or_equal=or_equal)
    if len(args) < 2:
        return False
    return less_than(args[0], args[1], or_equal=or_equal)


def _greater(args: list[Any], *, or_equal: bool) -> bool:
    return len(args) >= 2 and less_than(args[1], args[0], or_equal=or_equal)


def _add(args: list[Any]) -> Any:
    return number_result(sum(parse_float(arg) for arg in args)) if args else 0


def _multiply(args: list[Any]) -> Any:
    result: float | int = 1
    for arg in args:
        result = result * parse_float(arg)
    return number_result(result) if args else None


def _subtract(args: list[Any]) -> Any:
    if len(args) == 1:
        return number_result(-to_number(args[0]))
    if len(args) < 2:
        return None
    return number_result(to_number(args[0]) - to_number(args[1]))


def _divide(args: list[Any]) -> Any:
    if len(args) < 2:
        return None
    a, b = to_number(args[0]), to_number(args[1])
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return number_result(a / b)


def _modulo(args: list[Any]) -> Any:
    if len(args) < 2:
        return None
    a, b = to_number(args[0]), to_number(args[1])
    if b == 0 or math.isinf(a) or math.isnan(a) or math.isnan(b):
        return math.nan
    return number_result(math.fmod(a, b))


def _extreme(args: list[Any], pick: Callable[..., Any]) -> Any:
    numbers = [to_number(arg) for arg in args]
    if not numbers:
        return None
    if any(math.isnan(number) for number in numbers):
        return math.nan
    return number_result(pick(numbers))


def _contains(args: list[Any]) -> bool:
    if len(args) < 2:
        return False
    needle, haystack = args[0], args[1]
    if isinstance(haystack, str):
        return js_string(needle) in haystack
    if isinstance(haystack, list):
        return any(strict_equals(needle, item) for item in haystack)
    return False


def _integer(value: Any, limit: int) -> int:
    """JavaScript ToIntegerOrInfinity, with the infinities clamped to ±`limit`."""
    number = to_number(value)
    if math.isnan(number):
        return 0
    return int(max(-limit, min(limit, number)))


def _substring(args: list[Any]) -> str:
    text = js_string(_first(args))
    start = _integer(args[1], len(text)) if len(args) > 1 else 0
    rest = text[max(len(text) + start, 0) if start < 0 else start :]
    if len(args) < 3:
        return rest
    length = _integer(args[2], len(rest))
    return rest[: len(rest) + length] if length < 0 else rest[:length]


def _merge(args: list[Any]) -> list[Any]:
    merged: list[Any] = []
    for arg in args:
        if isinstance(arg, list):
            merged.extend(arg)
        else:
            merged.append(arg)
    return merged


EAGER_OPERATIONS: dict[str, Callable[[list[Any]], Any]] = {
    "==": lambda a: len(a) >= 2 and loose_equals(a[0], a[1]),
    "!=": lambda a: not (len(a) >= 2 and loose_equals(a[0], a[1])),
    "===": lambda a: len(a) >= 2 and strict_equals(a[0], a[1]),
    "!==": lambda a: not (len(a) >= 2 and strict_equals(a[0], a[1])),
    "!": lambda a: not truthy(_first(a)),
    "!!": lambda a: truthy(_first(a)),
    "<": lambda a: _compare(a, or_equal=False),
    "<=": lambda a: _compare(a, or_equal=True),
    ">": lambda a: _greater(a, or_equal=False),
    ">=": lambda a: _greater(a, or_equal=True),
    "+": _add,
    "*": _multiply,
    "-": _subtract,
    "/": _divide,
    "%": _modulo,
    "max": lambda a: _extreme(a, max),
    "min": lambda a: _extreme(a, min),
    "in": _contains,
    "cat": lambda a: "".join(js_string(arg) for arg in a),
    "substr": _substring,
    "merge": _merge,
    "log": _first,
}
