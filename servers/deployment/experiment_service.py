"""ExperimentService: A/B tests bound to a flag or a route, their counts, results and winners.

Counts are added in batches under the request ledger, so a retried batch counts once. The
Beta-Binomial analysis (numpy, a seeded Monte Carlo draw per arm) runs in a worker thread so
a large draw never stalls other calls. Deploying the winner and concluding the experiment
happen in one transaction: the flag (audited like any flag change) or the route weights
change together with the experiment's state.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from servers.deployment.experiment_store import ExperimentStore
from servers.deployment.experiments import (
    ArmCounts,
    BindingKind,
    Experiment,
    ExperimentResults,
    ExperimentState,
    add_conversions,
    add_exposures,
    analyse,
    check_win_probability,
    conclude,
    flag_with_winner,
    new_experiment,
    require_winner,
    route_weights_with_winner,
)
from servers.deployment.flag_feed import FlagFeed
from servers.deployment.flag_store import FlagStore
from servers.deployment.flags import check_name
from servers.deployment.flagset import flag_audit
from servers.deployment.notifications import Signals
from servers.deployment.requests import actor, check_id, check_text
from servers.deployment.routes import check_service
from servers.deployment.store import DeploymentStore
from servers.deployment.timestamps import epoch
from servers.mesh import storage
from servers.mesh.errors import FailedPrecondition, InvalidArgument, NotFound
from servers.mesh.idempotency import RequestLedger
from servers.mesh.pagination import page_request
from servers.mesh.timestamps import optional_timestamp
from shieldx.deployment.v1 import experiments_pb2, experiments_pb2_grpc

MAX_BATCH = 1000
"""Most (arm, count) pairs in one RecordExposure / RecordOutcome."""
MAX_NAME_LENGTH = 200
"""Longest experiment name."""

STATES = {
    ExperimentState.RUNNING: experiments_pb2.EXPERIMENT_STATE_RUNNING,
    ExperimentState.CONCLUDED: experiments_pb2.EXPERIMENT_STATE_CONCLUDED,
}
DECISIONS = {
    "SAMPLE_GUARD_NOT_MET": experiments_pb2.EXPERIMENT_DECISION_SAMPLE_GUARD_NOT_MET,
    "NO_WINNER_YET": experiments_pb2.EXPERIMENT_DECISION_NO_WINNER_YET,
    "VARIANT_WINS": experiments_pb2.EXPERIMENT_DECISION_VARIANT_WINS,
    "CONTROL_WINS": experiments_pb2.EXPERIMENT_DECISION_CONTROL_WINS,
}


@dataclass
class ExperimentParts:
    """What the ExperimentService needs besides its own store."""

    experiments: ExperimentStore
    """Experiments and counts."""
    flags: FlagStore
    """Flags (flag-bound experiments and winners)."""
    feed: FlagFeed
    """Refreshed after a flag winner is deployed."""
    deployments: DeploymentStore
    """Routes (route-bound experiments and winners) and active deployments."""
    signals: Signals
    """Wakes route watchers after a route winner is deployed."""
    ledger: RequestLedger
    """AIP-155 request ids."""
    clock: Callable[[], datetime]
    """The current time."""
    draws: int
    """Monte Carlo draws per arm."""


def experiment_message(experiment: Experiment) -> experiments_pb2.Experiment:
    """An experiment."""
    message = experiments_pb2.Experiment(
        id=experiment.id,
        name=experiment.name,
        control=experiment.control,
        variants=list(experiment.variants),
        min_exposures_per_arm=experiment.min_exposures_per_arm,
        win_probability=experiment.win_probability,
        state=STATES[experiment.state],
        winner=experiment.winner,
        create_time=optional_timestamp(experiment.created_at),
        conclude_time=optional_timestamp(experiment.concluded_at),
    )
    if experiment.binding is BindingKind.FLAG:
        message.flag.flag_key = experiment.target
    else:
        message.route.service = experiment.target
    return message


def results_message(experiment: Experiment, results: ExperimentResults) -> experiments_pb2.GetExperimentResultsResponse:
    """The results of an experiment, the control first."""
    return experiments_pb2.GetExperimentResultsResponse(
        experiment=experiment_message(experiment),
        arms=[
            experiments_pb2.ArmResult(
                arm=arm.arm,
                control=arm.control,
                exposures=arm.exposures,
                conversions=arm.conversions,
                posterior_mean=arm.posterior_mean,
                credible_interval_low=arm.credible_interval[0],
                credible_interval_high=arm.credible_interval[1],
                probability_to_beat_control=arm.probability_to_beat_control,
                probability_best=arm.probability_best,
                expected_loss=arm.expected_loss,
                sample_guard_met=arm.sample_guard_met,
            )
            for arm in results.arms
        ],
        decision=DECISIONS[results.decision.value],
        winner=results.winner,
        draws=results.draws,
        seed=results.seed,
    )


def _batch(entries: Any, field_name: str) -> list[tuple[str, int]]:
    if len(entries) > MAX_BATCH:
        raise InvalidArgument(field_name, f"at most {MAX_BATCH} counts per call")
    return [(entry.arm, entry.count) for entry in entries]


class ExperimentServicer(experiments_pb2_grpc.ExperimentServiceServicer):
    """The ExperimentService RPCs."""

    def __init__(self, parts: ExperimentParts) -> None:
        self.parts = parts

    async def CreateExperiment(
        self, request: experiments_pb2.CreateExperimentRequest, context: Any
    ) -> experiments_pb2.CreateExperimentResponse:
        """Create a RUNNING experiment whose arms exist in the flag or route it is bound to."""
        parts = self.parts
        binding = request.WhichOneof("binding")
        if binding is None:
            raise InvalidArgument("binding", "bind the experiment to a flag or a route")
        check_text(request.name, "name", MAX_NAME_LENGTH)

        async def work(tx: storage.Transaction) -> experiments_pb2.CreateExperimentResponse:
            kind, target, arms = await self._arms(tx, request, binding)
            experiment = new_experiment(
                experiment_id=f"exp-{uuid.uuid4().hex[:16]}",
                name=request.name,
                control=request.control,
                variants=list(request.variants),
                binding=kind,
                target=target,
                created_at=parts.clock(),
                min_exposures_per_arm=request.min_exposures_per_arm,
                win_probability=request.win_probability,
                available_arms=arms,
            )
            await parts.experiments.insert(tx, experiment)
            return experiments_pb2.CreateExperimentResponse(experiment=experiment_message(experiment))

        return await parts.ledger.execute("CreateExperiment", request, experiments_pb2.CreateExperimentResponse, work)

    async def _arms(
        self, tx: storage.Transaction, request: experiments_pb2.CreateExperimentRequest, binding: str
    ) -> tuple[BindingKind, str, set[str]]:
        """The binding, its target and the arms it offers."""
        if binding == "flag":
            key = check_name(request.flag.flag_key, "flag.flag_key")
            stored = await self.parts.flags.flag(tx, key)
            if stored is None:
                raise NotFound("flag", key, reason="FLAG_NOT_FOUND")
            return BindingKind.FLAG, key, set(stored.definition.variants)
        service = check_service(request.route.service, "route.service")
        state = await self.parts.deployments.registry.route(tx, service)
        if state is None or state.removed:
            raise NotFound("route", service, reason="ROUTE_NOT_FOUND")
        return BindingKind.ROUTE, service, {v.version for v in state.route.versions}

    async def GetExperiment(
        self, request: experiments_pb2.GetExperimentRequest, context: Any
    ) -> experiments_pb2.GetExperimentResponse:
        """One experiment."""
        check_id(request.experiment_id, "experiment_id")
        async with self.parts.experiments.database.transaction() as tx:
            experiment, _ = await self.parts.experiments.get(tx, request.experiment_id)
        return experiments_pb2.GetExperimentResponse(experiment=experiment_message(experiment))

    async def ListExperiments(
        self, request: experiments_pb2.ListExperimentsRequest, context: Any
    ) -> experiments_pb2.ListExperimentsResponse:
        """Experiments newest first."""
        state = None
        if request.state:
            state = next((s for s, wire in STATES.items() if wire == request.state), None)
            if state is None:
                raise InvalidArgument("state", f"{request.state} is not a known value")
        page = page_request(request.page_size, request.page_token, {"state": request.state})
        async with self.parts.experiments.database.transaction() as tx:
            found, more = await self.parts.experiments.list_experiments(tx, state, page)
        cursor = {"t": epoch(found[-1].created_at), "id": found[-1].id} if found and more else None
        return experiments_pb2.ListExperimentsResponse(
            experiments=[experiment_message(e) for e in found], next_page_token=page.next_token(cursor)
        )

    async def _count(
        self,
        name: str,
        request: Any,
        add: Callable[[Experiment, Mapping[str, ArmCounts], list[tuple[str, int]]], dict[str, ArmCounts]],
        entries: list[tuple[str, int]],
        response_type: type[Any],
    ) -> Any:
        parts = self.parts
        check_id(request.experiment_id, "experiment_id")

        async def work(tx: storage.Transaction) -> Any:
            experiment, revision = await parts.experiments.get(tx, request.experiment_id)
            counts = await parts.experiments.counts(tx, experiment.id)
            await parts.experiments.save_counts(tx, experiment.id, revision, add(experiment, counts, entries))
            return response_type()

        return await parts.ledger.execute(name, request, response_type, work)

    async def RecordExposure(
        self, request: experiments_pb2.RecordExposureRequest, context: Any
    ) -> experiments_pb2.RecordExposureResponse:
        """Add exposures per arm."""
        entries = _batch(request.exposures, "exposures")
        response: experiments_pb2.RecordExposureResponse = await self._count(
            "RecordExposure", request, add_exposures, entries, experiments_pb2.RecordExposureResponse
        )
        return response

    async def RecordOutcome(
        self, request: experiments_pb2.RecordOutcomeRequest, context: Any
    ) -> experiments_pb2.RecordOutcomeResponse:
        """Add conversions per arm (never more than the arm's exposures)."""
        entries = _batch(request.conversions, "conversions")
        response: experiments_pb2.RecordOutcomeResponse = await self._count(
            "RecordOutcome", request, add_conversions, entries, experiments_pb2.RecordOutcomeResponse
        )
        return response

    async def _analysed(
        self, experiment: Experiment, counts: Mapping[str, ArmCounts], win_probability: float | None = None
    ) -> ExperimentResults:
        draws = self.parts.draws
        return await asyncio.to_thread(analyse, experiment, counts, draws=draws, win_probability=win_probability)

    async def GetExperimentResults(
        self, request: experiments_pb2.GetExperimentResultsRequest, context: Any
    ) -> experiments_pb2.GetExperimentResultsResponse:
        """Posteriors per arm and the decision at the experiment's threshold."""
        check_id(request.experiment_id, "experiment_id")
        async with self.parts.experiments.database.transaction() as tx:
            experiment, _ = await self.parts.experiments.get(tx, request.experiment_id)
            counts = await self.parts.experiments.counts(tx, experiment.id)
        return results_message(experiment, await self._analysed(experiment, counts))

    async def DeployWinner(
        self, request: experiments_pb2.DeployWinnerRequest, context: Any
    ) -> experiments_pb2.DeployWinnerResponse:
        """Send everything to the winner (flag or route) and conclude; NO_WINNER while undecided."""
        parts, who = self.parts, actor()
        check_id(request.experiment_id, "experiment_id")
        threshold = (
            check_win_probability(request.win_probability, "win_probability") if request.win_probability else None
        )

        async def work(tx: storage.Transaction) -> experiments_pb2.DeployWinnerResponse:
            experiment, revision = await parts.experiments.get(tx, request.experiment_id)
            if experiment.state is ExperimentState.CONCLUDED:
                raise FailedPrecondition(f"experiment {experiment.id} is concluded", reason="EXPERIMENT_CONCLUDED")
            counts = await parts.experiments.counts(tx, experiment.id)
            winner = require_winner(await self._analysed(experiment, counts, threshold))
            deploy = self._deploy_flag if experiment.binding is BindingKind.FLAG else self._deploy_route
            await deploy(tx, experiment, winner, who)
            concluded = conclude(experiment, winner, parts.clock())
            await parts.experiments.conclude(tx, concluded, revision)
            return experiments_pb2.DeployWinnerResponse(experiment=experiment_message(concluded), winner=winner)

        response = await parts.ledger.execute("DeployWinner", request, experiments_pb2.DeployWinnerResponse, work)
        await parts.feed.refresh()
        parts.signals.routes.notify()
        return response

    async def _deploy_flag(self, tx: storage.Transaction, experiment: Experiment, winner: str, who: str) -> None:
        stored = await self.parts.flags.flag(tx, experiment.target)
        if stored is None:
            raise FailedPrecondition(f"flag {experiment.target} no longer exists", reason="FLAG_NOT_FOUND")
        definition = flag_with_winner(stored.definition, winner)
        now = self.parts.clock()
        await self.parts.flags.put_flag(tx, definition, stored, actor=who, at=now)
        comment = f"experiment {experiment.id} ({experiment.name}): winner {winner}"
        await self.parts.flags.append_audit(
            tx, flag_audit(stored.definition, definition, actor=who, at=now, comment=comment)
        )

    async def _deploy_route(self, tx: storage.Transaction, experiment: Experiment, winner: str, who: str) -> None:
        deployments = self.parts.deployments
        active = await deployments.active_deployment(tx, experiment.target)
        if active is not None:
            raise FailedPrecondition(
                f"deployment {active.id} of {experiment.target} controls its weights",
                reason="DEPLOYMENT_ACTIVE",
                metadata={"deployment_id": active.id},
            )
        state = await deployments.registry.set_weights(
            tx,
            experiment.target,
            route_weights_with_winner(winner),
            actor=who,
            cause=f"experiment {experiment.id} winner",
            at=self.parts.clock(),
            must_exist=False,
        )
        if state is None or state.removed:
            raise FailedPrecondition(f"service {experiment.target} has no route any more", reason="ROUTE_NOT_FOUND")
