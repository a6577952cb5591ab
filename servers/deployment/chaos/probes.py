"""Probing a chaos target: its instances' health, their grpc_server_* series and breaker trips
(scraped from each `/metrics`, or read from Prometheus when one is configured)."""

from __future__ import annotations

import asyncio
import logging
import math
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from servers.deployment.chaos.domain import Measurement, Probe, measurement
from servers.deployment.observer import Fetch, http_get
from servers.deployment.prometheus import parse_vector
from servers.deployment.routes import Instance
from servers.deployment.scrape import Scrape, observation, parse_scrape, scrape_delta
from servers.mesh.errors import Unavailable

log = logging.getLogger(__name__)

TRIPS_SAMPLE = "shieldx_client_circuit_breaker_trips_total"

HealthCheck = Callable[[str], Awaitable[bool]]
"""True if the instance at `host:port` answers SERVING."""


@dataclass
class Window:
    """The last scrape of each instance of one experiment's target."""

    scrapes: dict[str, Scrape] = field(default_factory=dict)
    trips: dict[str, float] = field(default_factory=dict)


class TargetProbes:
    """Health checks and metric scrapes of a target's instances."""

    def __init__(
        self,
        health: HealthCheck,
        *,
        fetch: Fetch = http_get,
        timeout: float = 2.0,
        prometheus_url: str = "",
    ) -> None:
        self._health = health
        self._fetch = fetch
        self.timeout = timeout
        self.prometheus_url = prometheus_url.rstrip("/")

    async def serving(self, instances: Sequence[Instance]) -> int:
        """How many instances answer SERVING."""
        answers = await asyncio.gather(*(self._health(i.address) for i in instances), return_exceptions=True)
        return sum(a is True for a in answers)

    async def probe(self, window: Window, instances: Sequence[Instance], promql: str = "") -> Probe:
        """Health, and what happened since `window`'s last scrape (which it then advances)."""
        serving, pages, value = await asyncio.gather(
            self.serving(instances), self._pages(instances), self._promql(promql)
        )
        deltas: list[Scrape] = []
        trips = 0.0
        for address, page in pages.items():
            if page is None:
                continue
            try:
                current = parse_scrape(page)
            except Unavailable as exc:
                log.info("target instance unreadable: %s", exc.message, extra={"address": address})
                continue
            deltas.append(scrape_delta(window.scrapes.get(address), current))
            window.scrapes[address] = current
            count = breaker_trips(page)
            before = window.trips.get(address)
            trips += count if before is None or count < before else count - before
            window.trips[address] = count
        seen = observation(deltas, healthy_instances=len(deltas), total_instances=len(instances))
        return Probe(measurement(seen, round(trips)), serving=serving, instances=len(instances), promql_value=value)

    async def baseline(self, window: Window, instances: Sequence[Instance]) -> Measurement:
        """Take the window's first scrape; what it shows (everything since the processes started)."""
        return (await self.probe(window, instances)).interval

    async def _pages(self, instances: Sequence[Instance]) -> dict[str, str | None]:
        async def one(instance: Instance) -> str | None:
            if not instance.metrics_endpoint:
                return None
            try:
                return await self._fetch(instance.metrics_endpoint, self.timeout)
            except Unavailable:
                return None

        pages = await asyncio.gather(*(one(i) for i in instances))
        return {i.address: page for i, page in zip(instances, pages, strict=True)}

    async def _promql(self, expression: str) -> float | None:
        if not expression or not self.prometheus_url:
            return None
        url = f"{self.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        try:
            samples = parse_vector(await self._fetch(url, self.timeout))
        except Unavailable as exc:
            log.info("PromQL probe failed: %s", exc.message)
            return math.inf  # an unanswerable probe is a failing one
        return max((value for _, value in samples), default=0.0)


def breaker_trips(page: str) -> float:
    """The sum of `shieldx_client_circuit_breaker_trips_total` on a metrics page (0 if absent)."""
    if TRIPS_SAMPLE not in page:
        return 0.0
    total = 0.0
    try:
        for family in text_string_to_metric_families(page):
            for sample in family.samples:
                if sample.name == TRIPS_SAMPLE and math.isfinite(sample.value):
                    total += sample.value
    except (ValueError, TypeError, KeyError, IndexError):
        return 0.0
    return total


class GrpcHealth:
    """`grpc.health.v1` checks of instances over one cached channel each (the channel factory's,
    without retries or a circuit breaker: a probe must see the instance as it is)."""

    def __init__(self, open_channel: Callable[[str], grpc.aio.Channel], timeout: float) -> None:
        self._open = open_channel
        self.timeout = timeout
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def __call__(self, address: str) -> bool:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._open(address)
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=self.timeout
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        """Close the channels."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
