"""The evidence collectors: real calls to the live mesh with the compliance server's own workload token.

Each evidence kind has one probe; an assessment runs the probes it needs concurrently, each
under its own timeout. A probe that cannot reach its target yields evidence with `error` set
(the control becomes ERROR), never an exception: an assessment always finishes.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.credits import CreditsClient
from clients.deployment import DeploymentClient
from clients.errors import ShieldxError
from clients.posture import PostureClient
from clients.sharding import ShardingClient
from clients.tokens import TokenClient
from servers.compliance.domain import EvidenceKind
from servers.compliance.evidence.domain import Observation
from shieldx.compliance.v1 import compliance_pb2
from shieldx.credits.v1 import credits_pb2
from shieldx.deception.v1 import deception_pb2
from shieldx.deployment.v1 import deployment_pb2, routing_pb2
from shieldx.mesh.v1 import posture_pb2
from shieldx.sharding.v1 import sharding_pb2
from shieldx.tokens.v1 import tokens_pb2

SERVICE_NAMES: dict[str, str] = {
    "tokens": "shieldx.tokens.v1.TokenService",
    "credits": "shieldx.credits.v1.CreditsService",
    "deployment": "shieldx.deployment.v1.DeploymentService",
    "sharding": "shieldx.sharding.v1.ShardingService",
    "compliance": "shieldx.compliance.v1.ComplianceService",
    "deception": "shieldx.deception.v1.DeceptionService",
}
"""The main gRPC service of each server of the mesh."""

GUARDED_CALLS: dict[str, tuple[str, Message]] = {
    "tokens": ("CreateClient", tokens_pb2.CreateClientRequest()),
    "credits": ("Consume", credits_pb2.ConsumeRequest()),
    "deployment": ("CreateDeployment", deployment_pb2.CreateDeploymentRequest()),
    "sharding": ("RegisterShard", sharding_pb2.RegisterShardRequest()),
    "compliance": ("RaiseAlert", compliance_pb2.RaiseAlertRequest()),
    "deception": ("CreateSession", deception_pb2.CreateSessionRequest()),
}
"""Per server, one RPC whose scope the compliance workload lacks, with an empty (invalid) request:
with auth enforced it is refused before the request is even read."""

REFUSED_WITHOUT_TOKEN = {grpc.StatusCode.UNAUTHENTICATED}
REFUSED_WITHOUT_SCOPE = {grpc.StatusCode.PERMISSION_DENIED}


@dataclass(frozen=True)
class Policy:
    """The limits the evidence is judged against."""

    signing_key_max_age: timedelta = timedelta(days=90)
    client_secret_max_age: timedelta = timedelta(days=365)
    audit_head_max_age: timedelta = timedelta(hours=1)
    recovery_time_objective: timedelta = timedelta(seconds=60)
    certificate_min_days: int = 14
    required_retention: Mapping[str, timedelta] = field(
        default_factory=lambda: {
            "events": timedelta(days=365),
            "evidence": timedelta(days=365),
            "alerts": timedelta(days=365),
            "logs": timedelta(days=365),
        }
    )
    change_window: timedelta = timedelta(days=30)


@dataclass
class MeshAccess:
    """How probes reach the mesh: endpoints, an authenticated and a token-less channel per service."""

    endpoints: Mapping[str, str]
    """`host:port` by service name."""
    channel: Callable[[str], grpc.aio.Channel]
    """The shared channel carrying this server's workload token."""
    anonymous_channel: Callable[[str], grpc.aio.Channel]
    """A channel that sends no token."""
    tls_context: Callable[[], ssl.SSLContext]
    """The TLS client context peers' certificates are verified with."""
    call_timeout: float = 2.0


LocalFacts = Callable[[], Awaitable[list[Observation]]]
"""A probe over the compliance server's own store (alert response, breach clocks, retention)."""


class Probe:
    """Times one observation and turns unreachable targets into ERROR evidence."""

    def __init__(self, kind: EvidenceKind, target: str) -> None:
        self.kind = kind
        self.target = target
        self.started = time.perf_counter()
        self.when = datetime.now(UTC)

    def seen(self, passed: bool, summary: str, **details: Any) -> Observation:
        """What was observed."""
        elapsed = timedelta(seconds=time.perf_counter() - self.started)
        return Observation(self.kind, self.target, passed, summary, details, self.when, elapsed)

    def unreachable(self, error: BaseException | str) -> Observation:
        """The target could not be observed."""
        text = _describe(error)
        return self.seen(False, f"could not observe: {text}", error=text)


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    if isinstance(error, ShieldxError):
        return f"{error.code.name}: {error.message}"[:300]
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"[:300]
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}"[:300]


class Collectors:
    """One probe per evidence kind over the mesh."""

    def __init__(self, access: MeshAccess, policy: Policy, local: Mapping[EvidenceKind, LocalFacts]) -> None:
        self.access = access
        self.policy = policy
        self.local = local
        self.remote: dict[EvidenceKind, Callable[[], Awaitable[list[Observation]]]] = {
            EvidenceKind.HEALTH: self.health,
            EvidenceKind.TLS: self.tls,
            EvidenceKind.AUTH_ENFORCED: self.auth_enforced,
            EvidenceKind.MFA: self.mfa,
            EvidenceKind.SIGNING_KEY_AGE: self.signing_key_age,
            EvidenceKind.AUDIT_CHAIN: self.audit_chain,
            EvidenceKind.POSTURE: self.posture,
            EvidenceKind.RETENTION: self.retention,
            EvidenceKind.REPLICATION: self.replication,
            EvidenceKind.CHANGE_MANAGEMENT: self.change_management,
        }

    async def collect(self, kinds: Sequence[EvidenceKind], timeout: float) -> list[Observation]:
        """Run the probes of `kinds` concurrently; each gets `timeout` seconds."""
        kinds = sorted(set(kinds))
        results = await asyncio.gather(*(self._bounded(kind, timeout) for kind in kinds))
        return [seen for batch in results for seen in batch]

    async def _bounded(self, kind: EvidenceKind, timeout: float) -> list[Observation]:
        probe = self.local.get(kind) or self.remote.get(kind)
        if probe is None:
            return [Probe(kind, "mesh").unreachable("no collector for this kind of evidence")]
        try:
            async with asyncio.timeout(timeout):
                return await probe()
        except Exception as error:  # a probe never fails the assessment: what broke is the evidence
            return [Probe(kind, "mesh").unreachable(error)]

    def _target(self, service: str) -> str:
        return f"{SERVICE_NAMES[service]}@{self.access.endpoints[service]}"

    async def _each_service(
        self, kind: EvidenceKind, observe: Callable[[str, Probe], Awaitable[Observation]]
    ) -> list[Observation]:
        async def one(service: str) -> Observation:
            probe = Probe(kind, self._target(service))
            try:
                async with asyncio.timeout(self.access.call_timeout):
                    return await observe(service, probe)
            except Exception as error:
                return probe.unreachable(error)

        return list(await asyncio.gather(*(one(s) for s in sorted(self.access.endpoints) if s in SERVICE_NAMES)))

    # --- 1. health ---------------------------------------------------------------------------------------

    async def health(self) -> list[Observation]:
        """grpc.health.v1 of each server's service, and of the instances registered with deployment."""

        async def observe(service: str, probe: Probe) -> Observation:
            stub = health_pb2_grpc.HealthStub(self.access.channel(service))
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAMES[service]))
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            return probe.seen(serving, status, status=status)

        found = await self._each_service(EvidenceKind.HEALTH, observe)
        return found + await self._instances()

    async def _instances(self) -> list[Observation]:
        if "deployment" not in self.access.endpoints:
            return []
        probe = Probe(EvidenceKind.HEALTH, f"registered instances@{self.access.endpoints['deployment']}")
        try:
            reply = await DeploymentClient(self.access.channel("deployment")).list_instances(
                routing_pb2.ListInstancesRequest(page_size=1000), timeout=self.access.call_timeout
            )
        except ShieldxError as error:
            return [probe.unreachable(error)]
        live = [i for i in reply.instances if not i.drained]
        return [
            probe.seen(
                True,
                f"{len(live)} instances registered and not drained",
                instances=sorted(f"{i.service}@{i.version}@{i.address}" for i in live),
            )
        ]

    # --- 2. TLS ------------------------------------------------------------------------------------------

    async def tls(self) -> list[Observation]:
        """Protocol, cipher, verified chain and days to expiry of each endpoint; plaintext fails."""

        async def observe(service: str, probe: Probe) -> Observation:
            host, _, port = self.access.endpoints[service].rpartition(":")
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except OSError as error:
                return probe.unreachable(error)
            writer.close()
            try:
                context = self.access.tls_context()
                _, writer = await asyncio.open_connection(host, int(port), ssl=context, server_hostname=host)
            except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as error:
                return probe.seen(False, "plaintext: no TLS handshake", tls=False, handshake_error=_describe(error))
            try:
                sslobj: ssl.SSLObject = writer.get_extra_info("ssl_object")
                version = sslobj.version() or ""
                cipher = (sslobj.cipher() or ("", "", 0))[0]
                cert = sslobj.getpeercert() or {}
            finally:
                writer.close()
            days = _days_left(cert, probe.when)
            good = version in ("TLSv1.2", "TLSv1.3") and days >= self.policy.certificate_min_days
            subject = dict(x[0] for x in cert.get("subject", ()))  # type: ignore[misc]
            return probe.seen(
                good,
                f"{version.replace('v', ' ')}, {cipher}, certificate valid for {days} more days",
                tls=True,
                protocol=version,
                cipher=cipher,
                chain_verified=True,
                subject=str(subject.get("commonName", "")),
                days_to_expiry=days,
            )

        return await self._each_service(EvidenceKind.TLS, observe)

    # --- 3. authentication enforced ---------------------------------------------------------------------

    async def auth_enforced(self) -> list[Observation]:
        """One call with no token, one with our token lacking the RPC's scope: both must be refused."""

        async def observe(service: str, probe: Probe) -> Observation:
            method, request = GUARDED_CALLS[service]
            path = f"/{SERVICE_NAMES[service]}/{method}"
            anonymous = await _status_of(
                self.access.anonymous_channel(service), path, request, self.access.call_timeout
            )
            scoped = await _status_of(self.access.channel(service), path, request, self.access.call_timeout)
            if grpc.StatusCode.UNAVAILABLE in (anonymous, scoped):
                return probe.unreachable(f"{method}: UNAVAILABLE")
            refused = anonymous in REFUSED_WITHOUT_TOKEN and scoped in REFUSED_WITHOUT_SCOPE
            summary = (
                f"{method} refused without a token ({anonymous.name}) and without its scope ({scoped.name})"
                if refused
                else f"auth not enforced: {method} answered {anonymous.name} without a token and "
                f"{scoped.name} without its scope"
            )
            return probe.seen(refused, summary, method=method, without_token=anonymous.name, without_scope=scoped.name)

        return await self._each_service(EvidenceKind.AUTH_ENFORCED, observe)

    # --- 4. MFA, client secrets ----------------------------------------------------------------------------

    async def mfa(self) -> list[Observation]:
        """Every enabled person client has MFA; no client older than the secret age limit."""
        probe = Probe(EvidenceKind.MFA, self._target("tokens"))
        client = TokenClient(self.access.channel("tokens"))
        clients: list[tokens_pb2.Client] = []
        token = ""
        while True:
            reply = await client.list_clients(
                tokens_pb2.ListClientsRequest(page_size=1000, page_token=token), timeout=self.access.call_timeout
            )
            clients += reply.clients
            token = reply.next_page_token
            if not token:
                break
        people = [c for c in clients if c.kind == tokens_pb2.CLIENT_KIND_PERSON and c.enabled]
        without = sorted(c.client_id for c in people if not c.mfa_enabled)
        limit = probe.when - self.policy.client_secret_max_age
        stale = sorted(c.client_id for c in clients if c.enabled and c.create_time.ToDatetime(UTC) < limit)
        passed = not without and not stale
        parts = [f"{len(people)} person clients, {len(people) - len(without)} with MFA"]
        if without:
            parts.append(f"without MFA: {', '.join(without)}")
        if stale:
            parts.append(f"secrets older than {self.policy.client_secret_max_age.days} days: {', '.join(stale)}")
        return [probe.seen(passed, "; ".join(parts), people=len(people), without_mfa=without, stale_secrets=stale)]

    # --- 5. signing key age -------------------------------------------------------------------------------

    async def signing_key_age(self) -> list[Observation]:
        """The token service's active key against the rotation limit."""
        probe = Probe(EvidenceKind.SIGNING_KEY_AGE, self._target("tokens"))
        reply = await TokenClient(self.access.channel("tokens")).list_public_keys(
            tokens_pb2.ListPublicKeysRequest(page_size=100), timeout=self.access.call_timeout
        )
        active = [k for k in reply.keys if k.state == tokens_pb2.KEY_STATE_ACTIVE]
        if not active:
            return [probe.seen(False, "no active signing key", keys=len(reply.keys))]
        key = max(active, key=lambda k: k.not_before.ToDatetime(UTC))
        age = probe.when - key.not_before.ToDatetime(UTC)
        limit = self.policy.signing_key_max_age
        return [
            probe.seen(
                age <= limit,
                f"active key {key.kid} is {age.days} days old (limit {limit.days})",
                kid=key.kid,
                age_seconds=int(age.total_seconds()),
                limit_seconds=int(limit.total_seconds()),
            )
        ]

    # --- 6. credits audit chain ----------------------------------------------------------------------------

    async def audit_chain(self) -> list[Observation]:
        """VerifyAuditChain over every account, and the signed ledger head's age."""
        probe = Probe(EvidenceKind.AUDIT_CHAIN, self._target("credits"))
        credits = CreditsClient(self.access.channel("credits"))
        verified = await credits.verify_audit_chain(
            credits_pb2.VerifyAuditChainRequest(), timeout=max(self.access.call_timeout, 10.0)
        )
        head = await credits.get_audit_head(credits_pb2.GetAuditHeadRequest(), timeout=self.access.call_timeout)
        if not verified.ok:
            bad = verified.first_mismatch
            kind = credits_pb2.AuditMismatchKind.Name(bad.kind)
            return [
                probe.seen(
                    False,
                    f"audit chain mismatch: account {bad.account_id} event {bad.version} ({kind})",
                    ok=False,
                    account_id=bad.account_id,
                    version=bad.version,
                    mismatch=kind,
                    events_checked=verified.events_checked,
                )
            ]
        details: dict[str, Any] = {"ok": True, "events_checked": verified.events_checked}
        if verified.events_checked and head.HasField("sign_time"):
            age = probe.when - head.sign_time.ToDatetime(UTC)
            details["head_age_seconds"] = int(age.total_seconds())
            if age > self.policy.audit_head_max_age:
                return [probe.seen(False, f"signed head is {int(age.total_seconds())} s old", **details)]
        return [probe.seen(True, f"{verified.events_checked} events verify; head signed", **details)]

    # --- 7. posture ----------------------------------------------------------------------------------------

    async def posture(self) -> list[Observation]:
        """GetPosture of every server."""

        async def observe(service: str, probe: Probe) -> Observation:
            posture = (
                await PostureClient(self.access.channel(service)).get_posture(
                    posture_pb2.GetPostureRequest(), timeout=self.access.call_timeout
                )
            ).posture
            protections = dict(posture.protections)
            weak = [name for name, on in protections.items() if not on]
            flags = {
                "auth": posture.auth_enabled,
                "rate limit": posture.rate_limit_enabled,
                "structured logs": posture.logs_carry_trace_ids,
            }
            weak += [name for name, on in flags.items() if not on]
            summary = "secure settings" if not weak else f"off: {', '.join(sorted(weak))}"
            return probe.seen(
                not weak,
                summary,
                auth_enabled=posture.auth_enabled,
                rate_limit_enabled=posture.rate_limit_enabled,
                tls_enabled=posture.tls_enabled,
                log_format=posture.log_format,
                logs_carry_trace_ids=posture.logs_carry_trace_ids,
                storage=posture.storage,
                protections=protections,
                retention={r.record: r.seconds for r in posture.retention},
            )

        return await self._each_service(EvidenceKind.POSTURE, observe)

    # --- 8. retention ------------------------------------------------------------------------------------

    async def retention(self) -> list[Observation]:
        """Each server's reported retention periods against the required ones (0 means kept forever)."""

        async def observe(service: str, probe: Probe) -> Observation:
            posture = (
                await PostureClient(self.access.channel(service)).get_posture(
                    posture_pb2.GetPostureRequest(), timeout=self.access.call_timeout
                )
            ).posture
            kept = {r.record: r.seconds for r in posture.retention}
            short = sorted(
                f"{record} {kept[record] / 86400:g} days"
                for record, required in self.policy.required_retention.items()
                if record in kept and 0 < kept[record] < required.total_seconds()
            )
            summary = "; ".join(
                f"{r}: {'forever' if s == 0 else f'{s / 86400:g} days'}" for r, s in sorted(kept.items())
            )
            return probe.seen(
                not short,
                (f"kept too briefly: {', '.join(short)}" if short else summary or "keeps nothing it purges"),
                retention_seconds=kept,
                too_short=short,
            )

        return await self._each_service(EvidenceKind.RETENTION, observe)

    # --- 9. replication ------------------------------------------------------------------------------------

    async def replication(self) -> list[Observation]:
        """Each shard has a healthy replica; each recent failover met the recovery time objective."""
        probe = Probe(EvidenceKind.REPLICATION, self._target("sharding"))
        sharding = ShardingClient(self.access.channel("sharding"))
        shards = await sharding.list_shards(sharding_pb2.ListShardsRequest(page_size=1000))
        failovers = await sharding.list_failovers(sharding_pb2.ListFailoversRequest(page_size=100))
        without = sorted(
            s.shard_id
            for s in shards.shards
            if not any(
                n.role == sharding_pb2.NODE_ROLE_REPLICA and n.health == sharding_pb2.HEALTH_STATE_HEALTHY
                for n in s.nodes
            )
        )
        rto = self.policy.recovery_time_objective
        slow = sorted(f.failover_id for f in failovers.failovers if f.recovery_time.ToTimedelta() > rto)
        parts = [f"{len(shards.shards)} shards, {len(shards.shards) - len(without)} with a healthy replica"]
        if without:
            parts.append(f"no healthy replica: {', '.join(without)}")
        parts.append(f"{len(failovers.failovers)} failovers, {len(slow)} over the {rto.total_seconds():g} s RTO")
        return [
            probe.seen(
                not without and not slow,
                "; ".join(parts),
                shards=len(shards.shards),
                without_replica=without,
                failovers=len(failovers.failovers),
                over_rto=slow,
            )
        ]

    # --- 11. change management ----------------------------------------------------------------------------

    async def change_management(self) -> list[Observation]:
        """Recent deployments went through automated analysis; a promotion that skipped it names a reason."""
        probe = Probe(EvidenceKind.CHANGE_MANAGEMENT, self._target("deployment"))
        reply = await DeploymentClient(self.access.channel("deployment")).list_deployments(
            deployment_pb2.ListDeploymentsRequest(page_size=1000), timeout=self.access.call_timeout
        )
        since = probe.when - self.policy.change_window
        recent = [d for d in reply.deployments if d.create_time.ToDatetime(UTC) >= since]
        unanalysed = sorted(d.id for d in recent if _skipped_analysis(d))
        return [
            probe.seen(
                not unanalysed,
                f"{len(recent)} deployments in {self.policy.change_window.days} days"
                + (f"; promoted without analysis or reason: {', '.join(unanalysed)}" if unanalysed else ""),
                deployments=len(recent),
                unanalysed=unanalysed,
            )
        ]


def _skipped_analysis(deployment: deployment_pb2.Deployment) -> bool:
    if deployment.state != deployment_pb2.DEPLOYMENT_STATE_SUCCEEDED:
        return False
    analysed = deployment.last_analysis.verdict == deployment_pb2.VERDICT_PASS or any(
        entry.verdict == deployment_pb2.VERDICT_PASS for entry in deployment.history
    )
    manual = [e for e in deployment.history if "promot" in e.event.lower()]
    return not analysed and not all(e.detail.strip() for e in manual)


async def _status_of(channel: grpc.aio.Channel, path: str, request: Message, timeout: float) -> grpc.StatusCode:
    call = channel.unary_unary(path, request_serializer=type(request).SerializeToString, response_deserializer=bytes)
    try:
        await call(request, timeout=timeout)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _days_left(cert: Mapping[str, Any], now: datetime) -> int:
    not_after = cert.get("notAfter")
    if not not_after:
        return -1
    expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(str(not_after)), UTC)
    return (expires - now).days
