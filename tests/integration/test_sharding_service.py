"""The sharding service on a real in-process server, its registry on SQLite and on PostgreSQL:
every RPC, idempotency, restarts, the topology stream and its resume, health checks against
real PostgreSQL servers, a manual switchover on a throwaway primary/replica pair, the rebalance
engine driving a mover, auth scopes and fuzzing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import grpc
import psycopg
import pytest

from clients.errors import ShieldxError
from clients.sharding import ShardingClient
from servers.mesh.config import MeshConfig
from servers.mesh.server import Runtime, Service
from servers.mesh.storage import open_database
from servers.sharding.domain import Shard
from servers.sharding.failover import FailoverRecord, FailoverTrigger
from servers.sharding.follower import TopologyFollower
from servers.sharding.rebalance import AccountMove
from servers.sharding.ring import HashRing, RingMember
from servers.sharding.routing import ReadPolicy, RoutingConfig
from servers.sharding.service import build, build_service
from servers.sharding.store import FailoverCursor, ShardingStore, to_us
from shieldx.sharding.v1 import sharding_pb2 as pb
from tests.conftest import POSTGRES_URL, Running, StartService, stop_service, test_config
from tests.support import rawstore
from tests.support.fuzz import fuzz_service
from tests.support.pgcluster import PgWorkspace
from tests.support.polling import eventually, wait_until
from tests.support.shardedmesh import register as register_cluster
from tests.support.tokens import TestAuthority

DEAD_PORT_DSN = "postgresql://credits:s3cret@127.0.0.1:1/credits"


def sharding_config(tmp_path: Path, store_config: dict[str, str], **settings: Any) -> MeshConfig:
    """A sharding config on the given store. The health monitor is off unless asked for, so the
    registry tests see only the versions they make (their nodes are unreachable on purpose)."""
    return test_config(tmp_path, service="sharding", settings={"health_monitor": False, **settings}, **store_config)


def monitored(**settings: Any) -> dict[str, Any]:
    """Settings with the health monitor on, checking every 0.25 s."""
    return {"health_monitor": True, "health_check_interval_seconds": 0.25, **settings}


def spec(node_id: str, dsn: str = DEAD_PORT_DSN) -> pb.NodeSpec:
    return pb.NodeSpec(node_id=node_id, dsn=dsn, region="eu-west-1")


def register(shard_id: str, replicas: int = 0, request_id: str = "") -> pb.RegisterShardRequest:
    return pb.RegisterShardRequest(
        shard_id=shard_id,
        primary=spec(f"{shard_id}-p"),
        replicas=[spec(f"{shard_id}-r{i + 1}") for i in range(replicas)],
        request_id=request_id,
    )


@contextlib.asynccontextmanager
async def expect(code: grpc.StatusCode, reason: str, field: str | None = None) -> AsyncIterator[None]:
    with pytest.raises(ShieldxError) as caught:
        yield
    assert caught.value.code == code, caught.value
    assert caught.value.reason == reason, caught.value
    if field is not None:
        assert field in caught.value.field_violations, caught.value.field_violations


async def start(start_service: StartService, config: MeshConfig, **kwargs: Any) -> tuple[Running, ShardingClient]:
    running = await start_service(build, config, **kwargs)
    return running, ShardingClient(running.channel)


# --------------------------------------------------------------------------- registry


async def test_shards_register_join_and_leave_with_redacted_dsns(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    _, client = await start(start_service, sharding_config(tmp_path, store_config))
    first = await client.register_shard(register("shard-a", replicas=1))
    assert first.shard.state == pb.SHARD_STATE_ACTIVE, "the first shard serves at once"
    assert first.topology_version == 1
    primary = first.shard.nodes[0]
    assert primary.role == pb.NODE_ROLE_PRIMARY
    assert primary.dsn == "postgresql://credits:***@127.0.0.1:1/credits"
    assert primary.endpoint == "127.0.0.1:1/credits"
    assert [n.node_id for n in first.shard.nodes] == ["shard-a-p", "shard-a-r1"]

    second = await client.register_shard(register("shard-b"))
    assert second.shard.state == pb.SHARD_STATE_JOINING, "later shards join through a rebalance"
    assert second.topology_version == 2

    fetched = await client.get_shard(pb.GetShardRequest(shard_id="shard-a"))
    assert "s3cret" not in str(fetched)
    added = await client.add_replica(pb.AddReplicaRequest(shard_id="shard-a", replica=spec("shard-a-r2")))
    assert [n.node_id for n in added.shard.nodes] == ["shard-a-p", "shard-a-r1", "shard-a-r2"]
    trimmed = await client.remove_replica(pb.RemoveReplicaRequest(shard_id="shard-a", node_id="shard-a-r1"))
    assert [n.node_id for n in trimmed.shard.nodes] == ["shard-a-p", "shard-a-r2"]

    gone = await client.remove_shard(pb.RemoveShardRequest(shard_id="shard-b"))
    assert gone.removed and not gone.HasField("shard"), "a joining shard leaves at once"
    await client.register_shard(register("shard-c"))
    leaving = await client.remove_shard(pb.RemoveShardRequest(shard_id="shard-a"))
    assert not leaving.removed
    assert leaving.shard.state == pb.SHARD_STATE_LEAVING, "an active shard leaves through a rebalance"
    listed = await client.list_shards(pb.ListShardsRequest())
    assert [s.shard_id for s in listed.shards] == ["shard-a", "shard-c"]
    assert listed.topology_version == leaving.topology_version == 7


async def test_shard_passwords_are_sealed_at_rest(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    config = sharding_config(tmp_path, store_config)
    running, client = await start(start_service, config)
    await client.register_shard(register("shard-a", replicas=1))
    await client.add_replica(pb.AddReplicaRequest(shard_id="shard-a", replica=spec("shard-a-r2")))
    assert b"s3cret" not in rawstore.stored_bytes(config, "sharding"), "no shard password in the store or its WAL"
    await stop_service(running)
    _, restarted = await start(start_service, config)
    shard = (await restarted.get_shard(pb.GetShardRequest(shard_id="shard-a"))).shard
    assert [n.dsn for n in shard.nodes] == ["postgresql://credits:***@127.0.0.1:1/credits"] * 3, "and it reads back"


async def test_link_local_hosts_and_file_parameters_are_refused_before_the_monitor_sees_them(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    # The monitor runs (checking every 0.25 s), so a node that reached the registry would be
    # connected to; these refusals happen at validation and nothing is registered.
    _, client = await start(start_service, sharding_config(tmp_path, store_config, **monitored()))
    metadata = "postgresql://u:s3cret@169.254.169.254:5432/credits"
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "DSN_HOST_NOT_ALLOWED", "primary.dsn"):
        await client.register_shard(pb.RegisterShardRequest(shard_id="shard-m", primary=spec("m-p", metadata)))
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "DSN_HOST_NOT_ALLOWED", "replicas[0].dsn"):
        await client.register_shard(
            pb.RegisterShardRequest(shard_id="shard-m", primary=spec("m-p"), replicas=[spec("m-r1", metadata)])
        )
    shadow = "host=127.0.0.1 port=1 dbname=credits sslkey=/etc/shadow"
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "DSN_PARAMETER_NOT_ALLOWED", "primary.dsn"):
        await client.register_shard(pb.RegisterShardRequest(shard_id="shard-m", primary=spec("m-p", shadow)))
    assert not (await client.list_shards(pb.ListShardsRequest())).shards

    await client.register_shard(register("shard-a"))
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "DSN_HOST_NOT_ALLOWED", "replica.dsn"):
        await client.add_replica(
            pb.AddReplicaRequest(shard_id="shard-a", replica=spec("a-r1", "host=fe80::1 dbname=credits"))
        )
    (shard,) = (await client.list_shards(pb.ListShardsRequest())).shards
    assert [n.node_id for n in shard.nodes] == ["shard-a-p"]


async def test_registry_errors_name_the_field_or_the_reason(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    _, client = await start(start_service, sharding_config(tmp_path, store_config))
    await client.register_shard(register("shard-a", replicas=1))
    async with expect(grpc.StatusCode.ALREADY_EXISTS, "SHARD_EXISTS"):
        await client.register_shard(register("shard-a"))
    async with expect(grpc.StatusCode.ALREADY_EXISTS, "NODE_EXISTS"):
        await client.register_shard(pb.RegisterShardRequest(shard_id="shard-b", primary=spec("shard-a-r1")))
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "shard_id"):
        await client.register_shard(pb.RegisterShardRequest(shard_id="Shard A", primary=spec("x-p")))
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "primary.dsn"):
        await client.register_shard(pb.RegisterShardRequest(shard_id="shard-b", primary=spec("b-p", dsn="mysql://x")))
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "replicas[1].node_id"):
        await client.register_shard(
            pb.RegisterShardRequest(shard_id="shard-b", primary=spec("b-p"), replicas=[spec("b-r1"), spec("")])
        )
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "weight"):
        await client.register_shard(pb.RegisterShardRequest(shard_id="shard-b", primary=spec("b-p"), weight=-2))
    async with expect(grpc.StatusCode.FAILED_PRECONDITION, "CANNOT_REMOVE_PRIMARY"):
        await client.remove_replica(pb.RemoveReplicaRequest(shard_id="shard-a", node_id="shard-a-p"))
    async with expect(grpc.StatusCode.NOT_FOUND, "NODE_NOT_FOUND"):
        await client.remove_replica(pb.RemoveReplicaRequest(shard_id="shard-a", node_id="shard-a-r9"))
    async with expect(grpc.StatusCode.NOT_FOUND, "SHARD_NOT_FOUND"):
        await client.get_shard(pb.GetShardRequest(shard_id="shard-z"))
    async with expect(grpc.StatusCode.FAILED_PRECONDITION, "LAST_SHARD"):
        await client.remove_shard(pb.RemoveShardRequest(shard_id="shard-a"))
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "page_size"):
        await client.list_shards(pb.ListShardsRequest(page_size=-1))


async def test_registry_changes_are_idempotent_by_request_id(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    _, client = await start(start_service, sharding_config(tmp_path, store_config))
    first = await client.register_shard(register("shard-a", request_id="req-1"))
    again = await client.register_shard(register("shard-a", request_id="req-1"))
    assert again == first, "a retry gets the first answer, not SHARD_EXISTS"
    async with expect(grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED"):
        await client.register_shard(register("shard-b", request_id="req-1"))
    listed = await client.list_shards(pb.ListShardsRequest())
    assert listed.topology_version == 1, "the retry changed nothing"


async def test_shards_page_in_id_order(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    _, client = await start(start_service, sharding_config(tmp_path, store_config))
    for name in ("shard-e", "shard-a", "shard-d", "shard-b", "shard-c"):
        await client.register_shard(register(name))
    seen: list[str] = []
    token = ""
    while True:
        page = await client.list_shards(pb.ListShardsRequest(page_size=2, page_token=token))
        seen += [s.shard_id for s in page.shards]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["shard-a", "shard-b", "shard-c", "shard-d", "shard-e"]
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "page_token"):
        await client.list_shards(pb.ListShardsRequest(page_token="not-a-token"))


async def test_the_registry_survives_a_restart(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    config = sharding_config(tmp_path, store_config)
    running, client = await start(start_service, config)
    await client.register_shard(register("shard-a", replicas=2))
    await client.register_shard(pb.RegisterShardRequest(shard_id="shard-b", primary=spec("shard-b-p"), weight=2.5))
    before = await client.list_shards(pb.ListShardsRequest())
    await stop_service(running)

    _, client = await start(start_service, config)
    after = await client.list_shards(pb.ListShardsRequest())
    assert after == before
    watched = client.watch_topology(pb.WatchTopologyRequest())
    first = await anext(aiter(watched))
    assert first.topology.version == before.topology_version
    assert first.topology.shards[0].nodes[0].dsn == DEAD_PORT_DSN, "the stream carries the full DSN"


# --------------------------------------------------------------------------- location and ring


async def test_locate_keys_answers_a_batch_from_the_serving_ring(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    _, client = await start(start_service, sharding_config(tmp_path, store_config))
    async with expect(grpc.StatusCode.FAILED_PRECONDITION, "NO_SHARDS"):
        await client.locate_keys(pb.LocateKeysRequest(keys=["acct-1"]))
    registered = await client.register_shard(register("shard-a"))
    await client.register_shard(register("shard-b"))
    keys = [f"acct-{i}" for i in range(2000)]
    located = await client.locate_keys(pb.LocateKeysRequest(keys=keys))
    assert [loc.key for loc in located.locations] == keys
    assert {loc.shard_id for loc in located.locations} == {"shard-a"}, "a joining shard serves nothing yet"
    assert located.locations[0].primary_node_id == "shard-a-p"
    assert located.locations[0].primary_endpoint == "127.0.0.1:1/credits"
    assert not any(loc.write_fenced for loc in located.locations)

    seed = registered.shard.placement_seed
    ring = HashRing([RingMember("shard-a", 1.0, seed)])
    assert [loc.shard_id for loc in located.locations] == ring.locate_many(keys)

    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "keys"):
        await client.locate_keys(pb.LocateKeysRequest())
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "keys"):
        await client.locate_keys(pb.LocateKeysRequest(keys=["k"] * 10_001))
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "keys[1]"):
        await client.locate_keys(pb.LocateKeysRequest(keys=["ok", "x" * 257]))


async def test_ring_stats_cover_the_serving_and_the_target_ring(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    _, client = await start(start_service, sharding_config(tmp_path, store_config))
    empty = await client.get_ring_stats(pb.GetRingStatsRequest())
    assert empty.total_points == 0 and empty.max_load_ratio == 1.0
    for name in ("shard-a", "shard-b", "shard-c"):
        await client.register_shard(register(name))
    serving = await client.get_ring_stats(pb.GetRingStatsRequest())
    assert [s.shard_id for s in serving.shards] == ["shard-a"]
    assert serving.shards[0].load_share == pytest.approx(1.0)
    target = await client.get_ring_stats(pb.GetRingStatsRequest(target_ring=True))
    assert [s.shard_id for s in target.shards] == ["shard-a", "shard-b", "shard-c"]
    assert target.total_points == 3 * 256 == 3 * target.vnodes_per_shard
    assert sum(s.load_share for s in target.shards) == pytest.approx(1.0)
    assert 1.0 <= target.max_load_ratio < 1.2
    assert target.topology_version == 3


# --------------------------------------------------------------------------- topology stream


async def next_version(stream: AsyncIterator[pb.WatchTopologyResponse], timeout: float = 5.0) -> pb.Topology:
    response = await asyncio.wait_for(anext(stream), timeout)
    return response.topology


async def test_watch_sends_the_current_topology_then_every_change(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    _, client = await start(start_service, sharding_config(tmp_path, store_config))
    await client.register_shard(register("shard-a"))
    stream = aiter(client.watch_topology(pb.WatchTopologyRequest()))
    current = await next_version(stream)
    assert current.version == 1 and [s.shard_id for s in current.shards] == ["shard-a"]
    assert current.hash_scheme == pb.HASH_SCHEME_CRC32_FMIX32 and current.vnodes_per_shard == 256
    assert current.HasField("update_time")

    await client.register_shard(register("shard-b"))
    await client.add_replica(pb.AddReplicaRequest(shard_id="shard-b", replica=spec("shard-b-r1")))
    second, third = await next_version(stream), await next_version(stream)
    assert (second.version, third.version) == (2, 3)
    assert [n.node_id for n in third.shards[1].nodes] == ["shard-b-p", "shard-b-r1"]

    # A follower resuming from version 3 waits for news instead of getting 3 again.
    resumed = aiter(client.watch_topology(pb.WatchTopologyRequest(after_version=3)))
    pending = asyncio.ensure_future(next_version(resumed))
    await asyncio.sleep(0.3)
    assert not pending.done(), "nothing newer than version 3 yet"
    await client.remove_shard(pb.RemoveShardRequest(shard_id="shard-b"))
    fourth = await pending
    assert fourth.version == 4 and [s.shard_id for s in fourth.shards] == ["shard-a"]
    assert (await next_version(stream)).version == 4

    # A follower that is behind gets the current version first, not the history.
    behind = aiter(client.watch_topology(pb.WatchTopologyRequest(after_version=1)))
    assert (await next_version(behind)).version == 4

    with pytest.raises(ShieldxError) as caught:
        await next_version(aiter(client.watch_topology(pb.WatchTopologyRequest(after_version=-1))))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "after_version" in caught.value.field_violations


@pytest.mark.parametrize("store_config", ["postgres"], indirect=True)
async def test_servers_sharing_a_registry_stream_each_others_changes_and_drain_cleanly(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    config = sharding_config(tmp_path, store_config, topology_refresh_seconds=0.1)
    _, writer = await start(start_service, config)
    reader_running, reader = await start(start_service, config)
    stream = aiter(reader.watch_topology(pb.WatchTopologyRequest()))
    await writer.register_shard(register("shard-a"))
    seen = await next_version(stream, timeout=5)
    assert seen.version == 1 and seen.shards[0].shard_id == "shard-a", "written on one, streamed by the other"
    await writer.register_shard(register("shard-b"))
    assert (await next_version(stream, timeout=5)).version == 2

    assert reader_running.service is not None
    draining = reader_running.service.draining
    stopping = asyncio.ensure_future(reader_running.server.stop(grace=10, drain_delay=0, draining=draining))
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 5)  # ended by the server, not cut off by the grace period
    await asyncio.wait_for(stopping, 5)


# --------------------------------------------------------------------------- health, against real servers


async def test_health_checks_measure_real_servers_and_mark_failures(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    settings = monitored(failure_threshold=2, automatic_failover=False)
    running, client = await start(start_service, sharding_config(tmp_path, store_config, **settings), metrics=True)
    # The test server is a primary: as a replica it must fail the role check.
    await client.register_shard(
        pb.RegisterShardRequest(
            shard_id="shard-a",
            primary=spec("shard-a-p", POSTGRES_URL),
            replicas=[spec("shard-a-r1", POSTGRES_URL), spec("shard-a-r2", DEAD_PORT_DSN)],
        )
    )

    async def settled() -> pb.GetShardHealthResponse | None:
        health = await client.get_shard_health(pb.GetShardHealthRequest(shard_id="shard-a"))
        states = [n.state for n in health.nodes]
        return health if states == [pb.HEALTH_STATE_HEALTHY, pb.HEALTH_STATE_DOWN, pb.HEALTH_STATE_DOWN] else None

    health = await eventually(settled)
    primary, wrong_role, dead = health.nodes
    assert primary.node_id == "shard-a-p" and primary.role == pb.NODE_ROLE_PRIMARY
    assert primary.HasField("lsn") and primary.lsn > 0 and "/" in primary.lsn_text
    assert primary.consecutive_failures == 0 and primary.HasField("last_ok_time")
    assert not primary.HasField("lag_bytes"), "a primary has no lag"
    assert wrong_role.consecutive_failures >= 2 and "not in recovery" in wrong_role.last_error
    assert wrong_role.HasField("failing_since_time")
    assert dead.consecutive_failures >= 2 and dead.last_error and "s3cret" not in dead.last_error
    assert health.failure_threshold == 2 and health.check_interval.ToMilliseconds() == 250

    async def published() -> pb.Shard | None:
        # The round writes the health changes to the topology after it has checked every node.
        shard = (await client.get_shard(pb.GetShardRequest(shard_id="shard-a"))).shard
        healths = [n.health for n in shard.nodes]
        return shard if healths == [pb.HEALTH_STATE_HEALTHY, pb.HEALTH_STATE_DOWN, pb.HEALTH_STATE_DOWN] else None

    await eventually(published)
    gauge = running.runtime.registry.get_sample_value
    assert gauge("shieldx_sharding_node_healthy", {"shard": "shard-a", "node": "shard-a-p", "role": "primary"}) == 1
    assert gauge("shieldx_sharding_node_up", {"shard": "shard-a", "node": "shard-a-r2", "role": "replica"}) == 0
    listed = await client.list_shards(pb.ListShardsRequest())
    assert gauge("shieldx_sharding_topology_version") == listed.topology_version
    async with expect(grpc.StatusCode.NOT_FOUND, "SHARD_NOT_FOUND"):
        await client.get_shard_health(pb.GetShardHealthRequest(shard_id="shard-z"))


async def test_manual_failover_of_a_live_primary_fences_it_and_loses_nothing(
    store_config: dict[str, str], pg: PgWorkspace, start_service: StartService, tmp_path: Path
) -> None:
    cluster = await asyncio.to_thread(pg.shard, "sa", replicas=1)  # asynchronous replication
    await asyncio.to_thread(cluster.primary.query, "CREATE TABLE ledger (id BIGINT PRIMARY KEY)")
    settings = monitored(failure_threshold=3)
    _, client = await start(start_service, sharding_config(tmp_path, store_config, **settings))
    await register_cluster(client, "shard-a", cluster)

    async def replica_healthy() -> bool:
        health = await client.get_shard_health(pb.GetShardHealthRequest(shard_id="shard-a"))
        return all(n.state == pb.HEALTH_STATE_HEALTHY for n in health.nodes)

    await eventually(replica_healthy)
    health = await client.get_shard_health(pb.GetShardHealthRequest(shard_id="shard-a"))
    assert health.nodes[1].HasField("lag_bytes")
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "reason"):
        await client.failover(pb.FailoverRequest(shard_id="shard-a", reason="x" * 501))
    async with expect(grpc.StatusCode.NOT_FOUND, "NODE_NOT_FOUND"):
        await client.failover(pb.FailoverRequest(shard_id="shard-a", target_node_id="sa-r9"))

    # Writes committed on the primary up to the switchover must all be on the new primary.
    async with await psycopg.AsyncConnection.connect(cluster.primary.dsn, autocommit=True) as writer:
        for i in range(200):
            await writer.execute("INSERT INTO ledger (id) VALUES (%s)", (i,))
    request = pb.FailoverRequest(shard_id="shard-a", reason="planned maintenance", request_id="fo-1")
    asked = datetime.now(UTC)
    done = await client.failover(request)
    answered = datetime.now(UTC)
    record = done.failover
    assert record.trigger == pb.FAILOVER_TRIGGER_MANUAL
    assert (record.old_primary_node_id, record.new_primary_node_id) == ("sa-p", "sa-r1")
    assert record.reason == "planned maintenance" and record.HasField("promoted_lsn")
    # The outage is the call itself: it starts with the request and ends before the answer.
    outage_start, complete = record.outage_start_time.ToDatetime(UTC), record.complete_time.ToDatetime(UTC)
    assert asked - timedelta(milliseconds=1) <= outage_start <= complete <= answered + timedelta(milliseconds=1)
    assert record.recovery_time.ToTimedelta() == complete - outage_start
    assert await client.failover(request) == done, "the retry replays the answer; nothing promoted twice"

    replica = cluster.replicas[0]
    assert not await asyncio.to_thread(replica.is_in_recovery)
    assert await asyncio.to_thread(replica.value, "SELECT count(*) FROM ledger") == 200
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        await asyncio.to_thread(cluster.primary.query, "INSERT INTO ledger (id) VALUES (999)")

    shard = (await client.get_shard(pb.GetShardRequest(shard_id="shard-a"))).shard
    assert [(n.node_id, n.role, n.health) for n in shard.nodes] == [
        ("sa-r1", pb.NODE_ROLE_PRIMARY, shard.nodes[0].health),
        ("sa-p", pb.NODE_ROLE_REPLICA, pb.HEALTH_STATE_DOWN),
    ]
    assert shard.nodes[0].health != pb.HEALTH_STATE_DOWN
    listed = await client.list_failovers(pb.ListFailoversRequest(shard_id="shard-a"))
    assert [f.failover_id for f in listed.failovers] == [record.failover_id]
    async with expect(grpc.StatusCode.FAILED_PRECONDITION, "NO_HEALTHY_REPLICA"):
        await client.failover(pb.FailoverRequest(shard_id="shard-a"))


async def test_failovers_page_newest_first_per_shard(
    store_config: dict[str, str], pg: PgWorkspace, start_service: StartService, tmp_path: Path
) -> None:
    cluster = await asyncio.to_thread(pg.shard, "sb", replicas=2)
    settings = monitored(switchover_timeout_seconds=1.0)
    _, client = await start(start_service, sharding_config(tmp_path, store_config, **settings))
    await register_cluster(client, "shard-b", cluster)

    async def all_healthy() -> bool:
        health = await client.get_shard_health(pb.GetShardHealthRequest(shard_id="shard-b"))
        return all(n.state == pb.HEALTH_STATE_HEALTHY for n in health.nodes)

    await eventually(all_healthy)
    first = (await client.failover(pb.FailoverRequest(shard_id="shard-b", target_node_id="sb-r2"))).failover
    assert first.new_primary_node_id == "sb-r2"
    new_primary, other = cluster.replicas[1], cluster.replicas[0]
    # The failover pointed sb-r1 at the new primary. While it does not replay (paused here), a
    # switchover to it must be refused, as it cannot catch up with the fenced primary's last WAL.
    await asyncio.to_thread(wait_until, lambda: new_primary.replication().get("sb-r1", ("", ""))[0] == "streaming")
    await asyncio.to_thread(other.query, "SELECT pg_wal_replay_pause()")
    await asyncio.to_thread(new_primary.query, "CREATE TABLE written_after_the_pause (i int)")
    async with expect(grpc.StatusCode.FAILED_PRECONDITION, "REPLICA_BEHIND"):
        await client.failover(pb.FailoverRequest(shard_id="shard-b", target_node_id="sb-r1"))
    await asyncio.to_thread(new_primary.query, "CREATE TABLE still_writable (i int)")  # unfenced again
    await asyncio.to_thread(other.query, "SELECT pg_wal_replay_resume()")
    second = (await client.failover(pb.FailoverRequest(shard_id="shard-b", target_node_id="sb-r1"))).failover
    assert (second.old_primary_node_id, second.new_primary_node_id) == ("sb-r2", "sb-r1")
    assert await asyncio.to_thread(other.value, "SELECT count(*) FROM pg_class WHERE relname = 'still_writable'")
    page = await client.list_failovers(pb.ListFailoversRequest(page_size=1))
    assert [f.failover_id for f in page.failovers] == [second.failover_id] and page.next_page_token
    page = await client.list_failovers(pb.ListFailoversRequest(page_size=1, page_token=page.next_page_token))
    assert [f.failover_id for f in page.failovers] == [first.failover_id] and not page.next_page_token
    assert not (await client.list_failovers(pb.ListFailoversRequest(shard_id="shard-z"))).failovers
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "page_token"):
        await client.list_failovers(pb.ListFailoversRequest(shard_id="shard-a", page_token=page.next_page_token or "x"))


async def test_the_failover_history_pages_newest_first_on_both_backends(
    tmp_path: Path, store_config: dict[str, str]
) -> None:
    database = await open_database(
        "sharding",
        data_dir=tmp_path,
        database_url=store_config["database_url"],
        schema=store_config.get("database_schema") or None,
        migrations=("servers.mesh.migrations", "servers.sharding.migrations"),
    )
    store = ShardingStore(database)
    base = datetime(2026, 3, 1, tzinfo=UTC)
    try:
        async with database.transaction() as tx:
            for i in range(5):
                await store.add_failover(
                    tx,
                    FailoverRecord(
                        failover_id=f"fo-{i}",
                        shard_id="shard-a" if i % 2 == 0 else "shard-b",
                        trigger=FailoverTrigger.AUTOMATIC,
                        old_primary=f"p{i}",
                        new_primary=f"r{i}",
                        promoted_lsn=(1 << 40) + i if i else None,
                        outage_started_at=base + timedelta(minutes=i),
                        completed_at=base + timedelta(minutes=i, seconds=1, microseconds=250),
                        topology_version=10 + i,
                        reason="connection refused",
                    ),
                )
        newest = await store.list_failovers(limit=2)
        assert [r.failover_id for r in newest] == ["fo-4", "fo-3"]
        cursor = FailoverCursor(to_us(newest[-1].completed_at), newest[-1].failover_id)
        assert [r.failover_id for r in await store.list_failovers(after=cursor, limit=10)] == ["fo-2", "fo-1", "fo-0"]
        shard_a = await store.list_failovers(shard_id="shard-a", limit=10)
        assert [r.failover_id for r in shard_a] == ["fo-4", "fo-2", "fo-0"]
        assert shard_a[0].recovery_time == timedelta(seconds=1, microseconds=250)
        assert shard_a[0].promoted_lsn == (1 << 40) + 4 and shard_a[-1].promoted_lsn is None
    finally:
        await database.close()


async def test_a_follower_locates_keys_as_the_server_does_and_routes_reads(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    _, client = await start(start_service, sharding_config(tmp_path, store_config))
    follower = TopologyFollower(client, routing=RoutingConfig(ReadPolicy.ROUND_ROBIN))
    following = asyncio.create_task(follower.run())
    try:
        await client.register_shard(register("shard-a", replicas=2))
        ready = await follower.wait_until_ready(timeout=5)
        assert ready.version == 1
        keys = [f"acct-{i}" for i in range(100)]
        served = (await client.locate_keys(pb.LocateKeysRequest(keys=keys))).locations
        assert [follower.locate(k).shard_id for k in keys] == [loc.shard_id for loc in served]
        assert follower.locate("acct-1").primary.dsn == DEAD_PORT_DSN, "followers get the full DSN"
        with follower.read("acct-1") as target:
            assert target.fallback and target.node.node_id == "shard-a-p", "no healthy replica: the primary reads"
        await client.remove_replica(pb.RemoveReplicaRequest(shard_id="shard-a", node_id="shard-a-r2"))
        after = await follower.wait_until(lambda t: len(t.shard("shard-a").nodes) == 2, timeout=5)
        assert after.version == 2
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following


# --------------------------------------------------------------------------- rebalancing


class InMemoryMover:
    """A test mover over in-memory "shards" (account -> event list per shard id), standing in for the
    credits mover of phase 2: it does what the `AccountMover` contract asks, on dicts, and can be
    told to fail chosen accounts."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, list[str]]] = {}
        self.fences: dict[str, set[str]] = {}
        self.fail_copy: set[str] = set()
        self.arrivals: list[tuple[str, str]] = []
        """Accounts to create (shard, account) when the first copy starts: opened mid-rebalance."""

    def place(self, shard_id: str, account_id: str, count: int = 3) -> None:
        self.events.setdefault(shard_id, {})[account_id] = [f"{account_id}#{i}" for i in range(count)]

    def append(self, shard_id: str, account_id: str, event: str) -> None:
        if account_id in self.fences.get(shard_id, set()):
            raise RuntimeError(f"{account_id} is fenced on {shard_id}")
        self.events[shard_id][account_id].append(event)

    async def list_accounts(self, shard: Shard) -> Sequence[str]:
        return sorted(self.events.get(shard.shard_id, {}))

    async def copy(self, move: AccountMove, source: Shard, target: Shard) -> None:
        while self.arrivals:
            self.place(*self.arrivals.pop())
        if move.account_id in self.fail_copy:
            raise RuntimeError("disk full on the target")
        self.events.setdefault(target.shard_id, {})[move.account_id] = list(
            self.events[source.shard_id][move.account_id]
        )

    async def verify(self, move: AccountMove, source: Shard, target: Shard) -> None:
        copied = self.events[target.shard_id][move.account_id]
        original = self.events[source.shard_id][move.account_id]
        if copied != original[: len(copied)]:
            raise RuntimeError("copy differs from the source")

    async def fence(self, move: AccountMove, source: Shard, target: Shard, rebalance_id: str) -> None:
        self.fences.setdefault(source.shard_id, set()).add(move.account_id)
        self.events[target.shard_id][move.account_id] = list(self.events[source.shard_id][move.account_id])

    async def unfence(self, move: AccountMove, source: Shard, rebalance_id: str) -> None:
        self.fences.get(source.shard_id, set()).discard(move.account_id)

    async def cleanup(self, move: AccountMove, source: Shard, target: Shard, rebalance_id: str) -> None:
        del self.events[source.shard_id][move.account_id]

    def where(self, account_id: str) -> list[str]:
        return sorted(s for s, accounts in self.events.items() if account_id in accounts)


def with_mover(mover: InMemoryMover) -> Any:
    async def builder(runtime: Runtime) -> Service:
        return await build_service(runtime, mover=mover)

    return builder


async def rebalance_done(client: ShardingClient) -> Any:
    status = await client.get_rebalance_status(pb.GetRebalanceStatusRequest())
    return status if status.rebalance.phase == pb.REBALANCE_PHASE_COMPLETED else None


async def test_rebalancing_without_a_mover_is_refused_not_faked(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    _, client = await start(start_service, sharding_config(tmp_path, store_config))
    await client.register_shard(register("shard-a"))
    await client.register_shard(register("shard-b"))
    async with expect(grpc.StatusCode.FAILED_PRECONDITION, "REBALANCE_MOVER_UNAVAILABLE"):
        await client.start_rebalance(pb.StartRebalanceRequest(request_id="rb-1"))
    async with expect(grpc.StatusCode.FAILED_PRECONDITION, "REBALANCE_MOVER_UNAVAILABLE"):
        await client.plan_rebalance(pb.PlanRebalanceRequest())
    async with expect(grpc.StatusCode.NOT_FOUND, "REBALANCE_NOT_FOUND"):
        await client.get_rebalance_status(pb.GetRebalanceStatusRequest())
    shard = (await client.get_shard(pb.GetShardRequest(shard_id="shard-b"))).shard
    assert shard.state == pb.SHARD_STATE_JOINING, "nothing pretended to move"


async def third_shard_joining(client: ShardingClient, mover: InMemoryMover) -> list[pb.KeyLocation]:
    """Two active shards holding 600 accounts (3 events each) and a third one joining; where they were."""
    await client.register_shard(register("shard-a"))
    await client.register_shard(register("shard-b"))
    await client.start_rebalance(pb.StartRebalanceRequest())  # empty: makes shard-b active
    await eventually(lambda: rebalance_done(client))
    keys = [f"acct-{i}" for i in range(600)]
    before = list((await client.locate_keys(pb.LocateKeysRequest(keys=keys))).locations)
    for location in before:
        mover.place(location.shard_id, location.key)
    await client.register_shard(register("shard-c"))
    return before


async def test_a_rebalance_plan_moves_about_a_third_of_the_accounts_onto_the_new_shard(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    mover = InMemoryMover()
    running = await start_service(with_mover(mover), sharding_config(tmp_path, store_config))
    client = ShardingClient(running.channel)
    await third_shard_joining(client, mover)
    plan = await client.plan_rebalance(pb.PlanRebalanceRequest(page_size=1000))
    assert plan.total_accounts == 600
    assert plan.serving_shard_ids == ["shard-a", "shard-b"]
    assert plan.target_shard_ids == ["shard-a", "shard-b", "shard-c"]
    assert 0.25 < plan.moved_fraction < 0.42 and 0.25 < plan.expected_moved_fraction < 0.42
    assert {m.target_shard_id for m in plan.moves} == {"shard-c"}, "keys move only onto the joining shard"
    assert sum(f.accounts for f in plan.flows) == plan.moving_accounts == len(plan.moves)
    first_page = await client.plan_rebalance(pb.PlanRebalanceRequest(page_size=50))
    second_page = await client.plan_rebalance(
        pb.PlanRebalanceRequest(page_size=50, page_token=first_page.next_page_token)
    )
    assert [m.account_id for m in [*first_page.moves, *second_page.moves]] == [m.account_id for m in plan.moves[:100]]
    await client.add_replica(pb.AddReplicaRequest(shard_id="shard-a", replica=spec("shard-a-r1")))
    async with expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "page_token"):
        await client.plan_rebalance(pb.PlanRebalanceRequest(page_size=50, page_token=first_page.next_page_token))


async def test_a_rebalance_moves_every_account_with_its_events_and_completes_the_ring(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    mover = InMemoryMover()
    config = sharding_config(tmp_path, store_config, rebalance_batch_size=40)
    running = await start_service(with_mover(mover), config)
    client = ShardingClient(running.channel)
    before = await third_shard_joining(client, mover)
    planned = (await client.plan_rebalance(pb.PlanRebalanceRequest())).moving_accounts
    # An account opened while the rebalance runs, on its serving shard, bound for the new one.
    shards = (await client.list_shards(pb.ListShardsRequest())).shards
    serving = HashRing([RingMember(s.shard_id, s.weight, s.placement_seed) for s in shards[:2]])
    target = HashRing([RingMember(s.shard_id, s.weight, s.placement_seed) for s in shards])
    late = next(f"late-{i}" for i in range(1000) if target.locate(f"late-{i}") == "shard-c")
    mover.arrivals.append((serving.locate(late), late))

    watch = aiter(client.watch_topology(pb.WatchTopologyRequest()))
    await next_version(watch)
    started = await client.start_rebalance(pb.StartRebalanceRequest(request_id="rb-go"))
    assert started.rebalance.total_accounts == planned
    assert started.rebalance.phase == pb.REBALANCE_PHASE_RUNNING
    async with expect(grpc.StatusCode.FAILED_PRECONDITION, "REBALANCE_IN_PROGRESS"):
        await client.register_shard(register("shard-d"))
    status = (await eventually(lambda: rebalance_done(client))).rebalance
    assert status.done_accounts == status.total_accounts == planned + 1
    assert status.fraction_done == 1.0 and status.HasField("finish_time")

    # Followers saw accounts fenced, then moved, then the final fence, then the new ring.
    seen: set[str] = set()
    while True:
        topology = await next_version(watch)
        if not topology.HasField("migration"):
            break
        seen |= {"fenced"} if topology.migration.fenced_account_ids else set()
        seen |= {"moved"} if topology.migration.moved_account_ids else set()
        seen |= {"finalizing"} if topology.migration.fence_unplanned else set()
    assert seen == {"fenced", "moved", "finalizing"}
    assert [s.state for s in topology.shards] == [pb.SHARD_STATE_ACTIVE] * 3

    after = (await client.locate_keys(pb.LocateKeysRequest(keys=[b.key for b in before]))).locations
    for old, new in zip(before, after, strict=True):
        assert mover.where(new.key) == [new.shard_id], f"{new.key} lives only on its shard"
        assert mover.events[new.shard_id][new.key] == [f"{new.key}#{i}" for i in range(3)], "events intact"
        assert new.shard_id in (old.shard_id, "shard-c")
    assert mover.where(late) == ["shard-c"], "the finalizing sweep moved the account opened meanwhile"
    assert not any(mover.fences.get("shard-c", ())), "nothing fenced on the shard that received accounts"


class CountingMover:
    """One sharding server's view of shared shards (an `InMemoryMover`), counting the copies it makes."""

    def __init__(self, shards: InMemoryMover) -> None:
        self.shards = shards
        self.copies = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shards, name)

    async def copy(self, move: AccountMove, source: Shard, target: Shard) -> None:
        self.copies += 1
        await asyncio.sleep(0.02)  # a copy takes a while: the other server would have time to join in
        await self.shards.copy(move, source, target)


async def test_of_two_servers_sharing_a_registry_one_drives_a_rebalance(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    shards = InMemoryMover()
    movers = [CountingMover(shards), CountingMover(shards)]
    config = sharding_config(tmp_path, store_config, topology_refresh_seconds=0.1)
    first = await start_service(with_mover(cast(InMemoryMover, movers[0])), config)
    second = await start_service(with_mover(cast(InMemoryMover, movers[1])), config)
    client = ShardingClient(second.channel)
    await third_shard_joining(client, shards)
    assert sum(m.copies for m in movers) == 0
    started = await client.start_rebalance(pb.StartRebalanceRequest(request_id="rb-shared"))
    await eventually(lambda: rebalance_done(ShardingClient(first.channel)))
    copies = sorted(m.copies for m in movers)
    assert copies[0] == 0 and copies[1] >= started.rebalance.total_accounts > 0, copies


async def test_failed_moves_wait_for_an_operator_and_resume(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    mover = InMemoryMover()
    config = sharding_config(tmp_path, store_config, rebalance_max_attempts=2)
    running = await start_service(with_mover(mover), config)
    client = ShardingClient(running.channel)
    await client.register_shard(register("shard-a"))
    for i in range(60):
        mover.place("shard-a", f"acct-{i}")
    await client.register_shard(register("shard-b"))
    plan = await client.plan_rebalance(pb.PlanRebalanceRequest(page_size=1000))
    broken = plan.moves[0].account_id
    mover.fail_copy.add(broken)
    await client.start_rebalance(pb.StartRebalanceRequest())

    async def stuck() -> Any:
        status = await client.get_rebalance_status(pb.GetRebalanceStatusRequest())
        return status if status.rebalance.failed_accounts else None

    status = (await eventually(stuck)).rebalance
    assert status.phase == pb.REBALANCE_PHASE_RUNNING and status.failed_accounts == 1
    assert status.done_accounts == plan.moving_accounts - 1
    assert status.failures[0].move.account_id == broken and status.failures[0].attempts == 2
    assert "disk full" in status.failures[0].error
    assert mover.where(broken) == ["shard-a"], "a failed account stays served by its source"
    located = (await client.locate_keys(pb.LocateKeysRequest(keys=[broken]))).locations[0]
    assert located.shard_id == "shard-a" and not located.write_fenced

    # Restart: the rebalance is still there, still waiting.
    await stop_service(running)
    running = await start_service(with_mover(mover), config)
    client = ShardingClient(running.channel)
    again = await client.get_rebalance_status(pb.GetRebalanceStatusRequest(rebalance_id=status.rebalance_id))
    assert again.rebalance.failed_accounts == 1

    mover.fail_copy.clear()
    resumed = await client.start_rebalance(pb.StartRebalanceRequest())
    assert resumed.rebalance.rebalance_id == status.rebalance_id
    done = await eventually(lambda: rebalance_done(client))
    assert done.rebalance.failed_accounts == 0
    assert mover.where(broken) == [
        (await client.locate_keys(pb.LocateKeysRequest(keys=[broken]))).locations[0].shard_id
    ]


class StallingMover(InMemoryMover):
    """Hangs in `fence` while `stall` is set (a cut-over caught by a restart of the sharding server)."""

    def __init__(self) -> None:
        super().__init__()
        self.stall = True
        self.fencing = asyncio.Event()
        self.unfenced: list[str] = []

    async def fence(self, move: AccountMove, source: Shard, target: Shard, rebalance_id: str) -> None:
        await super().fence(move, source, target, rebalance_id)
        if self.stall:
            self.fencing.set()
            await asyncio.Event().wait()

    async def unfence(self, move: AccountMove, source: Shard, rebalance_id: str) -> None:
        self.unfenced.append(move.account_id)
        await super().unfence(move, source, rebalance_id)


async def test_a_cut_over_interrupted_by_a_restart_is_unfenced_and_retried(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    mover = StallingMover()
    config = sharding_config(tmp_path, store_config, rebalance_batch_size=10, rebalance_fence_timeout_seconds=30)
    running = await start_service(with_mover(mover), config)
    client = ShardingClient(running.channel)
    await client.register_shard(register("shard-a"))
    for i in range(80):
        mover.place("shard-a", f"acct-{i}")
    await client.register_shard(register("shard-b"))
    await client.start_rebalance(pb.StartRebalanceRequest())
    await asyncio.wait_for(mover.fencing.wait(), 10)

    keys = [f"acct-{i}" for i in range(80)]
    fenced = [loc for loc in (await client.locate_keys(pb.LocateKeysRequest(keys=keys))).locations if loc.write_fenced]
    assert 1 <= len(fenced) <= 10, "one batch is fenced, the rest writes as usual"
    assert {loc.shard_id for loc in fenced} == {"shard-a"}, "fenced accounts still read from their source"
    await stop_service(running)

    mover.stall = False
    running = await start_service(with_mover(mover), config)
    client = ShardingClient(running.channel)
    status = (await eventually(lambda: rebalance_done(client))).rebalance
    assert status.failed_accounts == 0 and status.done_accounts == status.total_accounts
    assert {loc.key for loc in fenced} <= set(mover.unfenced), "the interrupted fences were lifted first"
    for location in (await client.locate_keys(pb.LocateKeysRequest(keys=keys))).locations:
        assert mover.where(location.key) == [location.shard_id]
        assert not location.write_fenced


# --------------------------------------------------------------------------- auth and fuzz


async def test_each_rpc_requires_its_declared_scope(tmp_path: Path, start_service: StartService) -> None:
    authority = TestAuthority()
    config = test_config(tmp_path, service="sharding", settings={"health_monitor": False}, auth__enabled=True)
    running = await start_service(build, config, verifier=authority.verifier)
    client = ShardingClient(running.channel)
    reader = authority.metadata(["sharding.read"])
    writer = authority.metadata(["sharding.write"])
    async with expect(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING"):
        await client.list_shards(pb.ListShardsRequest())
    async with expect(grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING"):
        await client.register_shard(register("shard-a"), metadata=reader)
    await client.register_shard(register("shard-a"), metadata=writer)
    assert (await client.list_shards(pb.ListShardsRequest(), metadata=reader)).shards
    with pytest.raises(ShieldxError) as caught:
        await anext(aiter(client.watch_topology(pb.WatchTopologyRequest(), metadata=reader)))
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED, "full DSNs need sharding.topology"
    assert caught.value.reason == "SCOPE_MISSING"
    follower = authority.metadata(["sharding.topology"])
    streamed = await anext(aiter(client.watch_topology(pb.WatchTopologyRequest(), metadata=follower)))
    assert streamed.topology.version == 1
    async with expect(grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING"):
        await client.failover(pb.FailoverRequest(shard_id="shard-a"), metadata=writer)


async def test_fuzzing_every_rpc_never_crashes_the_server(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path
) -> None:
    running, client = await start(start_service, sharding_config(tmp_path, store_config))
    await client.register_shard(register("shard-a", replicas=1))
    values = {"dsn": "postgresql://postgres@127.0.0.1:1/none", "after_version": 0}  # port 1: nothing listens
    report = await fuzz_service(
        running.channel, pb.DESCRIPTOR.services_by_name["ShardingService"], rounds=15, values=values
    )
    report.assert_clean()
    report.assert_reaches_logic()
