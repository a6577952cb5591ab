"""Settings of chaos experiments (YAML `deployment: {chaos: ...}`, env `SHIELDX_DEPLOYMENT__CHAOS__*`)."""

from __future__ import annotations

import dataclasses
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from servers.deployment.chaos.domain import SafetyPolicy
from servers.mesh.config import ConfigError, bounded


@dataclasses.dataclass
class ChaosSettings:
    """Safety limits and timing of the chaos controller."""

    environment: str = "development"
    """Label of the environment; experiments in `production` need `production_enabled`."""
    production_enabled: bool = False
    """Allow experiments in an environment labelled production."""
    safe_hours: list[int] = dataclasses.field(default_factory=lambda: list(range(24)))
    """Hours of the day (0–23, in `time_zone`) when experiments may start and schedules run."""
    time_zone: str = "UTC"
    """IANA time zone of `safe_hours`."""
    max_concurrent: int = bounded(2, at_least=1, at_most=100)
    """Experiments running at once, at most."""
    probe_interval_seconds: float = bounded(1.0, above=0, at_most=1.0)
    """Time between probes of a running experiment (at most 1 s)."""
    fault_ttl_seconds: float = bounded(5.0, above=0, at_most=60)
    """Expiry given to injected faults, renewed at every probe: how long a fault can outlive
    a controller that died."""
    recovery_timeout_seconds: float = bounded(60.0, above=0)
    """How long after the fault the controller waits for the hypothesis to hold again."""
    schedule_tick_seconds: float = bounded(5.0, above=0)
    """How often schedules are looked at."""
    health_timeout_seconds: float = bounded(0.5, above=0)
    """Deadline of one health check of a target instance."""

    def policy(self) -> SafetyPolicy:
        """The safety policy these settings describe."""
        return SafetyPolicy(
            environment=self.environment,
            production_enabled=self.production_enabled,
            safe_hours=tuple(self.safe_hours),
            time_zone=self.time_zone,
            max_concurrent=self.max_concurrent,
        )


def checked(settings: ChaosSettings) -> ChaosSettings:
    """`settings`, or ConfigError naming the key that is wrong."""
    if any(not isinstance(h, int) or not 0 <= h <= 23 for h in settings.safe_hours):
        raise ConfigError("deployment.chaos.safe_hours: hours are integers from 0 to 23")
    try:
        ZoneInfo(settings.time_zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"deployment.chaos.time_zone: unknown time zone {settings.time_zone!r}") from exc
    return settings
