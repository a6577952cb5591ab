"""`shieldx synth`: stream synthetic users, transactions or network flows from deception to a file.

The format follows the file name: `.csv` is CSV, `.parquet` is Parquet (needs pyarrow),
anything else JSON lines. Rows arrive as columns (one chunk at a time) and are written as they
come, with a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

from google.protobuf.message import Message
from tqdm import tqdm

from clients.connect import connect
from clients.deception import DeceptionClient
from clients.errors import ShieldxError
from shieldx.deception.v1 import deception_pb2 as pb

KINDS = {
    "users": pb.DATASET_KIND_USERS,
    "transactions": pb.DATASET_KIND_TRANSACTIONS,
    "flows": pb.DATASET_KIND_NETWORK_FLOWS,
}


def register(commands: Any) -> None:
    """Add `synth`."""
    synth = commands.add_parser("synth", help="generate synthetic users, transactions or flows to a file")
    synth.add_argument("kind", choices=tuple(KINDS))
    synth.add_argument("--count", type=int, default=1000, help="rows to generate (default 1000)")
    synth.add_argument("--seed", type=int, help="seed: the same seed gives the same rows")
    synth.add_argument("--chunk-size", type=int, default=0, help="rows per streamed chunk (0: the server's default)")
    synth.add_argument(
        "-o", "--output", type=Path, required=True, help="file to write (.csv, .parquet, else JSON lines)"
    )
    synth.set_defaults(run=_synth, parser=synth)


def _synth(args: argparse.Namespace) -> int:
    if args.count < 1:
        args.parser.error("--count must be at least 1")
    if args.seed is not None and args.seed < 0:
        args.parser.error("--seed must not be negative")
    request = pb.GenerateSyntheticDataRequest(kind=KINDS[args.kind], count=args.count, chunk_size=args.chunk_size)
    if args.seed is not None:
        request.seed = args.seed
    try:
        seed = asyncio.run(_generate(args, request))
    except ShieldxError as error:
        print(f"{error.code.name}: {error.message}", file=sys.stderr)
        for field, problem in error.field_violations.items():
            print(f"  {field}: {problem}", file=sys.stderr)
        return 1
    except ImportError as error:
        print(f"{args.output}: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.count} {args.kind} to {args.output} (seed {seed})", file=sys.stderr)
    return 0


async def _generate(args: argparse.Namespace, request: pb.GenerateSyntheticDataRequest) -> int:
    seed = 0
    with ExitStack() as stack:
        writer = stack.enter_context(_open_writer(args.output))
        progress = stack.enter_context(tqdm(total=args.count, unit=" rows", unit_scale=True, file=sys.stderr))
        async with connect("deception", data_dir=args.data_dir) as channel:
            stream = DeceptionClient(channel, default_timeout=None).generate_synthetic_data(request)
            async for chunk in stream:
                seed = chunk.seed
                columns = getattr(chunk, chunk.WhichOneof("rows") or "users")
                writer.write(_column_names(columns), _columns(columns))
                progress.update(chunk.row_count)
    return seed


def _column_names(columns: Message) -> list[str]:
    return [field.name for field in columns.DESCRIPTOR.fields]


def _columns(columns: Message) -> list[list[Any]]:
    values: list[list[Any]] = []
    for field in columns.DESCRIPTOR.fields:
        column = list(getattr(columns, field.name))
        if field.enum_type is not None:
            names = {v.number: v.name for v in field.enum_type.values}
            column = [names.get(v, str(v)) for v in column]
        values.append(column)
    return values


class RowWriter(Protocol):
    """Writes chunks of columns to one file."""

    def write(self, names: list[str], columns: list[list[Any]]) -> None:
        """Append the rows of one chunk."""


class _CsvWriter:
    def __init__(self, handle: Any) -> None:
        self._writer = csv.writer(handle)
        self._header_written = False

    def write(self, names: list[str], columns: list[list[Any]]) -> None:
        if not self._header_written:
            self._writer.writerow(names)
            self._header_written = True
        self._writer.writerows(zip(*columns, strict=True))


class _JsonLinesWriter:
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def write(self, names: list[str], columns: list[list[Any]]) -> None:
        self._handle.writelines(
            json.dumps(dict(zip(names, row, strict=True))) + "\n" for row in zip(*columns, strict=True)
        )


class _ParquetWriter:
    def __init__(self, path: Path) -> None:
        import pyarrow.parquet  # optional: only this format needs it

        self._parquet = pyarrow.parquet
        self._path = path
        self._writer: Any = None

    def write(self, names: list[str], columns: list[list[Any]]) -> None:
        import pyarrow

        table = pyarrow.table(dict(zip(names, columns, strict=True)))
        if self._writer is None:
            self._writer = self._parquet.ParquetWriter(self._path, table.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


@contextlib.contextmanager
def _open_writer(path: Path) -> Iterator[RowWriter]:
    if path.suffix.lower() == ".parquet":
        parquet = _ParquetWriter(path)
        try:
            yield parquet
        finally:
            parquet.close()
        return
    with path.open("w", newline="", encoding="utf-8") as handle:
        yield _CsvWriter(handle) if path.suffix.lower() == ".csv" else _JsonLinesWriter(handle)
