"""Chaos Toolkit probes: the steady state of the mesh as ShieldX sees it."""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.chaostoolkit.connection import Configuration, call
from clients.deployment import ChaosClient, DeploymentClient
from shieldx.deployment.v1 import chaos_pb2, routing_pb2

__all__ = ["all_instances_serving", "experiment_state", "experiment_verdict", "service_serving"]


def service_serving(service: str, configuration: Configuration = None) -> bool:
    """True if `service` answers SERVING (the standard health check)."""

    async def check(channel: Any) -> bool:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    return call(service, configuration, check)


def all_instances_serving(service: str, configuration: Configuration = None) -> bool:
    """True if the service has registered instances and every one of them answers SERVING."""
    from clients.channel import ChannelOptions, open_channel

    async def check(channel: Any) -> bool:
        listed = await DeploymentClient(channel).list_instances(routing_pb2.ListInstancesRequest(service=service))
        if not listed.instances:
            return False
        for instance in listed.instances:
            async with open_channel(instance.address, ChannelOptions(retry=None, circuit_breaker=None)) as direct:
                try:
                    answer = await health_pb2_grpc.HealthStub(direct).Check(health_pb2.HealthCheckRequest(), timeout=5)
                except Exception:
                    return False
                if answer.status != health_pb2.HealthCheckResponse.SERVING:
                    return False
        return True

    return call("deployment", configuration, check)


def experiment_state(experiment_id: str, configuration: Configuration = None) -> str:
    """The state of a chaos experiment (`CHAOS_STATE_RUNNING`, ...)."""

    async def get(channel: Any) -> str:
        answer = await ChaosClient(channel).get_experiment(
            chaos_pb2.GetChaosExperimentRequest(experiment_id=experiment_id)
        )
        return chaos_pb2.ChaosState.Name(answer.experiment.state)

    return call("deployment", configuration, get)


def experiment_verdict(experiment_id: str, configuration: Configuration = None) -> str:
    """The verdict of a chaos experiment (`CHAOS_VERDICT_HYPOTHESIS_HELD`, ...)."""

    async def get(channel: Any) -> str:
        answer = await ChaosClient(channel).get_report(chaos_pb2.GetChaosReportRequest(experiment_id=experiment_id))
        return chaos_pb2.ChaosVerdict.Name(answer.report.verdict)

    return call("deployment", configuration, get)
