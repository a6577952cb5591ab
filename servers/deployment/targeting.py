"""flagd's targeting language: JSON Logic plus `fractional`, `sem_ver`, `starts_with`,
`ends_with` and `rollout`, target groups (`{"$ref": name}`), and the checks run on store.

The operations follow flagd (core/pkg/evaluator) and its conformance suite (flagd-testbed):
an operation given arguments it cannot use fails, and a failed operation makes the whole
targeting yield null, so the flag serves its default variant with reason DEFAULT.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from clients.bucketing import DEFAULT_BUCKETING, BucketingAlgorithm, cbor_key, choose, scaled_bucket
from clients.bucketing import murmur3_x86_32 as murmur3
from servers.deployment.jsonlogic import Constant, Environment, Evaluator, OperationFailed, RuleCompiler, RuleError
from servers.deployment.jsvalues import is_number, js_string

_INT32_MAX = 2**31 - 1
_SEMVER = re.compile(
    r"^[vV]?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
SEMVER_OPERATORS = frozenset({"=", "!=", "<", "<=", ">", ">=", "^", "~"})


class FlagEnvironment(Environment):
    """An evaluation of one flag: `$flagd` properties plus `bucketing`, the flag's algorithm
    for mapping a `fractional` hash to a bucket."""

    __slots__ = ("bucketing",)

    def __init__(
        self,
        flag_key: str,
        timestamp: int,
        context: Mapping[str, Any],
        bucketing: BucketingAlgorithm = DEFAULT_BUCKETING,
    ) -> None:
        super().__init__(flag_key, timestamp, context)
        self.bucketing = bucketing


def _algorithm(env: Environment) -> BucketingAlgorithm:
    return env.bucketing if isinstance(env, FlagEnvironment) else DEFAULT_BUCKETING


def _targeting_key_value(env: Environment) -> str | None:
    """The flag key followed by the targeting key (flagd's default bucketing value before
    murmur3-v3, and `rollout`'s); None without a string targeting key."""
    targeting_key = (env.context or {}).get("targetingKey")
    return env.flag_key + targeting_key if isinstance(targeting_key, str) else None


def _default_bucketing_value(env: Environment) -> str | list[str] | None:
    """`fractional`'s bucketing value when none is given: `[flagKey, targetingKey]` with
    murmur3-v3 (None without a non-empty string targeting key), else `_targeting_key_value`."""
    if _algorithm(env) is not BucketingAlgorithm.MURMUR3_V3:
        return _targeting_key_value(env)
    targeting_key = (env.context or {}).get("targetingKey")
    return [env.flag_key, targeting_key] if isinstance(targeting_key, str) and targeting_key else None


def _weight(bucket: list[Any]) -> int:
    if len(bucket) < 2 or bucket[1] is None:
        return 1
    weight = bucket[1]
    if not is_number(weight) or not math.isfinite(weight) or weight != int(weight):
        raise OperationFailed("fractional weights must be whole numbers")
    if weight > _INT32_MAX:
        raise OperationFailed("fractional weight too large")
    return max(int(weight), 0)  # flagd clamps negative weights to zero


class _Distribution:
    """The buckets of one `fractional`: variants, their weights and cumulative weights."""

    __slots__ = ("cumulative", "total", "variants", "weights")

    def __init__(self, buckets: list[Any]) -> None:
        variants: list[Any] = []
        weights: list[int] = []
        for bucket in buckets:
            if not isinstance(bucket, list) or not bucket:
                raise OperationFailed("fractional buckets are [variant, weight] arrays")
            if not (bucket[0] is None or isinstance(bucket[0], str | bool) or is_number(bucket[0])):
                raise OperationFailed("a fractional variant is a string, boolean, number or null")
            variants.append(bucket[0])
            weights.append(_weight(bucket))
        self.total = sum(weights)
        if self.total > _INT32_MAX:
            raise OperationFailed("fractional weights sum past 2**31 - 1")
        self.variants, self.weights = variants, weights
        self.cumulative = list(accumulate(weights))

    def pick(self, bucketing_value: Any, env: Environment) -> Any:
        """The variant `bucketing_value` falls on (a lone bucket needs no value); a string, or with
        murmur3-v3 any JSON value."""
        if len(self.variants) == 1 and self.total > 0:
            chosen = self.variants[0]
        elif bucketing_value is None:
            raise OperationFailed("no bucketing value and no string targetingKey in the context")
        elif self.total <= 0:
            raise OperationFailed("fractional weights sum to zero")
        else:
            algorithm = _algorithm(env)
            if algorithm is not BucketingAlgorithm.MURMUR3_V1:
                key = cbor_key(bucketing_value) if algorithm is BucketingAlgorithm.MURMUR3_V3 else bucketing_value
                bucket = scaled_bucket(murmur3(key), self.total)
                index: int | None = bisect_right(self.cumulative, bucket)
            else:
                index = choose(algorithm, bucketing_value, self.weights)
            if index is None:
                raise OperationFailed("the hash fell outside every bucket")
            chosen = self.variants[index]
        env.splits.append(chosen)
        return chosen


def fractional(args: list[Any], data: Any, env: Environment) -> Any:
    """flagd `fractional`: a deterministic weighted split on the hash of the bucketing value.

    The first argument is the bucketing value if it is a string; if it is null (a missing
    `var`) or absent, flag key + targeting key is used instead. With murmur3-v3 (flagd's
    current rules) any first argument that is not a bucket is the bucketing value, and a null
    one splits nobody.
    """
    if not args:
        raise OperationFailed("fractional needs buckets")
    first = args[0]
    if _algorithm(env) is BucketingAlgorithm.MURMUR3_V3 and not isinstance(first, list):
        return _Distribution(args[1:]).pick(_v3_value(first), env)
    if isinstance(first, str):
        return _Distribution(args[1:]).pick(first, env)
    buckets = args[1:] if first is None else args
    return _Distribution(buckets).pick(_default_bucketing_value(env), env)


def _v3_value(value: Any) -> Any:
    """murmur3-v3 takes any JSON bucketing value; a null one splits nobody (as flagd)."""
    if value is None:
        raise OperationFailed("the bucketing value is null")
    return value


def specialize_fractional(compiled: list[Evaluator]) -> Evaluator | None:
    """A `fractional` whose buckets are literals, with its distribution computed once.

    None (use the general operation) when a bucket is computed at evaluation time or the
    literal buckets are unusable (the general operation then fails the same way).
    """
    if not compiled:
        return None
    first = compiled[0]
    if isinstance(first, Constant) and isinstance(first.value, list):
        expression: Evaluator | None = None
        bucket_args = compiled
    elif isinstance(first, Constant) and first.value is not None and not isinstance(first.value, str):
        return None
    else:
        expression, bucket_args = first, compiled[1:]
    if not all(isinstance(arg, Constant) for arg in bucket_args):
        return None
    try:
        distribution = _Distribution([arg.value for arg in bucket_args])  # type: ignore[attr-defined]
    except OperationFailed:
        return None

    def run(data: Any, env: Environment) -> Any:
        value = expression(data, env) if expression is not None else None
        if expression is not None and _algorithm(env) is BucketingAlgorithm.MURMUR3_V3:
            return distribution.pick(_v3_value(value), env)
        if value is None:
            value = _default_bucketing_value(env)
        elif not isinstance(value, str):
            raise OperationFailed("the bucketing value must be a string")
        return distribution.pick(value, env)

    return run


def rollout(args: list[Any], data: Any, env: Environment) -> Any:
    """flagd `rollout`: moves keys from one variant to another linearly between two times.

    `[bucketBy?, start, end, from?, to]` with unix-second times; a key moves when
    `(hash * duration) >> 32 < elapsed`, so every key moves exactly once and never back.
    """
    rest = list(args)
    bucketing_value: str | None = None
    if rest and not is_number(rest[0]):
        first = rest.pop(0)
        if first is not None and not isinstance(first, str):
            raise OperationFailed("rollout bucketBy must be a string")
        bucketing_value = first
    if len(rest) < 3 or not all(is_number(t) and math.isfinite(t) and abs(t) < 2**53 for t in rest[:2]):
        raise OperationFailed("rollout takes [bucketBy?, startTime, endTime, from?, to]")
    start, end = int(rest[0]), int(rest[1])
    if end <= start:
        raise OperationFailed("rollout endTime must be after startTime")
    source, target = (None, rest[2]) if len(rest) == 3 else (rest[2], rest[3])
    if bucketing_value is None:
        bucketing_value = _targeting_key_value(env)
        if bucketing_value is None:
            raise OperationFailed("no bucketing value and no string targetingKey in the context")
    elapsed, duration = min(max(env.timestamp - start, 0), end - start), end - start
    if elapsed <= 0:
        return source
    if elapsed >= duration or scaled_bucket(murmur3(bucketing_value), duration) < elapsed:
        return target
    return source


def _two_strings(args: list[Any]) -> tuple[str, str]:
    if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], str):
        raise OperationFailed("takes exactly two strings")
    return args[0], args[1]


def starts_with(args: list[Any], data: Any, env: Environment) -> bool:
    """flagd `starts_with`: [text, prefix], both strings."""
    text, prefix = _two_strings(args)
    return text.startswith(prefix)


def ends_with(args: list[Any], data: Any, env: Environment) -> bool:
    """flagd `ends_with`: [text, suffix], both strings."""
    text, suffix = _two_strings(args)
    return text.endswith(suffix)


@dataclass(frozen=True)
class SemanticVersion:
    """A parsed semantic version; missing minor/patch read as 0, build metadata dropped."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...]

    def precedence(self, other: SemanticVersion) -> int:
        """-1, 0 or 1 as `self` sorts before, with or after `other` (SemVer 2.0 §11)."""
        mine, theirs = (self.major, self.minor, self.patch), (other.major, other.minor, other.patch)
        if mine != theirs:
            return -1 if mine < theirs else 1
        if self.prerelease == other.prerelease:
            return 0
        if not self.prerelease or not other.prerelease:
            return 1 if not self.prerelease else -1
        for left, right in zip(self.prerelease, other.prerelease, strict=False):
            if left == right:
                continue
            if isinstance(left, int) != isinstance(right, int):
                return -1 if isinstance(left, int) else 1
            return -1 if left < right else 1  # type: ignore[operator]
        return -1 if len(self.prerelease) < len(other.prerelease) else 1


def parse_semver(value: Any) -> SemanticVersion:
    """Parse `1.2.3-rc.1+build`, `v1.2` or `1`; raises OperationFailed otherwise."""
    text = js_string(value) if is_number(value) else value
    match = _SEMVER.match(text) if isinstance(text, str) else None
    if match is None:
        raise OperationFailed(f"not a semantic version: {value!r}")
    major, minor, patch, pre = match.groups()
    prerelease = tuple(int(part) if part.isdigit() else part for part in pre.split(".")) if pre else ()
    return SemanticVersion(int(major), int(minor or 0), int(patch or 0), prerelease)


def sem_ver(args: list[Any], data: Any, env: Environment) -> bool:
    """flagd `sem_ver`: [version, operator, version] with =, !=, <, <=, >, >=, ^ (same major), ~ (same minor)."""
    if len(args) != 3 or not isinstance(args[1], str) or args[1] not in SEMVER_OPERATORS:
        raise OperationFailed("sem_ver takes [version, operator, version]")
    left, operator, right = parse_semver(args[0]), args[1], parse_semver(args[2])
    if operator == "^":
        return left.major == right.major
    if operator == "~":
        return (left.major, left.minor) == (right.major, right.minor)
    order = left.precedence(right)
    return {
        "=": order == 0,
        "!=": order != 0,
        "<": order < 0,
        "<=": order <= 0,
        ">": order > 0,
        ">=": order >= 0,
    }[operator]


FLAGD_COMPILER = RuleCompiler(
    {
        "fractional": fractional,
        "rollout": rollout,
        "starts_with": starts_with,
        "ends_with": ends_with,
        "sem_ver": sem_ver,
    },
    specializers={"fractional": specialize_fractional},
)


def resolve_refs(rule: Any, groups: Mapping[str, Any], path: str = "") -> Any:
    """`rule` with every `{"$ref": name}` replaced by the target group's rule (recursively)."""
    return _substitute(rule, groups, path, ())


def _substitute(rule: Any, groups: Mapping[str, Any], path: str, stack: tuple[str, ...]) -> Any:
    if isinstance(rule, list):
        return [_substitute(item, groups, f"{path}[{i}]", stack) for i, item in enumerate(rule)]
    if not isinstance(rule, dict):
        return rule
    if set(rule) == {"$ref"}:
        name = rule["$ref"]
        if not isinstance(name, str) or name not in groups:
            raise RuleError(f"{path}.$ref" if path else "$ref", f"no target group named {name!r}")
        if name in stack:
            raise RuleError(path, f"target group {name!r} refers to itself")
        return _substitute(groups[name], groups, path, (*stack, name))
    return {key: _substitute(value, groups, f"{path}.{key}" if path else key, stack) for key, value in rule.items()}


def referenced_groups(rule: Any) -> frozenset[str]:
    """Names of the target groups `rule` references directly."""
    found: set[str] = set()
    pending = [rule]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict):
            if set(node) == {"$ref"} and isinstance(node["$ref"], str):
                found.add(node["$ref"])
            else:
                pending.extend(node.values())
    return frozenset(found)


def compile_targeting(rule: Any, variants: Mapping[str, Any] | None, path: str = "targeting") -> Evaluator:
    """Compile a flag's targeting (refs already resolved) and check its literal arguments.

    Beyond compiling, literal `fractional` buckets must name variants of the flag with whole,
    non-negative weights that do not all sum to zero, and literal `sem_ver` operators and
    versions must parse: mistakes there are refused now instead of silently serving defaults.
    `variants` None skips the variant-name check (a target group belongs to no flag).
    """
    evaluator = FLAGD_COMPILER.compile(rule, path)
    _check_literals(rule, variants, path)
    return evaluator


def _check_literals(rule: Any, variants: Mapping[str, Any] | None, path: str) -> None:
    if isinstance(rule, list):
        for i, item in enumerate(rule):
            _check_literals(item, variants, f"{path}[{i}]")
        return
    if not isinstance(rule, dict) or len(rule) != 1:
        return
    ((name, args),) = rule.items()
    op_path = f"{path}.{name}" if path else name
    if name == "fractional" and isinstance(args, list):
        _check_fractional(args, variants, op_path)
    if name == "sem_ver" and isinstance(args, list):
        _check_sem_ver(args, op_path)
    _check_literals(args, variants, op_path)


def _check_fractional(args: list[Any], variants: Mapping[str, Any] | None, path: str) -> None:
    buckets = [(i, arg) for i, arg in enumerate(args) if isinstance(arg, list)]
    if not buckets:
        raise RuleError(path, "needs at least one [variant, weight] bucket")
    total = 0
    for i, bucket in buckets:
        if not bucket:
            raise RuleError(f"{path}[{i}]", "a bucket is [variant, weight]")
        variant = bucket[0]
        if variants is not None and isinstance(variant, str) and variant not in variants:
            raise RuleError(f"{path}[{i}][0]", f"{variant!r} is not a variant of this flag")
        if len(bucket) < 2:
            total += 1
            continue
        weight = bucket[1]
        if isinstance(weight, dict):
            total += 1  # computed at evaluation time
            continue
        if not is_number(weight) or weight != int(weight) or weight < 0 or weight > _INT32_MAX:
            raise RuleError(f"{path}[{i}][1]", "a weight is a whole number from 0 to 2147483647")
        total += int(weight)
    if total <= 0:
        raise RuleError(path, "the weights sum to zero")
    if total > _INT32_MAX:
        raise RuleError(path, "the weights sum past 2147483647")


def _check_sem_ver(args: list[Any], path: str) -> None:
    if len(args) != 3:
        raise RuleError(path, "takes [version, operator, version]")
    if isinstance(args[1], str) and args[1] not in SEMVER_OPERATORS:
        raise RuleError(f"{path}[1]", f"operator must be one of {sorted(SEMVER_OPERATORS)}")
    for i in (0, 2):
        if isinstance(args[i], str):
            try:
                parse_semver(args[i])
            except OperationFailed as exc:
                raise RuleError(f"{path}[{i}]", str(exc)) from exc
