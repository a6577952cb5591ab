"""The fault step of the interceptor chain on its own: `enter` per call with no fault, and with a
fault installed that matches none of the calls, against a no-op step in the same run.

    python tests/bench/bench_fault_step.py [--calls 200000] [--rounds 5]

The whole-chain figure is bench_mesh_overhead.py (`--idle-fault`); on a busy machine its rounds
vary by more than the fault step costs, so this isolates the step (one event loop, no network).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "generated")]

from servers.mesh.faults import Fault, FaultInjectionInterceptor, FaultTable  # noqa: E402
from servers.mesh.interception import CallInterceptor, Method  # noqa: E402


class NoOp(CallInterceptor[None]):
    async def enter(self, method: Method, context: Any, request: Any) -> None:
        return None


async def per_call(step: CallInterceptor[Any], calls: int) -> float:
    method = Method.parse("/meshtest.v1.EchoService/Echo")
    began = time.perf_counter()
    for _ in range(calls):
        await step.enter(method, None, None)  # type: ignore[arg-type]
    return (time.perf_counter() - began) / calls


async def main(calls: int, rounds: int) -> None:
    idle = FaultTable()
    idle.replace([Fault("idle", "meshtest.v1.EchoService/Ping", 100.0, delay_seconds=1.0)])
    steps: dict[str, CallInterceptor[Any]] = {
        "no-op step": NoOp(),
        "fault step, no fault": FaultInjectionInterceptor(FaultTable()),
        "fault step, idle fault": FaultInjectionInterceptor(idle),
    }
    timings: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            timings[name].append(await per_call(step, calls))
    base = statistics.median(timings["no-op step"])
    print(f"{calls} enters x {rounds} rounds")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"  {name:24s} {median * 1e9:7.0f} ns/call   {median / base:5.2f} x no-op")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
