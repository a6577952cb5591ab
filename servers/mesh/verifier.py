"""The local token verifier every server runs on each request, and the keys it trusts.

`TokenVerifier` checks a bearer token without any network call: the key is chosen by kid
from the public keys the token service publishes, and expiry, not-before, audience, issuer
and the revocation set are checked on every call. A signature that verified once is cached
by token string, so a repeated token costs a dictionary lookup plus those checks; the cache
never skips a check, it only skips the Ed25519 verification and the JSON parsing.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import nacl.signing

from servers.mesh import paseto
from servers.mesh.caches import CacheGate
from servers.mesh.claims import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_LEEWAY,
    TOKEN_AUDIENCE_MISMATCH,
    TOKEN_EXPIRED,
    TOKEN_ISSUER_MISMATCH,
    TOKEN_KEY_INACTIVE,
    TOKEN_NOT_YET_VALID,
    TOKEN_REVOKED,
    TOKEN_UNKNOWN_KEY,
    TokenClaims,
    cached_kid,
    malformed,
)
from servers.mesh.errors import Unauthenticated


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key the token service publishes, with the window in which its tokens are accepted."""

    public_key: nacl.signing.VerifyKey
    """The Ed25519 public key."""
    not_before: datetime | None = None
    """Tokens under this key are refused before this moment (None: no lower bound)."""
    not_after: datetime | None = None
    """Tokens under this key are refused after this moment, even unexpired ones (None: no bound)."""
    kid: str = field(init=False)
    """The key id, always the PASERK k4.pid of `public_key` (so a kid can never name another key)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kid", paseto.paserk_pid(self.public_key))

    @classmethod
    def from_paserk(
        cls,
        paserk: str,
        *,
        kid: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> TrustedKey:
        """A key from its `k4.public` PASERK; if `kid` is given it must match (InvalidPaserk otherwise)."""
        key = cls(paseto.parse_paserk_public(paserk), not_before=not_before, not_after=not_after)
        if kid is not None and kid != key.kid:
            raise paseto.InvalidPaserk(f"kid {kid!r} is not the k4.pid of its key")
        return key


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token whose signature verified and whose payload parsed: what the cache keeps."""

    claims: TokenClaims
    kid: str
    exp: float
    nbf: float | None


class TokenVerifier:
    """Verifies bearer tokens locally against the published keys and the revocation set.

    Thread-safe: keys are replaced by swapping one dictionary, and the cache and the
    revocation set are guarded by locks held only for dictionary operations.
    """

    def __init__(
        self,
        *,
        audience: str | Iterable[str] | None,
        keys: Iterable[TrustedKey] = (),
        issuer: str | None = None,
        leeway: timedelta = DEFAULT_LEEWAY,
        clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_token_length: int = paseto.DEFAULT_MAX_TOKEN_LENGTH,
        implicit_assertion: bytes = b"",
    ) -> None:
        """Create a verifier.

        `audience` is the audience (or audiences) this server accepts; None accepts any
        audience and is meant only for the token service's own introspection. `issuer`,
        when set, must equal `iss`. `clock` returns the current time in seconds since the
        epoch. `cache_size` 0 disables the cache.
        """
        if isinstance(audience, str):
            audience = (audience,)
        self._audiences = None if audience is None else frozenset(audience)
        if self._audiences is not None and not all(self._audiences):
            raise ValueError("audience must be a non-empty string (or None to accept any)")
        if self._audiences == frozenset():
            raise ValueError("an empty audience list would refuse every token; pass None to accept any")
        if leeway < timedelta(0):
            raise ValueError("leeway must not be negative")
        if cache_size < 0:
            raise ValueError("cache_size must not be negative")
        self._issuer = issuer
        self._leeway = leeway.total_seconds()
        self._clock = clock
        self._cache_size = cache_size
        self._max_token_length = max_token_length
        self._implicit = implicit_assertion
        self._keys: dict[str, TrustedKey] = {}
        self._cache: OrderedDict[str, _Verified] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.cache_gate: CacheGate | None = None
        """Counts lookups and bypasses the cache during a cache-failure fault (set by the runtime)."""
        self._revoked: dict[str, float] = {}
        self._revoked_lock = threading.Lock()
        self.replace_keys(keys)

    # --- keys ---------------------------------------------------------------------------------

    def replace_keys(self, keys: Iterable[TrustedKey]) -> None:
        """Trust exactly `keys` from now on (the result of a ListPublicKeys refresh).

        Cached tokens under a key that disappeared are refused from the next call on: the
        cache stores the kid and the warm path looks it up again.
        """
        self._keys = {key.kid: key for key in keys}

    @property
    def kids(self) -> frozenset[str]:
        """Key ids currently trusted."""
        return frozenset(self._keys)

    # --- revocations --------------------------------------------------------------------------

    def revoke(self, jti: str, expires_at: datetime) -> None:
        """Refuse the token `jti` until `expires_at` (its own `exp`), after which expiry refuses it anyway."""
        with self._revoked_lock:
            self._revoked[jti] = expires_at.timestamp()

    def replace_revocations(self, revocations: Iterable[tuple[str, datetime]]) -> None:
        """Hold exactly these `(jti, expires_at)` revocations (a watch stream that restarted with a reset)."""
        fresh = {jti: expires_at.timestamp() for jti, expires_at in revocations}
        with self._revoked_lock:
            self._revoked = fresh

    def is_revoked(self, jti: str) -> bool:
        """True if `jti` is in the revocation set."""
        return jti in self._revoked

    @property
    def revocation_count(self) -> int:
        """Revocations currently held."""
        return len(self._revoked)

    def prune_revocations(self) -> int:
        """Forget revocations of tokens that expiry refuses anyway; return how many were dropped."""
        horizon = self._clock() - self._leeway
        with self._revoked_lock:
            stale = [jti for jti, expires in self._revoked.items() if expires <= horizon]
            for jti in stale:
                del self._revoked[jti]
        return len(stale)

    # --- verification -------------------------------------------------------------------------

    def verify(self, token: str) -> TokenClaims:
        """The claims of `token` if it is valid now; Unauthenticated with the reason otherwise."""
        verified = self._cached(token)
        if verified is None:
            verified = self._verify_signature(token)
            self._remember(token, verified)
        self._check(verified)
        return verified.claims

    def _cached(self, token: str) -> _Verified | None:
        if not self._cache_size:
            return None
        gate = self.cache_gate
        if gate is not None and gate.bypassed():
            gate.miss()
            return None
        with self._cache_lock:
            verified = self._cache.get(token)
            if verified is not None:
                self._cache.move_to_end(token)
        if gate is not None:
            gate.hit() if verified is not None else gate.miss()
        return verified

    def _remember(self, token: str, verified: _Verified) -> None:
        if not self._cache_size or verified.exp + self._leeway <= self._clock():
            return
        with self._cache_lock:
            self._cache[token] = verified
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _verify_signature(self, token: str) -> _Verified:
        payload, footer = paseto.verify_by_footer(
            token, self._key_for_footer, self._implicit, max_length=self._max_token_length
        )
        claims = TokenClaims.from_payload(payload)
        return _Verified(
            claims=claims,
            kid=cached_kid(footer),
            exp=claims.exp.timestamp(),
            nbf=None if claims.nbf is None else claims.nbf.timestamp(),
        )

    def _key_for_footer(self, footer: bytes) -> nacl.signing.VerifyKey:
        if not footer:
            raise malformed("token has no footer naming its key")
        key = self._keys.get(cached_kid(footer))
        if key is None:
            raise Unauthenticated("token signed by an unknown key", reason=TOKEN_UNKNOWN_KEY)
        return key.public_key

    def _check(self, verified: _Verified) -> None:
        now = self._clock()
        key = self._keys.get(verified.kid)
        if key is None:
            raise Unauthenticated("token signed by an unknown key", reason=TOKEN_UNKNOWN_KEY)
        if key.not_after is not None and now - self._leeway > key.not_after.timestamp():
            raise Unauthenticated("token signed by a retired key", reason=TOKEN_KEY_INACTIVE)
        if key.not_before is not None and now + self._leeway < key.not_before.timestamp():
            raise Unauthenticated("token signed by a key not yet in service", reason=TOKEN_KEY_INACTIVE)
        if now - self._leeway >= verified.exp:
            raise Unauthenticated("token has expired", reason=TOKEN_EXPIRED)
        if verified.nbf is not None and now + self._leeway < verified.nbf:
            raise Unauthenticated("token is not valid yet", reason=TOKEN_NOT_YET_VALID)
        claims = verified.claims
        if self._audiences is not None and claims.aud not in self._audiences:
            raise Unauthenticated("token is for another audience", reason=TOKEN_AUDIENCE_MISMATCH)
        if self._issuer is not None and claims.iss != self._issuer:
            raise Unauthenticated("token from an untrusted issuer", reason=TOKEN_ISSUER_MISMATCH)
        if claims.jti in self._revoked:
            raise Unauthenticated("token has been revoked", reason=TOKEN_REVOKED)
