"""The sharding server's settings: defaults, environment overrides, and refusals naming the setting."""

from __future__ import annotations

from datetime import timedelta

import pytest

from servers.mesh.config import ConfigError, build, load_config, service_settings
from servers.sharding.settings import ShardingSettings


def test_defaults_check_every_30_seconds_and_fail_over_after_3_failures() -> None:
    policy = ShardingSettings().health_policy()
    assert policy.check_interval == timedelta(seconds=30)
    assert policy.check_timeout == timedelta(seconds=5)
    assert policy.failure_threshold == 3 and policy.automatic_failover


def test_environment_overrides_and_the_timeout_never_exceeds_the_interval() -> None:
    config = load_config("sharding", environ={})
    environ = {"SHIELDX_SHARDING__HEALTH_CHECK_INTERVAL_SECONDS": "0.5", "SHIELDX_SHARDING__FAILURE_THRESHOLD": "2"}
    settings = service_settings(ShardingSettings, config, environ)
    policy = settings.health_policy()
    assert policy.check_interval == timedelta(seconds=0.5)
    assert policy.check_timeout == timedelta(seconds=0.5), "a 5 s timeout is capped at the 0.5 s interval"
    assert policy.failure_threshold == 2


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"health_check_interval_seconds": 0.0}, "health_check_interval_seconds"),
        ({"health_check_interval_seconds": float("nan")}, "health_check_interval_seconds"),
        ({"health_check_timeout_seconds": -1.0}, "health_check_timeout_seconds"),
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"promote_timeout_seconds": 0.0}, "promote_timeout_seconds"),
    ],
)
def test_nonsense_health_settings_are_refused_by_name(changes: dict[str, float], named: str) -> None:
    with pytest.raises(ConfigError, match=f"sharding.{named}"):
        build(ShardingSettings, changes, {}, "SHIELDX_SHARDING__")


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"rebalance_batch_size": 0}, "rebalance_batch_size"),
        ({"rebalance_max_attempts": 1000}, "rebalance_max_attempts"),
        ({"rebalance_fence_timeout_seconds": 0.0}, "rebalance_fence_timeout"),
    ],
)
def test_nonsense_rebalance_settings_are_refused_by_name(changes: dict[str, float], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        ShardingSettings(**changes).rebalance_config()  # type: ignore[arg-type]
