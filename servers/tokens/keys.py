"""The token service's signing keys: generation, the active key, rotation with an overlap, retirement.

Exactly one key signs at a time (the active key, `not_after` unset). Rotating makes a new
active key and gives the old one `not_after = now + overlap`: until then its public key is
still published and its tokens still verify everywhere; after it, verifiers refuse them
even if they have not expired. A key that no longer signs needs no secret half, so rotation
drops it at once: only the active key's secret ever exists. A key past `not_after` is retired
and can be forgotten.

Key ids are the PASERK `k4.pid` of the public key, which every verifier recomputes, so a
published kid can never name a different key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

import nacl.signing

from servers.mesh import paseto
from servers.mesh.claims import TokenSigner
from servers.mesh.errors import FailedPrecondition, InvalidArgument
from servers.mesh.verifier import TrustedKey

NO_ACTIVE_KEY = "NO_ACTIVE_KEY"
"""Reason: the service has no key to sign with (not bootstrapped, or its key store is empty)."""

MAX_OVERLAP = timedelta(days=30)
"""Longest overlap a rotation accepts; far beyond any token lifetime, and keeps `not_after` representable."""


class KeyState(StrEnum):
    """Where a key is in its life."""

    ACTIVE = "active"
    """Signs new tokens; published."""
    PREVIOUS = "previous"
    """Replaced by a newer key; published and verifying until `not_after`."""
    RETIRED = "retired"
    """Past `not_after`: no longer published, its tokens refused."""


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """One signing key as the store keeps it."""

    kid: str
    """PASERK k4.pid of the public key."""
    public_key: bytes
    """The 32-byte Ed25519 public key."""
    secret_key: bytes | None = field(repr=False)
    """The 64-byte Ed25519 secret key (seed || public key) while the key is active, else None."""
    create_time: datetime
    """When the key was generated."""
    not_before: datetime
    """When it started (or starts) signing; tokens under it are refused before."""
    not_after: datetime | None = None
    """End of the overlap after a rotation; None while the key is active."""

    def state(self, now: datetime) -> KeyState:
        """The key's state at `now`."""
        if self.not_after is None:
            return KeyState.ACTIVE
        return KeyState.PREVIOUS if now < self.not_after else KeyState.RETIRED

    @property
    def paserk(self) -> str:
        """The `k4.public` PASERK of the public key, as ListPublicKeys publishes it."""
        return paseto.paserk_public(self.public_key)

    def trusted_key(self) -> TrustedKey:
        """The public half, with its validity window, as verifiers hold it."""
        return TrustedKey(nacl.signing.VerifyKey(self.public_key), not_before=self.not_before, not_after=self.not_after)


def generate_signing_key(now: datetime) -> SigningKeyRecord:
    """A new Ed25519 key, active from `now`."""
    signing_key = nacl.signing.SigningKey.generate()
    public_key = bytes(signing_key.verify_key)
    return SigningKeyRecord(
        kid=paseto.paserk_pid(public_key),
        public_key=public_key,
        secret_key=bytes(signing_key) + public_key,
        create_time=now,
        not_before=now,
    )


def check_overlap(overlap: timedelta) -> timedelta:
    """`overlap` if a rotation accepts it; InvalidArgument(overlap) if negative or beyond MAX_OVERLAP."""
    if overlap < timedelta(0):
        raise InvalidArgument("overlap", "must not be negative")
    if overlap > MAX_OVERLAP:
        raise InvalidArgument("overlap", f"must not exceed {MAX_OVERLAP.days} days")
    return overlap


@dataclass(frozen=True, slots=True)
class KeyRing:
    """All keys the service knows, newest last. Immutable: commands return a new ring."""

    keys: tuple[SigningKeyRecord, ...] = ()
    """The keys, in creation order."""

    def __post_init__(self) -> None:
        active = [key for key in self.keys if key.not_after is None]
        if len(active) > 1:
            raise ValueError("a key ring has at most one active key")
        if len({key.kid for key in self.keys}) != len(self.keys):
            raise ValueError("duplicate kid in key ring")

    @property
    def active(self) -> SigningKeyRecord:
        """The key that signs; FailedPrecondition(NO_ACTIVE_KEY) if there is none."""
        for key in reversed(self.keys):
            if key.not_after is None and key.secret_key is not None:
                return key
        raise FailedPrecondition("the token service has no active signing key", reason=NO_ACTIVE_KEY)

    def has_active(self) -> bool:
        """True if a key can sign (bootstrap checks this before generating the first key)."""
        return any(key.not_after is None and key.secret_key is not None for key in self.keys)

    def published(self, now: datetime) -> tuple[SigningKeyRecord, ...]:
        """Keys whose public half is published at `now` (active, and previous within their overlap)."""
        return tuple(key for key in self.keys if key.state(now) is not KeyState.RETIRED)

    def trusted_keys(self, now: datetime) -> list[TrustedKey]:
        """The published keys as a verifier holds them (for the service's own introspection)."""
        return [key.trusted_key() for key in self.published(now)]

    def signer(self, *, issuer: str, clock: Callable[[], float]) -> TokenSigner:
        """A TokenSigner for the active key."""
        secret = self.active.secret_key
        assert secret is not None  # `active` only returns keys with a secret half
        return TokenSigner(nacl.signing.SigningKey(secret[:32]), issuer=issuer, clock=clock)

    def with_key(self, key: SigningKeyRecord) -> KeyRing:
        """The ring with `key` added as the first active key (bootstrap); FailedPrecondition if one exists."""
        if self.has_active():
            raise FailedPrecondition("a signing key is already active", reason="SIGNING_KEY_EXISTS")
        return KeyRing((*self.keys, key))

    def rotate(self, now: datetime, overlap: timedelta, new_key: SigningKeyRecord) -> KeyRing:
        """Make `new_key` active; the current active key verifies until `now + overlap`, then retires.

        The old key's secret half is dropped here: it will never sign again. No older key
        verifies past `now + overlap` either: keys already in an overlap keep their own end
        if it is sooner. An overlap shorter than the longest token lifetime cuts those tokens
        short, which is the point after a suspected leak (overlap 0 cuts them all at once).
        """
        check_overlap(overlap)
        if new_key.not_after is not None or new_key.secret_key is None:
            raise ValueError("a new key must be able to sign")
        retired_at = now + overlap
        keys = tuple(
            replace(key, not_after=min(key.not_after or retired_at, retired_at), secret_key=None) for key in self.keys
        )
        return KeyRing((*keys, new_key))

    def without_retired(self, now: datetime) -> KeyRing:
        """The ring minus keys retired at `now` (the store may delete them)."""
        return KeyRing(tuple(key for key in self.keys if key.state(now) is not KeyState.RETIRED))

    def rotation_due(self, now: datetime, max_age: timedelta | None) -> bool:
        """True if the active key is older than `max_age` (None: never), or there is no active key."""
        if not self.has_active():
            return True
        return max_age is not None and now - self.active.not_before >= max_age
