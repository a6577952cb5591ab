"""Feature flag definitions in flagd's format: parsing, validation and compilation.

A definition has a state, variants (all of one type), a default variant, optional targeting
(JSON Logic with flagd's operations, see `targeting`) and metadata. The metadata key
`bucketing` records which hash → bucket algorithm its `fractional` splits use; it is filled
in with today's default when a flag is stored, so a later default never re-buckets it.

Every validation error is an `InvalidArgument` naming the offending field as the request
spells it, e.g. `definition_json.variants.on` or `definition.targeting.if[1].fractional[2][0]`.
Evaluation lives in `flagset`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from clients.bucketing import DEFAULT_BUCKETING, BucketingAlgorithm
from servers.deployment.jsonlogic import Evaluator, RuleError, check_rule_cost
from servers.deployment.jsvalues import is_number
from servers.deployment.targeting import compile_targeting, referenced_groups, resolve_refs
from servers.mesh.errors import InvalidArgument

MAX_DEFINITION_BYTES = 256 * 1024
"""Largest flag definition accepted, as JSON."""
MAX_VARIANTS = 100
"""Most variants a flag may have."""
MAX_NAME_LENGTH = 128
"""Longest flag key, variant name, target group name or metadata key."""
MAX_VALUE_DEPTH = 32
"""Deepest nesting of an object variant."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_DOCUMENT_KEYS = frozenset({"state", "variants", "defaultVariant", "targeting", "metadata"})
EMPTY_METADATA: Mapping[str, Any] = MappingProxyType({})


class FlagState(StrEnum):
    """Whether a flag is served (flagd `state`)."""

    ENABLED = "ENABLED"
    DISABLED = "DISABLED"


class FlagKind(StrEnum):
    """The one type all variants of a flag share."""

    BOOLEAN = "BOOLEAN"
    STRING = "STRING"
    NUMBER = "NUMBER"
    OBJECT = "OBJECT"


@dataclass(frozen=True)
class FlagDefinition:
    """A validated flag definition; `targeting` is None for a static flag."""

    key: str
    """The flag's key."""
    state: FlagState
    """ENABLED or DISABLED."""
    variants: Mapping[str, Any]
    """Variant name → value (JSON)."""
    default_variant: str
    """The variant served without targeting, when targeting yields null, and when disabled."""
    targeting: Mapping[str, Any] | None
    """JSON Logic returning a variant name, with `$ref`s unresolved; None for a static flag."""
    metadata: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    """Flag metadata; always carries `bucketing`."""

    @property
    def kind(self) -> FlagKind:
        """The variants' type."""
        return _kind_of(next(iter(self.variants.values())))

    @property
    def bucketing(self) -> BucketingAlgorithm:
        """The `fractional` bucketing algorithm of this flag."""
        return BucketingAlgorithm(str(self.metadata.get("bucketing", DEFAULT_BUCKETING)))

    @property
    def target_groups(self) -> frozenset[str]:
        """Names of the target groups its targeting references."""
        return referenced_groups(self.targeting) if self.targeting else frozenset()

    def to_document(self) -> dict[str, Any]:
        """The definition as a flagd JSON object."""
        document: dict[str, Any] = {
            "state": self.state.value,
            "variants": dict(self.variants),
            "defaultVariant": self.default_variant,
        }
        if self.targeting:
            document["targeting"] = self.targeting
        document["metadata"] = dict(self.metadata)
        return document

    def to_json(self) -> str:
        """Canonical flagd JSON (sorted keys, no spaces): what is stored and audited."""
        return canonical_json(self.to_document())


@dataclass(frozen=True)
class TargetGroup:
    """A named reusable targeting rule (flagd `$evaluators`), referenced as `{"$ref": name}`."""

    name: str
    """Its name."""
    rule: Any
    """The JSON Logic rule."""

    def to_json(self) -> str:
        """Canonical JSON of the rule."""
        return canonical_json(self.rule)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal definitions have equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def check_name(value: str, field_name: str) -> str:
    """`value` if it is a valid flag key / group name, else InvalidArgument on `field_name`."""
    if not value:
        raise InvalidArgument(field_name, "is required")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(field_name, f"is longer than {MAX_NAME_LENGTH} characters")
    if not _NAME.match(value):
        raise InvalidArgument(field_name, "may hold letters, digits, '-', '_' and '.', starting with a letter or digit")
    return value


def load_json(text: str, field_name: str) -> Any:
    """Parse JSON text from a request field; InvalidArgument if it is not JSON or too large."""
    if len(text.encode()) > MAX_DEFINITION_BYTES:
        raise InvalidArgument(field_name, f"is larger than {MAX_DEFINITION_BYTES} bytes")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
        canonical_json(value)  # numbers too large for a double (1e400) parse as infinity
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(field_name, f"is not valid JSON ({exc})") from exc
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_definition(
    key: str,
    source: str | Mapping[str, Any],
    groups: Mapping[str, TargetGroup] | None = None,
    *,
    field_name: str = "definition_json",
) -> FlagDefinition:
    """Validate a flagd flag definition (JSON text or its parsed object) for flag `key`.

    `groups` are the target groups its `$ref`s may name. Raises InvalidArgument naming the
    field (`field_name` and the path inside the definition) of the first problem found.
    """
    check_name(key, "flag_key")
    document = load_json(source, field_name) if isinstance(source, str) else source
    if not isinstance(document, Mapping):
        raise InvalidArgument(field_name, "must be a JSON object")
    unknown = sorted(set(document) - _DOCUMENT_KEYS)
    if unknown:
        raise InvalidArgument(f"{field_name}.{unknown[0]}", f"is not a flag field; expected {sorted(_DOCUMENT_KEYS)}")
    return build_definition(
        key,
        state=document.get("state"),
        variants=document.get("variants"),
        default_variant=document.get("defaultVariant"),
        targeting=document.get("targeting"),
        metadata=document.get("metadata"),
        groups=groups,
        names=_FieldNames(field_name, "defaultVariant"),
    )


@dataclass(frozen=True)
class _FieldNames:
    root: str
    default_variant: str


def build_definition(
    key: str,
    *,
    state: Any,
    variants: Any,
    default_variant: Any,
    targeting: Any,
    metadata: Any,
    rollout: GradualRollout | None = None,
    groups: Mapping[str, TargetGroup] | None = None,
    names: _FieldNames | None = None,
) -> FlagDefinition:
    """Validate a definition given as parts (the structured `FlagDefinition` message's fields).

    A `rollout` stands in for targeting (it is stored as the equivalent `fractional` rule).
    Field names in errors are `definition.<field>` unless `names` says otherwise.
    """
    names = names or _FieldNames("definition", "default_variant")
    root = names.root
    check_name(key, "flag_key")
    parsed_variants = _check_variants(variants, f"{root}.variants")
    if not isinstance(default_variant, str) or not default_variant:
        raise InvalidArgument(f"{root}.{names.default_variant}", "is required and must name a variant")
    if default_variant not in parsed_variants:
        raise InvalidArgument(f"{root}.{names.default_variant}", f"{default_variant!r} is not one of the variants")
    if rollout is not None:
        if targeting:
            raise InvalidArgument(f"{root}.rollout", "set targeting or a rollout, not both")
        targeting = _rollout_targeting(rollout, parsed_variants, default_variant, root)
    definition = FlagDefinition(
        key=key,
        state=_check_state(state, f"{root}.state"),
        variants=parsed_variants,
        default_variant=default_variant,
        targeting=_check_targeting_shape(targeting, f"{root}.targeting"),
        metadata=_check_metadata(metadata, f"{root}.metadata"),
    )
    compile_definition(definition, groups or {}, f"{root}.targeting", bounded=True)
    return definition


def _check_state(state: Any, field_name: str) -> FlagState:
    if state in (None, "", "FLAG_STATE_UNSPECIFIED"):
        return FlagState.ENABLED
    if state in ("ENABLED", "FLAG_STATE_ENABLED"):
        return FlagState.ENABLED
    if state in ("DISABLED", "FLAG_STATE_DISABLED"):
        return FlagState.DISABLED
    raise InvalidArgument(field_name, "must be ENABLED or DISABLED")


def _kind_of(value: Any) -> FlagKind:
    if isinstance(value, bool):
        return FlagKind.BOOLEAN
    if isinstance(value, str):
        return FlagKind.STRING
    if is_number(value):
        return FlagKind.NUMBER
    return FlagKind.OBJECT


def _check_variants(variants: Any, field_name: str) -> Mapping[str, Any]:
    if not isinstance(variants, Mapping) or not variants:
        raise InvalidArgument(field_name, "must be an object with at least one variant")
    if len(variants) > MAX_VARIANTS:
        raise InvalidArgument(field_name, f"has more than {MAX_VARIANTS} variants")
    kinds: set[FlagKind] = set()
    for name, value in variants.items():
        variant_field = f"{field_name}.{name}"
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
            raise InvalidArgument(variant_field, f"a variant name is 1 to {MAX_NAME_LENGTH} characters")
        _check_value(value, variant_field, 0)
        kinds.add(_kind_of(value))
    if len(kinds) > 1:
        raise InvalidArgument(field_name, f"all variants must have one type, found {sorted(kinds)}")
    return MappingProxyType(dict(variants))


def _check_value(value: Any, field_name: str, depth: int) -> None:
    if depth > MAX_VALUE_DEPTH:
        raise InvalidArgument(field_name, f"is nested deeper than {MAX_VALUE_DEPTH} levels")
    if value is None:
        if depth == 0:
            raise InvalidArgument(field_name, "a variant value is a boolean, string, number or object, not null")
        return
    if isinstance(value, bool | str):
        return
    if is_number(value):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(field_name, "numbers must be finite")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgument(field_name, "object keys must be strings")
            _check_value(item, f"{field_name}.{key}", depth + 1)
        return
    if isinstance(value, list) and depth > 0:
        for i, item in enumerate(value):
            _check_value(item, f"{field_name}[{i}]", depth + 1)
        return
    raise InvalidArgument(field_name, "a variant value is a boolean, string, number or object")


def _check_targeting_shape(targeting: Any, field_name: str) -> Mapping[str, Any] | None:
    if targeting is None or targeting == {}:
        return None
    if not isinstance(targeting, Mapping):
        raise InvalidArgument(field_name, "must be a JSON Logic object")
    try:
        canonical_json(targeting)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidArgument(field_name, f"is not storable as JSON ({exc})") from exc
    return targeting


def _check_metadata(metadata: Any, field_name: str) -> Mapping[str, str | int | float | bool]:
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise InvalidArgument(field_name, "must be an object")
    checked: dict[str, str | int | float | bool] = {}
    for key, value in metadata.items():
        entry = f"{field_name}.{key}"
        if not isinstance(key, str) or not key or len(key) > MAX_NAME_LENGTH:
            raise InvalidArgument(entry, f"a metadata key is 1 to {MAX_NAME_LENGTH} characters")
        if not (isinstance(value, str | bool) or (is_number(value) and math.isfinite(value))):
            raise InvalidArgument(entry, "metadata values are strings, finite numbers or booleans")
        checked[key] = value
    bucketing = checked.setdefault("bucketing", DEFAULT_BUCKETING.value)
    if bucketing not in {algorithm.value for algorithm in BucketingAlgorithm}:
        raise InvalidArgument(
            f"{field_name}.bucketing", f"must be one of {sorted(a.value for a in BucketingAlgorithm)}"
        )
    return MappingProxyType(checked)


def compile_definition(
    definition: FlagDefinition,
    groups: Mapping[str, TargetGroup],
    field_name: str = "definition_json.targeting",
    *,
    bounded: bool = False,
) -> Evaluator | None:
    """The compiled targeting of `definition` (None if static), `$ref`s resolved from `groups`.

    `bounded` (a flag being stored) also refuses rules past the size and cost bounds
    (`check_rule_cost`); flags already stored compile as they are and are held to the
    evaluation bound when they run. Raises InvalidArgument on `field_name` + the path inside the rule.
    """
    if definition.targeting is None:
        return None
    rules = {name: group.rule for name, group in groups.items()}
    try:
        resolved = resolve_refs(definition.targeting, rules)
        if bounded:
            check_rule_cost(resolved)
        return compile_targeting(resolved, definition.variants, "")
    except RuleError as exc:
        where = f"{field_name}.{exc.path}" if exc.path else field_name
        raise InvalidArgument(where, exc.message) from exc


def parse_target_group(
    name: str, rule_json: str, groups: Mapping[str, TargetGroup] | None = None, *, field_name: str = "rule_json"
) -> TargetGroup:
    """Validate a target group: its name and a JSON Logic rule that compiles."""
    check_name(name, "name")
    rule = load_json(rule_json, field_name)
    if not isinstance(rule, Mapping | list | bool):
        raise InvalidArgument(field_name, "must be a JSON Logic rule")
    others = {key: group.rule for key, group in (groups or {}).items() if key != name}
    try:
        resolved = resolve_refs(rule, {**others, name: _self_reference_guard(name)})
        check_rule_cost(resolved)
        compile_targeting(resolved, None, "")
    except RuleError as exc:
        raise InvalidArgument(f"{field_name}.{exc.path}" if exc.path else field_name, exc.message) from exc
    return TargetGroup(name, rule)


def _self_reference_guard(name: str) -> Any:
    return {"$ref": name}


@dataclass(frozen=True)
class GradualRollout:
    """A share of targeting keys on one variant, the rest on another."""

    variant: str
    """The variant rolled out."""
    percentage: float
    """Share of targeting keys that get it, 0..100 with at most two decimals."""
    otherwise_variant: str = ""
    """The variant the others get; empty for the default variant."""


def _rollout_targeting(
    rollout: GradualRollout, variants: Mapping[str, Any], default_variant: str, root: str
) -> dict[str, Any]:
    for name, value in (("variant", rollout.variant), ("otherwise_variant", rollout.otherwise_variant)):
        if value and value not in variants:
            raise InvalidArgument(f"{root}.rollout.{name}", f"{value!r} is not one of the variants")
    if not rollout.variant:
        raise InvalidArgument(f"{root}.rollout.variant", "is required")
    return gradual_rollout_targeting(rollout.variant, rollout.percentage, rollout.otherwise_variant or default_variant)


def gradual_rollout_targeting(variant: str, percentage: float, otherwise: str) -> dict[str, Any]:
    """Targeting that serves `variant` to `percentage` % of targeting keys and `otherwise` to the rest.

    A flagd `fractional` on flag key + targeting key with weights in basis points, `variant`
    first: a key gets `variant` when its bucket is below the weight, so raising the
    percentage only ever adds keys to `variant`.
    """
    if not math.isfinite(percentage) or not 0 <= percentage <= 100:
        raise InvalidArgument("definition.rollout.percentage", "must be from 0 to 100")
    basis_points = round(percentage * 100)
    if abs(percentage * 100 - basis_points) > 1e-6:
        raise InvalidArgument("definition.rollout.percentage", "has more than two decimals")
    if variant == otherwise:
        raise InvalidArgument("definition.rollout.otherwise_variant", "must differ from the rolled-out variant")
    return {"fractional": [[variant, basis_points], [otherwise, 10000 - basis_points]]}
