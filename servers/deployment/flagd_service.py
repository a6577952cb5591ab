"""flagd's own contracts over the deployment server's flags, so OpenFeature's flagd providers work unchanged.

`flagd.evaluation.v1.Service` and `v2` (what current providers call; the same answers, value
and variant optional, no ResolveAll) answer as flagd does in RPC mode: a value with a reason string
and variant, or a gRPC error whose code the providers map to an OpenFeature error (NOT_FOUND,
INVALID_ARGUMENT for a type mismatch, DATA_LOSS for a parse error). Its EventStream sends
`provider_ready`, `configuration_change` with the changed flag keys, and `keep_alive`.
`flagd.sync.v1.FlagSyncService` hands in-process providers the whole configuration as flagd
JSON (`flags` and `$evaluators`) on connect and after every change. Both read the same
`FlagFeed` as FlagService: no store access per evaluation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import grpc
from flagd.evaluation.v1 import evaluation_pb2 as evaluation
from flagd.sync.v1 import sync_pb2 as sync
from flagd.sync.v1 import sync_pb2_grpc as sync_grpc
from google.protobuf.message import Message

from servers.deployment.flag_feed import FlagFeed
from servers.deployment.flag_messages import json_of, struct_of
from servers.deployment.flagset import ErrorCode, FlagChange, FlagSet, Reason, Resolution, ValueType

ERROR_STATUS = {
    ErrorCode.FLAG_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.TYPE_MISMATCH: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.PARSE_ERROR: grpc.StatusCode.DATA_LOSS,
    ErrorCode.TARGETING_KEY_MISSING: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.INVALID_CONTEXT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.GENERAL: grpc.StatusCode.UNKNOWN,
}
"""The status flagd answers for each OpenFeature error code (its providers map them back)."""

CHANGE_TYPES = {"CREATED": "write", "UPDATED": "update", "DELETED": "delete"}
"""flagd's names for what happened to a flag."""


def flagd_configuration(flags: FlagSet) -> str:
    """The whole set as flagd JSON: every flag's definition, and the target groups as `$evaluators`."""
    keys = flags.keys()  # a FlagSet is not a mapping: keys() lists its flags
    document: dict[str, Any] = {"flags": {key: flags.get(key).to_document() for key in keys}}
    groups = {name: flags.group(name).rule for name in flags.group_names()}
    if groups:
        document["$evaluators"] = groups
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def changed_flags(changes: list[FlagChange]) -> dict[str, Any]:
    """The `data` of a `configuration_change` event: {"flags": {key: {"type": ...}}}."""
    flags = {
        change.subject.removeprefix("flags/"): {"type": CHANGE_TYPES[change.change_type.value]}
        for change in changes
        if change.subject.startswith("flags/")
    }
    return {"flags": flags}


class FlagdEvaluationServicer:
    """`flagd.evaluation.v1.Service` or `v2.Service`: flag evaluation as flagd answers it in RPC mode."""

    def __init__(self, feed: FlagFeed, keepalive_seconds: float, messages: ModuleType = evaluation) -> None:
        """`messages` is the generated `evaluation_pb2` of the version served (v1 by default)."""
        self.feed = feed
        self.keepalive_seconds = keepalive_seconds
        self.messages = messages

    async def _resolve(self, request: Any, value_type: ValueType, context: Any) -> Resolution:
        resolution = self.feed.flags.resolve(request.flag_key, value_type, json_of(request.context, "context"))
        if resolution.reason is Reason.DISABLED:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"FLAG_DISABLED: flag {request.flag_key!r} is disabled")
        if resolution.error_code is not None:
            await context.abort(
                ERROR_STATUS[resolution.error_code], f"{resolution.error_code.value}: {resolution.error_message}"
            )
        return resolution

    def _answer(self, name: str, value: Any, resolution: Resolution) -> Message:
        response: Message = getattr(self.messages, name)(value=value, **self._fields(resolution))
        return response

    @staticmethod
    def _fields(resolution: Resolution) -> dict[str, Any]:
        return {
            "reason": resolution.reason.value,
            "variant": resolution.variant,
            "metadata": struct_of(resolution.metadata),
        }

    async def ResolveBoolean(self, request: Any, context: Any) -> Message:
        """A boolean flag."""
        resolution = await self._resolve(request, ValueType.BOOLEAN, context)
        return self._answer("ResolveBooleanResponse", bool(resolution.value), resolution)

    async def ResolveString(self, request: Any, context: Any) -> Message:
        """A string flag."""
        resolution = await self._resolve(request, ValueType.STRING, context)
        return self._answer("ResolveStringResponse", resolution.value, resolution)

    async def ResolveInt(self, request: Any, context: Any) -> Message:
        """An integer flag."""
        resolution = await self._resolve(request, ValueType.INTEGER, context)
        return self._answer("ResolveIntResponse", resolution.value, resolution)

    async def ResolveFloat(self, request: Any, context: Any) -> Message:
        """A float flag."""
        resolution = await self._resolve(request, ValueType.FLOAT, context)
        return self._answer("ResolveFloatResponse", resolution.value, resolution)

    async def ResolveObject(self, request: Any, context: Any) -> Message:
        """An object flag."""
        resolution = await self._resolve(request, ValueType.OBJECT, context)
        return self._answer("ResolveObjectResponse", struct_of(resolution.value), resolution)

    async def ResolveAll(self, request: Any, context: Any) -> Message:
        """Every enabled flag that resolves, in its own type."""
        response: Any = self.messages.ResolveAllResponse()
        for key, resolution in self.feed.flags.resolve_all(json_of(request.context, "context")).items():
            flag = response.flags[key]
            flag.reason, flag.variant = resolution.reason.value, resolution.variant
            flag.metadata.CopyFrom(struct_of(resolution.metadata))
            value = resolution.value
            if isinstance(value, bool):
                flag.bool_value = value
            elif isinstance(value, str):
                flag.string_value = value
            elif isinstance(value, int | float):
                flag.double_value = float(value)
            else:
                flag.object_value.CopyFrom(struct_of(value))
        answer: Message = response
        return answer

    async def EventStream(self, request: Any, context: Any) -> AsyncIterator[Message]:
        """`provider_ready`, then `configuration_change` per change, `keep_alive` while idle."""
        queue = self.feed.subscribe()
        try:
            yield self.messages.EventStreamResponse(type="provider_ready")
            while True:
                try:
                    changes = await asyncio.wait_for(queue.get(), self.keepalive_seconds)
                except TimeoutError:
                    yield self.messages.EventStreamResponse(type="keep_alive")
                    continue
                yield self.messages.EventStreamResponse(
                    type="configuration_change", data=struct_of(changed_flags(changes))
                )
        finally:
            self.feed.unsubscribe(queue)


class FlagdSyncServicer(sync_grpc.FlagSyncServiceServicer):
    """`flagd.sync.v1.FlagSyncService`: the whole configuration for in-process providers."""

    def __init__(self, feed: FlagFeed) -> None:
        self.feed = feed

    async def SyncFlags(self, request: sync.SyncFlagsRequest, context: Any) -> AsyncIterator[sync.SyncFlagsResponse]:
        """The configuration now, then again after every change."""
        queue = self.feed.subscribe()
        try:
            yield sync.SyncFlagsResponse(flag_configuration=flagd_configuration(self.feed.flags))
            while True:
                await queue.get()
                while not queue.empty():  # several changes in a row: one configuration covers them
                    queue.get_nowait()
                yield sync.SyncFlagsResponse(flag_configuration=flagd_configuration(self.feed.flags))
        finally:
            self.feed.unsubscribe(queue)

    async def FetchAllFlags(self, request: sync.FetchAllFlagsRequest, context: Any) -> sync.FetchAllFlagsResponse:
        """The configuration now."""
        return sync.FetchAllFlagsResponse(flag_configuration=flagd_configuration(self.feed.flags))

    async def GetMetadata(self, request: sync.GetMetadataRequest, context: Any) -> sync.GetMetadataResponse:
        """Metadata of the flag source (deprecated by flagd; kept for older providers)."""
        return sync.GetMetadataResponse(metadata=struct_of({"source": "shieldx-deployment"}))
