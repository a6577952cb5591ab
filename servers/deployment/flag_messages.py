"""Flags, resolutions, target groups and audit entries as `shieldx.deployment.v1` messages, and back.

Contexts and object values travel as `google.protobuf.Struct`, whose numbers are doubles, as
flagd's JSON numbers are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from servers.deployment.flag_store import AuditRecord, StoredFlag, StoredGroup
from servers.deployment.flags import FlagDefinition, FlagState, GradualRollout
from servers.deployment.flagset import ChangeType, ErrorCode, FlagChange, Reason, Resolution
from servers.mesh.errors import InvalidArgument
from servers.mesh.timestamps import optional_timestamp
from shieldx.deployment.v1 import flags_pb2

REASONS = {
    Reason.STATIC: flags_pb2.RESOLUTION_REASON_STATIC,
    Reason.DEFAULT: flags_pb2.RESOLUTION_REASON_DEFAULT,
    Reason.TARGETING_MATCH: flags_pb2.RESOLUTION_REASON_TARGETING_MATCH,
    Reason.SPLIT: flags_pb2.RESOLUTION_REASON_SPLIT,
    Reason.DISABLED: flags_pb2.RESOLUTION_REASON_DISABLED,
    Reason.ERROR: flags_pb2.RESOLUTION_REASON_ERROR,
}
ERROR_CODES = {
    ErrorCode.FLAG_NOT_FOUND: flags_pb2.RESOLUTION_ERROR_FLAG_NOT_FOUND,
    ErrorCode.PARSE_ERROR: flags_pb2.RESOLUTION_ERROR_PARSE_ERROR,
    ErrorCode.TYPE_MISMATCH: flags_pb2.RESOLUTION_ERROR_TYPE_MISMATCH,
    ErrorCode.TARGETING_KEY_MISSING: flags_pb2.RESOLUTION_ERROR_TARGETING_KEY_MISSING,
    ErrorCode.INVALID_CONTEXT: flags_pb2.RESOLUTION_ERROR_INVALID_CONTEXT,
    ErrorCode.GENERAL: flags_pb2.RESOLUTION_ERROR_GENERAL,
}
CHANGE_TYPES = {
    ChangeType.CREATED: flags_pb2.FLAG_CHANGE_TYPE_CREATED,
    ChangeType.UPDATED: flags_pb2.FLAG_CHANGE_TYPE_UPDATED,
    ChangeType.DELETED: flags_pb2.FLAG_CHANGE_TYPE_DELETED,
}
STATE_NAMES = {
    flags_pb2.FLAG_STATE_UNSPECIFIED: None,
    flags_pb2.FLAG_STATE_ENABLED: "ENABLED",
    flags_pb2.FLAG_STATE_DISABLED: "DISABLED",
}


def struct_of(value: Mapping[str, Any]) -> struct_pb2.Struct:
    """A Struct holding a JSON object."""
    message = struct_pb2.Struct()
    message.update(value)
    return message


def json_of(message: struct_pb2.Struct | struct_pb2.Value, field: str) -> Any:
    """The JSON value of a Struct or Value (None for an empty Value); a number JSON cannot carry
    (NaN, infinity) is INVALID_ARGUMENT naming `field`."""
    try:
        return json_format.MessageToDict(message)
    except ValueError as error:
        raise InvalidArgument(field, "holds a number JSON cannot carry (NaN or infinity)") from error


def resolution_fields(resolution: Resolution) -> dict[str, Any]:
    """The fields every Resolve*Response shares."""
    fields: dict[str, Any] = {
        "reason": REASONS[resolution.reason],
        "variant": resolution.variant,
        "metadata": struct_of(resolution.metadata),
    }
    if resolution.error_code is not None:
        fields["error_code"] = ERROR_CODES[resolution.error_code]
        fields["error_message"] = resolution.error_message
    return fields


def any_flag(resolution: Resolution) -> flags_pb2.AnyFlag:
    """One ResolveAll entry, its value in the oneof that fits its type."""
    flag = flags_pb2.AnyFlag(
        reason=REASONS[resolution.reason], variant=resolution.variant, metadata=struct_of(resolution.metadata)
    )
    value = resolution.value
    if isinstance(value, bool):
        flag.bool_value = value
    elif isinstance(value, str):
        flag.string_value = value
    elif isinstance(value, int | float):
        flag.double_value = float(value)
    elif isinstance(value, Mapping):
        flag.object_value.CopyFrom(struct_of(value))
    return flag


def definition_message(definition: FlagDefinition) -> flags_pb2.FlagDefinition:
    """A definition in structured form (a rollout appears as its `fractional` targeting)."""
    message = flags_pb2.FlagDefinition(
        state=flags_pb2.FLAG_STATE_ENABLED if definition.state is FlagState.ENABLED else flags_pb2.FLAG_STATE_DISABLED,
        default_variant=definition.default_variant,
        metadata=struct_of(definition.metadata),
    )
    for name, value in definition.variants.items():
        json_format.ParseDict(value, message.variants[name])
    if definition.targeting is not None:
        message.targeting.CopyFrom(struct_of(definition.targeting))
    return message


def definition_parts(message: flags_pb2.FlagDefinition) -> dict[str, Any]:
    """The keyword arguments of `flags.build_definition` for a structured definition."""
    return {
        "state": STATE_NAMES.get(message.state, f"unknown state {message.state}"),
        "variants": {name: json_of(value, f"variants[{name}]") for name, value in message.variants.items()},
        "default_variant": message.default_variant,
        "targeting": json_of(message.targeting, "targeting") if message.HasField("targeting") else None,
        "metadata": json_of(message.metadata, "metadata") if message.HasField("metadata") else None,
        "rollout": (
            GradualRollout(message.rollout.variant, message.rollout.percentage, message.rollout.otherwise_variant)
            if message.HasField("rollout")
            else None
        ),
    }


def flag_message(stored: StoredFlag) -> flags_pb2.Flag:
    """A stored flag."""
    return flags_pb2.Flag(
        key=stored.definition.key,
        definition=definition_message(stored.definition),
        definition_json=stored.definition.to_json(),
        revision=stored.revision,
        create_time=optional_timestamp(stored.created_at),
        update_time=optional_timestamp(stored.updated_at),
        update_actor=stored.update_actor,
    )


def group_message(stored: StoredGroup, used_by: list[str]) -> flags_pb2.TargetGroup:
    """A stored target group and the flags using it."""
    return flags_pb2.TargetGroup(
        name=stored.group.name,
        rule=struct_of(stored.group.rule),
        revision=stored.revision,
        update_time=optional_timestamp(stored.updated_at),
        used_by=used_by,
    )


def audit_message(record: AuditRecord) -> flags_pb2.FlagAuditEntry:
    """One audit log entry."""
    entry = record.entry
    return flags_pb2.FlagAuditEntry(
        sequence=record.sequence,
        subject=entry.subject,
        change_type=CHANGE_TYPES[entry.change_type],
        actor=entry.actor,
        time=optional_timestamp(entry.time),
        before_json=entry.before_json,
        after_json=entry.after_json,
        comment=entry.comment,
    )


def change_message(change: FlagChange) -> flags_pb2.FlagChange:
    """One item of a CONFIGURATION_CHANGE event."""
    return flags_pb2.FlagChange(subject=change.subject, change_type=CHANGE_TYPES[change.change_type])
