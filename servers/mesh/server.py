"""The server factory every ShieldX process runs on, and `serve()` with graceful shutdown.

`create_server` registers the services, the standard health service (each service name and
""), reflection v1 and v1alpha, and the interceptor chain — declared in `interceptor_chain`,
the one place their order is written down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from prometheus_client import CollectorRegistry

from clients.channel import ChannelOptions, ChannelTls, TokenSource, open_channel
from clients.credentials import CREDENTIALS_FILE, CredentialsFileTokenSource
from servers.mesh.agent import deployment_agent
from servers.mesh.auth import AuthInterceptor, BearerVerifier, rules_from_contracts
from servers.mesh.caches import CacheGate
from servers.mesh.config import MeshConfig
from servers.mesh.faults import FaultInjectionInterceptor, FaultTable, fault_settings
from servers.mesh.interception import CallInterceptor, InterceptorChain
from servers.mesh.logs import configure_logging
from servers.mesh.metrics import MetricsInterceptor, process_registry, serve_metrics
from servers.mesh.posture import PostureFacts, PostureServicer
from servers.mesh.ratelimit import AuthFailureGuard, RateLimitInterceptor, TokenBuckets
from servers.mesh.reflection import enable_reflection
from servers.mesh.status import ErrorMappingInterceptor
from servers.mesh.storage import Database, open_database
from servers.mesh.tracing import TracingInterceptor, configure_tracing, shutdown_tracing
from servers.mesh.trust import MeshTrust
from servers.mesh.vault import KeyEncryptionKey, SecretVault, load_kek
from shieldx.mesh.v1 import posture_pb2, posture_pb2_grpc

log = logging.getLogger(__name__)

LIVENESS = "liveness"
"""Health service name that is SERVING while the process answers, whatever its peers do: what a
liveness probe asks, so an outage of the token service or the database never restarts every pod
(readiness asks "" and goes NOT_SERVING until the server can do its work)."""


@dataclass
class Mount:
    """One gRPC service to serve: its contract, its servicer and the generated registration function."""

    descriptor: ServiceDescriptor
    """The service's descriptor (from the generated `_pb2` module)."""
    servicer: Any
    """The servicer instance."""
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    """The generated `add_<Service>Servicer_to_server`."""
    foreign_scope: str = ""
    """For a contract we do not own (flagd's), which cannot carry the `shieldx.mesh.v1.auth`
    option: the scope every one of its RPCs requires. Our own contracts leave it empty."""

    @classmethod
    def of(
        cls, messages: ModuleType, stubs: ModuleType, name: str, servicer: Any = None, *, foreign_scope: str = ""
    ) -> Mount:
        """Mount service `name` of a generated module pair; without a servicer, the generated base
        class answers every RPC with UNIMPLEMENTED (a service whose implementation is still to come)."""
        return cls(
            messages.DESCRIPTOR.services_by_name[name],
            servicer if servicer is not None else getattr(stubs, f"{name}Servicer")(),
            getattr(stubs, f"add_{name}Servicer_to_server"),
            foreign_scope,
        )


@dataclass
class Service:
    """What one service contributes to a server process."""

    mounts: list[Mount]
    """The gRPC services it serves."""
    tasks: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    """Background loops started with the server and cancelled when it stops."""
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Called after the server stopped, in reverse order (close stores, flush state)."""
    draining: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Called once health reports NOT_SERVING, before the grace period: end long-lived streams
    (watches) so they do not hold the shutdown for the whole grace."""


class Runtime:
    """The per-process environment services are built with: config, metrics, peers, storage."""

    def __init__(
        self,
        config: MeshConfig,
        *,
        registry: CollectorRegistry | None = None,
        verifier: BearerVerifier | None = None,
        token_source: TokenSource | None = None,
    ) -> None:
        self.config = config
        self.registry = registry or process_registry()
        self.verifier = verifier
        self.token_source = token_source
        self.faults = FaultTable(config.version, settings=fault_settings(config))
        self.trust: MeshTrust | None = None
        self.posture = PostureFacts()
        """What the service reports in GetPosture beyond the runtime's settings (protections, retention)."""
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._databases: list[Database] = []
        self._kek: KeyEncryptionKey | None = None

    def credentials_path(self) -> Path:
        """Where this process's client credentials are (`auth.credentials_file` or `<data_dir>/credentials`)."""
        return Path(self.config.auth.credentials_file or self.config.data_path / CREDENTIALS_FILE)

    def use_credentials_file(self) -> None:
        """Authenticate outgoing calls as this service's principal from the credentials file."""
        tls = self.config.tls

        def token_channel(target: str) -> grpc.aio.Channel:
            secure = ChannelTls(tls.ca_file, tls.cert_file, tls.key_file) if tls.enabled else None
            options = ChannelOptions(
                tls=secure, metrics_registry=self.registry, keepalive=self.config.keepalive.policy()
            )
            return open_channel(target, options)

        self.token_source = CredentialsFileTokenSource(self.credentials_path(), self.config.service, token_channel)

    def enable_trust(self) -> MeshTrust:
        """Verify tokens with keys and revocations followed from the token service."""
        auth = self.config.auth
        self.trust = MeshTrust(
            self.channel("tokens"),
            audience=auth.audience,
            leeway_seconds=auth.leeway_seconds,
            refresh_seconds=auth.key_refresh_seconds,
            registry=self.registry,
        )
        self.verifier = self.trust.verifier
        self.trust.verifier.cache_gate = self.cache_gate("token_verification")
        return self.trust

    def cache_gate(self, name: str) -> CacheGate:
        """The lookup counters of cache `name`, bypassed while a cache-failure fault is in force."""
        return CacheGate(name, self.registry, self.faults.caches_bypassed)

    def channel(self, service: str) -> grpc.aio.Channel:
        """A shared, traced, authenticated channel to a peer service."""
        if service not in self._channels:
            tls = self.config.tls
            options = ChannelOptions(
                tls=ChannelTls(tls.ca_file, tls.cert_file, tls.key_file) if tls.enabled else None,
                token_source=self.token_source,
                metrics_registry=self.registry,
                keepalive=self.config.keepalive.policy(),
                outbound_gate=self._partition_gate(service),
            )
            self._channels[service] = open_channel(self.config.endpoint(service), options)
        return self._channels[service]

    def _partition_gate(self, service: str) -> Callable[[], str | None]:
        faults = self.faults

        def refused() -> str | None:
            partition = faults.refuses_to(service)
            return None if partition is None else f"network partitioned from {service} by {partition.id}"

        return refused

    async def database(self, *migrations: str, name: str | None = None) -> Database:
        """The service's store, migrated (mesh tables first): PostgreSQL if configured, else SQLite."""
        database = await open_database(
            name or self.config.service,
            data_dir=self.config.data_dir,
            database_url=self.config.database_url,
            schema=self.config.database_schema or None,
            migrations=("servers.mesh.migrations", *migrations),
        )
        database.statement_delay = self.faults.statement_delay  # db_slow_query, inside the transaction
        self._databases.append(database)
        return database

    async def vault(self, database: Database) -> SecretVault:
        """The shared secrets of this service in `database`, under the configured KEK."""
        if self._kek is None:
            secrets = self.config.secrets
            self._kek = await asyncio.to_thread(load_kek, secrets.kek, secrets.kek_file, self.config.data_path)
        return SecretVault(database, self._kek)

    async def close(self) -> None:
        """Close channels and stores."""
        for channel in self._channels.values():
            await channel.close()
        for database in self._databases:
            await database.close()


def interceptor_chain(
    runtime: Runtime, services: Sequence[ServiceDescriptor], foreign_scopes: Mapping[str, str] | None = None
) -> list[CallInterceptor[Any]]:
    """The server interceptors, outermost first: tracing → metrics → failed-auth guard → auth → rate limit →
    faults → errors.

    `foreign_scopes` names the scope of each service whose contract is not ours (by full name)."""
    config = runtime.config
    chain: list[CallInterceptor[Any]] = [TracingInterceptor(), MetricsInterceptor(runtime.registry)]
    if config.rate_limit.enabled:
        failures = TokenBuckets(config.rate_limit.auth_failures_per_second, config.rate_limit.auth_failure_burst)
        chain.append(AuthFailureGuard(failures))
    if config.auth.enabled:
        if runtime.verifier is None:
            raise RuntimeError("auth is enabled but no token verifier was configured")
        reverify = runtime.trust.verify if runtime.trust is not None else None
        rules = rules_from_contracts(services, foreign_scopes or {})
        chain.append(AuthInterceptor(runtime.verifier, rules, reverify))
    if config.rate_limit.enabled:
        chain.append(RateLimitInterceptor(TokenBuckets(config.rate_limit.rate_per_second, config.rate_limit.burst)))
    chain.append(FaultInjectionInterceptor(runtime.faults, envoy_headers=runtime.faults.settings.envoy_fault_headers))
    chain.append(ErrorMappingInterceptor())
    return chain


class MeshServer:
    """A started-or-not gRPC server with its health servicer and `/metrics` port."""

    def __init__(self, server: grpc.aio.Server, port: int, health: Any, names: list[str], runtime: Runtime) -> None:
        self.server = server
        self.port = port
        self.health = health
        self.service_names = names
        self.runtime = runtime
        self.metrics_port: int | None = None
        self._metrics_http: Any = None

    async def start(self, *, metrics: bool = True, serving: bool = True) -> None:
        """Start the server and `/metrics` (unless told not to); report SERVING now or, with
        `serving=False`, NOT_SERVING until `set_serving()`."""
        await self.server.start()
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        if serving:
            await self.set_serving()
        else:
            for name in ["", *self.service_names]:
                await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if metrics:
            config = self.runtime.config
            self._metrics_http, self.metrics_port = serve_metrics(
                self.runtime.registry, config.host, max(config.metrics_port, 0)
            )

    async def set_serving(self) -> None:
        """Report SERVING for every service and overall."""
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(
        self,
        grace: float | None = None,
        drain_delay: float | None = None,
        draining: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        """Graceful stop: health NOT_SERVING first, then the `draining` hooks (watch streams end),
        then in-flight calls get `grace` seconds to finish."""
        config = self.runtime.config
        await self.health.enter_graceful_shutdown()
        delay = config.drain_delay_seconds if drain_delay is None else drain_delay
        if delay > 0:
            await asyncio.sleep(delay)
        for hook in draining:
            await hook()
        await self.server.stop(config.shutdown_grace_seconds if grace is None else grace)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()


def _server_credentials(config: MeshConfig) -> grpc.ServerCredentials | None:
    tls = config.tls
    if not tls.enabled:
        return None
    pair = [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())]
    roots = Path(tls.ca_file).read_bytes() if tls.ca_file else None
    return grpc.ssl_server_credentials(pair, root_certificates=roots, require_client_auth=tls.require_client_cert)


def create_server(mounts: Sequence[Mount], runtime: Runtime, address: str | None = None) -> MeshServer:
    """Build (not start) a server for `mounts` and the standard PostureService; binds `address`
    (default host:port from config)."""
    posture = PostureServicer(runtime.config, runtime.posture)
    mounts = [*mounts, Mount.of(posture_pb2, posture_pb2_grpc, "PostureService", posture)]
    descriptors = [m.descriptor for m in mounts]
    foreign_scopes = {m.descriptor.full_name: m.foreign_scope for m in mounts if m.foreign_scope}
    server = grpc.aio.server(
        interceptors=[InterceptorChain(interceptor_chain(runtime, descriptors, foreign_scopes))],
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            *runtime.config.keepalive.policy().server_options(),
        ],
    )
    for mount in mounts:
        mount.add_to_server(mount.servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [d.full_name for d in descriptors]
    enable_reflection(server, [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
    config = runtime.config
    address = address or f"{config.host}:{config.port}"
    credentials = _server_credentials(config)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return MeshServer(server, port, health, names, runtime)


ServiceBuilder = Callable[[Runtime], Awaitable[Service]]


def prepare_auth(runtime: Runtime, service: Service) -> None:
    """With auth on: outgoing calls carry this service's token, and (unless the service verifies
    tokens itself, as the token service does) incoming ones are verified by followed trust."""
    if not runtime.config.auth.enabled:
        return
    if runtime.verifier is None:
        trust = runtime.enable_trust()
        service.tasks += [trust.refresh_keys_forever, trust.follow_revocations_forever, trust.prune_forever]


async def run(config: MeshConfig, build: ServiceBuilder, runtime: Runtime | None = None) -> None:
    """Run one server process until SIGTERM or SIGINT, then shut down gracefully."""
    runtime = runtime or Runtime(config)
    if config.auth.enabled and runtime.token_source is None:
        runtime.use_credentials_file()
    service = await build(runtime)
    prepare_auth(runtime, service)
    server = create_server(service.mounts, runtime)
    await server.start(serving=runtime.trust is None)
    agent = deployment_agent(runtime, server.port, server.metrics_port)
    if agent is not None:
        service.tasks += [agent.register_forever, agent.follow_faults_forever]
        service.draining.append(agent.withdraw)
    tasks = [asyncio.create_task(task(), name=task.__qualname__) for task in service.tasks]
    if runtime.trust is not None:
        log.info("waiting for the token service's keys and revocations")
        await runtime.trust.wait_ready()
        await server.set_serving()
    log.info(
        "serving",
        extra={"port": server.port, "metrics_port": server.metrics_port, "services": server.service_names},
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down: NOT_SERVING, draining in-flight calls")
    await server.stop(draining=service.draining)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    for close in reversed(service.closers):
        await close()
    await runtime.close()
    log.info("stopped")


def serve(config: MeshConfig, build: ServiceBuilder) -> None:
    """Entry point of `python -m servers.<name>`: logging, tracing, then `run` until a signal."""
    configure_logging(config.service, config.log_level, config.log_format)
    configure_tracing(config.service, config.version)
    try:
        asyncio.run(run(config, build))
    finally:
        shutdown_tracing()
