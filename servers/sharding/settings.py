"""Settings of the sharding server, and the domain policies they make."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from servers.mesh.config import ConfigError, bounded
from servers.mesh.errors import InvalidArgument
from servers.sharding.failover import HealthPolicy
from servers.sharding.rebalance import RebalanceConfig


@dataclass
class ShardingSettings:
    """Settings of the sharding server: YAML section `sharding:`, env `SHIELDX_SHARDING__<FIELD>`."""

    health_monitor: bool = True
    """Take part in running the health monitor (and so automatic failover). Of the sharding servers
    sharing a registry, one at a time runs it (a lock in the registry's store decides); the others
    take over when it stops."""
    health_check_interval_seconds: float = bounded(30.0, above=0, at_most=86_400)
    """Time between two health checks of a node."""
    health_check_timeout_seconds: float = bounded(5.0, above=0)
    """A check taking longer fails (capped at the interval)."""
    failure_threshold: int = bounded(3, at_least=1, at_most=100)
    """Failed checks in a row that make a node DOWN and fail over a DOWN primary."""
    automatic_failover: bool = True
    """Fail over a DOWN primary without waiting for an operator."""
    promote_timeout_seconds: float = bounded(30.0, above=0, at_most=3600)
    """How long `pg_promote` may take."""
    switchover_timeout_seconds: float = bounded(10.0, above=0, at_most=3600)
    """Manual failover of a live primary: fencing it and the replica catching up."""
    rpo_objective_seconds: float = bounded(60.0, above=0, at_most=86_400)
    """Recovery point objective: a shard whose promised RPO (a region loss now) is above it is reported
    (`shieldx_dr_rpo_objective_breached`, a warning in the log, `GetDrStatus`)."""
    rebalance_batch_size: int = 100
    """Accounts moved together (one fence and one cut-over topology version per batch)."""
    rebalance_max_attempts: int = 3
    """Attempts per account before its move is marked FAILED."""
    rebalance_fence_timeout_seconds: float = 2.0
    """Longest an account's writes stay fenced during its cut-over."""
    rebalance_concurrency: int = 8
    """Accounts being copied, fenced or cleaned up at once."""
    watch_history: int = 256
    """Topology versions kept in memory for watchers that fall behind."""
    account_mover: str = ""
    """The account mover rebalances run with, as `module:factory` (the factory takes the runtime and returns
    a `rebalancer.AccountMover`), e.g. `servers.credits.moves:create_mover` when credits runs on the shards.
    Empty: rebalancing is refused (REBALANCE_MOVER_UNAVAILABLE)."""
    dsn_allowed_hosts: list[str] = field(default_factory=list)
    """Link-local or cloud-metadata hosts a shard's DSN may name all the same (e.g. `169.254.10.5`).
    Without an entry here RegisterShard and AddReplica refuse them (DSN_HOST_NOT_ALLOWED) before any
    connection is made, so a registration cannot point the monitor at an instance-metadata service."""
    topology_refresh_seconds: float = 2.0
    """How often the stored topology version is read, so that versions written by other sharding
    servers sharing the registry reach this server's watchers (0 turns it off)."""

    def health_policy(self) -> HealthPolicy:
        """The monitor's policy."""
        interval = self.health_check_interval_seconds
        return HealthPolicy(
            check_interval=timedelta(seconds=interval),
            check_timeout=timedelta(seconds=min(self.health_check_timeout_seconds, interval)),
            failure_threshold=self.failure_threshold,
            automatic_failover=self.automatic_failover,
        )

    def rebalance_config(self) -> RebalanceConfig:
        """The rebalance workflow's pacing (ConfigError if out of range)."""
        try:
            return RebalanceConfig(
                batch_size=self.rebalance_batch_size,
                max_attempts=self.rebalance_max_attempts,
                fence_timeout=timedelta(seconds=self.rebalance_fence_timeout_seconds),
            )
        except InvalidArgument as error:
            raise ConfigError(f"sharding.rebalance_{error.metadata.get('field', '')}: {error.message}") from None
