"""The deployment agent: how a server process takes part in deployments.

When enabled, every server process

- registers its instance with the deployment server (service, version = `config.version`,
  gRPC address, `/metrics` URL), again every `heartbeat_seconds` so a deployment server that
  lost its registry (or restarted on an empty store) learns it back, and deregisters as soon
  as the process starts draining (so routes move away before the grace period);
- follows `WatchFaultInjections` for its service and installs the active faults in
  `runtime.faults`, where the fault-injection interceptor applies those meant for its version.

Both loops outlive the deployment server being down: they log, back off (with jitter, up
to `retry_max_seconds`) and try again; installed faults keep applying until they expire.

Settings come from the `agent:` section of the config file and the `SHIELDX_AGENT__<FIELD>`
environment variables. The agent is off unless `enabled` is set, so
plain test servers are unaffected; the launcher turns it on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import grpc

from clients.backoff import Backoff
from servers.mesh.config import MeshConfig, bounded, section_settings
from servers.mesh.faults import Fault, FaultKind
from shieldx.deployment.v1 import deployment_pb2_grpc, faults_pb2, routing_pb2

if TYPE_CHECKING:  # the server imports the agent
    from servers.mesh.server import Runtime

log = logging.getLogger(__name__)

_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})
_FAULT_KINDS = frozenset(kind.value for kind in FaultKind)


@dataclasses.dataclass
class AgentSettings:
    """The deployment agent of a server process (YAML `agent:`, env `SHIELDX_AGENT__*`)."""

    enabled: bool = False
    """Register with the deployment server and follow its fault injections."""
    service: str = ""
    """The service name to register under, as routes name it; empty uses the process's service."""
    advertise_host: str = ""
    """Host other processes reach this one at; empty uses the bind host (or the machine's
    name when bound to a wildcard address)."""
    heartbeat_seconds: float = bounded(15.0, above=0)
    """How often the registration is renewed."""
    retry_initial_seconds: float = bounded(0.5, above=0)
    """First pause after a failed call to the deployment server."""
    retry_max_seconds: float = bounded(15.0, above=0)
    """Longest pause between retries."""
    call_timeout_seconds: float = bounded(5.0, above=0)
    """Deadline of one registration call."""


def agent_settings(config: MeshConfig, environ: Mapping[str, str] | None = None) -> AgentSettings:
    """The agent's settings: the `agent:` section of the config file, then `SHIELDX_AGENT__*`."""
    return section_settings(AgentSettings, config, "agent", environ)


def fault_of(message: faults_pb2.FaultInjection, *, wall: float, monotonic: float) -> Fault:
    """A runtime `Fault` from a `FaultInjection` message (expiry moved to the monotonic clock)."""
    delay = message.delay.seconds + message.delay.nanos / 1e9 if message.HasField("delay") else 0.0
    expires = math.inf
    if message.HasField("expire_time"):
        expire_wall = message.expire_time.seconds + message.expire_time.nanos / 1e9
        expires = monotonic + (expire_wall - wall)
    jitter = message.jitter.seconds + message.jitter.nanos / 1e9 if message.HasField("jitter") else 0.0
    created = message.create_time.seconds + message.create_time.nanos / 1e9 if message.HasField("create_time") else 0.0
    return Fault(
        id=message.id,
        method_pattern=message.method_pattern or "*",
        percentage=message.percentage,
        delay_seconds=max(delay, 0.0),
        abort_code=_STATUS_CODES.get(message.abort_code) if message.abort_code else None,
        expires_at=expires,
        version=message.version,
        kind=FaultKind(message.kind) if message.kind in _FAULT_KINDS else FaultKind.CALLS,
        jitter_seconds=max(jitter, 0.0),
        peer_service=message.peer_service,
        block_inbound=message.block_inbound,
        block_outbound=message.block_outbound,
        cpu_workers=max(message.cpu_workers, 0),
        memory_mib=max(message.memory_mib, 0),
        instance_address=message.instance_address,
        created_wall=created,
    )


class DeploymentAgent:
    """Registration and fault following for one server process."""

    def __init__(self, runtime: Runtime, settings: AgentSettings, address: str, metrics_endpoint: str) -> None:
        self.runtime = runtime
        self.settings = settings
        self.service = settings.service or runtime.config.service
        self.version = runtime.config.version
        self.address = address
        self.metrics_endpoint = metrics_endpoint
        runtime.faults.instance_address = address  # faults aimed at one instance (termination) find it
        self._stub = deployment_pb2_grpc.DeploymentServiceStub(runtime.channel("deployment"))
        self._withdrawn = False

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.retry_initial_seconds, self.settings.retry_max_seconds)

    async def register_forever(self) -> None:
        """Register once the server serves, renew every heartbeat, deregister when cancelled (the process stops)."""
        request = routing_pb2.RegisterInstanceRequest(
            service=self.service, version=self.version, address=self.address, metrics_endpoint=self.metrics_endpoint
        )
        backoff, registered = self._backoff(), False
        try:
            if self.runtime.trust is not None:  # the server reports SERVING only once it can verify tokens
                await self.runtime.trust.wait_ready()
            while not self._withdrawn:
                try:
                    await self._stub.RegisterInstance(request, timeout=self.settings.call_timeout_seconds)
                except grpc.aio.AioRpcError as error:
                    registered = False
                    pause = backoff.next()
                    log.warning(
                        "cannot register with the deployment server (%s: %s); retrying in %.1f s",
                        error.code().name,
                        error.details(),
                        pause,
                    )
                    await asyncio.sleep(pause)
                    continue
                if not registered:
                    log.info(
                        "registered with the deployment server",
                        extra={"registered_service": self.service, "version": self.version, "address": self.address},
                    )
                registered = True
                backoff.reset()
                await asyncio.sleep(self.settings.heartbeat_seconds)
        except asyncio.CancelledError:
            await self.withdraw()
            raise

    async def withdraw(self) -> None:
        """Deregister for good (the server is draining): traffic moves away before the grace period."""
        if self._withdrawn:
            return
        self._withdrawn = True
        request = routing_pb2.DeregisterInstanceRequest(service=self.service, address=self.address)
        try:
            await self._stub.DeregisterInstance(request, timeout=min(self.settings.call_timeout_seconds, 2.0))
            log.info("deregistered from the deployment server", extra={"address": self.address})
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                log.warning("could not deregister (%s: %s)", error.code().name, error.details())

    async def follow_faults_forever(self) -> None:
        """Keep `runtime.faults` equal to the active fault injections of this service."""
        backoff = self._backoff()
        request = faults_pb2.WatchFaultInjectionsRequest(services=[self.service])
        while True:
            try:
                async for message in self._stub.WatchFaultInjections(request):
                    self.install(message)
                    backoff.reset()
                log.info("fault injection watch ended; reconnecting")
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "cannot follow fault injections (%s: %s); retrying",
                    error.code().name,
                    error.details(),
                )
            await asyncio.sleep(backoff.next())

    def install(self, message: faults_pb2.WatchFaultInjectionsResponse) -> None:
        """Replace the process's faults with the set in `message`."""
        wall, monotonic = time.time(), time.monotonic()
        faults = [fault_of(f, wall=wall, monotonic=monotonic) for f in message.fault_injections]
        self.runtime.faults.replace(faults)
        log.info("fault injections now in force: %d", len(faults), extra={"fault_ids": [f.id for f in faults]})


def _advertised_host(settings: AgentSettings, bind_host: str) -> str:
    host = settings.advertise_host or bind_host
    if host in _WILDCARD_HOSTS:
        host = socket.gethostname()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host


def deployment_agent(
    runtime: Runtime, server_port: int, metrics_port: int | None, settings: AgentSettings | None = None
) -> DeploymentAgent | None:
    """The agent of a server on `server_port`, or None unless enabled."""
    settings = settings or agent_settings(runtime.config)
    if not settings.enabled:
        return None
    host = _advertised_host(settings, runtime.config.host)
    metrics = f"http://{host}:{metrics_port}/metrics" if metrics_port else ""
    return DeploymentAgent(runtime, settings, f"{host}:{server_port}", metrics)
