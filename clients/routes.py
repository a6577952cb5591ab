"""Traffic routes as callers see them: the versions of a service, their weights, and the picker.

A route gives each version of a service a weight in basis points (the weights sum to
10000) and lists the addresses of its instances. Callers pick a version per call with
`RoutePicker`: at random by weight, or, with a sticky value (say a user id from the call's
metadata), by hashing it, so the same value stays on the same version while the weights
stand. Versions are ordered by name and a sticky bucket is compared with cumulative
weights, so when two versions share traffic, raising one's weight only moves callers onto
it, never back and forth. The deployment server builds and publishes routes
(`servers.deployment.routes`); `clients.routing.RoutedChannel` follows them.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from datetime import datetime

from clients.bucketing import murmur3_x86_32, scaled_bucket


class NoRoute(LookupError):
    """No instance of any version of the service is registered, so no call can be routed."""


@dataclass(frozen=True)
class VersionRoute:
    """One version's share of a service's calls and where its instances are."""

    version: str
    """The version."""
    weight_bp: int
    """Its weight in basis points."""
    addresses: tuple[str, ...]
    """Its instances' addresses, sorted."""


@dataclass(frozen=True)
class Route:
    """How the calls to one service split across its versions."""

    service: str
    """The service."""
    revision: int
    """Increases with every change."""
    versions: tuple[VersionRoute, ...]
    """Sorted by version."""
    sticky_metadata_key: str = ""
    """Metadata key whose value pins a caller to a version; empty for none."""
    updated_at: datetime | None = None
    """When it last changed."""


class RoutePicker:
    """Picks the version for each call of one service; build one per route revision.

    Versions with weight but no instance give their share to the others in proportion; if
    no weighted version has an instance, calls spread evenly over the versions that have
    one, since serving the wrong version beats failing every call.
    """

    __slots__ = ("_cumulative", "_salt", "_total", "_versions")

    def __init__(self, route: Route) -> None:
        served = [(v.version, v.weight_bp) for v in route.versions if v.addresses and v.weight_bp > 0]
        if not served:
            served = [(v.version, 1) for v in route.versions if v.addresses]
        self._versions = [version for version, _ in served]
        self._cumulative: list[int] = []
        total = 0
        for _, weight in served:
            total += weight
            self._cumulative.append(total)
        self._total = total
        self._salt = route.service + "\x00"

    @property
    def versions(self) -> list[str]:
        """The versions that can be picked, in order."""
        return list(self._versions)

    def pick(self, sticky_value: str | None = None, rng: random.Random | None = None) -> str:
        """The version for one call: by the hash of `sticky_value`, else by a random draw."""
        if not self._total:
            raise NoRoute("no instance of any version is registered")
        if sticky_value is not None:
            bucket = scaled_bucket(murmur3_x86_32(self._salt + sticky_value), self._total)
        else:
            bucket = int((rng or random).random() * self._total)
        return self._versions[bisect.bisect_right(self._cumulative, bucket)]
