"""Chaos Toolkit actions: run, start or abort a ShieldX chaos experiment, or inject a fault directly."""

from __future__ import annotations

import uuid
from typing import Any

from google.protobuf import duration_pb2, json_format

from clients import chaos_runs
from clients.chaostoolkit.connection import Configuration, call
from clients.deployment import ChaosClient, DeploymentClient
from shieldx.deployment.v1 import chaos_pb2, faults_pb2

__all__ = ["abort_experiment", "inject_fault", "remove_fault", "run_experiment", "start_experiment"]


def run_experiment(spec: dict[str, Any], configuration: Configuration = None) -> dict[str, Any]:
    """Run a chaos experiment (its spec in proto3 JSON) to its end; the final experiment as JSON.

    Fails (raises) unless the experiment completed with its hypothesis holding.
    """
    experiment = call(
        "deployment",
        configuration,
        lambda channel: chaos_runs.run(ChaosClient(channel), chaos_runs.spec_from_mapping(spec)),
    )
    answer = json_format.MessageToDict(experiment)
    if not chaos_runs.held(experiment):
        raise RuntimeError(f"chaos experiment {experiment.id} did not hold: {answer.get('abortReason') or answer}")
    return answer


def start_experiment(spec: dict[str, Any], configuration: Configuration = None) -> str:
    """Create and start a chaos experiment; its id (it runs on in the deployment server)."""
    experiment = call(
        "deployment", configuration, lambda c: chaos_runs.start(ChaosClient(c), chaos_runs.spec_from_mapping(spec))
    )
    return experiment.id


def abort_experiment(experiment_id: str, reason: str = "", configuration: Configuration = None) -> str:
    """Roll a running experiment back; its state afterwards."""
    request = chaos_pb2.AbortChaosExperimentRequest(experiment_id=experiment_id, reason=reason)

    async def abort(channel: Any) -> chaos_pb2.AbortChaosExperimentResponse:
        return await ChaosClient(channel).abort_experiment(request)

    answer = call("deployment", configuration, abort)
    return chaos_pb2.ChaosState.Name(answer.experiment.state)


def inject_fault(
    service: str,
    method_pattern: str = "*",
    percentage: float = 100.0,
    delay_ms: int = 0,
    abort_code: int = 0,
    duration_s: float = 60.0,
    configuration: Configuration = None,
) -> str:
    """Inject a plain delay/abort fault into a service's servers (no experiment around it); its id."""
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(delay_ms)
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(duration_s * 1e9))
    request = faults_pb2.CreateFaultInjectionRequest(
        request_id=uuid.uuid4().hex,
        service=service,
        method_pattern=method_pattern,
        percentage=percentage,
        delay=delay if delay_ms else None,
        abort_code=abort_code,
        duration=duration,
    )

    async def create(channel: Any) -> faults_pb2.CreateFaultInjectionResponse:
        return await DeploymentClient(channel).create_fault_injection(request)

    return call("deployment", configuration, create).fault_injection.id


def remove_fault(fault_id: str, configuration: Configuration = None) -> None:
    """Delete a fault injection now."""
    request = faults_pb2.DeleteFaultInjectionRequest(request_id=uuid.uuid4().hex, fault_injection_id=fault_id)

    async def delete(channel: Any) -> None:
        await DeploymentClient(channel).delete_fault_injection(request)

    call("deployment", configuration, delete)
