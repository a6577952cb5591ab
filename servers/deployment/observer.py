"""Observing a version under deployment: its instances' metrics over one analysis interval.

Two sources give the same `Observation`:

- `ScrapeObserver` GETs every instance's `/metrics` (plain HTTP in a worker thread, no new
  dependency) and keeps the previous scrape per deployment and instance, so an analysis sees
  only what happened since the last one (`scrape_delta`, which copes with restarts). The
  first scrape of a deployment is its baseline and judges nothing.
- `PrometheusObserver` asks a Prometheus server's query API for the same numbers as
  `increase(...[interval])`, when one is configured.

An instance whose endpoint does not answer counts as unhealthy. Whether new instances are
ready (blue-green, rolling) is always asked of the instances themselves: Prometheus would
only know at its next scrape.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from servers.deployment.analysis import Observation
from servers.deployment.prometheus import observation_from_vectors, parse_vector, version_queries
from servers.deployment.routes import Instance
from servers.deployment.scrape import Scrape, observation, parse_scrape, scrape_delta
from servers.mesh.errors import Unavailable

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024
"""Largest metrics page or query answer read; anything bigger is not a sane exposition."""

Fetch = Callable[[str, float], Awaitable[str]]
"""GET a URL with a timeout in seconds; the body as text, or Unavailable."""


# Instances are reached directly, as Prometheus reaches them: never through an HTTP proxy
# the environment may name for outbound traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, timeout: float) -> str:
    request = urllib.request.Request(url, headers={"Accept": "text/plain, application/json"})
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            body: bytes = answer.read(MAX_BODY_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Unavailable(f"GET {url} failed: {exc}", reason="METRICS_UNREACHABLE") from exc
    if len(body) > MAX_BODY_BYTES:
        raise Unavailable(f"GET {url}: answer larger than {MAX_BODY_BYTES} bytes", reason="METRICS_UNREADABLE")
    return body.decode("utf-8", errors="replace")


async def http_get(url: str, timeout: float) -> str:
    """GET `url` in a worker thread (urllib blocks); Unavailable on any failure."""
    return await asyncio.to_thread(_get, url, timeout)


class VersionObserver(Protocol):
    """What the controller needs to judge a version."""

    async def observe(self, deployment_id: str, instances: Sequence[Instance], interval: float) -> Observation | None:
        """The version's observation since the last one; None while there is no baseline yet."""
        ...

    async def begin(self, deployment_id: str, instances: Sequence[Instance]) -> None:
        """Take the baseline of a deployment if it has none yet."""
        ...

    async def ready(self, instances: Sequence[Instance]) -> int:
        """How many of `instances` answer their metrics endpoint."""
        ...

    def forget(self, keep: Collection[str]) -> None:
        """Drop what is kept for deployments other than `keep` (they ended)."""
        ...


async def _answering(instances: Sequence[Instance], fetch: Fetch, timeout: float) -> dict[str, str | None]:
    """address → metrics page (None if it has no endpoint or did not answer)."""

    async def one(instance: Instance) -> str | None:
        if not instance.metrics_endpoint:
            return None
        try:
            return await fetch(instance.metrics_endpoint, timeout)
        except Unavailable as exc:
            log.info("instance unhealthy: %s", exc.message, extra={"address": instance.address})
            return None

    pages = await asyncio.gather(*(one(instance) for instance in instances))
    return {instance.address: page for instance, page in zip(instances, pages, strict=True)}


@dataclass
class _Window:
    """The last scrape of each instance of one deployment's new version."""

    scrapes: dict[str, Scrape] = field(default_factory=dict)
    """address → its last successful scrape."""
    taken_at: float = 0.0
    """Monotonic time of the last scrape."""


class ScrapeObserver:
    """Observations from scraping the instances' `/metrics` directly."""

    def __init__(
        self, *, timeout: float = 2.0, fetch: Fetch = http_get, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.timeout = timeout
        self._fetch = fetch
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    async def begin(self, deployment_id: str, instances: Sequence[Instance]) -> None:
        """Scrape the baseline of a deployment if it has none yet."""
        if deployment_id not in self._windows:
            self._windows[deployment_id] = _Window(await self._scrape(instances), self._clock())

    async def observe(self, deployment_id: str, instances: Sequence[Instance], interval: float) -> Observation | None:
        """Deltas since the previous scrape. Without a baseline this scrape becomes it (None), and
        a call less than half an interval after the baseline waits (a controller that restarted
        finds every analysis due at once)."""
        window = self._windows.get(deployment_id)
        now = self._clock()
        if window is None:
            await self.begin(deployment_id, instances)
            return None
        if now - window.taken_at < interval / 2:
            return None
        current = await self._scrape(instances)
        deltas = [scrape_delta(window.scrapes.get(address), scrape) for address, scrape in current.items()]
        window.scrapes.update(current)  # an instance that missed this scrape keeps its older baseline
        window.taken_at = now
        return observation(deltas, healthy_instances=len(current), total_instances=len(instances))

    async def _scrape(self, instances: Sequence[Instance]) -> dict[str, Scrape]:
        """address → parsed scrape, for the instances that answered with an exposition."""
        pages = await _answering(instances, self._fetch, self.timeout)
        current: dict[str, Scrape] = {}
        for address, page in pages.items():
            if page is None:
                continue
            try:
                current[address] = parse_scrape(page)
            except Unavailable as exc:
                log.info("instance unhealthy: %s", exc.message, extra={"address": address})
        return current

    async def ready(self, instances: Sequence[Instance]) -> int:
        """How many instances answer their metrics endpoint."""
        pages = await _answering(instances, self._fetch, self.timeout)
        return sum(page is not None for page in pages.values())

    def forget(self, keep: Collection[str]) -> None:
        """Drop the baselines of deployments that ended."""
        for deployment_id in [d for d in self._windows if d not in keep]:
            del self._windows[deployment_id]


class PrometheusObserver:
    """Observations from a Prometheus server's `/api/v1/query` (it must scrape the instances)."""

    def __init__(self, base_url: str, *, timeout: float = 5.0, fetch: Fetch = http_get) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._fetch = fetch

    async def observe(self, deployment_id: str, instances: Sequence[Instance], interval: float) -> Observation | None:
        """`increase` of the version's series over the last `interval` seconds."""
        endpoints = [instance.metrics_endpoint for instance in instances if instance.metrics_endpoint]
        if not endpoints:
            return Observation(0, 0, (), 0, len(instances))
        queries = version_queries(endpoints, interval)
        requests, errors, buckets, up = await asyncio.gather(
            *(self._query(q) for q in (queries.requests, queries.errors, queries.buckets, queries.up))
        )
        return observation_from_vectors(
            requests=requests, errors=errors, buckets=buckets, up=up, total_instances=len(instances)
        )

    async def _query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        url = f"{self.base_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        return parse_vector(await self._fetch(url, self.timeout))

    async def begin(self, deployment_id: str, instances: Sequence[Instance]) -> None:
        """Prometheus keeps the history; there is no baseline to take."""

    async def ready(self, instances: Sequence[Instance]) -> int:
        """How many instances answer their metrics endpoint (asked of them, not of Prometheus)."""
        pages = await _answering(instances, self._fetch, self.timeout)
        return sum(page is not None for page in pages.values())

    def forget(self, keep: Collection[str]) -> None:
        """Nothing is kept between queries."""
