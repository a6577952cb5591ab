"""The token service's live signing state: its key ring, the signer, and the verifiers that follow it.

`TokenAuthority` holds in memory what every request needs without touching the database:
the key ring (public halves from the store, the active key's secret half from the vault,
sealed in the same database), a `TokenSigner` for the active key, and the `TokenVerifier`s of this process — the
inspector behind IntrospectToken and RevokeToken, and, when the runtime has none, the
verifier of the mesh auth interceptor. They follow the service's own rotations and
revocations directly, in process, with no network call.

It also is the feed of WatchRevocations: `revocation_recorded` and every change of the key
ring (`key_generation`) wake every waiting watcher at once (an asyncio event), and
`follow_store` picks up revocations and key changes recorded by another replica sharing the
database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from servers.mesh import storage
from servers.mesh.claims import TokenSigner
from servers.mesh.storage import Transaction
from servers.mesh.verifier import TokenVerifier
from servers.tokens.domain import TokenSettings
from servers.tokens.keys import KeyRing, SigningKeyRecord, generate_signing_key
from servers.tokens.revocations import Revocation
from servers.tokens.signing_secrets import SigningKeySecrets
from servers.tokens.store import TokenStore

log = logging.getLogger(__name__)

_BATCH = 1000


class TokenAuthority:
    """Key ring, signer and self-verification of one token service process."""

    def __init__(
        self,
        store: TokenStore,
        key_secrets: SigningKeySecrets,
        settings: TokenSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.key_secrets = key_secrets
        self.settings = settings
        self.clock = clock
        self.inspector = TokenVerifier(audience=None, issuer=settings.issuer, leeway=settings.leeway, clock=clock)
        """Verifies tokens of any audience: what IntrospectToken and RevokeToken ask."""
        self._followers: list[TokenVerifier] = [self.inspector]
        self._ring = KeyRing()
        self._signer: TokenSigner | None = None
        self._applied_sequence = 0
        self._latest_sequence = 0
        self._key_generation = 0
        self._recorded = asyncio.Event()
        self._closing = False
        self._started = False
        self._reloading = asyncio.Lock()
        self.rotation_lock = asyncio.Lock()
        """Held around a rotation so that this process never runs two at once."""

    def now(self) -> datetime:
        """The current time of this authority's clock."""
        return datetime.fromtimestamp(self.clock(), UTC)

    # --- start --------------------------------------------------------------------------------

    def follow(self, verifier: TokenVerifier) -> TokenVerifier:
        """Keep `verifier` in step with this service's keys and revocations; call before `start`."""
        if self._started:
            raise RuntimeError("register verifiers before the authority starts")
        self._followers.append(verifier)
        return verifier

    async def start(self) -> None:
        """Load keys and revocations; make a first signing key if there is no usable one."""
        self._started = True
        await self.reload_keys()
        if not self._ring.has_active():
            if self._ring.keys:
                log.warning("the active key's secret half is missing: rotating to a new signing key")
            else:
                log.info("first start: generating the signing key")
            try:
                await self.rotate(self.settings.rotation_overlap)
            except (storage.UniqueViolation, storage.TransientError):
                # Another replica sharing the database made one at the same moment: use it.
                await self.reload_keys()
        await self.catch_up()

    # --- keys ---------------------------------------------------------------------------------

    @property
    def ring(self) -> KeyRing:
        """The current key ring (active key with its secret half, older keys without)."""
        return self._ring

    @property
    def signer(self) -> TokenSigner:
        """The signer of the active key; FailedPrecondition(NO_ACTIVE_KEY) if there is none."""
        if self._signer is None:
            _ = self._ring.active  # raises FailedPrecondition(NO_ACTIVE_KEY)
            self._signer = self._ring.signer(issuer=self.settings.issuer, clock=self.clock)
        return self._signer

    def published(self) -> tuple[SigningKeyRecord, ...]:
        """The keys ListPublicKeys shows now: the active one and previous ones within their overlap."""
        return self._ring.published(self.now())

    async def rotate_in(self, tx: Transaction, overlap: timedelta) -> KeyRing:
        """Install a new active key, its secret half sealed beside it, in `tx`; `reload_keys` after commit."""
        new_key = generate_signing_key(self.now())
        assert new_key.secret_key is not None
        await self.key_secrets.store(tx, new_key.kid, new_key.secret_key)
        return await self.store.install_signing_key(tx, new_key, self.now(), overlap)

    async def rotate(self, overlap: timedelta) -> KeyRing:
        """Make a new active key now in a transaction of its own (first key, automatic rotation)."""
        async with self.rotation_lock:
            return await self._rotate(overlap)

    async def rotate_if_due(self, max_age: timedelta | None, overlap: timedelta) -> KeyRing | None:
        """Rotate if the active key is `max_age` old or there is none; the new ring, or None if not due."""
        async with self.rotation_lock:
            if not self._ring.rotation_due(self.now(), max_age):
                return None
            return await self._rotate(overlap)

    async def _rotate(self, overlap: timedelta) -> KeyRing:
        async with self.store.database.transaction() as tx:
            await self.rotate_in(tx, overlap)
        await self.reload_keys()
        return self._ring

    async def reload_keys(self) -> None:
        """Read the ring from the store and the active key's secret half from its file; update verifiers.

        Secret halves of keys that no longer sign are destroyed here, so a rotation committed
        by this or another replica leaves only the new key's secret.
        """
        async with self._reloading:  # one at a time, so a stale read never lands after a fresh one
            records = await self.store.signing_keys()
            active = next((key for key in records if key.not_after is None), None)
            secret = await self._secret_of(active)
            ring = KeyRing(
                tuple(
                    SigningKeyRecord(
                        kid=key.kid,
                        public_key=key.public_key,
                        secret_key=secret if key is active else None,
                        create_time=key.create_time,
                        not_before=key.not_before,
                        not_after=key.not_after,
                    )
                    for key in records
                )
            )
            changed = ring != self._ring
            if changed:
                if active is not None and secret is None:
                    log.error("the active signing key's secret half is missing", extra={"kid": active.kid})
                self._ring = ring
                self._signer = None
            self.refresh_key_windows()
            if changed:
                self._key_generation += 1
                self._wake_watchers()
            await self.key_secrets.prune(None if active is None else active.kid, {key.kid for key in records})

    async def _secret_of(self, active: SigningKeyRecord | None) -> bytes | None:
        if active is None:
            return None
        for key in self._ring.keys:
            if key.kid == active.kid and key.secret_key is not None:
                return key.secret_key  # read already; the file of an active key never changes
        return await self.key_secrets.read(active.kid)

    def refresh_key_windows(self) -> None:
        """Give every verifier exactly the keys published now (drops keys whose overlap ended)."""
        trusted = self._ring.trusted_keys(self.now())
        for verifier in self._followers:
            verifier.replace_keys(trusted)

    # --- revocations --------------------------------------------------------------------------

    def revocation_recorded(self, revocation: Revocation) -> None:
        """A revocation committed (by this process): refuse its token here and wake the watchers."""
        for verifier in self._followers:
            verifier.revoke(revocation.jti, revocation.expire_time)
        self._advance(revocation.sequence)

    def _advance(self, sequence: int) -> None:
        if sequence <= self._latest_sequence:
            return
        self._latest_sequence = sequence
        self._wake_watchers()

    def _wake_watchers(self) -> None:
        recorded, self._recorded = self._recorded, asyncio.Event()
        recorded.set()

    @property
    def key_generation(self) -> int:
        """Counts the changes of the key ring this process has seen (its own rotations and others')."""
        return self._key_generation

    @property
    def latest_sequence(self) -> int:
        """The highest revocation sequence known to be committed."""
        return self._latest_sequence

    async def close_watches(self) -> None:
        """Wake every waiter for good: the server is draining, watch streams end (watchers reconnect)."""
        self._closing = True
        recorded, self._recorded = self._recorded, asyncio.Event()
        recorded.set()

    async def wait_beyond(
        self, sequence: int, timeout: float | None = None, *, key_generation: int | None = None
    ) -> bool:
        """Wait until a revocation after `sequence` is known to be committed (or, given a
        `key_generation`, the key ring changed since it); False on timeout or once the server is draining."""
        while self._latest_sequence <= sequence and key_generation in (None, self._key_generation):
            if self._closing:
                return False
            try:
                await asyncio.wait_for(self._recorded.wait(), timeout)
            except TimeoutError:
                return False
        return True

    async def catch_up(self) -> int:
        """Apply revocations committed since the last look (by any replica); returns how many."""
        marks = await self.store.revocation_marks()
        applied = 0
        while self._applied_sequence < marks.last_sequence:
            batch = await self.store.revocations_after(self._applied_sequence, _BATCH)
            if not batch:
                break
            for revocation in batch:
                for verifier in self._followers:
                    verifier.revoke(revocation.jti, revocation.expire_time)
            self._applied_sequence = batch[-1].sequence
            applied += len(batch)
        self._applied_sequence = max(self._applied_sequence, marks.last_sequence)
        self._advance(marks.last_sequence)
        return applied

    def prune_revocations(self) -> None:
        """Drop revocations of tokens that expiry refuses anyway from every verifier."""
        for verifier in self._followers:
            verifier.prune_revocations()

    async def follow_store(self) -> None:
        """One look at the store for changes made elsewhere: revocations, rotations, key windows."""
        await self.catch_up()
        await self.reload_keys()
