"""Stored feature flags and target groups, with the audit log of every change to them.

Flags are kept as canonical flagd JSON, which is also what the audit log shows as before and
after. The audit log doubles as the change feed: its sequence numbers tell a server whether
its in-memory `FlagSet` is behind the store (changes made by another replica), and its
entries become the EventStream's CONFIGURATION_CHANGE items.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from servers.deployment.flags import FlagDefinition, FlagState, TargetGroup
from servers.deployment.flagset import AuditEntry, ChangeType, FlagSet
from servers.deployment.timestamps import epoch, moment
from servers.mesh import storage
from servers.mesh.errors import NotFound
from servers.mesh.pagination import PageRequest


@dataclass(frozen=True)
class StoredFlag:
    """A flag with its bookkeeping."""

    definition: FlagDefinition
    """The definition."""
    revision: int
    """Increases with every change."""
    created_at: datetime
    """When it was created."""
    updated_at: datetime
    """When it last changed."""
    update_actor: str
    """Who made the last change."""


@dataclass(frozen=True)
class StoredGroup:
    """A target group with its bookkeeping."""

    group: TargetGroup
    """The group."""
    revision: int
    """Increases with every change."""
    updated_at: datetime
    """When it last changed."""


@dataclass(frozen=True)
class AuditRecord:
    """An audit entry with its position in the log and the flags it recompiled."""

    sequence: int
    """Position in the log."""
    entry: AuditEntry
    """The change."""
    affected_flags: tuple[str, ...]
    """For a target group change: the flags using the group."""


def definition_from_json(key: str, text: str) -> FlagDefinition:
    """A stored definition, as it was validated when stored (compiled later, by `FlagSet.build`)."""
    document = json.loads(text)
    return FlagDefinition(
        key=key,
        state=FlagState(document["state"]),
        variants=MappingProxyType(dict(document["variants"])),
        default_variant=document["defaultVariant"],
        targeting=document.get("targeting"),
        metadata=MappingProxyType(dict(document.get("metadata") or {})),
    )


class FlagStore:
    """Flags, target groups and their audit log on one `Database`."""

    def __init__(self, database: storage.Database) -> None:
        self.database = database

    async def flag_set(self, tx: storage.Transaction) -> FlagSet:
        """All flags and groups as a `FlagSet` (definitions that no longer compile resolve to errors)."""
        groups = [stored.group for stored in await self.groups(tx)]
        rows = await tx.fetchall("SELECT flag_key, definition FROM flags ORDER BY flag_key")
        return FlagSet.build([definition_from_json(row["flag_key"], row["definition"]) for row in rows], groups)

    async def flag(self, tx: storage.Transaction, key: str) -> StoredFlag | None:
        """One flag, or None."""
        row = await tx.fetchone(f"SELECT {_FLAG_COLUMNS} FROM flags WHERE flag_key = ?", (key,))
        return _stored_flag(row) if row is not None else None

    async def list_flags(self, tx: storage.Transaction, page: PageRequest) -> tuple[list[StoredFlag], bool]:
        """A page of flags by key; True if more follow."""
        sql = f"SELECT {_FLAG_COLUMNS} FROM flags"
        params: list[Any] = []
        if page.cursor is not None:
            sql += " WHERE flag_key > ?"
            params.append(page.cursor["k"])
        rows = await tx.fetchall(sql + " ORDER BY flag_key LIMIT ?", [*params, page.size + 1])
        return [_stored_flag(row) for row in rows[: page.size]], len(rows) > page.size

    async def put_flag(
        self,
        tx: storage.Transaction,
        definition: FlagDefinition,
        previous: StoredFlag | None,
        *,
        actor: str,
        at: datetime,
    ) -> StoredFlag:
        """Create or replace a flag (`previous` is what the caller read in this transaction)."""
        if previous is None:
            await tx.execute(
                "INSERT INTO flags (flag_key, definition, revision, created_at, updated_at, update_actor)"
                " VALUES (?, ?, 1, ?, ?, ?)",
                (definition.key, definition.to_json(), epoch(at), epoch(at), actor),
            )
            return StoredFlag(definition, 1, at, at, actor)
        changed = await tx.execute(
            "UPDATE flags SET definition = ?, revision = ?, updated_at = ?, update_actor = ?"
            " WHERE flag_key = ? AND revision = ?",
            (definition.to_json(), previous.revision + 1, epoch(at), actor, definition.key, previous.revision),
        )
        if not changed:
            raise storage.TransientError(f"flag {definition.key} changed concurrently")
        return StoredFlag(definition, previous.revision + 1, previous.created_at, at, actor)

    async def delete_flag(self, tx: storage.Transaction, key: str) -> None:
        """Remove a flag; NotFound FLAG_NOT_FOUND if absent."""
        if not await tx.execute("DELETE FROM flags WHERE flag_key = ?", (key,)):
            raise NotFound("flag", key, reason="FLAG_NOT_FOUND")

    async def groups(self, tx: storage.Transaction) -> list[StoredGroup]:
        """Every target group, by name."""
        rows = await tx.fetchall("SELECT name, rule, revision, updated_at FROM target_groups ORDER BY name")
        return [_stored_group(row) for row in rows]

    async def list_groups(self, tx: storage.Transaction, page: PageRequest) -> tuple[list[StoredGroup], bool]:
        """A page of target groups by name; True if more follow."""
        sql = "SELECT name, rule, revision, updated_at FROM target_groups"
        params: list[Any] = []
        if page.cursor is not None:
            sql += " WHERE name > ?"
            params.append(page.cursor["n"])
        rows = await tx.fetchall(sql + " ORDER BY name LIMIT ?", [*params, page.size + 1])
        return [_stored_group(row) for row in rows[: page.size]], len(rows) > page.size

    async def group(self, tx: storage.Transaction, name: str) -> StoredGroup | None:
        """One target group, or None."""
        row = await tx.fetchone("SELECT name, rule, revision, updated_at FROM target_groups WHERE name = ?", (name,))
        return _stored_group(row) if row is not None else None

    async def put_group(
        self, tx: storage.Transaction, group: TargetGroup, previous: StoredGroup | None, *, actor: str, at: datetime
    ) -> StoredGroup:
        """Create or replace a target group."""
        if previous is None:
            await tx.execute(
                "INSERT INTO target_groups (name, rule, revision, updated_at, update_actor) VALUES (?, ?, 1, ?, ?)",
                (group.name, group.to_json(), epoch(at), actor),
            )
            return StoredGroup(group, 1, at)
        changed = await tx.execute(
            "UPDATE target_groups SET rule = ?, revision = ?, updated_at = ?, update_actor = ?"
            " WHERE name = ? AND revision = ?",
            (group.to_json(), previous.revision + 1, epoch(at), actor, group.name, previous.revision),
        )
        if not changed:
            raise storage.TransientError(f"target group {group.name} changed concurrently")
        return StoredGroup(group, previous.revision + 1, at)

    async def delete_group(self, tx: storage.Transaction, name: str) -> None:
        """Remove a target group; NotFound TARGET_GROUP_NOT_FOUND if absent."""
        if not await tx.execute("DELETE FROM target_groups WHERE name = ?", (name,)):
            raise NotFound("target group", name, reason="TARGET_GROUP_NOT_FOUND")

    async def append_audit(
        self, tx: storage.Transaction, entry: AuditEntry, affected_flags: tuple[str, ...] = ()
    ) -> int:
        """Append an audit entry; returns its sequence number."""
        sequence = int(await tx.fetchval("SELECT COALESCE(MAX(sequence), 0) FROM flag_audit") or 0) + 1
        await tx.execute(
            "INSERT INTO flag_audit (sequence, subject, change_type, actor, at, before_json, after_json, comment,"
            " affected_flags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sequence,
                entry.subject,
                entry.change_type.value,
                entry.actor,
                epoch(entry.time),
                entry.before_json,
                entry.after_json,
                entry.comment,
                json.dumps(list(affected_flags)),
            ),
        )
        return sequence

    async def audit_sequence(self, tx: storage.Transaction) -> int:
        """The sequence number of the newest audit entry (0 for none)."""
        return int(await tx.fetchval("SELECT COALESCE(MAX(sequence), 0) FROM flag_audit") or 0)

    async def audit_after(self, tx: storage.Transaction, sequence: int) -> list[AuditRecord]:
        """Audit entries after `sequence`, oldest first."""
        rows = await tx.fetchall(
            f"SELECT {_AUDIT_COLUMNS} FROM flag_audit WHERE sequence > ? ORDER BY sequence", (sequence,)
        )
        return [_audit_record(row) for row in rows]

    async def list_audit(
        self, tx: storage.Transaction, subject: str, page: PageRequest
    ) -> tuple[list[AuditRecord], bool]:
        """A page of audit entries, newest first (of one subject if given); True if more follow."""
        sql = f"SELECT {_AUDIT_COLUMNS} FROM flag_audit WHERE 1 = 1"
        params: list[Any] = []
        if subject:
            sql += " AND subject = ?"
            params.append(subject)
        if page.cursor is not None:
            sql += " AND sequence < ?"
            params.append(page.cursor["q"])
        rows = await tx.fetchall(sql + " ORDER BY sequence DESC LIMIT ?", [*params, page.size + 1])
        return [_audit_record(row) for row in rows[: page.size]], len(rows) > page.size


_FLAG_COLUMNS = "flag_key, definition, revision, created_at, updated_at, update_actor"
_AUDIT_COLUMNS = "sequence, subject, change_type, actor, at, before_json, after_json, comment, affected_flags"


def _stored_flag(row: storage.Row) -> StoredFlag:
    return StoredFlag(
        definition=definition_from_json(row["flag_key"], row["definition"]),
        revision=int(row["revision"]),
        created_at=moment(float(row["created_at"])),
        updated_at=moment(float(row["updated_at"])),
        update_actor=row["update_actor"],
    )


def _stored_group(row: storage.Row) -> StoredGroup:
    return StoredGroup(
        group=TargetGroup(row["name"], json.loads(row["rule"])),
        revision=int(row["revision"]),
        updated_at=moment(float(row["updated_at"])),
    )


def _audit_record(row: storage.Row) -> AuditRecord:
    entry = AuditEntry(
        subject=row["subject"],
        change_type=ChangeType(row["change_type"]),
        actor=row["actor"],
        time=moment(float(row["at"])),
        before_json=row["before_json"],
        after_json=row["after_json"],
        comment=row["comment"],
    )
    return AuditRecord(int(row["sequence"]), entry, tuple(json.loads(row["affected_flags"])))
