"""Typed client of `shieldx.sharding.v1.ShardingService`."""

from __future__ import annotations

from clients.rpc import ServerStream, ServiceClient, Unary
from shieldx.sharding.v1 import sharding_pb2 as pb


class ShardingClient(ServiceClient):
    """The sharding control plane: key location, shard registry, topology stream, failover, rebalance, regions, DR."""

    service = "shieldx.sharding.v1.ShardingService"

    locate_keys = Unary("LocateKeys", pb.LocateKeysRequest, pb.LocateKeysResponse)
    get_ring_stats = Unary("GetRingStats", pb.GetRingStatsRequest, pb.GetRingStatsResponse)
    register_shard = Unary("RegisterShard", pb.RegisterShardRequest, pb.RegisterShardResponse)
    remove_shard = Unary("RemoveShard", pb.RemoveShardRequest, pb.RemoveShardResponse)
    add_replica = Unary("AddReplica", pb.AddReplicaRequest, pb.AddReplicaResponse)
    remove_replica = Unary("RemoveReplica", pb.RemoveReplicaRequest, pb.RemoveReplicaResponse)
    list_shards = Unary("ListShards", pb.ListShardsRequest, pb.ListShardsResponse)
    get_shard = Unary("GetShard", pb.GetShardRequest, pb.GetShardResponse)
    watch_topology = ServerStream("WatchTopology", pb.WatchTopologyRequest, pb.WatchTopologyResponse)
    failover = Unary("Failover", pb.FailoverRequest, pb.FailoverResponse)
    list_failovers = Unary("ListFailovers", pb.ListFailoversRequest, pb.ListFailoversResponse)
    plan_rebalance = Unary("PlanRebalance", pb.PlanRebalanceRequest, pb.PlanRebalanceResponse)
    start_rebalance = Unary("StartRebalance", pb.StartRebalanceRequest, pb.StartRebalanceResponse)
    get_rebalance_status = Unary("GetRebalanceStatus", pb.GetRebalanceStatusRequest, pb.GetRebalanceStatusResponse)
    get_shard_health = Unary("GetShardHealth", pb.GetShardHealthRequest, pb.GetShardHealthResponse)
    put_region = Unary("PutRegion", pb.PutRegionRequest, pb.PutRegionResponse)
    set_shard_placement = Unary("SetShardPlacement", pb.SetShardPlacementRequest, pb.SetShardPlacementResponse)
    set_replication_mode = Unary("SetReplicationMode", pb.SetReplicationModeRequest, pb.SetReplicationModeResponse)
    failover_region = Unary("FailoverRegion", pb.FailoverRegionRequest, pb.FailoverRegionResponse)
    get_dr_status = Unary("GetDrStatus", pb.GetDrStatusRequest, pb.GetDrStatusResponse)
