"""Fault injection: what chaos experiments do to a server process, applied where each fault lives.

The active faults come from the deployment service's watch stream (or from tests); the table
is swapped atomically so readers need no locks. Each kind is applied at its own seam:

- delays and aborts (high latency, packet loss) and inbound partitions: the fault step of the
  server interceptor chain (`FaultInjectionInterceptor`);
- outbound partitions: the gate of this process's client channels (`FaultTable.refuses_to`);
- slow statements: the storage layer, inside the transaction (`FaultTable.statement_delay`);
- bypassed caches: the caches ask `FaultTable.caches_bypassed` before a lookup;
- resource exhaustion: busy worker threads and a memory ballast in this process (`Exhaustion`);
- termination: the process exits once, if it started before the fault was created.

Every fault carries an expiry that its controller keeps pushing forward; a fault whose
controller died stops at its expiry on its own (the busy workers and the ballast included).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import fnmatch
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from servers.mesh import status
from servers.mesh.auth import current_caller
from servers.mesh.config import bounded, section_settings
from servers.mesh.interception import CallInterceptor, Context, Method

if TYPE_CHECKING:
    from servers.mesh.config import MeshConfig

log = logging.getLogger(__name__)

PROCESS_STARTED = time.time()
"""Wall-clock start of this process: a termination fault created before it was already served."""
ENVOY_SCOPE = "chaos.inject"
"""Scope a caller needs for its Envoy fault headers to be honoured."""
TERMINATION_EXIT_CODE = 75
"""Exit status of a process a termination fault ended (its supervisor restarts it)."""


class FaultKind(enum.Enum):
    """What a fault does (the contract's `FaultKind`)."""

    CALLS = 0
    PARTITION = 1
    DB_SLOW_QUERY = 2
    CACHE_BYPASS = 3
    RESOURCE_EXHAUSTION = 4
    TERMINATE = 5


@dataclasses.dataclass
class FaultSettings:
    """Limits and switches of the fault machinery (YAML `faults:`, env `SHIELDX_FAULTS__*`)."""

    envoy_fault_headers: bool = False
    """Honour Envoy's `x-envoy-fault-*` request headers from callers holding `chaos.inject`."""
    max_cpu_workers: int = bounded(2, at_least=0, at_most=64)
    """Hard cap on busy workers a resource-exhaustion fault may start in this process."""
    max_memory_mib: int = bounded(256, at_least=0, at_most=65536)
    """Hard cap on the memory ballast a resource-exhaustion fault may hold, in MiB."""


def fault_settings(config: MeshConfig, environ: Mapping[str, str] | None = None) -> FaultSettings:
    """The `faults:` section of the config file, then `SHIELDX_FAULTS__*`."""
    return section_settings(FaultSettings, config, "faults", environ)


@dataclasses.dataclass(frozen=True)
class Fault:
    """One active fault."""

    id: str
    """Identifier of the fault (as named by the deployment service)."""
    method_pattern: str
    """Glob over `package.Service/Method`, e.g. `shieldx.credits.v1.CreditsService/*`."""
    percentage: float
    """Share of matching calls (or statements) affected, 0–100."""
    delay_seconds: float = 0.0
    """Added latency before the call proceeds (or aborts), or before each statement."""
    abort_code: grpc.StatusCode | None = None
    """If set, affected calls end with this status instead of running."""
    expires_at: float = float("inf")
    """Monotonic-clock time after which the fault no longer applies."""
    version: str = ""
    """Only calls to instances of this version are affected (empty: all versions)."""
    kind: FaultKind = FaultKind.CALLS
    """What the fault does."""
    jitter_seconds: float = 0.0
    """Random extra delay, uniform from zero to this."""
    peer_service: str = ""
    """Partition: the service on the other side."""
    block_inbound: bool = False
    """Partition: refuse calls from `peer_service`."""
    block_outbound: bool = False
    """Partition: refuse calls to `peer_service`."""
    cpu_workers: int = 0
    """Resource exhaustion: busy workers."""
    memory_mib: int = 0
    """Resource exhaustion: ballast in MiB."""
    instance_address: str = ""
    """Only the instance at this address applies it (empty: every instance)."""
    created_wall: float = 0.0
    """Wall-clock creation time (termination: only processes started before it exit)."""

    def delay(self, chance: Callable[[], float]) -> float:
        """This occurrence's delay: the fixed part plus a uniform share of the jitter."""
        return self.delay_seconds + (chance() * self.jitter_seconds if self.jitter_seconds else 0.0)


class Exhaustion:
    """Busy worker threads and a memory ballast held until a deadline (or `release`).

    Workers check the deadline themselves and a timer drops the ballast, so both end even if
    nobody calls `release` (the controller died and stopped renewing the fault).
    """

    def __init__(self, settings: FaultSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._deadline = 0.0
        self._workers: list[threading.Thread] = []
        self._ballast: bytearray | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    @property
    def workers(self) -> int:
        """Busy workers running now."""
        return sum(worker.is_alive() for worker in self._workers)

    @property
    def ballast_mib(self) -> int:
        """Ballast held now, in MiB."""
        ballast = self._ballast
        return 0 if ballast is None else len(ballast) // (1024 * 1024)

    def hold(self, cpu_workers: int, memory_mib: int, until: float) -> None:
        """Run `cpu_workers` busy workers and hold `memory_mib` MiB until `until` (capped by the settings)."""
        cpu_workers = max(0, min(cpu_workers, self.settings.max_cpu_workers))
        memory_mib = max(0, min(memory_mib, self.settings.max_memory_mib))
        with self._lock:
            self._deadline = until
            self._workers = [w for w in self._workers if w.is_alive()]
            while len(self._workers) < cpu_workers:
                worker = threading.Thread(target=self._burn, name="shieldx-chaos-burn", daemon=True)
                worker.start()
                self._workers.append(worker)
            if memory_mib and self.ballast_mib != memory_mib:
                self._ballast = bytearray(b"\xa5") * (memory_mib * 1024 * 1024)  # written, so resident
            elif not memory_mib:
                self._ballast = None
            self._arm_timer(until)

    def release(self) -> None:
        """Stop the workers and free the ballast now."""
        with self._lock:
            self._deadline = 0.0
            self._ballast = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _arm_timer(self, until: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if until == float("inf"):
            self._timer = None
            return
        self._timer = threading.Timer(max(0.0, until - self._clock()), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if self._clock() >= self._deadline:
                self._ballast = None

    def _burn(self) -> None:
        spins = 0
        while self._clock() < self._deadline:
            spins += 1  # busy on purpose: the fault is this CPU time
            if spins % 10_000 == 0:
                time.sleep(0)  # let the interpreter switch threads so the process stays responsive


class FaultTable:
    """The faults currently in force for this process."""

    def __init__(
        self,
        version: str = "",
        *,
        clock: Callable[[], float] = time.monotonic,
        chance: Callable[[], float] = random.random,
        settings: FaultSettings | None = None,
        terminate: Callable[[Fault], None] | None = None,
    ) -> None:
        self.version = version
        self.instance_address = ""
        """This process's advertised `host:port` (set by the deployment agent)."""
        self.settings = settings or FaultSettings()
        self.exhaustion = Exhaustion(self.settings, clock)
        self._faults: tuple[Fault, ...] = ()
        self._calls: tuple[Fault, ...] = ()
        self._matching: dict[str, tuple[Fault, ...]] = {}
        """Method path → the call faults whose pattern matches it (filled as calls arrive)."""
        self._inbound: tuple[Fault, ...] = ()
        self._outbound: tuple[Fault, ...] = ()
        self._statements: tuple[Fault, ...] = ()
        self._caches: tuple[Fault, ...] = ()
        self._clock = clock
        self._chance = chance
        self._terminate = terminate or _exit_now
        self._terminated: set[str] = set()

    def replace(self, faults: Iterable[Fault]) -> None:
        """Install a new set of faults (those for other versions or instances are ignored)."""
        mine = tuple(f for f in faults if self._applies_here(f))
        self._faults = mine
        self._calls = tuple(f for f in mine if f.kind is FaultKind.CALLS)
        self._matching = {}
        self._inbound = tuple(f for f in mine if f.kind is FaultKind.PARTITION and f.block_inbound)
        self._outbound = tuple(f for f in mine if f.kind is FaultKind.PARTITION and f.block_outbound)
        self._statements = tuple(f for f in mine if f.kind is FaultKind.DB_SLOW_QUERY)
        self._caches = tuple(f for f in mine if f.kind is FaultKind.CACHE_BYPASS)
        self._apply_exhaustion(f for f in mine if f.kind is FaultKind.RESOURCE_EXHAUSTION)
        for fault in mine:
            if fault.kind is FaultKind.TERMINATE and self._due_to_terminate(fault):
                self._terminated.add(fault.id)
                self._terminate(fault)

    def _applies_here(self, fault: Fault) -> bool:
        if fault.version and fault.version != self.version:
            return False
        return not fault.instance_address or fault.instance_address == self.instance_address

    def _due_to_terminate(self, fault: Fault) -> bool:
        return fault.id not in self._terminated and fault.created_wall > PROCESS_STARTED and self._live(fault)

    def _apply_exhaustion(self, faults: Iterable[Fault]) -> None:
        live = [f for f in faults if self._live(f)]
        if not live:
            self.exhaustion.release()
            return
        until = max(f.expires_at for f in live)
        self.exhaustion.hold(max(f.cpu_workers for f in live), max(f.memory_mib for f in live), until)

    def _live(self, fault: Fault) -> bool:
        return fault.expires_at > self._clock()

    def __bool__(self) -> bool:
        """True when some fault acts on incoming calls (the interceptor's fast path)."""
        return bool(self._calls or self._inbound)

    @property
    def faults(self) -> tuple[Fault, ...]:
        """Every fault installed for this process."""
        return self._faults

    def pick(self, method: Method) -> Fault | None:
        """The delay/abort fault to apply to this call, if any (the first match that the dice choose).

        Which faults match a method is worked out once per installed set, so a fault aimed at
        other methods costs a call one dictionary lookup, not a glob match per call.
        """
        matching = self._matching.get(method.path)
        if matching is None:
            name = method.span_name
            matching = tuple(f for f in self._calls if fnmatch.fnmatchcase(name, f.method_pattern))
            self._matching[method.path] = matching
        if not matching:
            return None
        now = self._clock()
        for fault in matching:
            if fault.expires_at > now and self._chance() * 100.0 < fault.percentage:
                return fault
        return None

    def refuses_from(self, caller: str) -> Fault | None:
        """The partition refusing calls from the workload `caller`, if any."""
        return self._partition(self._inbound, caller)

    def refuses_to(self, service: str) -> Fault | None:
        """The partition refusing this process's calls to `service`, if any (the client-side gate)."""
        return self._partition(self._outbound, service) if self._outbound else None

    def _partition(self, faults: tuple[Fault, ...], peer: str) -> Fault | None:
        now = self._clock()
        for fault in faults:
            if fault.peer_service == peer and fault.expires_at > now:
                return fault
        return None

    def statement_delay(self) -> float:
        """Seconds to hold the next storage statement (inside its transaction); 0 for none."""
        if not self._statements:
            return 0.0
        now = self._clock()
        for fault in self._statements:
            if fault.expires_at > now and self._chance() * 100.0 < fault.percentage:
                return fault.delay(self._chance)
        return 0.0

    def caches_bypassed(self) -> bool:
        """True while a cache-failure fault is in force: caches must go to the source of truth."""
        if not self._caches:
            return False
        now = self._clock()
        return any(f.expires_at > now for f in self._caches)

    def active_count(self) -> int:
        """Faults installed and not expired."""
        now = self._clock()
        return sum(f.expires_at > now for f in self._faults)


def _exit_now(fault: Fault) -> None:
    log.warning("terminating this process for fault %s (its supervisor restarts it)", fault.id)
    logging.shutdown()
    os._exit(TERMINATION_EXIT_CODE)


class FaultInjectionInterceptor(CallInterceptor[None]):
    """Applies the table's call faults and inbound partitions; health and reflection are never faulted.

    With `envoy_headers`, a caller holding `chaos.inject` may ask for a fault per call with
    Envoy's fault-filter headers, so one chaos test drives a sidecar mesh and this one alike.
    """

    def __init__(self, table: FaultTable, *, envoy_headers: bool = False) -> None:
        self.table = table
        self.envoy_headers = envoy_headers

    def applies_to(self, method: Method) -> bool:
        return not method.is_infrastructure

    async def enter(self, method: Method, context: Context, request: Any) -> None:
        if self.envoy_headers:
            await self._envoy(method, context)
        if not self.table:
            return
        table = self.table
        if table._inbound:
            caller = current_caller()
            partition = table.refuses_from(caller.client_id) or table.refuses_from(caller.subject)
            if partition is not None:
                await _abort(context, method, partition.id, grpc.StatusCode.UNAVAILABLE, "NETWORK_PARTITIONED")
        fault = table.pick(method)
        if fault is None:
            return
        delay = fault.delay(random.random)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault.abort_code is not None:
            await _abort(context, method, fault.id, fault.abort_code, "FAULT_INJECTED")

    async def _envoy(self, method: Method, context: Context) -> None:
        request = envoy_fault(context.invocation_metadata())
        if request is None or ENVOY_SCOPE not in current_caller().scopes:
            return
        delay, abort_code = request
        if delay > 0:
            await asyncio.sleep(delay)
        if abort_code is not None:
            await _abort(context, method, "envoy-fault-header", abort_code, "FAULT_INJECTED")


async def _abort(context: Context, method: Method, fault_id: str, code: grpc.StatusCode, reason: str) -> None:
    await context.abort_with_status(
        status.coded_status(code, f"fault injected by {fault_id}", reason, method.package, {"fault_id": fault_id})
    )


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
ENVOY_HEADERS = (
    "x-envoy-fault-delay-request",
    "x-envoy-fault-delay-request-percentage",
    "x-envoy-fault-abort-grpc-request",
    "x-envoy-fault-abort-request-percentage",
)


def envoy_fault(
    metadata: Iterable[tuple[str, str | bytes]], chance: Callable[[], float] = random.random
) -> tuple[float, grpc.StatusCode | None] | None:
    """The (delay seconds, abort code) Envoy's fault-filter headers ask of this call, or None.

    As in Envoy: the delay header is milliseconds, the abort header a gRPC status code, and a
    percentage header (0–100, default 100) rolls the dice for each independently. Malformed
    values are ignored, as Envoy ignores them.
    """
    headers = {k: v for k, v in metadata if k in ENVOY_HEADERS and isinstance(v, str)}
    if not headers:
        return None
    delay = _envoy_number(headers.get("x-envoy-fault-delay-request"))
    if delay is not None and not _envoy_roll(headers.get("x-envoy-fault-delay-request-percentage"), chance):
        delay = None
    code_number = _envoy_number(headers.get("x-envoy-fault-abort-grpc-request"))
    code = _STATUS_CODES.get(int(code_number)) if code_number is not None else None
    if code is grpc.StatusCode.OK or (
        code is not None and not _envoy_roll(headers.get("x-envoy-fault-abort-request-percentage"), chance)
    ):
        code = None
    if delay is None and code is None:
        return None
    return (min(delay or 0.0, 60_000.0) / 1000.0, code)


def _envoy_number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0 <= number < float("inf") else None


def _envoy_roll(percentage: str | None, chance: Callable[[], float]) -> bool:
    share = _envoy_number(percentage)
    return chance() * 100.0 < (100.0 if share is None else min(share, 100.0))
