"""TOTP lockout rules: the threshold, a lock that doubles with each further wrong code, and its cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from servers.mesh.errors import Unauthenticated
from servers.tokens.lockout import MFA_LOCKED, LockoutPolicy, MfaFailures, after_wrong_code, refuse_if_locked

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
POLICY = LockoutPolicy(threshold=3, base=timedelta(seconds=30), longest=timedelta(minutes=4))


def test_the_lock_starts_at_the_threshold_and_doubles_up_to_the_cap() -> None:
    state = MfaFailures()
    locks = []
    for _ in range(8):
        state = after_wrong_code(state, POLICY, NOW)
        locks.append(None if state.locked_until is None else (state.locked_until - NOW).total_seconds())
    assert locks == [None, None, 30, 60, 120, 240, 240, 240]


def test_a_locked_client_is_refused_until_the_lock_ends() -> None:
    locked = MfaFailures(3, NOW + timedelta(seconds=30))
    with pytest.raises(Unauthenticated) as caught:
        refuse_if_locked(locked, NOW + timedelta(seconds=29))
    assert caught.value.reason == MFA_LOCKED
    refuse_if_locked(locked, NOW + timedelta(seconds=30))
    refuse_if_locked(MfaFailures(2), NOW)


def test_policy_ranges_are_checked() -> None:
    with pytest.raises(ValueError):
        LockoutPolicy(threshold=0)
    with pytest.raises(ValueError):
        LockoutPolicy(base=timedelta(minutes=5), longest=timedelta(minutes=1))
