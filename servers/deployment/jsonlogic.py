"""JSON Logic compiled to Python closures, with JavaScript value semantics.

Flag targeting rules are JSON Logic (jsonlogic.com), the language flagd uses. A rule is
compiled once when a flag is stored, so unknown operations and malformed arguments are
rejected then (with the JSON path of the fault), and evaluation is a call of nested
closures rather than a walk over dictionaries.

Values behave as in json-logic-js, the reference implementation (see `jsvalues`), so a rule
means the same here as in flagd's other implementations. Nothing raises out of an
evaluation except `OperationFailed`, which custom operations use to say "no answer".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from servers.deployment.jsvalues import EAGER_OPERATIONS, js_string, to_number, truthy

MAX_DEPTH = 64
"""Deepest nesting a rule may have; deeper rules are refused when compiled."""

MAX_RULE_NODES = 2_000
"""Most operations and values a stored rule may hold (a literal array of plain values is one)."""

MAX_EVALUATION_STEPS = 5_000
"""Most rule nodes one evaluation may run, counted over the items of `map`, `filter`, `all`,
`some`, `none` and `reduce` (a rule's other nodes run once and are bounded by MAX_RULE_NODES).
A node took 0.50 µs here (best of 30 evaluations of a 16,600-node rule on this two-core
machine under load), so this is about 2.5 ms; an evaluation that would pass it stops with
`EvaluationTooCostly` before doing that work, and the flag answers ERROR/GENERAL."""

ASSUMED_ITEMS = 16
"""Items a data-dependent array (`{"var": "tags"}`) is assumed to hold when a stored rule's cost
is estimated; the runtime bound holds whatever the data brings."""

_ITERATING = frozenset({"map", "filter", "all", "some", "none", "reduce"})

Evaluator = Callable[[Any, "Environment"], Any]
"""A compiled rule: (data, environment) → value. `data` is what `var` reads."""

EagerOperation = Callable[[list[Any], Any, "Environment"], Any]
"""A custom operation: (evaluated arguments, data, environment) → value."""


class RuleError(ValueError):
    """A rule cannot be compiled; `path` locates the fault inside the rule."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class OperationFailed(Exception):
    """A custom operation got arguments it cannot work with; the whole rule yields null."""


class EvaluationTooCostly(ValueError):
    """An evaluation would run more than MAX_EVALUATION_STEPS nodes; it stopped before doing so."""


class RuleCost:
    """What a rule costs: its nodes, and the nodes one evaluation runs at most (estimated)."""

    __slots__ = ("nodes", "steps")

    def __init__(self) -> None:
        self.nodes = 0
        self.steps = 0


def rule_cost(rule: Any, limit: int = MAX_RULE_NODES) -> RuleCost:
    """Count `rule`'s nodes and estimate its worst evaluation (literal arrays by their length,
    data-dependent ones as ASSUMED_ITEMS). Stops counting past `limit` nodes, so a rule that
    `$ref` expansion made enormous costs no more than that to measure."""
    cost = RuleCost()
    cost.steps = _steps(rule, cost, limit)[0]
    return cost


def _steps(rule: Any, cost: RuleCost, limit: int) -> tuple[int, int | None]:
    """(nodes one evaluation of `rule` runs, length of the array it yields if known)."""
    cost.nodes += 1
    if cost.nodes > limit:
        return 0, None
    if isinstance(rule, list):
        if all(not isinstance(item, list | dict) for item in rule):
            return 1, len(rule)
        return 1 + sum(_steps(item, cost, limit)[0] for item in rule), len(rule)
    if not isinstance(rule, dict) or len(rule) != 1:
        return 1, None
    ((name, raw_args),) = rule.items()
    args = raw_args if isinstance(raw_args, list) else [raw_args]
    if name in _ITERATING and len(args) >= 2:
        items, length = _steps(args[0], cost, limit)
        body = _steps(args[1], cost, limit)[0]
        rest = sum(_steps(arg, cost, limit)[0] for arg in args[2:])
        count = ASSUMED_ITEMS if length is None else length
        return 1 + items + rest + count * body, length if name in ("map", "filter") else None
    parts = [_steps(arg, cost, limit) for arg in args]
    steps = 1 + sum(step for step, _ in parts)
    if name == "merge":
        pairs = zip(args, parts, strict=True)
        lengths = [length if isinstance(arg, list | dict) else 1 for arg, (_, length) in pairs]
        return steps, None if None in lengths else sum(n for n in lengths if n is not None)
    return steps, None


def check_rule_cost(rule: Any) -> None:
    """Raise RuleError unless `rule` has at most MAX_RULE_NODES nodes and an evaluation of it is
    estimated to run at most MAX_EVALUATION_STEPS (what a new or changed stored rule must meet)."""
    cost = rule_cost(rule)
    if cost.nodes > MAX_RULE_NODES:
        raise RuleError("", f"has more than {MAX_RULE_NODES} operations and values")
    if cost.steps > MAX_EVALUATION_STEPS:
        raise RuleError(
            "",
            f"one evaluation could run about {cost.steps} operations (at most {MAX_EVALUATION_STEPS}); "
            "iterate over fewer or smaller arrays",
        )


class Environment:
    """What an evaluation knows besides its data.

    `flag_key` and `timestamp` (unix seconds) are flagd's `$flagd.flagKey` and
    `$flagd.timestamp`; `context` is the top-level evaluation context (operations inside
    `map`/`filter` see an item as their data); `splits` collects the values `fractional`
    chose, to tell SPLIT from TARGETING_MATCH. One is made per evaluation.
    """

    __slots__ = ("context", "flag_key", "splits", "steps", "timestamp")

    def __init__(self, flag_key: str = "", timestamp: int = 0, context: Mapping[str, Any] | None = None) -> None:
        self.flag_key = flag_key
        self.timestamp = timestamp
        self.context = context
        self.splits: list[Any] = []
        self.steps = 0
        """Nodes run inside iterations so far (see MAX_EVALUATION_STEPS)."""

    def charge(self, steps: int) -> None:
        """Account for `steps` nodes about to run; EvaluationTooCostly if that passes the bound."""
        self.steps += steps
        if self.steps > MAX_EVALUATION_STEPS:
            raise EvaluationTooCostly(f"evaluation would run more than {MAX_EVALUATION_STEPS} operations")


class Constant:
    """A compiled literal; operations may look at `value` to precompute their work."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, data: Any, env: Environment) -> Any:
        return self.value


Specializer = Callable[[list[Evaluator]], Evaluator | None]
"""Builds a faster evaluator for a custom operation from its compiled arguments, or None."""


# -- The compiler ------------------------------------------------------------------------------

Compiler = Callable[[list[Any], str, int], Evaluator]


class RuleCompiler:
    """Compiles JSON Logic rules with the standard operations plus registered custom ones."""

    def __init__(
        self,
        custom: Mapping[str, EagerOperation] | None = None,
        specializers: Mapping[str, Specializer] | None = None,
    ) -> None:
        self._custom = dict(custom or {})
        self._specializers = dict(specializers or {})
        self._lazy: dict[str, Compiler] = {
            "var": self._compile_var,
            "missing": self._compile_missing,
            "missing_some": self._compile_missing_some,
            "if": self._compile_if,
            "?:": self._compile_if,
            "and": self._compile_and,
            "or": self._compile_or,
            "map": self._compile_map,
            "filter": self._compile_filter,
            "all": self._compile_all,
            "some": self._compile_some,
            "none": self._compile_none,
            "reduce": self._compile_reduce,
        }

    @property
    def operations(self) -> frozenset[str]:
        """Every operation name this compiler knows."""
        return frozenset(self._lazy) | frozenset(EAGER_OPERATIONS) | frozenset(self._custom)

    def compile(self, rule: Any, path: str = "") -> Evaluator:
        """Compile `rule`; raises `RuleError` naming the path of the first fault."""
        return self._compile(rule, path, 0)

    def _compile(self, rule: Any, path: str, depth: int) -> Evaluator:
        if depth > MAX_DEPTH:
            raise RuleError(path, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(rule, list):
            items = [self._compile(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(rule)]
            if all(isinstance(item, Constant) for item in items):
                return Constant([item.value for item in items])  # type: ignore[attr-defined]
            return lambda data, env: [item(data, env) for item in items]
        if not isinstance(rule, dict) or len(rule) != 1:
            if isinstance(rule, float) and not math.isfinite(rule):
                raise RuleError(path, "numbers must be finite")
            return Constant(rule)
        ((name, raw_args),) = rule.items()
        args = raw_args if isinstance(raw_args, list) else [raw_args]
        op_path = f"{path}.{name}" if path else name
        lazy = self._lazy.get(name)
        if lazy is not None:
            return lazy(args, op_path, depth + 1)
        compiled = [self._compile(arg, f"{op_path}[{i}]", depth + 1) for i, arg in enumerate(args)]
        eager = EAGER_OPERATIONS.get(name)
        if eager is not None:
            return _apply_eager(eager, compiled)
        custom = self._custom.get(name)
        if custom is not None:
            specializer = self._specializers.get(name)
            special = specializer(compiled) if specializer is not None else None
            return special if special is not None else _apply_custom(custom, compiled)
        raise RuleError(op_path, f"unknown operation {name!r}")

    def _compile_all_args(self, args: list[Any], path: str, depth: int) -> list[Evaluator]:
        return [self._compile(arg, f"{path}[{i}]", depth) for i, arg in enumerate(args)]

    def _compile_var(self, args: list[Any], path: str, depth: int) -> Evaluator:
        if not args:
            return lambda data, env: data
        default = self._compile(args[1], f"{path}[1]", depth) if len(args) > 1 else None
        key = args[0]
        if isinstance(key, str | int) and not isinstance(key, bool):
            parts = tuple(str(key).split(".")) if str(key) != "" else ()
            return _static_var(parts, default)
        dynamic = self._compile(key, f"{path}[0]", depth)

        def run(data: Any, env: Environment) -> Any:
            name = dynamic(data, env)
            parts = tuple(js_string(name).split(".")) if name not in (None, "") else ()
            return _lookup(data, parts, env, default)

        return run

    def _compile_missing(self, args: list[Any], path: str, depth: int) -> Evaluator:
        compiled = self._compile_all_args(args, path, depth)

        def run(data: Any, env: Environment) -> Any:
            values = [arg(data, env) for arg in compiled]
            keys = values[0] if values and isinstance(values[0], list) else values
            return [key for key in keys if _lookup(data, _split(key), env, None) in (None, "")]

        return run

    def _compile_missing_some(self, args: list[Any], path: str, depth: int) -> Evaluator:
        if len(args) != 2:
            raise RuleError(path, "takes [how many are needed, [keys]]")
        need, keys = self._compile(args[0], f"{path}[0]", depth), self._compile(args[1], f"{path}[1]", depth)

        def run(data: Any, env: Environment) -> Any:
            wanted = keys(data, env)
            wanted = wanted if isinstance(wanted, list) else [wanted]
            missing = [key for key in wanted if _lookup(data, _split(key), env, None) in (None, "")]
            return [] if len(wanted) - len(missing) >= to_number(need(data, env)) else missing

        return run

    def _compile_if(self, args: list[Any], path: str, depth: int) -> Evaluator:
        compiled = self._compile_all_args(args, path, depth)
        pairs = [(compiled[i], compiled[i + 1]) for i in range(0, len(compiled) - 1, 2)]
        otherwise = compiled[-1] if len(compiled) % 2 == 1 else None

        def run(data: Any, env: Environment) -> Any:
            for condition, then in pairs:
                if truthy(condition(data, env)):
                    return then(data, env)
            return otherwise(data, env) if otherwise is not None else None

        return run

    def _compile_and(self, args: list[Any], path: str, depth: int) -> Evaluator:
        compiled = self._compile_all_args(args, path, depth)

        def run(data: Any, env: Environment) -> Any:
            value = None
            for arg in compiled:
                value = arg(data, env)
                if not truthy(value):
                    return value
            return value

        return run

    def _compile_or(self, args: list[Any], path: str, depth: int) -> Evaluator:
        compiled = self._compile_all_args(args, path, depth)

        def run(data: Any, env: Environment) -> Any:
            value = None
            for arg in compiled:
                value = arg(data, env)
                if truthy(value):
                    return value
            return value

        return run

    def _scoped(self, args: list[Any], path: str, depth: int) -> tuple[Evaluator, Evaluator, int]:
        """The array, the per-item rule and its node count (what one item costs; iterations
        inside it charge for their own items)."""
        if len(args) < 2:
            raise RuleError(path, "takes [array, rule]")
        body = rule_cost(args[1], limit=10 * MAX_RULE_NODES).nodes
        return self._compile(args[0], f"{path}[0]", depth), self._compile(args[1], f"{path}[1]", depth), body

    # Each iteration charges the environment for all its items before running any, so an
    # evaluation stops before it does more than MAX_EVALUATION_STEPS work, whatever the data.

    def _compile_map(self, args: list[Any], path: str, depth: int) -> Evaluator:
        items, rule, body = self._scoped(args, path, depth)

        def run(data: Any, env: Environment) -> Any:
            values = _charged(items(data, env), body, env)
            return [rule(item, env) for item in values]

        return run

    def _compile_filter(self, args: list[Any], path: str, depth: int) -> Evaluator:
        items, rule, body = self._scoped(args, path, depth)

        def run(data: Any, env: Environment) -> Any:
            values = _charged(items(data, env), body, env)
            return [item for item in values if truthy(rule(item, env))]

        return run

    def _compile_all(self, args: list[Any], path: str, depth: int) -> Evaluator:
        items, rule, body = self._scoped(args, path, depth)

        def run(data: Any, env: Environment) -> Any:
            values = _charged(items(data, env), body, env)
            return bool(values) and all(truthy(rule(item, env)) for item in values)

        return run

    def _compile_some(self, args: list[Any], path: str, depth: int) -> Evaluator:
        items, rule, body = self._scoped(args, path, depth)
        return lambda data, env: any(truthy(rule(item, env)) for item in _charged(items(data, env), body, env))

    def _compile_none(self, args: list[Any], path: str, depth: int) -> Evaluator:
        items, rule, body = self._scoped(args, path, depth)
        return lambda data, env: not any(truthy(rule(item, env)) for item in _charged(items(data, env), body, env))

    def _compile_reduce(self, args: list[Any], path: str, depth: int) -> Evaluator:
        items, rule, body = self._scoped(args, path, depth)
        initial = self._compile(args[2], f"{path}[2]", depth) if len(args) > 2 else None

        def run(data: Any, env: Environment) -> Any:
            accumulator = initial(data, env) if initial is not None else None
            for item in _charged(items(data, env), body, env):
                accumulator = rule({"current": item, "accumulator": accumulator}, env)
                # An accumulator that doubles each step (`merge` of itself) grows exponentially.
                if isinstance(accumulator, list | str):
                    env.charge(len(accumulator))
            return accumulator

        return run


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _charged(value: Any, body: int, env: Environment) -> list[Any]:
    values = _as_list(value)
    env.charge(len(values) * body)
    return values


def _split(key: Any) -> tuple[str, ...]:
    text = js_string(key)
    return tuple(text.split(".")) if text else ()


def _static_var(parts: tuple[str, ...], default: Evaluator | None) -> Evaluator:
    if len(parts) == 1 and parts[0] != "$flagd":
        (key,) = parts

        def run_single(data: Any, env: Environment) -> Any:
            value = data.get(key) if type(data) is dict else _lookup(data, parts, env, None)
            if value is None and default is not None:
                return default(data, env)
            return value

        return run_single
    return lambda data, env: _lookup(data, parts, env, default)


def _lookup(data: Any, parts: Sequence[str], env: Environment, default: Evaluator | None) -> Any:
    node = data
    if parts and parts[0] == "$flagd":
        node = {"flagKey": env.flag_key, "timestamp": env.timestamp}
        parts = parts[1:]
    for part in parts:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            node = None
        if node is None:
            break
    if node is None and default is not None:
        return default(data, env)
    return node


def _apply_eager(operation: Callable[[list[Any]], Any], compiled: list[Evaluator]) -> Evaluator:
    if len(compiled) == 2:
        first, second = compiled
        return lambda data, env: operation([first(data, env), second(data, env)])
    return lambda data, env: operation([arg(data, env) for arg in compiled])


def _apply_custom(operation: EagerOperation, compiled: list[Evaluator]) -> Evaluator:
    return lambda data, env: operation([arg(data, env) for arg in compiled], data, env)
