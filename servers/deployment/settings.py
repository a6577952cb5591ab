"""Settings of the deployment server (YAML section `deployment:`, env `SHIELDX_DEPLOYMENT__<FIELD>`).

Ranges are declared on the fields (`bounded`) and enforced by the config loader, with errors
naming the key; `check()` adds what a range cannot say.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from servers.deployment.chaos.settings import ChaosSettings
from servers.deployment.chaos.settings import checked as checked_chaos
from servers.deployment.experiments import DEFAULT_DRAWS
from servers.mesh.config import ConfigError, bounded


@dataclass
class DeploymentSettings:
    """The deployment server's own settings (YAML section `deployment:`, env `SHIELDX_DEPLOYMENT__*`)."""

    controller_tick_seconds: float = bounded(0.5, above=0)
    """How often the controller looks at the active deployments (how late a due timer or
    analysis may be seen)."""
    prometheus_url: str = ""
    """Base URL of a Prometheus server (e.g. `http://prometheus:9090`) to read the new version's
    metrics from; empty scrapes the instances' `/metrics` endpoints directly."""
    scrape_timeout_seconds: float = bounded(2.0, above=0)
    """Timeout of one GET of an instance's metrics (or of one Prometheus query)."""
    watch_poll_seconds: float = bounded(5.0, above=0)
    """How often watch streams and the flag set re-read the store, to see changes made by other
    replicas of this server (changes made here wake them at once)."""
    flag_keepalive_seconds: float = bounded(30.0, above=0)
    """Idle time after which EventStream sends KEEP_ALIVE."""
    experiment_draws: int = bounded(DEFAULT_DRAWS, at_least=1000)
    """Monte Carlo draws per arm behind the experiment probabilities."""
    request_id_retention_seconds: float = bounded(86400.0, above=0)
    """How long AIP-155 request ids (and the answers replayed to retries) are kept."""
    metrics_hosts: list[str] = field(default_factory=list)
    """Hosts a registered instance's `metrics_endpoint` may name besides the instance's own host
    (a metrics sidecar, a node exporter); any other host is refused (METRICS_HOST_NOT_ALLOWED)."""
    chaos: ChaosSettings = field(default_factory=ChaosSettings)
    """Chaos experiments: safety limits and timing (YAML `deployment: {chaos: ...}`)."""

    def check(self) -> None:
        """ConfigError unless the settings that ranges cannot check are sound too."""
        if self.prometheus_url and not self.prometheus_url.startswith(("http://", "https://")):
            raise ConfigError("deployment.prometheus_url: must be an http:// or https:// URL")
        checked_chaos(self.chaos)
