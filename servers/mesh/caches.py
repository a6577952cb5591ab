"""Cache lookups as the mesh counts them, and the chaos switch that bypasses every cache.

A cache asks its `CacheGate` before a lookup: while a cache-failure fault is in force the
gate says the cache is bypassed, so the lookup goes to the source of truth. Every lookup is
counted in `shieldx_cache_lookups_total{cache, result}` (`hit` or `miss`; a bypassed lookup is a
miss), so the fault shows up as misses.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

_counters: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def _lookups(registry: CollectorRegistry) -> Counter:
    found = _counters.get(registry)
    if found is None:
        found = _counters[registry] = Counter(
            "shieldx_cache_lookups_total",
            "Cache lookups by cache and result (hit or miss; lookups bypassed by a chaos fault are misses).",
            ["cache", "result"],
            registry=registry,
        )
    return found


class CacheGate:
    """The bypass switch and the lookup counters of one named cache."""

    def __init__(self, name: str, registry: CollectorRegistry, bypassed: Callable[[], bool]) -> None:
        self.name = name
        self.bypassed = bypassed
        """True while the cache must not be used (a cache-failure fault)."""
        counter = _lookups(registry)
        self._hits = counter.labels(name, "hit")
        self._misses = counter.labels(name, "miss")

    def hit(self) -> None:
        """Count a lookup the cache answered."""
        self._hits.inc()

    def miss(self) -> None:
        """Count a lookup that went to the source of truth."""
        self._misses.inc()
