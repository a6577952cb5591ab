"""Carrying out deployment transitions: store the new state, perform its actions, keep the record.

Both the servicer (operator commands) and the controller (analyses, timers, readiness) move
deployments through here, so a transition, the route changes it asks for and its history
entry are always written in one transaction, in the order the state machine gave.

Actions: `SetWeights` publishes route weights. `ScaleVersion` has no orchestrator to start or
stop processes here, so it scales the *registry*: the first n registered instances of the
version (by address) stay in the routes, the others are drained (registered, no traffic, not
analysed). Starting the processes of a new version is left to whoever runs them (`shieldx
up`, Kubernetes); a blue-green or rolling deployment waits in WARMING until enough instances
of the new version have registered and answer their metrics endpoint.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from servers.deployment.domain import CONTROLLER, Transition, apply, start
from servers.deployment.events import Action, AnalysisCompleted, Event, ScaleVersion, SetWeights
from servers.deployment.plans import DeploymentPlan, Strategy
from servers.deployment.progress import Deployment
from servers.deployment.store import DeploymentStore
from servers.mesh import storage
from servers.mesh.errors import FailedPrecondition


def utc_now() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


class Delivery:
    """Creates deployments and applies events to them, inside the caller's transaction."""

    def __init__(self, store: DeploymentStore, clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.clock = clock

    async def create(self, tx: storage.Transaction, plan: DeploymentPlan, actor: str) -> Deployment:
        """Start a deployment of `plan`; FailedPrecondition DEPLOYMENT_ACTIVE if the service has one."""
        active = await self.store.active_deployment(tx, plan.service)
        if active is not None:
            raise FailedPrecondition(
                f"deployment {active.id} of {plan.service} is still active",
                reason="DEPLOYMENT_ACTIVE",
                metadata={"deployment_id": active.id},
            )
        now = self.clock()
        deployment_id = f"dep-{uuid.uuid4().hex[:16]}"
        if plan.strategy is Strategy.CANARY:
            # A version rolled back earlier was drained; deploying it again puts its instances back.
            await self.store.registry.unscale_version(
                tx,
                plan.service,
                plan.to_version,
                actor=actor,
                cause=f"deployment {deployment_id} of {plan.to_version}",
                at=now,
            )
        transition = start(deployment_id, plan, now, actor)
        await self.store.insert_deployment(tx, transition.deployment)
        await self._carry_out(tx, transition, now)
        return transition.deployment

    async def apply(self, tx: storage.Transaction, deployment_id: str, event: Event) -> Transition:
        """Apply `event` to the stored deployment and store the outcome (commands may raise)."""
        deployment = await self.store.deployment(tx, deployment_id)
        now = self.clock()
        transition = apply(deployment, event, now)
        if transition.deployment is deployment:
            return transition
        analysed_at = now if isinstance(event, AnalysisCompleted) else None
        await self.store.update_deployment(tx, transition.deployment, deployment.revision, analysed_at=analysed_at)
        await self._carry_out(tx, transition, now)
        return transition

    async def _carry_out(self, tx: storage.Transaction, transition: Transition, now: datetime) -> None:
        deployment = transition.deployment
        actor = transition.entry.actor if transition.entry is not None else CONTROLLER
        cause = f"deployment {deployment.id}"
        for action in transition.actions:
            await self._perform(tx, action, actor=actor, cause=cause, at=now)
        if transition.entry is not None:
            await self.store.record_transition(tx, deployment, transition.entry, transition.actions)

    async def _perform(self, tx: storage.Transaction, action: Action, *, actor: str, cause: str, at: datetime) -> None:
        if isinstance(action, SetWeights):
            await self.store.registry.set_weights(
                tx, action.service, action.weights, actor=actor, cause=cause, at=at, must_exist=False
            )
        elif isinstance(action, ScaleVersion):
            await self.store.registry.scale_version(
                tx, action.service, action.version, action.replicas, actor=actor, cause=cause, at=at
            )
