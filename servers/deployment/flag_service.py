"""FlagService: flagd-shaped resolution from memory, audited definition changes, and the event stream.

Resolve* never touch the store: they read the `FlagFeed`'s current set. Changes validate
against the flags and groups as stored (read in the writing transaction, so two replicas
never validate against different sets), write the definition and its audit entry (who =
the caller's subject) together with the AIP-155 answer, then refresh the feed, which
emits the CONFIGURATION_CHANGE events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from servers.deployment.flag_feed import FlagFeed
from servers.deployment.flag_messages import (
    any_flag,
    audit_message,
    change_message,
    definition_parts,
    flag_message,
    group_message,
    json_of,
    resolution_fields,
    struct_of,
)
from servers.deployment.flag_store import FlagStore, StoredFlag
from servers.deployment.flags import FlagDefinition, build_definition, check_name
from servers.deployment.flagset import ValueType, flag_audit, group_audit
from servers.deployment.requests import actor, check_filter, check_text
from servers.mesh import storage
from servers.mesh.errors import Conflict, InvalidArgument, NotFound
from servers.mesh.idempotency import RequestLedger
from servers.mesh.pagination import page_request
from shieldx.deployment.v1 import flags_pb2, flags_pb2_grpc

MAX_COMMENT_LENGTH = 1000
"""Longest audit comment."""


def _comment(text: str) -> str:
    return check_text(text, "comment", MAX_COMMENT_LENGTH)


def _expected(revision: int, stored: StoredFlag | None, key: str) -> None:
    """AIP-154-style optimistic update: `revision` 0 skips the check."""
    if revision < 0:
        raise InvalidArgument("expected_revision", "must not be negative")
    if revision == 0:
        return
    current = stored.revision if stored is not None else 0
    if current != revision:
        raise Conflict(
            f"flag {key} is at revision {current}, not {revision}",
            reason="REVISION_MISMATCH",
            metadata={"flag_key": key, "revision": str(current)},
        )


class FlagServicer(flags_pb2_grpc.FlagServiceServicer):
    """The FlagService RPCs."""

    def __init__(
        self,
        store: FlagStore,
        feed: FlagFeed,
        ledger: RequestLedger,
        clock: Callable[[], datetime],
        keepalive_seconds: float,
    ) -> None:
        self.store = store
        self.feed = feed
        self.ledger = ledger
        self.clock = clock
        self.keepalive_seconds = keepalive_seconds

    # -- resolving ---------------------------------------------------------------------------

    def _resolve(self, request: Any, value_type: ValueType) -> tuple[Any, dict[str, Any]]:
        resolution = self.feed.flags.resolve(request.flag_key, value_type, json_of(request.context, "context"))
        return resolution.value, resolution_fields(resolution)

    async def ResolveBoolean(
        self, request: flags_pb2.ResolveBooleanRequest, context: Any
    ) -> flags_pb2.ResolveBooleanResponse:
        """A boolean flag for a context."""
        value, fields = self._resolve(request, ValueType.BOOLEAN)
        return flags_pb2.ResolveBooleanResponse(value=bool(value), **fields)

    async def ResolveString(
        self, request: flags_pb2.ResolveStringRequest, context: Any
    ) -> flags_pb2.ResolveStringResponse:
        """A string flag for a context."""
        value, fields = self._resolve(request, ValueType.STRING)
        return flags_pb2.ResolveStringResponse(value=value or "", **fields)

    async def ResolveInt(self, request: flags_pb2.ResolveIntRequest, context: Any) -> flags_pb2.ResolveIntResponse:
        """An integer flag for a context."""
        value, fields = self._resolve(request, ValueType.INTEGER)
        return flags_pb2.ResolveIntResponse(value=value or 0, **fields)

    async def ResolveFloat(
        self, request: flags_pb2.ResolveFloatRequest, context: Any
    ) -> flags_pb2.ResolveFloatResponse:
        """A float flag for a context."""
        value, fields = self._resolve(request, ValueType.FLOAT)
        return flags_pb2.ResolveFloatResponse(value=value or 0.0, **fields)

    async def ResolveObject(
        self, request: flags_pb2.ResolveObjectRequest, context: Any
    ) -> flags_pb2.ResolveObjectResponse:
        """An object flag for a context."""
        value, fields = self._resolve(request, ValueType.OBJECT)
        return flags_pb2.ResolveObjectResponse(value=struct_of(value or {}), **fields)

    async def ResolveAll(self, request: flags_pb2.ResolveAllRequest, context: Any) -> flags_pb2.ResolveAllResponse:
        """Every enabled flag that resolves, in its own type."""
        resolved = self.feed.flags.resolve_all(json_of(request.context, "context"))
        response = flags_pb2.ResolveAllResponse()
        for key, resolution in resolved.items():
            response.flags[key].CopyFrom(any_flag(resolution))
        return response

    async def EventStream(
        self, request: flags_pb2.EventStreamRequest, context: Any
    ) -> AsyncIterator[flags_pb2.EventStreamResponse]:
        """PROVIDER_READY, then CONFIGURATION_CHANGE per change, KEEP_ALIVE while idle."""
        queue = self.feed.subscribe()
        try:
            yield flags_pb2.EventStreamResponse(type=flags_pb2.FLAG_EVENT_TYPE_PROVIDER_READY)
            while True:
                try:
                    changes = await asyncio.wait_for(queue.get(), self.keepalive_seconds)
                except TimeoutError:
                    yield flags_pb2.EventStreamResponse(type=flags_pb2.FLAG_EVENT_TYPE_KEEP_ALIVE)
                    continue
                yield flags_pb2.EventStreamResponse(
                    type=flags_pb2.FLAG_EVENT_TYPE_CONFIGURATION_CHANGE,
                    changes=[change_message(change) for change in changes],
                )
        finally:
            self.feed.unsubscribe(queue)

    # -- flags -------------------------------------------------------------------------------

    async def PutFlag(self, request: flags_pb2.PutFlagRequest, context: Any) -> flags_pb2.PutFlagResponse:
        """Create or replace a flag, audited; an identical definition changes nothing."""
        who, comment = actor(), _comment(request.comment)
        check_name(request.flag_key, "flag_key")
        source = request.WhichOneof("source")
        if source is None:
            raise InvalidArgument("definition_json", "give the definition as definition_json or definition")

        async def work(tx: storage.Transaction) -> flags_pb2.PutFlagResponse:
            flags = await self.store.flag_set(tx)
            previous = await self.store.flag(tx, request.flag_key)
            _expected(request.expected_revision, previous, request.flag_key)
            definition = self._parse(request, flags, source)
            if previous is not None and previous.definition.to_json() == definition.to_json():
                return flags_pb2.PutFlagResponse(flag=flag_message(previous), created=False)
            now = self.clock()
            stored = await self.store.put_flag(tx, definition, previous, actor=who, at=now)
            before = previous.definition if previous is not None else None
            await self.store.append_audit(tx, flag_audit(before, definition, actor=who, at=now, comment=comment))
            return flags_pb2.PutFlagResponse(flag=flag_message(stored), created=previous is None)

        response = await self.ledger.execute("PutFlag", request, flags_pb2.PutFlagResponse, work)
        await self.feed.refresh()
        return response

    @staticmethod
    def _parse(request: flags_pb2.PutFlagRequest, flags: Any, source: str) -> FlagDefinition:
        if source == "definition_json":
            parsed: FlagDefinition = flags.parse(request.flag_key, request.definition_json)
            return parsed
        groups = {name: flags.group(name) for name in flags.group_names()}
        return build_definition(request.flag_key, groups=groups, **definition_parts(request.definition))

    async def GetFlag(self, request: flags_pb2.GetFlagRequest, context: Any) -> flags_pb2.GetFlagResponse:
        """One flag as stored."""
        check_name(request.flag_key, "flag_key")
        async with self.store.database.transaction() as tx:
            stored = await self.store.flag(tx, request.flag_key)
        if stored is None:
            raise NotFound("flag", request.flag_key, reason="FLAG_NOT_FOUND")
        return flags_pb2.GetFlagResponse(flag=flag_message(stored))

    async def ListFlags(self, request: flags_pb2.ListFlagsRequest, context: Any) -> flags_pb2.ListFlagsResponse:
        """Flags by key."""
        page = page_request(request.page_size, request.page_token)
        async with self.store.database.transaction() as tx:
            found, more = await self.store.list_flags(tx, page)
        cursor = {"k": found[-1].definition.key} if found and more else None
        return flags_pb2.ListFlagsResponse(
            flags=[flag_message(f) for f in found], next_page_token=page.next_token(cursor)
        )

    async def DeleteFlag(self, request: flags_pb2.DeleteFlagRequest, context: Any) -> flags_pb2.DeleteFlagResponse:
        """Delete a flag, audited."""
        who, comment = actor(), _comment(request.comment)
        check_name(request.flag_key, "flag_key")

        async def work(tx: storage.Transaction) -> flags_pb2.DeleteFlagResponse:
            previous = await self.store.flag(tx, request.flag_key)
            _expected(request.expected_revision, previous, request.flag_key)
            if previous is None:
                raise NotFound("flag", request.flag_key, reason="FLAG_NOT_FOUND")
            await self.store.delete_flag(tx, request.flag_key)
            audit = flag_audit(previous.definition, None, actor=who, at=self.clock(), comment=comment)
            await self.store.append_audit(tx, audit)
            return flags_pb2.DeleteFlagResponse()

        response = await self.ledger.execute("DeleteFlag", request, flags_pb2.DeleteFlagResponse, work)
        await self.feed.refresh()
        return response

    async def ListFlagAudit(
        self, request: flags_pb2.ListFlagAuditRequest, context: Any
    ) -> flags_pb2.ListFlagAuditResponse:
        """The audit log, newest first."""
        check_filter(request.subject, "subject")
        page = page_request(request.page_size, request.page_token, {"subject": request.subject})
        async with self.store.database.transaction() as tx:
            found, more = await self.store.list_audit(tx, request.subject, page)
        cursor = {"q": found[-1].sequence} if found and more else None
        return flags_pb2.ListFlagAuditResponse(
            entries=[audit_message(r) for r in found], next_page_token=page.next_token(cursor)
        )

    # -- target groups -----------------------------------------------------------------------

    async def PutTargetGroup(
        self, request: flags_pb2.PutTargetGroupRequest, context: Any
    ) -> flags_pb2.PutTargetGroupResponse:
        """Create or replace a target group; refused if a flag using it would stop compiling."""
        who, comment = actor(), _comment(request.comment)

        async def work(tx: storage.Transaction) -> flags_pb2.PutTargetGroupResponse:
            flags = await self.store.flag_set(tx)
            group = flags.parse_group(request.name, request.rule_json)
            if not isinstance(group.rule, dict):
                raise InvalidArgument("rule_json", "must be a JSON object (one JSON Logic operation)")
            updated, affected = flags.put_group(group)
            previous = await self.store.group(tx, request.name)
            if previous is not None and previous.group.to_json() == group.to_json():
                return flags_pb2.PutTargetGroupResponse(target_group=group_message(previous, affected))
            now = self.clock()
            stored = await self.store.put_group(tx, group, previous, actor=who, at=now)
            before = previous.group if previous is not None else None
            audit = group_audit(before, group, actor=who, at=now, comment=comment)
            await self.store.append_audit(tx, audit, tuple(affected))
            return flags_pb2.PutTargetGroupResponse(target_group=group_message(stored, updated.users_of(group.name)))

        response = await self.ledger.execute("PutTargetGroup", request, flags_pb2.PutTargetGroupResponse, work)
        await self.feed.refresh()
        return response

    async def ListTargetGroups(
        self, request: flags_pb2.ListTargetGroupsRequest, context: Any
    ) -> flags_pb2.ListTargetGroupsResponse:
        """Target groups by name, each with the flags using it."""
        page = page_request(request.page_size, request.page_token)
        async with self.store.database.transaction() as tx:
            found, more = await self.store.list_groups(tx, page)
            flags = await self.store.flag_set(tx)
        cursor = {"n": found[-1].group.name} if found and more else None
        return flags_pb2.ListTargetGroupsResponse(
            target_groups=[group_message(g, flags.users_of(g.group.name)) for g in found],
            next_page_token=page.next_token(cursor),
        )

    async def DeleteTargetGroup(
        self, request: flags_pb2.DeleteTargetGroupRequest, context: Any
    ) -> flags_pb2.DeleteTargetGroupResponse:
        """Delete a target group; refused while a flag uses it."""
        who, comment = actor(), _comment(request.comment)
        check_name(request.name, "name")

        async def work(tx: storage.Transaction) -> flags_pb2.DeleteTargetGroupResponse:
            flags = await self.store.flag_set(tx)
            flags.delete_group(request.name)
            previous = flags.group(request.name)
            await self.store.delete_group(tx, request.name)
            await self.store.append_audit(tx, group_audit(previous, None, actor=who, at=self.clock(), comment=comment))
            return flags_pb2.DeleteTargetGroupResponse()

        response = await self.ledger.execute("DeleteTargetGroup", request, flags_pb2.DeleteTargetGroupResponse, work)
        await self.feed.refresh()
        return response
