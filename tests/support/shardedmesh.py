"""Credits on shards for end-to-end tests: a sharding server with the credits mover, credits servers on its topology.

Everything is a real process or a real PostgreSQL server (`tests.support.pgcluster`): the
sharding server (`python -m servers.sharding`, with `sharding.account_mover` naming the credits
mover), credits servers (`python -m servers.credits` with `credits.topology` on, their own
SQLite store holding the two-phase coordinator log), and shards made of throwaway clusters.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from clients.credits import CreditsClient
from clients.errors import ShieldxError
from clients.sharding import ShardingClient
from shieldx.credits.v1 import credits_pb2 as cpb
from shieldx.sharding.v1 import sharding_pb2 as spb
from tests.support.pgcluster import PgShard
from tests.support.processes import ServerProcess

MOVER = "servers.credits.moves:create_mover"
TWO_PHASE = {"max_prepared_transactions": "64"}
"""Shard settings for two-phase commit."""


def sharding_process(tmp_path: Path, **settings: str) -> ServerProcess:
    """A sharding server with the credits mover and quick health checks (not started)."""
    env = {
        "SHIELDX_SHARDING__ACCOUNT_MOVER": MOVER,
        "SHIELDX_SHARDING__HEALTH_CHECK_INTERVAL_SECONDS": "0.5",
        "SHIELDX_SHARDING__HEALTH_CHECK_TIMEOUT_SECONDS": "0.4",
        "SHIELDX_SHARDING__FAILURE_THRESHOLD": "3",
        "SHIELDX_SHARDING__REBALANCE_BATCH_SIZE": "10",
        "SHIELDX_LOG_LEVEL": "WARNING",
    }
    env.update({f"SHIELDX_SHARDING__{key.upper()}": value for key, value in settings.items()})
    return ServerProcess("servers.sharding", tmp_path, env=env)


def credits_process(tmp_path: Path, sharding: ServerProcess, name: str = "credits", **settings: str) -> ServerProcess:
    """A credits server following `sharding`'s topology, recovering in-doubt transfers quickly (not started)."""
    env = {
        "SHIELDX_ENDPOINTS": f"sharding={sharding.address}",
        "SHIELDX_CREDITS__TOPOLOGY": "true",
        "SHIELDX_CREDITS__TWO_PHASE_RECOVERY_INTERVAL_SECONDS": "0.5",
        "SHIELDX_CREDITS__IN_DOUBT_AFTER_SECONDS": "1",
        "SHIELDX_LOG_LEVEL": "WARNING",
    }
    env.update({f"SHIELDX_CREDITS__{key.upper()}": value for key, value in settings.items()})
    return ServerProcess("servers.credits", tmp_path, env=env, name=name)


def node_spec(node_id: str, dsn: str) -> spb.NodeSpec:
    return spb.NodeSpec(node_id=node_id, dsn=dsn, region="local")


async def register(client: ShardingClient, shard_id: str, cluster: PgShard) -> None:
    """Register a cluster as a shard (primary and replicas)."""
    await client.register_shard(
        spb.RegisterShardRequest(
            shard_id=shard_id,
            primary=node_spec(cluster.primary.name, cluster.primary.dsn),
            replicas=[node_spec(r.name, r.dsn) for r in cluster.replicas],
        )
    )


async def rebalance(client: ShardingClient, timeout: float = 60.0) -> spb.Rebalance:
    """Start a rebalance and wait until it completes; its final status."""
    started = await client.start_rebalance(spb.StartRebalanceRequest())
    deadline = time.monotonic() + timeout
    while True:
        status = await client.get_rebalance_status(
            spb.GetRebalanceStatusRequest(rebalance_id=started.rebalance.rebalance_id)
        )
        if status.rebalance.phase == spb.REBALANCE_PHASE_COMPLETED:
            return status.rebalance
        if time.monotonic() > deadline:
            raise TimeoutError(f"rebalance did not complete: {status.rebalance}")
        await asyncio.sleep(0.1)


async def accounts_by_shard(client: ShardingClient, count: int, prefix: str) -> dict[str, list[str]]:
    """`count` account ids per serving shard, named `<prefix>-<n>`."""
    found: dict[str, list[str]] = {}
    n = 0
    while True:
        keys = [f"{prefix}-{i}" for i in range(n, n + 64)]
        n += 64
        located = await client.locate_keys(spb.LocateKeysRequest(keys=keys))
        for location in located.locations:
            found.setdefault(location.shard_id, [])
            if len(found[location.shard_id]) < count:
                found[location.shard_id].append(location.key)
        if found and all(len(ids) >= count for ids in found.values()) and n >= 256:
            return found


async def when_serving(credits: CreditsClient, account_id: str, timeout: float = 30.0) -> None:
    """Wait until the credits server answers for the account's shard (its topology and pools are ready)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await credits.get_balance(cpb.GetBalanceRequest(account_id=account_id))
            return
        except ShieldxError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return
            if error.code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


async def balances(credits: CreditsClient, account_ids: Sequence[str]) -> dict[str, int]:
    """Each account's available balance."""
    found = {}
    for account_id in account_ids:
        found[account_id] = (await credits.get_balance(cpb.GetBalanceRequest(account_id=account_id))).balance.available
    return found


def metric(server: ServerProcess, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """A sample from the server's /metrics (None if absent)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    wanted = [f'{key}="{value}"' for key, value in (labels or {}).items()]
    for line in body.splitlines():
        sample = line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{")
        if sample and all(part in line for part in wanted):
            return float(line.rsplit(" ", 1)[1])
    return None


def prepared_transactions(clusters: Sequence[PgShard]) -> int:
    """Prepared transactions (of credits) left on the clusters' current primaries."""
    total = 0
    for cluster in clusters:
        for node in cluster.nodes:
            if node.running() and not node.is_in_recovery():
                total += int(
                    node.value("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE %s", ("shieldx-credits:%",))
                )
    return total
