"""The deployment server: DeploymentService, FlagService and ExperimentService on one store,
with the controller that drives deployments and the loop that keeps the flags current."""

from __future__ import annotations

import logging

import grpc
from flagd.evaluation.v1 import evaluation_pb2 as evaluation_v1
from flagd.evaluation.v1 import evaluation_pb2_grpc as evaluation_v1_grpc
from flagd.evaluation.v2 import evaluation_pb2 as evaluation_v2
from flagd.evaluation.v2 import evaluation_pb2_grpc as evaluation_v2_grpc
from flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from clients.channel import ChannelOptions, ChannelTls, open_channel
from servers.deployment.chaos.controller import ChaosController
from servers.deployment.chaos.metrics import ChaosMetrics
from servers.deployment.chaos.probes import GrpcHealth, TargetProbes
from servers.deployment.chaos.service import ChaosParts, ChaosServicer
from servers.deployment.chaos.store import MIGRATIONS as CHAOS_MIGRATIONS
from servers.deployment.chaos.store import ChaosStore
from servers.deployment.controller import ControllerSettings, DeliveryController
from servers.deployment.delivery import Delivery
from servers.deployment.delivery_service import DeliveryParts, DeliveryRpcs
from servers.deployment.experiment_service import ExperimentParts, ExperimentServicer
from servers.deployment.experiment_store import ExperimentStore
from servers.deployment.flag_feed import FlagFeed
from servers.deployment.flag_service import FlagServicer
from servers.deployment.flag_store import FlagStore
from servers.deployment.flagd_service import FlagdEvaluationServicer, FlagdSyncServicer
from servers.deployment.notifications import Signals
from servers.deployment.observer import PrometheusObserver, ScrapeObserver, VersionObserver
from servers.deployment.routing_service import RoutingRpcs
from servers.deployment.settings import DeploymentSettings
from servers.deployment.store import DeploymentStore
from servers.mesh.config import service_settings
from servers.mesh.idempotency import RequestLedger
from servers.mesh.server import Mount, Runtime, Service
from shieldx.deployment.v1 import (
    chaos_pb2,
    chaos_pb2_grpc,
    deployment_pb2,
    deployment_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    flags_pb2,
    flags_pb2_grpc,
)

LEDGER_DOMAIN = "shieldx.deployment.v1"

log = logging.getLogger(__name__)


class DeploymentServicer(DeliveryRpcs, RoutingRpcs, deployment_pb2_grpc.DeploymentServiceServicer):
    """DeploymentService: deployments (`DeliveryRpcs`), registry, routes and faults (`RoutingRpcs`)."""

    def __init__(self, parts: DeliveryParts) -> None:
        self.parts = parts


async def build(runtime: Runtime) -> Service:
    """The three services of the deployment server, its controller and its flag refresher."""
    settings = service_settings(DeploymentSettings, runtime.config)
    settings.check()
    database = await runtime.database("servers.deployment.migrations", CHAOS_MIGRATIONS)
    store = DeploymentStore(database)
    flag_store = FlagStore(database)
    ledger = RequestLedger(database, LEDGER_DOMAIN)
    signals = Signals()
    delivery = Delivery(store)
    feed = FlagFeed(flag_store)
    await feed.refresh()

    observer: VersionObserver
    if settings.prometheus_url:
        observer = PrometheusObserver(settings.prometheus_url, timeout=settings.scrape_timeout_seconds)
    else:
        observer = ScrapeObserver(timeout=settings.scrape_timeout_seconds)
    controller = DeliveryController(
        delivery,
        observer,
        signals,
        ControllerSettings(tick_seconds=settings.controller_tick_seconds),
        registry=runtime.registry,
    )
    parts = DeliveryParts(store, delivery, ledger, signals, settings.watch_poll_seconds, tuple(settings.metrics_hosts))
    experiments = ExperimentParts(
        experiments=ExperimentStore(database),
        flags=flag_store,
        feed=feed,
        deployments=store,
        signals=signals,
        ledger=ledger,
        clock=delivery.clock,
        draws=settings.experiment_draws,
    )
    flag_servicer = FlagServicer(flag_store, feed, ledger, delivery.clock, settings.flag_keepalive_seconds)

    async def follow_flags() -> None:
        await feed.follow_forever(settings.watch_poll_seconds)

    async def forget_request_ids() -> None:
        await ledger.purge_forever(settings.request_id_retention_seconds)

    chaos = _chaos_parts(runtime, settings, store, signals, ledger, delivery)

    mounts = [
        Mount.of(deployment_pb2, deployment_pb2_grpc, "DeploymentService", servicer=DeploymentServicer(parts)),
        Mount.of(flags_pb2, flags_pb2_grpc, "FlagService", servicer=flag_servicer),
        Mount.of(experiments_pb2, experiments_pb2_grpc, "ExperimentService", servicer=ExperimentServicer(experiments)),
        # flagd's own contracts over the same flags, for OpenFeature's flagd providers; the
        # scope is that of FlagService's Resolve RPCs.
        *(
            Mount.of(
                messages,
                stubs,
                "Service",
                FlagdEvaluationServicer(feed, settings.flag_keepalive_seconds, messages),
                foreign_scope="flags.evaluate",
            )
            for messages, stubs in ((evaluation_v1, evaluation_v1_grpc), (evaluation_v2, evaluation_v2_grpc))
        ),
        Mount.of(sync_pb2, sync_pb2_grpc, "FlagSyncService", FlagdSyncServicer(feed), foreign_scope="flags.evaluate"),
        Mount.of(chaos_pb2, chaos_pb2_grpc, "ChaosService", servicer=ChaosServicer(chaos)),
    ]
    return Service(
        mounts=mounts,
        tasks=[controller.run_forever, follow_flags, forget_request_ids, chaos.controller.run_schedules_forever],
        closers=[chaos.controller.close],
    )


def _chaos_parts(
    runtime: Runtime,
    settings: DeploymentSettings,
    store: DeploymentStore,
    signals: Signals,
    ledger: RequestLedger,
    delivery: Delivery,
) -> ChaosParts:
    tls = runtime.config.tls

    def health_channel(address: str) -> grpc.aio.Channel:
        secure = ChannelTls(tls.ca_file, tls.cert_file, tls.key_file) if tls.enabled else None
        options = ChannelOptions(tls=secure, retry=None, telemetry=False, circuit_breaker=None)
        return open_channel(address, options)

    chaos_settings = settings.chaos
    probes = TargetProbes(
        GrpcHealth(health_channel, chaos_settings.health_timeout_seconds),
        timeout=settings.scrape_timeout_seconds,
        prometheus_url=settings.prometheus_url,
    )
    chaos_store = ChaosStore(store.database)
    controller = ChaosController(
        chaos_store, store, signals, probes, chaos_settings, ChaosMetrics(runtime.registry), delivery.clock
    )
    return ChaosParts(chaos_store, store, controller, ledger, delivery.clock, settings.watch_poll_seconds)
