"""Typed configuration: dataclasses filled from a YAML file, then environment overrides, in one place.

Precedence, lowest first: field defaults, the YAML file (`--config` or `SHIELDX_CONFIG`), then
environment variables `SHIELDX_<FIELD>` with `__` between nested names (for example
`SHIELDX_AUTH__ENABLED=false` or `SHIELDX_CREDITS__SNAPSHOT_EVERY=50`). Standard variables keep
their standard meaning: `SHIELDX_DATABASE_URL` selects PostgreSQL, `OTEL_*` configure tracing.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from clients.channel import Keepalive
from clients.endpoints import DEFAULT_PORTS, SERVICES

T = TypeVar("T")
N = TypeVar("N", int, float)

# Default gRPC and metrics ports (DESIGN.md).
# YAML sections that belong to a part of the runtime with its own typed settings (read with
# `section_settings`), rather than to MeshConfig itself.
EXTENSIONS = ("agent", "faults")


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range a numeric setting must lie in (checked by the loader; NaN and infinities never are)."""

    above: float | None = None
    at_least: float | None = None
    at_most: float | None = None

    def admits(self, value: float) -> bool:
        """Whether `value` is in range."""
        return (
            math.isfinite(value)
            and (self.above is None or value > self.above)
            and (self.at_least is None or value >= self.at_least)
            and (self.at_most is None or value <= self.at_most)
        )

    def __str__(self) -> str:
        parts = [f"greater than {self.above:g}"] if self.above is not None else []
        parts += [f"at least {self.at_least:g}"] if self.at_least is not None else []
        parts += [f"at most {self.at_most:g}"] if self.at_most is not None else []
        return " and ".join(parts)


def bounded(
    default: N, *, above: float | None = None, at_least: float | None = None, at_most: float | None = None
) -> N:
    """A numeric dataclass field with its range, e.g. `interval_seconds: float = bounded(2.0, above=0)`."""
    limits = Bounds(above, at_least, at_most)
    if not limits.admits(default):
        raise ValueError(f"default {default!r} is outside its own bounds ({limits})")
    return dataclasses.field(default=default, metadata={"bounds": limits})


@dataclasses.dataclass
class TlsConfig:
    """Transport security of a server, and of the calls it makes to its peers."""

    cert_file: str = ""
    """PEM certificate chain of this process. Setting it turns TLS on."""
    key_file: str = ""
    """PEM private key matching `cert_file`."""
    ca_file: str = ""
    """PEM CA bundle that peers' certificates must chain to."""
    require_client_cert: bool = False
    """Mutual TLS: refuse clients that present no certificate signed by `ca_file`."""

    @property
    def enabled(self) -> bool:
        """Whether TLS is configured."""
        return bool(self.cert_file)


@dataclasses.dataclass
class AuthConfig:
    """Bearer-token authentication of incoming calls and credentials for outgoing ones."""

    enabled: bool = True
    """Verify tokens and enforce each RPC's declared scope."""
    audience: str = "shieldx"
    """The `aud` a token must carry to be accepted here."""
    leeway_seconds: float = 30.0
    """Clock skew tolerated on `exp` and `nbf`."""
    credentials_file: str = ""
    """File with this process's client credentials (default: `<data_dir>/credentials`)."""
    key_refresh_seconds: float = 60.0
    """How often the token service's public keys are fetched again."""


@dataclasses.dataclass
class SecretsConfig:
    """Where the key-encryption key of the secrets replicas share comes from (servers/mesh/vault.py)."""

    kek: str = ""
    """The KEK itself, 32 bytes base64 (e.g. `SHIELDX_SECRETS__KEK` from a Kubernetes Secret)."""
    kek_file: str = ""
    """A file holding the KEK in base64, mode 0600 (a mounted Secret); default `<data_dir>/kek`, made once."""


@dataclasses.dataclass
class RateLimitConfig:
    """Per-caller token bucket, and a per-source-address bucket of failed authentications.

    Defaults from tests/bench/bench_mesh_overhead.py --auth on this two-core machine: a server
    answered about 765 small calls/s through the whole chain (64 callers; a bare grpc.aio server
    1,329/s in the same run). One caller may use about half of that (400/s, bursts of 800), so
    two greedy callers cannot starve the rest; the earlier 5,000/s with bursts of 10,000 never
    triggered. Failed authentication costs a verification each (an Argon2id hash for
    IssueToken, about 12 ms): 100 in a row, then 5 a second, per source address (a mesh on one
    machine shares 127.0.0.1, and a key rotation refuses many calls at once).
    """

    enabled: bool = True
    """Apply the limits at all."""
    rate_per_second: float = bounded(400.0, above=0)
    """Sustained calls per second allowed to one caller."""
    burst: float = bounded(800.0, at_least=1)
    """Calls a caller may make at once before the rate applies."""
    auth_failures_per_second: float = bounded(5.0, above=0)
    """Failed authentications per second a source address may cause once its burst is spent."""
    auth_failure_burst: float = bounded(100.0, at_least=1)
    """Failed authentications a source address may cause before it is refused unverified."""


@dataclasses.dataclass
class KeepaliveConfig:
    """Connection keepalive: one policy for the server and the channels it opens to its peers,
    so that servers accept the pings clients send (`clients.channel.Keepalive`)."""

    interval_seconds: float = bounded(30.0, above=0)
    """Quiet time after which a connection is pinged; servers accept pings every half of it."""
    timeout_seconds: float = bounded(10.0, above=0)
    """How long a ping may go unanswered before the connection is dropped."""

    def policy(self) -> Keepalive:
        """The policy as the channel factory and the server take it."""
        return Keepalive(self.interval_seconds, self.timeout_seconds)


@dataclasses.dataclass
class MeshConfig:
    """Everything the runtime needs to run one server process."""

    service: str = ""
    """Which service this process runs (`credits`, `tokens`, ...)."""
    host: str = "127.0.0.1"
    """Address to bind the gRPC port and the metrics port on."""
    port: int = -1
    """gRPC port; -1 means the service's default, 0 a free one."""
    metrics_port: int = -1
    """Prometheus `/metrics` port; -1 means the default, 0 a free one."""
    data_dir: str = ".shieldx"
    """Where the SQLite stores, keys and credentials live."""
    database_url: str = ""
    """PostgreSQL URL; empty means the embedded SQLite store under `data_dir`."""
    database_schema: str = ""
    """PostgreSQL schema for this service's tables (default: the service name)."""
    shutdown_grace_seconds: float = 10.0
    """How long in-flight calls may take to finish after SIGTERM."""
    drain_delay_seconds: float = 0.0
    """After SIGTERM, keep serving (reporting NOT_SERVING) this long so balancers notice."""
    log_level: str = "INFO"
    """Root log level."""
    log_format: str = "json"
    """`json` (structured, with trace ids) or `text`."""
    version: str = "v1"
    """The deployed version of this service (what traffic routing splits on)."""
    endpoints: dict[str, str] = dataclasses.field(default_factory=dict)
    """Where peers listen, by service name (`host:port`); defaults to the default ports."""
    tls: TlsConfig = dataclasses.field(default_factory=TlsConfig)
    """Transport security."""
    auth: AuthConfig = dataclasses.field(default_factory=AuthConfig)
    """Bearer-token authentication."""
    rate_limit: RateLimitConfig = dataclasses.field(default_factory=RateLimitConfig)
    """Per-caller rate limit."""
    keepalive: KeepaliveConfig = dataclasses.field(default_factory=KeepaliveConfig)
    """Connection keepalive, agreed with the clients (SHIELDX_KEEPALIVE__INTERVAL_SECONDS)."""
    secrets: SecretsConfig = dataclasses.field(default_factory=SecretsConfig)
    """The key-encryption key of shared secrets."""
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The raw section of the YAML file named after the service; see `service_settings`."""
    sections: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The raw extension sections of the YAML file (`agent:`); see `section_settings`."""

    def endpoint(self, service: str) -> str:
        """The `host:port` of a peer service."""
        if service in self.endpoints:
            return self.endpoints[service]
        return f"127.0.0.1:{DEFAULT_PORTS[service][0]}"

    @property
    def data_path(self) -> Path:
        """`data_dir` as a path."""
        return Path(self.data_dir)


def load_config(
    service: str,
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> MeshConfig:
    """The configuration of one server process: defaults, YAML file, then environment."""
    if service not in DEFAULT_PORTS:
        raise ConfigError(f"service: unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    environ = os.environ if environ is None else environ
    document = _read_yaml(path or environ.get("SHIELDX_CONFIG") or None)
    mesh_section = {k: v for k, v in document.items() if k not in SERVICES and k not in EXTENSIONS}
    config = build(MeshConfig, mesh_section, environ, "SHIELDX_")
    config.service = service
    config.settings = dict(document.get(service) or {})
    config.sections = {name: dict(document.get(name) or {}) for name in EXTENSIONS}
    grpc_port, metrics_port = DEFAULT_PORTS[service]
    if config.port == -1:
        config.port = grpc_port
    if config.metrics_port == -1:
        config.metrics_port = metrics_port
    return config


def service_settings(cls: type[T], config: MeshConfig, environ: Mapping[str, str] | None = None) -> T:
    """A service's own typed settings: its YAML section, then `SHIELDX_<SERVICE>__<FIELD>`."""
    environ = os.environ if environ is None else environ
    return build(cls, config.settings, environ, f"SHIELDX_{config.service.upper()}__")


def section_settings(cls: type[T], config: MeshConfig, section: str, environ: Mapping[str, str] | None = None) -> T:
    """Typed settings of an extension section: its YAML section, then `SHIELDX_<SECTION>__<FIELD>`."""
    environ = os.environ if environ is None else environ
    return build(cls, config.sections.get(section, {}), environ, f"SHIELDX_{section.upper()}__")


def build(cls: type[T], data: Mapping[str, Any], environ: Mapping[str, str], prefix: str) -> T:
    """Instantiate dataclass `cls` from `data`, letting `<prefix><FIELD>` variables override."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('_').lower()}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{prefix.lower()}{sorted(unknown)[0]}: unknown setting")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        hint = hints[field.name]
        key = f"{prefix}{field.name.upper()}"
        if dataclasses.is_dataclass(hint):
            values[field.name] = build(hint, data.get(field.name) or {}, environ, key + "__")  # type: ignore[arg-type]
        elif key in environ:
            values[field.name] = _convert(hint, environ[key], key)
        elif field.name in data:
            values[field.name] = _convert(hint, data[field.name], key)
    built = cls(**values)
    _check_bounds(built, prefix)
    return built


def _check_bounds(settings: Any, prefix: str) -> None:
    # Name keys as they appear in the YAML file: SHIELDX_DECEPTION__FORWARDING__ → deception.forwarding.
    section = ".".join(part.lower() for part in prefix.removeprefix("SHIELDX_").split("__") if part)
    for field in dataclasses.fields(settings):
        limits = field.metadata.get("bounds")
        if limits is not None and not limits.admits(getattr(settings, field.name)):
            key = f"{section}.{field.name}" if section else field.name
            raise ConfigError(f"{key}: must be {limits}, got {getattr(settings, field.name)!r}")


def _convert(hint: Any, raw: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw is None or raw == "":
            return None
        return _convert(options[0], raw, key)
    try:
        if hint is bool:
            return _boolean(raw)
        if hint in (int, float, str):
            if hint is int and isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return hint(raw)
        if hint is Path:
            return Path(raw)
        if origin is list:
            (item,) = typing.get_args(hint)
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return [_convert(item, x.strip() if isinstance(x, str) else x, key) for x in items if x != ""]
        if origin is dict:
            key_type, value_type = typing.get_args(hint)
            pairs = (p.split("=", 1) for p in raw.split(",") if p) if isinstance(raw, str) else dict(raw).items()
            return {_convert(key_type, k, key): _convert(value_type, v, key) for k, v in pairs}
        if hint is typing.Any:
            return raw
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot read {raw!r} as {getattr(hint, '__name__', hint)}") from exc
    raise ConfigError(f"{key}: unsupported setting type {hint!r}")


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def _read_yaml(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    document = yaml.safe_load(text) or {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return document
