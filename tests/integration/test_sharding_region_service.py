"""Regions, placements and replication modes over the sharding service: stored on both backends,
streamed to followers, refused with nothing changed on bad input, and applied to real PostgreSQL
primaries (`synchronous_standby_names`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from servers.mesh.config import MeshConfig
from shieldx.sharding.v1 import sharding_pb2 as pb
from tests.conftest import StartService, stop_service
from tests.integration.test_sharding_service import expect, monitored, register, sharding_config, start
from tests.support.pgcluster import PgWorkspace
from tests.support.polling import eventually


def config(tmp_path: Path, store_config: dict[str, str], **settings: object) -> MeshConfig:
    return sharding_config(tmp_path, store_config, **settings)


async def test_regions_and_placements_are_stored_streamed_and_survive_a_restart(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    running, client = await start(start_service, config(tmp_path, store_config))
    await client.register_shard(register("shard-a", replicas=1))
    east = await client.put_region(pb.PutRegionRequest(region_id="eu-west-1", priority=1, request_id="r-1"))
    assert east.region == pb.Region(region_id="eu-west-1", priority=1, state=pb.REGION_STATE_ACTIVE)
    assert await client.put_region(pb.PutRegionRequest(region_id="eu-west-1", priority=1, request_id="r-1")) == east
    await client.put_region(pb.PutRegionRequest(region_id="us-east-1", priority=2))
    placed = await client.set_shard_placement(
        pb.SetShardPlacementRequest(shard_id="shard-a", preferred_region="eu-west-1")
    )
    assert placed.shard.preferred_region == "eu-west-1"
    assert placed.shard.replication_mode == pb.REPLICATION_MODE_UNSPECIFIED, "not managed until set"
    await stop_service(running)

    _, client = await start(start_service, config(tmp_path, store_config))
    first = await anext(aiter(client.watch_topology(pb.WatchTopologyRequest())))
    assert [(r.region_id, r.priority, r.state) for r in first.topology.regions] == [
        ("eu-west-1", 1, pb.REGION_STATE_ACTIVE),
        ("us-east-1", 2, pb.REGION_STATE_ACTIVE),
    ]
    assert first.topology.shards[0].preferred_region == "eu-west-1"
    status = await client.get_dr_status(pb.GetDrStatusRequest())
    assert [r.region.region_id for r in status.regions] == ["eu-west-1", "us-east-1"]
    assert status.regions[0].nodes == 2 and status.regions[0].primaries == 1
    assert status.rpo_objective.ToTimedelta().total_seconds() == 60


async def test_bad_region_requests_are_refused_and_change_nothing(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    _, client = await start(start_service, config(tmp_path, store_config))
    await client.register_shard(register("shard-a", replicas=1))  # nodes in eu-west-1, unreachable
    await client.register_shard(register("shard-b"))
    await client.put_region(pb.PutRegionRequest(region_id="eu-west-1", priority=1))
    await client.put_region(pb.PutRegionRequest(region_id="us-east-1", priority=2))
    before = await anext(aiter(client.watch_topology(pb.WatchTopologyRequest())))

    BAD, UNMET, MISSING = (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
    )
    refusals = [
        (client.put_region(pb.PutRegionRequest(region_id="EU West", priority=1)), BAD, "INVALID_ARGUMENT", "region_id"),
        (client.put_region(pb.PutRegionRequest(region_id="ap-1", priority=0)), BAD, "INVALID_ARGUMENT", "priority"),
        (
            client.set_shard_placement(pb.SetShardPlacementRequest(shard_id="shard-a", preferred_region="mars-1")),
            UNMET, "UNKNOWN_REGION", None,
        ),
        (
            client.set_shard_placement(pb.SetShardPlacementRequest(shard_id="shard-z", preferred_region="eu-west-1")),
            MISSING, "SHARD_NOT_FOUND", None,
        ),
        (
            client.set_replication_mode(pb.SetReplicationModeRequest(shard_id="shard-a")),
            BAD, "INVALID_ARGUMENT", "mode",
        ),
        (
            client.set_replication_mode(
                pb.SetReplicationModeRequest(shard_id="shard-b", mode=pb.REPLICATION_MODE_ASYNCHRONOUS)
            ),
            UNMET, "NO_REPLICAS", None,
        ),
        (client.failover_region(pb.FailoverRegionRequest(region_id="mars-1")), UNMET, "UNKNOWN_REGION", None),
        (client.failover_region(pb.FailoverRegionRequest(region_id="Mars")), BAD, "INVALID_ARGUMENT", "region_id"),
        (
            client.failover_region(pb.FailoverRegionRequest(region_id="eu-west-1", target_region_id="eu-west-1")),
            BAD, "SAME_REGION", "target_region_id",
        ),
        (client.failover_region(pb.FailoverRegionRequest(region_id="us-east-1")), UNMET, "NO_PRIMARY_IN_REGION", None),
        (client.failover_region(pb.FailoverRegionRequest(region_id="eu-west-1")), UNMET, "NO_HEALTHY_REPLICA", None),
        (
            client.failover_region(pb.FailoverRegionRequest(region_id="eu-west-1", reason="x" * 501)),
            BAD, "INVALID_ARGUMENT", "reason",
        ),
    ]  # fmt: skip
    for call, code, reason, field in refusals:
        async with expect(code, reason, field):
            await call

    after = await anext(aiter(client.watch_topology(pb.WatchTopologyRequest())))
    assert after.topology == before.topology, "no refused request changed the topology"
    status = await client.get_dr_status(pb.GetDrStatusRequest())
    assert not status.recent_region_failovers


async def test_replication_modes_are_applied_to_the_primary_and_reported(
    store_config: dict[str, str], pg: PgWorkspace, start_service: StartService, tmp_path: Path
) -> None:
    primary = await asyncio.to_thread(pg.primary, "ma-p")
    local = await asyncio.to_thread(pg.replica, primary, "ma-r1")
    remote = await asyncio.to_thread(pg.replica, primary, "ma-r2")
    _, client = await start(
        start_service, config(tmp_path, store_config, **monitored(health_check_interval_seconds=0.3))
    )
    await client.put_region(pb.PutRegionRequest(region_id="east", priority=1))
    await client.put_region(pb.PutRegionRequest(region_id="west", priority=2))
    await client.register_shard(
        pb.RegisterShardRequest(
            shard_id="shard-m",
            primary=pb.NodeSpec(node_id="ma-p", dsn=primary.dsn, region="east"),
            replicas=[
                pb.NodeSpec(node_id="ma-r1", dsn=local.dsn, region="east"),
                pb.NodeSpec(node_id="ma-r2", dsn=remote.dsn, region="west"),
            ],
        )
    )
    expected = {
        pb.REPLICATION_MODE_SYNCHRONOUS: ('ANY 2 ("ma-r1", "ma-r2")', {"ma-r1": "quorum", "ma-r2": "quorum"}),
        pb.REPLICATION_MODE_SEMI_SYNCHRONOUS: ('ANY 1 ("ma-r1")', {"ma-r1": "quorum", "ma-r2": "async"}),
        pb.REPLICATION_MODE_ASYNCHRONOUS: ("", {"ma-r1": "async", "ma-r2": "async"}),
    }
    for mode, (names, sync_states) in expected.items():
        done = await client.set_replication_mode(pb.SetReplicationModeRequest(shard_id="shard-m", mode=mode))
        assert done.synchronous_standby_names == names
        assert done.shard.replication_mode == mode
        assert await asyncio.to_thread(primary.value, "SHOW synchronous_standby_names") == names

        def replication_matches(wanted: dict[str, str] = sync_states) -> bool:
            return {name: sync for name, (_, sync) in primary.replication().items()} == wanted

        await eventually(lambda: asyncio.to_thread(replication_matches))

    async def reported() -> bool:
        status = await client.get_dr_status(pb.GetDrStatusRequest())
        (shard,) = status.shards
        return (
            shard.replication_mode == pb.REPLICATION_MODE_ASYNCHRONOUS
            and shard.HasField("cross_region_lag_bytes")
            and shard.HasField("promised_rpo")
            and shard.health_score == 1.0
        )

    await eventually(reported)
    status = await client.get_dr_status(pb.GetDrStatusRequest())
    assert [(n.node_id, n.region) for n in status.shards[0].nodes] == [
        ("ma-p", "east"),
        ("ma-r1", "east"),
        ("ma-r2", "west"),
    ]
    assert not status.shards[0].rpo_objective_breached
