"""Credits ledger benchmark on PostgreSQL: Consume throughput vs a bare gRPC server, and full replay rate.

In one run, on one machine:

- Consume: 64 concurrent callers send Consume (each with a request id) to a real credits server
  process (`python -m servers.credits`, auth and rate limit off) spread over many funded
  accounts, and, alternately, the same calls to a bare grpc.aio server process that answers a
  fixed ConsumeResponse, and to the mesh runtime answering the same fixed response (the
  ceiling the runtime's interceptor chain leaves to any service). Every server runs on the
  default asyncio event loop. Reported: calls/s, p50/p99 latency, the server process's CPU
  time per call (steadier than rates on a shared machine), and the ratio credits/bare (the
  median over rounds). Also reported: the same load on one hot account.
- Replay: a fresh schema is bulk-loaded with a realistic mixed history (made by the real
  decisions, sealed into the audit chain), then the read models are rebuilt from it through
  the database (`servers.credits.rebuild`); reported in events per second.

    python tests/bench/bench_credits.py [--calls 20000] [--rounds 3] [--accounts 1000] [--events 300000]
                                        [--replays 3]

Needs PostgreSQL at $SHIELDX_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test);
its schemas are dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "generated")]

import grpc  # noqa: E402
import psycopg  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402

from servers.credits.account import AccountState  # noqa: E402
from servers.credits.audit import GENESIS_HASH, seal  # noqa: E402
from servers.credits.commands import Consume, Purchase, Reserve, SetThreshold, Transfer  # noqa: E402
from servers.credits.domain import decide, decide_transfer  # noqa: E402
from servers.credits.events import Event, SealedPaymentReference  # noqa: E402
from servers.credits.rebuild import MIGRATIONS, rebuild  # noqa: E402
from servers.mesh.errors import DomainError  # noqa: E402
from servers.mesh.storage import open_database  # noqa: E402
from shieldx.credits.v1 import credits_pb2, credits_pb2_grpc  # noqa: E402
from tests.bench.latency import percentile  # noqa: E402
from tests.support.processes import ServerProcess  # noqa: E402

POSTGRES_URL = os.environ.get("SHIELDX_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
Outcome = tuple[float, list[float], int]
"""(calls per second, latencies, calls refused)."""
Measured = tuple[float, list[float], int, float]
"""An `Outcome` and the server's CPU seconds per call."""


# -- the bare baseline ------------------------------------------------------------------------------


class BareCredits(credits_pb2_grpc.CreditsServiceServicer):
    """Answers every Consume with the same response: the floor of any Consume implementation."""

    answer = credits_pb2.ConsumeResponse(
        balance=credits_pb2.Balance(account_id="acct-000001", available=999, total=999, version=2), event_version=2
    )

    async def Consume(self, request: credits_pb2.ConsumeRequest, context: Any) -> credits_pb2.ConsumeResponse:
        return self.answer


async def serve_bare() -> None:
    """The bare server process: Consume and health on $SHIELDX_PORT, nothing else."""
    server = grpc.aio.server()
    # Only Consume is answered; the generated base answers the rest UNIMPLEMENTED.
    credits_pb2_grpc.add_CreditsServiceServicer_to_server(BareCredits(), server)  # type: ignore[abstract]
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"127.0.0.1:{os.environ['SHIELDX_PORT']}")
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


async def serve_mesh() -> None:
    """The same fixed answers on the mesh runtime (all interceptors, auth and rate limit off)."""
    from servers.mesh.config import load_config
    from servers.mesh.server import Mount, Runtime, create_server
    from servers.mesh.tracing import configure_tracing

    configure_tracing("bench-mesh")
    config = load_config("credits")
    config.auth.enabled = False
    config.rate_limit.enabled = False
    runtime = Runtime(config)
    mount = Mount.of(credits_pb2, credits_pb2_grpc, "CreditsService", servicer=BareCredits())  # type: ignore[abstract]
    server = create_server([mount], runtime)
    await server.start(metrics=False)
    await server.server.wait_for_termination()


# -- load -----------------------------------------------------------------------------------------


async def drive(address: str, calls: int, concurrency: int, accounts: list[str]) -> Outcome:
    """Send `calls` Consume calls with request ids from `concurrency` callers over `accounts`."""
    latencies: list[float] = []
    refused = 0
    rng = random.Random(7)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = credits_pb2_grpc.CreditsServiceStub(channel)
        await stub.Consume(credits_pb2.ConsumeRequest(account_id=accounts[0], amount=1))  # connect and warm
        remaining = calls

        async def caller() -> None:
            nonlocal remaining, refused
            while remaining > 0:
                remaining -= 1
                request = credits_pb2.ConsumeRequest(
                    account_id=rng.choice(accounts), amount=1, request_id=uuid.uuid4().hex
                )
                began = time.perf_counter()
                try:
                    await stub.Consume(request)
                except grpc.aio.AioRpcError:
                    refused += 1
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return calls / elapsed, latencies, refused


def cpu_seconds(server: ServerProcess) -> float:
    """CPU time (user + system) the server process has used so far; 0 where /proc is not available."""
    assert server.process is not None
    try:
        fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measured_drive(server: ServerProcess, calls: int, concurrency: int, accounts: list[str]) -> Measured:
    """`drive`, with the server's CPU time per call."""
    before = cpu_seconds(server)
    rate, latencies, refused = await drive(server.address, calls, concurrency, accounts)
    return rate, latencies, refused, (cpu_seconds(server) - before) / calls


async def fund(address: str, accounts: list[str]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = credits_pb2_grpc.CreditsServiceStub(channel)
        for start in range(0, len(accounts), 64):
            await asyncio.gather(
                *(
                    stub.Purchase(credits_pb2.PurchaseRequest(account_id=a, amount=10**12, payment_reference="bench"))
                    for a in accounts[start : start + 64]
                )
            )


def line(name: str, rate: float, latencies: list[float], cpu: float, refused: int = 0) -> str:
    text = (
        f"  {name:26s} {rate:8.0f} calls/s   p50 {percentile(latencies, 0.5) * 1e3:6.2f} ms"
        f"   p99 {percentile(latencies, 0.99) * 1e3:6.2f} ms   server CPU {cpu * 1e6:4.0f} us/call"
    )
    return text + (f"   ({refused} refused)" if refused else "")


# -- replay ---------------------------------------------------------------------------------------


def history(total: int, accounts: int, seed: int = 11) -> list[Event]:
    """About `total` events over `accounts`, made by the real decisions (purchases, consumes, reservations,
    transfers, thresholds and alerts), in append order."""
    rng = random.Random(seed)
    names = [f"acct-{i:06d}" for i in range(accounts)]
    states = {name: AccountState(name) for name in names}
    reference = SealedPaymentReference("v1:0badc0de:" + "QUJD" * 16, "0badc0de:" + "ab" * 32)
    events: list[Event] = []
    now = datetime(2026, 1, 1, tzinfo=UTC)
    while len(events) < total:
        now += timedelta(milliseconds=rng.randint(1, 50))
        name = rng.choice(names)
        state = states[name]
        roll = rng.random()
        try:
            if not state.exists or roll < 0.08:
                decision = decide(state, Purchase(name, rng.randint(100, 5000), reference), now=now)
            elif roll < 0.65:
                decision = decide(state, Consume(name, rng.randint(1, 40), reference="order"), now=now)
            elif roll < 0.85:
                ttl = timedelta(seconds=rng.choice([1, 30, 600]))
                decision = decide(state, Reserve(name, uuid.uuid4().hex, rng.randint(1, 60), ttl=ttl), now=now)
            elif roll < 0.97:
                other = states[rng.choice(names)]
                if other is state or not other.exists:
                    continue
                both = decide_transfer(
                    state, other, Transfer(uuid.uuid4().hex, name, other.account_id, rng.randint(1, 30)), now=now
                )
                for side, decided in ((state, both.outgoing), (other, both.incoming)):
                    for event in decided.events:
                        side.apply(event)
                    events.extend(decided.events)
                continue
            else:
                decision = decide(state, SetThreshold(name, rng.randint(0, 500)), now=now)
        except DomainError:
            continue
        for event in decision.events:
            state.apply(event)
        events.extend(decision.events)
    return events


def bulk_load(schema: str, events: list[Event]) -> None:
    """Seal each account's events into its chain and COPY them into the schema's event store."""
    by_account: dict[str, list[Event]] = {}
    for event in events:
        by_account.setdefault(event.account_id, []).append(event)
    with psycopg.connect(POSTGRES_URL, options=f"-c search_path={schema}") as connection:
        with (
            connection.cursor() as cursor,
            cursor.copy(
                "COPY event_store (account_id, version, type, body, occurred_at, trace_id, prev_hash, hash) FROM STDIN"
            ) as copy,
        ):
            for stream in by_account.values():
                for row in seal(stream, GENESIS_HASH):
                    copy.write_row(
                        (row.account_id, row.version, row.type, row.body, row.occurred_at, row.trace_id,
                         row.prev_hash, row.hash)
                    )  # fmt: skip
        connection.execute("ANALYZE event_store")


async def replay_rate(events: int, accounts: int, replays: int) -> None:
    schema = f"bench_replay_{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    made = history(events, accounts)
    print(f"history: {len(made):,} events over {accounts:,} accounts, made in {time.perf_counter() - began:.1f} s")
    database = await open_database(
        "credits", data_dir=".", database_url=POSTGRES_URL, schema=schema, migrations=MIGRATIONS
    )
    try:
        began = time.perf_counter()
        await asyncio.to_thread(bulk_load, schema, made)
        print(f"bulk-loaded into PostgreSQL in {time.perf_counter() - began:.1f} s")
        rates = []
        for _ in range(replays):
            report = await rebuild(database)
            rates.append(report.events_per_second)
            print(
                f"  rebuild: {report.events:,} events, {report.accounts:,} accounts, {report.reservations:,}"
                f" reservations in {report.seconds:.2f} s = {report.events_per_second:,.0f} events/s"
                f" (reading and replaying {report.replay_seconds:.2f} s, catching up and swapping"
                f" {report.seconds - report.replay_seconds:.2f} s)"
            )
        print(f"  full replay rate (best of {len(rates)}): {max(rates):,.0f} events/s (target >= 100,000/s)")
    finally:
        await database.close()
        drop(schema)


def drop(schema: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# -- main -----------------------------------------------------------------------------------------


async def consume_throughput(calls: int, rounds: int, concurrency: int, accounts: int, hot_calls: int) -> None:
    schema = f"bench_credits_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            "SHIELDX_DATABASE_URL": POSTGRES_URL,
            "SHIELDX_DATABASE_SCHEMA": schema,
            "SHIELDX_RATE_LIMIT__ENABLED": "false",
            "SHIELDX_LOG_LEVEL": "WARNING",
        }
        ledger = ServerProcess("servers.credits", Path(scratch), env=env)
        bare = ServerProcess("tests.bench.bench_credits", Path(scratch), args=["--bare-server"], name="bare")
        mesh = ServerProcess("tests.bench.bench_credits", Path(scratch), args=["--mesh-server"], name="mesh")
        try:
            await asyncio.to_thread(ledger.start)
            await asyncio.to_thread(bare.start)
            await asyncio.to_thread(mesh.start)
            names = [f"acct-{i:06d}" for i in range(accounts)]
            await fund(ledger.address, [*names, "hot"])
            targets: dict[str, Callable[[], Awaitable[Measured]]] = {
                "bare": lambda: measured_drive(bare, calls, concurrency, names),
                "mesh": lambda: measured_drive(mesh, calls, concurrency, names),
                "credits": lambda: measured_drive(ledger, calls, concurrency, names),
            }
            rates: dict[str, list[float]] = {name: [] for name in targets}
            latencies: dict[str, list[float]] = {name: [] for name in targets}
            cpu: dict[str, list[float]] = {name: [] for name in targets}
            refused = 0
            for _ in range(rounds):
                for name, run in targets.items():
                    rate, lat, lost, seconds = await run()
                    rates[name].append(rate)
                    latencies[name].extend(lat)
                    cpu[name].append(seconds)
                    refused += lost
            hot_rate, hot_latencies, hot_refused, hot_cpu = await measured_drive(
                ledger, hot_calls, concurrency, ["hot"]
            )
        finally:
            ledger.stop()
            bare.stop()
            mesh.stop()
            drop(schema)
    print(
        f"Consume: {calls} calls x {rounds} rounds, {concurrency} concurrent callers, {accounts} accounts"
        " (every server on the default asyncio event loop)"
    )
    labels = {"bare": "bare grpc.aio", "mesh": "mesh runtime, fixed answer", "credits": "credits (PostgreSQL)"}
    for name, label in labels.items():
        lost = refused if name == "credits" else 0
        print(line(label, statistics.median(rates[name]), latencies[name], statistics.median(cpu[name]), lost))
    ratios = [c / b for c, b in zip(rates["credits"], rates["bare"], strict=True)]
    print(
        f"  ratio credits/bare: {statistics.median(ratios):.2f} (target >= 0.5; per round:"
        f" {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    bare_cpu, credits_cpu = statistics.median(cpu["bare"]), statistics.median(cpu["credits"])
    if bare_cpu > 0:
        print(f"  server CPU per call, credits/bare: {credits_cpu / bare_cpu:.2f}x")
    print(line("credits, one hot account", hot_rate, hot_latencies, hot_cpu, hot_refused))


async def main(args: argparse.Namespace) -> None:
    if not args.skip_consume:
        await consume_throughput(args.calls, args.rounds, args.concurrency, args.accounts, args.hot_calls)
    if not args.skip_replay:
        await replay_rate(args.events, args.replay_accounts, args.replays)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mesh-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--hot-calls", type=int, default=5000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--replay-accounts", type=int, default=2000)
    parser.add_argument("--replays", type=int, default=3, help="rebuilds timed (the best is reported)")
    parser.add_argument("--skip-consume", action="store_true")
    parser.add_argument("--skip-replay", action="store_true")
    arguments = parser.parse_args()
    if arguments.bare_server:
        asyncio.run(serve_bare())
    elif arguments.mesh_server:
        asyncio.run(serve_mesh())
    else:
        asyncio.run(main(arguments))
