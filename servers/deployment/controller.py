"""The controller: the background loop that drives every active deployment forward.

On each tick it looks at the active deployments and feeds the state machine what it
observes: how many new instances are ready (while warming), timers that are due, and, on
each deployment's analysis interval, the verdict of `judge` on the new version's metrics.
The transitions and their actions (weights, scaling) are stored by `Delivery`; a failed
analysis past the failure limit therefore rolls back (weights first) in the same transaction
that records it. Operator commands and new deployments wake the loop at once.

Several replicas of the deployment server may run this loop: each write compares the
deployment's revision, so only one of them moves a deployment on any one event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from clients.backoff import Backoff
from servers.deployment.analysis import judge
from servers.deployment.delivery import Delivery
from servers.deployment.events import AnalysisCompleted, Event, InstancesReady, TimerElapsed
from servers.deployment.notifications import Signals
from servers.deployment.observer import VersionObserver
from servers.deployment.progress import Deployment, State
from servers.deployment.routes import Instance
from servers.deployment.store import DeploymentStore
from servers.mesh import storage
from servers.mesh.errors import DomainError

log = logging.getLogger(__name__)


class ControllerMetrics:
    """What the controller did, for dashboards and alerts (automatic rollbacks above all)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.analyses = Counter(
            "shieldx_deployment_analyses_total",
            "Analyses of new versions under deployment, by service and verdict.",
            ["service", "verdict"],
            registry=registry,
        )
        self.rollbacks = Counter(
            "shieldx_deployment_automatic_rollbacks_total",
            "Deployments the controller rolled back (failed analyses or new instances never ready).",
            ["service"],
            registry=registry,
        )
        self.weight = Gauge(
            "shieldx_deployment_new_version_weight_percent",
            "Share of traffic on the new version of each service's active deployment.",
            ["service"],
            registry=registry,
        )
        self.tick_failures = Counter(
            "shieldx_deployment_controller_tick_failures_total",
            "Controller ticks that failed as a whole (the store unreachable, for one).",
            registry=registry,
        )


@dataclass(frozen=True)
class ControllerSettings:
    """How often the controller looks, and how it backs off when the store fails."""

    tick_seconds: float = 0.5
    """Seconds between two looks at the active deployments (timers and analyses are due on
    their own schedule; this is only how late they may be seen)."""
    max_backoff_seconds: float = 30.0
    """Longest pause after repeated failures of a whole tick (the store unreachable)."""


class DeliveryController:
    """Drives active deployments: readiness, timers and analyses."""

    def __init__(
        self,
        delivery: Delivery,
        observer: VersionObserver,
        signals: Signals,
        settings: ControllerSettings | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """`registry` receives the controller's metrics (None: a private registry, for tests)."""
        self.delivery = delivery
        self.store: DeploymentStore = delivery.store
        self.observer = observer
        self.signals = signals
        self.settings = settings or ControllerSettings()
        self.metrics = ControllerMetrics(registry if registry is not None else CollectorRegistry())
        self._weighted: set[str] = set()

    async def run_forever(self) -> None:
        """Tick until cancelled; a failing tick is logged and retried with backoff."""
        backoff = Backoff(2 * self.settings.tick_seconds, self.settings.max_backoff_seconds)
        while True:
            seen = self.signals.controller.generation
            try:
                await self.tick()
                backoff.reset()
                pause = self.settings.tick_seconds
            except Exception:  # the loop must survive anything; the next tick retries
                self.metrics.tick_failures.inc()
                pause = backoff.next()
                log.exception("deployment controller tick failed; retrying in %.1f s", pause)
            await self.signals.controller.wait_after(seen, pause)

    async def tick(self) -> None:
        """Look at every active deployment once."""
        async with self.store.transaction() as tx:
            active = await self.store.active_deployments(tx)
        self.observer.forget({d.id for d in active})
        services = {d.plan.service for d in active}
        for ended in self._weighted - services:
            self.metrics.weight.remove(ended)
        self._weighted &= services
        for deployment in active:
            try:
                await self._drive(deployment)
            except (storage.TransientError, storage.UniqueViolation):
                log.debug("deployment %s changed while observed; next tick", deployment.id)
            except DomainError as exc:
                log.warning("deployment %s: %s", deployment.id, exc.message, extra={"reason": exc.reason})

    async def _drive(self, deployment: Deployment) -> None:
        plan = deployment.plan
        async with self.store.transaction() as tx:
            registered = await self.store.registry.instances(tx, plan.service, plan.to_version, active_only=True)
        instances = [r.instance for r in registered]
        if deployment.state is State.WARMING:
            ready = await self.observer.ready(instances)
            deployment = await self._feed(deployment, InstancesReady(plan.to_version, ready))
        now = self.delivery.clock()
        if deployment.active and deployment.timer_due(now):
            deployment = await self._feed(deployment, TimerElapsed())
        if not deployment.active:
            return
        if deployment.analysis_due(now):
            await self._analyse(deployment, instances)
        else:
            await self._baseline(deployment, instances)

    async def _analyse(self, deployment: Deployment, instances: list[Instance]) -> None:
        limits = deployment.plan.analysis
        seen = await self.observer.observe(deployment.id, instances, limits.interval)
        if seen is None:
            return
        outcome = judge(seen, limits)
        self.metrics.analyses.labels(deployment.plan.service, outcome.verdict.value).inc()
        log.info(
            "analysis of %s: %s",
            deployment.id,
            outcome.verdict.value,
            extra={
                "requests": outcome.requests,
                "errors": outcome.errors,
                "healthy_share": outcome.healthy_share,
                "reasons": list(outcome.reasons),
            },
        )
        await self._feed(deployment, AnalysisCompleted(outcome))

    async def _baseline(self, deployment: Deployment, instances: list[Instance]) -> None:
        """Take the first scrape of a deployment early, so its first analysis has a full window."""
        await self.observer.begin(deployment.id, instances)

    async def _feed(self, deployment: Deployment, event: Event) -> Deployment:
        async with self.store.transaction() as tx:
            transition = await self.delivery.apply(tx, deployment.id, event)
        if transition.entry is not None or transition.actions:
            entry = transition.entry
            log.info(
                "deployment %s: %s",
                deployment.id,
                entry.detail if entry is not None else "changed",
                extra={
                    "state": transition.deployment.state.value,
                    "weight_percent": transition.deployment.weight_percent,
                    "event": entry.event if entry is not None else "",
                },
            )
            self.signals.deployments.notify()
            if transition.actions:
                self.signals.routes.notify()
        after = transition.deployment
        if after.state is State.ROLLED_BACK and deployment.state is not State.ROLLED_BACK:
            self.metrics.rollbacks.labels(after.plan.service).inc()
        if after.active:
            self.metrics.weight.labels(after.plan.service).set(after.weight_percent)
            self._weighted.add(after.plan.service)
        return after
