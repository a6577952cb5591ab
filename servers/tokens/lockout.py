"""TOTP lockout: after repeated wrong codes a person gets no token for a while, longer each time.

A six-digit code has a million values and three are valid at any moment (drift window), so
unlimited guessing finds one in minutes. After `threshold` consecutive wrong codes the client
is locked for `base`; every further wrong code after a lock ends doubles it, up to `longest`.
While locked even the right code is refused, so guessing on cannot pay off. A right code
resets the count. Only callers that presented the right client secret reach the code check, so
nobody can lock a person out without their secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from servers.mesh.errors import Unauthenticated

MFA_LOCKED = "MFA_LOCKED"
"""Reason: too many wrong TOTP codes; the client gets no token until the lock ends."""


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """When and for how long wrong TOTP codes lock a client."""

    threshold: int = 5
    """Consecutive wrong codes that lock the client."""
    base: timedelta = timedelta(seconds=30)
    """Length of the first lock."""
    longest: timedelta = timedelta(hours=1)
    """Upper bound of a lock, however many codes were wrong."""

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("threshold must be at least 1")
        if self.base <= timedelta(0) or self.longest < self.base:
            raise ValueError("base must be positive and longest at least base")


@dataclass(frozen=True, slots=True)
class MfaFailures:
    """A client's run of wrong TOTP codes."""

    failures: int = 0
    """Consecutive wrong codes since the last right one."""
    locked_until: datetime | None = None
    """The client gets no token before this moment (None: not locked)."""

    def locked(self, now: datetime) -> bool:
        """True while the lock lasts."""
        return self.locked_until is not None and now < self.locked_until


def refuse_if_locked(state: MfaFailures, now: datetime) -> None:
    """Unauthenticated(MFA_LOCKED) while `state` is locked, with the moment it ends."""
    if state.locked_until is not None and state.locked(now):
        raise Unauthenticated(
            "too many wrong TOTP codes; this client is locked for a while",
            reason=MFA_LOCKED,
            metadata={"locked_until": state.locked_until.isoformat(), "failures": str(state.failures)},
        )


def after_wrong_code(state: MfaFailures, policy: LockoutPolicy, now: datetime) -> MfaFailures:
    """The run after one more wrong code: locked once it reaches the threshold, twice as long each time."""
    failures = state.failures + 1
    if failures < policy.threshold:
        return MfaFailures(failures, state.locked_until)
    lock = min(policy.base * 2 ** min(failures - policy.threshold, 32), policy.longest)
    return MfaFailures(failures, now + lock)
