"""The deception service's typed settings: YAML section `deception:`, env `SHIELDX_DECEPTION__<FIELD>`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from servers.deception.alert_forwarding import ForwardingPolicy
from servers.deception.alerts import DeduplicationPolicy
from servers.deception.decoys import DecoyConfig, DecoyLimits, default_decoy_configs
from servers.deception.domain import Protocol
from servers.deception.policies import BanditConfig, SelectionPolicy
from servers.deception.retention import RetentionPolicy
from servers.deception.sessions import SessionPolicy
from servers.mesh.config import ConfigError, MeshConfig, bounded, service_settings
from servers.mesh.errors import DomainError


@dataclass
class DeceptionSettings:
    """Everything the deception service can be told."""

    decoys: dict[str, str] = field(default_factory=dict)
    """Decoy listeners by id, each `<protocol>[:<port>][@<bind address>]`: `ssh-1: ssh:2222`,
    `web: http`, `db: mysql:3306@10.0.0.5`. Port 0 or none binds a free port (ListDecoys tells
    which). Empty: one decoy per protocol (`http-1`, `ssh-1`, ...) on free ports."""
    bind_address: str = "127.0.0.1"
    """Address decoys listen on unless their entry names one. Loopback, so nothing is exposed
    to a network by accident."""
    installation_file: str = ""
    """The installation file (seed) every fingerprint derives from; default
    `<data_dir>/deception-installation.json`. Keep it with the data: a new file means new
    fingerprints."""
    accept_new_installation: bool = False
    """Start even if the installation file is missing or is not the one the stored data was
    recorded with (the decoys will then look like a different machine than before)."""
    limits: DecoyLimits = field(default_factory=DecoyLimits)
    """Bounds on what one client may cost a decoy (timeouts, bytes, connections)."""
    dedup_window_seconds: float = bounded(600.0, above=0)
    """Events of one kind from one source within this many seconds of the previous one fold
    into the same alert."""
    dedup_max_span_seconds: float = bounded(86400.0, above=0)
    """An alert spanning longer than this is closed even while events keep coming."""
    session_idle_timeout_seconds: float = bounded(1800.0, above=0)
    """A source idle for longer starts a new session with its next event."""
    max_events_per_session: int = bounded(10_000, at_least=1)
    """Timeline entries kept per session in memory (every event is stored)."""
    attribution_threshold: float = bounded(0.4, above=0, at_most=1)
    """Similarity above which GetAttribution merges sessions into one actor, when the request
    does not say."""
    default_policy: str = "thompson"
    """Decoy selection policy when SelectDecoy does not name one: `thompson`, `ucb1` or `random`."""
    bandit: BanditConfig = field(default_factory=BanditConfig)
    """Discount, priors and exploration of the selection policies."""
    intake_queue_size: int = bounded(10_000, at_least=1)
    """Interactions waiting to be recorded at most; beyond, new ones are dropped and counted."""
    intake_batch_size: int = bounded(500, at_least=1)
    """Interactions recorded per transaction at most."""
    replay_max_logged_rounds: int = bounded(200_000, at_least=1)
    """Logged selections ReplayPolicy reads at most (the latest ones)."""
    forwarding: ForwardingPolicy = field(default_factory=ForwardingPolicy)
    """Retries of alert deliveries to the compliance service."""
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    """How long attacker activity and request ids are kept."""

    def installation_path(self, config: MeshConfig) -> Path:
        """Where the installation file lives."""
        return (
            Path(self.installation_file) if self.installation_file else config.data_path / "deception-installation.json"
        )

    def decoy_configs(self) -> tuple[DecoyConfig, ...]:
        """The decoy listeners to start."""
        if not self.decoys:
            return default_decoy_configs(self.bind_address)
        return tuple(parse_decoy(decoy_id, spec, self.bind_address) for decoy_id, spec in self.decoys.items())

    def selection_policy(self) -> SelectionPolicy:
        """The default selection policy."""
        try:
            return SelectionPolicy[self.default_policy.strip().upper()]
        except KeyError:
            raise ConfigError(
                f"deception.default_policy: {self.default_policy!r} is not thompson, ucb1 or random"
            ) from None

    def session_policy(self) -> SessionPolicy:
        """How events are grouped into sessions."""
        return SessionPolicy(
            idle_timeout=timedelta(seconds=self.session_idle_timeout_seconds),
            max_events_per_session=self.max_events_per_session,
        )

    def deduplication(self) -> DeduplicationPolicy:
        """How events fold into alerts."""
        return DeduplicationPolicy(
            window=timedelta(seconds=self.dedup_window_seconds), max_span=timedelta(seconds=self.dedup_max_span_seconds)
        )

    def validate(self) -> None:
        """ConfigError naming the first setting that is out of range."""
        self.selection_policy()
        try:
            self.bandit.validate()
            self.deduplication()
            configs = self.decoy_configs()
        except DomainError as error:
            raise ConfigError(f"deception: {error.message}") from None
        ids = [c.decoy_id for c in configs]
        if len(set(ids)) != len(ids):
            raise ConfigError("deception.decoys: decoy ids must be distinct")


def parse_decoy(decoy_id: str, spec: str, bind_address: str) -> DecoyConfig:
    """A decoy from its settings entry `<protocol>[:<port>][@<bind address>]`."""
    key = f"deception.decoys.{decoy_id}"
    target, at, address = spec.strip().partition("@")
    name, colon, port_text = target.partition(":")
    try:
        protocol = Protocol.parse(name)
        port = int(port_text) if colon else 0
        return DecoyConfig(decoy_id, protocol, port, address.strip() if at else bind_address)
    except ValueError:
        raise ConfigError(f"{key}: port {port_text!r} is not a number") from None
    except DomainError as error:
        raise ConfigError(f"{key}: {error.message}") from None


def load_settings(config: MeshConfig) -> DeceptionSettings:
    """The settings of this process, checked."""
    try:
        settings = service_settings(DeceptionSettings, config)
    except DomainError as error:  # DecoyLimits and friends check themselves when built
        raise ConfigError(f"deception: {error.message}") from None
    settings.validate()
    return settings
