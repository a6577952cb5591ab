"""Mesh trust: keeps a server's token verifier in step with the token service.

Every server except the token service itself verifies bearer tokens locally. This module
fills its `TokenVerifier` with the token service's published keys (`ListPublicKeys`, again on
an interval and at once when a token names a key it does not know) and with every revocation
(`WatchRevocations`, one stream per process, resumed from the last sequence seen), so a
revocation reaches every server within milliseconds and no call costs a network round trip.
The same stream carries the published keys whenever they change, so a key cut off by an
emergency rotation is refused everywhere as soon as the token service has rotated.

A server reports SERVING only once it has the keys and has caught up with the revocations:
a restarted server never accepts a token that was revoked while it was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import grpc
from prometheus_client import CollectorRegistry, Gauge

from clients.backoff import Backoff
from servers.mesh import errors, paseto
from servers.mesh.claims import TOKEN_UNKNOWN_KEY, TokenClaims
from servers.mesh.verifier import TokenVerifier, TrustedKey
from shieldx.tokens.v1 import tokens_pb2, tokens_pb2_grpc

log = logging.getLogger(__name__)

ISSUER = "shieldx-tokens"


def _moment(timestamp: object) -> datetime | None:
    seconds = timestamp.ToSeconds() if timestamp.ByteSize() else None  # type: ignore[attr-defined]
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _trusted(published: Iterable[tokens_pb2.PublicKey]) -> list[TrustedKey]:
    keys: list[TrustedKey] = []
    for key in published:
        try:
            keys.append(
                TrustedKey.from_paserk(
                    key.paserk, kid=key.kid, not_before=_moment(key.not_before), not_after=_moment(key.not_after)
                )
            )
        except paseto.InvalidPaserk:
            log.error("token service published a malformed key", extra={"kid": key.kid})
    return keys


class MeshTrust:
    """The verifier of one server process and the two loops that keep it current."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        audience: str,
        leeway_seconds: float,
        refresh_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.stream_up = Gauge(
            "shieldx_mesh_revocation_stream_up",
            "1 while this server follows the token service's revocation stream and has caught up, else 0.",
            registry=registry if registry is not None else CollectorRegistry(),
        )
        self.verifier = TokenVerifier(
            audience=audience, issuer=ISSUER, leeway=timedelta(seconds=leeway_seconds), clock=clock
        )
        self._stub = tokens_pb2_grpc.TokenServiceStub(channel)
        self._refresh_seconds = refresh_seconds
        self._keys_loaded = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._refresh_now = asyncio.Event()
        self._last_refresh = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self.sequence = 0
        """Sequence number of the last revocation applied (the stream's resume point)."""

    # --- readiness ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Keys loaded and revocations caught up."""
        return self._keys_loaded.is_set() and self._caught_up.is_set()

    async def wait_ready(self) -> None:
        """Return once keys are loaded and the revocation stream has caught up."""
        await self._keys_loaded.wait()
        await self._caught_up.wait()

    # --- keys ---------------------------------------------------------------------------------

    async def load_keys(self) -> None:
        """Fetch the published keys once and trust exactly those."""
        keys: list[TrustedKey] = []
        page_token = ""
        while True:
            reply = await self._stub.ListPublicKeys(
                tokens_pb2.ListPublicKeysRequest(page_size=100, page_token=page_token), timeout=10
            )
            keys += _trusted(reply.keys)
            page_token = reply.next_page_token
            if not page_token:
                break
        self._trust(keys)

    def _trust(self, keys: list[TrustedKey]) -> None:
        self.verifier.replace_keys(keys)
        self._last_refresh = time.monotonic()
        self._keys_loaded.set()

    async def refresh_keys_forever(self) -> None:
        """Background loop: reload keys every `refresh_seconds`, or at once when asked."""
        backoff = Backoff(0.4, 30.0)
        while True:
            try:
                await self.load_keys()
                backoff.reset()
                delay = self._refresh_seconds
            except grpc.aio.AioRpcError as error:
                delay = backoff.next()
                log.warning("could not fetch public keys: %s", error.code().name)
            self._refresh_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh_now.wait(), delay)

    async def verify(self, token: str) -> TokenClaims:
        """Verify; on an unknown key id reload the keys once (at most once a second) and try again.

        A freshly rotated key is then accepted on its first use instead of after the next
        scheduled refresh.
        """
        try:
            return self.verifier.verify(token)
        except errors.Unauthenticated as error:
            if error.reason != TOKEN_UNKNOWN_KEY or time.monotonic() - self._last_refresh < 1.0:
                raise
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self.load_keys())
        with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
            await asyncio.wait_for(asyncio.shield(self._refreshing), 2.0)
        return self.verifier.verify(token)

    # --- revocations --------------------------------------------------------------------------

    async def follow_revocations_forever(self) -> None:
        """Background loop: apply the revocation stream, reconnecting from the last sequence."""
        backoff = Backoff(0.1, 10.0)
        while True:
            try:
                call = self._stub.WatchRevocations(tokens_pb2.WatchRevocationsRequest(after_sequence=self.sequence))
                async for update in call:
                    self._apply(update)
                    backoff.reset()
            except grpc.aio.AioRpcError as error:
                log.warning("revocation stream interrupted: %s", error.code().name)
            self.stream_up.set(0)
            await asyncio.sleep(backoff.next())

    def _apply(self, update: tokens_pb2.WatchRevocationsResponse) -> None:
        if update.HasField("keys"):
            self._trust(_trusted(update.keys.keys))
        entries = [(r.jti, datetime.fromtimestamp(r.expire_time.ToSeconds(), UTC)) for r in update.revocations]
        if update.reset:
            # The stream starts over (our resume point was too old or ahead of the service):
            # what it sends replaces what we held, and its sequences replace ours.
            self.verifier.replace_revocations(entries)
            self.sequence = 0
        else:
            for jti, expires_at in entries:
                self.verifier.revoke(jti, expires_at)
        for revocation in update.revocations:
            self.sequence = max(self.sequence, revocation.sequence)
        if update.caught_up:
            self._caught_up.set()
            self.stream_up.set(1)

    async def prune_forever(self, interval: float = 300.0) -> None:
        """Background loop: drop revocations of tokens that have expired anyway."""
        while True:
            await asyncio.sleep(interval)
            self.verifier.prune_revocations()
