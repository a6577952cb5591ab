"""The token service on the mesh runtime: `build(runtime)` and the `TokenService` servicer.

Idempotency (AIP-155) on every mutating RPC through the request ledger. CreateClient and
EnrollMfa answers carry a one-time secret: a retry with the same request_id within
`secret_replay_seconds` (10 minutes by default) gets the same answer, secret included; after
that the stored answer is rewritten without the secret (housekeeping), so a late retry gets
the same client with an empty `client_secret` / `totp_secret` and the secret no longer
exists anywhere in the service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from servers.mesh.auth import current_caller, peer_address
from servers.mesh.config import service_settings
from servers.mesh.errors import AlreadyExists, DomainError, InvalidArgument, NotFound, Unauthenticated
from servers.mesh.idempotency import RequestLedger
from servers.mesh.pagination import page_request
from servers.mesh.server import Mount, Runtime, Service
from servers.mesh.storage import Transaction
from servers.mesh.timestamps import to_micros
from servers.mesh.verifier import TokenVerifier
from servers.tokens import messages
from servers.tokens.authority import TokenAuthority
from servers.tokens.bootstrap import bootstrap, credentials_path, token_endpoint
from servers.tokens.client_secrets import ClientSecretHasher
from servers.tokens.domain import (
    Client,
    ClientSpec,
    ClientUpdate,
    TokenSettings,
    check_update_mask,
    enroll_mfa,
    register_client,
    update_client,
    validate_client_id,
)
from servers.tokens.housekeeping import Housekeeping, TokenMetrics
from servers.tokens.issuance import INVALID_CLIENT, MFA_INVALID, MFA_REPLAYED, TokenRequest, authorize_issue
from servers.tokens.keys import check_overlap
from servers.tokens.recon import PresentedCredential, ReconReporter
from servers.tokens.revocations import Revocation, introspect, plan_revocation
from servers.tokens.secret_files import KEYS_DIRECTORY, TOTP_KEY_FILE, AtRestCipher, SigningKeyFiles
from servers.tokens.settings import TokenServiceSettings
from servers.tokens.signing_secrets import SigningKeySecrets
from servers.tokens.store import TokenStore
from servers.tokens.watch import revocation_stream
from shieldx.tokens.v1 import tokens_pb2, tokens_pb2_grpc

log = logging.getLogger(__name__)

LEDGER_DOMAIN = "shieldx.tokens.v1"


class TokenServicer(tokens_pb2_grpc.TokenServiceServicer):
    """`shieldx.tokens.v1.TokenService`: parse, decide in the domain, persist, answer."""

    def __init__(
        self,
        *,
        store: TokenStore,
        authority: TokenAuthority,
        hasher: ClientSecretHasher,
        ledger: RequestLedger,
        settings: TokenServiceSettings,
        metrics: TokenMetrics,
        recon: ReconReporter | None = None,
    ) -> None:
        self.recon = recon
        self.store = store
        self.authority = authority
        self.hasher = hasher
        self.ledger = ledger
        self.settings = settings
        self.token_settings: TokenSettings = authority.settings
        self.metrics = metrics

    # --- clients ------------------------------------------------------------------------------

    async def CreateClient(
        self, request: tokens_pb2.CreateClientRequest, context: Any
    ) -> tokens_pb2.CreateClientResponse:
        """Register a client; its secret is answered once and stored only as an Argon2id hash."""
        wanted = request.client
        spec = ClientSpec(
            client_id=request.client_id,
            kind=messages.client_kind(wanted.kind),
            allowed_scopes=list(wanted.allowed_scopes),
            allowed_audiences=list(wanted.allowed_audiences) or [self.settings.audience],
            display_name=wanted.display_name,
            enabled=wanted.enabled,
        )
        # Argon2id runs outside the transaction so the store is not held for its tens of ms.
        client, secret = await asyncio.to_thread(register_client, spec, self.hasher, self.authority.now())

        async def work(tx: Transaction) -> tokens_pb2.CreateClientResponse:
            if await self.store.get_client(client.client_id, tx) is not None:
                raise AlreadyExists("client", client.client_id)
            await self.store.insert_client(tx, client)
            return tokens_pb2.CreateClientResponse(client=messages.client_message(client), client_secret=secret)

        response = await self.ledger.execute("CreateClient", request, tokens_pb2.CreateClientResponse, work)
        self._audit("client created", response.client.client_id)
        return response

    async def GetClient(self, request: tokens_pb2.GetClientRequest, context: Any) -> tokens_pb2.GetClientResponse:
        """One client, without secrets."""
        client = await self._client(request.client_id, "client_id")
        return tokens_pb2.GetClientResponse(client=messages.client_message(client))

    async def ListClients(self, request: tokens_pb2.ListClientsRequest, context: Any) -> tokens_pb2.ListClientsResponse:
        """Clients ordered by id, paged."""
        page = page_request(request.page_size, request.page_token)
        after = None
        if page.cursor is not None:
            after = page.cursor.get("after")
            if not isinstance(after, str) or not is_client_id(after):
                raise InvalidArgument("page_token", "is not a token this service issued")
        clients = await self.store.list_clients(after, page.size + 1)
        more = len(clients) > page.size
        shown = clients[: page.size]
        return tokens_pb2.ListClientsResponse(
            clients=[messages.client_message(c) for c in shown],
            next_page_token=page.next_token({"after": shown[-1].client_id} if more else None),
        )

    async def UpdateClient(
        self, request: tokens_pb2.UpdateClientRequest, context: Any
    ) -> tokens_pb2.UpdateClientResponse:
        """Change the fields named in `update_mask`."""
        client_id = validate_client_id(request.client.client_id, "client.client_id")
        mask = check_update_mask(request.update_mask.paths)
        wanted = request.client
        update = ClientUpdate(
            display_name=wanted.display_name if "display_name" in mask else None,
            enabled=wanted.enabled if "enabled" in mask else None,
            allowed_scopes=list(wanted.allowed_scopes) if "allowed_scopes" in mask else None,
            allowed_audiences=list(wanted.allowed_audiences) if "allowed_audiences" in mask else None,
            mfa_enabled=wanted.mfa_enabled if "mfa_enabled" in mask else None,
        )

        async def work(tx: Transaction) -> tokens_pb2.UpdateClientResponse:
            before = await self._client_in(tx, client_id)
            after = update_client(before, update, self.authority.now())
            if after is not before:
                await self.store.update_client(tx, before, after)
            return tokens_pb2.UpdateClientResponse(client=messages.client_message(after))

        response = await self.ledger.execute("UpdateClient", request, tokens_pb2.UpdateClientResponse, work)
        self._audit("client updated", client_id, fields=",".join(sorted(mask)))
        return response

    async def DeleteClient(
        self, request: tokens_pb2.DeleteClientRequest, context: Any
    ) -> tokens_pb2.DeleteClientResponse:
        """Delete a client; tokens it holds stay valid until they expire or are revoked."""
        client_id = validate_client_id(request.client_id, "client_id")
        deleted: list[Client] = []

        async def work(tx: Transaction) -> tokens_pb2.DeleteClientResponse:
            deleted[:] = [await self._client_in(tx, client_id)]
            await self.store.delete_client(tx, client_id)
            return tokens_pb2.DeleteClientResponse()

        response = await self.ledger.execute("DeleteClient", request, tokens_pb2.DeleteClientResponse, work)
        for client in deleted:
            self.hasher.forget(client.secret_hash)
        self._audit("client deleted", client_id)
        return response

    async def EnrollMfa(self, request: tokens_pb2.EnrollMfaRequest, context: Any) -> tokens_pb2.EnrollMfaResponse:
        """Give a person a new TOTP secret (shown once) and require codes from now on."""
        client_id = validate_client_id(request.client_id, "client_id")

        async def work(tx: Transaction) -> tokens_pb2.EnrollMfaResponse:
            before = await self._client_in(tx, client_id)
            after, provisioning = enroll_mfa(before, self.token_settings, self.authority.now())
            await self.store.save_enrolment(tx, before, after)
            return messages.enrolment_response(after, provisioning, self.token_settings)

        response = await self.ledger.execute("EnrollMfa", request, tokens_pb2.EnrollMfaResponse, work)
        self._audit("client enrolled in MFA", client_id)
        return response

    # --- tokens -------------------------------------------------------------------------------

    async def IssueToken(self, request: tokens_pb2.IssueTokenRequest, context: Any) -> tokens_pb2.IssueTokenResponse:
        """Client credentials grant: check the client (Argon2id in a worker thread), then sign."""
        try:
            response = await self._issue(request, peer_address(context.peer() or ""))
        except DomainError as refusal:
            self.metrics.issued.labels(outcome=refusal.reason).inc()
            if refusal.reason == INVALID_CLIENT and request.client_secret and self.recon is not None:
                # Perhaps a honeytoken: only the deception service can tell.
                self.recon.report(
                    PresentedCredential(peer_address(context.peer() or ""), request.client_id, request.client_secret)
                )
            raise
        self.metrics.issued.labels(outcome="ISSUED").inc()
        return response

    async def _issue(self, request: tokens_pb2.IssueTokenRequest, peer: str) -> tokens_pb2.IssueTokenResponse:
        token_request = TokenRequest(
            client_id=request.client_id,
            client_secret=request.client_secret,
            scopes=list(request.scopes),
            audience=request.audience,
            ttl=messages.optional_duration(request.ttl, request.HasField("ttl"), "ttl"),
            totp_code=request.totp_code,
        )
        client = await self._known_client(request.client_id)
        now = self.authority.now()
        failures = (
            await self.store.mfa_failures(client.client_id) if client is not None and client.mfa_enabled else None
        )
        try:
            if client is not None and self.hasher.remembers(client.secret_hash, request.client_secret):
                # The secret verified before: the decision takes microseconds, no worker thread needed.
                grant = authorize_issue(client, token_request, self.token_settings, self.hasher, now, failures)
            else:
                grant = await asyncio.to_thread(
                    authorize_issue, client, token_request, self.token_settings, self.hasher, now, failures
                )
        except Unauthenticated as refusal:
            if client is not None and refusal.reason == MFA_INVALID:
                await self._wrong_code(client, request, peer, now)
            raise
        if grant.mfa_step is not None and (
            client is None or not await self.store.advance_mfa_step(client, grant.mfa_step)
        ):
            raise Unauthenticated("this TOTP code was used already", reason=MFA_REPLAYED)
        if failures is not None and failures.failures:
            await self.store.clear_mfa_failures(grant.client_id)
        issued = self.authority.signer.mint(
            audience=grant.audience,
            ttl=grant.ttl,
            subject=grant.client_id,
            scopes=grant.scopes,
            client_id=grant.client_id,
        )
        return messages.issue_response(issued)

    async def _wrong_code(
        self, client: Client, request: tokens_pb2.IssueTokenRequest, peer: str, now: datetime
    ) -> None:
        """Count a wrong TOTP code; a lock it starts is audited and reported like a refused credential."""
        before = await self.store.mfa_failures(client.client_id)
        after = await self.store.record_wrong_code(client.client_id, self.token_settings.mfa_lockout, now)
        if after.locked_until is None or after.locked_until == before.locked_until:
            return
        self.metrics.issued.labels(outcome="MFA_LOCKOUT").inc()
        log.warning(
            "client locked out after repeated wrong TOTP codes",
            extra={
                "subject": client.client_id,
                "failures": after.failures,
                "locked_until": after.locked_until.isoformat(),
                "source": peer,
            },
        )
        if self.recon is not None:
            self.recon.report(
                PresentedCredential(
                    peer, client.client_id, request.client_secret, detail="TOTP lockout: repeated wrong codes"
                )
            )

    async def IntrospectToken(
        self, request: tokens_pb2.IntrospectTokenRequest, context: Any
    ) -> tokens_pb2.IntrospectTokenResponse:
        """RFC 7662: claims of an active token, `active=false` alone for anything else."""
        return messages.introspection_response(introspect(request.token, self.authority.inspector))

    async def RevokeToken(self, request: tokens_pb2.RevokeTokenRequest, context: Any) -> tokens_pb2.RevokeTokenResponse:
        """RFC 7009: record the revocation (if there is anything to record) and tell every watcher."""
        planned = plan_revocation(
            token=request.token,
            jti=request.jti,
            inspector=self.authority.inspector,
            settings=self.token_settings,
            now=self.authority.now(),
        )
        recorded: list[Revocation] = []

        async def work(tx: Transaction) -> tokens_pb2.RevokeTokenResponse:
            recorded.clear()
            if planned is not None:
                revocation = await self.store.record_revocation(tx, planned)
                if revocation is not None:
                    recorded.append(revocation)
            return tokens_pb2.RevokeTokenResponse()

        response = await self.ledger.execute("RevokeToken", request, tokens_pb2.RevokeTokenResponse, work)
        for revocation in recorded:
            self.authority.revocation_recorded(revocation)
            self.metrics.revocations.inc()
            self._audit("token revoked", revocation.jti, sequence=str(revocation.sequence))
        return response

    # --- keys ---------------------------------------------------------------------------------

    async def ListPublicKeys(
        self, request: tokens_pb2.ListPublicKeysRequest, context: Any
    ) -> tokens_pb2.ListPublicKeysResponse:
        """The published keys, oldest first: the active key and previous ones within their overlap."""
        page = page_request(request.page_size, request.page_token)
        after: tuple[int, str] | None = None
        if page.cursor is not None:
            created, kid = page.cursor.get("t"), page.cursor.get("k")
            if not isinstance(created, int) or not isinstance(kid, str):
                raise InvalidArgument("page_token", "is not a token this service issued")
            after = (created, kid)
        now = self.authority.now()
        keys = [k for k in self.authority.published() if after is None or (to_micros(k.create_time), k.kid) > after]
        shown = keys[: page.size]
        last = shown[-1] if len(keys) > page.size else None
        return tokens_pb2.ListPublicKeysResponse(
            keys=[messages.public_key_message(k, now) for k in shown],
            next_page_token=page.next_token(
                None if last is None else {"t": to_micros(last.create_time), "k": last.kid}
            ),
        )

    async def RotateSigningKey(
        self, request: tokens_pb2.RotateSigningKeyRequest, context: Any
    ) -> tokens_pb2.RotateSigningKeyResponse:
        """A new active key; the replaced one loses its secret now and stops verifying after the overlap."""
        requested = messages.optional_duration(request.overlap, request.HasField("overlap"), "overlap")
        overlap = check_overlap(self.token_settings.rotation_overlap if requested is None else requested)

        async def work(tx: Transaction) -> tokens_pb2.RotateSigningKeyResponse:
            ring = await self.authority.rotate_in(tx, overlap)
            return messages.rotation_response(ring, self.authority.now())

        async with self.authority.rotation_lock:
            response = await self.ledger.execute("RotateSigningKey", request, tokens_pb2.RotateSigningKeyResponse, work)
            await self.authority.reload_keys()
        self._audit("signing key rotated", response.active_key.kid, overlap=str(overlap.total_seconds()))
        return response

    # --- revocation stream --------------------------------------------------------------------

    async def WatchRevocations(
        self, request: tokens_pb2.WatchRevocationsRequest, context: Any
    ) -> AsyncIterator[tokens_pb2.WatchRevocationsResponse]:
        """Backlog after `after_sequence` (or everything, flagged `reset`), a `caught_up` marker, then live."""
        self.metrics.watchers.inc()
        try:
            async for message in revocation_stream(self.store, self.authority, request.after_sequence):
                yield message
        finally:
            self.metrics.watchers.dec()

    # --- helpers ------------------------------------------------------------------------------

    async def _client(self, client_id: str, field: str) -> Client:
        client = await self.store.get_client(validate_client_id(client_id, field))
        if client is None:
            raise NotFound("client", client_id)
        return client

    async def _client_in(self, tx: Transaction, client_id: str) -> Client:
        client = await self.store.get_client(client_id, tx)
        if client is None:
            raise NotFound("client", client_id)
        return client

    async def _known_client(self, client_id: str) -> Client | None:
        if not is_client_id(client_id):
            return None  # a malformed id names no client: INVALID_CLIENT, after the same slow check
        return await self.store.get_client(client_id)

    def _audit(self, event: str, subject: str, **details: str) -> None:
        caller = current_caller()
        log.info(event, extra={"subject": subject, "by_client": caller.client_id, "by": caller.subject, **details})


def is_client_id(text: str) -> bool:
    """True if `text` has the form of a client id (so it can name a stored client)."""
    try:
        validate_client_id(text, "client_id")
    except InvalidArgument:
        return False
    return True


async def build(runtime: Runtime) -> Service:
    """Open the store and the secret files, start the authority, bootstrap if asked, serve."""
    config = runtime.config
    settings = service_settings(TokenServiceSettings, config)
    token_settings = settings.token_settings()
    database = await runtime.database("servers.tokens.migrations")
    vault = await runtime.vault(database)
    legacy = config.data_path / KEYS_DIRECTORY  # secret files an older version wrote, imported once
    cipher = await AtRestCipher.shared(vault, legacy / TOTP_KEY_FILE)
    store = TokenStore(database, cipher)
    authority = TokenAuthority(store, SigningKeySecrets(vault, SigningKeyFiles(legacy)), token_settings)
    if runtime.verifier is None:
        # The mesh auth interceptor of this very server trusts our own keys, in process.
        runtime.verifier = authority.follow(
            TokenVerifier(
                audience=config.auth.audience,
                issuer=settings.issuer,
                leeway=timedelta(seconds=config.auth.leeway_seconds),
            )
        )
    await authority.start()
    hasher = ClientSecretHasher(settings.argon2_cost())
    if settings.bootstrap:
        await bootstrap(store, hasher, credentials_path(config), token_endpoint(config), settings.audience)
    ledger = RequestLedger(database, LEDGER_DOMAIN, seal=store.answers)
    metrics = TokenMetrics(runtime.registry)
    recon = ReconReporter(lambda: runtime.channel("deception"), runtime.registry)
    servicer = TokenServicer(
        store=store, authority=authority, hasher=hasher, ledger=ledger, settings=settings, metrics=metrics, recon=recon
    )
    housekeeping = Housekeeping(store=store, authority=authority, ledger=ledger, settings=settings, metrics=metrics)
    return Service(
        mounts=[Mount.of(tokens_pb2, tokens_pb2_grpc, "TokenService", servicer=servicer)],
        tasks=[housekeeping.follow_store, housekeeping.purge, housekeeping.rotate_when_due, recon.run],
        draining=[authority.close_watches],
    )
