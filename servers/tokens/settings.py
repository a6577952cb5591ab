"""The token service's typed settings: YAML section `tokens:` and `SHIELDX_TOKENS__<FIELD>` variables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from servers.mesh.config import ConfigError
from servers.tokens.client_secrets import Argon2idCost
from servers.tokens.domain import TokenSettings
from servers.tokens.keys import MAX_OVERLAP


@dataclass
class TokenServiceSettings:
    """How the token service issues, rotates, keeps and forgets."""

    issuer: str = "shieldx-tokens"
    """`iss` of every token, and the issuer verifiers require."""
    audience: str = "shieldx"
    """Audience of the bootstrapped clients, and the default audience of clients created without one."""
    default_ttl_seconds: float = 900.0
    """Lifetime of a token when IssueToken names none."""
    max_ttl_seconds: float = 3600.0
    """Longest lifetime IssueToken grants (longer requests are refused with TTL_TOO_LONG)."""
    rotation_overlap_seconds: float = 3600.0
    """How long a replaced signing key keeps verifying (at most 30 days); at least `max_ttl_seconds` lets
    every token live out its life."""
    signing_key_max_age_seconds: float = 30 * 86400.0
    """Age at which the active key is rotated automatically; 0 rotates only on request."""
    leeway_seconds: float = 30.0
    """Clock skew tolerated by introspection; revocations are kept this much past a token's expiry."""
    argon2_opslimit: int = 2
    """Argon2id passes for new client secret hashes."""
    argon2_memlimit: int = 19 * 1024 * 1024
    """Argon2id memory in bytes for new client secret hashes."""
    bootstrap: bool = True
    """On the first start (no client registered yet), create the admin and one workload client per server
    and write their credentials to `<data_dir>/credentials`."""
    mfa_issuer: str = "ShieldX"
    """Issuer name authenticator apps show next to a person's account."""
    secret_replay_seconds: float = 600.0
    """How long a retried CreateClient or EnrollMfa (same request_id) gets the one-time secret again;
    after that the stored answer loses the secret and a retry gets the rest of it."""
    request_id_retention_seconds: float = 86400.0
    """How long request ids are remembered for retries (AIP-155)."""
    maintenance_interval_seconds: float = 60.0
    """How often expired revocations, retired keys and old request ids are purged, and key age checked."""
    refresh_seconds: float = 1.0
    """How often the store is checked for revocations and rotations recorded by another replica."""

    def token_settings(self) -> TokenSettings:
        """The domain's settings; ConfigError naming the setting if a value is out of range."""
        for name in (
            "default_ttl_seconds",
            "max_ttl_seconds",
            "maintenance_interval_seconds",
            "refresh_seconds",
            "secret_replay_seconds",
            "request_id_retention_seconds",
        ):
            value = getattr(self, name)
            if not 0 < value <= 10 * 365 * 86400:
                raise ConfigError(f"tokens.{name}: must be positive and at most ten years, got {value!r}")
        for name in ("rotation_overlap_seconds", "signing_key_max_age_seconds", "leeway_seconds"):
            value = getattr(self, name)
            if not 0 <= value <= 10 * 365 * 86400:
                raise ConfigError(f"tokens.{name}: must be between 0 and ten years, got {value!r}")
        if self.rotation_overlap_seconds > MAX_OVERLAP.total_seconds():
            raise ConfigError(f"tokens.rotation_overlap_seconds: must not exceed {MAX_OVERLAP.days} days")
        if not self.audience or " " in self.audience:
            raise ConfigError("tokens.audience: must be a non-empty word")
        try:
            return TokenSettings(
                issuer=self.issuer,
                default_ttl=timedelta(seconds=self.default_ttl_seconds),
                max_ttl=timedelta(seconds=self.max_ttl_seconds),
                rotation_overlap=timedelta(seconds=self.rotation_overlap_seconds),
                signing_key_max_age=timedelta(seconds=self.signing_key_max_age_seconds)
                if self.signing_key_max_age_seconds
                else None,
                leeway=timedelta(seconds=self.leeway_seconds),
                mfa_issuer=self.mfa_issuer,
            )
        except ValueError as exc:
            raise ConfigError(f"tokens: {exc}") from None

    def argon2_cost(self) -> Argon2idCost:
        """The Argon2id cost of new secret hashes; ConfigError if libsodium refuses it."""
        try:
            return Argon2idCost(opslimit=self.argon2_opslimit, memlimit=self.argon2_memlimit)
        except ValueError as exc:
            raise ConfigError(f"tokens.argon2_opslimit/argon2_memlimit: {exc}") from None
