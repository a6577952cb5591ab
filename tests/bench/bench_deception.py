"""Synthetic transactions per second: over the GenerateSyntheticData stream, in process, and in plain Python.

Phases, in one run:

- in process, vectorised: `SyntheticDataGenerator` transaction chunks (numpy columns), the
  generator alone, at the chunk size the stream uses and at a large one;
- in process, what the server does per chunk: the same chunks with their exact quality report
  and the response message built (`stream_batch` + `chunk_message`);
- streaming RPC: a real deception server (`python -m servers.deception`, SQLite, its own
  process) streaming the batch to the typed client in this process, which receives and parses
  every chunk; the time includes registering the batch and the client's decoding;
- plain Python: the same columns from the `random` module, one row at a time, as dicts.

Run: `.venv/bin/python tests/bench/bench_deception.py [--rows 1000000] [--plain-rows 200000]`.
Each phase runs `--repeat` times and the best is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "generated")]

from clients.channel import ChannelOptions, open_channel  # noqa: E402
from clients.deception import DeceptionClient  # noqa: E402
from servers.deception.messages import chunk_message  # noqa: E402
from servers.deception.synthetic import DatasetKind, SyntheticDataGenerator  # noqa: E402
from servers.deception.synthetic_stream import MAX_STREAMED_CHUNK_SIZE, stream_batch  # noqa: E402
from shieldx.deception.v1 import deception_pb2 as pb  # noqa: E402
from tests.bench.bench_synthetic import best_rate, plain_python_transactions  # noqa: E402
from tests.support.processes import ServerProcess  # noqa: E402

SEED = 20250101
KIND = DatasetKind.TRANSACTIONS


async def stream_once(address: str, rows: int, chunk_size: int) -> float:
    """Seconds to stream `rows` transactions from the server, every chunk received and parsed."""
    # No retries or telemetry: the figure is the stream itself.
    channel = open_channel(address, ChannelOptions(retry=None, telemetry=False))
    client = DeceptionClient(channel)
    try:
        request = pb.GenerateSyntheticDataRequest(
            kind=pb.DATASET_KIND_TRANSACTIONS, count=rows, chunk_size=chunk_size, seed=SEED
        )
        received = 0
        started = time.perf_counter()
        async for chunk in client.generate_synthetic_data(request, timeout=600):
            received += len(chunk.transactions.amount_minor)
        elapsed = time.perf_counter() - started
    finally:
        await channel.close()
    if received != rows:
        raise RuntimeError(f"received {received} rows, expected {rows}")
    return elapsed


def rpc_rate(address: str, rows: int, chunk_size: int, repeat: int) -> float:
    """Best rows per second over the stream; printed like the other phases."""
    best = min(asyncio.run(stream_once(address, rows, chunk_size)) for _ in range(repeat))
    rate = rows / best
    label = f"transactions, streaming RPC ({chunk_size:,}/chunk)"
    print(f"{label:<44} {rows:>10,} rows  {best:8.3f} s  {rate:>14,.0f} rows/s")
    return rate


def main() -> None:
    """Run every phase and print a table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="transactions per vectorised and RPC phase")
    parser.add_argument("--plain-rows", type=int, default=200_000, help="transactions for plain Python")
    parser.add_argument("--repeat", type=int, default=3, help="runs per phase (best is reported)")
    args = parser.parse_args()
    chunk = MAX_STREAMED_CHUNK_SIZE
    generator = SyntheticDataGenerator()
    merchants = next(generator.generate(KIND, SEED, 1_000)).columns["merchant"]
    pool = sorted(set(merchants.tolist()))

    def generate(chunk_size: int) -> Callable[[], None]:
        def run() -> None:
            for _ in generator.generate(KIND, SEED, args.rows, chunk_size):
                pass

        return run

    def as_served() -> None:
        now = datetime.now(UTC)
        for streamed in stream_batch(
            generator, KIND, seed=SEED, count=args.rows, batch_id="b", now=now, chunk_size=chunk
        ):
            chunk_message(streamed, "b").SerializeToString()

    print(f"transactions, seed {SEED}; best of {args.repeat}")
    in_process = best_rate(f"in process, vectorised ({chunk:,}/chunk)", args.rows, args.repeat, generate(chunk))
    best_rate("in process, vectorised (100,000/chunk)", args.rows, args.repeat, generate(100_000))
    served = best_rate("in process, + quality + response message", args.rows, args.repeat, as_served)
    with tempfile.TemporaryDirectory() as scratch:
        server = ServerProcess("servers.deception", Path(scratch)).start()
        try:
            rpc_rate(server.address, 20_000, chunk, 1)  # warm-up: imports, corpora, first batch
            over_rpc = rpc_rate(server.address, args.rows, chunk, args.repeat)
        finally:
            server.stop()
    plain = best_rate(
        "plain Python (random, one row at a time)",
        args.plain_rows,
        args.repeat,
        lambda: plain_python_transactions(args.plain_rows, SEED, pool),
    )
    print(
        f"in process / plain Python: {in_process / plain:.1f}x; streaming RPC / plain Python: {over_rpc / plain:.1f}x; "
        f"streaming RPC / in process with messages: {over_rpc / served:.2f}"
    )
    print(f"target >= 1,000,000 transactions/s in process: {in_process >= 1e6}")


if __name__ == "__main__":
    main()
