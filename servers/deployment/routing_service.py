"""DeploymentService, part two: the instance registry, routes and fault injections, with their watches.

Watch streams send the full state first, then wake on an in-process signal when this server
changed something, or every `watch_poll_seconds` to pick up changes another replica made;
the fault stream also wakes when the next fault expires.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from clients.routes import Route
from servers.deployment.delivery_messages import fault_message, instance_message, route_message
from servers.deployment.delivery_service import DeliveryParts
from servers.deployment.faults import FaultInjection, new_fault_injection
from servers.deployment.registry import RouteState
from servers.deployment.requests import actor, check_filter, check_id
from servers.deployment.routes import (
    check_address,
    check_registrant,
    check_service,
    check_sticky_key,
    check_weights,
    new_instance,
)
from servers.deployment.timestamps import epoch, seconds_of
from servers.mesh import storage
from servers.mesh.auth import current_caller
from servers.mesh.errors import FailedPrecondition, InvalidArgument
from servers.mesh.pagination import page_request
from shieldx.deployment.v1 import faults_pb2, routing_pb2

MAX_WATCHED_SERVICES = 100
"""Most services one watch may name."""


def _services(names: Sequence[str]) -> list[str]:
    if len(names) > MAX_WATCHED_SERVICES:
        raise InvalidArgument("services", f"at most {MAX_WATCHED_SERVICES} services")
    return [check_service(name, f"services[{i}]") for i, name in enumerate(names)]


class RoutingRpcs:
    """RegisterInstance … WatchFaultInjections."""

    def __init__(self, parts: DeliveryParts) -> None:
        self.parts = parts

    # -- instances ---------------------------------------------------------------------------

    async def RegisterInstance(
        self, request: routing_pb2.RegisterInstanceRequest, context: Any
    ) -> routing_pb2.RegisterInstanceResponse:
        """Add or refresh an instance; a service's first version takes all its traffic."""
        parts, who = self.parts, actor()
        check_filter(request.metrics_endpoint, "metrics_endpoint", 2048)
        instance = new_instance(
            request.service,
            request.version,
            request.address,
            request.metrics_endpoint,
            parts.delivery.clock(),
            metrics_hosts=parts.metrics_hosts,
        )
        caller = current_caller()
        check_registrant(instance.service, caller.client_id, caller.scopes)

        async def work(tx: storage.Transaction) -> routing_pb2.RegisterInstanceResponse:
            registered, _ = await parts.store.registry.register_instance(tx, instance, actor=who)
            return routing_pb2.RegisterInstanceResponse(instance=instance_message(registered))

        response = await parts.ledger.execute("RegisterInstance", request, routing_pb2.RegisterInstanceResponse, work)
        parts.signals.routes.notify()
        return response

    async def DeregisterInstance(
        self, request: routing_pb2.DeregisterInstanceRequest, context: Any
    ) -> routing_pb2.DeregisterInstanceResponse:
        """Take an instance out of the routes."""
        parts, who = self.parts, actor()
        check_service(request.service)
        check_address(request.address)
        caller = current_caller()
        check_registrant(request.service, caller.client_id, caller.scopes)

        async def work(tx: storage.Transaction) -> routing_pb2.DeregisterInstanceResponse:
            at = parts.delivery.clock()
            await parts.store.registry.deregister_instance(tx, request.service, request.address, actor=who, at=at)
            return routing_pb2.DeregisterInstanceResponse()

        response = await parts.ledger.execute(
            "DeregisterInstance", request, routing_pb2.DeregisterInstanceResponse, work
        )
        parts.signals.routes.notify()
        return response

    async def ListInstances(
        self, request: routing_pb2.ListInstancesRequest, context: Any
    ) -> routing_pb2.ListInstancesResponse:
        """Instances by service, version, address."""
        check_filter(request.service, "service")
        check_filter(request.version, "version")
        page = page_request(
            request.page_size, request.page_token, {"service": request.service, "version": request.version}
        )
        async with self.parts.store.transaction() as tx:
            found, more = await self.parts.store.registry.list_instances(tx, request.service, request.version, page)
        last = found[-1].instance if found and more else None
        cursor = {"s": last.service, "v": last.version, "a": last.address} if last is not None else None
        return routing_pb2.ListInstancesResponse(
            instances=[instance_message(r) for r in found], next_page_token=page.next_token(cursor)
        )

    # -- routes ------------------------------------------------------------------------------

    async def GetRoutes(self, request: routing_pb2.GetRoutesRequest, context: Any) -> routing_pb2.GetRoutesResponse:
        """The current routes."""
        services = _services(request.services)
        async with self.parts.store.transaction() as tx:
            routes = await self.parts.store.registry.routes(tx, services)
        return routing_pb2.GetRoutesResponse(routes=[route_message(r.route) for r in routes if not r.removed])

    async def WatchRoutes(
        self, request: routing_pb2.WatchRoutesRequest, context: Any
    ) -> AsyncIterator[routing_pb2.WatchRoutesResponse]:
        """Every watched route, then each route that changes (and each that goes away)."""
        parts = self.parts
        services = _services(request.services)
        signal = parts.signals.routes
        seen = signal.generation
        sent: dict[str, int] = {}
        first = True
        while True:
            async with parts.store.transaction() as tx:
                routes = await parts.store.registry.routes(tx, services)
            changed, removed = _route_changes(routes, sent)
            if first or changed or removed:
                yield routing_pb2.WatchRoutesResponse(
                    routes=[route_message(r) for r in changed], removed_services=removed
                )
                first = False
            await signal.wait_after(seen, parts.watch_poll_seconds)
            seen = signal.generation

    async def SetRouteWeights(
        self, request: routing_pb2.SetRouteWeightsRequest, context: Any
    ) -> routing_pb2.SetRouteWeightsResponse:
        """Set weights by hand; refused while a deployment of the service is active."""
        parts, who = self.parts, actor()
        check_service(request.service)
        weights = check_weights([(w.version, w.weight_bp) for w in request.weights])
        sticky = check_sticky_key(request.sticky_metadata_key)

        async def work(tx: storage.Transaction) -> routing_pb2.SetRouteWeightsResponse:
            active = await parts.store.active_deployment(tx, request.service)
            if active is not None:
                raise FailedPrecondition(
                    f"deployment {active.id} of {request.service} controls its weights; abort it first",
                    reason="DEPLOYMENT_ACTIVE",
                    metadata={"deployment_id": active.id},
                )
            state = await parts.store.registry.set_weights(
                tx,
                request.service,
                weights,
                sticky_metadata_key=sticky,
                actor=who,
                cause="SetRouteWeights",
                at=parts.delivery.clock(),
            )
            assert state is not None  # must_exist: a missing route raised NotFound
            return routing_pb2.SetRouteWeightsResponse(route=route_message(state.route))

        response = await parts.ledger.execute("SetRouteWeights", request, routing_pb2.SetRouteWeightsResponse, work)
        parts.signals.routes.notify()
        return response

    # -- fault injections --------------------------------------------------------------------

    async def CreateFaultInjection(
        self, request: faults_pb2.CreateFaultInjectionRequest, context: Any
    ) -> faults_pb2.CreateFaultInjectionResponse:
        """Start injecting a fault into a service's (or one version's) servers."""
        parts, who = self.parts, actor()

        async def work(tx: storage.Transaction) -> faults_pb2.CreateFaultInjectionResponse:
            fault = new_fault_injection(
                fault_id=f"fault-{uuid.uuid4().hex[:16]}",
                service=request.service,
                method_pattern=request.method_pattern,
                delay=seconds_of(request.delay),
                abort_code=request.abort_code,
                percentage=request.percentage,
                duration=seconds_of(request.duration),
                now=parts.delivery.clock(),
                version=request.version,
            )
            await parts.store.insert_fault(tx, fault, actor=who)
            return faults_pb2.CreateFaultInjectionResponse(fault_injection=fault_message(fault))

        response = await parts.ledger.execute(
            "CreateFaultInjection", request, faults_pb2.CreateFaultInjectionResponse, work
        )
        parts.signals.faults.notify()
        return response

    async def ListFaultInjections(
        self, request: faults_pb2.ListFaultInjectionsRequest, context: Any
    ) -> faults_pb2.ListFaultInjectionsResponse:
        """Active fault injections, oldest first."""
        check_filter(request.service, "service")
        page = page_request(request.page_size, request.page_token, {"service": request.service})
        async with self.parts.store.transaction() as tx:
            found, more = await self.parts.store.list_faults(tx, request.service, self.parts.delivery.clock(), page)
        last = found[-1] if found and more else None
        cursor = {"t": epoch(last.created_at), "id": last.id} if last is not None else None
        return faults_pb2.ListFaultInjectionsResponse(
            fault_injections=[fault_message(f) for f in found], next_page_token=page.next_token(cursor)
        )

    async def DeleteFaultInjection(
        self, request: faults_pb2.DeleteFaultInjectionRequest, context: Any
    ) -> faults_pb2.DeleteFaultInjectionResponse:
        """Stop a fault injection now."""
        parts = self.parts
        check_id(request.fault_injection_id, "fault_injection_id")

        async def work(tx: storage.Transaction) -> faults_pb2.DeleteFaultInjectionResponse:
            await parts.store.delete_fault(tx, request.fault_injection_id)
            return faults_pb2.DeleteFaultInjectionResponse()

        response = await parts.ledger.execute(
            "DeleteFaultInjection", request, faults_pb2.DeleteFaultInjectionResponse, work
        )
        parts.signals.faults.notify()
        return response

    async def WatchFaultInjections(
        self, request: faults_pb2.WatchFaultInjectionsRequest, context: Any
    ) -> AsyncIterator[faults_pb2.WatchFaultInjectionsResponse]:
        """The full active set of the watched services, again whenever it changes."""
        parts = self.parts
        services = _services(request.services)
        signal = parts.signals.faults
        seen = signal.generation
        sent: list[FaultInjection] | None = None
        while True:
            now = parts.delivery.clock()
            async with parts.store.transaction() as tx:
                active = await parts.store.active_faults(tx, services, now)
            if active != sent:
                yield faults_pb2.WatchFaultInjectionsResponse(fault_injections=[fault_message(f) for f in active])
                sent = active
            next_expiry = min((epoch(f.expires_at) - epoch(now) for f in active), default=parts.watch_poll_seconds)
            await signal.wait_after(seen, min(parts.watch_poll_seconds, next_expiry + 0.01))
            seen = signal.generation


def _route_changes(states: Sequence[RouteState], sent: dict[str, int]) -> tuple[list[Route], list[str]]:
    """Routes newer than what was sent and services whose route went away; updates `sent`."""
    changed: list[Route] = []
    removed: list[str] = []
    for state in states:
        service, revision = state.route.service, state.route.revision
        if state.removed:
            if service in sent:
                removed.append(service)
                del sent[service]
            continue
        if sent.get(service, 0) < revision:
            changed.append(state.route)
            sent[service] = revision
    return changed, removed
