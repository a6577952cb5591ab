"""The deployment server on both backends: registry and routes, deployments driven by the
controller, fault injections, flags over the RPC, A/B tests, idempotency, audit and fuzzing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2

from clients.deployment import DeploymentClient, ExperimentClient, FlagClient
from clients.errors import ShieldxError
from servers.deployment.flagset import FlagSet, ValueType
from servers.deployment.service import build
from servers.mesh.config import MeshConfig
from servers.mesh.faults import Fault
from shieldx.deployment.v1 import deployment_pb2, experiments_pb2, faults_pb2, flags_pb2, routing_pb2
from tests.conftest import Running, StartServer, StartService, stop_service, test_config
from tests.support.echo import echo_mount, echo_pb2, echo_pb2_grpc
from tests.support.fuzz import fuzz_service
from tests.support.tokens import TestAuthority

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ABORTED = grpc.StatusCode.ABORTED


def deployment_config(tmp_path: Path, store_config: dict[str, str], **changes: Any) -> MeshConfig:
    """A deployment server config on the given store, with a fast controller."""
    config = test_config(tmp_path, "deployment", **store_config, **changes)
    config.settings = {"controller_tick_seconds": 0.1, "experiment_draws": 20_000}
    return config


@pytest.fixture
def config(tmp_path: Path, store_config: dict[str, str]) -> MeshConfig:
    return deployment_config(tmp_path, store_config)


@pytest.fixture
async def running(store_config: dict[str, str], start_service: StartService, config: MeshConfig) -> Running:
    # store_config first: it is torn down last, so the PostgreSQL schema is dropped only after
    # the server (and the transactions of its controller) stopped.
    return await start_service(build, config)


@pytest.fixture
def deployments(running: Running) -> DeploymentClient:
    return DeploymentClient(running.channel)


@pytest.fixture
def flags(running: Running) -> FlagClient:
    return FlagClient(running.channel)


@pytest.fixture
def experiments(running: Running) -> ExperimentClient:
    return ExperimentClient(running.channel)


def rid() -> str:
    return uuid.uuid4().hex


def seconds(value: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(value * 1e9))
    return message


def context(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


async def refused(call: Awaitable[Any]) -> ShieldxError:
    with pytest.raises(ShieldxError) as caught:
        await call
    return caught.value


async def register(
    client: DeploymentClient, version: str, port: int, *, service: str = "echo", metrics: str = ""
) -> routing_pb2.Instance:
    answer = await client.register_instance(
        routing_pb2.RegisterInstanceRequest(
            request_id=rid(), service=service, version=version, address=f"127.0.0.1:{port}", metrics_endpoint=metrics
        )
    )
    return answer.instance


async def weights(client: DeploymentClient, service: str = "echo") -> dict[str, int]:
    routes = await client.get_routes(routing_pb2.GetRoutesRequest(services=[service]))
    assert len(routes.routes) == 1
    return {v.version: v.weight_bp for v in routes.routes[0].versions}


async def bounded(calls: list[Awaitable[Any]], limit: int = 32) -> list[Any]:
    """Await `calls` with at most `limit` in flight."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[Any]) -> Any:
        async with gate:
            return await call

    return await asyncio.gather(*(one(call) for call in calls))


async def first(stream: AsyncIterator[Any], timeout: float = 5.0) -> Any:
    async with asyncio.timeout(timeout):
        return await anext(stream)


# -- registry and routes -----------------------------------------------------------------------


async def test_first_version_takes_all_traffic_and_a_new_one_joins_without_any(deployments: DeploymentClient) -> None:
    v1 = await register(deployments, "v1", 5001, metrics="http://127.0.0.1:9001/metrics")
    assert (v1.service, v1.version, v1.address, v1.drained) == ("echo", "v1", "127.0.0.1:5001", False)
    assert await weights(deployments) == {"v1": 10_000}
    await register(deployments, "v2", 5002)
    assert await weights(deployments) == {"v1": 10_000, "v2": 0}
    routes = await deployments.get_routes(routing_pb2.GetRoutesRequest())
    route = routes.routes[0]
    assert [(v.version, list(v.addresses)) for v in route.versions] == [
        ("v1", ["127.0.0.1:5001"]),
        ("v2", ["127.0.0.1:5002"]),
    ]
    revision = route.revision
    await register(deployments, "v2", 5002)  # a heartbeat changes nothing anyone follows
    again = await deployments.get_routes(routing_pb2.GetRoutesRequest())
    assert again.routes[0].revision == revision


async def test_instances_list_in_pages_and_deregister(deployments: DeploymentClient) -> None:
    for port in range(6001, 6006):
        await register(deployments, "v1", port)
    await register(deployments, "v1", 7001, service="other")
    seen: list[str] = []
    token = ""
    while True:
        page = await deployments.list_instances(
            routing_pb2.ListInstancesRequest(service="echo", page_size=2, page_token=token)
        )
        seen += [i.address for i in page.instances]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"127.0.0.1:{port}" for port in range(6001, 6006)]
    await deployments.deregister_instance(
        routing_pb2.DeregisterInstanceRequest(request_id=rid(), service="echo", address="127.0.0.1:6001")
    )
    listed = await deployments.list_instances(routing_pb2.ListInstancesRequest(service="echo"))
    assert len(listed.instances) == 4
    error = await refused(
        deployments.deregister_instance(routing_pb2.DeregisterInstanceRequest(service="echo", address="127.0.0.1:6001"))
    )
    assert (error.code, error.reason) == (NOT_FOUND, "INSTANCE_NOT_FOUND")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"service": "Echo!"}, "service"),
        ({"version": ""}, "version"),
        ({"address": "no-port"}, "address"),
        ({"address": "127.0.0.1:70000"}, "address"),
        ({"metrics_endpoint": "ftp://x/metrics"}, "metrics_endpoint"),
    ],
)
async def test_register_refuses_malformed_instances(
    deployments: DeploymentClient, change: dict[str, str], field: str
) -> None:
    request = {"service": "echo", "version": "v1", "address": "127.0.0.1:1", **change}
    error = await refused(deployments.register_instance(routing_pb2.RegisterInstanceRequest(**request)))
    assert error.code == INVALID
    assert field in error.field_violations


async def test_set_route_weights_and_its_refusals(deployments: DeploymentClient) -> None:
    await register(deployments, "v1", 5001)
    await register(deployments, "v2", 5002)
    answer = await deployments.set_route_weights(
        routing_pb2.SetRouteWeightsRequest(
            request_id=rid(),
            service="echo",
            weights=[
                routing_pb2.VersionWeight(version="v1", weight_bp=7000),
                routing_pb2.VersionWeight(version="v2", weight_bp=3000),
            ],
            sticky_metadata_key="x-user-id",
        )
    )
    assert {v.version: v.weight_bp for v in answer.route.versions} == {"v1": 7000, "v2": 3000}
    assert answer.route.sticky_metadata_key == "x-user-id"
    bad_sum = await refused(
        deployments.set_route_weights(
            routing_pb2.SetRouteWeightsRequest(
                service="echo", weights=[routing_pb2.VersionWeight(version="v1", weight_bp=9000)]
            )
        )
    )
    assert (bad_sum.code, list(bad_sum.field_violations)) == (INVALID, ["weights"])
    bad_key = await refused(
        deployments.set_route_weights(
            routing_pb2.SetRouteWeightsRequest(
                service="echo",
                weights=[routing_pb2.VersionWeight(version="v1", weight_bp=10_000)],
                sticky_metadata_key="grpc-timeout",
            )
        )
    )
    assert (bad_key.code, list(bad_key.field_violations)) == (INVALID, ["sticky_metadata_key"])
    unknown = await refused(
        deployments.set_route_weights(
            routing_pb2.SetRouteWeightsRequest(
                service="nobody", weights=[routing_pb2.VersionWeight(version="v1", weight_bp=10_000)]
            )
        )
    )
    assert (unknown.code, unknown.reason) == (NOT_FOUND, "ROUTE_NOT_FOUND")


async def test_watch_routes_sends_all_then_changes_then_removals(deployments: DeploymentClient) -> None:
    await register(deployments, "v1", 5001)
    stream = deployments.watch_routes(routing_pb2.WatchRoutesRequest(services=["echo"]))
    initial = await first(stream)
    assert [r.service for r in initial.routes] == ["echo"]
    await register(deployments, "v2", 5002)
    joined = await first(stream)
    assert joined.routes[0].revision > initial.routes[0].revision
    assert [v.version for v in joined.routes[0].versions] == ["v1", "v2"]
    for port in (5001, 5002):
        await deployments.deregister_instance(
            routing_pb2.DeregisterInstanceRequest(service="echo", address=f"127.0.0.1:{port}")
        )
    message = await first(stream)
    while not message.removed_services:  # the first deregistration only changed the route
        message = await first(stream)
    assert list(message.removed_services) == ["echo"]


# -- deployments -------------------------------------------------------------------------------


def canary(**changes: Any) -> deployment_pb2.CreateDeploymentRequest:
    request: dict[str, Any] = {"request_id": rid(), "service": "echo", "from_version": "v1", "to_version": "v2"}
    request.update(changes)
    return deployment_pb2.CreateDeploymentRequest(**request)


async def test_create_deployment_refusals(deployments: DeploymentClient) -> None:
    await register(deployments, "v1", 5001)
    missing = await refused(deployments.create_deployment(canary()))
    assert (missing.code, missing.reason, missing.metadata["versions"]) == (
        PRECONDITION,
        "VERSION_NOT_REGISTERED",
        "v2",
    )
    await register(deployments, "v2", 5002)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"to_version": "v1"}, "to_version"),
        ({"strategy": 99}, "strategy"),
        (
            {
                "steps": [
                    deployment_pb2.DeploymentStep(weight_percent=50),
                    deployment_pb2.DeploymentStep(weight_percent=20),
                ]
            },
            "steps[1].weight_percent",
        ),
        ({"steps": [deployment_pb2.DeploymentStep(weight_percent=50)]}, "steps[0].weight_percent"),
        ({"analysis": deployment_pb2.AnalysisThresholds(max_error_rate=2.0)}, "analysis.max_error_rate"),
        ({"analysis": deployment_pb2.AnalysisThresholds(interval=seconds(0.5))}, "analysis.interval"),
        ({"pause_duration": seconds(-1)}, "pause_duration"),
    ]
    for change, field in cases:
        error = await refused(deployments.create_deployment(canary(**change)))
        assert (error.code, list(error.field_violations)) == (INVALID, [field]), change
    created = (await deployments.create_deployment(canary())).deployment
    second = await refused(deployments.create_deployment(canary()))
    assert (second.code, second.reason, second.metadata["deployment_id"]) == (
        PRECONDITION,
        "DEPLOYMENT_ACTIVE",
        created.id,
    )


async def test_operator_commands_move_a_canary_and_abort_rolls_it_back(deployments: DeploymentClient) -> None:
    await register(deployments, "v1", 5001)
    await register(deployments, "v2", 5002)
    quiet = deployment_pb2.AnalysisThresholds(interval=seconds(3600))
    created = (await deployments.create_deployment(canary(analysis=quiet))).deployment
    assert (created.state, created.current_step, created.current_weight_percent) == (
        deployment_pb2.DEPLOYMENT_STATE_PROGRESSING,
        0,
        10,
    )
    assert [s.weight_percent for s in created.steps] == [10, 25, 50, 100]
    assert await weights(deployments) == {"v1": 9000, "v2": 1000}
    manual = await refused(
        deployments.set_route_weights(
            routing_pb2.SetRouteWeightsRequest(
                service="echo", weights=[routing_pb2.VersionWeight(version="v1", weight_bp=10_000)]
            )
        )
    )
    assert (manual.code, manual.reason) == (PRECONDITION, "DEPLOYMENT_ACTIVE")
    not_paused = await refused(
        deployments.resume_deployment(deployment_pb2.ResumeDeploymentRequest(deployment_id=created.id))
    )
    assert (not_paused.code, not_paused.reason) == (PRECONDITION, "DEPLOYMENT_NOT_PAUSED")

    paused = await deployments.pause_deployment(
        deployment_pb2.PauseDeploymentRequest(request_id=rid(), deployment_id=created.id, reason="lunch")
    )
    assert (paused.deployment.state, paused.deployment.pause_reason) == (
        deployment_pb2.DEPLOYMENT_STATE_PAUSED,
        deployment_pb2.PAUSE_REASON_MANUAL,
    )
    await deployments.resume_deployment(
        deployment_pb2.ResumeDeploymentRequest(request_id=rid(), deployment_id=created.id)
    )
    promoted = await deployments.promote_deployment(
        deployment_pb2.PromoteDeploymentRequest(request_id=rid(), deployment_id=created.id)
    )
    assert promoted.deployment.current_weight_percent == 25
    assert await weights(deployments) == {"v1": 7500, "v2": 2500}

    abort = deployment_pb2.AbortDeploymentRequest(request_id=rid(), deployment_id=created.id, reason="bad vibes")
    aborted = (await deployments.abort_deployment(abort)).deployment
    assert aborted.state == deployment_pb2.DEPLOYMENT_STATE_ABORTED
    assert await deployments.abort_deployment(abort) == deployment_pb2.AbortDeploymentResponse(deployment=aborted)
    assert await weights(deployments) == {"v1": 10_000, "v2": 0}
    canary_instances = await deployments.list_instances(routing_pb2.ListInstancesRequest(service="echo", version="v2"))
    assert [i.drained for i in canary_instances.instances] == [True]
    assert [(e.event, e.actor) for e in aborted.history] == [
        ("CREATED", "anonymous"),
        ("PAUSE", "anonymous"),
        ("RESUME", "anonymous"),
        ("PROMOTE", "anonymous"),
        ("ABORT", "anonymous"),
    ]
    assert aborted.history[-1].detail == "bad vibes"
    ended = await refused(
        deployments.resume_deployment(deployment_pb2.ResumeDeploymentRequest(deployment_id=created.id))
    )
    assert (ended.code, ended.reason) == (PRECONDITION, "DEPLOYMENT_ENDED")
    # Deploying the drained version again puts its instances back.
    again = (await deployments.create_deployment(canary(analysis=quiet))).deployment
    assert again.id != created.id
    assert await weights(deployments) == {"v1": 9000, "v2": 1000}


async def test_full_promotion_succeeds_and_drains_the_old_version(deployments: DeploymentClient) -> None:
    await register(deployments, "v1", 5001)
    await register(deployments, "v2", 5002)
    created = (await deployments.create_deployment(canary())).deployment
    done = await deployments.promote_deployment(
        deployment_pb2.PromoteDeploymentRequest(request_id=rid(), deployment_id=created.id, full=True)
    )
    assert (done.deployment.state, done.deployment.current_weight_percent) == (
        deployment_pb2.DEPLOYMENT_STATE_SUCCEEDED,
        100,
    )
    assert await weights(deployments) == {"v1": 0, "v2": 10_000}
    old = await deployments.list_instances(routing_pb2.ListInstancesRequest(service="echo", version="v1"))
    assert [i.drained for i in old.instances] == [True]
    route = (await deployments.get_routes(routing_pb2.GetRoutesRequest())).routes[0]
    assert {v.version: list(v.addresses) for v in route.versions} == {"v1": [], "v2": ["127.0.0.1:5002"]}


async def test_list_and_get_deployments(deployments: DeploymentClient) -> None:
    for service in ("alpha", "beta", "gamma"):
        await register(deployments, "v1", 5001, service=service)
        await register(deployments, "v2", 5002, service=service)
        created = await deployments.create_deployment(canary(service=service))
        if service != "gamma":
            await deployments.abort_deployment(
                deployment_pb2.AbortDeploymentRequest(request_id=rid(), deployment_id=created.deployment.id)
            )
    listed = await deployments.list_deployments(deployment_pb2.ListDeploymentsRequest(page_size=2))
    assert [d.service for d in listed.deployments] == ["gamma", "beta"]
    assert all(not d.history for d in listed.deployments)
    rest = await deployments.list_deployments(
        deployment_pb2.ListDeploymentsRequest(page_size=2, page_token=listed.next_page_token)
    )
    assert [d.service for d in rest.deployments] == ["alpha"] and not rest.next_page_token
    aborted = await deployments.list_deployments(
        deployment_pb2.ListDeploymentsRequest(state=deployment_pb2.DEPLOYMENT_STATE_ABORTED)
    )
    assert sorted(d.service for d in aborted.deployments) == ["alpha", "beta"]
    mismatch = await refused(
        deployments.list_deployments(
            deployment_pb2.ListDeploymentsRequest(service="alpha", page_token=listed.next_page_token)
        )
    )
    assert (mismatch.code, list(mismatch.field_violations)) == (INVALID, ["page_token"])
    got = await deployments.get_deployment(deployment_pb2.GetDeploymentRequest(deployment_id=listed.deployments[0].id))
    assert got.deployment.history[0].event == "CREATED"
    missing = await refused(deployments.get_deployment(deployment_pb2.GetDeploymentRequest(deployment_id="dep-x")))
    assert (missing.code, missing.reason) == (NOT_FOUND, "DEPLOYMENT_NOT_FOUND")


class Instances:
    """In-process Echo servers of versions v1 and v2 with their own /metrics, registered as `echo`."""

    def __init__(self, stable: Running, canary: Running) -> None:
        self.stable, self.canary = stable, canary


@pytest.fixture
async def echo_versions(start_server: StartServer, tmp_path: Path, deployments: DeploymentClient) -> Instances:
    started = []
    for version in ("v1", "v2"):
        config = test_config(tmp_path / version, "compliance", version=version)
        running = await start_server(lambda runtime: [echo_mount(runtime)], config, metrics=True)
        await register(
            deployments,
            version,
            running.server.port,
            metrics=f"http://127.0.0.1:{running.server.metrics_port}/metrics",
        )
        started.append(running)
    return Instances(*started)


async def _echo_forever(running: Running) -> None:
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    while True:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.Echo(echo_pb2.EchoRequest(text="hi"), timeout=5)


async def test_controller_pauses_a_step_its_analysis_cannot_judge(
    deployments: DeploymentClient, echo_versions: Instances
) -> None:
    thresholds = deployment_pb2.AnalysisThresholds(interval=seconds(1), min_requests=20)
    created = (await deployments.create_deployment(canary(analysis=thresholds, pause_duration=seconds(1)))).deployment
    stream = deployments.watch_deployment(deployment_pb2.WatchDeploymentRequest(deployment_id=created.id))
    assert (await first(stream)).deployment.id == created.id
    message = await first(stream, 10)
    while message.deployment.state != deployment_pb2.DEPLOYMENT_STATE_PAUSED:
        message = await first(stream, 10)
    paused = message.deployment
    assert paused.pause_reason == deployment_pb2.PAUSE_REASON_ANALYSIS_INCONCLUSIVE
    assert paused.last_analysis.verdict == deployment_pb2.VERDICT_INCONCLUSIVE
    assert paused.last_analysis.healthy_share == 1.0
    assert paused.last_analysis.HasField("analysis_time")
    assert any(reason.startswith("INSUFFICIENT_REQUESTS") for reason in paused.last_analysis.reasons)
    assert message.change.event in ("TIMER", "ANALYSIS")


async def test_controller_rolls_back_a_canary_failing_its_calls(
    running: Running, deployments: DeploymentClient, echo_versions: Instances
) -> None:
    echo_versions.canary.runtime.faults.replace([Fault("chaos", "*", 100.0, abort_code=grpc.StatusCode.UNAVAILABLE)])
    thresholds = deployment_pb2.AnalysisThresholds(interval=seconds(1), min_requests=5, failure_limit=2)
    created = (await deployments.create_deployment(canary(analysis=thresholds))).deployment
    caller = asyncio.create_task(_echo_forever(echo_versions.canary))
    try:
        stream = deployments.watch_deployment(deployment_pb2.WatchDeploymentRequest(deployment_id=created.id))
        final = (await first(stream)).deployment
        async with asyncio.timeout(15):
            async for message in stream:
                final = message.deployment
    finally:
        caller.cancel()
    assert final.state == deployment_pb2.DEPLOYMENT_STATE_ROLLED_BACK
    verdicts = [(e.event, e.verdict) for e in final.history if e.event == "ANALYSIS"]
    assert verdicts == [("ANALYSIS", deployment_pb2.VERDICT_FAIL)] * 2
    assert "ERROR_RATE_TOO_HIGH" in final.history[-1].detail
    assert final.last_analysis.error_rate == 1.0
    assert await weights(deployments) == {"v1": 10_000, "v2": 0}
    registry = running.runtime.registry
    labels = {"service": "echo"}
    assert registry.get_sample_value("shieldx_deployment_automatic_rollbacks_total", labels) == 1
    assert registry.get_sample_value("shieldx_deployment_analyses_total", {**labels, "verdict": "FAIL"}) == 2


async def test_blue_green_warms_the_new_colour_then_keeps_the_old_one_until_it_drains(
    deployments: DeploymentClient, echo_versions: Instances
) -> None:
    request = canary(
        strategy=deployment_pb2.STRATEGY_BLUE_GREEN,
        keep_previous_for=seconds(1),
        analysis=deployment_pb2.AnalysisThresholds(interval=seconds(3600)),
    )
    created = (await deployments.create_deployment(request)).deployment
    assert (created.state, created.replicas) == (deployment_pb2.DEPLOYMENT_STATE_WARMING, 1)
    stream = deployments.watch_deployment(deployment_pb2.WatchDeploymentRequest(deployment_id=created.id))
    await first(stream)
    ready = await first(stream, 10)  # the controller found the green instance answering its metrics
    assert (ready.change.event, ready.deployment.state) == (
        "INSTANCES_READY",
        deployment_pb2.DEPLOYMENT_STATE_PROGRESSING,
    )
    switched = await deployments.promote_deployment(
        deployment_pb2.PromoteDeploymentRequest(request_id=rid(), deployment_id=created.id, full=True)
    )
    assert switched.deployment.state == deployment_pb2.DEPLOYMENT_STATE_STABILIZING
    assert await weights(deployments) == {"v1": 0, "v2": 10_000}
    blue = await deployments.list_instances(routing_pb2.ListInstancesRequest(service="echo", version="v1"))
    assert [i.drained for i in blue.instances] == [False]  # kept warm for a fast rollback
    message = await first(stream, 10)
    while message.deployment.state != deployment_pb2.DEPLOYMENT_STATE_SUCCEEDED:
        message = await first(stream, 10)
    assert message.change.event == "TIMER"
    blue = await deployments.list_instances(routing_pb2.ListInstancesRequest(service="echo", version="v1"))
    assert [i.drained for i in blue.instances] == [True]


# -- fault injections --------------------------------------------------------------------------


def fault(**changes: Any) -> faults_pb2.CreateFaultInjectionRequest:
    request: dict[str, Any] = {
        "request_id": rid(),
        "service": "echo",
        "abort_code": grpc.StatusCode.UNAVAILABLE.value[0],
        "percentage": 30.0,
        "duration": seconds(60),
    }
    request.update(changes)
    return faults_pb2.CreateFaultInjectionRequest(**request)


async def test_fault_injections_are_created_listed_watched_deleted_and_expire(deployments: DeploymentClient) -> None:
    stream = deployments.watch_fault_injections(faults_pb2.WatchFaultInjectionsRequest(services=["echo"]))
    assert list((await first(stream)).fault_injections) == []
    created = (await deployments.create_fault_injection(fault(version="v2"))).fault_injection
    assert (created.method_pattern, created.abort_code, created.version) == ("*", 14, "v2")
    assert [f.id for f in (await first(stream)).fault_injections] == [created.id]
    short = await deployments.create_fault_injection(fault(delay=seconds(0.2), abort_code=0, duration=seconds(0.5)))
    assert [f.id for f in (await first(stream)).fault_injections] == [created.id, short.fault_injection.id]
    assert [f.id for f in (await first(stream, 3)).fault_injections] == [created.id]  # the short one expired
    await deployments.create_fault_injection(fault(service="other"))
    listed = await deployments.list_fault_injections(faults_pb2.ListFaultInjectionsRequest(service="echo"))
    assert [f.id for f in listed.fault_injections] == [created.id]
    await deployments.delete_fault_injection(
        faults_pb2.DeleteFaultInjectionRequest(request_id=rid(), fault_injection_id=created.id)
    )
    assert list((await first(stream)).fault_injections) == []
    gone = await refused(
        deployments.delete_fault_injection(faults_pb2.DeleteFaultInjectionRequest(fault_injection_id=created.id))
    )
    assert (gone.code, gone.reason) == (NOT_FOUND, "FAULT_INJECTION_NOT_FOUND")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"percentage": 0.0}, "percentage"),
        ({"percentage": float("nan")}, "percentage"),
        ({"abort_code": 17}, "abort_code"),
        ({"abort_code": 0}, "abort_code"),
        ({"duration": seconds(0)}, "duration"),
        ({"delay": seconds(61)}, "delay"),
        ({"method_pattern": "a b"}, "method_pattern"),
        ({"service": ""}, "service"),
    ],
)
async def test_fault_injection_refusals(deployments: DeploymentClient, change: dict[str, Any], field: str) -> None:
    error = await refused(deployments.create_fault_injection(fault(**change)))
    assert (error.code, list(error.field_violations)) == (INVALID, [field])


# -- flags -------------------------------------------------------------------------------------

SPLIT_FLAG = {
    "variants": {"on": True, "off": False},
    "defaultVariant": "off",
    "targeting": {"fractional": [["on", 30], ["off", 70]]},
}


async def put_flag(flags: FlagClient, key: str, document: dict[str, Any], **extra: Any) -> flags_pb2.Flag:
    answer = await flags.put_flag(
        flags_pb2.PutFlagRequest(request_id=rid(), flag_key=key, definition_json=json.dumps(document), **extra)
    )
    return answer.flag


async def test_flags_resolve_over_the_rpc_with_flagd_reasons(flags: FlagClient) -> None:
    await put_flag(flags, "static", {"variants": {"on": True, "off": False}, "defaultVariant": "on"})
    await put_flag(flags, "off", {"state": "DISABLED", "variants": {"a": "x", "b": "y"}, "defaultVariant": "b"})
    await put_flag(
        flags,
        "colour",
        {
            "variants": {"red": "#f00", "blue": "#00f"},
            "defaultVariant": "red",
            "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "blue", None]},
        },
    )
    await put_flag(flags, "limit", {"variants": {"low": 10, "high": 1000}, "defaultVariant": "high"})
    await put_flag(flags, "ratio", {"variants": {"a": 0.25, "b": 0.5}, "defaultVariant": "a"})
    await put_flag(flags, "config", {"variants": {"v": {"retries": 3, "hosts": ["a"]}}, "defaultVariant": "v"})
    await put_flag(flags, "split", SPLIT_FLAG)

    static = await flags.resolve_boolean(flags_pb2.ResolveBooleanRequest(flag_key="static"))
    assert (static.value, static.variant, static.reason) == (True, "on", flags_pb2.RESOLUTION_REASON_STATIC)
    assert static.metadata["bucketing"] == "murmur3-v3"
    disabled = await flags.resolve_string(flags_pb2.ResolveStringRequest(flag_key="off"))
    assert (disabled.value, disabled.reason) == ("y", flags_pb2.RESOLUTION_REASON_DISABLED)
    match = await flags.resolve_string(
        flags_pb2.ResolveStringRequest(flag_key="colour", context=context(email="ann@example.com"))
    )
    assert (match.value, match.reason) == ("#00f", flags_pb2.RESOLUTION_REASON_TARGETING_MATCH)
    default = await flags.resolve_string(
        flags_pb2.ResolveStringRequest(flag_key="colour", context=context(email="bob@elsewhere.org"))
    )
    assert (default.value, default.reason) == ("#f00", flags_pb2.RESOLUTION_REASON_DEFAULT)
    integer = await flags.resolve_int(flags_pb2.ResolveIntRequest(flag_key="limit"))
    assert integer.value == 1000
    number = await flags.resolve_float(flags_pb2.ResolveFloatRequest(flag_key="ratio"))
    assert number.value == 0.25
    whole = await flags.resolve_float(flags_pb2.ResolveFloatRequest(flag_key="limit"))
    assert whole.value == 1000.0
    obj = await flags.resolve_object(flags_pb2.ResolveObjectRequest(flag_key="config"))
    assert json_format.MessageToDict(obj.value) == {"retries": 3, "hosts": ["a"]}
    split = await flags.resolve_boolean(
        flags_pb2.ResolveBooleanRequest(flag_key="split", context=context(targetingKey="user-1"))
    )
    assert split.reason == flags_pb2.RESOLUTION_REASON_SPLIT
    missing = await flags.resolve_boolean(flags_pb2.ResolveBooleanRequest(flag_key="nope"))
    assert (missing.reason, missing.error_code, missing.value) == (
        flags_pb2.RESOLUTION_REASON_ERROR,
        flags_pb2.RESOLUTION_ERROR_FLAG_NOT_FOUND,
        False,
    )
    mismatch = await flags.resolve_int(flags_pb2.ResolveIntRequest(flag_key="ratio"))
    assert (mismatch.reason, mismatch.error_code) == (
        flags_pb2.RESOLUTION_REASON_ERROR,
        flags_pb2.RESOLUTION_ERROR_TYPE_MISMATCH,
    )
    everything = await flags.resolve_all(flags_pb2.ResolveAllRequest(context=context(targetingKey="user-1")))
    assert sorted(everything.flags) == ["colour", "config", "limit", "ratio", "split", "static"]
    assert everything.flags["static"].bool_value is True
    assert everything.flags["colour"].string_value == "#f00"
    assert everything.flags["limit"].double_value == 1000.0
    assert dict(everything.flags["config"].object_value)["retries"] == 3


async def test_a_30_70_split_lands_within_a_point_and_keys_keep_their_variant(flags: FlagClient) -> None:
    stored = await put_flag(flags, "split", SPLIT_FLAG)
    in_process = FlagSet().put_flag(FlagSet().parse("split", stored.definition_json))
    keys = [f"user-{i}" for i in range(100_000)]
    chosen = [in_process.resolve("split", ValueType.BOOLEAN, {"targetingKey": k}).value for k in keys]
    assert abs(sum(chosen) / len(keys) - 0.30) <= 0.01
    sample = keys[:1500]
    over_rpc = await bounded(
        [
            flags.resolve_boolean(flags_pb2.ResolveBooleanRequest(flag_key="split", context=context(targetingKey=k)))
            for k in sample
        ]
    )
    assert [answer.value for answer in over_rpc] == chosen[: len(sample)]
    assert abs(sum(answer.value for answer in over_rpc) / len(sample) - 0.30) <= 0.04
    again = await bounded(
        [
            flags.resolve_boolean(flags_pb2.ResolveBooleanRequest(flag_key="split", context=context(targetingKey=k)))
            for k in sample[:200]
        ]
    )
    assert [a.variant for a in again] == [a.variant for a in over_rpc[:200]]


async def test_raising_a_gradual_rollout_only_adds_keys(flags: FlagClient) -> None:
    def rollout(percentage: float) -> flags_pb2.PutFlagRequest:
        definition = flags_pb2.FlagDefinition(
            default_variant="old",
            rollout=flags_pb2.GradualRollout(variant="new", percentage=percentage),
        )
        definition.variants["old"].string_value = "checkout-v1"
        definition.variants["new"].string_value = "checkout-v2"
        return flags_pb2.PutFlagRequest(request_id=rid(), flag_key="checkout", definition=definition)

    keys = [f"account-{i}" for i in range(400)]

    async def on_new() -> set[str]:
        answers = await bounded(
            [
                flags.resolve_string(
                    flags_pb2.ResolveStringRequest(flag_key="checkout", context=context(targetingKey=k))
                )
                for k in keys
            ]
        )
        return {k for k, a in zip(keys, answers, strict=True) if a.variant == "new"}

    await flags.put_flag(rollout(10))
    at_10 = await on_new()
    await flags.put_flag(rollout(40))
    at_40 = await on_new()
    await flags.put_flag(rollout(100))
    at_100 = await on_new()
    assert at_10 < at_40 < at_100 == set(keys)
    assert 0.03 < len(at_10) / len(keys) < 0.18 and 0.30 < len(at_40) / len(keys) < 0.50
    bad = rollout(12.345)
    error = await refused(flags.put_flag(bad))
    assert (error.code, list(error.field_violations)) == (INVALID, ["definition.rollout.percentage"])


async def test_flag_definitions_are_validated_and_updates_compare_revisions(flags: FlagClient) -> None:
    cases: list[tuple[str, str]] = [
        ('{"variants": {"on": true}, "defaultVariant": "off"}', "definition_json.defaultVariant"),
        ('{"variants": {"on": true, "n": 1}, "defaultVariant": "on"}', "definition_json.variants"),
        ('{"variants": {"on": true}, "defaultVariant": "on", "extra": 1}', "definition_json.extra"),
        ("not json", "definition_json"),
    ]
    for document, field in cases:
        error = await refused(flags.put_flag(flags_pb2.PutFlagRequest(flag_key="f", definition_json=document)))
        assert (error.code, list(error.field_violations)) == (INVALID, [field]), document
    no_source = await refused(flags.put_flag(flags_pb2.PutFlagRequest(flag_key="f")))
    assert no_source.code == INVALID
    bad_key = await refused(flags.put_flag(flags_pb2.PutFlagRequest(flag_key="a b", definition_json="{}")))
    assert list(bad_key.field_violations) == ["flag_key"]
    created = await put_flag(flags, "f", {"variants": {"on": True, "off": False}, "defaultVariant": "on"})
    assert created.revision == 1
    stale = await refused(
        flags.put_flag(
            flags_pb2.PutFlagRequest(
                flag_key="f",
                definition_json='{"variants": {"on": true, "off": false}, "defaultVariant": "off"}',
                expected_revision=7,
            )
        )
    )
    assert (stale.code, stale.reason, stale.metadata["revision"]) == (ABORTED, "REVISION_MISMATCH", "1")
    updated = await put_flag(
        flags, "f", {"variants": {"on": True, "off": False}, "defaultVariant": "off"}, expected_revision=1
    )
    assert updated.revision == 2
    same = await put_flag(flags, "f", {"variants": {"on": True, "off": False}, "defaultVariant": "off"})
    assert same.revision == 2  # an identical definition is not a change
    got = await flags.get_flag(flags_pb2.GetFlagRequest(flag_key="f"))
    assert got.flag == updated
    listed = await flags.list_flags(flags_pb2.ListFlagsRequest())
    assert [f.key for f in listed.flags] == ["f"]
    await flags.delete_flag(flags_pb2.DeleteFlagRequest(request_id=rid(), flag_key="f", expected_revision=2))
    gone = await refused(flags.get_flag(flags_pb2.GetFlagRequest(flag_key="f")))
    assert (gone.code, gone.reason) == (NOT_FOUND, "FLAG_NOT_FOUND")


async def test_target_groups_change_the_flags_using_them_and_the_event_stream_says_so(flags: FlagClient) -> None:
    events = flags.event_stream(flags_pb2.EventStreamRequest())
    assert (await first(events)).type == flags_pb2.FLAG_EVENT_TYPE_PROVIDER_READY
    await flags.put_target_group(
        flags_pb2.PutTargetGroupRequest(
            request_id=rid(), name="staff", rule_json='{"ends_with": [{"var": "email"}, "@shieldx.io"]}'
        )
    )
    group_created = await first(events)
    assert group_created.type == flags_pb2.FLAG_EVENT_TYPE_CONFIGURATION_CHANGE
    assert [(c.subject, c.change_type) for c in group_created.changes] == [
        ("target-groups/staff", flags_pb2.FLAG_CHANGE_TYPE_CREATED)
    ]
    await put_flag(
        flags,
        "beta",
        {
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"$ref": "staff"}, "on", "off"]},
        },
    )
    assert [c.subject for c in (await first(events)).changes] == ["flags/beta"]
    staff = context(email="eve@shieldx.io")
    assert (await flags.resolve_boolean(flags_pb2.ResolveBooleanRequest(flag_key="beta", context=staff))).value
    await flags.put_target_group(
        flags_pb2.PutTargetGroupRequest(
            request_id=rid(), name="staff", rule_json='{"ends_with": [{"var": "email"}, "@staff.shieldx.io"]}'
        )
    )
    changed = await first(events)
    assert [(c.subject, c.change_type) for c in changed.changes] == [
        ("target-groups/staff", flags_pb2.FLAG_CHANGE_TYPE_UPDATED),
        ("flags/beta", flags_pb2.FLAG_CHANGE_TYPE_UPDATED),
    ]
    assert not (await flags.resolve_boolean(flags_pb2.ResolveBooleanRequest(flag_key="beta", context=staff))).value
    groups = await flags.list_target_groups(flags_pb2.ListTargetGroupsRequest())
    assert [(g.name, list(g.used_by), g.revision) for g in groups.target_groups] == [("staff", ["beta"], 2)]
    in_use = await refused(flags.delete_target_group(flags_pb2.DeleteTargetGroupRequest(name="staff")))
    assert (in_use.code, in_use.reason) == (PRECONDITION, "TARGET_GROUP_IN_USE")
    unknown_ref = await refused(
        flags.put_flag(
            flags_pb2.PutFlagRequest(
                flag_key="x",
                definition_json=json.dumps({**SPLIT_FLAG, "targeting": {"if": [{"$ref": "nobody"}, "on", "off"]}}),
            )
        )
    )
    assert unknown_ref.code == INVALID and next(iter(unknown_ref.field_violations)).startswith(
        "definition_json.targeting"
    )
    await flags.delete_flag(flags_pb2.DeleteFlagRequest(request_id=rid(), flag_key="beta"))
    await flags.delete_target_group(flags_pb2.DeleteTargetGroupRequest(request_id=rid(), name="staff"))
    missing = await refused(flags.delete_target_group(flags_pb2.DeleteTargetGroupRequest(name="staff")))
    assert (missing.code, missing.reason) == (NOT_FOUND, "TARGET_GROUP_NOT_FOUND")


async def test_flag_changes_are_audited_with_the_callers_subject(
    start_service: StartService, store_config: dict[str, str], tmp_path: Path
) -> None:
    authority = TestAuthority()
    running = await start_service(
        build, deployment_config(tmp_path, store_config, auth__enabled=True), verifier=authority.verifier
    )
    flags = FlagClient(running.channel)
    writer = authority.metadata(["deployment.write"], client_id="alice")
    reader = authority.metadata(["deployment.read"], client_id="bob")
    document = {"variants": {"on": True, "off": False}, "defaultVariant": "off"}
    request = flags_pb2.PutFlagRequest(
        request_id=rid(), flag_key="f", definition_json=json.dumps(document), comment="new"
    )
    await flags.put_flag(request, metadata=writer)
    document["defaultVariant"] = "on"
    await flags.put_flag(
        flags_pb2.PutFlagRequest(request_id=rid(), flag_key="f", definition_json=json.dumps(document), comment="go"),
        metadata=writer,
    )
    await flags.delete_flag(flags_pb2.DeleteFlagRequest(request_id=rid(), flag_key="f"), metadata=writer)
    denied = await refused(flags.put_flag(request, metadata=reader))
    assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    audit = await flags.list_flag_audit(flags_pb2.ListFlagAuditRequest(subject="flags/f"), metadata=reader)
    entries = [(e.change_type, e.actor, e.comment) for e in audit.entries]
    assert entries == [
        (flags_pb2.FLAG_CHANGE_TYPE_DELETED, "alice", ""),
        (flags_pb2.FLAG_CHANGE_TYPE_UPDATED, "alice", "go"),
        (flags_pb2.FLAG_CHANGE_TYPE_CREATED, "alice", "new"),
    ]
    deleted, updated, created = audit.entries
    assert created.before_json == "" and json.loads(created.after_json)["defaultVariant"] == "off"
    assert updated.before_json == created.after_json and json.loads(updated.after_json)["defaultVariant"] == "on"
    assert deleted.before_json == updated.after_json and deleted.after_json == ""
    assert [e.sequence for e in audit.entries] == [3, 2, 1]
    paged = await flags.list_flag_audit(flags_pb2.ListFlagAuditRequest(page_size=2), metadata=reader)
    rest = await flags.list_flag_audit(
        flags_pb2.ListFlagAuditRequest(page_size=2, page_token=paged.next_page_token), metadata=reader
    )
    assert [e.sequence for e in [*paged.entries, *rest.entries]] == [3, 2, 1]


# -- experiments -------------------------------------------------------------------------------

BUTTON = {"variants": {"grey": "#888", "green": "#0a0", "blue": "#00a"}, "defaultVariant": "grey"}


async def flag_experiment(
    experiments: ExperimentClient, flags: FlagClient, **changes: Any
) -> experiments_pb2.Experiment:
    await put_flag(flags, "button", {**BUTTON, "targeting": {"fractional": [["grey", 50], ["green", 50]]}})
    request: dict[str, Any] = {
        "request_id": rid(),
        "name": "button colour",
        "control": "grey",
        "variants": ["green"],
        "flag": experiments_pb2.FlagBinding(flag_key="button"),
        "min_exposures_per_arm": 1000,
    }
    request.update(changes)
    return (await experiments.create_experiment(experiments_pb2.CreateExperimentRequest(**request))).experiment


async def count(
    experiments: ExperimentClient, experiment_id: str, exposures: dict[str, int], conversions: dict[str, int]
) -> None:
    await experiments.record_exposure(
        experiments_pb2.RecordExposureRequest(
            request_id=rid(),
            experiment_id=experiment_id,
            exposures=[experiments_pb2.ArmCount(arm=arm, count=n) for arm, n in exposures.items()],
        )
    )
    await experiments.record_outcome(
        experiments_pb2.RecordOutcomeRequest(
            request_id=rid(),
            experiment_id=experiment_id,
            conversions=[experiments_pb2.ArmCount(arm=arm, count=n) for arm, n in conversions.items()],
        )
    )


async def test_a_known_better_variant_wins_and_its_flag_is_deployed(
    experiments: ExperimentClient, flags: FlagClient
) -> None:
    experiment = await flag_experiment(experiments, flags)
    assert (experiment.state, experiment.win_probability, experiment.flag.flag_key) == (
        experiments_pb2.EXPERIMENT_STATE_RUNNING,
        0.95,
        "button",
    )
    await count(experiments, experiment.id, {"grey": 5000, "green": 5000}, {"grey": 500, "green": 650})
    results = await experiments.get_experiment_results(
        experiments_pb2.GetExperimentResultsRequest(experiment_id=experiment.id)
    )
    assert (results.decision, results.winner) == (experiments_pb2.EXPERIMENT_DECISION_VARIANT_WINS, "green")
    control, green = results.arms
    assert (control.arm, control.control, control.exposures, control.conversions) == ("grey", True, 5000, 500)
    assert green.probability_to_beat_control > 0.99 and green.probability_best > 0.99
    assert control.credible_interval_low < 0.1 < control.credible_interval_high
    assert green.expected_loss < control.expected_loss
    deployed = await experiments.deploy_winner(
        experiments_pb2.DeployWinnerRequest(request_id=rid(), experiment_id=experiment.id)
    )
    assert deployed.winner == "green"
    assert deployed.experiment.state == experiments_pb2.EXPERIMENT_STATE_CONCLUDED
    served = await flags.resolve_string(
        flags_pb2.ResolveStringRequest(flag_key="button", context=context(targetingKey="anyone"))
    )
    assert (served.value, served.reason) == ("#0a0", flags_pb2.RESOLUTION_REASON_STATIC)
    audit = await flags.list_flag_audit(flags_pb2.ListFlagAuditRequest(subject="flags/button"))
    assert experiment.id in audit.entries[0].comment
    late = await refused(
        experiments.record_exposure(
            experiments_pb2.RecordExposureRequest(
                experiment_id=experiment.id, exposures=[experiments_pb2.ArmCount(arm="grey", count=1)]
            )
        )
    )
    assert (late.code, late.reason) == (PRECONDITION, "EXPERIMENT_CONCLUDED")


async def test_equal_variants_declare_no_winner(experiments: ExperimentClient, flags: FlagClient) -> None:
    experiment = await flag_experiment(experiments, flags)
    await count(experiments, experiment.id, {"grey": 600, "green": 600}, {"grey": 60, "green": 90})
    guarded = await experiments.get_experiment_results(
        experiments_pb2.GetExperimentResultsRequest(experiment_id=experiment.id)
    )
    assert guarded.decision == experiments_pb2.EXPERIMENT_DECISION_SAMPLE_GUARD_NOT_MET
    assert [a.sample_guard_met for a in guarded.arms] == [False, False]
    refused_early = await refused(
        experiments.deploy_winner(experiments_pb2.DeployWinnerRequest(request_id=rid(), experiment_id=experiment.id))
    )
    assert (refused_early.code, refused_early.reason, refused_early.metadata["decision"]) == (
        PRECONDITION,
        "NO_WINNER",
        "SAMPLE_GUARD_NOT_MET",
    )
    await count(experiments, experiment.id, {"grey": 4400, "green": 4400}, {"grey": 440, "green": 410})
    even = await experiments.get_experiment_results(
        experiments_pb2.GetExperimentResultsRequest(experiment_id=experiment.id)
    )
    assert [a.conversions for a in even.arms] == [500, 500]
    assert even.decision == experiments_pb2.EXPERIMENT_DECISION_NO_WINNER_YET and even.winner == ""
    assert 0.2 < even.arms[1].probability_to_beat_control < 0.8
    again = await experiments.get_experiment_results(
        experiments_pb2.GetExperimentResultsRequest(experiment_id=experiment.id)
    )
    assert again == even  # same counts, same seed: same numbers


async def test_experiment_counts_are_checked_and_counted_once_per_request_id(
    experiments: ExperimentClient, flags: FlagClient
) -> None:
    experiment = await flag_experiment(experiments, flags)
    batch = experiments_pb2.RecordExposureRequest(
        request_id=rid(), experiment_id=experiment.id, exposures=[experiments_pb2.ArmCount(arm="grey", count=10)]
    )
    await experiments.record_exposure(batch)
    await experiments.record_exposure(batch)
    results = await experiments.get_experiment_results(
        experiments_pb2.GetExperimentResultsRequest(experiment_id=experiment.id)
    )
    assert results.arms[0].exposures == 10
    too_many = await refused(
        experiments.record_outcome(
            experiments_pb2.RecordOutcomeRequest(
                experiment_id=experiment.id, conversions=[experiments_pb2.ArmCount(arm="grey", count=11)]
            )
        )
    )
    assert (too_many.code, too_many.reason) == (PRECONDITION, "CONVERSIONS_EXCEED_EXPOSURES")
    for arms, field in [
        ([experiments_pb2.ArmCount(arm="pink", count=1)], "exposures[0].arm"),
        ([experiments_pb2.ArmCount(arm="grey", count=0)], "exposures[0].count"),
        ([], "exposures"),
    ]:
        error = await refused(
            experiments.record_exposure(
                experiments_pb2.RecordExposureRequest(experiment_id=experiment.id, exposures=arms)
            )
        )
        assert (error.code, list(error.field_violations)) == (INVALID, [field])
    creations: list[tuple[dict[str, Any], str]] = [
        ({"control": "pink"}, "control"),
        ({"variants": []}, "variants"),
        ({"variants": ["grey"]}, "variants[0]"),
        ({"win_probability": 0.4}, "win_probability"),
        ({"flag": experiments_pb2.FlagBinding(flag_key="")}, "flag.flag_key"),
    ]
    for change, field in creations:
        error = await refused(flag_experiment(experiments, flags, **change))
        assert (error.code, list(error.field_violations)) == (INVALID, [field]), change
    unbound = await refused(
        experiments.create_experiment(experiments_pb2.CreateExperimentRequest(name="x", control="a", variants=["b"]))
    )
    assert list(unbound.field_violations) == ["binding"]
    listed = await experiments.list_experiments(
        experiments_pb2.ListExperimentsRequest(state=experiments_pb2.EXPERIMENT_STATE_RUNNING)
    )
    assert [e.id for e in listed.experiments] == [experiment.id]
    missing = await refused(experiments.get_experiment(experiments_pb2.GetExperimentRequest(experiment_id="exp-x")))
    assert (missing.code, missing.reason) == (NOT_FOUND, "EXPERIMENT_NOT_FOUND")


async def test_a_route_experiment_sends_all_traffic_to_the_winning_version(
    experiments: ExperimentClient, deployments: DeploymentClient
) -> None:
    await register(deployments, "v1", 5001)
    await register(deployments, "v2", 5002)
    await deployments.set_route_weights(
        routing_pb2.SetRouteWeightsRequest(
            service="echo",
            weights=[
                routing_pb2.VersionWeight(version="v1", weight_bp=5000),
                routing_pb2.VersionWeight(version="v2", weight_bp=5000),
            ],
        )
    )
    created = await experiments.create_experiment(
        experiments_pb2.CreateExperimentRequest(
            request_id=rid(),
            name="new checkout",
            control="v1",
            variants=["v2"],
            route=experiments_pb2.RouteBinding(service="echo"),
            min_exposures_per_arm=100,
            win_probability=0.9,
        )
    )
    experiment = created.experiment
    assert experiment.route.service == "echo"
    await count(experiments, experiment.id, {"v1": 2000, "v2": 2000}, {"v1": 400, "v2": 200})
    deployed = await experiments.deploy_winner(
        experiments_pb2.DeployWinnerRequest(request_id=rid(), experiment_id=experiment.id)
    )
    assert deployed.winner == "v1"  # the control wins: the new version converts worse
    assert await weights(deployments) == {"v1": 10_000, "v2": 0}
    unknown = await refused(
        experiments.create_experiment(
            experiments_pb2.CreateExperimentRequest(
                name="x", control="v1", variants=["v3"], route=experiments_pb2.RouteBinding(service="echo")
            )
        )
    )
    assert (unknown.code, list(unknown.field_violations)) == (INVALID, ["variants[0]"])


# -- restarts and hostile input ----------------------------------------------------------------


async def test_everything_survives_a_restart(
    start_service: StartService, running: Running, config: MeshConfig, deployments: DeploymentClient, flags: FlagClient
) -> None:
    await register(deployments, "v1", 5001)
    await register(deployments, "v2", 5002)
    created = (await deployments.create_deployment(canary())).deployment
    await put_flag(flags, "split", SPLIT_FLAG)
    before = await flags.resolve_boolean(
        flags_pb2.ResolveBooleanRequest(flag_key="split", context=context(targetingKey="k"))
    )
    await stop_service(running)
    again = await start_service(build, config)
    deployments, flags = DeploymentClient(again.channel), FlagClient(again.channel)
    got = (await deployments.get_deployment(deployment_pb2.GetDeploymentRequest(deployment_id=created.id))).deployment
    assert (got.state, got.current_weight_percent, len(got.history)) == (
        deployment_pb2.DEPLOYMENT_STATE_PROGRESSING,
        10,
        1,
    )
    assert await weights(deployments) == {"v1": 9000, "v2": 1000}
    after = await flags.resolve_boolean(
        flags_pb2.ResolveBooleanRequest(flag_key="split", context=context(targetingKey="k"))
    )
    assert after == before


async def test_the_fuzz_harness_finds_nothing(running: Running, deployments: DeploymentClient) -> None:
    await register(deployments, "v1", 5001)
    await register(deployments, "v2", 5002)
    values = {
        "service": "echo",
        "version": "v2",
        "services": ["echo"],
        "win_probability": 0.95,
        "rule_json": json.dumps({"==": [{"var": "country"}, "NZ"]}),
        "address": "127.0.0.1:5003",  # registered, never called
        "metrics_endpoint": "",  # nothing to scrape
        "weight_bp": 10000,
        "weight_percent": 100,
    }
    for messages, name in (
        (deployment_pb2, "DeploymentService"),
        (flags_pb2, "FlagService"),
        (experiments_pb2, "ExperimentService"),
    ):
        report = await fuzz_service(
            running.channel, messages.DESCRIPTOR.services_by_name[name], rounds=15, concurrency=64, values=values
        )
        report.assert_clean()
        report.assert_reaches_logic()
        assert report.calls > 100


async def test_a_workload_registers_and_deregisters_only_instances_of_its_own_service(
    start_service: StartService, store_config: dict[str, str], tmp_path: Path
) -> None:
    authority = TestAuthority()
    running = await start_service(
        build, deployment_config(tmp_path, store_config, auth__enabled=True), verifier=authority.verifier
    )
    client = DeploymentClient(running.channel)
    tokens = authority.metadata(["deployment.register"], client_id="tokens")
    deception = authority.metadata(["deployment.register"], client_id="deception")
    admin = authority.metadata(["deployment.register", "deployment.admin", "deployment.read"], client_id="admin")
    own = routing_pb2.RegisterInstanceRequest(
        service="tokens", version="v1", address="127.0.0.1:8080", metrics_endpoint="http://127.0.0.1:9080/metrics"
    )
    await client.register_instance(own, metadata=tokens)

    # The reproduction: deception's workload token poisoning the token service's route.
    poison = routing_pb2.RegisterInstanceRequest(service="tokens", version="v1", address="127.0.0.1:9")
    denied = await refused(client.register_instance(poison, metadata=deception))
    assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "INSTANCE_OF_ANOTHER_SERVICE")
    leave = routing_pb2.DeregisterInstanceRequest(service="tokens", address="127.0.0.1:8080")
    denied = await refused(client.deregister_instance(leave, metadata=deception))
    assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "INSTANCE_OF_ANOTHER_SERVICE")

    # Metrics endpoints on another host are refused before anything is stored or fetched.
    # (Refused at validation: nothing connects to these. Every loopback address is the instance's
    # own machine, so 127.0.0.2 would be allowed.)
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.1.2.3:9089/metrics"):
        metadata_service = routing_pb2.RegisterInstanceRequest(
            service="deception", version="v1", address="127.0.0.1:8089", metrics_endpoint=url
        )
        bad = await refused(client.register_instance(metadata_service, metadata=deception))
        assert (bad.code, bad.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "METRICS_HOST_NOT_ALLOWED")
        assert bad.metadata["field"] == "metrics_endpoint"
    await client.register_instance(
        routing_pb2.RegisterInstanceRequest(
            service="deception", version="v1", address="127.0.0.1:8089", metrics_endpoint="http://127.0.0.1:9089/m"
        ),
        metadata=deception,
    )

    listed = await client.list_instances(routing_pb2.ListInstancesRequest(), metadata=admin)
    assert [(i.service, i.address) for i in listed.instances] == [
        ("deception", "127.0.0.1:8089"),
        ("tokens", "127.0.0.1:8080"),
    ]
    # Operators (deployment.admin) still manage any service's instances.
    await client.deregister_instance(leave, metadata=admin)
    listed = await client.list_instances(routing_pb2.ListInstancesRequest(service="tokens"), metadata=admin)
    assert not listed.instances
