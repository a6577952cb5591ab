"""The token service's background work: following the store, purging what expired, rotating old keys.

Each loop survives its own failures: an error is logged with its traceback and the loop tries
again after a growing delay, so a database outage slows housekeeping down but never ends it.
"""

from __future__ import annotations

import logging
import time

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter, Gauge

from servers.mesh import storage
from servers.mesh.background import repeat
from servers.mesh.idempotency import RequestLedger
from servers.tokens.authority import TokenAuthority
from servers.tokens.settings import TokenServiceSettings
from servers.tokens.store import TokenStore
from shieldx.tokens.v1 import tokens_pb2

log = logging.getLogger(__name__)

# Stored answers that carry a one-time secret, and the field holding it.
_ONE_TIME_SECRETS: dict[str, tuple[type[Message], str]] = {
    "CreateClient": (tokens_pb2.CreateClientResponse, "client_secret"),
    "EnrollMfa": (tokens_pb2.EnrollMfaResponse, "totp_secret"),
}


class TokenMetrics:
    """Prometheus metrics of the token service."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.issued = Counter(
            "shieldx_tokens_issue_total",
            "IssueToken outcomes: ISSUED or the refusal reason.",
            ["outcome"],
            registry=registry,
        )
        self.revocations = Counter(
            "shieldx_tokens_revocations_total", "Revocations recorded by this process.", registry=registry
        )
        self.watchers = Gauge("shieldx_tokens_revocation_watchers", "Open WatchRevocations streams.", registry=registry)
        self.key_age = Gauge(
            "shieldx_tokens_signing_key_age_seconds", "Age of the active signing key.", registry=registry
        )
        self.purged = Counter(
            "shieldx_tokens_purged_total", "Expired records forgotten, by kind.", ["kind"], registry=registry
        )


class Housekeeping:
    """The background loops of one token service process (`Service.tasks`)."""

    def __init__(
        self,
        *,
        store: TokenStore,
        authority: TokenAuthority,
        ledger: RequestLedger,
        settings: TokenServiceSettings,
        metrics: TokenMetrics,
    ) -> None:
        self.store = store
        self.authority = authority
        self.ledger = ledger
        self.settings = settings
        self.metrics = metrics

    async def follow_store(self) -> None:
        """Pick up revocations and rotations recorded by other replicas, and end overlaps on time."""
        await repeat("follow_store", self.authority.follow_store, self.settings.refresh_seconds)

    async def purge(self) -> None:
        """Forget expired revocations, retired keys, old request ids, and one-time secrets in replays."""
        await repeat("purge", self.purge_once, self.settings.maintenance_interval_seconds)

    async def rotate_when_due(self) -> None:
        """Rotate the signing key once it is older than the configured maximum age."""
        await repeat("rotate_when_due", self.rotate_if_due, self.settings.maintenance_interval_seconds)

    async def purge_once(self) -> None:
        """One purge pass."""
        horizon = self.authority.now() - self.authority.settings.leeway
        revocations = await self.store.purge_revocations(horizon)
        self.authority.prune_revocations()
        kids = await self.store.purge_retired_keys(horizon)
        if kids:
            await self.authority.reload_keys()
        request_ids = await self.ledger.purge(self.settings.request_id_retention_seconds)
        scrubbed = await self.scrub_one_time_secrets()
        for kind, count in (("revocation", revocations), ("signing_key", len(kids)), ("request_id", request_ids)):
            self.metrics.purged.labels(kind=kind).inc(count)
        if revocations or kids or request_ids or scrubbed:
            log.info(
                "purged",
                extra={"revocations": revocations, "keys": kids, "request_ids": request_ids, "secrets": scrubbed},
            )

    async def scrub_one_time_secrets(self) -> int:
        """Rewrite stored CreateClient/EnrollMfa answers older than the replay window without their secret."""
        before = time.time() - self.settings.secret_replay_seconds
        scrubbed = 0
        for answer in await self.store.stored_answers(list(_ONE_TIME_SECRETS), before):
            response_type, secret_field = _ONE_TIME_SECRETS[answer.method]
            response = response_type.FromString(answer.response)
            if not getattr(response, secret_field):
                continue
            response.ClearField(secret_field)
            if answer.method == "EnrollMfa":
                response.ClearField("provisioning_uri")
            await self.store.replace_answer(answer, response.SerializeToString(deterministic=True))
            scrubbed += 1
        return scrubbed

    async def rotate_if_due(self) -> None:
        """Rotate now if the active key has reached its maximum age (or there is no usable key)."""
        settings = self.authority.settings
        try:
            ring = await self.authority.rotate_if_due(settings.signing_key_max_age, settings.rotation_overlap)
        except (storage.UniqueViolation, storage.TransientError):
            # Another replica rotated at the same moment; the next look at the store shows its key.
            log.info("signing key rotated concurrently elsewhere")
            return
        if ring is not None:
            log.info("signing key rotated automatically", extra={"kid": ring.active.kid})
        current = self.authority.ring
        if current.has_active():
            self.metrics.key_age.set((self.authority.now() - current.active.not_before).total_seconds())
