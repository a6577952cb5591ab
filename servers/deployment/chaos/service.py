"""ChaosService: create, start, abort and watch chaos experiments, their reports, and schedules.

Thin: requests are parsed into the domain's spec (`messages`), checked by the domain rules,
stored, and handed to the controller, which does the safety checks and the injecting.
"""

from __future__ import annotations

import importlib
import pkgutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from clients.endpoints import SERVICES
from servers.deployment.chaos.controller import ChaosController
from servers.deployment.chaos.domain import Experiment, Measurement, Spec, State, check_spec
from servers.deployment.chaos.messages import (
    STATES_BACK,
    experiment_message,
    measurement_message,
    report_message,
    schedule_message,
    spec_of,
)
from servers.deployment.chaos.store import ChaosStore, Schedule
from servers.deployment.requests import check_id, check_text
from servers.deployment.routes import check_service
from servers.deployment.store import DeploymentStore
from servers.deployment.timestamps import epoch, seconds_of
from servers.mesh import storage
from servers.mesh.errors import InvalidArgument
from servers.mesh.idempotency import RequestLedger
from servers.mesh.pagination import page_request
from shieldx.deployment.v1 import chaos_pb2, chaos_pb2_grpc

DEFAULT_INTERVAL = 300.0
"""Time between a schedule's runs unless told, in seconds."""
MIN_INTERVAL, MAX_INTERVAL = 60.0, 7 * 86400.0
MAX_REASON_LENGTH = 512


@cache
def contract_methods(service: str) -> frozenset[str] | None:
    """Full method names (`package.Service/Method`) of a mesh service's contract; None if it has none here."""
    try:
        package = importlib.import_module(f"shieldx.{service}.v1")
    except ImportError:
        return None
    methods: set[str] = set()
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.endswith("_pb2"):
            continue
        descriptor = importlib.import_module(f"{package.__name__}.{module.name}").DESCRIPTOR
        for described in descriptor.services_by_name.values():
            methods.update(f"{described.full_name}/{m.name}" for m in described.methods)
    return frozenset(methods) or None


@dataclass
class ChaosParts:
    """What the ChaosService RPCs share."""

    store: ChaosStore
    deployments: DeploymentStore
    controller: ChaosController
    ledger: RequestLedger
    clock: Callable[[], datetime]
    watch_poll_seconds: float


class ChaosServicer(chaos_pb2_grpc.ChaosServiceServicer):
    """The ChaosService RPCs."""

    def __init__(self, parts: ChaosParts) -> None:
        self.parts = parts

    async def _spec(self, message: chaos_pb2.ChaosExperimentSpec) -> Spec:
        if message.ByteSize() == 0:
            raise InvalidArgument("spec", "is required")
        spec = spec_of(message)
        names = {spec.target.service, spec.parameters.peer_service} - {""}
        for name, field_name in ((spec.target.service, "spec.target.service"),):
            check_service(name, field_name)
        known = {n for n in names if n in SERVICES or await self._registered(n)}
        methods = contract_methods(spec.target.service) if spec.target.service in SERVICES else None
        return check_spec(spec, services=known, methods=methods)

    async def _registered(self, service: str) -> bool:
        deployments = self.parts.deployments
        async with deployments.transaction() as tx:
            return bool(await deployments.registry.instances(tx, service))

    async def _read(self, experiment_id: str) -> Experiment:
        check_id(experiment_id, "experiment_id")
        async with self.parts.store.transaction() as tx:
            return await self.parts.store.get(tx, experiment_id)

    async def CreateChaosExperiment(
        self, request: chaos_pb2.CreateChaosExperimentRequest, context: Any
    ) -> chaos_pb2.CreateChaosExperimentResponse:
        """Create an experiment (CREATED)."""
        spec = await self._spec(request.spec)
        parts = self.parts

        async def work(tx: storage.Transaction) -> chaos_pb2.CreateChaosExperimentResponse:
            experiment = Experiment(
                id=f"chaos-{uuid.uuid4().hex[:16]}", spec=spec, state=State.CREATED, created_at=parts.clock()
            )
            await parts.store.insert(tx, experiment)
            return chaos_pb2.CreateChaosExperimentResponse(experiment=experiment_message(experiment))

        return await parts.ledger.execute(
            "CreateChaosExperiment", request, chaos_pb2.CreateChaosExperimentResponse, work
        )

    async def GetChaosExperiment(
        self, request: chaos_pb2.GetChaosExperimentRequest, context: Any
    ) -> chaos_pb2.GetChaosExperimentResponse:
        """One experiment."""
        return chaos_pb2.GetChaosExperimentResponse(
            experiment=experiment_message(await self._read(request.experiment_id))
        )

    async def ListChaosExperiments(
        self, request: chaos_pb2.ListChaosExperimentsRequest, context: Any
    ) -> chaos_pb2.ListChaosExperimentsResponse:
        """Experiments, newest first."""
        if request.state and request.state not in STATES_BACK:
            raise InvalidArgument("state", "unknown state")
        state = STATES_BACK.get(request.state)
        page = page_request(request.page_size, request.page_token, {"state": request.state})
        async with self.parts.store.transaction() as tx:
            found, more = await self.parts.store.page(tx, state, page)
        cursor = {"t": epoch(found[-1].created_at), "id": found[-1].id} if more and found else None
        return chaos_pb2.ListChaosExperimentsResponse(
            experiments=[experiment_message(e) for e in found], next_page_token=page.next_token(cursor)
        )

    async def StartChaosExperiment(
        self, request: chaos_pb2.StartChaosExperimentRequest, context: Any
    ) -> chaos_pb2.StartChaosExperimentResponse:
        """Safety checks and pre-check, then inject."""
        check_id(request.experiment_id, "experiment_id")
        if request.request_id:
            check_text(request.request_id, "request_id", 128)
        # Not through the request ledger: starting runs the controller's own transactions,
        # and a retried start of a RUNNING experiment is refused as CHAOS_NOT_STARTABLE.
        experiment = await self.parts.controller.start(request.experiment_id)
        return chaos_pb2.StartChaosExperimentResponse(experiment=experiment_message(experiment))

    async def AbortChaosExperiment(
        self, request: chaos_pb2.AbortChaosExperimentRequest, context: Any
    ) -> chaos_pb2.AbortChaosExperimentResponse:
        """Roll a running experiment back now."""
        check_id(request.experiment_id, "experiment_id")
        reason = check_text(request.reason, "reason", MAX_REASON_LENGTH) or "aborted by an operator"
        if request.request_id:
            check_text(request.request_id, "request_id", 128)
        experiment = await self.parts.controller.abort(request.experiment_id, reason)
        return chaos_pb2.AbortChaosExperimentResponse(experiment=experiment_message(experiment))

    async def WatchChaosExperiment(
        self, request: chaos_pb2.WatchChaosExperimentRequest, context: Any
    ) -> AsyncIterator[chaos_pb2.WatchChaosExperimentResponse]:
        """The experiment now, then again at every change, until it ended and its report is final."""
        controller = self.parts.controller
        while True:
            seen = controller.changed.generation
            experiment = await self._read(request.experiment_id)
            live = controller.live.get(experiment.id, Measurement())
            yield chaos_pb2.WatchChaosExperimentResponse(
                experiment=experiment_message(experiment), live=measurement_message(live)
            )
            if experiment.state in (State.COMPLETED, State.ABORTED) and controller.finished(experiment.id):
                return
            await controller.changed.wait_after(seen, self.parts.watch_poll_seconds)

    async def GetChaosReport(
        self, request: chaos_pb2.GetChaosReportRequest, context: Any
    ) -> chaos_pb2.GetChaosReportResponse:
        """The report of an experiment."""
        experiment = await self._read(request.experiment_id)
        return chaos_pb2.GetChaosReportResponse(
            report=report_message(experiment.report), state=experiment_message(experiment).state
        )

    async def CreateChaosSchedule(
        self, request: chaos_pb2.CreateChaosScheduleRequest, context: Any
    ) -> chaos_pb2.CreateChaosScheduleResponse:
        """A schedule running the spec every interval within safe hours."""
        spec = await self._spec(request.spec)
        interval = (
            seconds_of(request.experiment_interval) if request.HasField("experiment_interval") else DEFAULT_INTERVAL
        )
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise InvalidArgument("experiment_interval", f"must be from {MIN_INTERVAL:g} s to {MAX_INTERVAL:g} s")
        parts = self.parts

        async def work(tx: storage.Transaction) -> chaos_pb2.CreateChaosScheduleResponse:
            schedule = Schedule(f"chaos-schedule-{uuid.uuid4().hex[:12]}", spec, interval, parts.clock())
            await parts.store.insert_schedule(tx, schedule)
            return chaos_pb2.CreateChaosScheduleResponse(schedule=schedule_message(schedule))

        return await parts.ledger.execute("CreateChaosSchedule", request, chaos_pb2.CreateChaosScheduleResponse, work)

    async def ListChaosSchedules(
        self, request: chaos_pb2.ListChaosSchedulesRequest, context: Any
    ) -> chaos_pb2.ListChaosSchedulesResponse:
        """Schedules, oldest first."""
        page = page_request(request.page_size, request.page_token)
        async with self.parts.store.transaction() as tx:
            found, more = await self.parts.store.schedules(tx, page)
        cursor = {"t": epoch(found[-1].created_at), "id": found[-1].id} if more and found else None
        return chaos_pb2.ListChaosSchedulesResponse(
            schedules=[schedule_message(s) for s in found], next_page_token=page.next_token(cursor)
        )

    async def DeleteChaosSchedule(
        self, request: chaos_pb2.DeleteChaosScheduleRequest, context: Any
    ) -> chaos_pb2.DeleteChaosScheduleResponse:
        """Delete a schedule."""
        check_id(request.schedule_id, "schedule_id")
        parts = self.parts

        async def work(tx: storage.Transaction) -> chaos_pb2.DeleteChaosScheduleResponse:
            await parts.store.delete_schedule(tx, request.schedule_id)
            return chaos_pb2.DeleteChaosScheduleResponse()

        return await parts.ledger.execute("DeleteChaosSchedule", request, chaos_pb2.DeleteChaosScheduleResponse, work)
