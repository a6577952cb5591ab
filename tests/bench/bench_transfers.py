"""Transfer throughput on two PostgreSQL shards: cross-shard (two-phase commit) vs same-shard, in one run.

Two throwaway clusters (`tests.support.pgcluster`, one primary each, fsync on unless
`--no-durable`), a sharding server process and a credits server process following its topology
(the coordinator log in its own SQLite store). Accounts are spread over both shards and funded.
Then, alternately for `--rounds` rounds, `--concurrency` callers send `--calls` Transfers of 1
credit (each with a request id):

- same-shard: both accounts on one shard (either), one transaction on that shard;
- cross-shard: one account on each shard, PREPARE TRANSACTION on both, the COMMIT decision in
  the coordinator log, COMMIT PREPARED on both.

Reported per kind: transfers/s and p50/p99 latency (median round), and the cross/same ratio.
Afterwards the total of all balances must be unchanged and no prepared transaction left.

    python tests/bench/bench_transfers.py [--calls 3000] [--rounds 3] [--concurrency 32] [--accounts 200]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "generated")]

import grpc  # noqa: E402

from clients.credits import CreditsClient  # noqa: E402
from clients.sharding import ShardingClient  # noqa: E402
from shieldx.credits.v1 import credits_pb2 as cpb  # noqa: E402
from tests.bench.latency import percentile  # noqa: E402
from tests.support.pgcluster import PgShard, PgWorkspace  # noqa: E402
from tests.support.shardedmesh import (  # noqa: E402
    TWO_PHASE,
    accounts_by_shard,
    balances,
    credits_process,
    prepared_transactions,
    rebalance,
    register,
    sharding_process,
    when_serving,
)

FUNDS = 1_000_000_000
Pair = tuple[str, str]


async def run_round(
    credits: CreditsClient, pairs: list[Pair], calls: int, concurrency: int
) -> tuple[float, list[float]]:
    """Send `calls` transfers over random `pairs` from `concurrency` callers; (transfers/s, latencies)."""
    latencies: list[float] = []
    remaining = calls

    async def caller(seed: int) -> None:
        nonlocal remaining
        rng = random.Random(seed)
        while remaining > 0:
            remaining -= 1
            source, target = rng.choice(pairs)
            if rng.random() < 0.5:
                source, target = target, source
            request = cpb.TransferRequest(
                from_account_id=source, to_account_id=target, amount=1, request_id=uuid.uuid4().hex
            )
            started = time.perf_counter()
            await credits.transfer(request, timeout=30)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller(seed) for seed in range(concurrency)))
    return calls / (time.perf_counter() - started), latencies


def two_of(rng: random.Random, accounts: list[str]) -> Pair:
    first, second = rng.sample(accounts, 2)
    return first, second


async def bench(args: argparse.Namespace, clusters: dict[str, PgShard], tmp: Path) -> None:
    sharding = sharding_process(tmp)
    credits = credits_process(tmp, sharding)
    sharding.start()
    try:
        sharding_channel = grpc.aio.insecure_channel(sharding.address)
        sharding_client = ShardingClient(sharding_channel)
        for shard_id, cluster in clusters.items():
            await register(sharding_client, shard_id, cluster)
        await rebalance(sharding_client)
        credits.start()
        channel = grpc.aio.insecure_channel(credits.address)
        client = CreditsClient(channel)
        groups = await accounts_by_shard(sharding_client, args.accounts, "bench")
        a, b = groups["shard-a"], groups["shard-b"]
        accounts = a + b
        await when_serving(client, accounts[0])
        for account_id in accounts:
            await client.purchase(cpb.PurchaseRequest(account_id=account_id, amount=FUNDS, payment_reference="bench"))
        rng = random.Random(7)
        same = [two_of(rng, a) for _ in range(len(a))] + [two_of(rng, b) for _ in range(len(b))]
        cross = [(rng.choice(a), rng.choice(b)) for _ in range(len(accounts))]
        kinds = {"same-shard": same, "cross-shard": cross}
        await run_round(client, same + cross, min(500, args.calls), args.concurrency)  # warm caches and pools
        results: dict[str, list[tuple[float, list[float]]]] = {kind: [] for kind in kinds}
        for round_ in range(args.rounds):
            for kind, pairs in kinds.items():
                rate, latencies = await run_round(client, pairs, args.calls, args.concurrency)
                results[kind].append((rate, latencies))
                print(f"  round {round_ + 1} {kind:<11}: {rate:8.0f} transfers/s", flush=True)
        total = sum((await balances(client, accounts)).values())
        assert total == FUNDS * len(accounts), f"total changed: {total}"
        assert prepared_transactions(list(clusters.values())) == 0, "prepared transactions left"
        await channel.close()
        await sharding_channel.close()
    finally:
        credits.stop()
        sharding.stop()

    print(
        f"\nTransfer, {args.concurrency} concurrent callers, {args.calls} calls per round, {args.rounds} rounds,"
        f" {len(accounts)} accounts on 2 shards (fsync {'on' if args.durable else 'off'}):"
    )
    medians: dict[str, float] = {}
    for kind, rounds in results.items():
        rate, latencies = sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]
        medians[kind] = rate
        print(
            f"  {kind:<11}: {rate:8.0f} transfers/s   p50 {percentile(latencies, 0.5) * 1000:6.1f} ms"
            f"   p99 {percentile(latencies, 0.99) * 1000:6.1f} ms   (rounds: "
            + ", ".join(f"{r:.0f}" for r, _ in rounds)
            + ")"
        )
    print(f"  cross/same: {medians['cross-shard'] / medians['same-shard']:.2f}; total of balances unchanged")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--accounts", type=int, default=200, help="accounts per shard")
    parser.add_argument("--no-durable", dest="durable", action="store_false", help="fsync off on the shards")
    args = parser.parse_args()
    with PgWorkspace() as pg, tempfile.TemporaryDirectory(prefix="bench-transfers-") as tmp:
        clusters = {
            "shard-a": pg.shard("ba", replicas=0, durable=args.durable, settings=TWO_PHASE),
            "shard-b": pg.shard("bb", replicas=0, durable=args.durable, settings=TWO_PHASE),
        }
        asyncio.run(bench(args, clusters, Path(tmp)))


if __name__ == "__main__":
    main()
