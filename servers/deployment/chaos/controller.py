"""The chaos controller: starts experiments after the safety checks, keeps their faults alive,
probes every interval, rolls back on a violation, measures recovery, and runs schedules.

A running experiment's faults are rows of the deployment server's fault table with a short
expiry that every probe pushes forward; the servers drop a fault at its expiry, so a controller
that dies leaves nothing behind for longer than `fault_ttl_seconds`. A deployment server that
restarts marks the experiments it finds RUNNING (whose controller it was) ABORTED and deletes
their faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from servers.deployment.chaos.domain import (
    ChaosType,
    Experiment,
    Measurement,
    PlannedFault,
    Report,
    SafetyPolicy,
    State,
    abort_violation,
    combine,
    hypothesis_failures,
    planned_faults,
    refuse_start,
    verdict,
)
from servers.deployment.chaos.metrics import ChaosMetrics
from servers.deployment.chaos.probes import TargetProbes, Window
from servers.deployment.chaos.settings import ChaosSettings
from servers.deployment.chaos.store import ChaosStore, Schedule
from servers.deployment.faults import FaultInjection
from servers.deployment.notifications import Signal, Signals
from servers.deployment.routes import Instance
from servers.deployment.store import DeploymentStore
from servers.mesh.errors import FailedPrecondition

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class ChaosController:
    """Runs the experiments of one deployment server."""

    def __init__(
        self,
        store: ChaosStore,
        deployments: DeploymentStore,
        signals: Signals,
        probes: TargetProbes,
        settings: ChaosSettings,
        metrics: ChaosMetrics,
        clock: Clock,
    ) -> None:
        self.store = store
        self.deployments = deployments
        self.signals = signals
        self.probes = probes
        self.settings = settings
        self.policy: SafetyPolicy = settings.policy()
        self.metrics = metrics
        self.clock = clock
        self.changed = Signal()
        """Notified whenever an experiment's state or live measurement changes."""
        self.live: dict[str, Measurement] = {}
        """Experiment id → the last probe interval."""
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._aborts: dict[str, str] = {}
        self._starting = asyncio.Lock()

    # -- commands ---------------------------------------------------------------------------

    async def start(self, experiment_id: str) -> Experiment:
        """Safety checks, pre-check, then inject: the experiment is RUNNING when this returns."""
        async with self._starting:
            async with self.store.transaction() as tx:
                experiment = await self.store.get(tx, experiment_id)
                running = len(await self.store.running(tx))
            try:
                refuse_start(experiment, self.policy, self.clock(), running)
                instances = await self._target_instances(experiment)
                window = Window()
                before = await self._precheck(experiment, instances, window)
            except FailedPrecondition as refused:
                if experiment.state is State.CREATED:
                    self.metrics.experiments.labels(experiment.spec.type.name, "REFUSED").inc()
                    log.info("chaos experiment %s refused: %s", experiment_id, refused.message)
                raise
            experiment = await self._inject(experiment, instances, before)
        self.metrics.experiments.labels(experiment.spec.type.name, "RUNNING").inc()
        self._runs[experiment.id] = asyncio.create_task(self._run(experiment, instances, window))
        self.changed.notify()
        return experiment

    async def abort(self, experiment_id: str, reason: str) -> Experiment:
        """Roll a running experiment back now; it ends ABORTED with `reason`."""
        async with self.store.transaction() as tx:
            experiment = await self.store.get(tx, experiment_id)
        if experiment.state is not State.RUNNING:
            raise FailedPrecondition(
                f"experiment {experiment_id} is {experiment.state.value}, not RUNNING", reason="CHAOS_NOT_RUNNING"
            )
        task = self._runs.get(experiment_id)
        if task is None:  # run by a controller that is gone: roll back here
            return await self._end(experiment, State.ABORTED, reason, experiment.report)
        self._aborts[experiment_id] = reason
        self.changed.notify()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._wait_ended(experiment_id))
        async with self.store.transaction() as tx:
            return await self.store.get(tx, experiment_id)

    def finished(self, experiment_id: str) -> bool:
        """True unless this controller is still running or measuring the experiment."""
        return experiment_id not in self._runs

    async def _wait_ended(self, experiment_id: str) -> None:
        while True:
            generation = self.changed.generation
            async with self.store.transaction() as tx:
                if (await self.store.get(tx, experiment_id)).state is not State.RUNNING:
                    return
            await self.changed.wait_after(generation, 0.5)

    # -- starting ---------------------------------------------------------------------------

    async def _target_instances(self, experiment: Experiment) -> list[Instance]:
        target = experiment.spec.target
        async with self.deployments.transaction() as tx:
            found = await self.deployments.registry.instances(tx, target.service, target.version, active_only=True)
        instances = [r.instance for r in found]
        if not instances:
            raise FailedPrecondition(
                f"target {target.service} has no registered instances", reason="CHAOS_TARGET_UNHEALTHY"
            )
        return instances

    async def _precheck(self, experiment: Experiment, instances: Sequence[Instance], window: Window) -> Measurement:
        """Every target SERVING and the hypothesis holding on what the servers counted so far."""
        probe = await self.probes.probe(window, instances, experiment.spec.hypothesis.promql)
        if probe.serving < probe.instances:
            raise FailedPrecondition(
                f"pre-check: {probe.instances - probe.serving} of {probe.instances} target instances are not SERVING",
                reason="CHAOS_TARGET_UNHEALTHY",
            )
        failures = hypothesis_failures(experiment.spec.hypothesis, probe)
        if failures:
            raise FailedPrecondition(
                f"pre-check: the steady-state hypothesis does not hold ({'; '.join(failures)})",
                reason="CHAOS_HYPOTHESIS_FAILED",
            )
        return probe.interval

    async def _inject(self, experiment: Experiment, instances: Sequence[Instance], before: Measurement) -> Experiment:
        now = self.clock()
        expires = now + timedelta(seconds=self.settings.fault_ttl_seconds)
        planned = planned_faults(experiment.spec, [i.address for i in instances])
        faults = [self._fault(experiment.id, plan, now, expires) for plan in planned]
        started = experiment.replace(
            state=State.RUNNING,
            started_at=now,
            fault_ids=tuple(f.id for f in faults),
            report=Report(before=before),
        )
        async with self.store.transaction() as tx:
            for fault in faults:
                await self.deployments.insert_fault(tx, fault, actor=f"chaos:{experiment.id}")
            await self.store.update(tx, started)
        self.signals.faults.notify()
        self.metrics.active_faults.inc(len(faults))
        log.info(
            "chaos experiment started",
            extra={"experiment_id": experiment.id, "type": experiment.spec.type.name, "fault_ids": started.fault_ids},
        )
        return started

    @staticmethod
    def _fault(experiment_id: str, plan: PlannedFault, now: datetime, expires: datetime) -> FaultInjection:
        return FaultInjection(
            id=f"fault-{uuid.uuid4().hex[:16]}",
            service=plan.service,
            method_pattern=plan.method_pattern,
            delay=plan.delay,
            abort_code=plan.abort_code,
            percentage=plan.percentage,
            created_at=now,
            expires_at=expires,
            version=plan.version,
            kind=int(plan.kind),
            jitter=plan.jitter,
            peer_service=plan.peer_service,
            block_inbound=plan.block_inbound,
            block_outbound=plan.block_outbound,
            cpu_workers=plan.cpu_workers,
            memory_mib=plan.memory_mib,
            instance_address=plan.instance_address,
            experiment_id=experiment_id,
        )

    # -- running ----------------------------------------------------------------------------

    async def _run(self, experiment: Experiment, instances: list[Instance], window: Window) -> None:
        try:
            ended = await self._inject_phase(experiment, instances, window)
            if ended.state is State.COMPLETED or ended.state is State.ABORTED:
                await self._recovery_phase(ended, instances, window)
        except Exception:
            log.exception("chaos experiment %s failed; rolling back", experiment.id)
            with contextlib.suppress(Exception):
                await self._end(experiment, State.ABORTED, "the controller failed", experiment.report)
        finally:
            self._runs.pop(experiment.id, None)
            self._aborts.pop(experiment.id, None)
            self.live.pop(experiment.id, None)

    async def _inject_phase(self, experiment: Experiment, instances: list[Instance], window: Window) -> Experiment:
        spec = experiment.spec
        interval = self.settings.probe_interval_seconds
        began = time.monotonic()
        deadline = began + spec.duration
        during = Measurement()
        failed_in_a_row = deviations = 0
        restart = (
            asyncio.create_task(self._time_restart(instances, began, deadline))
            if spec.type is ChaosType.SERVICE_FAILURE
            else None
        )
        recovery: float | None = None
        while True:
            pause = min(interval, max(deadline - time.monotonic(), 0.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._abort_requested(experiment.id), pause)
            reason = self._aborts.get(experiment.id)
            if reason is not None:
                report = Report(experiment.report.before, during, deviations=deviations, recovery_seconds=recovery)
                return await self._end(experiment, State.ABORTED, reason, report)
            await self._renew(experiment.id)
            probe = await self.probes.probe(window, instances, spec.hypothesis.promql)
            during = combine(during, probe.interval)
            self.live[experiment.id] = probe.interval
            failures = hypothesis_failures(spec.hypothesis, probe)
            failed_in_a_row = failed_in_a_row + 1 if failures else 0
            deviations += bool(failures)
            if restart is not None and restart.done():
                recovery = restart.result()
            violation = abort_violation(spec.abort, probe, failed_in_a_row)
            self.changed.notify()
            if violation is not None:
                self.metrics.violations.inc()
                report = Report(
                    experiment.report.before, during, violations=(violation,), deviations=deviations,
                    recovery_seconds=recovery,
                )  # fmt: skip
                log.warning("chaos experiment %s rolled back: %s", experiment.id, violation)
                return await self._end(experiment, State.ABORTED, violation, report)
            if time.monotonic() >= deadline:
                report = Report(experiment.report.before, during, deviations=deviations, recovery_seconds=recovery)
                return await self._end(experiment, State.COMPLETED, "", report)

    async def _time_restart(self, instances: Sequence[Instance], killed_at: float, deadline: float) -> float | None:
        """Seconds from the kill until every target instance answers SERVING again (polled every 50 ms)."""
        seen_down = False
        while time.monotonic() < deadline + self.settings.recovery_timeout_seconds:
            serving = await self.probes.serving(instances)
            if serving < len(instances):
                seen_down = True
            elif seen_down:
                return time.monotonic() - killed_at
            await asyncio.sleep(0.05)
        return None

    async def _abort_requested(self, experiment_id: str) -> None:
        while experiment_id not in self._aborts:
            generation = self.changed.generation
            await self.changed.wait_after(generation, 1.0)

    async def _renew(self, experiment_id: str) -> None:
        expires = self.clock() + timedelta(seconds=self.settings.fault_ttl_seconds)
        async with self.store.transaction() as tx:
            await self.store.renew_faults(tx, experiment_id, expires)
        self.signals.faults.notify()

    async def _end(self, experiment: Experiment, state: State, reason: str, report: Report) -> Experiment:
        """Withdraw the faults and record the end (the report's verdict included)."""
        async with self.store.transaction() as tx:
            withdrawn = await self.store.withdraw_faults(tx, experiment.id)
            current = await self.store.get(tx, experiment.id)
            final_report = Report(
                before=report.before, during=report.during, after=report.after,
                recovery_seconds=report.recovery_seconds, violations=report.violations,
                verdict=verdict(report, state), deviations=report.deviations,
            )  # fmt: skip
            ended = current.replace(state=state, ended_at=self.clock(), abort_reason=reason, report=final_report)
            await self.store.update(tx, ended)
        self.signals.faults.notify()
        self.metrics.active_faults.dec(withdrawn)
        self.metrics.experiments.labels(experiment.spec.type.name, state.value).inc()
        self.changed.notify()
        log.info("chaos experiment ended", extra={"experiment_id": experiment.id, "state": state.value})
        return ended

    async def _recovery_phase(self, ended: Experiment, instances: list[Instance], window: Window) -> None:
        """After the fault: probe until the hypothesis holds again; record `after` and the recovery time."""
        spec = ended.spec
        began = time.monotonic()
        after = Measurement()
        recovery = ended.report.recovery_seconds
        while time.monotonic() - began < self.settings.recovery_timeout_seconds:
            await asyncio.sleep(self.settings.probe_interval_seconds)
            probe = await self.probes.probe(window, instances, spec.hypothesis.promql)
            after = combine(after, probe.interval)
            if not hypothesis_failures(spec.hypothesis, probe):
                if recovery is None:
                    recovery = time.monotonic() - began
                break
        async with self.store.transaction() as tx:
            current = await self.store.get(tx, ended.id)
            report = current.report
            updated = Report(
                report.before, report.during, after, recovery, report.violations, report.verdict, report.deviations
            )
            await self.store.update(tx, current.replace(report=updated))
        if recovery is not None:
            self.metrics.recovery.observe(recovery)
        self.changed.notify()

    # -- background -------------------------------------------------------------------------

    async def recover_abandoned(self) -> None:
        """At start: experiments RUNNING in the store lost their controller (this server restarted):
        roll them back and delete any fault no running experiment owns."""
        async with self.store.transaction() as tx:
            abandoned = [e for e in await self.store.running(tx) if e.id not in self._runs]
        for experiment in abandoned:
            await self._end(experiment, State.ABORTED, "the controller restarted", experiment.report)
        async with self.store.transaction() as tx:
            removed = await self.store.orphaned_faults(tx, list(self._runs))
        if removed:
            self.signals.faults.notify()

    async def run_schedules_forever(self) -> None:
        """Start each schedule's experiment every interval, within safe hours."""
        await self.recover_abandoned()
        while True:
            try:
                await self._schedules_due()
            except Exception:
                log.exception("chaos schedules failed; retrying")
            await asyncio.sleep(self.settings.schedule_tick_seconds)

    async def _schedules_due(self) -> None:
        now = self.clock()
        if not self.policy.within_safe_hours(now):
            return  # schedules wait for the safe hours
        async with self.store.transaction() as tx:
            schedules, _ = await self.store.schedules(tx)
        for schedule in schedules:
            if schedule.last_run_at is not None and now < schedule.last_run_at + timedelta(seconds=schedule.interval):
                continue
            await self._run_schedule(schedule, now)

    async def _run_schedule(self, schedule: Schedule, now: datetime) -> None:
        experiment = Experiment(
            id=f"chaos-{uuid.uuid4().hex[:16]}",
            spec=schedule.spec,
            state=State.CREATED,
            created_at=now,
            schedule_id=schedule.id,
        )
        async with self.store.transaction() as tx:
            await self.store.insert(tx, experiment)
            await self.store.update_schedule(
                tx, Schedule(schedule.id, schedule.spec, schedule.interval, schedule.created_at, now, experiment.id)
            )
        try:
            await self.start(experiment.id)
        except FailedPrecondition as refused:
            log.info("scheduled chaos experiment refused: %s", refused.message, extra={"schedule_id": schedule.id})
            await self._end(experiment, State.ABORTED, f"refused: {refused.message}", experiment.report)

    async def close(self) -> None:
        """Roll back every experiment this controller runs (the server is stopping)."""
        for experiment_id in list(self._runs):
            self._aborts[experiment_id] = "the deployment server is stopping"
        self.changed.notify()
        tasks = list(self._runs.values())
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
