"""IssueToken throughput of the real token service vs a bare grpc.aio server, and local verification rate.

In one process and one run:

- bare: a plain `grpc.aio` server whose IssueToken returns one constant response (no store,
  no Argon2id, no signing, no interceptors) — the ceiling of the RPC itself;
- service: the token service from `servers.tokens.service.build` on the mesh runtime (the
  full interceptor chain, SQLite store), IssueToken with real client credentials. Calls
  alternate with the bare server round after round, from 64 concurrent callers each.
  Argon2id dominates IssueToken by design; the secret hasher remembers a secret that
  verified (in memory, as a keyed MAC), so a client asking again skips it. Measured both
  ways: `warm` (one client asking repeatedly, the cache hit) and `cold` (the cache off, so
  every call pays a full Argon2id verification at the configured cost);
- Argon2id alone: one verification at the configured cost, on one thread;
- local verification of tokens the service issued (`TokenVerifier.verify`, cold and
  cached), with `measure` from bench_token_verify.py.

    python tests/bench/bench_tokens.py [--calls 3000] [--rounds 3] [--cold-calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "generated")]

from clients.credentials import CredentialsFile  # noqa: E402
from servers.mesh.config import load_config  # noqa: E402
from servers.mesh.server import Runtime, create_server  # noqa: E402
from servers.mesh.tracing import configure_tracing  # noqa: E402
from servers.mesh.verifier import TokenVerifier  # noqa: E402
from servers.tokens.client_secrets import Argon2idCost, ClientSecretHasher  # noqa: E402
from servers.tokens.service import TokenServicer, build  # noqa: E402
from shieldx.tokens.v1 import tokens_pb2, tokens_pb2_grpc  # noqa: E402
from tests.bench.bench_token_verify import measure  # noqa: E402
from tests.bench.latency import percentile  # noqa: E402


class ConstantTokenService(tokens_pb2_grpc.TokenServiceServicer):
    """The baseline: IssueToken answers the same prepared response to everyone."""

    def __init__(self, response: tokens_pb2.IssueTokenResponse) -> None:
        self._response = response

    async def IssueToken(self, request: Any, context: Any) -> tokens_pb2.IssueTokenResponse:
        return self._response


async def drive(
    address: str, request: tokens_pb2.IssueTokenRequest, calls: int, concurrency: int
) -> tuple[float, list[float]]:
    """(calls per second, latencies) of `calls` IssueToken calls from `concurrency` callers."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tokens_pb2_grpc.TokenServiceStub(channel)
        await stub.IssueToken(request)  # connect, and warm the secret cache
        remaining = calls

        async def caller() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                began = time.perf_counter()
                await stub.IssueToken(request)
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return calls / elapsed, latencies


def report(name: str, rates: list[float], latencies: list[float]) -> None:
    print(
        f"  {name:<22} {statistics.median(rates):8.0f} calls/s   "
        f"p50 {percentile(latencies, 0.5) * 1e3:7.2f} ms   p99 {percentile(latencies, 0.99) * 1e3:7.2f} ms"
    )


def servicer_of(server: Any) -> TokenServicer:
    return next(m.servicer for m in server.mounts if isinstance(m.servicer, TokenServicer))


async def start_service(data_dir: str) -> tuple[Runtime, Any, Any]:
    """The real token service (default Argon2id cost, bootstrap on) on the full mesh server."""
    config = load_config("tokens", environ={})
    config.data_dir = data_dir
    config.port = 0
    config.rate_limit.rate_per_second = 1e9
    config.rate_limit.burst = 1e9
    runtime = Runtime(config)
    service = await build(runtime)
    mesh = create_server(service.mounts, runtime, address="127.0.0.1:0")
    await mesh.start(metrics=False)
    return runtime, service, mesh


async def start_bare(sample: tokens_pb2.IssueTokenResponse) -> tuple[grpc.aio.Server, int]:
    bare = grpc.aio.server()
    baseline = ConstantTokenService(sample)  # type: ignore[abstract]  # only IssueToken is called
    tokens_pb2_grpc.add_TokenServiceServicer_to_server(baseline, bare)
    port = bare.add_insecure_port("127.0.0.1:0")
    await bare.start()
    return bare, port


async def alternate(
    targets: dict[str, Callable[[], Awaitable[tuple[float, list[float]]]]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run each target once per round, alternating, so machine noise hits all alike."""
    rates: dict[str, list[float]] = {name: [] for name in targets}
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, run in targets.items():
            rate, lat = await run()
            rates[name].append(rate)
            latencies[name].extend(lat)
    return rates, latencies


def argon2_milliseconds(secret_hash: str, secret: str, cost: Argon2idCost) -> float:
    """Time of one Argon2id verification on this thread."""
    hasher = ClientSecretHasher(cost, cache_size=0)
    began = time.perf_counter()
    for _ in range(10):
        assert hasher.check_secret(secret_hash, secret)
    return (time.perf_counter() - began) / 10 * 1e3


async def main(calls: int, rounds: int, concurrency: int, cold_calls: int, seconds: float) -> None:
    configure_tracing("bench")
    with tempfile.TemporaryDirectory() as data_dir:
        runtime, service, mesh = await start_service(data_dir)
        workload = CredentialsFile.load(Path(data_dir) / "credentials").clients["credits"]
        request = tokens_pb2.IssueTokenRequest(client_id=workload.client_id, client_secret=workload.client_secret)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.port}") as channel:
            sample = await tokens_pb2_grpc.TokenServiceStub(channel).IssueToken(request)
        bare, bare_port = await start_bare(sample)
        rates, latencies = await alternate(
            {
                "bare": lambda: drive(f"127.0.0.1:{bare_port}", request, calls, concurrency),
                "service (warm)": lambda: drive(f"127.0.0.1:{mesh.port}", request, calls, concurrency),
            },
            rounds,
        )
        servicer = servicer_of(service)
        cost = Argon2idCost()
        servicer.hasher = ClientSecretHasher(cost, cache_size=0)
        cold_rate, cold_latencies = await drive(f"127.0.0.1:{mesh.port}", request, cold_calls, concurrency)
        client = await servicer.store.get_client(workload.client_id)
        assert client is not None
        argon2_ms = argon2_milliseconds(client.secret_hash, workload.client_secret, cost)
        await mesh.stop(grace=0, drain_delay=0)
        await bare.stop(None)
        await runtime.close()

    print(f"IssueToken: {calls} calls x {rounds} rounds, {concurrency} concurrent callers (SQLite store)")
    for name in rates:
        report(name, rates[name], latencies[name])
    report("service (cold)", [cold_rate], cold_latencies)
    ratios = [s / b for s, b in zip(rates["service (warm)"], rates["bare"], strict=True)]
    per_round = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"  ratio service(warm)/bare: {statistics.median(ratios):.2f} (per round: {per_round})")
    print(
        f"  Argon2id verification alone (opslimit={cost.opslimit}, memlimit={cost.memlimit >> 20} MiB): "
        f"{argon2_ms:.1f} ms on one thread"
    )

    print("\nLocal verification of an issued token (one thread):")
    own = runtime.verifier
    assert isinstance(own, TokenVerifier)
    token = sample.access_token
    cold = TokenVerifier(audience="shieldx", issuer="shieldx-tokens", cache_size=0)
    cold.replace_keys(servicer.authority.ring.trusted_keys(servicer.authority.now()))
    measure("cold: TokenVerifier.verify, no cache", lambda i: cold.verify(token), seconds, 3)
    measure("warm: the service's own verifier, cached", lambda i: own.verify(token), seconds, 3)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--cold-calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of one verification timing run")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds, args.concurrency, args.cold_calls, args.seconds))
