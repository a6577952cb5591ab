"""JSON Logic: standard operations with json-logic-js (JavaScript) value semantics."""

from __future__ import annotations

import contextlib
import math
import random
from typing import Any

import pytest

from servers.deployment.jsonlogic import Environment, OperationFailed, RuleCompiler, RuleError
from servers.deployment.targeting import FLAGD_COMPILER, FlagEnvironment

COMPILER = RuleCompiler()


def apply(rule: Any, data: Any = None) -> Any:
    return COMPILER.compile(rule)(data if data is not None else {}, Environment("flag", 1000, data or {}))


@pytest.mark.parametrize(
    ("rule", "data", "expected"),
    [
        # equality: loose like JavaScript ==, strict like ===
        ({"==": [1, 1]}, None, True),
        ({"==": [1, "1"]}, None, True),
        ({"==": [0, False]}, None, True),
        ({"==": [None, None]}, None, True),
        ({"==": [None, 0]}, None, False),
        ({"==": ["", 0]}, None, True),
        ({"===": [1, "1"]}, None, False),
        ({"===": [1, 1.0]}, None, True),
        ({"!=": [1, "2"]}, None, True),
        ({"!==": [1, "1"]}, None, True),
        # comparison: strings as strings, the rest as numbers
        ({">": [2, 1]}, None, True),
        ({">": ["2", "10"]}, None, True),
        ({">": ["2", 10]}, None, False),
        ({"<": [None, 1]}, None, True),
        ({"<": ["abc", 1]}, None, False),
        ({"<": [1, 2, 3]}, None, True),
        ({"<": [1, 1, 3]}, None, False),
        ({"<=": [1, 1, 3]}, None, True),
        ({">=": [1, 1]}, None, True),
        # truthiness: [] is false, "0" is true
        ({"!": [[]]}, None, True),
        ({"!!": ["0"]}, None, True),
        ({"!!": [0]}, None, False),
        ({"!": {"var": "missing"}}, None, True),
        # and / or return the deciding value
        ({"and": [1, "a", 0, "b"]}, None, 0),
        ({"or": [0, "", "x"]}, None, "x"),
        ({"or": [0, False]}, None, False),
        # if chains, with ?: as an alias
        ({"if": [False, "a", True, "b", "c"]}, None, "b"),
        ({"if": [False, "a", False, "b", "c"]}, None, "c"),
        ({"if": [False, "a"]}, None, None),
        ({"?:": [True, 1, 2]}, None, 1),
        # var: dotted paths, array indexes, defaults, the whole data
        ({"var": "a.b"}, {"a": {"b": 3}}, 3),
        ({"var": "list.1"}, {"list": [5, 6]}, 6),
        ({"var": ["x", "fallback"]}, {}, "fallback"),
        ({"var": ["x", "fallback"]}, {"x": None}, "fallback"),
        ({"var": "x"}, {"x": False}, False),
        ({"var": ""}, {"k": 1}, {"k": 1}),
        ({"var": {"cat": ["a", ".b"]}}, {"a": {"b": "dyn"}}, "dyn"),
        ({"var": "$flagd.flagKey"}, None, "flag"),
        ({"var": "$flagd.timestamp"}, None, 1000),
        # missing
        ({"missing": ["a", "b"]}, {"a": 1, "b": ""}, ["b"]),
        ({"missing": [["a", "c"]]}, {"a": 1}, ["c"]),
        ({"missing_some": [1, ["a", "b"]]}, {"a": 1}, []),
        ({"missing_some": [2, ["a", "b"]]}, {"a": 1}, ["b"]),
        # arithmetic with JavaScript conversions; no exceptions on bad input
        ({"+": [1, "2", 3.5]}, None, 6.5),
        ({"+": ["3"]}, None, 3),
        ({"-": [5]}, None, -5),
        ({"-": [5, "2"]}, None, 3),
        ({"*": [2, "3"]}, None, 6),
        ({"/": [7, 2]}, None, 3.5),
        ({"/": [1, 0]}, None, math.inf),
        ({"%": [-7, 3]}, None, -1),
        ({"max": [1, 3, 2]}, None, 3),
        ({"min": [1, "0", 2]}, None, 0),
        ({"max": []}, None, None),
        # strings and arrays
        ({"in": ["Spring", "Springfield"]}, None, True),
        ({"in": ["b", ["a", "b"]]}, None, True),
        ({"in": [1, ["1"]]}, None, False),
        ({"in": ["x", None]}, None, False),
        ({"cat": ["I love", " pie", 3, None, True]}, None, "I love pie3nulltrue"),
        ({"substr": ["jsonlogic", 4]}, None, "logic"),
        ({"substr": ["jsonlogic", -5]}, None, "logic"),
        ({"substr": ["jsonlogic", 1, 3]}, None, "son"),
        ({"substr": ["jsonlogic", 4, -2]}, None, "log"),
        ({"substr": ["jsonlogic", {"/": [1, 0]}]}, None, ""),
        ({"substr": ["jsonlogic", 2, {"/": [-1, 0]}]}, None, ""),
        ({"merge": [[1, 2], 3, [4]]}, None, [1, 2, 3, 4]),
        # iteration with the item as data
        ({"map": [{"var": "xs"}, {"*": [{"var": ""}, 2]}]}, {"xs": [1, 2]}, [2, 4]),
        ({"filter": [{"var": "xs"}, {">": [{"var": ""}, 1]}]}, {"xs": [1, 2, 3]}, [2, 3]),
        ({"reduce": [{"var": "xs"}, {"+": [{"var": "current"}, {"var": "accumulator"}]}, 0]}, {"xs": [1, 2, 3]}, 6),
        ({"all": [[1, 2], {">": [{"var": ""}, 0]}]}, None, True),
        ({"all": [[], {">": [{"var": ""}, 0]}]}, None, False),
        ({"some": [[0, 2], {">": [{"var": ""}, 1]}]}, None, True),
        ({"none": [[0, 1], {">": [{"var": ""}, 1]}]}, None, True),
        # literals: arrays are evaluated, objects with several keys are data
        ([{"var": "a"}, 2], {"a": 1}, [1, 2]),
        ({"a": 1, "b": 2}, None, {"a": 1, "b": 2}),
    ],
)
def test_standard_operations_behave_like_json_logic_js(rule: Any, data: Any, expected: Any) -> None:
    assert apply(rule, data) == expected


def test_nan_results_stay_nan_instead_of_raising() -> None:
    assert math.isnan(apply({"/": [0, 0]}))
    assert math.isnan(apply({"%": [1, 0]}))
    assert math.isnan(apply({"+": ["abc", 1]}))


def test_unknown_operations_are_refused_with_their_path() -> None:
    with pytest.raises(RuleError) as caught:
        COMPILER.compile({"if": [{"==": [1, 1]}, {"frobnicate": [1]}, None]})
    assert caught.value.path == "if[1].frobnicate"


def test_custom_operations_get_evaluated_arguments_and_may_fail() -> None:
    def shout(args: list[Any], data: Any, env: Environment) -> Any:
        if not isinstance(args[0], str):
            raise OperationFailed("needs text")
        return args[0].upper() + env.flag_key

    compiler = RuleCompiler({"shout": shout})
    assert compiler.compile({"shout": {"var": "w"}})({"w": "hi"}, Environment("!")) == "HI!"
    with pytest.raises(OperationFailed):
        compiler.compile({"shout": [1]})({}, Environment())
    assert "shout" in compiler.operations


def test_non_finite_literals_are_refused() -> None:
    with pytest.raises(RuleError):
        COMPILER.compile({"==": [math.nan, 1]})


def test_random_rules_never_raise_anything_but_an_operation_failure() -> None:
    rng = random.Random(20300101)
    operations = sorted(FLAGD_COMPILER.operations)
    atoms: list[Any] = [None, True, False, 0, -1, 2.5, 10**30, "", "a", "1", "1.0.0", "email", "$flagd.flagKey", [], {}]
    atoms += ["Infinity", "1e400", " 12 ", "0x1f", "a.b", "targetingKey"]

    def rule(depth: int = 0) -> Any:
        roll = rng.random()
        if depth > 3 or roll < 0.5:
            return rng.choice(atoms)
        if roll < 0.7:
            return [rule(depth + 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice(operations): [rule(depth + 1) for _ in range(rng.randint(0, 4))]}

    data = {"email": "x@example.com", "targetingKey": "k1", "a": {"b": [1, 2]}, "n": 5, "l": [1, "2", None]}
    evaluated = 0
    for _ in range(5000):
        try:
            compiled = FLAGD_COMPILER.compile(rule())
        except RuleError:
            continue
        with contextlib.suppress(OperationFailed):
            compiled(data, FlagEnvironment("f", 1000, data))
        evaluated += 1
    assert evaluated > 3000
