"""The registry of instances and the traffic routes derived from it.

A route is the service's weights plus the addresses of its *active* instances; `_publish`
writes a new revision only when that result changes, and records every revision (with its
cause and actor) in `route_changes`. An instance is drained when a deployment scaled its
version below it (`version_scales`: the first n instances by address stay) — there is no
orchestrator behind the registry, so scaling decides who gets traffic, not which processes
run. Every method works inside the caller's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clients.routes import Route, VersionRoute
from servers.deployment.routes import Instance, build_route, weights_after_registration
from servers.deployment.timestamps import epoch, moment
from servers.mesh import storage
from servers.mesh.errors import NotFound
from servers.mesh.pagination import PageRequest


@dataclass(frozen=True)
class RegisteredInstance:
    """An instance as the registry holds it."""

    instance: Instance
    """What it registered."""
    drained: bool
    """True when a deployment scaled its version below it: no traffic, no analysis."""


@dataclass(frozen=True)
class RouteState:
    """A route as published, or the fact that it was removed."""

    route: Route
    """The route (no versions when removed)."""
    removed: bool
    """True once the service's last instance left."""


class RouteRegistry:
    """Instances, version scales and routes, in the caller's transactions."""

    async def register_instance(
        self, tx: storage.Transaction, instance: Instance, *, actor: str
    ) -> tuple[RegisteredInstance, RouteState | None]:
        """Add or update an instance; returns it and the route if that changed."""
        previous = await tx.fetchone(
            "SELECT version FROM instances WHERE service = ? AND address = ?", (instance.service, instance.address)
        )
        await tx.execute(
            "INSERT INTO instances (service, address, version, metrics_endpoint, registered_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (service, address) DO UPDATE SET"
            " version = excluded.version, metrics_endpoint = excluded.metrics_endpoint,"
            " registered_at = excluded.registered_at",
            (
                instance.service,
                instance.address,
                instance.version,
                instance.metrics_endpoint,
                epoch(instance.registered_at),
            ),
        )
        route = None
        if previous is None or previous["version"] != instance.version:
            state = await self._route_row(tx, instance.service)
            weights = state.weights if state is not None and not state.removed else {}
            route = await self._publish(
                tx,
                instance.service,
                weights=weights_after_registration(weights, instance.version),
                cause=f"instance {instance.address} of {instance.version} registered",
                actor=actor,
                at=instance.registered_at,
            )
        else:
            route = await self._publish(
                tx, instance.service, cause="instance re-registered", actor=actor, at=instance.registered_at
            )
        registered = await self.instances(tx, instance.service, instance.version)
        found = next(r for r in registered if r.instance.address == instance.address)
        return found, route

    async def deregister_instance(
        self, tx: storage.Transaction, service: str, address: str, *, actor: str, at: datetime
    ) -> RouteState | None:
        """Remove an instance (NotFound INSTANCE_NOT_FOUND if unknown); returns the route if it changed."""
        removed = await tx.execute("DELETE FROM instances WHERE service = ? AND address = ?", (service, address))
        if not removed:
            raise NotFound("instance", f"{service}/{address}", reason="INSTANCE_NOT_FOUND")
        return await self._publish(tx, service, cause=f"instance {address} deregistered", actor=actor, at=at)

    async def instances(
        self, tx: storage.Transaction, service: str, version: str = "", *, active_only: bool = False
    ) -> list[RegisteredInstance]:
        """The instances of a service (of one version if given), by version then address."""
        sql = "SELECT service, address, version, metrics_endpoint, registered_at FROM instances WHERE service = ?"
        params: list[Any] = [service]
        if version:
            sql += " AND version = ?"
            params.append(version)
        rows = await tx.fetchall(sql + " ORDER BY version, address", params)
        scales = await self._scales(tx, service)
        found = _with_drain([_instance(row) for row in rows], scales)
        return [r for r in found if not r.drained] if active_only else found

    async def list_instances(
        self, tx: storage.Transaction, service: str, version: str, page: PageRequest
    ) -> tuple[list[RegisteredInstance], bool]:
        """A page of instances by service, version, address; True if more follow."""
        sql = "SELECT service, address, version, metrics_endpoint, registered_at FROM instances WHERE 1 = 1"
        params: list[Any] = []
        if service:
            sql += " AND service = ?"
            params.append(service)
        if version:
            sql += " AND version = ?"
            params.append(version)
        if page.cursor is not None:
            sql += " AND (service > ? OR (service = ? AND (version > ? OR (version = ? AND address > ?))))"
            c = page.cursor
            params += [c["s"], c["s"], c["v"], c["v"], c["a"]]
        rows = await tx.fetchall(sql + " ORDER BY service, version, address LIMIT ?", [*params, page.size + 1])
        listed = [_instance(row) for row in rows[: page.size]]
        drained: dict[tuple[str, str], dict[str, bool]] = {}
        for key in {(i.service, i.version) for i in listed}:
            drained[key] = {r.instance.address: r.drained for r in await self.instances(tx, *key)}
        found = [RegisteredInstance(i, drained[(i.service, i.version)].get(i.address, False)) for i in listed]
        return found, len(rows) > page.size

    async def scale_version(
        self,
        tx: storage.Transaction,
        service: str,
        version: str,
        replicas: int,
        *,
        actor: str,
        cause: str,
        at: datetime,
    ) -> RouteState | None:
        """Keep `replicas` instances of a version in the routes and drain the others."""
        await tx.execute(
            "INSERT INTO version_scales (service, version, replicas) VALUES (?, ?, ?)"
            " ON CONFLICT (service, version) DO UPDATE SET replicas = excluded.replicas",
            (service, version, max(replicas, 0)),
        )
        return await self._publish(tx, service, cause=cause, actor=actor, at=at)

    async def unscale_version(
        self, tx: storage.Transaction, service: str, version: str, *, actor: str, cause: str, at: datetime
    ) -> RouteState | None:
        """Forget an earlier scale of a version: all its registered instances are active again."""
        await tx.execute("DELETE FROM version_scales WHERE service = ? AND version = ?", (service, version))
        return await self._publish(tx, service, cause=cause, actor=actor, at=at)

    async def _scales(self, tx: storage.Transaction, service: str) -> dict[str, int]:
        rows = await tx.fetchall("SELECT version, replicas FROM version_scales WHERE service = ?", (service,))
        return {row["version"]: int(row["replicas"]) for row in rows}

    # -- routes ------------------------------------------------------------------------------

    async def route(self, tx: storage.Transaction, service: str) -> RouteState | None:
        """The published route of a service (None if it never had one)."""
        row = await self._route_row(tx, service)
        return row.state if row is not None else None

    async def routes(self, tx: storage.Transaction, services: Iterable[str] = ()) -> list[RouteState]:
        """Published routes (removed ones included), by service; all services if none given."""
        wanted = sorted(set(services))
        sql = "SELECT service, revision, weights, sticky_metadata_key, published, removed, updated_at FROM routes"
        params: list[Any] = []
        if wanted:
            sql += f" WHERE service IN ({', '.join('?' for _ in wanted)})"
            params = list(wanted)
        rows = await tx.fetchall(sql + " ORDER BY service", params)
        return [_RouteRow.of(row).state for row in rows]

    async def set_weights(
        self,
        tx: storage.Transaction,
        service: str,
        weights: Mapping[str, int],
        *,
        actor: str,
        cause: str,
        at: datetime,
        sticky_metadata_key: str | None = None,
        must_exist: bool = True,
    ) -> RouteState | None:
        """Set a service's weights (and sticky key, if given); returns the route.

        NotFound ROUTE_NOT_FOUND if the service has no instance, unless not `must_exist` (a
        deployment whose instances all left still records its weights as nothing).
        """
        row = await self._route_row(tx, service)
        if (row is None or row.removed) and must_exist:
            raise NotFound("route", service, reason="ROUTE_NOT_FOUND")
        published = await self._publish(
            tx, service, weights=weights, sticky_metadata_key=sticky_metadata_key, cause=cause, actor=actor, at=at
        )
        if published is not None or row is None:
            return published
        return row.state

    async def route_changes(self, tx: storage.Transaction, service: str) -> list[tuple[int, str, str]]:
        """(revision, cause, actor) of every change of a service's route, oldest first."""
        rows = await tx.fetchall(
            "SELECT revision, cause, actor FROM route_changes WHERE service = ? ORDER BY revision", (service,)
        )
        return [(int(row["revision"]), row["cause"], row["actor"]) for row in rows]

    async def _route_row(self, tx: storage.Transaction, service: str) -> _RouteRow | None:
        row = await tx.fetchone(
            "SELECT service, revision, weights, sticky_metadata_key, published, removed, updated_at"
            " FROM routes WHERE service = ?",
            (service,),
        )
        return _RouteRow.of(row) if row is not None else None

    async def _publish(
        self,
        tx: storage.Transaction,
        service: str,
        *,
        cause: str,
        actor: str,
        at: datetime,
        weights: Mapping[str, int] | None = None,
        sticky_metadata_key: str | None = None,
    ) -> RouteState | None:
        """Write the next revision of a service's route if it differs from the published one."""
        row = await self._route_row(tx, service)
        registered = await self.instances(tx, service)
        live_row = row if row is not None and not row.removed else None
        if not registered:
            if live_row is None:
                return None
            route = Route(service, live_row.revision + 1, (), "", at)
            await self._write_route(tx, route, {}, removed=True, cause=cause, actor=actor, exists=True)
            return RouteState(route, removed=True)
        new_weights = dict(weights) if weights is not None else dict(live_row.weights if live_row else {})
        sticky = sticky_metadata_key if sticky_metadata_key is not None else (live_row.sticky if live_row else "")
        active = [r.instance for r in registered if not r.drained]
        candidate = build_route(service, new_weights, active, revision=0, sticky_metadata_key=sticky)
        published = _published_json(candidate)
        if (
            live_row is not None
            and live_row.published == published
            and live_row.sticky == sticky
            and live_row.weights == new_weights
        ):
            return None
        revision = (row.revision if row is not None else 0) + 1
        route = build_route(service, new_weights, active, revision=revision, sticky_metadata_key=sticky, updated_at=at)
        await self._write_route(tx, route, new_weights, removed=False, cause=cause, actor=actor, exists=row is not None)
        return RouteState(route, removed=False)

    async def _write_route(
        self,
        tx: storage.Transaction,
        route: Route,
        weights: Mapping[str, int],
        *,
        removed: bool,
        cause: str,
        actor: str,
        exists: bool,
    ) -> None:
        at = epoch(route.updated_at) if route.updated_at else 0.0
        values = (
            route.revision,
            json.dumps(dict(sorted(weights.items()))),
            route.sticky_metadata_key,
            _published_json(route),
            int(removed),
            at,
        )
        if exists:
            await tx.execute(
                "UPDATE routes SET revision = ?, weights = ?, sticky_metadata_key = ?, published = ?, removed = ?,"
                " updated_at = ? WHERE service = ?",
                (*values, route.service),
            )
        else:
            await tx.execute(
                "INSERT INTO routes (revision, weights, sticky_metadata_key, published, removed, updated_at, service)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*values, route.service),
            )
        await tx.execute(
            "INSERT INTO route_changes (service, revision, weights, sticky_metadata_key, published, removed, cause,"
            " actor, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (route.service, *values[:5], cause[:500], actor, at),
        )


def _instance(row: storage.Row) -> Instance:
    return Instance(
        service=row["service"],
        version=row["version"],
        address=row["address"],
        metrics_endpoint=row["metrics_endpoint"],
        registered_at=moment(float(row["registered_at"])),
    )


def _with_drain(instances: list[Instance], scales: Mapping[str, int]) -> list[RegisteredInstance]:
    """Mark the instances beyond their version's scale (the first n by address stay) as drained."""
    rank: dict[str, int] = {}
    marked: list[RegisteredInstance] = []
    for instance in sorted(instances, key=lambda i: (i.version, i.address)):
        position = rank.get(instance.version, 0)
        rank[instance.version] = position + 1
        limit = scales.get(instance.version)
        marked.append(RegisteredInstance(instance, limit is not None and position >= limit))
    return marked


@dataclass(frozen=True)
class _RouteRow:
    service: str
    revision: int
    weights: dict[str, int]
    sticky: str
    published: str
    removed: bool
    updated_at: datetime

    @classmethod
    def of(cls, row: storage.Row) -> _RouteRow:
        return cls(
            service=row["service"],
            revision=int(row["revision"]),
            weights={str(k): int(v) for k, v in json.loads(row["weights"]).items()},
            sticky=row["sticky_metadata_key"],
            published=row["published"],
            removed=bool(row["removed"]),
            updated_at=moment(float(row["updated_at"])),
        )

    @property
    def state(self) -> RouteState:
        versions = tuple(
            VersionRoute(v["version"], int(v["weight_bp"]), tuple(v["addresses"])) for v in json.loads(self.published)
        )
        route = Route(self.service, self.revision, versions, self.sticky, self.updated_at)
        return RouteState(route, self.removed)


def _published_json(route: Route) -> str:
    return json.dumps(
        [{"version": v.version, "weight_bp": v.weight_bp, "addresses": list(v.addresses)} for v in route.versions]
    )
