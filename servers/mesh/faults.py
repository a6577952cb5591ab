"""Fault injection: delays and aborts for matching RPCs, for chaos experiments.

The active faults come from the deployment service's watch stream (or from tests); the table
is swapped atomically so the interceptor reads it without locks.
"""

from __future__ import annotations

import asyncio
import fnmatch
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from servers.mesh import status
from servers.mesh.interception import CallInterceptor, Context, Method


@dataclass(frozen=True)
class Fault:
    """One active fault."""

    id: str
    """Identifier of the fault (as named by the deployment service)."""
    method_pattern: str
    """Glob over `package.Service/Method`, e.g. `shieldx.credits.v1.CreditsService/*`."""
    percentage: float
    """Share of matching calls affected, 0–100."""
    delay_seconds: float = 0.0
    """Added latency before the call proceeds (or aborts)."""
    abort_code: grpc.StatusCode | None = None
    """If set, affected calls end with this status instead of running."""
    expires_at: float = float("inf")
    """Monotonic-clock time after which the fault no longer applies."""
    version: str = ""
    """Only calls to instances of this version are affected (empty: all versions)."""


class FaultTable:
    """The faults currently in force for this process."""

    def __init__(
        self,
        version: str = "",
        *,
        clock: Callable[[], float] = time.monotonic,
        chance: Callable[[], float] = random.random,
    ) -> None:
        self.version = version
        self._faults: tuple[Fault, ...] = ()
        self._clock = clock
        self._chance = chance

    def replace(self, faults: Iterable[Fault]) -> None:
        """Install a new set of faults (those for other versions are ignored)."""
        self._faults = tuple(f for f in faults if not f.version or f.version == self.version)

    def __bool__(self) -> bool:
        return bool(self._faults)

    def pick(self, method: Method) -> Fault | None:
        """The fault to apply to this call, if any (the first match that the dice choose)."""
        now = self._clock()
        for fault in self._faults:
            if fault.expires_at <= now or not fnmatch.fnmatchcase(method.span_name, fault.method_pattern):
                continue
            if self._chance() * 100.0 < fault.percentage:
                return fault
        return None


class FaultInjectionInterceptor(CallInterceptor[None]):
    """Applies the table's faults; health and reflection are never faulted."""

    def __init__(self, table: FaultTable) -> None:
        self.table = table

    def applies_to(self, method: Method) -> bool:
        return not method.is_infrastructure

    async def enter(self, method: Method, context: Context, request: Any) -> None:
        if not self.table:
            return
        fault = self.table.pick(method)
        if fault is None:
            return
        if fault.delay_seconds > 0:
            await asyncio.sleep(fault.delay_seconds)
        if fault.abort_code is not None:
            await context.abort_with_status(
                status.coded_status(
                    fault.abort_code,
                    f"fault injected by {fault.id}",
                    "FAULT_INJECTED",
                    method.package,
                    {"fault_id": fault.id},
                )
            )
