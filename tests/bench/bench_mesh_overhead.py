"""Unary throughput through the full mesh interceptor chain vs a bare grpc.aio server.

Both servers run the same Echo servicer and answer the same message; one client (a plain aio
channel with 64 concurrent callers) drives them alternately, round after round, in one
process, so machine noise hits both alike. Reported: calls/s, p50 and p99 latency, and the
ratio mesh/bare (median of the rounds).

    python tests/bench/bench_mesh_overhead.py [--calls 20000] [--rounds 3] [--auth] [--record-spans] [--idle-fault]

With `--auth` the mesh server also verifies a real PASETO v4.public bearer token on every call.
Without an exporter the runtime records no spans (see servers/mesh/tracing.py); with
`--record-spans` every span is recorded and handed to a batch exporter (that discards them),
which is the cost of a deployment exporting traces. With `--idle-fault` a third server, the
same mesh server with a chaos fault installed that matches none of the calls (a delay on another
method), is driven in the same rounds: the cost of the fault step when a fault is active elsewhere.
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
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "generated")]

from servers.mesh.config import load_config  # noqa: E402
from servers.mesh.server import Runtime, create_server  # noqa: E402
from servers.mesh.tracing import configure_tracing  # noqa: E402
from tests.bench.latency import percentile  # noqa: E402
from tests.support.echo import EchoServicer, echo_mount, echo_pb2, echo_pb2_grpc  # noqa: E402

Metadata = tuple[tuple[str, str], ...]


async def drive(address: str, calls: int, concurrency: int, metadata: Metadata) -> tuple[float, list[float]]:
    """(calls per second, per-call latencies) for `calls` Echo calls from `concurrency` callers."""
    latencies: list[float] = []
    request = echo_pb2.EchoRequest(text="x" * 64)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        await stub.Echo(request, metadata=metadata)  # connect and warm
        remaining = calls

        async def caller() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                began = time.perf_counter()
                await stub.Echo(request, metadata=metadata)
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return calls / elapsed, latencies


async def bare_server(runtime: Runtime) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    echo_pb2_grpc.add_EchoServiceServicer_to_server(EchoServicer(runtime), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def auth_setup(runtime: Runtime) -> Metadata:
    """Give the runtime a real verifier and return metadata with a valid token (for --auth)."""
    from tests.support.tokens import mint_admin_token

    token, verifier = mint_admin_token(scopes=["echo.read"])
    runtime.verifier = verifier
    runtime.config.auth.enabled = True
    return (("authorization", f"Bearer {token}"),)


class _Discard(SpanExporter):
    def export(self, spans: object) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def idle_fault_server(config: object, metadata_runtime: Runtime) -> tuple[Runtime, object]:
    """A second mesh server whose fault table holds a fault that matches no Echo call."""
    from servers.mesh.faults import Fault

    runtime = Runtime(config)  # type: ignore[arg-type]
    runtime.verifier = metadata_runtime.verifier
    runtime.faults.replace([Fault("idle", "meshtest.v1.EchoService/Ping", 100.0, delay_seconds=1.0)])
    return runtime, create_server([echo_mount(runtime)], runtime, address="127.0.0.1:0")


async def main(calls: int, rounds: int, concurrency: int, auth: bool, record_spans: bool, idle_fault: bool) -> None:
    if record_spans:
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(_Discard()))
        trace.set_tracer_provider(provider)
    configure_tracing("bench")
    with tempfile.TemporaryDirectory() as data_dir:
        config = load_config("compliance", environ={})
        config.data_dir = data_dir
        config.auth.enabled = False
        config.rate_limit.rate_per_second = 1e9
        config.rate_limit.burst = 1e9
        runtime = Runtime(config)
        metadata: Metadata = await auth_setup(runtime) if auth else ()
        mesh = create_server([echo_mount(runtime)], runtime, address="127.0.0.1:0")
        await mesh.start(metrics=False)
        bare, bare_port = await bare_server(runtime)
        targets: dict[str, Callable[[], Awaitable[tuple[float, list[float]]]]] = {
            "bare": lambda: drive(f"127.0.0.1:{bare_port}", calls, concurrency, ()),
            "mesh": lambda: drive(f"127.0.0.1:{mesh.port}", calls, concurrency, metadata),
        }
        idle: Any = None
        if idle_fault:
            _, idle = idle_fault_server(config, runtime)
            await idle.start(metrics=False)
            targets["mesh+idle fault"] = lambda: drive(f"127.0.0.1:{idle.port}", calls, concurrency, metadata)
        rates: dict[str, list[float]] = {name: [] for name in targets}
        latencies: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(rounds):
            for name, run in targets.items():
                rate, lat = await run()
                rates[name].append(rate)
                latencies[name].extend(lat)
        await mesh.stop(grace=0, drain_delay=0)
        if idle is not None:
            await idle.stop(grace=0, drain_delay=0)
        await bare.stop(None)
    spans = "recorded and exported" if record_spans else "not recorded (no exporter)"
    shape = f"{calls} calls x {rounds} rounds, {concurrency} concurrent callers"
    print(f"{shape}, auth={'on' if auth else 'off'}, spans {spans}")
    for name, lat in latencies.items():
        print(
            f"  {name:15s} {statistics.median(rates[name]):8.0f} calls/s   "
            f"p50 {percentile(lat, 0.5) * 1e3:6.2f} ms   p99 {percentile(lat, 0.99) * 1e3:6.2f} ms"
        )
    for name in [n for n in rates if n != "bare"]:
        ratios = [m / b for m, b in zip(rates[name], rates["bare"], strict=True)]
        per_round = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"  ratio {name}/bare: {statistics.median(ratios):.2f} (per round: {per_round})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--auth", action="store_true")
    parser.add_argument("--record-spans", action="store_true")
    parser.add_argument("--idle-fault", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds, args.concurrency, args.auth, args.record_spans, args.idle_fault))
