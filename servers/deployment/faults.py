"""Fault injection: delays and errors a service's servers add to a share of matching calls.

A fault injection names a service (optionally one version of it, such as a canary), a
shell-style pattern on full method names, a delay and/or an abort code, a percentage and an
expiry. Servers receive the active set on a watch stream and apply it in the mesh's
fault-injection interceptor (`servers.mesh.faults`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase

from servers.deployment.routes import check_service, check_version
from servers.mesh.errors import InvalidArgument

MAX_DELAY = 60.0
"""Longest delay, in seconds: long enough to trip any deadline, short enough to recover from."""
MAX_DURATION = 24 * 3600.0
"""Longest a fault injection may last, in seconds: a forgotten chaos experiment ends by itself."""
MAX_PATTERN_LENGTH = 256
"""Longest method pattern."""


@dataclass(frozen=True)
class FaultInjection:
    """An active (or expired) fault injection."""

    id: str
    """Identifier."""
    service: str
    """The service whose servers inject it."""
    method_pattern: str
    """Shell-style pattern on `package.Service/Method`."""
    delay: float
    """Seconds added before the call is handled (0 for none)."""
    abort_code: int
    """gRPC status code the call fails with (0 for none)."""
    percentage: float
    """Share of matching calls affected, in percent."""
    created_at: datetime
    """When it was created."""
    expires_at: datetime
    """When it stops."""
    version: str = ""
    """Only instances of this version inject it; empty for all."""
    kind: int = 0
    """What it does (`FaultKind` of the contract; 0 is delay/abort on calls)."""
    jitter: float = 0.0
    """Random extra delay in seconds, uniform from zero to this."""
    peer_service: str = ""
    """Partition: the service on the other side."""
    block_inbound: bool = False
    """Partition: refuse calls from `peer_service`."""
    block_outbound: bool = False
    """Partition: refuse calls to `peer_service`."""
    cpu_workers: int = 0
    """Resource exhaustion: busy workers per instance."""
    memory_mib: int = 0
    """Resource exhaustion: memory ballast per instance, in MiB."""
    instance_address: str = ""
    """Only the instance at this address injects it; empty for all."""
    experiment_id: str = ""
    """The chaos experiment that owns it and renews its expiry; empty for none."""

    def active(self, now: datetime) -> bool:
        """True until it expires."""
        return now < self.expires_at

    def matches(self, full_method: str) -> bool:
        """True if it applies to `full_method` (`package.Service/Method`, leading `/` ignored)."""
        return fnmatchcase(full_method.lstrip("/"), self.method_pattern)


def new_fault_injection(
    *,
    fault_id: str,
    service: str,
    method_pattern: str,
    delay: float,
    abort_code: int,
    percentage: float,
    duration: float,
    now: datetime,
    version: str = "",
) -> FaultInjection:
    """Validate a CreateFaultInjection request (delay and duration in seconds)."""
    check_service(service)
    if version:
        check_version(version)
    pattern = method_pattern or "*"
    if len(pattern) > MAX_PATTERN_LENGTH or not pattern.isprintable() or " " in pattern:
        raise InvalidArgument("method_pattern", f"is a pattern without spaces, at most {MAX_PATTERN_LENGTH} characters")
    if not math.isfinite(delay) or not 0 <= delay <= MAX_DELAY:
        raise InvalidArgument("delay", f"must be from 0 to {MAX_DELAY:g} s")
    if not 0 <= abort_code <= 16:
        raise InvalidArgument("abort_code", "must be a gRPC status code from 1 to 16, or 0 for none")
    if delay == 0 and abort_code == 0:
        raise InvalidArgument("abort_code", "set a delay, an abort code or both")
    if not math.isfinite(percentage) or not 0 < percentage <= 100:
        raise InvalidArgument("percentage", "must be above 0 and at most 100")
    if not math.isfinite(duration) or not 0 < duration <= MAX_DURATION:
        raise InvalidArgument("duration", f"must be above 0 and at most {MAX_DURATION:g} s")
    return FaultInjection(
        id=fault_id,
        service=service,
        method_pattern=pattern,
        delay=delay,
        abort_code=abort_code,
        percentage=percentage,
        created_at=now,
        expires_at=now + timedelta(seconds=duration),
        version=version,
    )
