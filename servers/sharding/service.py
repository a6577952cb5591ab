"""The sharding server: `build(runtime)` and the ShardingService servicer.

The servicer is thin: each RPC validates its fields, calls the registry, the monitor, the
failover or the rebalance engine, and builds the response. Registry changes go through the
AIP-155 request ledger; the new topology is published to watchers once the transaction that
wrote it has committed.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from datetime import timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

from google.protobuf.message import Message
from prometheus_client import Gauge

from servers.mesh.config import ConfigError, service_settings
from servers.mesh.errors import InvalidArgument, NotFound
from servers.mesh.idempotency import RequestLedger, fingerprint, validate_request_id
from servers.mesh.leadership import leadership_for
from servers.mesh.pagination import page_request
from servers.mesh.server import Mount, Runtime, Service
from servers.mesh.storage import Transaction
from servers.mesh.timestamps import duration
from servers.sharding import wire
from servers.sharding.domain import NodeSpec, Reason, ReplicationMode, validate_priority, validate_region_id
from servers.sharding.dsn import check_dsn_hosts, validate_dsn
from servers.sharding.failover import MAX_ERROR_LENGTH
from servers.sharding.monitor import HealthMonitor, MonitorMetrics
from servers.sharding.nodes import DatabaseNodes
from servers.sharding.promotion import FailoverMetrics, Failovers, FailoverTimeouts
from servers.sharding.rebalancer import AccountMover, RebalanceMetrics, Rebalancer
from servers.sharding.recovery import DisasterRecovery, DrMetrics
from servers.sharding.registry import Change, Clock, TopologyRegistry, utc_now
from servers.sharding.ring import validate_shard_id
from servers.sharding.sealed_dsns import SealedDsns
from servers.sharding.settings import ShardingSettings
from servers.sharding.store import FailoverCursor, ShardingStore, to_us
from servers.sharding.topology import Topology
from shieldx.sharding.v1 import sharding_pb2 as pb
from shieldx.sharding.v1 import sharding_pb2_grpc

DOMAIN = "shieldx.sharding.v1"
MAX_REBALANCE_ID_LENGTH = 64
R = TypeVar("R", bound=Message)


async def build(runtime: Runtime) -> Service:
    """The sharding server as `python -m servers.sharding` runs it, with the mover `sharding.account_mover` names."""
    settings = service_settings(ShardingSettings, runtime.config)
    mover = load_mover(settings.account_mover, runtime) if settings.account_mover else None
    service = await build_service(runtime, mover=mover)
    if isinstance(mover, ClosableMover):
        service.closers.append(mover.close)
    return service


@runtime_checkable
class ClosableMover(Protocol):
    """A mover holding connections to release at shutdown."""

    async def close(self) -> None:
        """Release the mover's connections."""
        ...


def load_mover(name: str, runtime: Runtime) -> AccountMover:
    """The mover made by the factory `module:attribute` names (ConfigError if it cannot be loaded).

    Loading by name keeps the sharding server free of any mover's internals: it only knows the
    `AccountMover` contract.
    """
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"sharding.account_mover: {name!r} is not of the form module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"sharding.account_mover: cannot load {name!r}: {error}") from None
    mover: AccountMover = factory(runtime)
    return mover


async def build_service(runtime: Runtime, *, mover: AccountMover | None = None, clock: Clock = utc_now) -> Service:
    """The sharding service with an optional account mover (the credits side provides one)."""
    settings = service_settings(ShardingSettings, runtime.config)
    policy = settings.health_policy()
    database = await runtime.database("servers.sharding.migrations")
    store = ShardingStore(database, await SealedDsns.shared(await runtime.vault(database)))
    registry = TopologyRegistry(
        store, clock=clock, history=settings.watch_history, refresh_seconds=settings.topology_refresh_seconds
    )
    version = Gauge("shieldx_sharding_topology_version", "Newest published topology version", registry=runtime.registry)
    registry.on_publish(lambda topology: version.set(topology.version))
    await registry.load()
    nodes = DatabaseNodes()
    monitor = HealthMonitor(
        registry,
        nodes,
        policy,
        MonitorMetrics(runtime.registry),
        leadership=leadership_for(database, "monitor"),
        clock=clock,
    )
    failovers = Failovers(
        registry,
        store,
        monitor,
        nodes,
        FailoverMetrics(runtime.registry),
        timeouts=FailoverTimeouts(
            promote=timedelta(seconds=settings.promote_timeout_seconds),
            switchover=timedelta(seconds=settings.switchover_timeout_seconds),
        ),
        clock=clock,
    )
    monitor.on_primary_down = failovers.automatic
    recovery = DisasterRecovery(
        registry,
        store,
        monitor,
        failovers,
        nodes,
        DrMetrics(runtime.registry),
        rpo_objective=timedelta(seconds=settings.rpo_objective_seconds),
        clock=clock,
    )
    monitor.on_round = recovery.after_round
    monitor.on_writable_replica = recovery.deposed_came_back
    failovers.on_new_primary = recovery.reapply_mode
    rebalancer = Rebalancer(
        registry,
        store,
        mover,
        RebalanceMetrics(runtime.registry),
        config=settings.rebalance_config(),
        concurrency=settings.rebalance_concurrency,
        leadership=leadership_for(database, "rebalancer"),
        clock=clock,
    )
    servicer = ShardingServicer(
        registry,
        store,
        monitor,
        failovers,
        rebalancer,
        RequestLedger(database, DOMAIN),
        recovery,
        dsn_allowed_hosts=tuple(settings.dsn_allowed_hosts),
    )
    tasks: list[Callable[[], Coroutine[Any, Any, None]]] = [rebalancer.run]
    if settings.health_monitor:
        tasks.append(monitor.run)
    if settings.topology_refresh_seconds > 0:
        tasks.append(registry.follow_store)
    return Service(
        mounts=[Mount.of(pb, sharding_pb2_grpc, "ShardingService", servicer=servicer)],
        tasks=tasks,
        draining=[registry.close_watches],
    )


class ShardingServicer(sharding_pb2_grpc.ShardingServiceServicer):
    """ShardingService over the registry, the health monitor, failovers and the rebalance engine."""

    def __init__(
        self,
        registry: TopologyRegistry,
        store: ShardingStore,
        monitor: HealthMonitor,
        failovers: Failovers,
        rebalancer: Rebalancer,
        ledger: RequestLedger,
        recovery: DisasterRecovery,
        *,
        dsn_allowed_hosts: Collection[str] = (),
    ) -> None:
        self.registry = registry
        self.dsn_allowed_hosts = dsn_allowed_hosts
        self.store = store
        self.monitor = monitor
        self.failovers = failovers
        self.rebalancer = rebalancer
        self.ledger = ledger
        self.recovery = recovery

    # Location and the ring

    async def LocateKeys(self, request: pb.LocateKeysRequest, context: Any) -> pb.LocateKeysResponse:
        if not request.keys:
            raise InvalidArgument("keys", "must name at least one key")
        topology = self.registry.current
        return wire.locate_response(topology, topology.locate_many(request.keys))

    async def GetRingStats(self, request: pb.GetRingStatsRequest, context: Any) -> pb.GetRingStatsResponse:
        topology = self.registry.current
        ring = topology.target_ring if request.target_ring else topology.ring
        return wire.ring_stats_message(ring.stats(), topology.version)

    # The registry

    async def RegisterShard(self, request: pb.RegisterShardRequest, context: Any) -> pb.RegisterShardResponse:
        shard_id = request.shard_id
        primary = self._checked_node(request.primary, "primary")
        replicas = [self._checked_node(r, f"replicas[{i}]") for i, r in enumerate(request.replicas)]
        weight = request.weight or 1.0

        def respond(topology: Topology) -> pb.RegisterShardResponse:
            return pb.RegisterShardResponse(
                shard=wire.shard_message(topology.shard(shard_id)), topology_version=topology.version
            )

        response = await self._change(
            "RegisterShard",
            request,
            pb.RegisterShardResponse,
            lambda t: t.register_shard(shard_id, primary, replicas, weight=weight, now=self.registry.clock()),
            respond,
        )
        self.monitor.kick()
        return response

    def _checked_node(self, message: pb.NodeSpec, prefix: str) -> NodeSpec:
        """The node of a request, its DSN refused here (before the registry or the monitor could
        connect) if it sets other libpq parameters or names a link-local or metadata host."""
        node = wire.node_spec(message)
        validate_dsn(node.dsn, f"{prefix}.dsn")
        check_dsn_hosts(node.dsn, f"{prefix}.dsn", self.dsn_allowed_hosts)
        return node

    async def RemoveShard(self, request: pb.RemoveShardRequest, context: Any) -> pb.RemoveShardResponse:
        shard_id = request.shard_id
        validate_shard_id(shard_id)

        def respond(topology: Topology) -> pb.RemoveShardResponse:
            remaining = [s for s in topology.shards if s.shard_id == shard_id]
            if not remaining:
                return pb.RemoveShardResponse(removed=True, topology_version=topology.version)
            return pb.RemoveShardResponse(
                removed=False, shard=wire.shard_message(remaining[0]), topology_version=topology.version
            )

        return await self._change(
            "RemoveShard",
            request,
            pb.RemoveShardResponse,
            lambda t: t.remove_shard(shard_id, now=self.registry.clock()),
            respond,
        )

    async def AddReplica(self, request: pb.AddReplicaRequest, context: Any) -> pb.AddReplicaResponse:
        shard_id = request.shard_id
        validate_shard_id(shard_id)
        replica = self._checked_node(request.replica, "replica")

        def respond(topology: Topology) -> pb.AddReplicaResponse:
            return pb.AddReplicaResponse(
                shard=wire.shard_message(topology.shard(shard_id)), topology_version=topology.version
            )

        response = await self._change(
            "AddReplica",
            request,
            pb.AddReplicaResponse,
            lambda t: t.add_replica(shard_id, replica, now=self.registry.clock()),
            respond,
        )
        self.monitor.kick()
        return response

    async def RemoveReplica(self, request: pb.RemoveReplicaRequest, context: Any) -> pb.RemoveReplicaResponse:
        shard_id, node_id = request.shard_id, request.node_id
        validate_shard_id(shard_id)
        validate_shard_id(node_id, "node_id")

        def respond(topology: Topology) -> pb.RemoveReplicaResponse:
            return pb.RemoveReplicaResponse(
                shard=wire.shard_message(topology.shard(shard_id)), topology_version=topology.version
            )

        return await self._change(
            "RemoveReplica",
            request,
            pb.RemoveReplicaResponse,
            lambda t: t.remove_replica(shard_id, node_id, now=self.registry.clock()),
            respond,
        )

    async def ListShards(self, request: pb.ListShardsRequest, context: Any) -> pb.ListShardsResponse:
        page = page_request(request.page_size, request.page_token)
        after = _cursor_text(page.cursor, "shard_id")
        topology = self.registry.current
        shards = [s for s in topology.shards if s.shard_id > after][: page.size + 1]
        more = len(shards) > page.size
        shown = shards[: page.size]
        return pb.ListShardsResponse(
            shards=[wire.shard_message(s) for s in shown],
            next_page_token=page.next_token({"shard_id": shown[-1].shard_id} if more else None),
            topology_version=topology.version,
        )

    async def GetShard(self, request: pb.GetShardRequest, context: Any) -> pb.GetShardResponse:
        validate_shard_id(request.shard_id)
        topology = self.registry.current
        return pb.GetShardResponse(
            shard=wire.shard_message(topology.shard(request.shard_id)), topology_version=topology.version
        )

    async def WatchTopology(
        self, request: pb.WatchTopologyRequest, context: Any
    ) -> AsyncIterator[pb.WatchTopologyResponse]:
        if request.after_version < 0:
            raise InvalidArgument("after_version", "must not be negative")
        async for topology in self.registry.watch(request.after_version):
            yield pb.WatchTopologyResponse(topology=wire.topology_message(topology))

    # Health and failover

    async def GetShardHealth(self, request: pb.GetShardHealthRequest, context: Any) -> pb.GetShardHealthResponse:
        validate_shard_id(request.shard_id)
        shard = self.registry.current.shard(request.shard_id)
        policy = self.monitor.policy
        return pb.GetShardHealthResponse(
            shard_id=shard.shard_id,
            nodes=[wire.node_health_message(node, self.monitor.health(node)) for node in shard.nodes],
            check_interval=duration(policy.check_interval),
            failure_threshold=policy.failure_threshold,
        )

    async def Failover(self, request: pb.FailoverRequest, context: Any) -> pb.FailoverResponse:
        shard_id, target, reason = request.shard_id, request.target_node_id, request.reason
        validate_shard_id(shard_id)
        if target:
            validate_shard_id(target, "target_node_id")
        if len(reason) > MAX_ERROR_LENGTH:
            raise InvalidArgument("reason", f"must be at most {MAX_ERROR_LENGTH} characters")
        requested_at = self.registry.clock()
        done: list[Any] = []

        async def work(tx: Transaction) -> pb.FailoverResponse:
            done.clear()
            topology, record = await self.failovers.manual(tx, shard_id, target, reason, requested_at)
            done.append((topology, record))
            return pb.FailoverResponse(failover=wire.failover_message(record))

        response = await self.ledger.execute("Failover", request, pb.FailoverResponse, work)
        if done:
            await self.failovers.completed(*done[-1])
        return response

    async def ListFailovers(self, request: pb.ListFailoversRequest, context: Any) -> pb.ListFailoversResponse:
        shard_id = request.shard_id
        if shard_id:
            validate_shard_id(shard_id)
        page = page_request(request.page_size, request.page_token, {"shard_id": shard_id})
        after = None
        if page.cursor is not None:
            completed_us, failover_id = page.cursor.get("completed_us"), page.cursor.get("failover_id")
            if not isinstance(completed_us, int) or not isinstance(failover_id, str):
                raise InvalidArgument("page_token", "is not a token this service issued")
            after = FailoverCursor(completed_us, failover_id)
        records = await self.store.list_failovers(shard_id=shard_id, after=after, limit=page.size + 1)
        shown = records[: page.size]
        cursor = None
        if len(records) > page.size:
            cursor = {"completed_us": to_us(shown[-1].completed_at), "failover_id": shown[-1].failover_id}
        return pb.ListFailoversResponse(
            failovers=[wire.failover_message(r) for r in shown], next_page_token=page.next_token(cursor)
        )

    # Regions and disaster recovery

    async def PutRegion(self, request: pb.PutRegionRequest, context: Any) -> pb.PutRegionResponse:
        region_id, priority = request.region_id, request.priority
        validate_region_id(region_id, "region_id")
        validate_priority(priority)

        def respond(topology: Topology) -> pb.PutRegionResponse:
            region = topology.region(region_id)
            return pb.PutRegionResponse(region=wire.region_message(region), topology_version=topology.version)

        return await self._change(
            "PutRegion", request, pb.PutRegionResponse,
            lambda t: t.put_region(region_id, priority, now=self.registry.clock()), respond,
        )  # fmt: skip

    async def SetShardPlacement(
        self, request: pb.SetShardPlacementRequest, context: Any
    ) -> pb.SetShardPlacementResponse:
        shard_id, region_id = request.shard_id, request.preferred_region
        validate_shard_id(shard_id)
        if region_id:
            validate_region_id(region_id, "preferred_region")

        def respond(topology: Topology) -> pb.SetShardPlacementResponse:
            return pb.SetShardPlacementResponse(
                shard=wire.shard_message(topology.shard(shard_id)), topology_version=topology.version
            )

        return await self._change(
            "SetShardPlacement", request, pb.SetShardPlacementResponse,
            lambda t: t.place_shard(shard_id, region_id, now=self.registry.clock()), respond,
        )  # fmt: skip

    async def SetReplicationMode(
        self, request: pb.SetReplicationModeRequest, context: Any
    ) -> pb.SetReplicationModeResponse:
        shard_id = request.shard_id
        validate_shard_id(shard_id)
        modes = {v: k for k, v in wire.REPLICATION_MODES.items() if k is not ReplicationMode.UNMANAGED}
        if request.mode not in modes:
            raise InvalidArgument("mode", "must be SYNCHRONOUS, SEMI_SYNCHRONOUS or ASYNCHRONOUS")
        mode = modes[request.mode]
        replay = await self._replayed("SetReplicationMode", request, pb.SetReplicationModeResponse)
        if replay is not None:
            return replay
        names = await self.recovery.set_mode(shard_id, mode)

        def respond(topology: Topology) -> pb.SetReplicationModeResponse:
            return pb.SetReplicationModeResponse(
                shard=wire.shard_message(topology.shard(shard_id)),
                topology_version=topology.version,
                synchronous_standby_names=names,
            )

        return await self._change(
            "SetReplicationMode", request, pb.SetReplicationModeResponse,
            lambda t: t.with_replication_mode(shard_id, mode, now=self.registry.clock()), respond,
        )  # fmt: skip

    async def FailoverRegion(self, request: pb.FailoverRegionRequest, context: Any) -> pb.FailoverRegionResponse:
        region_id, target = request.region_id, request.target_region_id
        validate_region_id(region_id, "region_id")
        if target:
            validate_region_id(target, "target_region_id")
        if len(request.reason) > MAX_ERROR_LENGTH:
            raise InvalidArgument("reason", f"must be at most {MAX_ERROR_LENGTH} characters")
        replay = await self._replayed("FailoverRegion", request, pb.FailoverRegionResponse)
        if replay is not None:
            return replay
        record = await self.recovery.fail_over_region(
            region_id, target_region_id=target, planned=request.planned, reason=request.reason
        )
        response = pb.FailoverRegionResponse(region_failover=wire.region_failover_message(record))

        async def work(tx: Transaction) -> pb.FailoverRegionResponse:
            return response

        return await self.ledger.execute("FailoverRegion", request, pb.FailoverRegionResponse, work)

    async def GetDrStatus(self, request: pb.GetDrStatusRequest, context: Any) -> pb.GetDrStatusResponse:
        topology = self.registry.current
        readings = self.recovery.shard_readings()
        scores = self.recovery.region_scores(readings)
        recent = await self.store.recent_region_failovers()
        message = wire.dr_status_message(topology, readings, scores, recent, self.recovery.rpo_objective)
        message.recent_divergences.extend(wire.divergence_message(d) for d in await self.store.recent_divergences())
        return message

    # Rebalancing

    async def PlanRebalance(self, request: pb.PlanRebalanceRequest, context: Any) -> pb.PlanRebalanceResponse:
        topology = self.registry.current
        page = page_request(request.page_size, request.page_token, {"topology_version": topology.version})
        after = _cursor_text(page.cursor, "account_id")
        plan = await self.rebalancer.plan(topology)
        moves = [m for m in plan.moves if m.account_id > after][: page.size + 1]
        shown = moves[: page.size]
        return pb.PlanRebalanceResponse(
            topology_version=topology.version,
            serving_shard_ids=list(topology.ring.shard_ids),
            target_shard_ids=list(topology.target_ring.shard_ids),
            total_accounts=plan.total_accounts,
            moving_accounts=len(plan.moves),
            moved_fraction=plan.moved_fraction,
            expected_moved_fraction=plan.expected_moved_fraction,
            flows=[
                pb.AccountFlow(source_shard_id=source, target_shard_id=target, accounts=count)
                for (source, target), count in plan.flows().items()
            ],
            moves=[wire.move_message(m) for m in shown],
            next_page_token=page.next_token({"account_id": shown[-1].account_id} if len(moves) > page.size else None),
        )

    async def StartRebalance(self, request: pb.StartRebalanceRequest, context: Any) -> pb.StartRebalanceResponse:
        self.rebalancer.require_mover()
        topology = self.registry.current
        running = topology.migration.rebalance_id if topology.migration else None
        plan = None if running else await self.rebalancer.plan(topology)
        published: list[Topology] = []

        async def work(tx: Transaction) -> pb.StartRebalanceResponse:
            published.clear()
            if plan is None:
                assert running is not None
                rebalance_id = await self.rebalancer.resume(tx, running)
            else:
                started, rebalance_id = await self.rebalancer.start(tx, plan, topology)
                published.append(started)
            summary = await self.store.rebalance_summary(rebalance_id, tx)
            assert summary is not None
            return pb.StartRebalanceResponse(rebalance=wire.rebalance_message(summary))

        response = await self.ledger.execute("StartRebalance", request, pb.StartRebalanceResponse, work)
        if published:
            await self.registry.publish(published[-1])
        self.rebalancer.kick()
        return response

    async def GetRebalanceStatus(
        self, request: pb.GetRebalanceStatusRequest, context: Any
    ) -> pb.GetRebalanceStatusResponse:
        rebalance_id = request.rebalance_id
        if len(rebalance_id) > MAX_REBALANCE_ID_LENGTH or not rebalance_id.isprintable():
            raise InvalidArgument("rebalance_id", f"must be at most {MAX_REBALANCE_ID_LENGTH} printable characters")
        if not rebalance_id:
            routing = self.registry.current.migration
            rebalance_id = routing.rebalance_id if routing else (await self.store.latest_rebalance_id() or "")
        summary = await self.store.rebalance_summary(rebalance_id) if rebalance_id else None
        if summary is None:
            raise NotFound("rebalance", rebalance_id or "(latest)", reason=Reason.REBALANCE_NOT_FOUND)
        return pb.GetRebalanceStatusResponse(rebalance=wire.rebalance_message(summary))

    # Plumbing

    async def _replayed(self, method: str, request: Message, response_type: type[R]) -> R | None:
        """The recorded answer of a retried request whose work acts on databases before it is recorded."""
        request_id: str = getattr(request, "request_id", "")
        if not request_id:
            return None
        validate_request_id(request_id)
        return await self.ledger.replay(request_id, fingerprint(method, request), response_type)

    async def _change(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        change: Change,
        respond: Callable[[Topology], R],
    ) -> R:
        """Apply a registry change idempotently (by request_id) and publish it after commit."""
        written: list[Topology] = []

        async def work(tx: Transaction) -> R:
            written.clear()
            topology = await self.registry.apply(tx, change)
            written.append(topology)
            return respond(topology)

        response = await self.ledger.execute(method, request, response_type, work)
        if written:
            await self.registry.publish(written[-1])
        return response


def _cursor_text(cursor: Any, key: str) -> str:
    """A string position from a page cursor ("" on the first page)."""
    if cursor is None:
        return ""
    value = cursor.get(key)
    if not isinstance(value, str):
        raise InvalidArgument("page_token", "is not a token this service issued")
    return value
