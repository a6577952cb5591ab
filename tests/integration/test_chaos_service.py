"""ChaosService on a real deployment server (both backends) against an in-process Echo server
that follows the fault injections through its deployment agent: validation, safety refusals,
a run that injects, renews and withdraws its fault, automatic rollback, abort, schedules, fuzzing."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from clients.deployment import ChaosClient, DeploymentClient
from clients.errors import ShieldxError
from servers.deployment.chaos.domain import SafetyPolicy
from servers.deployment.chaos.service import ChaosServicer
from servers.deployment.service import build
from servers.mesh.agent import AgentSettings, deployment_agent
from shieldx.deployment.v1 import chaos_pb2, faults_pb2
from tests.conftest import Running, StartServer, StartService, test_config
from tests.support.echo import echo_mount, echo_pb2, echo_pb2_grpc
from tests.support.fuzz import fuzz_service

ECHO = "meshtest.v1.EchoService"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def seconds(value: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(value * 1e9))
    return message


@dataclass
class Lab:
    deployment: Running
    echo: Running
    chaos: ChaosClient
    deployments: DeploymentClient

    @property
    def servicer(self) -> ChaosServicer:
        assert self.deployment.service is not None
        return next(m.servicer for m in self.deployment.service.mounts if isinstance(m.servicer, ChaosServicer))

    def echo_stub(self) -> echo_pb2_grpc.EchoServiceStub:
        return echo_pb2_grpc.EchoServiceStub(self.echo.channel)


@pytest.fixture
async def lab(
    store_config: dict[str, str], start_service: StartService, start_server: StartServer, tmp_path: Path
) -> AsyncIterator[Lab]:
    config = test_config(tmp_path / "deployment", "deployment", **store_config)
    config.settings = {
        "controller_tick_seconds": 0.1,
        "chaos": {"probe_interval_seconds": 0.2, "fault_ttl_seconds": 2.0, "recovery_timeout_seconds": 3.0},
    }
    deployment = await start_service(build, config)
    echo_config = test_config(tmp_path / "echo", endpoints={"deployment": deployment.address})
    echo = await start_server(lambda rt: [echo_mount(rt)], echo_config, metrics=True)
    agent = deployment_agent(
        echo.runtime, echo.server.port, echo.server.metrics_port, AgentSettings(enabled=True, service="echo")
    )
    assert agent is not None
    tasks = [asyncio.create_task(agent.register_forever()), asyncio.create_task(agent.follow_faults_forever())]
    deployments = DeploymentClient(deployment.channel)
    from shieldx.deployment.v1 import routing_pb2

    deadline = time.monotonic() + 10
    while not (await deployments.list_instances(routing_pb2.ListInstancesRequest(service="echo"))).instances:
        assert time.monotonic() < deadline, "the echo server did not register"
        await asyncio.sleep(0.05)
    try:
        yield Lab(deployment, echo, ChaosClient(deployment.channel), deployments)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def spec(**changes: Any) -> chaos_pb2.ChaosExperimentSpec:
    message = chaos_pb2.ChaosExperimentSpec(
        name="echo latency",
        type=chaos_pb2.CHAOS_TYPE_HIGH_LATENCY,
        target=chaos_pb2.ChaosTarget(service="echo", method_pattern=f"{ECHO}/Echo"),
        parameters=chaos_pb2.ChaosParameters(delay=seconds(0.05)),
        percentage=100.0,
        duration=seconds(2.0),
        hypothesis=chaos_pb2.SteadyStateHypothesis(require_serving=True),
    )
    for name, value in changes.items():
        if isinstance(value, Message):
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


async def create(lab: Lab, message: chaos_pb2.ChaosExperimentSpec | None = None) -> chaos_pb2.ChaosExperiment:
    answer = await lab.chaos.create_experiment(
        chaos_pb2.CreateChaosExperimentRequest(request_id=uuid.uuid4().hex, spec=message or spec())
    )
    return answer.experiment


async def refused(call: Any) -> ShieldxError:
    with pytest.raises(ShieldxError) as caught:
        await call
    return caught.value


async def ended(lab: Lab, experiment_id: str, timeout: float = 20.0) -> chaos_pb2.ChaosExperiment:
    """The experiment once it ended and its recovery was measured (read from the watch stream)."""
    last = None
    async with asyncio.timeout(timeout):
        async for update in lab.chaos.watch_experiment(
            chaos_pb2.WatchChaosExperimentRequest(experiment_id=experiment_id)
        ):
            last = update.experiment
    assert last is not None
    return last


async def echo_faults(lab: Lab) -> int:
    return len(lab.echo.runtime.faults.faults)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"type": chaos_pb2.CHAOS_TYPE_UNSPECIFIED}, "spec.type"),
        ({"type": 99}, "spec.type"),
        ({"percentage": 0.0}, "spec.percentage"),
        ({"percentage": 101.0}, "spec.percentage"),
        ({"duration": seconds(0)}, "spec.duration"),
        ({"duration": seconds(86400)}, "spec.duration"),
        ({"target": {"service": "nosuch"}}, "spec.target.service"),
        ({"target": {"service": "credits", "method_pattern": "*/NoSuchMethod"}}, "spec.target.method_pattern"),
        ({"name": ""}, "spec.name"),
    ],
)
async def test_bad_experiments_are_invalid_argument_naming_the_field(
    lab: Lab, changes: dict[str, Any], field: str
) -> None:
    changes = dict(changes)
    if "target" in changes:
        changes["target"] = chaos_pb2.ChaosTarget(**changes["target"])
    message = spec(**changes)
    error = await refused(lab.chaos.create_experiment(chaos_pb2.CreateChaosExperimentRequest(spec=message)))
    assert error.code == INVALID
    assert field in error.field_violations


async def test_a_high_latency_experiment_injects_renews_and_withdraws_its_fault(lab: Lab) -> None:
    experiment = await create(lab)
    assert experiment.state == chaos_pb2.CHAOS_STATE_CREATED
    started = await lab.chaos.start_experiment(chaos_pb2.StartChaosExperimentRequest(experiment_id=experiment.id))
    assert started.experiment.state == chaos_pb2.CHAOS_STATE_RUNNING
    stub = lab.echo_stub()
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + 5
    while not await echo_faults(lab):
        assert time.monotonic() < deadline, "the fault never reached the echo server"
        await asyncio.sleep(0.02)
    listed = await lab.deployments.list_fault_injections(faults_pb2.ListFaultInjectionsRequest(service="echo"))
    (fault,) = listed.fault_injections
    assert fault.experiment_id == experiment.id and fault.delay.ToNanoseconds() == 50_000_000
    first_expiry = fault.expire_time.ToNanoseconds()
    slow = []
    for _ in range(10):
        began = loop.time()
        await stub.Echo(echo_pb2.EchoRequest(text="x"))
        slow.append(loop.time() - began)
    assert min(slow) >= 0.05, "every matching call carries the delay"
    renewed = await lab.deployments.list_fault_injections(faults_pb2.ListFaultInjectionsRequest(service="echo"))
    assert renewed.fault_injections[0].expire_time.ToNanoseconds() > first_expiry, "the controller renews the TTL"
    final = await ended(lab, experiment.id)
    assert final.state == chaos_pb2.CHAOS_STATE_COMPLETED
    assert final.report.verdict == chaos_pb2.CHAOS_VERDICT_HYPOTHESIS_HELD
    assert final.report.during.total_requests >= 10
    assert final.report.during.latency_p95_ms >= 50
    assert final.report.HasField("recovery_time")
    assert not (await lab.deployments.list_fault_injections(faults_pb2.ListFaultInjectionsRequest())).fault_injections
    assert await echo_faults(lab) == 0


async def test_crossing_the_impact_threshold_rolls_back_and_records_the_violation(lab: Lab) -> None:
    loss = spec(
        name="total loss",
        type=chaos_pb2.CHAOS_TYPE_PACKET_LOSS,
        parameters=chaos_pb2.ChaosParameters(stall=seconds(0.001)),
        duration=seconds(60),
    )
    experiment = await create(lab, loss)
    await lab.chaos.start_experiment(chaos_pb2.StartChaosExperimentRequest(experiment_id=experiment.id))
    stub = lab.echo_stub()
    failures = 0
    deadline = time.monotonic() + 30
    while (await echo_faults(lab)) or failures == 0:
        assert time.monotonic() < deadline, "the experiment was not rolled back"
        try:
            await stub.Echo(echo_pb2.EchoRequest(text="x"))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            failures += 1
    final = (
        await lab.chaos.get_experiment(chaos_pb2.GetChaosExperimentRequest(experiment_id=experiment.id))
    ).experiment
    assert final.state == chaos_pb2.CHAOS_STATE_ABORTED
    assert "impact threshold" in final.abort_reason
    assert final.report.verdict == chaos_pb2.CHAOS_VERDICT_ABORTED
    assert final.report.safety_violations == [final.abort_reason]
    await stub.Echo(echo_pb2.EchoRequest(text="x"))  # the fault is gone


async def test_abort_rolls_back_a_running_experiment(lab: Lab) -> None:
    experiment = await create(lab, spec(duration=seconds(60)))
    await lab.chaos.start_experiment(chaos_pb2.StartChaosExperimentRequest(experiment_id=experiment.id))
    aborted = await lab.chaos.abort_experiment(
        chaos_pb2.AbortChaosExperimentRequest(experiment_id=experiment.id, reason="enough")
    )
    assert aborted.experiment.state == chaos_pb2.CHAOS_STATE_ABORTED
    assert aborted.experiment.abort_reason == "enough"
    assert not (await lab.deployments.list_fault_injections(faults_pb2.ListFaultInjectionsRequest())).fault_injections
    again = await refused(
        lab.chaos.abort_experiment(chaos_pb2.AbortChaosExperimentRequest(experiment_id=experiment.id))
    )
    assert (again.code, again.reason) == (PRECONDITION, "CHAOS_NOT_RUNNING")


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        (SafetyPolicy(environment="production"), "production"),
        (SafetyPolicy(safe_hours=()), "outside the safe hours"),
        (SafetyPolicy(max_concurrent=1), "at most 1"),
    ],
)
async def test_unsafe_starts_are_failed_precondition_with_the_reason(
    lab: Lab, policy: SafetyPolicy, fragment: str
) -> None:
    if policy.max_concurrent == 1:
        busy = await create(lab, spec(duration=seconds(60)))
        await lab.chaos.start_experiment(chaos_pb2.StartChaosExperimentRequest(experiment_id=busy.id))
    lab.servicer.parts.controller.policy = policy
    experiment = await create(lab)
    error = await refused(
        lab.chaos.start_experiment(chaos_pb2.StartChaosExperimentRequest(experiment_id=experiment.id))
    )
    assert (error.code, error.reason) == (PRECONDITION, "CHAOS_SAFETY_REFUSED")
    assert fragment in error.message
    assert await echo_faults(lab) == 0 or policy.max_concurrent == 1


async def test_an_unhealthy_target_is_refused_by_the_pre_check(lab: Lab) -> None:
    from shieldx.deployment.v1 import routing_pb2

    await lab.deployments.register_instance(
        routing_pb2.RegisterInstanceRequest(service="ghost", version="v1", address="127.0.0.1:9")
    )
    experiment = await create(lab, spec(target=chaos_pb2.ChaosTarget(service="ghost")))
    error = await refused(
        lab.chaos.start_experiment(chaos_pb2.StartChaosExperimentRequest(experiment_id=experiment.id))
    )
    assert (error.code, error.reason) == (PRECONDITION, "CHAOS_TARGET_UNHEALTHY")


async def test_schedules_are_created_listed_and_deleted(lab: Lab) -> None:
    created = await lab.chaos.create_schedule(
        chaos_pb2.CreateChaosScheduleRequest(spec=spec(), experiment_interval=seconds(600))
    )
    assert created.schedule.experiment_interval.seconds == 600
    listed = await lab.chaos.list_schedules(chaos_pb2.ListChaosSchedulesRequest())
    assert [s.id for s in listed.schedules] == [created.schedule.id]
    short = await refused(
        lab.chaos.create_schedule(chaos_pb2.CreateChaosScheduleRequest(spec=spec(), experiment_interval=seconds(1)))
    )
    assert short.code == INVALID and "experiment_interval" in short.field_violations
    await lab.chaos.delete_schedule(chaos_pb2.DeleteChaosScheduleRequest(schedule_id=created.schedule.id))
    assert not (await lab.chaos.list_schedules(chaos_pb2.ListChaosSchedulesRequest())).schedules


async def test_the_fuzz_harness_finds_nothing(lab: Lab) -> None:
    report = await fuzz_service(
        lab.deployment.channel, chaos_pb2.DESCRIPTOR.services_by_name["ChaosService"], rounds=15, concurrency=32
    )
    report.assert_clean()
    assert report.calls > 100


async def test_the_chaos_migration_reverts_and_applies_again(store_config: dict[str, str], tmp_path: Path) -> None:
    from servers.deployment.chaos.store import MIGRATIONS
    from servers.mesh.storage import discover_migrations, open_database

    database = await open_database(
        "deployment",
        data_dir=tmp_path,
        database_url=store_config["database_url"],
        schema=store_config.get("database_schema") or None,
        migrations=("servers.mesh.migrations", "servers.deployment.migrations", MIGRATIONS),
    )
    try:
        (migration,) = discover_migrations(MIGRATIONS, database.dialect)
        await database.revert(migration)
        await database.execute("INSERT INTO fault_injections (id, service, version, method_pattern, delay_seconds,"
                               " abort_code, percentage, created_at, expires_at, actor)"
                               " VALUES ('f', 's', '', '*', 0, 14, 1, 0, 1, 'a')")  # fmt: skip
        assert await database.migrate(MIGRATIONS) == [1]
        assert (await database.fetchone("SELECT experiment_id, chaos FROM fault_injections"))[1] == "{}"
    finally:
        await database.close()
