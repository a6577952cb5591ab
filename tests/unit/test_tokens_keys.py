"""Signing-key lifecycle: generation, the active key, rotation with an overlap, retirement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from servers.mesh import claims as tc
from servers.mesh import paseto
from servers.mesh.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from servers.mesh.verifier import TokenVerifier
from servers.tokens import keys
from servers.tokens.keys import KeyRing, KeyState

T0 = datetime(2030, 1, 1, tzinfo=UTC)
OVERLAP = timedelta(minutes=30)


class Clock:
    """A settable clock in epoch seconds."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at.timestamp()


def _bootstrapped(at: datetime = T0) -> KeyRing:
    return KeyRing().with_key(keys.generate_signing_key(at))


def _verifier(ring: KeyRing, clock: Clock) -> TokenVerifier:
    return TokenVerifier(audience="shieldx.credits", keys=ring.trusted_keys(clock.at), clock=clock)


def _reason(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    return caught.value.reason


def test_generated_key_is_active_and_named_by_its_k4_pid() -> None:
    key = keys.generate_signing_key(T0)
    assert key.kid == paseto.paserk_pid(key.public_key)
    assert key.paserk == paseto.paserk_public(key.public_key)
    assert key.secret_key is not None and key.secret_key[32:] == key.public_key
    assert key.state(T0) is KeyState.ACTIVE
    assert key.secret_key.hex() not in repr(key)


def test_empty_ring_has_no_active_key() -> None:
    ring = KeyRing()
    assert not ring.has_active()
    with pytest.raises(FailedPrecondition) as caught:
        _ = ring.active
    assert caught.value.reason == keys.NO_ACTIVE_KEY
    assert ring.rotation_due(T0, None)


def test_bootstrap_happens_once() -> None:
    ring = _bootstrapped()
    with pytest.raises(FailedPrecondition):
        ring.with_key(keys.generate_signing_key(T0))


def test_signer_signs_with_the_active_key() -> None:
    ring = _bootstrapped()
    clock = Clock(T0)
    issued = ring.signer(issuer="shieldx-tokens", clock=clock).mint(
        audience="shieldx.credits", ttl=timedelta(minutes=5)
    )
    assert issued.kid == ring.active.kid
    assert _verifier(ring, clock).verify(issued.token).jti == issued.claims.jti


def test_rotation_publishes_both_keys_and_drops_the_old_secret() -> None:
    ring = _bootstrapped()
    old = ring.active
    at = T0 + timedelta(days=1)
    rotated = ring.rotate(at, OVERLAP, keys.generate_signing_key(at))
    assert rotated.active.kid != old.kid
    previous = next(key for key in rotated.keys if key.kid == old.kid)
    assert previous.secret_key is None
    assert previous.not_after == at + OVERLAP
    assert previous.state(at) is KeyState.PREVIOUS
    assert [key.kid for key in rotated.published(at)] == [old.kid, rotated.active.kid]
    assert [key.kid for key in rotated.published(at + OVERLAP)] == [rotated.active.kid]
    assert previous.state(at + OVERLAP) is KeyState.RETIRED


def test_old_tokens_verify_until_the_overlap_ends_then_fail_and_new_tokens_carry_the_new_kid() -> None:
    clock = Clock(T0)
    ring = _bootstrapped()
    old_token = ring.signer(issuer="i", clock=clock).mint(audience="shieldx.credits", ttl=timedelta(hours=2))

    clock.at = T0 + timedelta(minutes=10)
    ring = ring.rotate(clock.at, OVERLAP, keys.generate_signing_key(clock.at))
    new_token = ring.signer(issuer="i", clock=clock).mint(audience="shieldx.credits", ttl=timedelta(hours=2))
    assert new_token.kid == ring.active.kid != old_token.kid
    assert tc.read_kid(paseto.peek_footer(new_token.token)) == ring.active.kid

    verifier = _verifier(ring, clock)
    assert verifier.verify(old_token.token).jti == old_token.claims.jti
    assert verifier.verify(new_token.token).jti == new_token.claims.jti

    # End of the overlap (plus the verifiers' leeway): the old key's tokens fail though unexpired,
    # whether the verifier refreshed its key list or still holds the old one.
    clock.at = T0 + timedelta(minutes=10) + OVERLAP + tc.DEFAULT_LEEWAY + timedelta(seconds=1)
    assert _reason(verifier, old_token.token) == tc.TOKEN_KEY_INACTIVE
    verifier.replace_keys(ring.trusted_keys(clock.at))
    assert _reason(verifier, old_token.token) == tc.TOKEN_UNKNOWN_KEY
    assert verifier.verify(new_token.token).jti == new_token.claims.jti


def test_rotation_with_zero_overlap_cuts_every_older_key_at_once() -> None:
    ring = _bootstrapped()
    first = ring.active.kid
    at = T0 + timedelta(minutes=1)
    ring = ring.rotate(at, timedelta(hours=1), keys.generate_signing_key(at))
    second = ring.active.kid
    ring = ring.rotate(at, timedelta(0), keys.generate_signing_key(at))
    assert [key.kid for key in ring.published(at)] == [ring.active.kid]
    assert {key.kid for key in ring.keys} == {first, second, ring.active.kid}
    assert ring.without_retired(at).keys == (ring.active,)


@pytest.mark.parametrize("overlap", [timedelta(seconds=-1), keys.MAX_OVERLAP + timedelta(seconds=1)])
def test_negative_or_huge_overlap_is_refused(overlap: timedelta) -> None:
    ring = _bootstrapped()
    with pytest.raises(InvalidArgument) as caught:
        ring.rotate(T0, overlap, keys.generate_signing_key(T0))
    assert caught.value.metadata["field"] == "overlap"


def test_retired_keys_can_be_forgotten() -> None:
    ring = _bootstrapped()
    at = T0 + timedelta(hours=1)
    ring = ring.rotate(at, OVERLAP, keys.generate_signing_key(at))
    assert len(ring.without_retired(at).keys) == 2
    assert ring.without_retired(at + OVERLAP).keys == (ring.active,)


def test_rotation_falls_due_with_age() -> None:
    ring = _bootstrapped()
    assert not ring.rotation_due(T0 + timedelta(days=29), timedelta(days=30))
    assert ring.rotation_due(T0 + timedelta(days=30), timedelta(days=30))
    assert not ring.rotation_due(T0 + timedelta(days=3650), None)


def test_a_ring_cannot_hold_two_active_keys() -> None:
    with pytest.raises(ValueError):
        KeyRing((keys.generate_signing_key(T0), keys.generate_signing_key(T0)))
