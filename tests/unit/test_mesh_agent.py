"""The deployment agent's settings and its translation of fault injections into runtime faults."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import pytest

from servers.mesh.agent import AgentSettings, agent_settings, deployment_agent, fault_of
from servers.mesh.config import ConfigError, load_config
from servers.mesh.server import Runtime
from shieldx.deployment.v1 import faults_pb2
from tests.conftest import test_config


def test_the_agent_is_off_unless_enabled(tmp_path: Path) -> None:
    config = test_config(tmp_path)
    assert agent_settings(config, {}) == AgentSettings()
    assert deployment_agent(Runtime(config), 5004, 9004, AgentSettings()) is None


def test_settings_come_from_the_config_file_section_then_the_environment(tmp_path: Path) -> None:
    config_file = tmp_path / "mesh.yaml"
    config_file.write_text("agent:\n  advertise_host: credits-1.internal\n  heartbeat_seconds: 10\n")
    config = load_config("credits", config_file, {})
    assert agent_settings(config, {}).advertise_host == "credits-1.internal"
    settings = agent_settings(config, {"SHIELDX_AGENT__ENABLED": "true", "SHIELDX_AGENT__HEARTBEAT_SECONDS": "2.5"})
    assert (settings.enabled, settings.heartbeat_seconds) == (True, 2.5)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_durations_must_be_positive(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"agent\.retry_max_seconds"):
        agent_settings(test_config(tmp_path), {"SHIELDX_AGENT__RETRY_MAX_SECONDS": value})


async def test_enabled_agent_advertises_its_address_and_metrics(tmp_path: Path) -> None:
    runtime = Runtime(test_config(tmp_path, "credits", version="v7"))
    settings = AgentSettings(enabled=True, advertise_host="10.1.2.3")
    agent = deployment_agent(runtime, 5004, 9004, settings)
    assert agent is not None
    assert (agent.service, agent.version, agent.address, agent.metrics_endpoint) == (
        "credits",
        "v7",
        "10.1.2.3:5004",
        "http://10.1.2.3:9004/metrics",
    )
    no_metrics = deployment_agent(runtime, 5004, None, settings)
    assert no_metrics is not None and no_metrics.metrics_endpoint == ""
    await runtime.close()


def test_a_fault_injection_becomes_a_runtime_fault_on_the_monotonic_clock() -> None:
    message = faults_pb2.FaultInjection(
        id="fault-1", method_pattern="shieldx.credits.v1.CreditsService/*", abort_code=14, percentage=30, version="v2"
    )
    message.delay.FromMilliseconds(250)
    message.expire_time.FromSeconds(1_000_060)
    fault = fault_of(message, wall=1_000_000.0, monotonic=500.0)
    assert fault.abort_code is grpc.StatusCode.UNAVAILABLE
    assert (fault.delay_seconds, fault.percentage, fault.version, fault.expires_at) == (0.25, 30.0, "v2", 560.0)
    delay_only = fault_of(faults_pb2.FaultInjection(id="f", percentage=5), wall=0.0, monotonic=0.0)
    assert (delay_only.abort_code, delay_only.method_pattern, delay_only.expires_at) == (None, "*", math.inf)
