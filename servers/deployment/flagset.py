"""Flag evaluation (flagd semantics and OpenFeature reasons) over an immutable set of flags,
and the audit entries and change events every change of the set produces.

A `FlagSet` is a snapshot: changing it returns a new set, so the service can swap the set it
serves in one assignment while evaluations in flight finish on the old one. Resolving a
static flag is a dictionary lookup returning a resolution computed when the flag was stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from servers.deployment.flags import (
    EMPTY_METADATA,
    FlagDefinition,
    FlagKind,
    FlagState,
    TargetGroup,
    compile_definition,
    parse_definition,
    parse_target_group,
)
from servers.deployment.jsonlogic import Evaluator, OperationFailed
from servers.deployment.jsvalues import is_number, js_string, strict_equals
from servers.deployment.targeting import FlagEnvironment, referenced_groups
from servers.mesh.errors import FailedPrecondition, InvalidArgument, NotFound

_INT64 = 2**63


class ValueType(StrEnum):
    """The type a caller asks for (one per Resolve RPC)."""

    BOOLEAN = "BOOLEAN"
    STRING = "STRING"
    INTEGER = "INTEGER"
    FLOAT = "FLOAT"
    OBJECT = "OBJECT"


class Reason(StrEnum):
    """Why a flag resolved to its value (OpenFeature)."""

    STATIC = "STATIC"
    DEFAULT = "DEFAULT"
    TARGETING_MATCH = "TARGETING_MATCH"
    SPLIT = "SPLIT"
    DISABLED = "DISABLED"
    ERROR = "ERROR"


class ErrorCode(StrEnum):
    """Why a resolution failed (OpenFeature)."""

    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    PARSE_ERROR = "PARSE_ERROR"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    INVALID_CONTEXT = "INVALID_CONTEXT"
    GENERAL = "GENERAL"


class ChangeType(StrEnum):
    """What happened to a flag or target group."""

    CREATED = "CREATED"
    UPDATED = "UPDATED"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class Resolution:
    """The answer to one Resolve call. With reason ERROR, value is None and the caller's
    default applies."""

    value: Any
    """The value, converted to the requested type; None on error."""
    variant: str
    """The chosen variant's name; empty on error."""
    reason: Reason
    """Why."""
    metadata: Mapping[str, Any]
    """The flag's metadata."""
    error_code: ErrorCode | None = None
    """With reason ERROR: what went wrong."""
    error_message: str = ""
    """With reason ERROR: a sentence about it."""


@dataclass(frozen=True)
class FlagChange:
    """One item of a CONFIGURATION_CHANGE event."""

    subject: str
    """`flags/{key}` or `target-groups/{name}`."""
    change_type: ChangeType
    """What happened."""


@dataclass(frozen=True)
class AuditEntry:
    """One audited change; the store adds its sequence number."""

    subject: str
    """`flags/{key}` or `target-groups/{name}`."""
    change_type: ChangeType
    """What happened."""
    actor: str
    """Who did it."""
    time: datetime
    """When."""
    before_json: str
    """Canonical JSON before; empty on create."""
    after_json: str
    """Canonical JSON after; empty on delete."""
    comment: str = ""
    """The comment given with the change."""


def flag_subject(key: str) -> str:
    """Audit / event subject of a flag."""
    return f"flags/{key}"


def group_subject(name: str) -> str:
    """Audit / event subject of a target group."""
    return f"target-groups/{name}"


def _error(code: ErrorCode, message: str, metadata: Mapping[str, Any] = EMPTY_METADATA) -> Resolution:
    return Resolution(None, "", Reason.ERROR, metadata, code, message)


_MISMATCH = object()


def _convert(value: Any, value_type: ValueType) -> Any:
    """`value` as `value_type`, or `_MISMATCH`."""
    if value_type is ValueType.BOOLEAN:
        return value if isinstance(value, bool) else _MISMATCH
    if value_type is ValueType.STRING:
        return value if isinstance(value, str) else _MISMATCH
    if value_type is ValueType.OBJECT:
        return value if isinstance(value, Mapping) else _MISMATCH
    if not is_number(value):
        return _MISMATCH
    if value_type is ValueType.FLOAT:
        return float(value)
    if value != int(value) or not -_INT64 <= int(value) < _INT64:
        return _MISMATCH
    return int(value)


_NATURAL_TYPE = {
    FlagKind.BOOLEAN: ValueType.BOOLEAN,
    FlagKind.STRING: ValueType.STRING,
    FlagKind.NUMBER: ValueType.FLOAT,
    FlagKind.OBJECT: ValueType.OBJECT,
}


class CompiledFlag:
    """A flag ready to resolve: converted variant values and precomputed static answers."""

    __slots__ = ("_values", "bucketing", "definition", "error", "evaluator", "metadata", "natural_type", "static")

    def __init__(self, definition: FlagDefinition, evaluator: Evaluator | None, error: str | None = None) -> None:
        self.definition = definition
        self.evaluator = evaluator
        self.error = error
        self.metadata: Mapping[str, Any] = MappingProxyType(dict(definition.metadata))
        self.natural_type = _NATURAL_TYPE[definition.kind]
        self.bucketing = definition.bucketing
        self._values = {
            value_type: {name: _convert(value, value_type) for name, value in definition.variants.items()}
            for value_type in ValueType
        }
        self.static: dict[ValueType, Resolution] = {}
        if error is not None:
            self.static = {t: _error(ErrorCode.PARSE_ERROR, error, self.metadata) for t in ValueType}
        elif definition.state is FlagState.DISABLED:
            self.static = {t: self.answer(t, definition.default_variant, Reason.DISABLED) for t in ValueType}
        elif evaluator is None:
            self.static = {t: self.answer(t, definition.default_variant, Reason.STATIC) for t in ValueType}

    def answer(self, value_type: ValueType, variant: str, reason: Reason) -> Resolution:
        """The resolution serving `variant`, or TYPE_MISMATCH if its value is not `value_type`."""
        value = self._values[value_type].get(variant, _MISMATCH)
        if value is _MISMATCH:
            kind = self.definition.kind.value.lower()
            return _error(ErrorCode.TYPE_MISMATCH, f"flag is {kind}, not {value_type.value.lower()}", self.metadata)
        return Resolution(value, variant, reason, self.metadata)

    def resolve(self, value_type: ValueType, context: Any, now: float | None) -> Resolution:
        """Resolve for `context` (a JSON object) at unix time `now`."""
        static = self.static.get(value_type)
        if static is not None:
            return static
        if context is None:
            context = {}
        elif not isinstance(context, Mapping):
            return _error(ErrorCode.INVALID_CONTEXT, "the context must be an object", self.metadata)
        data = context if type(context) is dict else dict(context)
        env = FlagEnvironment(self.definition.key, int(time.time() if now is None else now), data, self.bucketing)
        try:
            result = self.evaluator(data, env)  # type: ignore[misc]
        except OperationFailed:
            result = None
        except (ArithmeticError, ValueError, TypeError, RecursionError) as exc:
            return _error(ErrorCode.GENERAL, f"targeting failed: {exc}", self.metadata)
        if result is None:
            return self.answer(value_type, self.definition.default_variant, Reason.DEFAULT)
        variant = _variant_name(result)
        if variant is None or variant not in self.definition.variants:
            return _error(ErrorCode.GENERAL, f"targeting returned {js_string(result)!r}, not a variant", self.metadata)
        split = any(strict_equals(result, chosen) for chosen in env.splits)
        return self.answer(value_type, variant, Reason.SPLIT if split else Reason.TARGETING_MATCH)


def _variant_name(result: Any) -> str | None:
    if isinstance(result, str):
        return result
    if isinstance(result, bool) or is_number(result):
        return js_string(result)
    return None


def compile_flag(definition: FlagDefinition, groups: Mapping[str, TargetGroup]) -> CompiledFlag:
    """Compile a stored definition; a definition that no longer compiles resolves to PARSE_ERROR."""
    try:
        return CompiledFlag(definition, compile_definition(definition, groups))
    except InvalidArgument as exc:
        return CompiledFlag(definition, None, error=f"stored definition does not compile: {exc.message}")


class FlagSet:
    """An immutable snapshot of all flags and target groups."""

    __slots__ = ("_flags", "_groups")

    def __init__(
        self, flags: Mapping[str, CompiledFlag] | None = None, groups: Mapping[str, TargetGroup] | None = None
    ) -> None:
        self._flags: dict[str, CompiledFlag] = dict(flags or {})
        self._groups: dict[str, TargetGroup] = dict(groups or {})

    @classmethod
    def build(cls, definitions: Iterable[FlagDefinition], groups: Iterable[TargetGroup] = ()) -> FlagSet:
        """A set from stored definitions and groups (as loaded by the store)."""
        group_map = {group.name: group for group in groups}
        return cls({d.key: compile_flag(d, group_map) for d in definitions}, group_map)

    # -- reading ---------------------------------------------------------------------------------

    def get(self, key: str) -> FlagDefinition:
        """The definition of flag `key`; NotFound otherwise."""
        flag = self._flags.get(key)
        if flag is None:
            raise NotFound("flag", key, reason="FLAG_NOT_FOUND")
        return flag.definition

    def keys(self) -> list[str]:
        """All flag keys, sorted."""
        return sorted(self._flags)

    def group(self, name: str) -> TargetGroup:
        """Target group `name`; NotFound otherwise."""
        found = self._groups.get(name)
        if found is None:
            raise NotFound("target group", name, reason="TARGET_GROUP_NOT_FOUND")
        return found

    def group_names(self) -> list[str]:
        """All target group names, sorted."""
        return sorted(self._groups)

    def users_of(self, group: str) -> list[str]:
        """Keys of the flags whose targeting references `group` (directly or through groups)."""
        return sorted(key for key, flag in self._flags.items() if group in self._closure(flag.definition.target_groups))

    def _closure(self, names: frozenset[str]) -> set[str]:
        seen: set[str] = set()
        pending = list(names)
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            group = self._groups.get(name)
            if group is not None:
                pending.extend(referenced_groups(group.rule))
        return seen

    # -- resolving -------------------------------------------------------------------------------

    def resolve(self, key: str, value_type: ValueType, context: Any = None, now: float | None = None) -> Resolution:
        """Resolve flag `key` as `value_type` for `context`. Never raises: failures are ERROR."""
        flag = self._flags.get(key)
        if flag is None:
            return _error(ErrorCode.FLAG_NOT_FOUND, f"no flag {key!r}")
        return flag.resolve(value_type, context, now)

    def resolve_all(self, context: Any = None, now: float | None = None) -> dict[str, Resolution]:
        """Every enabled flag resolved in its own type; flags that fail are left out (as flagd)."""
        resolved: dict[str, Resolution] = {}
        for key, flag in self._flags.items():
            if flag.definition.state is FlagState.DISABLED:
                continue
            resolution = flag.resolve(flag.natural_type, context, now)
            if resolution.reason is not Reason.ERROR:
                resolved[key] = resolution
        return resolved

    # -- changing --------------------------------------------------------------------------------

    def parse(
        self, key: str, source: str | Mapping[str, Any], *, field_name: str = "definition_json"
    ) -> FlagDefinition:
        """Validate a definition for this set (its `$ref`s must name groups of this set)."""
        return parse_definition(key, source, self._groups, field_name=field_name)

    def parse_group(self, name: str, rule_json: str, *, field_name: str = "rule_json") -> TargetGroup:
        """Validate a target group for this set (its `$ref`s must name other groups of this set)."""
        return parse_target_group(name, rule_json, self._groups, field_name=field_name)

    def put_flag(self, definition: FlagDefinition) -> FlagSet:
        """The set with `definition` added or replacing the flag of the same key."""
        compiled = CompiledFlag(definition, compile_definition(definition, self._groups))
        return FlagSet({**self._flags, definition.key: compiled}, self._groups)

    def delete_flag(self, key: str) -> FlagSet:
        """The set without flag `key`; NotFound if absent."""
        self.get(key)
        return FlagSet({k: v for k, v in self._flags.items() if k != key}, self._groups)

    def put_group(self, group: TargetGroup) -> tuple[FlagSet, list[str]]:
        """The set with `group` stored, and the keys of the flags it changes.

        Every flag using the group is recompiled with it; if one no longer compiles the
        change is refused (InvalidArgument on `rule_json`, naming the flag).
        """
        groups = {**self._groups, group.name: group}
        trial = FlagSet(self._flags, groups)
        affected = trial.users_of(group.name)
        flags = dict(self._flags)
        for key in affected:
            definition = flags[key].definition
            try:
                flags[key] = CompiledFlag(definition, compile_definition(definition, groups, bounded=True))
            except InvalidArgument as exc:
                raise InvalidArgument("rule_json", f"breaks flag {key!r}: {exc.message}") from exc
        return FlagSet(flags, groups), affected

    def delete_group(self, name: str) -> FlagSet:
        """The set without group `name`; FailedPrecondition while a flag uses it."""
        self.group(name)
        users = self.users_of(name)
        if users:
            raise FailedPrecondition(
                f"target group {name!r} is used by {', '.join(users)}",
                reason="TARGET_GROUP_IN_USE",
                metadata={"flags": ",".join(users)},
            )
        return FlagSet(self._flags, {k: v for k, v in self._groups.items() if k != name})


def flag_audit(
    before: FlagDefinition | None, after: FlagDefinition | None, *, actor: str, at: datetime, comment: str = ""
) -> AuditEntry:
    """The audit entry of a flag change (create: before None; delete: after None)."""
    subject_of = after or before
    if subject_of is None:
        raise ValueError("an audited change has a before or an after")
    return AuditEntry(
        subject=flag_subject(subject_of.key),
        change_type=_change_type(before is None, after is None),
        actor=actor,
        time=at,
        before_json=before.to_json() if before else "",
        after_json=after.to_json() if after else "",
        comment=comment,
    )


def group_audit(
    before: TargetGroup | None, after: TargetGroup | None, *, actor: str, at: datetime, comment: str = ""
) -> AuditEntry:
    """The audit entry of a target group change."""
    subject_of = after or before
    if subject_of is None:
        raise ValueError("an audited change has a before or an after")
    return AuditEntry(
        subject=group_subject(subject_of.name),
        change_type=_change_type(before is None, after is None),
        actor=actor,
        time=at,
        before_json=before.to_json() if before else "",
        after_json=after.to_json() if after else "",
        comment=comment,
    )


def _change_type(created: bool, deleted: bool) -> ChangeType:
    if created:
        return ChangeType.CREATED
    return ChangeType.DELETED if deleted else ChangeType.UPDATED


def group_changes(group: str, change_type: ChangeType, affected_flags: Iterable[str]) -> list[FlagChange]:
    """The CONFIGURATION_CHANGE items of a group change: the group, then each flag it changed."""
    return [
        FlagChange(group_subject(group), change_type),
        *(FlagChange(flag_subject(key), ChangeType.UPDATED) for key in affected_flags),
    ]
