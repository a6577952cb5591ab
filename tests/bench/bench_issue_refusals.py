"""How long a refused IssueToken takes for a known client id vs an unknown one (client-id enumeration).

The real token service (default Argon2id cost, SQLite store, full mesh server) on loopback;
one caller at a time, so the latency is the service's own work, not queueing. The kinds of
refusal alternate call by call, so machine noise hits them alike:

- unknown: a client id that does not exist, with a plausible secret (the baseline);
- known, wrong secret: a bootstrap workload's id with a wrong 43-character secret;
- known, long secret: that id with a 300-character secret (longer than any secret is allowed).

Each ratio is the median latency of a kind over the median of `unknown`, same run; 1.0 means
timing tells the kinds apart no better than noise.

    python tests/bench/bench_issue_refusals.py [--calls 60]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "generated")]

from clients.credentials import CredentialsFile  # noqa: E402
from shieldx.tokens.v1 import tokens_pb2, tokens_pb2_grpc  # noqa: E402
from tests.bench.bench_tokens import start_service  # noqa: E402


async def refused_in(stub: tokens_pb2_grpc.TokenServiceStub, client_id: str, secret: str) -> float:
    """Seconds one refused IssueToken took."""
    began = time.perf_counter()
    try:
        await stub.IssueToken(tokens_pb2.IssueTokenRequest(client_id=client_id, client_secret=secret))
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    else:
        raise AssertionError("a wrong secret was accepted")
    return time.perf_counter() - began


async def main(calls: int) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        runtime, _service, mesh = await start_service(data_dir)
        known = CredentialsFile.load(Path(data_dir) / "credentials").clients["credits"].client_id
        kinds = {
            "unknown": ("no-such-client", "w" * 43),
            "known, wrong secret": (known, "w" * 43),
            "known, long secret": (known, "w" * 300),
        }
        times: dict[str, list[float]] = {name: [] for name in kinds}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.port}") as channel:
            stub = tokens_pb2_grpc.TokenServiceStub(channel)
            for _ in range(3):  # connect and warm up
                await refused_in(stub, "no-such-client", "w")
            for _ in range(calls):
                for name, (client_id, secret) in kinds.items():
                    times[name].append(await refused_in(stub, client_id, secret))
        await mesh.stop(grace=0, drain_delay=0)
        await runtime.close()

    baseline = statistics.median(times["unknown"])
    print(f"Refused IssueToken, {calls} calls per kind, one caller, kinds alternating (SQLite store)")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:<22} p50 {median * 1e3:7.2f} ms   ratio to unknown {median / baseline:5.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=60)
    args = parser.parse_args()
    asyncio.run(main(args.calls))
