"""In-process flag evaluations per second, against a plain dict lookup, in one run.

Times, on one thread, `FlagSet.resolve` as the FlagService servicer calls it (no gRPC):

- baseline: a plain dict lookup of a flag value by key (what a hard-coded table costs);
- static: a boolean flag without targeting (the answer is computed when the flag is stored);
- disabled: a disabled flag (also precomputed);
- targeted: `ends_with` on the context's email, no split;
- fractional: a 30/70 `fractional` split on flag key + targeting key behind an `in` check,
  so each evaluation runs JSON Logic, MurmurHash3 and the bucket search;
- fractional, murmur3-v1: the same with flagd's legacy bucketing;
- resolve_all: all five flags for one context;
- murmur3 alone, and the route picker's random and sticky picks (the per-call routing work
  of the client channel, without the channel).

Contexts come from a pool of distinct targeting keys, so nothing is served from a cache.
Rates are against CPU time of this process (per core, whatever else runs on the box) and
wall time; each phase runs `--repeat` times and the best is kept. The target is at least
200 000 static evaluations per second.

Run: `.venv/bin/python tests/bench/bench_flag_eval.py [--seconds 1.0] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "generated")]

from clients.bucketing import murmur3_x86_32  # noqa: E402
from clients.routes import RoutePicker  # noqa: E402
from servers.deployment.flagset import FlagSet, ValueType  # noqa: E402
from servers.deployment.routes import build_route, new_instance, split_weights  # noqa: E402

POOL = 4096
NOW = 1_900_000_000.0
REGISTERED = datetime.fromtimestamp(NOW, UTC)
STATIC_TARGET = 200_000
FLAGS = {
    "static": {"variants": {"on": True, "off": False}, "defaultVariant": "on"},
    "disabled": {"state": "DISABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"},
    "targeted": {
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", "off"]},
    },
    "fractional": {
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {
            "if": [
                {"in": ["@example.com", {"var": "email"}]},
                {"fractional": [["on", 30], ["off", 70]]},
                "off",
            ]
        },
    },
    "fractional-v1": {
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "metadata": {"bucketing": "murmur3-v1"},
        "targeting": {"fractional": [["on", 30], ["off", 70]]},
    },
}


def measure(name: str, operation: Callable[[int], object], seconds: float, repeat: int) -> tuple[float, float]:
    """Best (CPU-time rate, wall-time rate) of `operation` over `repeat` runs of about `seconds` each."""
    batch = 1
    while True:  # grow the batch until one batch takes about a tenth of a run
        started = time.perf_counter()
        for i in range(batch):
            operation(i)
        if time.perf_counter() - started > seconds / 10 or batch >= 1 << 22:
            break
        batch *= 2
    best_cpu = best_wall = 0.0
    for _ in range(repeat):
        done = 0
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        while time.perf_counter() - wall_start < seconds:
            for i in range(batch):
                operation(i)
            done += batch
        cpu = time.process_time() - cpu_start
        wall = time.perf_counter() - wall_start
        best_cpu = max(best_cpu, done / cpu if cpu > 0 else 0.0)
        best_wall = max(best_wall, done / wall)
    print(f"{name:<40} {best_cpu:>12,.0f}/s cpu  {1e6 / best_cpu:>8.2f} µs  {best_wall:>12,.0f}/s wall", flush=True)
    return best_cpu, best_wall


def main() -> None:
    """Run every phase and print the rates and the ratios that matter."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of one timed run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per phase (best kept)")
    arguments = parser.parse_args()

    flags = FlagSet()
    for key, document in FLAGS.items():
        flags = flags.put_flag(flags.parse(key, json.dumps(document)))
    contexts = [{"targetingKey": f"user-{i}", "email": f"user-{i}@example.com"} for i in range(POOL)]
    keys = [context["targetingKey"] for context in contexts]
    table = {key: True for key in FLAGS}
    mask = POOL - 1
    resolve = flags.resolve
    boolean = ValueType.BOOLEAN
    picker = RoutePicker(
        build_route(
            "credits",
            split_weights("v1", "v2", 10),
            [new_instance("credits", v, f"10.0.0.{i}:5004", "", REGISTERED) for i, v in enumerate(("v1", "v2"))],
            revision=1,
        )
    )
    rng = random.Random(7)
    share = sum(resolve("fractional", boolean, c, NOW).value for c in contexts) / POOL
    print(f"python {sys.version.split()[0]}; one thread; {POOL} distinct contexts; fractional 'on' share {share:.3f}\n")

    baseline, _ = measure("baseline: dict lookup", lambda i: table["static"], arguments.seconds, arguments.repeat)
    static, _ = measure(
        "static flag",
        lambda i: resolve("static", boolean, contexts[i & mask], NOW),
        arguments.seconds,
        arguments.repeat,
    )
    measure(
        "disabled flag",
        lambda i: resolve("disabled", boolean, contexts[i & mask], NOW),
        arguments.seconds,
        arguments.repeat,
    )
    measure(
        "targeted flag (ends_with)",
        lambda i: resolve("targeted", boolean, contexts[i & mask], NOW),
        arguments.seconds,
        arguments.repeat,
    )
    fractional, _ = measure(
        "fractional flag with targeting",
        lambda i: resolve("fractional", boolean, contexts[i & mask], NOW),
        arguments.seconds,
        arguments.repeat,
    )
    measure(
        "fractional flag, murmur3-v1 bucketing",
        lambda i: resolve("fractional-v1", boolean, contexts[i & mask], NOW),
        arguments.seconds,
        arguments.repeat,
    )
    measure(
        "resolve_all (5 flags)",
        lambda i: flags.resolve_all(contexts[i & mask], NOW),
        arguments.seconds,
        arguments.repeat,
    )
    measure("murmur3_x86_32 of a key", lambda i: murmur3_x86_32(keys[i & mask]), arguments.seconds, arguments.repeat)
    measure("route pick, random", lambda i: picker.pick(rng=rng), arguments.seconds, arguments.repeat)
    measure("route pick, sticky", lambda i: picker.pick(keys[i & mask]), arguments.seconds, arguments.repeat)
    verdict = "meets" if static >= STATIC_TARGET else "MISSES"
    print(
        f"\nstatic: {static:,.0f}/s ({verdict} the {STATIC_TARGET:,}/s target), "
        f"{baseline / static:.1f}x the cost of a dict lookup;  fractional: {fractional:,.0f}/s, "
        f"{static / fractional:.1f}x the cost of static (per core, CPU time)"
    )


if __name__ == "__main__":
    main()
