"""The rules of chaos experiments: what a valid experiment is, when one may start, what it
injects, when it must roll back, and the verdict. Pure Python: no gRPC, no SQL."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from zoneinfo import ZoneInfo

from servers.deployment.analysis import Observation, histogram_quantile
from servers.deployment.routes import check_service, check_version
from servers.mesh.errors import FailedPrecondition, InvalidArgument

MIN_DURATION = 1.0
"""Shortest experiment, in seconds."""
MAX_DURATION = 3600.0
"""Longest experiment, in seconds: a forgotten experiment ends by itself."""
MAX_DELAY = 30.0
"""Longest injected delay (latency, stall, slow statement), in seconds."""
MAX_NAME_LENGTH = 128
MAX_PATTERN_LENGTH = 256
MAX_PROMQL_LENGTH = 2048
MAX_CPU_WORKERS = 64
"""Most busy workers a request may ask for (each server caps it further by its own config)."""
MAX_MEMORY_MIB = 65536
"""Most ballast a request may ask for, in MiB (each server caps it further)."""
DEFAULT_HYPOTHESIS_ERROR_RATE = 0.05
DEFAULT_ABORT_ERROR_RATE = 0.10
DEFAULT_FAILED_PROBES = 3
DEFAULT_STALL = 0.1
"""How long a lost call stalls before it fails, in seconds, unless told."""
MIN_CALLS_TO_JUDGE = 10
"""Calls a probe interval must hold before its error rate can abort an experiment."""
UNAVAILABLE = 14
"""gRPC UNAVAILABLE: what lost packets and partitions surface as."""


class ChaosType(enum.Enum):
    """The seven kinds of fault (values are the contract's `ChaosType` numbers)."""

    SERVICE_FAILURE = 1
    HIGH_LATENCY = 2
    RESOURCE_EXHAUSTION = 3
    DB_SLOW_QUERY = 4
    NETWORK_PARTITION = 5
    PACKET_LOSS = 6
    CACHE_FAILURE = 7


class State(enum.Enum):
    """Where an experiment is."""

    CREATED = "CREATED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    ABORTED = "ABORTED"


class Verdict(enum.Enum):
    """The outcome."""

    UNDECIDED = "UNDECIDED"
    HYPOTHESIS_HELD = "HYPOTHESIS_HELD"
    DEVIATED = "DEVIATED"
    ABORTED = "ABORTED"


class Direction(enum.Enum):
    """Which calls a partition refuses, seen from the target."""

    BOTH = "BOTH"
    INBOUND = "INBOUND"
    OUTBOUND = "OUTBOUND"


class FaultKind(enum.IntEnum):
    """What an injected fault does (the contract's `FaultKind` numbers)."""

    CALLS = 0
    PARTITION = 1
    DB_SLOW_QUERY = 2
    CACHE_BYPASS = 3
    RESOURCE_EXHAUSTION = 4
    TERMINATE = 5


@dataclass(frozen=True)
class Target:
    """Where an experiment is aimed."""

    service: str
    version: str = ""
    method_pattern: str = "*"
    instance_count: int = 0
    """Instances to affect (service failure, resource exhaustion); 0 means all (1 for service failure)."""


@dataclass(frozen=True)
class Parameters:
    """Type-specific parameters (seconds for times)."""

    delay: float = 0.0
    jitter: float = 0.0
    cpu_workers: int = 0
    memory_mib: int = 0
    peer_service: str = ""
    direction: Direction = Direction.BOTH
    stall: float = DEFAULT_STALL


@dataclass(frozen=True)
class Hypothesis:
    """The steady state: probes with tolerances."""

    max_error_rate: float = DEFAULT_HYPOTHESIS_ERROR_RATE
    max_p95_seconds: float | None = None
    require_serving: bool = True
    promql: str = ""
    promql_max: float = 0.0


@dataclass(frozen=True)
class AbortConditions:
    """When the experiment rolls itself back."""

    max_error_rate: float = DEFAULT_ABORT_ERROR_RATE
    max_failed_probes: int = DEFAULT_FAILED_PROBES


@dataclass(frozen=True)
class Spec:
    """What an experiment does."""

    name: str
    type: ChaosType
    target: Target
    parameters: Parameters
    percentage: float
    duration: float
    hypothesis: Hypothesis = field(default_factory=Hypothesis)
    abort: AbortConditions = field(default_factory=AbortConditions)


@dataclass(frozen=True)
class Measurement:
    """Calls and latency over one phase (from the servers' grpc_server_* series)."""

    total: int = 0
    failed: int = 0
    latency_avg_ms: float = 0.0
    latency_p95_ms: float = 0.0
    latency_p99_ms: float = 0.0
    breaker_trips: int = 0

    @property
    def error_rate(self) -> float:
        """failed / total (0 without calls)."""
        return self.failed / self.total if self.total else 0.0


@dataclass(frozen=True)
class Report:
    """Before, during, after, recovery and verdict."""

    before: Measurement = field(default_factory=Measurement)
    during: Measurement = field(default_factory=Measurement)
    after: Measurement = field(default_factory=Measurement)
    recovery_seconds: float | None = None
    violations: tuple[str, ...] = ()
    verdict: Verdict = Verdict.UNDECIDED
    deviations: int = 0
    """Probes during the run at which the hypothesis did not hold."""


@dataclass(frozen=True)
class Experiment:
    """A chaos experiment and what has happened to it."""

    id: str
    spec: Spec
    state: State
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    abort_reason: str = ""
    report: Report = field(default_factory=Report)
    schedule_id: str = ""
    fault_ids: tuple[str, ...] = ()

    def replace(self, **changes: object) -> Experiment:
        """A copy with `changes`."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PlannedFault:
    """One fault injection an experiment installs (the deployment server's FaultInjection fields)."""

    service: str
    kind: FaultKind
    method_pattern: str = "*"
    percentage: float = 100.0
    delay: float = 0.0
    jitter: float = 0.0
    abort_code: int = 0
    version: str = ""
    peer_service: str = ""
    block_inbound: bool = False
    block_outbound: bool = False
    cpu_workers: int = 0
    memory_mib: int = 0
    instance_address: str = ""


# -- validation ------------------------------------------------------------------------------


def check_spec(
    spec: Spec,
    *,
    services: Collection[str],
    methods: Collection[str] | None,
    field_prefix: str = "spec",
) -> Spec:
    """Validate an experiment; `services` are those known to the mesh, `methods` the target's
    full method names (None when its contract is not known here). InvalidArgument names the field."""
    name = spec.name.strip()
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise InvalidArgument(f"{field_prefix}.name", f"must be 1 to {MAX_NAME_LENGTH} printable characters")
    if not isinstance(spec.type, ChaosType):
        raise InvalidArgument(f"{field_prefix}.type", "must be one of the seven chaos types")
    target = _check_target(spec, services, methods, f"{field_prefix}.target")
    if not math.isfinite(spec.percentage) or not 0 < spec.percentage <= 100:
        raise InvalidArgument(f"{field_prefix}.percentage", "must be above 0 and at most 100")
    if not math.isfinite(spec.duration) or not MIN_DURATION <= spec.duration <= MAX_DURATION:
        raise InvalidArgument(f"{field_prefix}.duration", f"must be from {MIN_DURATION:g} s to {MAX_DURATION:g} s")
    parameters = _check_parameters(spec, services, f"{field_prefix}.parameters")
    _check_hypothesis(spec.hypothesis, f"{field_prefix}.hypothesis")
    _check_abort(spec.abort, f"{field_prefix}.abort_conditions")
    return dataclasses.replace(spec, name=name, target=target, parameters=parameters)


def _check_target(spec: Spec, services: Collection[str], methods: Collection[str] | None, prefix: str) -> Target:
    target = spec.target
    check_service(target.service, f"{prefix}.service")
    if target.service not in services:
        raise InvalidArgument(f"{prefix}.service", f"unknown service {target.service!r}")
    if target.version:
        check_version(target.version, f"{prefix}.version")
    pattern = target.method_pattern or "*"
    if len(pattern) > MAX_PATTERN_LENGTH or not pattern.isprintable() or " " in pattern:
        raise InvalidArgument(
            f"{prefix}.method_pattern", f"is a pattern without spaces, at most {MAX_PATTERN_LENGTH} characters"
        )
    if methods is not None and not any(fnmatchcase(m, pattern) for m in methods):
        raise InvalidArgument(f"{prefix}.method_pattern", f"matches no method of {target.service}")
    if not 0 <= target.instance_count <= 1000:
        raise InvalidArgument(f"{prefix}.instance_count", "must be from 0 (all) to 1000")
    return dataclasses.replace(target, method_pattern=pattern)


def _delay(value: float, name: str, *, required: bool) -> None:
    if not math.isfinite(value) or not 0 <= value <= MAX_DELAY or (required and value <= 0):
        low = "above 0" if required else "from 0"
        raise InvalidArgument(name, f"must be {low} and at most {MAX_DELAY:g} s")


def _check_parameters(spec: Spec, services: Collection[str], prefix: str) -> Parameters:
    p = spec.parameters
    kind = spec.type
    _delay(p.delay, f"{prefix}.delay", required=kind in (ChaosType.HIGH_LATENCY, ChaosType.DB_SLOW_QUERY))
    _delay(p.jitter, f"{prefix}.jitter", required=False)
    _delay(p.stall, f"{prefix}.stall", required=False)
    if not 0 <= p.cpu_workers <= MAX_CPU_WORKERS:
        raise InvalidArgument(f"{prefix}.cpu_workers", f"must be from 0 to {MAX_CPU_WORKERS}")
    if not 0 <= p.memory_mib <= MAX_MEMORY_MIB:
        raise InvalidArgument(f"{prefix}.memory_mib", f"must be from 0 to {MAX_MEMORY_MIB}")
    if kind is ChaosType.RESOURCE_EXHAUSTION and p.cpu_workers == 0 and p.memory_mib == 0:
        raise InvalidArgument(f"{prefix}.cpu_workers", "set cpu_workers, memory_mib or both")
    if kind is ChaosType.NETWORK_PARTITION:
        check_service(p.peer_service, f"{prefix}.peer_service")
        if p.peer_service not in services:
            raise InvalidArgument(f"{prefix}.peer_service", f"unknown service {p.peer_service!r}")
        if p.peer_service == spec.target.service:
            raise InvalidArgument(f"{prefix}.peer_service", "must differ from the target service")
    return p


def _check_hypothesis(h: Hypothesis, prefix: str) -> None:
    if not math.isfinite(h.max_error_rate) or not 0 <= h.max_error_rate <= 1:
        raise InvalidArgument(f"{prefix}.max_error_rate", "must be from 0 to 1")
    if h.max_p95_seconds is not None and (not math.isfinite(h.max_p95_seconds) or h.max_p95_seconds <= 0):
        raise InvalidArgument(f"{prefix}.max_p95_latency", "must be above 0")
    if len(h.promql) > MAX_PROMQL_LENGTH:
        raise InvalidArgument(f"{prefix}.promql", f"at most {MAX_PROMQL_LENGTH} characters")
    if not math.isfinite(h.promql_max):
        raise InvalidArgument(f"{prefix}.promql_max", "must be a finite number")


def _check_abort(a: AbortConditions, prefix: str) -> None:
    if not math.isfinite(a.max_error_rate) or not 0 < a.max_error_rate <= 1:
        raise InvalidArgument(f"{prefix}.max_error_rate", "must be above 0 and at most 1")
    if not 1 <= a.max_failed_probes <= 1000:
        raise InvalidArgument(f"{prefix}.max_failed_probes", "must be from 1 to 1000")


# -- safety ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafetyPolicy:
    """When experiments may run at all."""

    environment: str = "development"
    """The environment's label; `production` needs `production_enabled`."""
    production_enabled: bool = False
    safe_hours: tuple[int, ...] = tuple(range(24))
    """Hours of the day (0–23, in `time_zone`) in which experiments may start."""
    time_zone: str = "UTC"
    max_concurrent: int = 2

    def refusal(self, now: datetime, running: int) -> str | None:
        """Why an experiment may not start now (None if it may)."""
        if self.environment.lower() == "production" and not self.production_enabled:
            return "the environment is production and chaos.production_enabled is off"
        hour = now.astimezone(ZoneInfo(self.time_zone)).hour
        if hour not in self.safe_hours:
            return f"hour {hour} in {self.time_zone} is outside the safe hours {list(self.safe_hours)}"
        if running >= self.max_concurrent:
            return f"{running} experiments are running; at most {self.max_concurrent} at once"
        return None

    def within_safe_hours(self, now: datetime) -> bool:
        """True in one of the safe hours."""
        return now.astimezone(ZoneInfo(self.time_zone)).hour in self.safe_hours


def refuse_start(experiment: Experiment, policy: SafetyPolicy, now: datetime, running: int) -> None:
    """FailedPrecondition (with the reason) unless `experiment` may start now."""
    if experiment.state is not State.CREATED:
        raise FailedPrecondition(
            f"experiment {experiment.id} is {experiment.state.value}, not CREATED", reason="CHAOS_NOT_STARTABLE"
        )
    reason = policy.refusal(now, running)
    if reason is not None:
        raise FailedPrecondition(f"refused: {reason}", reason="CHAOS_SAFETY_REFUSED")


# -- the faults an experiment installs --------------------------------------------------------


def planned_faults(spec: Spec, instances: Sequence[str]) -> list[PlannedFault]:
    """The fault injections that carry out `spec`; `instances` are the target's addresses, in
    the order to pick from (for the types aimed at instances)."""
    t, p = spec.target, spec.parameters
    common = {"method_pattern": t.method_pattern, "percentage": spec.percentage, "version": t.version}
    kind = spec.type
    if kind is ChaosType.HIGH_LATENCY:
        return [PlannedFault(t.service, FaultKind.CALLS, delay=p.delay, jitter=p.jitter, **common)]  # type: ignore[arg-type]
    if kind is ChaosType.PACKET_LOSS:
        return [PlannedFault(t.service, FaultKind.CALLS, delay=p.stall, abort_code=UNAVAILABLE, **common)]  # type: ignore[arg-type]
    if kind is ChaosType.DB_SLOW_QUERY:
        return [PlannedFault(t.service, FaultKind.DB_SLOW_QUERY, delay=p.delay, jitter=p.jitter, **common)]  # type: ignore[arg-type]
    if kind is ChaosType.CACHE_FAILURE:
        return [PlannedFault(t.service, FaultKind.CACHE_BYPASS, version=t.version)]
    if kind is ChaosType.NETWORK_PARTITION:
        inbound = p.direction in (Direction.BOTH, Direction.INBOUND)
        outbound = p.direction in (Direction.BOTH, Direction.OUTBOUND)
        return [
            PlannedFault(
                t.service, FaultKind.PARTITION, peer_service=p.peer_service, block_inbound=inbound,
                block_outbound=outbound, version=t.version,
            ),
            PlannedFault(
                p.peer_service, FaultKind.PARTITION, peer_service=t.service, block_inbound=outbound,
                block_outbound=inbound,
            ),
        ]  # fmt: skip
    chosen = _chosen_instances(spec, instances)
    if kind is ChaosType.RESOURCE_EXHAUSTION:
        return [
            PlannedFault(
                t.service, FaultKind.RESOURCE_EXHAUSTION, cpu_workers=p.cpu_workers, memory_mib=p.memory_mib,
                instance_address=address, version=t.version,
            )
            for address in chosen
        ]  # fmt: skip
    return [PlannedFault(t.service, FaultKind.TERMINATE, instance_address=address) for address in chosen]


def _chosen_instances(spec: Spec, instances: Sequence[str]) -> list[str]:
    count = spec.target.instance_count
    if count == 0:
        count = 1 if spec.type is ChaosType.SERVICE_FAILURE else len(instances)
    return list(instances[:count])


# -- measuring and judging --------------------------------------------------------------------


def measurement(observation: Observation, breaker_trips: int = 0) -> Measurement:
    """A phase's numbers from an observation of the target's servers."""
    buckets = observation.latency_buckets
    return Measurement(
        total=observation.requests,
        failed=observation.errors,
        latency_avg_ms=_histogram_mean(buckets) * 1000,
        latency_p95_ms=_quantile_ms(0.95, buckets),
        latency_p99_ms=_quantile_ms(0.99, buckets),
        breaker_trips=breaker_trips,
    )


def _quantile_ms(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    value = histogram_quantile(q, buckets)
    return 0.0 if math.isnan(value) else value * 1000


def _histogram_mean(buckets: Sequence[tuple[float, float]]) -> float:
    """Mean of a cumulative histogram: each observation at its bucket midpoint (+inf at its lower bound)."""
    total = weighted = previous_bound = previous_count = 0.0
    for bound, count in sorted(buckets):
        in_bucket = max(count - previous_count, 0.0)
        middle = previous_bound if math.isinf(bound) else (previous_bound + bound) / 2
        weighted += in_bucket * middle
        total += in_bucket
        previous_bound, previous_count = (previous_bound if math.isinf(bound) else bound), count
    return weighted / total if total else 0.0


def combine(a: Measurement, b: Measurement) -> Measurement:
    """Two consecutive intervals as one (latencies weighted by calls)."""
    total = a.total + b.total
    if total == 0:
        return Measurement(breaker_trips=a.breaker_trips + b.breaker_trips)

    def weighted(x: float, y: float) -> float:
        return (x * a.total + y * b.total) / total

    return Measurement(
        total=total,
        failed=a.failed + b.failed,
        latency_avg_ms=weighted(a.latency_avg_ms, b.latency_avg_ms),
        latency_p95_ms=max(a.latency_p95_ms, b.latency_p95_ms) if a.total and b.total else weighted(
            a.latency_p95_ms, b.latency_p95_ms
        ),
        latency_p99_ms=max(a.latency_p99_ms, b.latency_p99_ms) if a.total and b.total else weighted(
            a.latency_p99_ms, b.latency_p99_ms
        ),
        breaker_trips=a.breaker_trips + b.breaker_trips,
    )  # fmt: skip


@dataclass(frozen=True)
class Probe:
    """One probe's view of the target."""

    interval: Measurement
    """What happened since the previous probe."""
    serving: int
    """Target instances answering SERVING."""
    instances: int
    """Target instances registered."""
    promql_value: float | None = None
    """The hypothesis' PromQL expression's value, when it has one."""


def hypothesis_failures(h: Hypothesis, probe: Probe) -> list[str]:
    """The ways `probe` breaks the hypothesis (empty when it holds)."""
    failures: list[str] = []
    m = probe.interval
    if m.total >= MIN_CALLS_TO_JUDGE and m.error_rate > h.max_error_rate:
        failures.append(f"error rate {m.error_rate:.3f} above {h.max_error_rate:.3f}")
    if h.max_p95_seconds is not None and m.total and m.latency_p95_ms > h.max_p95_seconds * 1000:
        failures.append(f"p95 {m.latency_p95_ms:.1f} ms above {h.max_p95_seconds * 1000:.1f} ms")
    if h.require_serving and probe.serving < probe.instances:
        failures.append(f"{probe.instances - probe.serving} of {probe.instances} target instances not SERVING")
    if h.promql and probe.promql_value is not None and probe.promql_value > h.promql_max:
        failures.append(f"{h.promql} = {probe.promql_value:g} above {h.promql_max:g}")
    return failures


def abort_violation(abort: AbortConditions, probe: Probe, failed_in_a_row: int) -> str | None:
    """The violation that rolls the experiment back now, or None."""
    m = probe.interval
    if m.total >= MIN_CALLS_TO_JUDGE and m.error_rate > abort.max_error_rate:
        return f"impact threshold crossed: error rate {m.error_rate:.3f} above {abort.max_error_rate:.3f}"
    if failed_in_a_row >= abort.max_failed_probes:
        return f"steady-state probe failed {failed_in_a_row} times in a row"
    return None


def verdict(report: Report, state: State) -> Verdict:
    """The verdict of an experiment that ended in `state`."""
    if state is State.ABORTED:
        return Verdict.ABORTED
    return Verdict.DEVIATED if report.deviations else Verdict.HYPOTHESIS_HELD
