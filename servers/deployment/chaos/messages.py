"""Chaos experiments as `shieldx.deployment.v1` chaos messages, and back (shapes only; the
rules, which name the offending field, are in `domain`)."""

from __future__ import annotations

from servers.deployment.chaos.domain import (
    DEFAULT_ABORT_ERROR_RATE,
    DEFAULT_FAILED_PROBES,
    DEFAULT_HYPOTHESIS_ERROR_RATE,
    DEFAULT_STALL,
    AbortConditions,
    ChaosType,
    Direction,
    Experiment,
    Hypothesis,
    Measurement,
    Parameters,
    Report,
    Spec,
    State,
    Target,
    Verdict,
)
from servers.deployment.chaos.store import Schedule
from servers.deployment.timestamps import duration_message, seconds_of
from servers.mesh.errors import InvalidArgument
from servers.mesh.timestamps import optional_timestamp
from shieldx.deployment.v1 import chaos_pb2

STATES = {
    State.CREATED: chaos_pb2.CHAOS_STATE_CREATED,
    State.RUNNING: chaos_pb2.CHAOS_STATE_RUNNING,
    State.COMPLETED: chaos_pb2.CHAOS_STATE_COMPLETED,
    State.ABORTED: chaos_pb2.CHAOS_STATE_ABORTED,
}
STATES_BACK = {number: state for state, number in STATES.items()}
VERDICTS = {
    Verdict.UNDECIDED: chaos_pb2.CHAOS_VERDICT_UNSPECIFIED,
    Verdict.HYPOTHESIS_HELD: chaos_pb2.CHAOS_VERDICT_HYPOTHESIS_HELD,
    Verdict.DEVIATED: chaos_pb2.CHAOS_VERDICT_DEVIATED,
    Verdict.ABORTED: chaos_pb2.CHAOS_VERDICT_ABORTED,
}
DIRECTIONS = {
    chaos_pb2.PARTITION_DIRECTION_UNSPECIFIED: Direction.BOTH,
    chaos_pb2.PARTITION_DIRECTION_BOTH: Direction.BOTH,
    chaos_pb2.PARTITION_DIRECTION_INBOUND: Direction.INBOUND,
    chaos_pb2.PARTITION_DIRECTION_OUTBOUND: Direction.OUTBOUND,
}
DIRECTIONS_BACK = {
    Direction.BOTH: chaos_pb2.PARTITION_DIRECTION_BOTH,
    Direction.INBOUND: chaos_pb2.PARTITION_DIRECTION_INBOUND,
    Direction.OUTBOUND: chaos_pb2.PARTITION_DIRECTION_OUTBOUND,
}
_TYPES = {t.value: t for t in ChaosType}


def spec_of(message: chaos_pb2.ChaosExperimentSpec, prefix: str = "spec") -> Spec:
    """The domain spec of a request's spec (defaults filled; ranges are checked by `check_spec`)."""
    kind = _TYPES.get(message.type)
    if kind is None:
        raise InvalidArgument(f"{prefix}.type", "must be one of the seven chaos types")
    if message.parameters.direction not in DIRECTIONS:
        raise InvalidArgument(f"{prefix}.parameters.direction", "unknown partition direction")
    p, h, a, t = message.parameters, message.hypothesis, message.abort_conditions, message.target
    return Spec(
        name=message.name,
        type=kind,
        target=Target(
            service=t.service,
            version=t.version,
            method_pattern=t.method_pattern or "*",
            instance_count=t.instance_count,
        ),
        parameters=Parameters(
            delay=seconds_of(p.delay),
            jitter=seconds_of(p.jitter),
            cpu_workers=p.cpu_workers,
            memory_mib=p.memory_mib,
            peer_service=p.peer_service,
            direction=DIRECTIONS[p.direction],
            stall=seconds_of(p.stall) if p.HasField("stall") else DEFAULT_STALL,
        ),
        percentage=message.percentage,
        duration=seconds_of(message.duration),
        hypothesis=Hypothesis(
            max_error_rate=h.max_error_rate or DEFAULT_HYPOTHESIS_ERROR_RATE,
            max_p95_seconds=seconds_of(h.max_p95_latency) if h.HasField("max_p95_latency") else None,
            require_serving=h.require_serving,
            promql=h.promql,
            promql_max=h.promql_max,
        ),
        abort=AbortConditions(
            max_error_rate=a.max_error_rate or DEFAULT_ABORT_ERROR_RATE,
            max_failed_probes=a.max_failed_probes or DEFAULT_FAILED_PROBES,
        ),
    )


def spec_message(spec: Spec) -> chaos_pb2.ChaosExperimentSpec:
    """A spec as a message."""
    p, h, t = spec.parameters, spec.hypothesis, spec.target
    return chaos_pb2.ChaosExperimentSpec(
        name=spec.name,
        type=chaos_pb2.ChaosType.ValueType(spec.type.value),
        target=chaos_pb2.ChaosTarget(
            service=t.service, version=t.version, method_pattern=t.method_pattern, instance_count=t.instance_count
        ),
        parameters=chaos_pb2.ChaosParameters(
            delay=duration_message(p.delay) if p.delay else None,
            jitter=duration_message(p.jitter) if p.jitter else None,
            cpu_workers=p.cpu_workers,
            memory_mib=p.memory_mib,
            peer_service=p.peer_service,
            direction=DIRECTIONS_BACK[p.direction],
            stall=duration_message(p.stall),
        ),
        percentage=spec.percentage,
        duration=duration_message(spec.duration),
        hypothesis=chaos_pb2.SteadyStateHypothesis(
            max_error_rate=h.max_error_rate,
            max_p95_latency=duration_message(h.max_p95_seconds),
            require_serving=h.require_serving,
            promql=h.promql,
            promql_max=h.promql_max,
        ),
        abort_conditions=chaos_pb2.AbortConditions(
            max_error_rate=spec.abort.max_error_rate, max_failed_probes=spec.abort.max_failed_probes
        ),
    )


def measurement_message(m: Measurement) -> chaos_pb2.ChaosMeasurement:
    """A measurement as a message."""
    return chaos_pb2.ChaosMeasurement(
        total_requests=m.total,
        failed_requests=m.failed,
        error_rate=m.error_rate,
        latency_avg_ms=m.latency_avg_ms,
        latency_p95_ms=m.latency_p95_ms,
        latency_p99_ms=m.latency_p99_ms,
        circuit_breaker_trips=m.breaker_trips,
    )


def report_message(r: Report) -> chaos_pb2.ChaosReport:
    """A report as a message."""
    return chaos_pb2.ChaosReport(
        before=measurement_message(r.before),
        during=measurement_message(r.during),
        after=measurement_message(r.after),
        recovery_time=duration_message(r.recovery_seconds),
        safety_violations=list(r.violations),
        verdict=VERDICTS[r.verdict],
    )


def experiment_message(e: Experiment) -> chaos_pb2.ChaosExperiment:
    """An experiment as a message."""
    return chaos_pb2.ChaosExperiment(
        id=e.id,
        spec=spec_message(e.spec),
        state=STATES[e.state],
        create_time=optional_timestamp(e.created_at),
        start_time=optional_timestamp(e.started_at),
        end_time=optional_timestamp(e.ended_at),
        abort_reason=e.abort_reason,
        report=report_message(e.report),
        schedule_id=e.schedule_id,
        fault_injection_ids=list(e.fault_ids),
    )


def schedule_message(s: Schedule) -> chaos_pb2.ChaosSchedule:
    """A schedule as a message."""
    return chaos_pb2.ChaosSchedule(
        id=s.id,
        spec=spec_message(s.spec),
        experiment_interval=duration_message(s.interval),
        last_run_time=optional_timestamp(s.last_run_at),
        last_experiment_id=s.last_experiment_id,
        create_time=optional_timestamp(s.created_at),
    )
