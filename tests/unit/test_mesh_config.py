"""Typed config: defaults, YAML, environment overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from servers.mesh.config import ConfigError, bounded, load_config, service_settings


@dataclasses.dataclass
class Retry:
    pause_seconds: float = bounded(0.5, above=0, at_most=60)
    """Pause."""


@dataclasses.dataclass
class ExampleSettings:
    snapshot_every: int = bounded(100, at_least=1)
    """Events between snapshots."""
    retry: Retry = dataclasses.field(default_factory=Retry)
    """Retries."""
    regions: list[str] = dataclasses.field(default_factory=list)
    """Regions."""


def test_defaults_follow_the_design_ports() -> None:
    config = load_config("credits", environ={})
    assert (config.port, config.metrics_port) == (5004, 9004)
    assert config.endpoint("tokens") == "127.0.0.1:8080"
    assert config.auth.enabled and config.database_url == ""


def test_yaml_then_environment_override(tmp_path: Path) -> None:
    path = tmp_path / "shieldx.yaml"
    path.write_text(
        "port: 6000\nauth:\n  audience: ledger\ncredits:\n  snapshot_every: 25\n  regions: [eu, us]\n"
        "endpoints:\n  tokens: tokens.svc:8080\n"
    )
    environ = {"SHIELDX_PORT": "6001", "SHIELDX_AUTH__ENABLED": "false", "SHIELDX_CREDITS__SNAPSHOT_EVERY": "7"}
    config = load_config("credits", path, environ)
    assert config.port == 6001
    assert config.auth.enabled is False
    assert config.auth.audience == "ledger"
    assert config.endpoint("tokens") == "tokens.svc:8080"
    settings = service_settings(ExampleSettings, config, environ)
    assert settings == ExampleSettings(snapshot_every=7, regions=["eu", "us"])


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"SHIELDX_CREDITS__SNAPSHOT_EVERY": "0"}, "credits.snapshot_every: must be at least 1"),
        ({"SHIELDX_CREDITS__RETRY__PAUSE_SECONDS": "0"}, "credits.retry.pause_seconds: must be greater than 0"),
        ({"SHIELDX_CREDITS__RETRY__PAUSE_SECONDS": "nan"}, "credits.retry.pause_seconds"),
        ({"SHIELDX_CREDITS__RETRY__PAUSE_SECONDS": "61"}, "at most 60"),
    ],
)
def test_declared_bounds_are_enforced_with_the_yaml_key(environ: dict[str, str], named: str) -> None:
    config = load_config("credits", environ={})
    with pytest.raises(ConfigError, match=named):
        service_settings(ExampleSettings, config, environ)


def test_database_url_comes_from_the_standard_variable() -> None:
    config = load_config("credits", environ={"SHIELDX_DATABASE_URL": "postgresql://db/x"})
    assert config.database_url == "postgresql://db/x"


@pytest.mark.parametrize(
    ("yaml_text", "environ", "named"),
    [
        ("port: many\n", {}, "SHIELDX_PORT"),
        ("", {"SHIELDX_AUTH__ENABLED": "perhaps"}, "SHIELDX_AUTH__ENABLED"),
        ("colour: blue\n", {}, "colour"),
        ("- just\n- a list\n", {}, "top level"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, yaml_text: str, environ: dict[str, str], named: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=named):
        load_config("credits", path, environ)


def test_unknown_service_is_refused() -> None:
    with pytest.raises(ConfigError, match="service"):
        load_config("payroll", environ={})
