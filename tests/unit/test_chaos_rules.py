"""Chaos experiment rules: validation naming the field, safety refusals, the faults each type
installs, probe judgement and verdicts."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from servers.deployment.analysis import Observation
from servers.deployment.chaos.domain import (
    AbortConditions,
    ChaosType,
    Direction,
    Experiment,
    FaultKind,
    Hypothesis,
    Measurement,
    Parameters,
    Probe,
    Report,
    SafetyPolicy,
    Spec,
    State,
    Target,
    Verdict,
    abort_violation,
    check_spec,
    combine,
    hypothesis_failures,
    measurement,
    planned_faults,
    refuse_start,
    verdict,
)
from servers.deployment.chaos.store import experiment_document, experiment_from_document
from servers.mesh.errors import FailedPrecondition, InvalidArgument

SERVICES = {"credits", "tokens", "echo"}
METHODS = {"shieldx.credits.v1.CreditsService/Consume", "shieldx.credits.v1.CreditsService/GetBalance"}
PARTITION = ChaosType.NETWORK_PARTITION
NOON = datetime(2026, 12, 7, 12, 30, tzinfo=UTC)


def spec(**changes: Any) -> Spec:
    base = Spec(
        name="latency on credits",
        type=ChaosType.HIGH_LATENCY,
        target=Target("credits", method_pattern="shieldx.credits.v1.CreditsService/*"),
        parameters=Parameters(delay=0.1),
        percentage=50.0,
        duration=30.0,
    )
    return dataclasses.replace(base, **changes)


def check(s: Spec) -> Spec:
    return check_spec(s, services=SERVICES, methods=METHODS)


def test_a_valid_spec_passes_with_its_name_trimmed() -> None:
    assert check(spec(name="  latency  ")).name == "latency"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "spec.name"),
        ({"percentage": 0.0}, "spec.percentage"),
        ({"percentage": 100.5}, "spec.percentage"),
        ({"percentage": float("nan")}, "spec.percentage"),
        ({"duration": 0.5}, "spec.duration"),
        ({"duration": 7200.0}, "spec.duration"),
        ({"target": Target("nosuch")}, "spec.target.service"),
        ({"target": Target("credits", method_pattern="*/Nope")}, "spec.target.method_pattern"),
        ({"target": Target("credits", instance_count=-1)}, "spec.target.instance_count"),
        ({"parameters": Parameters(delay=0.0)}, "spec.parameters.delay"),
        ({"parameters": Parameters(delay=31.0)}, "spec.parameters.delay"),
        ({"parameters": Parameters(delay=0.1, jitter=-1.0)}, "spec.parameters.jitter"),
        ({"type": ChaosType.RESOURCE_EXHAUSTION, "parameters": Parameters()}, "spec.parameters.cpu_workers"),
        ({"type": PARTITION, "parameters": Parameters(peer_service="ghost")}, "spec.parameters.peer_service"),
        ({"type": PARTITION, "parameters": Parameters(peer_service="credits")}, "spec.parameters.peer_service"),
        ({"hypothesis": Hypothesis(max_error_rate=1.5)}, "spec.hypothesis.max_error_rate"),
        ({"abort": AbortConditions(max_error_rate=0.0)}, "spec.abort_conditions.max_error_rate"),
        ({"abort": AbortConditions(max_failed_probes=0)}, "spec.abort_conditions.max_failed_probes"),
    ],
)  # fmt: skip
def test_bad_specs_are_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        check(spec(**changes))
    assert refused.value.violations[0].field == field


def test_a_pattern_is_not_checked_against_methods_of_a_contract_unknown_here() -> None:
    odd = spec(target=Target("echo", method_pattern="meshtest.v1.EchoService/*"))
    assert check_spec(odd, services=SERVICES, methods=None).target.service == "echo"


def experiment(state: State = State.CREATED) -> Experiment:
    return Experiment(id="chaos-1", spec=spec(), state=state, created_at=NOON)


@pytest.mark.parametrize(
    ("policy", "running", "says"),
    [
        (SafetyPolicy(environment="production"), 0, "production"),
        (SafetyPolicy(safe_hours=(9, 10, 11)), 0, "outside the safe hours"),
        (SafetyPolicy(safe_hours=(12,), time_zone="America/New_York"), 0, "outside the safe hours"),
        (SafetyPolicy(max_concurrent=2), 2, "at most 2"),
    ],
)
def test_unsafe_starts_are_refused_with_the_reason(policy: SafetyPolicy, running: int, says: str) -> None:
    with pytest.raises(FailedPrecondition) as refused:
        refuse_start(experiment(), policy, NOON, running)
    assert refused.value.reason == "CHAOS_SAFETY_REFUSED"
    assert says in refused.value.message


def test_safe_hours_are_read_in_the_configured_time_zone() -> None:
    # 12:30 UTC is 07:30 in New York.
    refuse_start(experiment(), SafetyPolicy(safe_hours=(7,), time_zone="America/New_York"), NOON, 0)
    refuse_start(experiment(), SafetyPolicy(environment="production", production_enabled=True), NOON, 1)


def test_only_a_created_experiment_starts() -> None:
    with pytest.raises(FailedPrecondition) as refused:
        refuse_start(experiment(State.RUNNING), SafetyPolicy(), NOON, 0)
    assert refused.value.reason == "CHAOS_NOT_STARTABLE"


def test_each_type_installs_its_faults() -> None:
    addresses = ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]
    latency = planned_faults(spec(parameters=Parameters(delay=0.2, jitter=0.05)), addresses)
    assert [(f.kind, f.delay, f.jitter, f.percentage) for f in latency] == [(FaultKind.CALLS, 0.2, 0.05, 50.0)]
    loss = planned_faults(spec(type=ChaosType.PACKET_LOSS, parameters=Parameters(stall=0.3)), addresses)
    assert [(f.kind, f.delay, f.abort_code) for f in loss] == [(FaultKind.CALLS, 0.3, 14)]
    slow = planned_faults(spec(type=ChaosType.DB_SLOW_QUERY), addresses)
    assert [f.kind for f in slow] == [FaultKind.DB_SLOW_QUERY]
    caches = planned_faults(spec(type=ChaosType.CACHE_FAILURE), addresses)
    assert [f.kind for f in caches] == [FaultKind.CACHE_BYPASS]
    burn = planned_faults(
        spec(type=ChaosType.RESOURCE_EXHAUSTION, target=Target("credits", instance_count=2),
             parameters=Parameters(cpu_workers=1, memory_mib=64)),
        addresses,
    )  # fmt: skip
    assert [(f.instance_address, f.cpu_workers, f.memory_mib) for f in burn] == [
        ("10.0.0.1:1", 1, 64),
        ("10.0.0.2:1", 1, 64),
    ]
    kill = planned_faults(spec(type=ChaosType.SERVICE_FAILURE), addresses)
    assert [(f.kind, f.instance_address) for f in kill] == [(FaultKind.TERMINATE, "10.0.0.1:1")]


@pytest.mark.parametrize(
    ("direction", "target_sides", "peer_sides"),
    [
        (Direction.BOTH, (True, True), (True, True)),
        (Direction.INBOUND, (True, False), (False, True)),
        (Direction.OUTBOUND, (False, True), (True, False)),
    ],
)
def test_a_partition_is_enforced_on_both_ends_of_each_refused_direction(
    direction: Direction, target_sides: tuple[bool, bool], peer_sides: tuple[bool, bool]
) -> None:
    partition = spec(
        type=ChaosType.NETWORK_PARTITION, parameters=Parameters(peer_service="tokens", direction=direction)
    )
    target, peer = planned_faults(partition, [])
    assert (target.service, target.peer_service) == ("credits", "tokens")
    assert (peer.service, peer.peer_service) == ("tokens", "credits")
    assert (target.block_inbound, target.block_outbound) == target_sides
    assert (peer.block_inbound, peer.block_outbound) == peer_sides


def probe(total: int, failed: int, *, serving: int = 2, instances: int = 2, p95_ms: float = 5.0) -> Probe:
    return Probe(Measurement(total=total, failed=failed, latency_p95_ms=p95_ms), serving, instances)


def test_the_hypothesis_judges_errors_latency_and_health() -> None:
    h = Hypothesis(max_error_rate=0.05, max_p95_seconds=0.1, require_serving=True)
    assert hypothesis_failures(h, probe(100, 5)) == []
    assert len(hypothesis_failures(h, probe(100, 6))) == 1
    assert len(hypothesis_failures(h, probe(100, 0, p95_ms=150))) == 1
    assert len(hypothesis_failures(h, probe(100, 0, serving=1))) == 1
    assert hypothesis_failures(h, probe(5, 5)) == [], "too few calls to judge an error rate"


def test_the_abort_conditions_trip_on_impact_or_repeated_probe_failures() -> None:
    abort = AbortConditions(max_error_rate=0.10, max_failed_probes=3)
    assert abort_violation(abort, probe(100, 10), 0) is None
    violation = abort_violation(abort, probe(100, 11), 0)
    assert violation is not None and "impact threshold" in violation
    assert abort_violation(abort, probe(100, 0), 2) is None
    assert abort_violation(abort, probe(100, 0), 3) is not None


def test_verdicts() -> None:
    assert verdict(Report(), State.COMPLETED) is Verdict.HYPOTHESIS_HELD
    assert verdict(Report(deviations=1), State.COMPLETED) is Verdict.DEVIATED
    assert verdict(Report(), State.ABORTED) is Verdict.ABORTED


def test_measurements_from_the_histogram_and_combined() -> None:
    buckets = ((0.01, 50.0), (0.1, 100.0), (float("inf"), 100.0))
    m = measurement(Observation(100, 3, buckets, 1, 1), breaker_trips=2)
    assert (m.total, m.failed, m.breaker_trips) == (100, 3, 2)
    assert m.latency_avg_ms == pytest.approx((50 * 5 + 50 * 55) / 100)
    assert 10 < m.latency_p95_ms <= 100
    both = combine(m, Measurement(total=100, failed=1))
    assert (both.total, both.failed, both.error_rate) == (200, 4, 0.02)


def test_experiments_survive_the_store_document() -> None:
    e = experiment(State.ABORTED).replace(
        started_at=NOON,
        ended_at=NOON,
        abort_reason="impact",
        report=Report(during=Measurement(10, 5), recovery_seconds=1.5, violations=("x",), verdict=Verdict.ABORTED),
        fault_ids=("fault-1",),
    )
    assert experiment_from_document(experiment_document(e)) == e
