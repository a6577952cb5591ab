"""Client secrets: generated once, shown once, kept only as an Argon2id hash (libsodium pwhash).

Checking a secret against its Argon2id hash costs tens of milliseconds on purpose. A client
that asks for tokens repeatedly would pay it every time, so a secret that verified once is
remembered, in memory only, as a BLAKE2b MAC under a key drawn at process start: the fast
path proves the caller holds the same secret without keeping the secret itself.

Every refusal costs one Argon2id verification, whatever made it fail: an unknown client id
is checked against a dummy hash (made when the hasher is, at the configured cost), and so is
a known client's secret that is empty or too long to be its own, so timing tells nothing
about which ids exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

import nacl.exceptions
import nacl.pwhash.argon2id

SECRET_BYTES = 32
"""Random bytes in a generated client secret (256 bits, base64url-encoded to 43 characters)."""

MAX_SECRET_LENGTH = 256
"""Longest presented secret that is hashed at all; longer ones are wrong without further work."""


@dataclass(frozen=True, slots=True)
class Argon2idCost:
    """Argon2id work factors for new hashes; existing hashes keep the cost they were made with."""

    opslimit: int = 2
    """Passes over memory (Argon2 `t`)."""
    memlimit: int = 19 * 1024 * 1024
    """Memory in bytes (Argon2 `m`); the default is OWASP's minimum recommendation, 19 MiB."""

    def __post_init__(self) -> None:
        if not nacl.pwhash.argon2id.OPSLIMIT_MIN <= self.opslimit <= nacl.pwhash.argon2id.OPSLIMIT_MAX:
            raise ValueError("opslimit out of libsodium's range")
        if not nacl.pwhash.argon2id.MEMLIMIT_MIN <= self.memlimit <= nacl.pwhash.argon2id.MEMLIMIT_MAX:
            raise ValueError("memlimit out of libsodium's range")


class ClientSecretHasher:
    """Makes, hashes and checks client secrets. Thread-safe; Argon2id runs without the GIL."""

    def __init__(self, cost: Argon2idCost | None = None, *, cache_size: int = 1024) -> None:
        """A hasher making new hashes at `cost`; `cache_size` verified secrets are remembered (0: none)."""
        if cache_size < 0:
            raise ValueError("cache_size must not be negative")
        self._cost = cost or Argon2idCost()
        self._cache_size = cache_size
        self._mac_key = secrets.token_bytes(32)
        self._verified: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._dummy_hash: bytes = nacl.pwhash.argon2id.str(
            secrets.token_bytes(16), opslimit=self._cost.opslimit, memlimit=self._cost.memlimit
        )
        self.verifications = 0
        """Argon2id verifications run so far (each refusal runs exactly one; a remembered secret none)."""

    @staticmethod
    def new_secret() -> str:
        """A fresh random client secret, to be shown to the operator once."""
        return secrets.token_urlsafe(SECRET_BYTES)

    def hash_secret(self, secret: str) -> str:
        """The Argon2id hash string (`$argon2id$v=19$...`) to store for `secret`."""
        if not secret or len(secret) > MAX_SECRET_LENGTH:
            raise ValueError(f"a client secret has 1 to {MAX_SECRET_LENGTH} characters")
        hashed: bytes = nacl.pwhash.argon2id.str(
            secret.encode("utf-8", "surrogatepass"), opslimit=self._cost.opslimit, memlimit=self._cost.memlimit
        )
        return hashed.decode("ascii")

    def check_secret(self, secret_hash: str | None, secret: str) -> bool:
        """True if `secret` matches `secret_hash`; None (an unknown client) fails as slowly as a wrong secret."""
        if secret_hash is None or not secret or len(secret) > MAX_SECRET_LENGTH:
            self._burn(secret)
            return False
        mac = self._mac(secret)
        with self._lock:
            remembered = self._verified.get(secret_hash)
            if remembered is not None:
                self._verified.move_to_end(secret_hash)
        if remembered is not None and hmac.compare_digest(remembered, mac):
            return True
        if not self._argon2_matches(secret_hash.encode("ascii", "replace"), secret):
            return False
        self._remember(secret_hash, mac)
        return True

    def remembers(self, secret_hash: str, secret: str) -> bool:
        """True if `secret` verified against `secret_hash` before (checking it now costs microseconds)."""
        if not secret or len(secret) > MAX_SECRET_LENGTH:
            return False
        with self._lock:
            remembered = self._verified.get(secret_hash)
        return remembered is not None and hmac.compare_digest(remembered, self._mac(secret))

    def forget(self, secret_hash: str) -> None:
        """Drop a remembered verification (when a client is deleted or its secret replaced)."""
        with self._lock:
            self._verified.pop(secret_hash, None)

    def _remember(self, secret_hash: str, mac: bytes) -> None:
        if not self._cache_size:
            return
        with self._lock:
            self._verified[secret_hash] = mac
            self._verified.move_to_end(secret_hash)
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)

    def _mac(self, secret: str) -> bytes:
        return hashlib.blake2b(secret.encode("utf-8", "surrogatepass"), key=self._mac_key, digest_size=32).digest()

    def _burn(self, secret: str) -> None:
        self._argon2_matches(self._dummy_hash, secret[:MAX_SECRET_LENGTH] or "-")

    def _argon2_matches(self, secret_hash: bytes, secret: str) -> bool:
        with self._lock:
            self.verifications += 1
        try:
            return bool(nacl.pwhash.argon2id.verify(secret_hash, secret.encode("utf-8", "surrogatepass")))
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            # Wrong secret, or a hash string libsodium cannot read (a corrupted row): both fail.
            return False
