"""Feature flags: flagd-compatible bucketing and targeting, reasons, errors, validation, audit."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from clients.bucketing import BucketingAlgorithm, choose, murmur3_x86_32
from servers.deployment.flags import (
    FlagDefinition,
    FlagState,
    GradualRollout,
    build_definition,
    gradual_rollout_targeting,
    parse_definition,
    parse_target_group,
)
from servers.deployment.flagset import (
    ChangeType,
    ErrorCode,
    FlagSet,
    Reason,
    ValueType,
    flag_audit,
    group_audit,
    group_changes,
)
from servers.deployment.jsonlogic import MAX_EVALUATION_STEPS, Environment, EvaluationTooCostly, RuleCompiler
from servers.mesh.errors import FailedPrecondition, InvalidArgument

NOW = 1_900_000_000.0


def flag_set(flags: dict[str, Any], groups: dict[str, Any] | None = None) -> FlagSet:
    """A set built from flagd JSON definitions (and target group rules)."""
    built = FlagSet()
    for name, rule in (groups or {}).items():
        built, _ = built.put_group(built.parse_group(name, json.dumps(rule)))
    for key, document in flags.items():
        built = built.put_flag(built.parse(key, json.dumps(document)))
    return built


def resolve(flags: FlagSet, key: str, context: Any = None, value_type: ValueType = ValueType.STRING) -> Any:
    return flags.resolve(key, value_type, context, NOW)


# -- MurmurHash3 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "seed", "expected"),
    [
        (b"", 0, 0x00000000),
        (b"", 1, 0x514E28B7),
        (b"", 0xFFFFFFFF, 0x81F16F39),
        (b"\xff\xff\xff\xff", 0, 0x76293B50),
        (b"\x21\x43\x65\x87", 0, 0xF55B516B),
        (b"\x21\x43\x65\x87", 0x5082EDEE, 0x2362F9DE),
        (b"\x21\x43\x65", 0, 0x7E4A8634),
        (b"\x21\x43", 0, 0xA0F7B07A),
        (b"\x21", 0, 0x72661CF4),
        (b"\x00\x00\x00\x00", 0, 0x2362F9DE),
        (b"\x00\x00\x00", 0, 0x85F0B427),
        (b"\x00\x00", 0, 0x30F4C306),
        (b"\x00", 0, 0x514E28B7),
        (b"hello", 0, 0x248BFA47),
        (b"Hello, world!", 1234, 0xFAF6CDB3),
        (b"Hello, world!", 4321, 0xBF505788),
        (b"aaa", 0x9747B28C, 0x283E0130),
        (b"abcd", 0x9747B28C, 0xF0478627),
    ],
)
def test_murmur3_matches_the_reference_vectors(data: bytes, seed: int, expected: int) -> None:
    assert murmur3_x86_32(data, seed) == expected


def test_murmur3_hashes_text_as_utf8() -> None:
    assert murmur3_x86_32("héllo") == murmur3_x86_32("héllo".encode())
    assert murmur3_x86_32("hello") == 0x248BFA47


# -- flagd conformance (open-feature/flagd-testbed, gherkin/targeting.feature) ------------------------

CARDS = {"clubs": "clubs", "diamonds": "diamonds", "hearts": "hearts", "spades": "spades", "wild": "wild"}
QUARTERS = [["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]]


def conformance_flags(bucketing: BucketingAlgorithm) -> FlagSet:
    metadata = {"bucketing": bucketing.value}
    return flag_set(
        {
            "fractional-flag": {
                "variants": CARDS,
                "defaultVariant": "wild",
                "metadata": metadata,
                "targeting": {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "user.name"}]}, *QUARTERS]},
            },
            "fractional-flag-A-shared-seed": {
                "variants": CARDS,
                "defaultVariant": "wild",
                "metadata": metadata,
                "targeting": {"fractional": [{"cat": ["shared-seed", {"var": "user.name"}]}, *QUARTERS]},
            },
            "fractional-flag-shorthand": {
                "variants": {"heads": "heads", "tails": "tails", "draw": "draw"},
                "defaultVariant": "draw",
                "metadata": metadata,
                "targeting": {"fractional": [["heads"], ["tails", 1]]},
            },
        }
    )


@pytest.mark.parametrize(
    ("bucketing", "name", "expected"),
    [
        (BucketingAlgorithm.MURMUR3_V2, "jack", "hearts"),
        (BucketingAlgorithm.MURMUR3_V2, "queen", "spades"),
        (BucketingAlgorithm.MURMUR3_V2, "ten", "clubs"),
        (BucketingAlgorithm.MURMUR3_V2, "nine", "diamonds"),
        (BucketingAlgorithm.MURMUR3_V2, "3", "clubs"),
        (BucketingAlgorithm.MURMUR3_V1, "jack", "spades"),
        (BucketingAlgorithm.MURMUR3_V1, "queen", "clubs"),
        (BucketingAlgorithm.MURMUR3_V1, "ten", "diamonds"),
        (BucketingAlgorithm.MURMUR3_V1, "nine", "hearts"),
        (BucketingAlgorithm.MURMUR3_V1, "3", "diamonds"),
    ],
)
def test_fractional_buckets_match_flagd_for_both_algorithm_versions(
    bucketing: BucketingAlgorithm, name: str, expected: str
) -> None:
    resolution = resolve(conformance_flags(bucketing), "fractional-flag", {"user": {"name": name}})
    assert (resolution.value, resolution.reason) == (expected, Reason.SPLIT)


@pytest.mark.parametrize(
    ("bucketing", "name", "expected"),
    [
        (BucketingAlgorithm.MURMUR3_V2, "seven", "hearts"),
        (BucketingAlgorithm.MURMUR3_V2, "eight", "diamonds"),
        (BucketingAlgorithm.MURMUR3_V2, "nine", "clubs"),
        (BucketingAlgorithm.MURMUR3_V2, "two", "spades"),
        (BucketingAlgorithm.MURMUR3_V1, "jack", "hearts"),
        (BucketingAlgorithm.MURMUR3_V1, "queen", "spades"),
        (BucketingAlgorithm.MURMUR3_V1, "ten", "hearts"),
        (BucketingAlgorithm.MURMUR3_V1, "nine", "diamonds"),
    ],
)
def test_a_shared_seed_buckets_like_flagd(bucketing: BucketingAlgorithm, name: str, expected: str) -> None:
    resolution = resolve(conformance_flags(bucketing), "fractional-flag-A-shared-seed", {"user": {"name": name}})
    assert resolution.value == expected


@pytest.mark.parametrize("bucketing", [BucketingAlgorithm.MURMUR3_V1, BucketingAlgorithm.MURMUR3_V2])
def test_shorthand_fractional_hashes_flag_key_and_targeting_key(bucketing: BucketingAlgorithm) -> None:
    flags = conformance_flags(bucketing)
    assert resolve(flags, "fractional-flag-shorthand", {"targetingKey": "jon@company.com"}).value == "heads"
    assert resolve(flags, "fractional-flag-shorthand", {"targetingKey": "jane@company.com"}).value == "tails"


@pytest.mark.parametrize(
    ("key", "expected"),
    [("ejOoVL", "lower"), ("bY9fO-", "lower"), ("SI7p-", "lower"), ("6LvT0", "upper"), ("ceQdGm", "upper")],
)
def test_hash_boundary_keys_fall_on_flagds_side(key: str, expected: str) -> None:
    # The keys hash to 0, 1, 2**31 - 1, 2**31 and 2**32 - 1 (seed 0).
    flags = flag_set(
        {
            "edge": {
                "variants": {"lower": "lower", "upper": "upper"},
                "defaultVariant": "lower",
                "metadata": {"bucketing": "murmur3-v2"},
                "targeting": {"fractional": [{"var": "targetingKey"}, ["lower", 50], ["upper", 50]]},
            }
        }
    )
    assert resolve(flags, "edge", {"targetingKey": key}).value == expected


@pytest.mark.parametrize(
    ("email", "expected"),
    [("rachel@faas.com", "yellow"), ("monica@faas.com", "blue"), ("joey@faas.com", "red"), ("ross@faas.com", "green")],
)
def test_legacy_bucketing_matches_flagds_original_unit_vectors(email: str, expected: str) -> None:
    # flagd core/pkg/evaluator/fractional_test.go before the high-precision bucketing.
    colors = ["red", "blue", "green", "yellow"]
    index = choose(BucketingAlgorithm.MURMUR3_V1, "headerColor" + email, [25, 25, 25, 25])
    assert index is not None
    assert colors[index] == expected


def test_nested_rules_inside_fractional_buckets_are_evaluated() -> None:
    flags = flag_set(
        {
            "tiered": {
                "variants": {"premium": "premium", "standard": "standard", "fallback": "fallback"},
                "defaultVariant": "fallback",
                "targeting": {
                    "fractional": [
                        {"var": "targetingKey"},
                        [{"if": [{"==": [{"var": "tier"}, "premium"]}, "premium", "standard"]}, 50],
                        ["standard", 50],
                    ]
                },
            }
        }
    )
    assert resolve(flags, "tiered", {"targetingKey": "jon@company.com", "tier": "premium"}).value == "premium"
    assert resolve(flags, "tiered", {"targetingKey": "jon@company.com", "tier": "basic"}).value == "standard"
    assert resolve(flags, "tiered", {"targetingKey": "user1", "tier": "premium"}).value == "standard"


def test_fractional_as_a_condition_is_a_targeting_match_not_a_split() -> None:
    flags = flag_set(
        {
            "cond": {
                "variants": {"big": "hundreds", "small": "ones", "fallback": "zero"},
                "defaultVariant": "fallback",
                "targeting": {"if": [{"fractional": [[False, 0], [True, 100]]}, "big", "small"]},
            }
        }
    )
    resolution = resolve(flags, "cond", {"targetingKey": "some-targeting-key"})
    assert (resolution.value, resolution.variant, resolution.reason) == ("hundreds", "big", Reason.TARGETING_MATCH)


STRING_OPS = {
    "variants": {"prefix": "prefix", "postfix": "postfix", "none": "none"},
    "defaultVariant": "none",
    "targeting": {
        "if": [
            {"starts_with": [{"var": "id"}, "abc"]},
            "prefix",
            {"if": [{"ends_with": [{"var": "id"}, "xyz"]}, "postfix", "none"]},
        ]
    },
}
SEMVER = {
    "variants": {
        "equal": "equal",
        "greater": "greater",
        "lesser": "lesser",
        "minor": "minor",
        "major": "major",
        "none": "none",
    },
    "defaultVariant": "none",
    "targeting": {
        "if": [
            {"sem_ver": [{"var": "version"}, "=", "2.0.0"]},
            "equal",
            {"sem_ver": [{"var": "version"}, "~", "2.1.0"]},
            "minor",
            {"sem_ver": [{"var": "version"}, ">", "2.0.0"]},
            "greater",
            {"sem_ver": [{"var": "version"}, "^", "1.0.0"]},
            "major",
            {"sem_ver": [{"var": "version"}, "<", "2.0.0"]},
            "lesser",
            "none",
        ]
    },
}


@pytest.mark.parametrize(
    ("key", "context", "value", "reason"),
    [
        ("strings", {"id": "abcdef"}, "prefix", Reason.TARGETING_MATCH),
        ("strings", {"id": "uvwxyz"}, "postfix", Reason.TARGETING_MATCH),
        ("strings", {"id": "abcxyz"}, "prefix", Reason.TARGETING_MATCH),
        ("strings", {"id": "lmnopq"}, "none", Reason.TARGETING_MATCH),
        ("strings", {"id": 3}, "none", Reason.DEFAULT),  # starts_with fails on a number: null
        ("semver", {"version": "2.0.0"}, "equal", Reason.TARGETING_MATCH),
        ("semver", {"version": "v2.0.0+build.7"}, "equal", Reason.TARGETING_MATCH),
        ("semver", {"version": "2.1.5"}, "minor", Reason.TARGETING_MATCH),
        ("semver", {"version": "3.0.0"}, "greater", Reason.TARGETING_MATCH),
        ("semver", {"version": "1.9"}, "major", Reason.TARGETING_MATCH),
        ("semver", {"version": "2.0.0-alpha"}, "lesser", Reason.TARGETING_MATCH),
        ("semver", {"version": "0.9.0"}, "lesser", Reason.TARGETING_MATCH),
        ("semver", {"version": "2.0.0.0"}, "none", Reason.DEFAULT),  # not a version: null
        ("semver", {}, "none", Reason.DEFAULT),
        ("semver-dynamic", {"version": "1.0.0", "op": ["="]}, "none", Reason.DEFAULT),  # not an operator: null
    ],
)
def test_flagd_string_and_semver_operations(key: str, context: dict[str, Any], value: str, reason: Reason) -> None:
    dynamic = {
        "variants": {"match": "match", "none": "none"},
        "defaultVariant": "none",
        "targeting": {"if": [{"sem_ver": [{"var": "version"}, {"var": "op"}, "1.0.0"]}, "match", "none"]},
    }
    flags = flag_set({"strings": STRING_OPS, "semver": SEMVER, "semver-dynamic": dynamic})
    resolution = resolve(flags, key, context)
    assert (resolution.value, resolution.reason) == (value, reason)


def test_semver_prerelease_precedence_follows_semver_2() -> None:
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11"]
    ordered += ["1.0.0-rc.1", "1.0.0"]
    flags = flag_set(
        {
            "lt": {
                "variants": {"yes": True, "no": False},
                "defaultVariant": "no",
                "targeting": {"if": [{"sem_ver": [{"var": "a"}, "<", {"var": "b"}]}, "yes", "no"]},
            }
        }
    )
    for lower, higher in itertools.pairwise(ordered):
        assert resolve(flags, "lt", {"a": lower, "b": higher}, ValueType.BOOLEAN).value is True
        assert resolve(flags, "lt", {"a": higher, "b": lower}, ValueType.BOOLEAN).value is False


def test_flagd_timestamp_is_the_evaluation_time() -> None:
    flags = flag_set(
        {
            "launch": {
                "variants": {"before": "before", "after": "after"},
                "defaultVariant": "before",
                "targeting": {"if": [{">=": [{"var": "$flagd.timestamp"}, NOW]}, "after", "before"]},
            }
        }
    )
    assert flags.resolve("launch", ValueType.STRING, {}, NOW - 1).value == "before"
    assert flags.resolve("launch", ValueType.STRING, {}, NOW).value == "after"


def test_time_based_rollout_moves_each_key_once_and_never_back() -> None:
    start, end = int(NOW), int(NOW) + 1000
    flags = flag_set(
        {
            "migrate": {
                "variants": {"old": "old", "new": "new"},
                "defaultVariant": "old",
                "targeting": {"rollout": [start, end, "old", "new"]},
            }
        }
    )
    keys = [f"user-{i}" for i in range(2000)]
    previous: set[str] = set()
    for moment, share in [(start - 5, 0.0), (start + 250, 0.25), (start + 500, 0.5), (end, 1.0)]:
        moved = {
            k for k in keys if flags.resolve("migrate", ValueType.STRING, {"targetingKey": k}, moment).value == "new"
        }
        assert previous <= moved
        assert abs(len(moved) / len(keys) - share) <= 0.04
        previous = moved


# -- the issue's properties -----------------------------------------------------------------------------


def test_a_30_70_split_over_100_000_targeting_keys_lands_within_one_point() -> None:
    flags = flag_set(
        {
            "checkout": {
                "variants": {"new": "new", "old": "old"},
                "defaultVariant": "old",
                "targeting": {"fractional": [["new", 30], ["old", 70]]},
            }
        }
    )
    new = sum(
        1
        for i in range(100_000)
        if flags.resolve("checkout", ValueType.STRING, {"targetingKey": f"user-{i}"}).value == "new"
    )
    assert abs(new / 100_000 - 0.30) <= 0.01


def test_the_same_key_always_gets_the_same_variant_even_after_a_reload() -> None:
    document = {
        "variants": {"a": "a", "b": "b", "c": "c"},
        "defaultVariant": "a",
        "targeting": {"fractional": [["a", 1], ["b", 1], ["c", 1]]},
    }
    first = flag_set({"abc": document})
    reloaded = FlagSet.build([parse_definition("abc", first.get("abc").to_json())])
    for i in range(500):
        context = {"targetingKey": f"key-{i}"}
        answers = {first.resolve("abc", ValueType.STRING, context).value for _ in range(3)}
        answers.add(reloaded.resolve("abc", ValueType.STRING, context).value)
        assert len(answers) == 1


@pytest.mark.parametrize("bucketing", list(BucketingAlgorithm))
def test_raising_a_rollout_only_adds_keys_to_the_new_variant(bucketing: BucketingAlgorithm) -> None:
    keys = [f"user-{i}" for i in range(5000)]
    previous: set[str] = set()
    for percentage in (0, 1, 5, 12.5, 25, 50, 75, 99.99, 100):
        flags = flag_set(
            {
                "dark-mode": {
                    "variants": {"on": True, "off": False},
                    "defaultVariant": "off",
                    "targeting": gradual_rollout_targeting("on", percentage, "off"),
                    "metadata": {"bucketing": bucketing.value},
                }
            }
        )
        on = {k for k in keys if flags.resolve("dark-mode", ValueType.BOOLEAN, {"targetingKey": k}).value is True}
        assert previous <= on, f"raising to {percentage} % took keys away"
        assert abs(len(on) / len(keys) - percentage / 100) <= 0.03
        previous = on
    assert previous == set(keys)


# -- reasons and errors ------------------------------------------------------------------------------

REASON_FLAGS = {
    "static": {"variants": {"on": True, "off": False}, "defaultVariant": "on"},
    "empty-targeting": {"variants": {"on": True, "off": False}, "defaultVariant": "on", "targeting": {}},
    "targeted": {
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", None]},
    },
    "split": {
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"fractional": [["on", 50], ["off", 50]]},
    },
    "disabled": {"state": "DISABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"},
    "unknown-variant": {
        "variants": {"one": 1, "two": 2},
        "defaultVariant": "two",
        "targeting": {"if": [True, "three", "one"]},
    },
    "bool-variant-names": {
        "variants": {"true": 1, "false": 2},
        "defaultVariant": "false",
        "targeting": {"if": [True, True, False]},
    },
}


@pytest.mark.parametrize(
    ("key", "context", "value_type", "value", "variant", "reason", "error"),
    [
        ("static", None, ValueType.BOOLEAN, True, "on", Reason.STATIC, None),
        ("empty-targeting", {}, ValueType.BOOLEAN, True, "on", Reason.STATIC, None),
        ("targeted", {"email": "ann@example.com"}, ValueType.BOOLEAN, True, "on", Reason.TARGETING_MATCH, None),
        ("targeted", {"email": "bob@other.org"}, ValueType.BOOLEAN, False, "off", Reason.DEFAULT, None),
        ("targeted", {}, ValueType.BOOLEAN, False, "off", Reason.DEFAULT, None),
        ("split", {"targetingKey": "u1"}, ValueType.BOOLEAN, None, None, Reason.SPLIT, None),
        ("split", {}, ValueType.BOOLEAN, False, "off", Reason.DEFAULT, None),  # no key to bucket: null
        ("disabled", {}, ValueType.BOOLEAN, False, "off", Reason.DISABLED, None),
        ("missing", {}, ValueType.BOOLEAN, None, "", Reason.ERROR, ErrorCode.FLAG_NOT_FOUND),
        ("static", None, ValueType.STRING, None, "", Reason.ERROR, ErrorCode.TYPE_MISMATCH),
        ("static", None, ValueType.INTEGER, None, "", Reason.ERROR, ErrorCode.TYPE_MISMATCH),
        ("targeted", ["not", "an", "object"], ValueType.BOOLEAN, None, "", Reason.ERROR, ErrorCode.INVALID_CONTEXT),
        ("unknown-variant", {}, ValueType.INTEGER, None, "", Reason.ERROR, ErrorCode.GENERAL),
        ("bool-variant-names", {}, ValueType.INTEGER, 1, "true", Reason.TARGETING_MATCH, None),
    ],
)
def test_resolution_reasons_and_errors(
    key: str,
    context: Any,
    value_type: ValueType,
    value: Any,
    variant: str | None,
    reason: Reason,
    error: ErrorCode | None,
) -> None:
    resolution = resolve(flag_set(REASON_FLAGS), key, context, value_type)
    assert resolution.reason is reason
    assert resolution.error_code is error
    if variant is not None:
        assert (resolution.value, resolution.variant) == (value, variant)


def test_a_stored_definition_that_no_longer_compiles_is_a_parse_error() -> None:
    definition = parse_definition(
        "gated",
        {
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"$ref": "beta"}, "on", "off"]},
        },
        {"beta": parse_target_group("beta", '{"==": [{"var": "tier"}, "beta"]}')},
    )
    loaded = FlagSet.build([definition], groups=[])  # the group vanished from storage
    resolution = loaded.resolve("gated", ValueType.BOOLEAN, {})
    assert (resolution.reason, resolution.error_code) == (Reason.ERROR, ErrorCode.PARSE_ERROR)


@pytest.mark.parametrize(
    ("value_type", "variants", "expected"),
    [
        (ValueType.INTEGER, {"a": 2.0, "b": 3}, 2),
        (ValueType.FLOAT, {"a": 2, "b": 3}, 2.0),
        (ValueType.OBJECT, {"a": {"limit": 5}, "b": {}}, {"limit": 5}),
        (ValueType.STRING, {"a": "x", "b": "y"}, "x"),
    ],
)
def test_values_convert_to_the_requested_type(value_type: ValueType, variants: dict[str, Any], expected: Any) -> None:
    flags = flag_set({"f": {"variants": variants, "defaultVariant": "a"}})
    resolution = flags.resolve("f", value_type)
    assert resolution.value == expected
    assert type(resolution.value) is type(expected)


def test_an_integer_request_for_a_fractional_number_is_a_type_mismatch() -> None:
    flags = flag_set({"ratio": {"variants": {"a": 0.5, "b": 1}, "defaultVariant": "a"}})
    assert flags.resolve("ratio", ValueType.INTEGER).error_code is ErrorCode.TYPE_MISMATCH
    assert flags.resolve("ratio", ValueType.FLOAT).value == 0.5


def test_resolve_all_leaves_out_disabled_and_failing_flags() -> None:
    resolved = flag_set(REASON_FLAGS).resolve_all({"email": "ann@example.com", "targetingKey": "k"}, NOW)
    assert set(resolved) == {"static", "empty-targeting", "targeted", "split", "bool-variant-names"}
    assert resolved["bool-variant-names"].value == 1.0


def test_resolutions_carry_the_flag_metadata_with_its_bucketing() -> None:
    flags = flag_set({"f": {"variants": {"a": 1}, "defaultVariant": "a", "metadata": {"team": "payments"}}})
    assert dict(flags.resolve("f", ValueType.INTEGER).metadata) == {"team": "payments", "bucketing": "murmur3-v3"}


# -- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "document", "field"),
    [
        ("", {"variants": {"a": 1}, "defaultVariant": "a"}, "flag_key"),
        ("has space", {"variants": {"a": 1}, "defaultVariant": "a"}, "flag_key"),
        ("f", "[1, 2]", "definition_json"),
        ("f", "{not json", "definition_json"),
        ("f", '{"variants": {"a": NaN}, "defaultVariant": "a"}', "definition_json"),
        ("f", {"variants": {"a": 1}, "defaultvariant": "a"}, "definition_json.defaultvariant"),
        ("f", {"defaultVariant": "a"}, "definition_json.variants"),
        ("f", {"variants": {}, "defaultVariant": "a"}, "definition_json.variants"),
        ("f", {"variants": {"a": 1, "b": "x"}, "defaultVariant": "a"}, "definition_json.variants"),
        ("f", {"variants": {"a": None}, "defaultVariant": "a"}, "definition_json.variants.a"),
        ("f", {"variants": {"a": [1, 2]}, "defaultVariant": "a"}, "definition_json.variants.a"),
        ("f", {"variants": {"a": 1}}, "definition_json.defaultVariant"),
        ("f", {"variants": {"a": 1}, "defaultVariant": "b"}, "definition_json.defaultVariant"),
        ("f", {"state": "ON", "variants": {"a": 1}, "defaultVariant": "a"}, "definition_json.state"),
        ("f", {"variants": {"a": 1}, "defaultVariant": "a", "targeting": "a"}, "definition_json.targeting"),
        (
            "f",
            {"variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [{"invalid": [1]}, "a", None]}},
            "definition_json.targeting.if[0].invalid",
        ),
        (
            "f",
            {"variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"fractional": [["a", 50], ["c", 50]]}},
            "definition_json.targeting.fractional[1][0]",
        ),
        (
            "f",
            {"variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"fractional": [["a", -5], ["b", 50]]}},
            "definition_json.targeting.fractional[0][1]",
        ),
        (
            "f",
            {"variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"fractional": [["a", 0], ["b", 0]]}},
            "definition_json.targeting.fractional",
        ),
        (
            "f",
            {"variants": {"a": 1}, "defaultVariant": "a", "targeting": {"sem_ver": [{"var": "v"}, "===", "1.0.0"]}},
            "definition_json.targeting.sem_ver[1]",
        ),
        (
            "f",
            {"variants": {"a": 1}, "defaultVariant": "a", "targeting": {"sem_ver": [{"var": "v"}, ">", "one"]}},
            "definition_json.targeting.sem_ver[2]",
        ),
        (
            "f",
            {"variants": {"a": 1}, "defaultVariant": "a", "targeting": {"$ref": "nope"}},
            "definition_json.targeting.$ref",
        ),
        (
            "f",
            {"variants": {"a": 1}, "defaultVariant": "a", "metadata": {"bucketing": "md5"}},
            "definition_json.metadata.bucketing",
        ),
        (
            "f",
            {"variants": {"a": 1}, "defaultVariant": "a", "metadata": {"owner": ["x"]}},
            "definition_json.metadata.owner",
        ),
    ],
)
def test_invalid_definitions_name_the_field(key: str, document: Any, field: str) -> None:
    source = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(InvalidArgument) as caught:
        FlagSet().parse(key, source)
    assert caught.value.reason == "INVALID_ARGUMENT"
    assert caught.value.metadata["field"] == field


def test_the_structured_form_names_its_own_fields() -> None:
    with pytest.raises(InvalidArgument) as caught:
        build_definition("f", state=None, variants={"a": 1}, default_variant="b", targeting=None, metadata=None)
    assert caught.value.metadata["field"] == "definition.default_variant"


def test_too_deep_targeting_is_refused() -> None:
    rule: Any = "a"
    for _ in range(100):
        rule = {"if": [True, rule, None]}
    with pytest.raises(InvalidArgument):
        FlagSet().parse("deep", {"variants": {"a": 1}, "defaultVariant": "a", "targeting": rule})


def test_stored_definitions_record_their_bucketing_and_round_trip() -> None:
    definition = FlagSet().parse("f", '{"variants": {"on": true, "off": false}, "defaultVariant": "off"}')
    stored = json.loads(definition.to_json())
    assert stored["metadata"]["bucketing"] == "murmur3-v3", "new flags bucket as flagd does today"
    assert stored["state"] == "ENABLED"
    assert parse_definition("f", definition.to_json()) == definition


@pytest.mark.parametrize(("percentage", "field"), [(-1, "percentage"), (100.5, "percentage"), (12.345, "percentage")])
def test_gradual_rollouts_take_0_to_100_percent_with_two_decimals(percentage: float, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        gradual_rollout_targeting("on", percentage, "off")
    assert caught.value.metadata["field"] == f"definition.rollout.{field}"


# -- target groups --------------------------------------------------------------------------------------


def test_flags_follow_the_target_group_they_reference() -> None:
    gated = {
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"if": [{"$ref": "staff"}, "on", "off"]},
    }
    flags = flag_set(
        {"gated": gated, "other": REASON_FLAGS["static"]}, {"staff": {"ends_with": [{"var": "email"}, "@corp.com"]}}
    )
    assert flags.resolve("gated", ValueType.BOOLEAN, {"email": "a@corp.com"}).value is True

    changed, affected = flags.put_group(
        parse_target_group("staff", '{"ends_with": [{"var": "email"}, "@staff.corp.com"]}')
    )
    assert affected == ["gated"]
    assert changed.resolve("gated", ValueType.BOOLEAN, {"email": "a@corp.com"}).value is False
    assert changed.resolve("gated", ValueType.BOOLEAN, {"email": "a@staff.corp.com"}).value is True
    assert [c.subject for c in group_changes("staff", ChangeType.UPDATED, affected)] == [
        "target-groups/staff",
        "flags/gated",
    ]


def test_a_target_group_in_use_cannot_be_deleted() -> None:
    gated = {
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"if": [{"$ref": "staff"}, "on", "off"]},
    }
    flags = flag_set({"gated": gated}, {"staff": {"==": [{"var": "role"}, "staff"]}})
    with pytest.raises(FailedPrecondition) as caught:
        flags.delete_group("staff")
    assert caught.value.reason == "TARGET_GROUP_IN_USE"
    assert flags.delete_flag("gated").delete_group("staff").group_names() == []


def test_a_target_group_may_not_refer_to_itself() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_target_group("loop", '{"or": [{"$ref": "loop"}, true]}')
    assert caught.value.metadata["field"].startswith("rule_json")


def test_a_group_change_that_breaks_a_flag_is_refused() -> None:
    split = {"variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"$ref": "halves"}}
    flags = flag_set({"split": split}, {"halves": {"fractional": [["a", 1], ["b", 1]]}})
    with pytest.raises(InvalidArgument) as caught:
        flags.put_group(parse_target_group("halves", '{"fractional": [["a", 1], ["z", 1]]}'))
    assert caught.value.metadata["field"] == "rule_json"


# -- audit -------------------------------------------------------------------------------------------------


def test_every_change_is_audited_with_who_when_before_and_after() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    v1 = FlagSet().parse("f", '{"variants": {"on": true, "off": false}, "defaultVariant": "off"}')
    v2 = FlagSet().parse("f", '{"variants": {"on": true, "off": false}, "defaultVariant": "on"}')
    created = flag_audit(None, v1, actor="alice", at=at, comment="launch")
    updated = flag_audit(v1, v2, actor="bob", at=at)
    deleted = flag_audit(v2, None, actor="carol", at=at)
    assert [e.change_type for e in (created, updated, deleted)] == [
        ChangeType.CREATED,
        ChangeType.UPDATED,
        ChangeType.DELETED,
    ]
    assert (created.subject, created.actor, created.time, created.comment) == ("flags/f", "alice", at, "launch")
    assert (created.before_json, created.after_json) == ("", v1.to_json())
    assert (updated.before_json, updated.after_json) == (v1.to_json(), v2.to_json())
    assert (deleted.before_json, deleted.after_json) == (v2.to_json(), "")
    group = parse_target_group("staff", '{"==": [1, 1]}')
    assert group_audit(None, group, actor="dan", at=at).subject == "target-groups/staff"


def test_definitions_are_values() -> None:
    first = FlagSet().parse("f", '{"variants": {"a": 1}, "defaultVariant": "a"}')
    assert isinstance(first, FlagDefinition)
    assert first == FlagSet().parse("f", '{"defaultVariant": "a", "variants": {"a": 1}}')


@pytest.mark.parametrize(
    "text",
    [
        '{"variants": {"a": 1e400}, "defaultVariant": "a"}',
        '{"variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [{"x": 1e400, "y": 1}, "a", null]}}',
    ],
)
def test_numbers_beyond_a_double_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        FlagSet().parse("f", text)


def test_a_structured_rollout_is_stored_as_a_fractional_rule() -> None:
    definition = build_definition(
        "beta",
        state="FLAG_STATE_ENABLED",
        variants={"on": True, "off": False},
        default_variant="off",
        targeting=None,
        metadata=None,
        rollout=GradualRollout("on", 12.5),
    )
    assert definition.targeting == {"fractional": [["on", 1250], ["off", 8750]]}


@pytest.mark.parametrize(
    ("rollout", "targeting", "field"),
    [
        (GradualRollout("maybe", 10), None, "definition.rollout.variant"),
        (GradualRollout("on", 10, "nope"), None, "definition.rollout.otherwise_variant"),
        (GradualRollout("", 10), None, "definition.rollout.variant"),
        (GradualRollout("on", 10), {"if": [True, "on", "off"]}, "definition.rollout"),
        (GradualRollout("off", 10), None, "definition.rollout.otherwise_variant"),
    ],
)
def test_bad_structured_rollouts_name_the_field(rollout: GradualRollout, targeting: Any, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        build_definition(
            "beta",
            state=None,
            variants={"on": True, "off": False},
            default_variant="off",
            targeting=targeting,
            metadata=None,
            rollout=rollout,
        )
    assert caught.value.metadata["field"] == field


def test_murmur3_v3_splits_exactly_as_flagds_own_fractional() -> None:
    # The oracle: OpenFeature's flagd-core (what its providers evaluate in-process), written by
    # others; the shorthand hashes [flagKey, targetingKey], an explicit value any JSON value.
    from openfeature.contrib.tools.flagd.core.targeting.custom_ops import fractional as flagds_fractional

    buckets = [["red", 10], ["green", 25], ["blue", 65]]
    flags = flag_set(
        {
            "shorthand": {"variants": {c: c for c in ("red", "green", "blue")}, "defaultVariant": "red",
                          "targeting": {"fractional": buckets}},
            "by-age": {"variants": {c: c for c in ("red", "green", "blue")}, "defaultVariant": "red",
                       "targeting": {"fractional": [{"var": "age"}, *buckets]}},
        }
    )  # fmt: skip
    for i in range(3000):
        key = f"user-{i}"
        theirs = flagds_fractional({"targetingKey": key, "$flagd": {"flagKey": "shorthand"}}, *buckets)
        assert resolve(flags, "shorthand", {"targetingKey": key}).value == theirs, key
        age = i / 2 if i % 3 else float(i)  # integral floats hash as integers
        theirs = flagds_fractional({"targetingKey": key}, age, *buckets)
        assert resolve(flags, "by-age", {"targetingKey": key, "age": age}).value == theirs, (key, age)


# -- bounded rules -----------------------------------------------------------------------------------


def nested_all(levels: int, width: int) -> dict[str, Any]:
    """The shape that blocked the server: `all` over literal arrays, nested; width**levels runs."""
    rule: Any = {">=": [{"var": ""}, 0]}
    for level in range(levels):
        rule = {"all": [list(range(1000 * level, 1000 * level + width)), rule]}
    return {"if": [rule, "on", "off"]}


def test_a_nested_all_rule_of_2_8_kb_is_refused_when_stored() -> None:
    rule = nested_all(5, 90)
    assert 2_600 < len(json.dumps(rule)) < 3_000  # the 2.8 KB rule of the report
    with pytest.raises(InvalidArgument) as caught:
        FlagSet().parse("heavy", {"variants": {"on": True, "off": False}, "defaultVariant": "off", "targeting": rule})
    assert caught.value.metadata["field"] == "definition_json.targeting"
    assert caught.value.reason == "INVALID_ARGUMENT"


def test_too_many_nodes_are_refused_and_ordinary_large_rules_pass() -> None:
    variants = {"variants": {"on": True, "off": False}, "defaultVariant": "off"}
    many = {"or": [{"==": [{"var": "user"}, f"user-{i}"]} for i in range(1_000)]}
    with pytest.raises(InvalidArgument) as caught:
        FlagSet().parse("many", {**variants, "targeting": {"if": [many, "on", "off"]}})
    assert caught.value.metadata["field"] == "definition_json.targeting"
    # A long allow-list is one value, and iterating a short data array is cheap.
    allowed = {"in": [{"var": "user"}, [f"user-{i}" for i in range(5_000)]]}
    tags = {"some": [{"var": "tags"}, {"in": [{"var": ""}, ["beta", "staff"]]}]}
    flags = flag_set({"f": {**variants, "targeting": {"if": [{"or": [allowed, tags]}, "on", "off"]}}})
    assert resolve(flags, "f", {"user": "user-4999"}, ValueType.BOOLEAN).value is True
    assert resolve(flags, "f", {"user": "x", "tags": ["staff"]}, ValueType.BOOLEAN).value is True


def counting_compiler() -> tuple[RuleCompiler, list[int]]:
    runs = [0]

    def tick(args: list[Any], data: Any, env: Environment) -> Any:
        runs[0] += 1
        return True

    return RuleCompiler(custom={"tick": tick}), runs


def test_a_stored_rule_past_the_bounds_stops_after_bounded_work() -> None:
    # Rules stored before the bound compile as they are; evaluating one stops early.
    compiler, runs = counting_compiler()
    heavy = {"all": [list(range(90)), {"all": [list(range(90)), {"all": [list(range(90)), {"tick": []}]}]}]}
    evaluator = compiler.compile(heavy)
    env = Environment()
    with pytest.raises(EvaluationTooCostly):
        evaluator({}, env)
    assert runs[0] <= MAX_EVALUATION_STEPS  # 729,000 before the bound

    definition = FlagDefinition(
        key="legacy", state=FlagState.ENABLED, variants={"on": True, "off": False}, default_variant="off",
        targeting=nested_all(5, 90), metadata={},
    )  # fmt: skip
    resolution = FlagSet.build([definition], groups=[]).resolve("legacy", ValueType.BOOLEAN, {})
    assert (resolution.reason, resolution.error_code) == (Reason.ERROR, ErrorCode.GENERAL)


@pytest.mark.parametrize(
    ("rule", "context"),
    [
        # Each array is data: the stored rule looks cheap, the context makes it quadratic.
        (
            {"some": [{"var": "a"}, {"some": [{"var": "b"}, {"tick": []}]}]},
            {"a": list(range(3_000)), "b": list(range(3_000))},
        ),
        # An accumulator that doubles each step.
        (
            {"reduce": [{"var": "a"}, {"merge": [{"var": "accumulator"}, {"var": "accumulator"}, {"tick": []}]}, []]},
            {"a": list(range(64))},
        ),
    ],
)
def test_data_cannot_make_an_evaluation_unbounded(rule: dict[str, Any], context: dict[str, Any]) -> None:
    compiler, runs = counting_compiler()
    evaluator = compiler.compile(rule)
    env = Environment(context=context)
    with pytest.raises(EvaluationTooCostly):
        evaluator(context, env)
    assert runs[0] <= MAX_EVALUATION_STEPS


def test_a_group_change_that_makes_a_flag_too_costly_is_refused() -> None:
    flags = flag_set(
        {"f": {"variants": {"on": True, "off": False}, "defaultVariant": "off",
               "targeting": {"if": [{"all": [list(range(50)), {"$ref": "g"}]}, "on", "off"]}}},
        groups={"g": {"==": [1, 1]}},
    )  # fmt: skip
    heavy = json.dumps({"all": [list(range(50)), {"all": [list(range(50)), {"==": [1, 1]}]}]})
    with pytest.raises(InvalidArgument) as caught:
        flags.put_group(flags.parse_group("g", heavy))
    assert caught.value.metadata["field"] == "rule_json"
