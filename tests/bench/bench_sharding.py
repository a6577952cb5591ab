"""LocateKeys over gRPC vs the same lookups in process, in one run.

A real sharding server process (`python -m servers.sharding`, SQLite registry, health monitor
off) serves a registry prepared with 8 active shards. This process then measures, one after
the other on the same machine:

- in process: `Topology.locate_many` (what the servicer calls) in batches of 1, 100, 1,000 and
  10,000 keys, and `HashRing.locate` one key at a time (what a topology follower does);
- over gRPC: `LocateKeys` with the same batch sizes, 1 and 8 calls in flight, through the full
  server interceptor chain (tracing, metrics, rate limit off, error mapping), auth off.

Reported: keys per second (and calls per second for RPC), p50/p99 call latency, and the ratio
in-process/RPC per batch size. Keys are distinct account ids (`acct-00000042`), reused across
phases; the answer is checked against the in-process ring once per batch size.

Run: `.venv/bin/python tests/bench/bench_sharding.py [--seconds 2.0]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "generated")]

import grpc  # noqa: E402

from servers.mesh.storage import open_database  # noqa: E402
from servers.sharding.domain import NodeSpec  # noqa: E402
from servers.sharding.registry import TopologyRegistry  # noqa: E402
from servers.sharding.store import ShardingStore  # noqa: E402
from servers.sharding.topology import MigrationRouting, Topology  # noqa: E402
from shieldx.sharding.v1 import sharding_pb2 as pb  # noqa: E402
from shieldx.sharding.v1 import sharding_pb2_grpc  # noqa: E402
from tests.bench.latency import percentile  # noqa: E402
from tests.support.processes import ServerProcess  # noqa: E402

SHARDS = 8
POOL = 100_000
BATCHES = (1, 100, 1_000, 10_000)


async def prepare_registry(data_dir: Path) -> Topology:
    """A sharding registry with `SHARDS` active shards, as the server will load it."""
    database = await open_database(
        "sharding", data_dir=data_dir, migrations=("servers.mesh.migrations", "servers.sharding.migrations")
    )
    registry = TopologyRegistry(ShardingStore(database))
    now = datetime.now(UTC)
    for i in range(SHARDS):
        spec = NodeSpec(f"shard-{i}-p", f"postgresql://credits:secret@shard-{i}.db:5432/credits")
        await registry.commit(partial(Topology.register_shard, shard_id=f"shard-{i}", primary=spec, now=now))
    # All but the first shard join through a rebalance; with no accounts it has nothing to move.
    topology = await registry.commit(
        lambda t: t.with_migration(MigrationRouting("bench"), now=now).complete_migration("bench", now=now)
    )
    await database.close()
    return topology


def in_process(topology: Topology, keys: list[str], batch: int, seconds: float) -> float:
    """Keys per second of `Topology.locate_many` in batches of `batch` (CPU time of this process)."""
    batches = [keys[i : i + batch] for i in range(0, len(keys) - batch + 1, batch)]
    done = 0
    cpu = time.process_time()
    wall = time.perf_counter()
    while time.perf_counter() - wall < seconds:
        for one in batches:
            topology.locate_many(one)
            done += len(one)
    return done / (time.process_time() - cpu)


def single_lookups(topology: Topology, keys: list[str], seconds: float) -> float:
    """Keys per second of `HashRing.locate`, one key per call."""
    locate = topology.ring.locate
    done = 0
    cpu = time.process_time()
    wall = time.perf_counter()
    while time.perf_counter() - wall < seconds:
        for key in keys:
            locate(key)
        done += len(keys)
    return done / (time.process_time() - cpu)


async def over_rpc(
    stub: sharding_pb2_grpc.ShardingServiceAsyncStub, keys: list[str], batch: int, in_flight: int, seconds: float
) -> tuple[float, float, list[float]]:
    """(keys/s, calls/s, call latencies) of LocateKeys with `batch` keys and `in_flight` callers."""
    requests = [pb.LocateKeysRequest(keys=keys[i : i + batch]) for i in range(0, min(len(keys), 200 * batch), batch)]
    latencies: list[float] = []
    calls = 0
    stop = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        nonlocal calls
        index = offset
        while time.perf_counter() < stop:
            began = time.perf_counter()
            await stub.LocateKeys(requests[index % len(requests)], timeout=30)
            latencies.append(time.perf_counter() - began)
            calls += 1
            index += in_flight

    began = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(in_flight)))
    elapsed = time.perf_counter() - began
    return calls * batch / elapsed, calls / elapsed, latencies


async def check(stub: sharding_pb2_grpc.ShardingServiceAsyncStub, topology: Topology, keys: list[str]) -> None:
    answer = await stub.LocateKeys(pb.LocateKeysRequest(keys=keys))
    expected = topology.ring.locate_many(keys)
    if [loc.shard_id for loc in answer.locations] != expected:
        raise SystemExit("LocateKeys disagrees with the in-process ring")


async def main() -> None:
    """Start the server, run every phase, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each timed phase")
    seconds = parser.parse_args().seconds
    keys = [f"acct-{i:08d}" for i in range(POOL)]
    with tempfile.TemporaryDirectory(prefix="bench-sharding-") as tmp:
        server = ServerProcess(
            "servers.sharding",
            Path(tmp),
            env={"SHIELDX_SHARDING__HEALTH_MONITOR": "false", "SHIELDX_RATE_LIMIT__ENABLED": "false"},
        )
        topology = await prepare_registry(server.data_dir)
        await asyncio.to_thread(server.start)
        try:
            await report(server.address, topology, keys, seconds)
        finally:
            server.stop()


async def report(address: str, topology: Topology, keys: list[str], seconds: float) -> None:
    print(f"python {sys.version.split()[0]} on {platform.machine()}, {os.cpu_count()} cpus; {SHARDS} active shards")
    print("server: python -m servers.sharding (separate process), client: grpc.aio in this process\n")
    single = single_lookups(topology, keys, seconds)
    print(f"in process, HashRing.locate one key per call: {single:>12,.0f} keys/s  ({1e6 / single:.2f} µs/key)\n")
    print(f"{'batch':>6}  {'in process keys/s':>18}  {'RPC in flight':>13}  {'RPC keys/s':>12}  "
          f"{'calls/s':>9}  {'p50 ms':>8}  {'p99 ms':>8}  {'in-process / RPC':>16}")  # fmt: skip
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = sharding_pb2_grpc.ShardingServiceStub(channel)
        for batch in BATCHES:
            await check(stub, topology, keys[:batch])
            local = in_process(topology, keys, batch, seconds)
            for in_flight in (1, 8):
                rate, calls, latencies = await over_rpc(stub, keys, batch, in_flight, seconds)
                print(
                    f"{batch:>6}  {local:>18,.0f}  {in_flight:>13}  {rate:>12,.0f}  {calls:>9,.0f}  "
                    f"{percentile(latencies, 0.5) * 1e3:>8.2f}  {percentile(latencies, 0.99) * 1e3:>8.2f}  "
                    f"{local / rate:>15.1f}x"
                )


if __name__ == "__main__":
    asyncio.run(main())
