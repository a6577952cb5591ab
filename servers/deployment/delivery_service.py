"""DeploymentService, part one: deployments (create, read, command, watch).

Commands go through the request ledger (AIP-155) and `Delivery`, so a transition, the route
changes it asks for, its history entry and the stored answer commit together; the
controller and the watch streams are woken once the transaction is done.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from servers.deployment.delivery import Delivery
from servers.deployment.delivery_messages import (
    deployment_message,
    history_message,
    pause_mode_of,
    state_filter,
    strategy_of,
    thresholds_of,
)
from servers.deployment.events import Abort, Event, Pause, Promote, Resume
from servers.deployment.notifications import Signals
from servers.deployment.plans import DeploymentPlan, Strategy, new_plan
from servers.deployment.requests import actor, check_filter, check_id, check_text
from servers.deployment.routes import check_service, check_version
from servers.deployment.store import DeploymentStore, StoredDeployment
from servers.deployment.timestamps import epoch, seconds_of
from servers.mesh import storage
from servers.mesh.errors import FailedPrecondition, PreconditionViolation
from servers.mesh.idempotency import RequestLedger
from servers.mesh.pagination import page_request
from shieldx.deployment.v1 import deployment_pb2

MAX_REASON_LENGTH = 1000
"""Longest operator reason kept in a deployment's history."""


@dataclass
class DeliveryParts:
    """What the DeploymentService RPCs share."""

    store: DeploymentStore
    """Deployments, faults and the route registry."""
    delivery: Delivery
    """Creates deployments and applies events."""
    ledger: RequestLedger
    """AIP-155 request ids."""
    signals: Signals
    """Wakes watchers and the controller."""
    watch_poll_seconds: float
    """How often a watch re-reads the store with no local signal (changes made by other replicas)."""
    metrics_hosts: tuple[str, ...] = ()
    """Hosts an instance's metrics endpoint may name besides the instance's own."""


def _reason(text: str) -> str:
    return check_text(text, "reason", MAX_REASON_LENGTH)


class DeliveryRpcs:
    """CreateDeployment, GetDeployment, ListDeployments, the four commands and WatchDeployment."""

    def __init__(self, parts: DeliveryParts) -> None:
        self.parts = parts

    def _changed(self) -> None:
        signals = self.parts.signals
        signals.deployments.notify()
        signals.routes.notify()
        signals.controller.notify()

    async def CreateDeployment(
        self, request: deployment_pb2.CreateDeploymentRequest, context: Any
    ) -> deployment_pb2.CreateDeploymentResponse:
        """Validate the plan against the registered instances and start the deployment."""
        parts, who = self.parts, actor()
        strategy = strategy_of(request.strategy)
        pause_mode = pause_mode_of(request.pause_mode)
        analysis = thresholds_of(request.analysis)
        steps = [(step.weight_percent, seconds_of(step.pause)) for step in request.steps]
        check_service(request.service)
        check_version(request.from_version, "from_version")

        async def work(tx: storage.Transaction) -> deployment_pb2.CreateDeploymentResponse:
            registry = parts.store.registry
            serving = await registry.instances(tx, request.service, request.from_version, active_only=True)
            plan = new_plan(
                service=request.service,
                from_version=request.from_version,
                to_version=request.to_version,
                strategy=strategy,
                steps=steps,
                pause_mode=pause_mode,
                pause=seconds_of(request.pause_duration),
                analysis=analysis,
                replicas=request.replicas,
                registered_replicas=len(serving),
                keep_previous_for=seconds_of(request.keep_previous_for),
            )
            await _require_instances(tx, parts.store, plan, serving_from=len(serving))
            deployment = await parts.delivery.create(tx, plan, who)
            message = deployment_message(StoredDeployment(deployment, None))
            return deployment_pb2.CreateDeploymentResponse(deployment=message)

        response = await parts.ledger.execute(
            "CreateDeployment", request, deployment_pb2.CreateDeploymentResponse, work
        )
        self._changed()
        return response

    async def GetDeployment(
        self, request: deployment_pb2.GetDeploymentRequest, context: Any
    ) -> deployment_pb2.GetDeploymentResponse:
        """One deployment with its history."""
        stored = await self._read(request.deployment_id)
        return deployment_pb2.GetDeploymentResponse(deployment=deployment_message(stored))

    async def ListDeployments(
        self, request: deployment_pb2.ListDeploymentsRequest, context: Any
    ) -> deployment_pb2.ListDeploymentsResponse:
        """Deployments newest first, without their history."""
        state = state_filter(request.state)
        check_filter(request.service, "service")
        page = page_request(request.page_size, request.page_token, {"service": request.service, "state": request.state})
        async with self.parts.store.transaction() as tx:
            found, more = await self.parts.store.list_deployments(tx, request.service, state, page)
        last = found[-1].deployment if found and more else None
        cursor = {"t": epoch(last.created_at), "id": last.id} if last is not None else None
        return deployment_pb2.ListDeploymentsResponse(
            deployments=[deployment_message(stored, history=False) for stored in found],
            next_page_token=page.next_token(cursor),
        )

    async def _command(self, name: str, request: Any, event: Event) -> deployment_pb2.Deployment:
        parts = self.parts
        check_id(request.deployment_id, "deployment_id")

        async def work(tx: storage.Transaction) -> deployment_pb2.GetDeploymentResponse:
            await parts.delivery.apply(tx, request.deployment_id, event)
            stored = await parts.store.stored_deployment(tx, request.deployment_id)
            return deployment_pb2.GetDeploymentResponse(deployment=deployment_message(stored))

        response = await parts.ledger.execute(name, request, deployment_pb2.GetDeploymentResponse, work)
        self._changed()
        return response.deployment

    async def PromoteDeployment(
        self, request: deployment_pb2.PromoteDeploymentRequest, context: Any
    ) -> deployment_pb2.PromoteDeploymentResponse:
        """Move to the next step now (or to the end with `full`)."""
        deployment = await self._command("PromoteDeployment", request, Promote(actor(), full=request.full))
        return deployment_pb2.PromoteDeploymentResponse(deployment=deployment)

    async def PauseDeployment(
        self, request: deployment_pb2.PauseDeploymentRequest, context: Any
    ) -> deployment_pb2.PauseDeploymentResponse:
        """Hold the deployment at its step."""
        deployment = await self._command("PauseDeployment", request, Pause(actor(), _reason(request.reason)))
        return deployment_pb2.PauseDeploymentResponse(deployment=deployment)

    async def ResumeDeployment(
        self, request: deployment_pb2.ResumeDeploymentRequest, context: Any
    ) -> deployment_pb2.ResumeDeploymentResponse:
        """Let a paused deployment go on."""
        deployment = await self._command("ResumeDeployment", request, Resume(actor()))
        return deployment_pb2.ResumeDeploymentResponse(deployment=deployment)

    async def AbortDeployment(
        self, request: deployment_pb2.AbortDeploymentRequest, context: Any
    ) -> deployment_pb2.AbortDeploymentResponse:
        """Stop and roll back: weights back to the old version first, then the new one drained."""
        deployment = await self._command("AbortDeployment", request, Abort(actor(), _reason(request.reason)))
        return deployment_pb2.AbortDeploymentResponse(deployment=deployment)

    async def WatchDeployment(
        self, request: deployment_pb2.WatchDeploymentRequest, context: Any
    ) -> AsyncIterator[deployment_pb2.WatchDeploymentResponse]:
        """The deployment now, then one message per history entry until it ends."""
        parts = self.parts
        signal = parts.signals.deployments
        seen = signal.generation
        stored = await self._read(request.deployment_id)
        yield deployment_pb2.WatchDeploymentResponse(deployment=deployment_message(stored))
        sent = len(stored.deployment.history)
        while stored.deployment.active:
            await signal.wait_after(seen, parts.watch_poll_seconds)
            seen = signal.generation
            stored = await self._read(request.deployment_id)
            history = stored.deployment.history
            if len(history) <= sent:
                continue
            message = deployment_message(stored)
            for entry in history[sent:]:
                yield deployment_pb2.WatchDeploymentResponse(deployment=message, change=history_message(entry))
            sent = len(history)

    async def _read(self, deployment_id: str) -> StoredDeployment:
        check_id(deployment_id, "deployment_id")
        async with self.parts.store.transaction() as tx:
            return await self.parts.store.stored_deployment(tx, deployment_id)


async def _require_instances(
    tx: storage.Transaction, store: DeploymentStore, plan: DeploymentPlan, *, serving_from: int
) -> None:
    """The old version must be serving; a canary's new version must be registered already
    (blue-green and rolling wait for it while warming)."""
    missing: list[str] = []
    if serving_from == 0:
        missing.append(plan.from_version)
    if plan.strategy is Strategy.CANARY and not await store.registry.instances(tx, plan.service, plan.to_version):
        missing.append(plan.to_version)
    if missing:
        raise FailedPrecondition(
            f"no instance of {' or '.join(missing)} of {plan.service} is registered",
            reason="VERSION_NOT_REGISTERED",
            metadata={"service": plan.service, "versions": ",".join(missing)},
            violations=tuple(
                PreconditionViolation("VERSION_REGISTERED", f"{plan.service}/{v}", "no registered instance")
                for v in missing
            ),
        )
