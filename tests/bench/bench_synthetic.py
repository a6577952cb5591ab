"""Synthetic data throughput: the vectorised generator vs a plain-Python generator, in one run.

Times, in one process:

- vectorised: `SyntheticDataGenerator` transactions as columnar chunks (numpy arrays, every
  column of the contract: ids, user ids, amounts, merchants, types, fraud scores, places, times);
- vectorised + quality: the same plus the exact per-chunk quality report the stream carries;
- vectorised + JSON Lines: the same plus serialising every row;
- plain Python: the same columns from the `random` module, one row at a time, as dicts, with
  the same distributions (Pareto amounts, weighted types and places, exponential fraud score,
  a pool of merchant names, sorted uniform arrival times);
- users and network flows, vectorised, for scale.

Run: `.venv/bin/python tests/bench/bench_synthetic.py [--rows 1000000] [--chunk-size 100000]`.
Each phase runs `--repeat` times and the best is reported.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "generated")]

from servers.deception.profiles import TransactionProfile  # noqa: E402
from servers.deception.quality import assess  # noqa: E402
from servers.deception.synthetic import DatasetKind, SyntheticDataGenerator  # noqa: E402


def plain_python_transactions(rows: int, seed: int, merchants: list[str]) -> list[dict[str, Any]]:
    """The transactions columns row by row with the standard library's `random`."""
    profile = TransactionProfile()
    rng = random.Random(seed)
    types = profile.transaction_type.labels
    type_weights = list(itertools.accumulate(profile.transaction_type.probabilities.tolist()))
    places = [label.split("/", 1) for label in profile.place.labels]
    place_weights = list(itertools.accumulate(profile.place.probabilities.tolist()))
    merchant_weights = list(itertools.accumulate(1.0 / rank for rank in range(1, len(merchants) + 1)))
    pareto = profile.amount_minor
    truncated = (pareto.scale / pareto.upper) ** pareto.shape
    span = rows * 1_000_000 / profile.rate_per_second
    times = sorted(int(profile.start_unix_micros + rng.random() * span) for _ in range(rows))
    result = []
    for index in range(rows):
        country, city = places[bisect.bisect_right(place_weights, rng.random() * place_weights[-1])]
        tail = 1.0 - rng.random() * (1.0 - truncated)
        result.append(
            {
                "transaction_id": f"txn_{rng.getrandbits(64):016x}",
                "user_id": f"usr_{int(profile.user_population * rng.random() ** 2):016x}",
                "amount_minor": int(pareto.scale * tail ** (-1.0 / pareto.shape)),
                "currency": profile.currency,
                "merchant": merchants[bisect.bisect_right(merchant_weights, rng.random() * merchant_weights[-1])],
                "transaction_type": types[bisect.bisect_right(type_weights, rng.random() * type_weights[-1])],
                "fraud_score": min(rng.expovariate(1.0 / profile.fraud_score.scale), 1.0),
                "country": country,
                "city": city,
                "time_unix_micros": times[index],
            }
        )
    return result


def best_rate(label: str, rows: int, repeat: int, run: Callable[[], object]) -> float:
    """Run `run` `repeat` times; print and return the best rows per second."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    rate = rows / best
    print(f"{label:<44} {rows:>10,} rows  {best:8.3f} s  {rate:>14,.0f} rows/s")
    return rate


def main() -> None:
    """Parse arguments, run every phase, print a table and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="transactions per vectorised phase")
    parser.add_argument("--plain-rows", type=int, default=200_000, help="transactions for plain Python")
    parser.add_argument("--chunk-size", type=int, default=100_000, help="rows per chunk")
    parser.add_argument("--repeat", type=int, default=3, help="runs per phase (best is reported)")
    args = parser.parse_args()
    generator = SyntheticDataGenerator()
    seed = 20250101
    kind = DatasetKind.TRANSACTIONS
    # Warm the per-batch merchant pool and numpy's code paths outside the timings.
    merchants = next(generator.generate(kind, seed, 1_000)).columns["merchant"]
    pool = sorted(set(merchants.tolist()))

    def vectorised() -> None:
        for _ in generator.generate(kind, seed, args.rows, args.chunk_size):
            pass

    def with_quality() -> None:
        for chunk in generator.generate(kind, seed, args.rows, args.chunk_size):
            assess(chunk.columns, generator.targets(kind, chunk.plan.row_offset, chunk.row_count))

    def with_json() -> None:
        for chunk in generator.generate(kind, seed, args.plain_rows, args.chunk_size):
            chunk.to_json_lines()

    print(f"numpy columnar chunks of {args.chunk_size:,} rows; best of {args.repeat}")
    fast = best_rate("transactions, vectorised (columnar)", args.rows, args.repeat, vectorised)
    best_rate("transactions, vectorised + quality report", args.rows, args.repeat, with_quality)
    best_rate("transactions, vectorised + JSON Lines", args.plain_rows, args.repeat, with_json)
    slow = best_rate(
        "transactions, plain Python (random, loop)",
        args.plain_rows,
        args.repeat,
        lambda: plain_python_transactions(args.plain_rows, seed, pool),
    )

    def drain(other: DatasetKind, rows: int) -> Callable[[], None]:
        def run() -> None:
            for _ in generator.generate(other, seed, rows, args.chunk_size):
                pass

        return run

    for other, label in ((DatasetKind.USERS, "users"), (DatasetKind.NETWORK_FLOWS, "network flows")):
        best_rate(f"{label}, vectorised (columnar)", args.rows // 4, args.repeat, drain(other, args.rows // 4))
    print(f"vectorised / plain Python: {fast / slow:.1f}x; target >= 1,000,000 transactions/s: {fast >= 1e6}")


if __name__ == "__main__":
    main()
