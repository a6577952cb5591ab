"""Deployment benchmarks in one run: in-process flag evaluations, and routing in the client channel.

1. Flag evaluations per second, in process (`FlagSet.resolve`, as the FlagService servicer
   calls it), for a static flag and a fractional flag with targeting, against a dict lookup;
   the flags and the timing loop are those of `bench_flag_eval.py`. Target: >= 200,000
   static evaluations per second.
2. The cost of routing in the client channel: Echo calls per second to one real mesh server
   through a plain `grpc.aio` channel and through a `RoutedChannel` following a real
   deployment server's route (90/10 over two versions whose instances are two addresses of
   that same server, so both sides reach the same process and differ only in the channel).
   Rounds alternate plain/routed so machine noise hits both alike; the median ratio is
   reported, with the per-call cost of picking a target measured alone.

Run: `.venv/bin/python tests/bench/bench_deployment.py [--seconds 1.0] [--calls 20000] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from clients.channel import ChannelOptions  # noqa: E402
from clients.routing import RoutedChannel, open_routed_channel  # noqa: E402
from servers.deployment.flagset import FlagSet, ValueType  # noqa: E402
from servers.deployment.service import build  # noqa: E402
from servers.mesh.config import load_config  # noqa: E402
from servers.mesh.server import MeshServer, Runtime, create_server  # noqa: E402
from servers.mesh.tracing import configure_tracing  # noqa: E402
from shieldx.deployment.v1 import deployment_pb2_grpc, routing_pb2  # noqa: E402
from tests.bench.bench_flag_eval import FLAGS, NOW, POOL, STATIC_TARGET, measure  # noqa: E402
from tests.support.echo import echo_mount, echo_pb2  # noqa: E402

ECHO_PATH = "/meshtest.v1.EchoService/Echo"


def flag_phase(seconds: float, repeat: int) -> dict[str, float]:
    """Static and fractional evaluations per second (CPU time), and a dict lookup for scale."""
    flags = FlagSet()
    for key, document in FLAGS.items():
        flags = flags.put_flag(flags.parse(key, json.dumps(document)))
    contexts = [{"targetingKey": f"user-{i}", "email": f"user-{i}@example.com"} for i in range(POOL)]
    mask = POOL - 1
    resolve, boolean, table = flags.resolve, ValueType.BOOLEAN, {"static": True}
    print("in-process flag evaluation (one thread):")
    baseline, _ = measure("  baseline: dict lookup", lambda i: table["static"], seconds, repeat)
    static, _ = measure("  static flag", lambda i: resolve("static", boolean, contexts[i & mask], NOW), seconds, repeat)
    fractional, _ = measure(
        "  fractional flag with targeting",
        lambda i: resolve("fractional", boolean, contexts[i & mask], NOW),
        seconds,
        repeat,
    )
    verdict = "meets" if static >= STATIC_TARGET else "MISSES"
    print(f"  static {static:,.0f}/s ({verdict} the {STATIC_TARGET:,}/s target); fractional {fractional:,.0f}/s\n")
    return {"static": static, "fractional": fractional, "baseline": baseline}


async def drive(channel: grpc.aio.Channel, calls: int, concurrency: int) -> float:
    """Calls per second for `calls` Echo calls from `concurrency` callers on `channel`."""
    echo = channel.unary_unary(
        ECHO_PATH,
        request_serializer=echo_pb2.EchoRequest.SerializeToString,
        response_deserializer=echo_pb2.EchoResponse.FromString,
    )
    request = echo_pb2.EchoRequest(text="x" * 64)
    await echo(request)
    remaining = calls

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await echo(request)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return calls / (time.perf_counter() - began)


async def start(runtime: Runtime, mounts: list[Any]) -> MeshServer:
    server = create_server(mounts, runtime, address="127.0.0.1:0")
    await server.start(metrics=False)
    return server


def quiet_config(service: str, data_dir: str) -> Any:
    config = load_config(service, environ={})
    config.data_dir = data_dir
    config.auth.enabled = False
    config.rate_limit.enabled = False
    return config


async def routing_phase(calls: int, rounds: int, concurrency: int) -> None:
    """Plain vs routed channel to the same Echo server, alternating rounds."""
    with tempfile.TemporaryDirectory() as data_dir:
        deployment_runtime = Runtime(quiet_config("deployment", data_dir))
        service = await build(deployment_runtime)
        deployment = await start(deployment_runtime, service.mounts)
        tasks = [asyncio.create_task(task()) for task in service.tasks]
        echo_runtime = Runtime(quiet_config("compliance", data_dir))
        echo = await start(echo_runtime, [echo_mount(echo_runtime)])
        control = grpc.aio.insecure_channel(f"127.0.0.1:{deployment.port}")
        stub = deployment_pb2_grpc.DeploymentServiceStub(control)
        for version, host in (("v1", "127.0.0.1"), ("v2", "localhost")):
            await stub.RegisterInstance(
                routing_pb2.RegisterInstanceRequest(service="echo", version=version, address=f"{host}:{echo.port}")
            )
        weights = [
            routing_pb2.VersionWeight(version="v1", weight_bp=9000),
            routing_pb2.VersionWeight(version="v2", weight_bp=1000),
        ]
        await stub.SetRouteWeights(routing_pb2.SetRouteWeightsRequest(service="echo", weights=weights))
        options = ChannelOptions(retry=None, telemetry=False)
        routed = open_routed_channel("echo", f"127.0.0.1:{echo.port}", control, options)
        assert await routed.wait_for_route(5.0) and len(routed.route.versions) == 2  # type: ignore[union-attr]
        plain = grpc.aio.insecure_channel(f"127.0.0.1:{echo.port}", options=[("grpc.enable_retries", 0)])
        pick = pick_cost(routed)
        targets: dict[str, Callable[[], Awaitable[float]]] = {
            "plain": lambda: drive(plain, calls, concurrency),
            "routed": lambda: drive(routed, calls, concurrency),
        }
        rates: dict[str, list[float]] = {"plain": [], "routed": []}
        for _ in range(rounds):
            for name, run in targets.items():
                rates[name].append(await run())
        await routed.close()
        await plain.close()
        await control.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await echo.stop(grace=0, drain_delay=0)
        await deployment.stop(grace=0, drain_delay=0)
        await echo_runtime.close()
        await deployment_runtime.close()
    print(f"routing in the client channel ({calls} Echo calls x {rounds} rounds, {concurrency} concurrent callers):")
    for name in ("plain", "routed"):
        print(f"  {name:6s} {statistics.median(rates[name]):8.0f} calls/s  (rounds: {rates[name]})")
    ratios = [r / p for r, p in zip(rates["routed"], rates["plain"], strict=True)]
    print(
        f"  ratio routed/plain: {statistics.median(ratios):.3f} (per round: {', '.join(f'{r:.3f}' for r in ratios)});"
        f" picking the target alone: {pick * 1e6:.2f} µs per call"
    )


def pick_cost(routed: RoutedChannel, picks: int = 200_000) -> float:
    """Seconds of CPU per `RoutedChannel.target` call (version by weight, then instance)."""
    began = time.process_time()
    for _ in range(picks):
        routed.target(None)
    return (time.process_time() - began) / picks


def main() -> None:
    """Run both phases and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of one timed flag run")
    parser.add_argument("--repeat", type=int, default=3, help="timed flag runs per phase (best kept)")
    parser.add_argument("--calls", type=int, default=20_000, help="Echo calls per routing round")
    parser.add_argument("--rounds", type=int, default=3, help="routing rounds (plain, routed alternate)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers")
    arguments = parser.parse_args()
    configure_tracing("bench")
    print(f"python {sys.version.split()[0]}\n")
    flag_phase(arguments.seconds, arguments.repeat)
    asyncio.run(routing_phase(arguments.calls, arguments.rounds, arguments.concurrency))


if __name__ == "__main__":
    main()
