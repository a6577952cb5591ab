"""Settings of the credits server (YAML section `credits:`, env `SHIELDX_CREDITS__<FIELD>`).

Ranges are declared on the fields (`bounded`) and enforced by the config loader, with errors
naming the key; `check()` adds what relates two settings.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from servers.credits.commands import LedgerLimits
from servers.credits.payment_refs import PaymentReferenceCipher, PaymentReferenceConfig, generate_key
from servers.credits.twophase import CrashPoint
from servers.mesh.config import ConfigError, bounded
from servers.mesh.keyfiles import existing_or_new, read_or_create_secret
from servers.mesh.vault import SecretVault

PAYMENT_REFERENCE_KEY = "credits/payment-reference-key"
"""Vault name of the payment reference master key (base64, as configured keys are)."""


@dataclass
class CreditsSettings:
    """Settings of the credits server (YAML section `credits:`, env `SHIELDX_CREDITS__<FIELD>`)."""

    snapshot_every: int = bounded(100, at_least=1)
    """Store a snapshot of an account every this many events (loading replays at most this many)."""
    account_cache_size: int = bounded(10_000, at_least=0)
    """Accounts whose latest state is kept in memory, so a write replays nothing."""
    group_commit: bool = True
    """Record concurrent operations together, a group per transaction (far fewer round trips)."""
    payment_reference_key: str = ""
    """Master key for payment references at rest (32 bytes, base64). Empty: the key file is used."""
    payment_reference_previous_keys: list[str] = field(default_factory=list)
    """Retired payment reference keys (base64), still used to read and search older purchases."""
    payment_reference_key_file: str = ""
    """Where the generated payment reference key lives (default `<data_dir>/credits-payment-reference.key`)."""
    head_signing_key_file: str = ""
    """Ed25519 seed signing the ledger head (default `<data_dir>/credits-head-signing.key`)."""
    head_sign_interval_seconds: float = bounded(60.0, above=0)
    """How often the ledger head is signed (when it changed)."""
    sweep_interval_seconds: float = bounded(1.0, above=0)
    """How often reservations past their expiry are looked for and released."""
    alert_poll_seconds: float = bounded(0.25, above=0)
    """How often WatchAlerts looks for alerts written by other processes."""
    lag_interval_seconds: float = bounded(15.0, above=0)
    """How often the projection lag gauge is measured."""
    default_reservation_ttl_seconds: float = bounded(900.0, above=0)
    """Lifetime of a reservation made without an expiry (at most `max_reservation_ttl_seconds`)."""
    max_reservation_ttl_seconds: float = bounded(30 * 86400.0, above=0)
    """Longest lifetime a reservation may ask for."""
    max_open_reservations: int = bounded(10_000, at_least=1)
    """Open reservations one account may hold at once."""
    topology: bool = False
    """Follow the sharding server's topology (endpoint `sharding`): accounts live on the PostgreSQL shards
    it names, transfers between shards use two-phase commit. Off: the ledger is this server's own store."""
    read_replicas: bool = True
    """With `topology`: serve listings, usage reports and audit verification from healthy replicas."""
    shard_pool_size: int = bounded(8, at_least=1)
    """With `topology`: connections per shard node."""
    two_phase_recovery_interval_seconds: float = bounded(5.0, above=0)
    """With `topology`: how often in-doubt prepared transactions are looked for and finished."""
    in_doubt_after_seconds: float = bounded(10.0, at_least=0)
    """With `topology`: age after which a prepared transaction no process here is driving counts as in
    doubt and is finished by recovery (other servers sharing the coordinator log may still be driving younger ones)."""
    decision_retention_seconds: float = bounded(7 * 86400.0, above=0)
    """With `topology`: how long transfer decisions stay in the coordinator log."""
    two_phase_crash_point: str = ""
    """TESTS ONLY: `after_prepare` or `after_decision` stops every cross-shard transfer there until the
    process is killed, to test recovery from a coordinator crash. Never set in production."""

    def check(self) -> None:
        """Refuse what the field ranges cannot say (ConfigError naming the setting)."""
        if self.default_reservation_ttl_seconds > self.max_reservation_ttl_seconds:
            raise ConfigError("credits.default_reservation_ttl_seconds: exceeds max_reservation_ttl_seconds")
        if self.two_phase_crash_point not in {point.value for point in CrashPoint}:
            allowed = " or ".join(p.value for p in CrashPoint if p.value)
            raise ConfigError(f"credits.two_phase_crash_point: must be empty, {allowed}")

    def limits(self) -> LedgerLimits:
        """The ledger limits these settings describe."""
        return LedgerLimits(
            default_reservation_ttl=timedelta(seconds=self.default_reservation_ttl_seconds),
            max_reservation_ttl=timedelta(seconds=self.max_reservation_ttl_seconds),
            max_open_reservations=self.max_open_reservations,
        )

    async def payment_reference_cipher(self, vault: SecretVault, data_dir: Path) -> PaymentReferenceCipher:
        """The cipher for payment references: the configured key or key file, else the key every replica
        shares in the vault (made on first start, or taken from the key file an older version made)."""
        key = self.payment_reference_key
        if not key and self.payment_reference_key_file:
            key = await asyncio.to_thread(read_or_create_secret, Path(self.payment_reference_key_file), generate_key)
        if not key:
            legacy = data_dir / "credits-payment-reference.key"
            shared = await vault.get_or_create(
                PAYMENT_REFERENCE_KEY, lambda: existing_or_new(legacy, generate_key).encode()
            )
            key = shared.decode()
        return PaymentReferenceCipher(PaymentReferenceConfig(key, tuple(self.payment_reference_previous_keys)))
