"""Deployments, instances, routes and fault injections as `shieldx.deployment.v1` messages, and back.

Request parsing here only translates shapes (enums, durations, optional fields); the rules
live in `plans`, `analysis`, `routes` and `faults`, which name the offending field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from clients.routes import Route
from servers.deployment.analysis import AnalysisOutcome, AnalysisThresholds, Verdict, thresholds
from servers.deployment.faults import FaultInjection
from servers.deployment.plans import PauseMode, Strategy
from servers.deployment.progress import Deployment, HistoryEntry, PauseReason, State
from servers.deployment.registry import RegisteredInstance
from servers.deployment.store import StoredDeployment
from servers.deployment.timestamps import duration_message, seconds_of
from servers.mesh.errors import InvalidArgument
from servers.mesh.timestamps import optional_timestamp
from shieldx.deployment.v1 import deployment_pb2, faults_pb2, routing_pb2

E = TypeVar("E")

STRATEGIES = {
    Strategy.CANARY: deployment_pb2.STRATEGY_CANARY,
    Strategy.BLUE_GREEN: deployment_pb2.STRATEGY_BLUE_GREEN,
    Strategy.ROLLING: deployment_pb2.STRATEGY_ROLLING,
}
PAUSE_MODES = {PauseMode.TIMED: deployment_pb2.PAUSE_MODE_TIMED, PauseMode.MANUAL: deployment_pb2.PAUSE_MODE_MANUAL}
STATES = {
    State.WARMING: deployment_pb2.DEPLOYMENT_STATE_WARMING,
    State.PROGRESSING: deployment_pb2.DEPLOYMENT_STATE_PROGRESSING,
    State.PAUSED: deployment_pb2.DEPLOYMENT_STATE_PAUSED,
    State.STABILIZING: deployment_pb2.DEPLOYMENT_STATE_STABILIZING,
    State.SUCCEEDED: deployment_pb2.DEPLOYMENT_STATE_SUCCEEDED,
    State.ROLLED_BACK: deployment_pb2.DEPLOYMENT_STATE_ROLLED_BACK,
    State.ABORTED: deployment_pb2.DEPLOYMENT_STATE_ABORTED,
}
PAUSE_REASONS = {
    PauseReason.MANUAL: deployment_pb2.PAUSE_REASON_MANUAL,
    PauseReason.ANALYSIS_INCONCLUSIVE: deployment_pb2.PAUSE_REASON_ANALYSIS_INCONCLUSIVE,
    PauseReason.AWAITING_PROMOTION: deployment_pb2.PAUSE_REASON_AWAITING_PROMOTION,
}
VERDICTS = {
    Verdict.PASS: deployment_pb2.VERDICT_PASS,
    Verdict.FAIL: deployment_pb2.VERDICT_FAIL,
    Verdict.INCONCLUSIVE: deployment_pb2.VERDICT_INCONCLUSIVE,
}


def _from_wire(table: Mapping[E, int], number: int, field_name: str, default: E | None = None) -> E | None:
    """The domain value of an enum number; 0 gives `default`; unknown numbers are InvalidArgument."""
    if number == 0:
        return default
    for value, wire in table.items():
        if wire == number:
            return value
    raise InvalidArgument(field_name, f"{number} is not a known value")


def strategy_of(number: int) -> Strategy | None:
    """The requested strategy (None: the default)."""
    return _from_wire(STRATEGIES, number, "strategy")


def pause_mode_of(number: int) -> PauseMode | None:
    """The requested pause mode (None: the default)."""
    return _from_wire(PAUSE_MODES, number, "pause_mode")


def state_filter(number: int) -> State | None:
    """A ListDeployments state filter (None: any state)."""
    return _from_wire(STATES, number, "state")


def thresholds_of(message: deployment_pb2.AnalysisThresholds) -> AnalysisThresholds:
    """Validated thresholds; unset fields (and zero durations) take the defaults."""
    return thresholds(
        max_error_rate=message.max_error_rate if message.HasField("max_error_rate") else None,
        min_healthy_share=message.min_healthy_share if message.HasField("min_healthy_share") else None,
        max_p95_latency=seconds_of(message.max_p95_latency) if message.HasField("max_p95_latency") else None,
        min_requests=message.min_requests if message.HasField("min_requests") else None,
        failure_limit=message.failure_limit if message.HasField("failure_limit") else None,
        interval=seconds_of(message.interval) if message.HasField("interval") else None,
    )


def thresholds_message(limits: AnalysisThresholds) -> deployment_pb2.AnalysisThresholds:
    """Thresholds with every field set."""
    return deployment_pb2.AnalysisThresholds(
        max_error_rate=limits.max_error_rate,
        min_healthy_share=limits.min_healthy_share,
        max_p95_latency=duration_message(limits.max_p95_latency),
        min_requests=limits.min_requests,
        failure_limit=limits.failure_limit,
        interval=duration_message(limits.interval),
    )


def analysis_message(outcome: AnalysisOutcome, stored: StoredDeployment) -> deployment_pb2.AnalysisResult:
    """The latest analysis of a deployment."""
    return deployment_pb2.AnalysisResult(
        verdict=VERDICTS[outcome.verdict],
        requests=outcome.requests,
        errors=outcome.errors,
        error_rate=outcome.error_rate,
        p95_latency=duration_message(outcome.p95_latency),
        healthy_share=outcome.healthy_share,
        reasons=list(outcome.reasons),
        analysis_time=optional_timestamp(stored.analysed_at),
    )


def history_message(entry: HistoryEntry) -> deployment_pb2.DeploymentHistoryEntry:
    """One history entry."""
    return deployment_pb2.DeploymentHistoryEntry(
        time=optional_timestamp(entry.at),
        from_state=STATES[entry.from_state] if entry.from_state else deployment_pb2.DEPLOYMENT_STATE_UNSPECIFIED,
        to_state=STATES[entry.to_state],
        step=entry.step,
        weight_percent=entry.weight_percent,
        event=entry.event,
        actor=entry.actor,
        detail=entry.detail,
        verdict=VERDICTS[entry.verdict] if entry.verdict else deployment_pb2.VERDICT_UNSPECIFIED,
    )


def deployment_message(stored: StoredDeployment, *, history: bool = True) -> deployment_pb2.Deployment:
    """A deployment (with its history unless told otherwise)."""
    deployment: Deployment = stored.deployment
    plan = deployment.plan
    message = deployment_pb2.Deployment(
        id=deployment.id,
        service=plan.service,
        from_version=plan.from_version,
        to_version=plan.to_version,
        strategy=STRATEGIES[plan.strategy],
        steps=[
            deployment_pb2.DeploymentStep(weight_percent=step.weight_percent, pause=duration_message(step.pause))
            for step in plan.steps
        ],
        pause_mode=PAUSE_MODES[plan.pause_mode],
        pause_duration=duration_message(plan.pause),
        analysis=thresholds_message(plan.analysis),
        replicas=plan.replicas,
        keep_previous_for=duration_message(plan.keep_previous_for),
        state=STATES[deployment.state],
        pause_reason=(
            PAUSE_REASONS[deployment.pause_reason]
            if deployment.pause_reason
            else deployment_pb2.PAUSE_REASON_UNSPECIFIED
        ),
        current_step=deployment.step,
        current_weight_percent=deployment.weight_percent,
        consecutive_failures=deployment.consecutive_failures,
        create_time=optional_timestamp(deployment.created_at),
        update_time=optional_timestamp(deployment.updated_at),
        revision=deployment.revision,
    )
    if deployment.last_analysis is not None:
        message.last_analysis.CopyFrom(analysis_message(deployment.last_analysis, stored))
    if history:
        message.history.extend(history_message(entry) for entry in deployment.history)
    return message


def instance_message(registered: RegisteredInstance) -> routing_pb2.Instance:
    """A registered instance."""
    instance = registered.instance
    return routing_pb2.Instance(
        service=instance.service,
        version=instance.version,
        address=instance.address,
        metrics_endpoint=instance.metrics_endpoint,
        register_time=optional_timestamp(instance.registered_at),
        drained=registered.drained,
    )


def route_message(route: Route) -> routing_pb2.Route:
    """A route."""
    return routing_pb2.Route(
        service=route.service,
        revision=route.revision,
        versions=[
            routing_pb2.VersionRoute(version=v.version, weight_bp=v.weight_bp, addresses=list(v.addresses))
            for v in route.versions
        ],
        sticky_metadata_key=route.sticky_metadata_key,
        update_time=optional_timestamp(route.updated_at),
    )


def fault_message(fault: FaultInjection) -> faults_pb2.FaultInjection:
    """A fault injection."""
    return faults_pb2.FaultInjection(
        id=fault.id,
        service=fault.service,
        method_pattern=fault.method_pattern,
        delay=duration_message(fault.delay) if fault.delay > 0 else None,
        abort_code=fault.abort_code,
        percentage=fault.percentage,
        create_time=optional_timestamp(fault.created_at),
        expire_time=optional_timestamp(fault.expires_at),
        version=fault.version,
        kind=faults_pb2.FaultKind.ValueType(fault.kind),
        jitter=duration_message(fault.jitter) if fault.jitter > 0 else None,
        peer_service=fault.peer_service,
        block_inbound=fault.block_inbound,
        block_outbound=fault.block_outbound,
        cpu_workers=fault.cpu_workers,
        memory_mib=fault.memory_mib,
        instance_address=fault.instance_address,
        experiment_id=fault.experiment_id,
    )
